//! What ingest's schema routes write (`[ingest.formats]`): each JSON record
//! encoded as the route's Protobuf message or Avro schema, or checked
//! against its JSON Schema and stored as it is. A route with a registry
//! writes the Confluent wire format: with a local schema (`avro:<file>`,
//! `jsonschema:<file>`) the schema is registered under `<topic>-value` once
//! (or found there) for its id; with none (`avro`, `jsonschema`) the
//! subject's latest version is the schema (asked again after `refresh_s`).
//! Without a registry a route writes plain datums (JSON as it is). While
//! the registry cannot be reached the route answers 503, asking it at most
//! once a second.

use std::sync::{Arc, Mutex};
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
}

#[derive(Debug, Default)]
struct State {
    encoder: Option<Arc<Encoder>>,
    failed: Option<(Instant, Failure)>,
    /// A request is asking the registry.
    asking: bool,
}

/// Ends a request's turn at asking the registry, however it ends.
struct Asking<'a>(&'a Mutex<State>);

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if let Ok(mut st) = self.0.lock() {
            st.asking = false;
        }
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
        }
    }

    /// The registry subject it writes under.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The encoder for a request now. One request at a time asks the
    /// registry, without holding the others: while it asks, or for
    /// [`RETRY`] after the registry could not be reached, the schema known
    /// so far serves (a route that has one keeps writing through a
    /// registry outage); a route without one is answered the failure.
    pub fn encoder(&self) -> Result<Arc<Encoder>, Failure> {
        if let Some(e) = &self.fixed {
            return Ok(e.clone());
        }
        let Some(reg) = &self.registry else {
            return Err(Failure::Unreadable("no schema".into()));
        };
        {
            let mut st = self.lock()?;
            // A registered local schema keeps its id for good.
            if self.local.is_some()
                && let Some(e) = &st.encoder
            {
                return Ok(e.clone());
            }
            let failed = st
                .failed
                .as_ref()
                .filter(|(at, _)| at.elapsed() < RETRY)
                .map(|(_, f)| f.clone());
            if st.asking || failed.is_some() {
                return match (&st.encoder, failed) {
                    (Some(e), _) => Ok(e.clone()),
                    (None, Some(f)) => Err(f),
                    (None, None) => Err(Failure::Unavailable(
                        "the schema registry is being asked for the schema".into(),
                    )),
                };
            }
            st.asking = true;
        }
        let _asked = Asking(&self.state);
        // Registered: the id it has; else the latest version (the registry
        // client caches it for `refresh_s`).
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

    #[test]
    fn one_request_asks_the_registry_and_the_others_are_answered_at_once() {
        // A registry that takes connections and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let text = format!(
            "[schema_registry]\nurl = http://{}\ntimeout_ms = 1500\n",
            silent.local_addr().unwrap()
        );
        let mut errors = ConfigErrors::default();
        let doc = Document::parse("r.ini", &text, &mut errors);
        let reg = Registry::read(&doc, &mut errors).unwrap();
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
        let deadline = Instant::now() + Duration::from_secs(5);
        while !w.state.lock().unwrap().asking {
            assert!(Instant::now() < deadline, "the first request never asked");
            std::thread::yield_now();
        }
        let t = Instant::now();
        let r = w.encoder();
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert!(
            matches!(&r, Err(Failure::Unavailable(m)) if m.contains("being asked")),
            "{r:?}"
        );
        // The first one ends at the registry's timeout, and its failure
        // is the answer for the next second, without asking again.
        assert!(matches!(
            first.join().unwrap(),
            Err(Failure::Unavailable(_))
        ));
        let t = Instant::now();
        assert!(matches!(w.encoder(), Err(Failure::Unavailable(_))));
        assert!(t.elapsed() < Duration::from_millis(500));
        assert!(!w.state.lock().unwrap().asking);
    }
}
