//! The schema registry client (`[schema_registry]`): the Confluent API's
//! `GET /schemas/ids/{id}`, `GET /subjects/{s}/versions/latest` and
//! `POST /subjects/{s}/versions`, blocking calls (ureq) within
//! `timeout_ms`, with basic auth and TLS trust like deliver's calls. Schemas
//! by id never change, so they are kept (up to `cache_entries`, the oldest
//! dropped first); an id the registry does not know is remembered as
//! unknown for `unknown_retry_s` (a hostile producer's random ids cost one
//! call each per period, not one per record); a subject's latest version
//! is asked again after `refresh_s`. Failures are of two kinds: the
//! registry answered that the schema does not exist or is no schema
//! ([`Failure::Unreadable`], for good), or it could not be reached or
//! failed ([`Failure::Unavailable`], for now).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::writer::Local;
use super::{Failure, SchemaKind, avro, jsonschema, protofile};
use crate::config::{ConfigErrors, Document};
use crate::secret::Secret;

/// A schema as the registry holds it.
#[derive(Debug)]
pub struct Registered {
    pub id: u32,
    pub schema: Kind,
}

/// What kind of schema an id names.
#[derive(Debug)]
pub enum Kind {
    Avro(Arc<avro::Schema>),
    /// JSON Schema: the payload is JSON, checked against it.
    Json(Arc<jsonschema::Schema>),
    /// Protobuf: the `.proto` text and its references, compiled.
    Protobuf(Arc<protofile::ProtoFile>),
}

#[derive(Debug)]
pub struct Registry {
    url: String,
    agent: ureq::Agent,
    authorization: Option<Secret>,
    cache_entries: usize,
    /// How long a subject's latest version is taken as it is (`refresh_s`).
    pub refresh: Duration,
    unknown_retry: Duration,
    /// One call's deadline (`timeout_ms`).
    pub timeout: Duration,
    state: Mutex<State>,
    /// Calls that failed (unreachable, 5xx, timeouts): `kbridge_schema_registry_errors_total`.
    pub errors: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    by_id: HashMap<u32, Arc<Registered>>,
    order: VecDeque<u32>,
    unknown: HashMap<u32, (Instant, String)>,
    latest: HashMap<String, (Instant, Arc<Registered>)>,
    /// (subject, schema text) → the id it was registered as.
    registered: HashMap<(String, String), u32>,
    /// Schema texts of REST Proxy envelopes, parsed.
    parsed: HashMap<(SchemaKind, String), Local>,
}

impl Registry {
    /// `[schema_registry]`: `None` without a `url`.
    pub fn read(doc: &Document, errors: &mut ConfigErrors) -> Option<Arc<Registry>> {
        let mut r = doc.reader("schema_registry", errors);
        let url = r.string("url", "");
        let auth_file = r.string("basic_auth_file", "");
        let trust = crate::http_client::Trust::read(&mut r);
        let timeout_ms = r.int("timeout_ms", 5_000u64, 100..=120_000);
        let cache_entries = r.int("cache_entries", 1_000usize, 1..=1_000_000);
        let refresh_s = r.int("refresh_s", 300u64, 1..=86_400);
        let unknown_retry_s = r.int("unknown_retry_s", 60u64, 1..=86_400);
        let mut authorization = None;
        if !auth_file.is_empty() {
            match crate::secret::read_line(std::path::Path::new(&auth_file)) {
                Ok(s) if s.expose().contains(':') => {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(s.expose());
                    authorization = Some(Secret::new(format!("Basic {b64}")));
                }
                Ok(_) => r.error("basic_auth_file", "expected one line user:password".into()),
                Err(e) => r.error("basic_auth_file", e),
            }
        }
        if url.is_empty() {
            r.finish();
            return None;
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            r.error(
                "url",
                format!("expected an http:// or https:// URL, got {url:?}"),
            );
        }
        r.finish();
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(timeout_ms)))
            .http_status_as_error(false)
            .tls_config(trust.tls(false))
            .max_idle_connections_per_host(8)
            .build();
        Some(Arc::new(Registry {
            url: url.trim_end_matches('/').to_string(),
            agent: crate::http_client::agent(config),
            authorization,
            cache_entries,
            refresh: Duration::from_secs(refresh_s),
            unknown_retry: Duration::from_secs(unknown_retry_s),
            timeout: Duration::from_millis(timeout_ms),
            state: Mutex::default(),
            errors: AtomicU64::new(0),
        }))
    }

    /// The schema of `id`.
    pub fn by_id(&self, id: u32) -> Result<Arc<Registered>, Failure> {
        if let Ok(s) = self.state.lock() {
            if let Some(r) = s.by_id.get(&id) {
                return Ok(r.clone());
            }
            if let Some((at, why)) = s.unknown.get(&id)
                && at.elapsed() < self.unknown_retry
            {
                return Err(Failure::Unreadable(why.clone()));
            }
        }
        let answer = self.call("GET", &format!("/schemas/ids/{id}"), None);
        let got = answer.and_then(|v| self.parse(id, &v));
        let mut s = self
            .state
            .lock()
            .map_err(|_| Failure::Unavailable("poisoned".into()))?;
        match got {
            Ok(r) => {
                let r = Arc::new(r);
                if s.by_id.insert(id, r.clone()).is_none() {
                    s.order.push_back(id);
                }
                while s.order.len() > self.cache_entries {
                    if let Some(old) = s.order.pop_front() {
                        s.by_id.remove(&old);
                    }
                }
                Ok(r)
            }
            Err(Failure::Unreadable(why)) => {
                if s.unknown.len() >= self.cache_entries {
                    s.unknown.clear();
                }
                s.unknown.insert(id, (Instant::now(), why.clone()));
                Err(Failure::Unreadable(why))
            }
            Err(e) => Err(e),
        }
    }

    /// `kbridge_schema_registry_errors_total`.
    pub fn prometheus(&self, p: &mut crate::metrics::Prom<'_>) {
        p.single(
            "kbridge_schema_registry_errors_total",
            "counter",
            "Schema registry calls that failed (unreachable, timed out, 5xx); records wait, routes use the schema they have.",
            &[],
            self.errors.load(Ordering::Relaxed),
        );
    }

    /// The latest version of `subject`.
    pub fn latest(&self, subject: &str) -> Result<Arc<Registered>, Failure> {
        if let Ok(s) = self.state.lock()
            && let Some((at, r)) = s.latest.get(subject)
            && at.elapsed() < self.refresh
        {
            return Ok(r.clone());
        }
        let path = format!("/subjects/{}/versions/latest", encode(subject));
        let v = self.call("GET", &path, None)?;
        let id = v["id"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| Failure::Unreadable(format!("{subject}: no id in {v}")))?;
        let r = Arc::new(self.parse(id, &v)?);
        if let Ok(mut s) = self.state.lock() {
            if s.latest.len() >= self.cache_entries {
                s.latest.clear();
            }
            s.latest
                .insert(subject.to_string(), (Instant::now(), r.clone()));
        }
        Ok(r)
    }

    /// A schema text parsed as `kind`, remembered (a REST Proxy client
    /// sends its schema with every request).
    pub fn parsed(&self, kind: SchemaKind, text: &str) -> Result<Local, String> {
        let key = (kind, text.to_string());
        if let Ok(s) = self.state.lock()
            && let Some(l) = s.parsed.get(&key)
        {
            return Ok(l.clone());
        }
        let l = Local::parse(kind, text)?;
        if let Ok(mut s) = self.state.lock() {
            if s.parsed.len() >= self.cache_entries {
                s.parsed.clear();
            }
            s.parsed.insert(key, l.clone());
        }
        Ok(l)
    }

    /// Registers a schema (`schema_type` `AVRO` or `JSON`) under `subject`
    /// (or finds it there): its id, remembered (a REST Proxy client sends
    /// its schema with every request).
    pub fn register(&self, subject: &str, text: &str, schema_type: &str) -> Result<u32, Failure> {
        let key = (subject.to_string(), text.to_string());
        if let Ok(s) = self.state.lock()
            && let Some(id) = s.registered.get(&key)
        {
            return Ok(*id);
        }
        let path = format!("/subjects/{}/versions", encode(subject));
        let body = json!({ "schema": text, "schemaType": schema_type });
        let v = self.call("POST", &path, Some(&body))?;
        let id = v["id"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| Failure::Unreadable(format!("{subject}: no id in {v}")))?;
        if let Ok(mut s) = self.state.lock() {
            if s.registered.len() >= self.cache_entries {
                s.registered.clear();
            }
            s.registered.insert(key, id);
        }
        Ok(id)
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.url);
        let accept = "application/vnd.schemaregistry.v1+json";
        let answer = match body {
            None => {
                let mut req = self.agent.get(&url).header("Accept", accept);
                if let Some(a) = &self.authorization {
                    req = req.header("Authorization", a.expose());
                }
                req.call()
            }
            Some(b) => {
                let mut req = self
                    .agent
                    .post(&url)
                    .header("Accept", accept)
                    .header("Content-Type", accept);
                if let Some(a) = &self.authorization {
                    req = req.header("Authorization", a.expose());
                }
                req.send(b.to_string().as_bytes())
            }
        };
        let unavailable = |why: String| {
            self.errors.fetch_add(1, Ordering::Relaxed);
            Failure::Unavailable(format!("schema registry {method} {path}: {why}"))
        };
        let mut resp = answer.map_err(|e| unavailable(e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(8 << 20)
            .read_to_string()
            .map_err(|e| unavailable(e.to_string()))?;
        let short: String = text.chars().take(300).collect();
        match status {
            200..=299 => serde_json::from_str(&text)
                .map_err(|e| Failure::Unreadable(format!("{path}: not JSON ({e}): {short}"))),
            404 | 422 | 409 | 400 => Err(Failure::Unreadable(format!(
                "schema registry {method} {path}: {status} {short}"
            ))),
            _ => Err(unavailable(format!("{status} {short}"))),
        }
    }
}

impl Registry {
    /// A `{"schema": …, "schemaType": …, "references": […]}` answer.
    fn parse(&self, id: u32, v: &Value) -> Result<Registered, Failure> {
        let text = v["schema"]
            .as_str()
            .ok_or_else(|| Failure::Unreadable(format!("schema {id}: no schema in the answer")))?;
        let schema = match v["schemaType"].as_str().unwrap_or("AVRO") {
            "PROTOBUF" => {
                let mut imports = HashMap::new();
                self.references(v, &mut imports)?;
                Kind::Protobuf(Arc::new(
                    protofile::ProtoFile::compile(text, imports)
                        .map_err(|e| Failure::Unreadable(format!("schema {id}: {e}")))?,
                ))
            }
            other => return parse(id, other, text),
        };
        Ok(Registered { id, schema })
    }

    /// The texts of a Protobuf schema's references (name → text), and of
    /// theirs, up to [`protofile::MAX_FILES`].
    fn references(&self, v: &Value, out: &mut HashMap<String, String>) -> Result<(), Failure> {
        for r in v["references"].as_array().into_iter().flatten() {
            let (Some(name), Some(subject), Some(version)) = (
                r["name"].as_str(),
                r["subject"].as_str(),
                r["version"].as_i64(),
            ) else {
                return Err(Failure::Unreadable(format!("a malformed reference {r}")));
            };
            if out.contains_key(name) {
                continue;
            }
            if out.len() >= protofile::MAX_FILES {
                return Err(Failure::Unreadable(format!(
                    "more than {} referenced files",
                    protofile::MAX_FILES
                )));
            }
            let path = format!("/subjects/{}/versions/{version}", encode(subject));
            let answer = self.call("GET", &path, None)?;
            let text = answer["schema"].as_str().unwrap_or_default().to_string();
            out.insert(name.to_string(), text);
            self.references(&answer, out)?;
        }
        Ok(())
    }
}

/// An Avro or JSON Schema answer's schema.
fn parse(id: u32, schema_type: &str, text: &str) -> Result<Registered, Failure> {
    let schema = match schema_type {
        "AVRO" => Kind::Avro(Arc::new(
            avro::Schema::parse(text)
                .map_err(|e| Failure::Unreadable(format!("schema {id}: {e}")))?,
        )),
        "JSON" => Kind::Json(Arc::new(
            jsonschema::Schema::parse(text)
                .map_err(|e| Failure::Unreadable(format!("schema {id}: {e}")))?,
        )),
        other => {
            return Err(Failure::Unreadable(format!(
                "schema {id}: unknown schema type {other:?}"
            )));
        }
    };
    Ok(Registered { id, schema })
}

/// A subject as a path segment.
fn encode(subject: &str) -> String {
    percent_encoding::utf8_percent_encode(subject, percent_encoding::NON_ALPHANUMERIC).to_string()
}
