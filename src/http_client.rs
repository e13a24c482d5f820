//! The outbound HTTP agents (ureq) of deliver's senders and lookups, of the
//! schema registry client and of the load client, and their TLS trust
//! (`tls_ca_file`). One change from ureq's defaults matters for speed:
//! name resolution. With a total timeout set, ureq's own resolver starts a
//! thread for every call (to bound `getaddrinfo`), even for an IP address
//! and even when a pooled connection is then reused — measured as the
//! largest cost of a call on a busy machine. This resolver answers IP
//! literals at once and caches names for [`TTL`], so a call costs a lookup
//! only when its name's entry is stale. That lookup runs on a thread of its
//! own within the call's deadline (a resolver that hangs cannot hold a
//! sender past it), and when it fails or is late the stale addresses are
//! used, if there are any.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// How long a resolved name is used before it is looked up again.
pub const TTL: Duration = Duration::from_secs(30);

/// (host, port) → (when resolved, addresses).
type Cache = HashMap<(String, u16), (Instant, Vec<SocketAddr>)>;

/// IP literals as they are; names through the system resolver, cached.
#[derive(Debug, Default)]
pub struct CachingResolver {
    cache: Mutex<Cache>,
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        _config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().ok_or(ureq::Error::HostNotFound)?;
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        let mut out = self.empty();
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            out.push(SocketAddr::new(ip, port));
            return Ok(out);
        }
        let key = (host.to_string(), port);
        let (fresh, stale) = match self.cache.lock() {
            Ok(c) => match c.get(&key) {
                Some((at, a)) if at.elapsed() < TTL => (Some(a.clone()), None),
                Some((_, a)) => (None, Some(a.clone())),
                None => (None, None),
            },
            Err(_) => (None, None),
        };
        let addrs = match fresh {
            Some(a) => a,
            None => match lookup(host, port, (*timeout.after).min(Duration::from_secs(60))) {
                Ok(a) => {
                    if let Ok(mut c) = self.cache.lock() {
                        c.insert(key, (Instant::now(), a.clone()));
                    }
                    a
                }
                Err(e) => stale.ok_or(e)?,
            },
        };
        for a in addrs {
            out.push(a);
        }
        if out.is_empty() {
            Err(ureq::Error::HostNotFound)
        } else {
            Ok(out)
        }
    }
}

/// The system resolver's answer for `host`, waited for at most `within`.
fn lookup(host: &str, port: u16, within: Duration) -> Result<Vec<SocketAddr>, ureq::Error> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let name = host.to_string();
    std::thread::Builder::new()
        .name("http-dns".into())
        .spawn(move || {
            let found = (name.as_str(), port)
                .to_socket_addrs()
                .map(|a| a.take(16).collect::<Vec<_>>());
            let _ = tx.send(found);
        })
        .map_err(ureq::Error::Io)?;
    match rx.recv_timeout(within) {
        Ok(Ok(a)) if !a.is_empty() => Ok(a),
        Ok(Ok(_)) => Err(ureq::Error::HostNotFound),
        Ok(Err(e)) => Err(ureq::Error::Io(e)),
        Err(_) => Err(ureq::Error::Timeout(ureq::Timeout::Resolve)),
    }
}

/// The TLS trust of outbound calls (`tls_ca_file`): the CAs of a PEM file,
/// or, when none is named, the bundled Mozilla roots.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    pub roots: Vec<ureq::tls::Certificate<'static>>,
}

impl Trust {
    /// `tls_ca_file` of a section; a file that is no PEM names the key.
    pub fn read(r: &mut crate::config::SectionReader<'_>) -> Trust {
        let mut t = Trust::default();
        let ca = r.string("tls_ca_file", "");
        if !ca.is_empty() {
            match read_certificates(std::path::Path::new(&ca)) {
                Ok(c) => t.roots = c,
                Err(e) => r.error("tls_ca_file", e),
            }
        }
        t
    }

    /// The agents' TLS settings (`skip_verify` only when asked for by name).
    pub fn tls(&self, skip_verify: bool) -> ureq::tls::TlsConfig {
        let mut b = ureq::tls::TlsConfig::builder();
        if !self.roots.is_empty() {
            b = b.root_certs(ureq::tls::RootCerts::new_with_certs(&self.roots));
        }
        b.disable_verification(skip_verify).build()
    }
}

/// Every certificate of a PEM file (other items are ignored); none is an error.
fn read_certificates(
    path: &std::path::Path,
) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("{shown}: cannot read it: {e}"))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(format!("{shown}: not PEM: {e}")),
        }
    }
    if certs.is_empty() {
        return Err(format!("{shown}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// An agent with `config` and the caching resolver.
pub fn agent(config: Config) -> ureq::Agent {
    ureq::Agent::with_parts(
        config,
        DefaultConnector::default(),
        CachingResolver::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_resolve_without_a_lookup_and_names_are_cached() {
        let r = CachingResolver::default();
        let c = Config::default();
        let t = NextTimeout::default;
        let got = r
            .resolve(&"http://127.0.0.1:9/x".parse().unwrap(), &c, t())
            .unwrap();
        assert_eq!(got[0], "127.0.0.1:9".parse().unwrap());
        let got = r
            .resolve(&"http://[::1]:9/x".parse().unwrap(), &c, t())
            .unwrap();
        assert_eq!(got[0], "[::1]:9".parse().unwrap());
        let got = r
            .resolve(&"http://localhost:9/x".parse().unwrap(), &c, t())
            .unwrap();
        assert!(got.iter().all(|a| a.port() == 9));
        assert_eq!(r.cache.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_failed_lookup_uses_the_stale_addresses_and_a_slow_one_ends_at_the_deadline() {
        let r = CachingResolver::default();
        let c = Config::default();
        let stale: SocketAddr = "10.9.9.9:80".parse().unwrap();
        let name = ("no-such-host.invalid".to_string(), 80);
        r.cache
            .lock()
            .unwrap()
            .insert(name, (Instant::now() - 2 * TTL, vec![stale]));
        let got = r
            .resolve(
                &"http://no-such-host.invalid/x".parse().unwrap(),
                &c,
                NextTimeout::default(),
            )
            .unwrap();
        assert_eq!(
            got[0], stale,
            "the stale entry serves when the lookup fails"
        );
        let t = NextTimeout {
            after: ureq::unversioned::transport::time::Duration::Exact(Duration::ZERO),
            ..NextTimeout::default()
        };
        let started = Instant::now();
        let e = r.resolve(&"http://other-host.invalid/x".parse().unwrap(), &c, t);
        assert!(e.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "bounded by the deadline"
        );
    }
}
