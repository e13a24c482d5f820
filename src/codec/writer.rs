//! What ingest's schema routes write (`[ingest.formats]`): each JSON record
//! encoded as the route's Protobuf message or Avro schema, or checked
//! against its JSON Schema and stored as it is. A route with a registry
//! writes the Confluent wire format: with a local schema (`avro:<file>`,
//! `jsonschema:<file>`) the schema is registered under `<topic>-value` once
//! (or found there) for its id; with none (`avro`, `jsonschema`) the
//! subject's latest version is the schema (asked again after `refresh_s`).
//! Without a registry a route writes plain datums (JSON as it is). A
//! route goes on with the schema it has while the registry cannot be
//! reached; one without a schema answers 503, asking at most once a second.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::registry::{Kind, Registry};
use super::{Failure, Misfit, SchemaKind, avro, jsonschema, protobuf, protofile, wire};

/// How a route's records are encoded once its schema is known; `id`: the
/// registry's, written as the wire format's frame.
#[derive(Debug)]
pub enum Encoder {
    /// The message; with an `id`, framed with the message index `[0]`.
    Protobuf {
        schema: Arc<protobuf::Schema>,
        id: Option<u32>,
    },
    Avro {
        schema: Arc<avro::Schema>,
        id: Option<u32>,
    },
    JsonSchema {
        schema: Arc<jsonschema::Schema>,
        id: Option<u32>,
    },
}

impl Encoder {
    /// One JSON record's bytes, appended to `out`.
    pub fn encode(&self, json: &[u8], out: &mut Vec<u8>) -> Result<(), Misfit> {
        match self {
            Encoder::Protobuf { schema, id } => {
                let bytes = schema.from_json(json)?;
                if let Some(id) = id {
                    wire::put_frame(out, *id);
                    out.push(0);
                }
                out.extend_from_slice(&bytes);
                Ok(())
            }
            Encoder::Avro { schema, id } => {
                if let Some(id) = id {
                    wire::put_frame(out, *id);
                }
                schema.from_json(json, out)
            }
            Encoder::JsonSchema { schema, id } => {
                schema.check(json)?;
                if let Some(id) = id {
                    wire::put_frame(out, *id);
                }
                out.extend_from_slice(json);
                Ok(())
            }
        }
    }

    /// The schema's name, for errors.
    pub fn name(&self) -> String {
        match self {
            Encoder::Protobuf { schema, .. } => schema.name().to_string(),
            Encoder::Avro { schema, .. } => schema.name(),
            Encoder::JsonSchema { schema, .. } => schema.name(),
        }
    }

    /// The registry id it writes, if any.
    pub fn id(&self) -> Option<u32> {
        match self {
            Encoder::Protobuf { id, .. }
            | Encoder::Avro { id, .. }
            | Encoder::JsonSchema { id, .. } => *id,
        }
    }

    /// An encoder of `schema` (a registered one: `id`); a Protobuf file
    /// encodes its first message.
    fn of(schema: &Local, id: Option<u32>) -> Result<Encoder, Failure> {
        Ok(match schema {
            Local::Proto(f) => Encoder::Protobuf {
                schema: f.message(&[0]).map_err(Failure::Unreadable)?,
                id,
            },
            Local::Avro(s) => Encoder::Avro {
                schema: s.clone(),
                id,
            },
            Local::Json(s) => Encoder::JsonSchema {
                schema: s.clone(),
                id,
            },
        })
    }
}

/// A schema a route or an envelope names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    Avro(Arc<avro::Schema>),
    Json(Arc<jsonschema::Schema>),
    /// A `.proto` file (the REST Proxy's protobuf envelopes).
    Proto(Arc<protofile::ProtoFile>),
}

impl Local {
    /// Parses `text` as a schema of `kind` (a `.proto` without imports).
    pub fn parse(kind: SchemaKind, text: &str) -> Result<Local, String> {
        match kind {
            SchemaKind::Avro => avro::Schema::parse(text).map(|s| Local::Avro(Arc::new(s))),
            SchemaKind::Json => jsonschema::Schema::parse(text).map(|s| Local::Json(Arc::new(s))),
            SchemaKind::Protobuf => protofile::ProtoFile::compile(text, Default::default())
                .map(|f| Local::Proto(Arc::new(f))),
        }
    }

    /// Reads an Avro or JSON Schema file (a Protobuf schema is a message
    /// of a descriptor set: see [`protobuf::Schema::open`]).
    pub fn open(kind: SchemaKind, file: &std::path::Path) -> Result<Local, String> {
        match kind {
            SchemaKind::Avro => avro::Schema::open(file).map(|s| Local::Avro(Arc::new(s))),
            SchemaKind::Json => jsonschema::Schema::open(file).map(|s| Local::Json(Arc::new(s))),
            SchemaKind::Protobuf => Err(format!(
                "{}: Protobuf schemas are read from a descriptor set",
                file.display()
            )),
        }
    }

    fn text(&self) -> &str {
        match self {
            Local::Avro(s) => s.text(),
            Local::Json(s) => s.text(),
            Local::Proto(f) => f.text(),
        }
    }

    /// The registry's `schemaType`.
    fn schema_type(&self) -> &'static str {
        match self {
            Local::Avro(_) => "AVRO",
            Local::Json(_) => "JSON",
            Local::Proto(_) => "PROTOBUF",
        }
    }

    /// Registers it under `subject` (or finds it there): its encoder.
    pub fn register(&self, registry: &Registry, subject: &str) -> Result<Encoder, Failure> {
        let id = registry.register(subject, self.text(), self.schema_type())?;
        Encoder::of(self, Some(id))
    }

    /// A registered schema, when it is of the kind asked.
    pub fn from_registered(want: SchemaKind, kind: &Kind) -> Option<Local> {
        match (want, kind) {
            (SchemaKind::Avro, Kind::Avro(s)) => Some(Local::Avro(s.clone())),
            (SchemaKind::Json, Kind::Json(s)) => Some(Local::Json(s.clone())),
            (SchemaKind::Protobuf, Kind::Protobuf(f)) => Some(Local::Proto(f.clone())),
            _ => None,
        }
    }

    /// Its encoder, for a registered schema of `id`.
    pub fn encoder(&self, id: u32) -> Result<Encoder, Failure> {
        Encoder::of(self, Some(id))
    }
}

/// A route's writer: its encoder, once the registry told what it needs.
#[derive(Debug)]
pub struct Writer {
    fixed: Option<Arc<Encoder>>,
    local: Option<Local>,
    /// The kind of a schema taken from the registry.
    kind: SchemaKind,
    subject: String,
    registry: Option<Arc<Registry>>,
    state: Mutex<State>,
    /// Signalled when a request has asked the registry.
    asked: Condvar,
}

#[derive(Debug, Default)]
struct State {
    encoder: Option<Arc<Encoder>>,
    failed: Option<(Instant, Failure)>,
    /// When the registry last confirmed `encoder`.
    checked: Option<Instant>,
    /// A request is asking the registry.
    asking: bool,
}

/// Ends a request's turn at asking the registry, however it ends, and
/// wakes the requests waiting for it.
struct Asking<'a>(&'a Writer);

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if let Ok(mut st) = self.0.state.lock() {
            st.asking = false;
        }
        self.0.asked.notify_all();
    }
}

/// Two writers are the same when they write the same way.
impl PartialEq for Writer {
    fn eq(&self, o: &Writer) -> bool {
        self.subject == o.subject
            && self.local == o.local
            && self.kind == o.kind
            && self.fixed.as_ref().map(|e| e.name()) == o.fixed.as_ref().map(|e| e.name())
            && self.registry.is_some() == o.registry.is_some()
    }
}
impl Eq for Writer {}

/// How long a registry failure is answered without asking again.
const RETRY: Duration = Duration::from_secs(1);

impl Writer {
    pub fn protobuf(schema: Arc<protobuf::Schema>) -> Writer {
        Writer {
            fixed: Some(Arc::new(Encoder::Protobuf { schema, id: None })),
            local: None,
            kind: SchemaKind::Protobuf,
            subject: String::new(),
            registry: None,
            state: Mutex::default(),
            asked: Condvar::new(),
        }
    }

    /// A route of a schema `kind` writing under `subject`: by `local`
    /// and/or the registry (a Protobuf schema from the registry encodes
    /// records as its file's first message).
    pub fn schema(
        kind: SchemaKind,
        local: Option<Local>,
        subject: &str,
        registry: Option<&Arc<Registry>>,
    ) -> Writer {
        let fixed = match (&local, registry) {
            (Some(s), None) => Encoder::of(s, None).ok().map(Arc::new),
            _ => None,
        };
        Writer {
            fixed,
            local,
            kind,
            subject: subject.to_string(),
            registry: registry.cloned(),
            state: Mutex::default(),
            asked: Condvar::new(),
        }
    }

    /// The registry subject it writes under.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The encoder for a request now. One request at a time asks the
    /// registry: while it asks, or for [`RETRY`] after the registry could
    /// not be reached, the schema known so far serves and nobody waits (a
    /// route that has one keeps writing through a registry outage); a
    /// route without one (at start) waits for the answer, up to the
    /// registry's timeout, and shares it, or its failure for [`RETRY`].
    pub fn encoder(&self) -> Result<Arc<Encoder>, Failure> {
        if let Some(e) = &self.fixed {
            return Ok(e.clone());
        }
        let Some(reg) = &self.registry else {
            return Err(Failure::Unreadable("no schema".into()));
        };
        {
            let mut st = self.lock()?;
            let failed = st
                .failed
                .as_ref()
                .filter(|(at, _)| at.elapsed() < RETRY)
                .map(|(_, f)| f.clone());
            if let Some(e) = &st.encoder {
                // A registered file keeps its id for good; a latest version
                // holds for `refresh_s`, and past it while someone asks or
                // the registry cannot be reached.
                let fresh =
                    self.local.is_some() || st.checked.is_some_and(|at| at.elapsed() < reg.refresh);
                if fresh || st.asking || failed.is_some() {
                    return Ok(e.clone());
                }
            } else if let Some(f) = failed {
                return Err(f);
            } else if st.asking {
                // No schema yet (at start): wait for the one asking.
                let wait = reg.timeout + Duration::from_secs(1);
                let (st, _) = self
                    .asked
                    .wait_timeout_while(st, wait, |s| s.asking)
                    .map_err(|_| Failure::Unavailable("poisoned".into()))?;
                return match (&st.encoder, &st.failed) {
                    (Some(e), _) => Ok(e.clone()),
                    (None, Some((_, f))) => Err(f.clone()),
                    (None, None) => Err(Failure::Unavailable(
                        "the schema registry is being asked for the schema".into(),
                    )),
                };
            }
            st.asking = true;
        }
        let _asked = Asking(self);
        // Registered: the id it has; else the latest version.
        let got = match &self.local {
            Some(s) => s.register(reg, &self.subject),
            None => reg.latest(&self.subject).and_then(|r| {
                match Local::from_registered(self.kind, &r.schema) {
                    Some(s) => Encoder::of(&s, Some(r.id)),
                    None => Err(Failure::Unreadable(format!(
                        "the latest schema of subject {} is not {:?}",
                        self.subject, self.kind
                    ))),
                }
            }),
        };
        let mut st = self.lock()?;
        match got {
            Ok(e) => {
                st.checked = Some(Instant::now());
                if st.failed.take().is_some() {
                    log::info!(
                        "subject {}: the schema registry answers again",
                        self.subject
                    );
                }
                if let Some(had) = &st.encoder
                    && had.id() == e.id()
                {
                    return Ok(had.clone());
                }
                let e = Arc::new(e);
                st.encoder = Some(e.clone());
                Ok(e)
            }
            Err(f) => {
                if st.failed.is_none() {
                    let why = match &f {
                        Failure::Unavailable(w) | Failure::Unreadable(w) => w,
                    };
                    let serving = match (&f, &st.encoder) {
                        (Failure::Unavailable(_), Some(_)) => "writing with the schema it has",
                        _ => "its route answers 503",
                    };
                    log::warn!(
                        "subject {}: {why}; {serving} until the registry answers",
                        self.subject
                    );
                }
                st.failed = Some((Instant::now(), f.clone()));
                match (&f, &st.encoder) {
                    // Unreachable: the version known so far goes on.
                    (Failure::Unavailable(_), Some(e)) => Ok(e.clone()),
                    // An answer (no such subject, another kind): it counts.
                    _ => {
                        st.encoder = None;
                        Err(f)
                    }
                }
            }
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, Failure> {
        self.state
            .lock()
            .map_err(|_| Failure::Unavailable("poisoned".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigErrors, Document};
    use std::time::Duration;

    fn registry(url: &str, extra: &str) -> Arc<Registry> {
        let text = format!("[schema_registry]\nurl = {url}\ntimeout_ms = 1500\n{extra}");
        let mut errors = ConfigErrors::default();
        let doc = Document::parse("r.ini", &text, &mut errors);
        Registry::read(&doc, &mut errors).unwrap()
    }

    fn wait_asking(w: &Writer) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !w.state.lock().unwrap().asking {
            assert!(Instant::now() < deadline, "nobody asked the registry");
            std::thread::yield_now();
        }
    }

    #[test]
    fn without_a_schema_requests_wait_for_the_one_asking_and_share_its_answer() {
        // A registry that takes connections and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let reg = registry(&format!("http://{}", silent.local_addr().unwrap()), "");
        let w = Arc::new(Writer::schema(
            SchemaKind::Avro,
            None,
            "t-value",
            Some(&reg),
        ));
        let first = {
            let w = w.clone();
            std::thread::spawn(move || w.encoder())
        };
        wait_asking(&w);
        let second = w.encoder();
        assert!(
            !w.state.lock().unwrap().asking,
            "returned once the first had asked"
        );
        assert!(matches!(
            first.join().unwrap(),
            Err(Failure::Unavailable(_))
        ));
        assert!(
            matches!(&second, Err(Failure::Unavailable(m)) if m.contains("schema registry GET")),
            "the first one's failure: {second:?}"
        );
        // For the next second the failure is the answer, at once.
        let t = Instant::now();
        assert!(matches!(w.encoder(), Err(Failure::Unavailable(_))));
        assert!(t.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn with_a_schema_a_refresh_that_hangs_holds_no_request_and_keeps_the_schema() {
        // Answers the first call with schema 41, then takes calls and
        // never answers them.
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for (n, req) in server.incoming_requests().enumerate() {
                if n == 0 {
                    let body = r#"{"id":41,"version":1,"schema":"\"long\""}"#;
                    let _ = req.respond(tiny_http::Response::from_string(body));
                } else {
                    held.push(req);
                }
            }
        });
        let reg = registry(&url, "refresh_s = 1\n");
        let w = Arc::new(Writer::schema(
            SchemaKind::Avro,
            None,
            "t-value",
            Some(&reg),
        ));
        assert_eq!(w.encoder().unwrap().id(), Some(41));
        // The latest version is asked again after refresh_s.
        std::thread::sleep(Duration::from_millis(1100));
        let refresh = {
            let w = w.clone();
            std::thread::spawn(move || w.encoder())
        };
        wait_asking(&w);
        let t = Instant::now();
        assert_eq!(w.encoder().unwrap().id(), Some(41));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        // The refresh times out and the schema it had goes on.
        assert_eq!(refresh.join().unwrap().unwrap().id(), Some(41));
        assert_eq!(w.encoder().unwrap().id(), Some(41));
    }
}
