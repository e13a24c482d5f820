//! How deliver's calls reach their endpoints safely: the TLS trust of
//! `target_url` and `enrich_url` (`tls_ca_file`, or the bundled Mozilla
//! roots; `tls_skip_verify` only when asked for by name, and logged), and
//! the `Authorization` values read from owner-only files
//! (`auth_header_file`, `enrich_auth_header_file`), never shown.

use std::path::Path;

use log::warn;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use crate::config::SectionReader;
use crate::secret::{Secret, read_line};

#[derive(Debug, Clone, Default)]
pub struct Outbound {
    /// Trusted CAs from `tls_ca_file`; empty: the bundled Mozilla roots.
    pub roots: Vec<Certificate<'static>>,
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
            ..Outbound::read_tls(r)
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

    /// Only `tls_ca_file` (the schema registry's trust; verification on).
    pub fn read_tls(r: &mut SectionReader<'_>) -> Outbound {
        let mut out = Outbound::default();
        let ca = r.string("tls_ca_file", "");
        if !ca.is_empty() {
            match read_certificates(Path::new(&ca)) {
                Ok(c) => out.roots = c,
                Err(e) => r.error("tls_ca_file", e),
            }
        }
        out
    }

    /// The agents' TLS settings.
    pub fn tls(&self) -> TlsConfig {
        let mut b = TlsConfig::builder();
        if !self.roots.is_empty() {
            b = b.root_certs(RootCerts::new_with_certs(&self.roots));
        }
        b.disable_verification(self.skip_verify).build()
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

/// Every certificate of a PEM file (other items are ignored); none is an error.
fn read_certificates(path: &Path) -> Result<Vec<Certificate<'static>>, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("{shown}: cannot read it: {e}"))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(format!("{shown}: not PEM: {e}")),
        }
    }
    if certs.is_empty() {
        return Err(format!("{shown}: no PEM certificate in it"));
    }
    Ok(certs)
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
