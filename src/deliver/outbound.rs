//! How deliver's calls reach their endpoints safely: the TLS trust of
//! `target_url` and `enrich_url` (`tls_ca_file`, or the bundled Mozilla
//! roots; `tls_skip_verify` only when asked for by name, and logged), and
//! the `Authorization` values read from owner-only files
//! (`auth_header_file`, `enrich_auth_header_file`), never shown.

use std::path::Path;

use log::warn;
use ureq::tls::TlsConfig;

use crate::config::SectionReader;
use crate::http_client::Trust;
use crate::secret::{Secret, read_line};

#[derive(Debug, Clone, Default)]
pub struct Outbound {
    /// Trusted CAs from `tls_ca_file` (empty: the bundled Mozilla roots).
    pub trust: Trust,
    pub skip_verify: bool,
    /// `Authorization` of the calls to `target_url`.
    pub authorization: Option<Secret>,
    /// `Authorization` of the lookups of `enrich_url`.
    pub enrich_authorization: Option<Secret>,
}

impl Outbound {
    pub fn read(r: &mut SectionReader<'_>) -> Outbound {
        let mut out = Outbound {
            skip_verify: r.bool("tls_skip_verify", false),
            trust: Trust::read(r),
            ..Default::default()
        };
        for (key, slot) in [
            ("auth_header_file", &mut out.authorization),
            ("enrich_auth_header_file", &mut out.enrich_authorization),
        ] {
            let path = r.string(key, "");
            if !path.is_empty() {
                match read_line(Path::new(&path)) {
                    Ok(s) => *slot = Some(s),
                    Err(e) => r.error(key, e),
                }
            }
        }
        out
    }

    /// The agents' TLS settings.
    pub fn tls(&self) -> TlsConfig {
        self.trust.tls(self.skip_verify)
    }

    /// Says loudly at start what is not checked.
    pub fn warn_if_unverified(&self, urls: &[&str]) {
        if self.skip_verify {
            warn!(
                "[deliver] tls_skip_verify = true: the certificates of {} are NOT verified; anyone on the way can read and change what is delivered",
                urls.join(" and ")
            );
        }
    }
}

/// `scheme://authority` of an http(s) URL.
pub fn origin(url: &str) -> &str {
    let after = url.find("://").map(|i| i + 3).unwrap_or(0);
    let end = url[after..]
        .find(['/', '?', '#'])
        .map(|i| after + i)
        .unwrap_or(url.len());
    &url[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_and_authority() {
        assert_eq!(
            origin("https://a.example:8443/x?y"),
            "https://a.example:8443"
        );
        assert_eq!(origin("http://a/"), "http://a");
        assert_eq!(origin("http://a"), "http://a");
        assert_eq!(origin("https://a?q"), "https://a");
    }
}
