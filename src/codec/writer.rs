//! What ingest's schema routes write (`[ingest.formats]`): each JSON record
//! encoded as the route's Protobuf message or Avro schema. An Avro route
//! with a registry writes the Confluent wire format: with a local `.avsc`
//! (`avro:<file>`) the schema is registered under `<topic>-value` once (or
//! found there) for its id; with none (`avro`) the subject's latest
//! version is the schema (asked again after `refresh_s`). Without a
//! registry an Avro route writes plain datums. While the registry cannot
//! be reached the route answers 503, asking it at most once a second.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::registry::{Kind, Registry};
use super::{Failure, Misfit, avro, protobuf, wire};

/// How a route's records are encoded once its schema is known.
#[derive(Debug)]
pub enum Encoder {
    Protobuf(Arc<protobuf::Schema>),
    /// `id`: the registry's, written as the wire format's frame.
    Avro {
        schema: Arc<avro::Schema>,
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
        }
    }

    /// The schema's name, for errors.
    pub fn name(&self) -> String {
        match self {
            Encoder::Protobuf(s) => s.name().to_string(),
            Encoder::Avro { schema, .. } => schema.name(),
        }
    }
}

/// A route's writer: its encoder, once the registry told what it needs.
#[derive(Debug)]
pub struct Writer {
    fixed: Option<Arc<Encoder>>,
    local: Option<Arc<avro::Schema>>,
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
            && self.fixed.as_ref().map(|e| e.name()) == o.fixed.as_ref().map(|e| e.name())
            && self.registry.is_some() == o.registry.is_some()
    }
}
impl Eq for Writer {}

/// How long a registry failure is answered without asking again.
const RETRY: Duration = Duration::from_secs(1);

impl Writer {
    pub fn protobuf(schema: Arc<protobuf::Schema>) -> Writer {
        Writer::new(Some(Arc::new(Encoder::Protobuf(schema))), None, "", None)
    }

    /// An Avro route of `topic`: by `local` and/or the registry.
    pub fn avro(
        local: Option<Arc<avro::Schema>>,
        topic: &str,
        registry: Option<&Arc<Registry>>,
    ) -> Writer {
        let fixed = match (&local, registry) {
            (Some(s), None) => Some(Arc::new(Encoder::Avro {
                schema: s.clone(),
                id: None,
            })),
            _ => None,
        };
        Writer::new(fixed, local, &format!("{topic}-value"), registry.cloned())
    }

    fn new(
        fixed: Option<Arc<Encoder>>,
        local: Option<Arc<avro::Schema>>,
        subject: &str,
        registry: Option<Arc<Registry>>,
    ) -> Writer {
        Writer {
            fixed,
            local,
            subject: subject.to_string(),
            registry,
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
            Some(s) => reg.register(&self.subject, s).map(|id| (s.clone(), id)),
            None => reg.latest(&self.subject).and_then(|r| match &r.schema {
                Kind::Avro(s) => Ok((s.clone(), r.id)),
                _ => Err(Failure::Unreadable(format!(
                    "the latest schema of subject {} is not an Avro schema",
                    self.subject
                ))),
            }),
        };
        match got {
            Ok((schema, id)) => {
                if let Some(e) = &st.encoder
                    && let Encoder::Avro { id: Some(had), .. } = **e
                    && had == id
                {
                    return Ok(e.clone());
                }
                let e = Arc::new(Encoder::Avro {
                    schema,
                    id: Some(id),
                });
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
