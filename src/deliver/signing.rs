//! Signed calls per the Standard Webhooks specification: each call carries
//! `webhook-id` (the call's `Idempotency-Key`), `webhook-timestamp` (Unix
//! seconds) and `webhook-signature`: `v1,<base64 HMAC-SHA256>` of
//! `<id>.<timestamp>.<body>`, one per secret, space-separated, so that an
//! endpoint rotating its secret accepts either. Secrets come from
//! `signing_secret_file`, owner-only, one `whsec_<base64>` per line.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The decoded keys (never printed).
#[derive(Clone, Default)]
pub struct Signer {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} secrets)", self.keys.len())
    }
}

impl Signer {
    /// Reads `path` (see [`crate::secret::read_private`]); the error names
    /// the file and the line, never a secret.
    pub fn open(path: &Path) -> Result<Signer, String> {
        Signer::parse(&crate::secret::read_private(path)?)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    fn parse(text: &str) -> Result<Signer, String> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = line
                .strip_prefix("whsec_")
                .and_then(|b| STANDARD.decode(b).ok())
                .filter(|k| (24..=64).contains(&k.len()))
                .ok_or_else(|| {
                    format!(
                        "line {}: expected whsec_ and the base64 of a 24 to 64 byte secret",
                        i + 1
                    )
                })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("no secret in it (one whsec_… per line)".into());
        }
        Ok(Signer { keys })
    }

    /// The three header fields of a call with `id`, at `timestamp`.
    pub fn headers(&self, id: &str, timestamp: u64, body: &[u8]) -> [(&'static str, String); 3] {
        let ts = timestamp.to_string();
        let signatures: Vec<String> = self
            .keys
            .iter()
            .map(|k| {
                // Any key length is valid for HMAC.
                let mut mac = Hmac::<Sha256>::new_from_slice(k).unwrap_or_else(|_| unreachable!());
                mac.update(id.as_bytes());
                mac.update(b".");
                mac.update(ts.as_bytes());
                mac.update(b".");
                mac.update(body);
                format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
            })
            .collect();
        [
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", ts),
            ("webhook-signature", signatures.join(" ")),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_signs_as_published() {
        // The Standard Webhooks specification's own example.
        let s = Signer::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        let [id, ts, sig] = s.headers(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(id.1, "msg_p5jXN8AQM9LWM0D4loKWxJek");
        assert_eq!(ts.1, "1614265330");
        assert_eq!(sig.1, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_secret_signs_and_bad_lines_are_named() {
        let two = "# rotating\nwhsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n\nwhsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n";
        let [_, _, sig] = Signer::parse(two).unwrap().headers("i", 1, b"b");
        assert_eq!(sig.1.split(' ').count(), 2);
        assert!(sig.1.split(' ').all(|s| s.starts_with("v1,")));
        assert!(Signer::parse("").unwrap_err().contains("no secret"));
        assert!(
            Signer::parse("whsec_MfKQ\n")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(Signer::parse("\nsecret\n").unwrap_err().contains("line 2"));
        assert_eq!(
            format!("{:?}", Signer::parse(two).unwrap()),
            "Signer(2 secrets)"
        );
    }
}
