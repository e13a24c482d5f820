//! Bearer tokens of `[ingest] auth_tokens_file`: one `name token [route,…]`
//! per line in a file only its owner may read; checked in constant time on
//! every request; counted per name (never the token) in `/metrics`; read
//! again on SIGHUP, keeping the tokens in force when the new file is bad.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use log::{error, info};
use subtle::ConstantTimeEq;

use crate::metrics::{Counter, Prom};

/// Shortest token accepted: 16 bytes (e.g. `openssl rand -hex 16` gives 32).
const MIN_TOKEN_BYTES: usize = 16;

/// Requests of one token name.
#[derive(Default)]
struct NameCounters {
    accepted: Counter,
    forbidden: Counter,
}

struct Entry {
    name: String,
    token: Vec<u8>,
    /// Route indices the token may write to; `None`: every route.
    routes: Option<Vec<usize>>,
    counters: Arc<NameCounters>,
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token, a malformed header or an unknown token: 401, one answer.
    Unauthorized,
    /// A known token (its name) limited to other routes: 403.
    Forbidden(String),
}

/// The tokens in force and the counters that outlive a reload.
pub struct Auth {
    path: PathBuf,
    streams: Vec<String>,
    tokens: RwLock<Arc<Vec<Entry>>>,
    counters: Mutex<BTreeMap<String, Arc<NameCounters>>>,
    /// Distinct token names in force.
    names: std::sync::atomic::AtomicUsize,
    /// Requests answered 401.
    pub rejected: Counter,
}

impl Auth {
    /// Reads `path`; `streams` are the route names, in route order.
    pub fn open(path: &Path, streams: &[String]) -> Result<Auth, String> {
        let auth = Auth {
            path: path.to_path_buf(),
            streams: streams.to_vec(),
            tokens: RwLock::default(),
            counters: Mutex::default(),
            names: Default::default(),
            rejected: Counter::default(),
        };
        auth.set_tokens(auth.read()?);
        Ok(auth)
    }

    /// Reads the file again; a bad file is logged and the old tokens stay.
    pub fn reload(&self) {
        match self.read() {
            Ok(entries) => {
                let names = entries.len();
                self.set_tokens(entries);
                info!(
                    "[ingest] auth_tokens_file {}: {names} token(s) in force",
                    self.path.display()
                );
            }
            Err(e) => {
                error!("[ingest] auth_tokens_file: {e}; the tokens read before stay in force")
            }
        }
    }

    fn read(&self) -> Result<Vec<Entry>, String> {
        let parsed = parse_file(&self.path, &self.streams)?;
        let mut counters = self.counters.lock().map_err(|_| "poisoned")?;
        Ok(parsed
            .into_iter()
            .map(|(name, token, routes)| Entry {
                counters: counters.entry(name.clone()).or_default().clone(),
                name,
                token,
                routes,
            })
            .collect())
    }

    /// Token names in force.
    pub fn names(&self) -> usize {
        self.names.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_tokens(&self, entries: Vec<Entry>) {
        let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        self.names
            .store(names.len(), std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut t) = self.tokens.write() {
            *t = Arc::new(entries);
        }
    }

    /// The name of the token in `authorization` if it may write to `route`
    /// (`None`: a path that is no route).
    pub fn check(
        &self,
        authorization: Option<&str>,
        route: Option<usize>,
    ) -> Result<String, Denied> {
        let entries = self
            .tokens
            .read()
            .map(|t| t.clone())
            .map_err(|_| Denied::Unauthorized)?;
        let presented = authorization
            .and_then(bearer)
            .unwrap_or_default()
            .as_bytes();
        // Every entry is compared, whatever matched, so the time taken does
        // not tell which one did.
        let mut found = None;
        for (i, e) in entries.iter().enumerate() {
            if bool::from(e.token.as_slice().ct_eq(presented)) {
                found = Some(i);
            }
        }
        let Some(e) = found.map(|i| &entries[i]).filter(|_| !presented.is_empty()) else {
            self.rejected.inc();
            return Err(Denied::Unauthorized);
        };
        if let (Some(allowed), Some(route)) = (&e.routes, route)
            && !allowed.contains(&route)
        {
            e.counters.forbidden.inc();
            return Err(Denied::Forbidden(e.name.clone()));
        }
        e.counters.accepted.inc();
        Ok(e.name.clone())
    }

    pub fn render(&self, p: &mut Prom<'_>) {
        let Ok(counters) = self.counters.lock() else {
            return;
        };
        let name = "kbridge_ingest_auth_requests_total";
        p.describe(
            name,
            "counter",
            "Requests by token name: accepted, or forbidden on a route the token is not for.",
        );
        for (who, c) in counters.iter() {
            p.sample(
                name,
                &[("name", who), ("result", "accepted")],
                c.accepted.get(),
            );
            p.sample(
                name,
                &[("name", who), ("result", "forbidden")],
                c.forbidden.get(),
            );
        }
        let name = "kbridge_ingest_auth_rejected_total";
        p.describe(
            name,
            "counter",
            "Requests answered 401: no token, a malformed one or an unknown one.",
        );
        p.sample(name, &[], self.rejected.get());
    }
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

type Parsed = Vec<(String, Vec<u8>, Option<Vec<usize>>)>;

/// Reads and checks the file: owner-only, every line valid, no name or
/// token twice, routes that exist. Errors name the file and line, never a
/// token.
pub fn parse_file(path: &Path, streams: &[String]) -> Result<Parsed, String> {
    let shown = path.display();
    let text = crate::secret::read_private(path)?;
    let mut out: Parsed = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("{shown}:{}", n + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (name, token, routes) = match fields.as_slice() {
            [name, token] => (*name, *token, None),
            [name, token, routes] => (*name, *token, Some(*routes)),
            _ => {
                return Err(format!(
                    "{at}: expected `name token` or `name token route,route`"
                ));
            }
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(format!("{at}: name {name:?}: letters, digits, . _ - only"));
        }
        if token.len() < MIN_TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{at}: the token of {name} must be at least {MIN_TOKEN_BYTES} printable characters"
            ));
        }
        let routes = match routes {
            None => None,
            Some(list) => Some(
                list.split(',')
                    .map(|s| {
                        streams.iter().position(|r| r == s).ok_or_else(|| {
                            format!(
                                "{at}: {name}: no route {s:?} (routes: {})",
                                streams.join(", ")
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        if out.iter().any(|(n, _, _)| n == name) {
            return Err(format!("{at}: name {name} appears twice"));
        }
        if out.iter().any(|(_, t, _)| t.as_slice() == token.as_bytes()) {
            return Err(format!("{at}: the token of {name} is also another name's"));
        }
        out.push((name.to_string(), token.as_bytes().to_vec(), routes));
    }
    if out.is_empty() {
        return Err(format!("{shown}: holds no token"));
    }
    Ok(out)
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
