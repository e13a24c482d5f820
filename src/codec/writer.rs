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
use super::{Failure, Misfit, avro, jsonschema, protobuf, wire};

/// How a route's records are encoded once its schema is known; `id`: the
/// registry's, written as the wire format's frame.
#[derive(Debug)]
pub enum Encoder {
    Protobuf(Arc<protobuf::Schema>),
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
            Encoder::Protobuf(s) => {
                out.extend_from_slice(&s.from_json(json)?);
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
            Encoder::Protobuf(s) => s.name().to_string(),
            Encoder::Avro { schema, .. } => schema.name(),
            Encoder::JsonSchema { schema, .. } => schema.name(),
        }
    }

    /// The registry id it writes, if any.
    pub fn id(&self) -> Option<u32> {
        match self {
            Encoder::Protobuf(_) => None,
            Encoder::Avro { id, .. } | Encoder::JsonSchema { id, .. } => *id,
        }
    }

    /// An encoder of `schema` (a registered one: `id`).
    fn of(schema: &Local, id: Option<u32>) -> Encoder {
        match schema {
            Local::Avro(s) => Encoder::Avro {
                schema: s.clone(),
                id,
            },
            Local::Json(s) => Encoder::JsonSchema {
                schema: s.clone(),
                id,
            },
        }
    }
}

/// A schema a route or an envelope names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    Avro(Arc<avro::Schema>),
    Json(Arc<jsonschema::Schema>),
}

impl Local {
    /// Parses `text` as the kind of `like` (`avro` or `jsonschema`).
    pub fn parse(avro: bool, text: &str) -> Result<Local, String> {
        match avro {
            true => avro::Schema::parse(text).map(|s| Local::Avro(Arc::new(s))),
            false => jsonschema::Schema::parse(text).map(|s| Local::Json(Arc::new(s))),
        }
    }

    /// Reads a schema file of that kind.
    pub fn open(avro: bool, file: &std::path::Path) -> Result<Local, String> {
        match avro {
            true => avro::Schema::open(file).map(|s| Local::Avro(Arc::new(s))),
            false => jsonschema::Schema::open(file).map(|s| Local::Json(Arc::new(s))),
        }
    }

    fn text(&self) -> &str {
        match self {
            Local::Avro(s) => s.text(),
            Local::Json(s) => s.text(),
        }
    }

    /// The registry's `schemaType`.
    fn schema_type(&self) -> &'static str {
        match self {
            Local::Avro(_) => "AVRO",
            Local::Json(_) => "JSON",
        }
    }

    /// Registers it under `subject` (or finds it there): its encoder.
    pub fn register(&self, registry: &Registry, subject: &str) -> Result<Encoder, Failure> {
        let id = registry.register(subject, self.text(), self.schema_type())?;
        Ok(Encoder::of(self, Some(id)))
    }

    /// The encoder of a registered schema, when it is of the kind asked.
    pub fn from_registered(avro: bool, kind: &Kind) -> Option<Local> {
        match (avro, kind) {
            (true, Kind::Avro(s)) => Some(Local::Avro(s.clone())),
            (false, Kind::Json(s)) => Some(Local::Json(s.clone())),
            _ => None,
        }
    }
}

/// A route's writer: its encoder, once the registry told what it needs.
#[derive(Debug)]
pub struct Writer {
    fixed: Option<Arc<Encoder>>,
    local: Option<Local>,
    /// Avro (else JSON Schema), for a schema taken from the registry.
    avro: bool,
    subject: String,
    registry: Option<Arc<Registry>>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    encoder: Option<Arc<Encoder>>,
    failed: Option<(Instant, Failure)>,
}

/// Two writers are the same when they write the same way.
impl PartialEq for Writer {
    fn eq(&self, o: &Writer) -> bool {
        self.subject == o.subject
            && self.local == o.local
            && self.avro == o.avro
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
            fixed: Some(Arc::new(Encoder::Protobuf(schema))),
            local: None,
            avro: false,
            subject: String::new(),
            registry: None,
            state: Mutex::default(),
        }
    }

    /// An Avro (`avro`) or JSON Schema route of `topic`: by `local` and/or
    /// the registry.
    pub fn schema(
        avro: bool,
        local: Option<Local>,
        topic: &str,
        registry: Option<&Arc<Registry>>,
    ) -> Writer {
        let fixed = match (&local, registry) {
            (Some(s), None) => Some(Arc::new(Encoder::of(s, None))),
            _ => None,
        };
        Writer {
            fixed,
            local,
            avro,
            subject: format!("{topic}-value"),
            registry: registry.cloned(),
            state: Mutex::default(),
        }
    }

    /// The encoder for a request now.
    pub fn encoder(&self) -> Result<Arc<Encoder>, Failure> {
        if let Some(e) = &self.fixed {
            return Ok(e.clone());
        }
        let Some(reg) = &self.registry else {
            return Err(Failure::Unreadable("no schema".into()));
        };
        let mut st = self
            .state
            .lock()
            .map_err(|_| Failure::Unavailable("poisoned".into()))?;
        if let Some((at, f)) = &st.failed
            && at.elapsed() < RETRY
        {
            return Err(f.clone());
        }
        // A registered local schema keeps its id; the latest version is
        // looked up (the registry client caches it for `refresh_s`).
        if self.local.is_some()
            && let Some(e) = &st.encoder
        {
            return Ok(e.clone());
        }
        let got = match &self.local {
            Some(s) => s.register(reg, &self.subject),
            None => reg.latest(&self.subject).and_then(|r| {
                match Local::from_registered(self.avro, &r.schema) {
                    Some(s) => Ok(Encoder::of(&s, Some(r.id))),
                    None => Err(Failure::Unreadable(format!(
                        "the latest schema of subject {} is not {}",
                        self.subject,
                        if self.avro {
                            "an Avro schema"
                        } else {
                            "a JSON Schema"
                        }
                    ))),
                }
            }),
        };
        match got {
            Ok(e) => {
                if let Some(had) = &st.encoder
                    && had.id() == e.id()
                {
                    return Ok(had.clone());
                }
                let e = Arc::new(e);
                st.encoder = Some(e.clone());
                st.failed = None;
                Ok(e)
            }
            Err(f) => {
                st.failed = Some((Instant::now(), f.clone()));
                Err(f)
            }
        }
    }
}
