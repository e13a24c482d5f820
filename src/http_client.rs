//! The outbound HTTP agents (ureq) of deliver's senders and lookups and of
//! the load client. One change from ureq's defaults matters for speed:
//! name resolution. With a total timeout set, ureq's own resolver starts a
//! thread for every call (to bound `getaddrinfo`), even for an IP address
//! and even when a pooled connection is then reused — measured as the
//! largest cost of a call on a busy machine. This resolver answers IP
//! literals at once and caches names for [`TTL`], so a call costs a lookup
//! only when its name's entry is stale.

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
        _timeout: NextTimeout,
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
        let cached = self.cache.lock().ok().and_then(|c| {
            c.get(&key)
                .filter(|(at, _)| at.elapsed() < TTL)
                .map(|(_, a)| a.clone())
        });
        let addrs = match cached {
            Some(a) => a,
            None => {
                let a: Vec<SocketAddr> = (host, port).to_socket_addrs()?.take(16).collect();
                if let Ok(mut c) = self.cache.lock() {
                    c.insert(key, (Instant::now(), a.clone()));
                }
                a
            }
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
}
