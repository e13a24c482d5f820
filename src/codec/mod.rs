//! Payload formats below every role: what a record's bytes are, and how
//! they become the JSON the roles work with, and back. JSON itself; text
//! and binary values as JSON strings (binary in base64); Protobuf by a
//! local descriptor set (seed 002's `protobuf->hash`); Avro by a local
//! `.avsc` or by the schema registry's ids (the Confluent wire format);
//! JSON Schema (JSON checked against it, the frame removed); `auto`, where
//! the magic byte decides. `value_format` and its keys are
//! read here for deliver and collect; ingest's routes use [`writer`].

pub mod avro;
mod avro_decode;
pub mod json;
pub mod jsonschema;
pub mod protobuf;
pub mod protofile;
pub mod registry;
pub mod wire;
pub mod writer;

use std::sync::Arc;

use base64::Engine;

use crate::config::SectionReader;
use registry::{Kind as Registered, Registry};

/// Why a JSON record does not fit a schema: where (a JSON path such as
/// `customer.name` or `tags[2]`; empty for the record itself) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misfit {
    pub path: String,
    pub message: String,
}

/// Why a value could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Never will be (corrupt bytes, an id the registry does not know): a
    /// hostile record.
    Unreadable(String),
    /// Not now: the registry is unreachable or failing; ask again.
    Unavailable(String),
}

#[derive(Debug, Clone)]
enum Kind {
    Json,
    Text,
    Binary,
    Auto,
    Protobuf(Arc<protobuf::Schema>),
    /// Protobuf by the registry's ids and the frame's message indexes.
    ProtobufRegistered,
    /// By the registry's ids when there is one, else by the local schema.
    Avro(Option<Arc<avro::Schema>>),
    /// JSON checked against the schema of the registry's id (the frame
    /// removed), else against the local one.
    JsonSchema(Option<Arc<jsonschema::Schema>>),
}

/// How a record's value is read (`value_format`).
#[derive(Debug, Clone)]
pub struct ValueFormat {
    kind: Kind,
    registry: Option<Arc<Registry>>,
}

/// The keys one format is configured by: `value_format` and its schema
/// keys, or `key_format` and the same with `key_` in front.
struct Keys {
    format: &'static str,
    default: &'static str,
    descriptor: &'static str,
    message: &'static str,
    avsc: &'static str,
    json_schema: &'static str,
}

const VALUE_KEYS: Keys = Keys {
    format: "value_format",
    default: "json",
    descriptor: "protobuf_descriptor_file",
    message: "protobuf_message",
    avsc: "avro_schema_file",
    json_schema: "jsonschema_file",
};

const KEY_KEYS: Keys = Keys {
    format: "key_format",
    default: "text",
    descriptor: "key_protobuf_descriptor_file",
    message: "key_protobuf_message",
    avsc: "key_avro_schema_file",
    json_schema: "key_jsonschema_file",
};

impl ValueFormat {
    /// `value_format` (`json` | `text` | `binary` | `auto` | `protobuf` |
    /// `avro` | `jsonschema`) with `protobuf_descriptor_file` and
    /// `protobuf_message` (protobuf), `avro_schema_file` or
    /// `jsonschema_file` (without a registry); mistakes name their key.
    pub fn read(r: &mut SectionReader<'_>, registry: Option<&Arc<Registry>>) -> ValueFormat {
        Self::read_with(r, registry, &VALUE_KEYS)
    }

    /// `key_format`: the same choices and their keys with `key_` in front
    /// (`key_protobuf_descriptor_file`, `key_protobuf_message`,
    /// `key_avro_schema_file`, `key_jsonschema_file`), except that `text`,
    /// the default, reads keys as they are, as `json` does.
    pub fn read_key(r: &mut SectionReader<'_>, registry: Option<&Arc<Registry>>) -> ValueFormat {
        Self::read_with(r, registry, &KEY_KEYS)
    }

    fn read_with(
        r: &mut SectionReader<'_>,
        registry: Option<&Arc<Registry>>,
        keys: &Keys,
    ) -> ValueFormat {
        let name = r.choice(
            keys.format,
            keys.default,
            &[
                ("json", "json"),
                ("text", "text"),
                ("binary", "binary"),
                ("auto", "auto"),
                ("protobuf", "protobuf"),
                ("avro", "avro"),
                ("jsonschema", "jsonschema"),
            ],
        );
        let file = r.string(keys.descriptor, "");
        let message = r.string(keys.message, "");
        let avsc = r.string(keys.avsc, "");
        let json_schema = r.string(keys.json_schema, "");
        let mut kind = match name {
            // A key's text is the key as it is.
            "text" if keys.format == "key_format" => Kind::Json,
            "text" => Kind::Text,
            "binary" => Kind::Binary,
            "auto" => Kind::Auto,
            _ => Kind::Json,
        };
        if name == "protobuf" && file.is_empty() && registry.is_some() {
            kind = Kind::ProtobufRegistered;
        } else if name == "protobuf" {
            if file.is_empty() {
                r.error(
                    keys.descriptor,
                    format!("required with {} = protobuf without [schema_registry]: a descriptor set (protoc --include_imports --descriptor_set_out)", keys.format),
                );
            } else if message.is_empty() {
                r.error(
                    keys.message,
                    format!(
                        "required with {} = protobuf: the message's full name, e.g. shop.Order",
                        keys.format
                    ),
                );
            } else {
                match protobuf::Schema::open(std::path::Path::new(&file), &message) {
                    Ok(s) => kind = Kind::Protobuf(Arc::new(s)),
                    Err((protobuf::Fault::File, e)) => r.error(keys.descriptor, e),
                    Err((protobuf::Fault::Message, e)) => r.error(keys.message, e),
                }
            }
        }
        if name == "avro" || name == "jsonschema" {
            let (key, file, schema_kind) = match name {
                "avro" => (keys.avsc, &avsc, SchemaKind::Avro),
                _ => (keys.json_schema, &json_schema, SchemaKind::Json),
            };
            let local = match file.is_empty() {
                true => None,
                false => match writer::Local::open(schema_kind, std::path::Path::new(file)) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        r.error(key, e);
                        None
                    }
                },
            };
            if local.is_none() && file.is_empty() && registry.is_none() {
                r.error(
                    keys.format,
                    format!("{name} needs [schema_registry] url (records in the Confluent wire format) or {key} (plain records)"),
                );
            }
            kind = match local {
                Some(writer::Local::Avro(s)) => Kind::Avro(Some(s)),
                Some(writer::Local::Json(s)) => Kind::JsonSchema(Some(s)),
                Some(writer::Local::Proto(_)) => Kind::Json,
                None if name == "avro" => Kind::Avro(None),
                None => Kind::JsonSchema(None),
            };
        }
        ValueFormat {
            kind,
            registry: registry.cloned(),
        }
    }

    /// Whether keys are read as they are (`key_format = text`, `json`).
    pub fn is_plain(&self) -> bool {
        matches!(self.kind, Kind::Json)
    }

    /// A key's text as placeholders, filters and headers use it: a decoded
    /// key that is a JSON string is that string, any other JSON its text;
    /// `Ok(None)`: the key as it is.
    pub fn key_text(json: Option<Vec<u8>>) -> Option<Vec<u8>> {
        let json = json?;
        match serde_json::from_slice::<String>(&json) {
            Ok(s) => Some(s.into_bytes()),
            Err(_) => Some(json),
        }
    }

    /// The value as JSON bytes: `Ok(None)` when it already is (JSON, kept
    /// as it is).
    pub fn to_json(&self, value: &[u8]) -> Result<Option<Vec<u8>>, Failure> {
        let unreadable = Failure::Unreadable;
        match &self.kind {
            Kind::Json => Ok(None),
            Kind::Text => match std::str::from_utf8(value) {
                Ok(t) => Ok(Some(json_string(t))),
                Err(e) => Err(unreadable(format!("value is not UTF-8 text: {e}"))),
            },
            Kind::Binary => Ok(Some(base64_string(value))),
            Kind::Protobuf(s) => s.to_json(value).map(Some).map_err(unreadable),
            Kind::Avro(_) if self.registry.is_some() => {
                self.registered(value, Some(SchemaKind::Avro))
            }
            Kind::JsonSchema(_) if self.registry.is_some() => {
                self.registered(value, Some(SchemaKind::Json))
            }
            Kind::ProtobufRegistered => self.registered(value, Some(SchemaKind::Protobuf)),
            Kind::Avro(Some(s)) => s
                .to_json(value)
                .map(Some)
                .map_err(|e| unreadable(format!("value is not a valid Avro datum: {e}"))),
            Kind::JsonSchema(Some(s)) => s.check(value).map(|()| None).map_err(|m| {
                unreadable(format!(
                    "value does not fit {}: at {:?}: {}",
                    s.name(),
                    m.path,
                    m.message
                ))
            }),
            Kind::Avro(None) | Kind::JsonSchema(None) => Err(unreadable("no schema".into())),
            Kind::Auto => self.auto(value),
        }
    }

    /// A framed value by its registered schema; `want`: the kind
    /// `value_format` expects (`None`: any, for `auto`).
    fn registered(
        &self,
        value: &[u8],
        want: Option<SchemaKind>,
    ) -> Result<Option<Vec<u8>>, Failure> {
        let unreadable = Failure::Unreadable;
        let (Some(reg), Some((id, payload))) = (&self.registry, wire::frame(value)) else {
            return Err(unreadable(
                "value is not in the Confluent wire format (magic byte 0, 4-byte schema id)".into(),
            ));
        };
        let schema = reg.by_id(id)?;
        match (&schema.schema, want) {
            (Registered::Avro(s), None | Some(SchemaKind::Avro)) => {
                s.to_json(payload).map(Some).map_err(|e| {
                    unreadable(format!(
                        "value is not a valid Avro datum of schema {id}: {e}"
                    ))
                })
            }
            (Registered::Json(s), None | Some(SchemaKind::Json)) => match s.check(payload) {
                Ok(()) => Ok(Some(payload.to_vec())),
                Err(m) => Err(unreadable(format!(
                    "value does not fit JSON Schema {id}: at {:?}: {}",
                    m.path, m.message
                ))),
            },
            (Registered::Protobuf(f), None | Some(SchemaKind::Protobuf)) => {
                let framed = wire::protobuf_frame(value).ok_or_else(|| {
                    unreadable(format!(
                        "value of Protobuf schema {id} has no message indexes"
                    ))
                })?;
                let message = f
                    .message(&framed.indexes)
                    .map_err(|e| unreadable(format!("schema {id}: {e}")))?;
                message.decode(framed.payload).map(Some).map_err(unreadable)
            }
            (other, _) => Err(unreadable(format!(
                "schema {id} is {}, not {}",
                kind_name(other),
                match want {
                    Some(SchemaKind::Avro) => "Avro",
                    Some(SchemaKind::Protobuf) => "Protobuf",
                    _ => "a JSON Schema",
                }
            ))),
        }
    }

    /// Framed (magic byte 0, with a registry): as its schema says; else
    /// JSON as it is, UTF-8 text as a string, other bytes in base64.
    fn auto(&self, value: &[u8]) -> Result<Option<Vec<u8>>, Failure> {
        if self.registry.is_some() && wire::frame(value).is_some() {
            return self.registered(value, None);
        }
        if is_json(value) {
            return Ok(None);
        }
        match std::str::from_utf8(value) {
            Ok(t) => Ok(Some(json_string(t))),
            Err(_) => Ok(Some(base64_string(value))),
        }
    }

    /// `kbridge_schema_registry_errors_total`, when values are read
    /// through the registry.
    pub fn prometheus(&self, p: &mut crate::metrics::Prom<'_>) {
        let reads = matches!(
            self.kind,
            Kind::Avro(_) | Kind::JsonSchema(_) | Kind::ProtobufRegistered | Kind::Auto
        );
        if let Some(r) = self.registry.as_ref().filter(|_| reads) {
            r.prometheus(p);
        }
    }

    /// [`to_json`](Self::to_json), waiting out registry outages (asking
    /// again after 100 ms, doubling to 5 s; one WARN per outage, naming
    /// `who`): `Err` only for a value that can never be read, `None` when
    /// `stopped` says so first. `idle` runs in a loop while it waits and
    /// paces it (it keeps the caller's consumer alive: heartbeats, done
    /// reports, a short sleep).
    pub fn to_json_waiting(
        &self,
        value: &[u8],
        who: &str,
        stopped: &dyn Fn() -> bool,
        idle: &mut dyn FnMut(),
    ) -> Option<Result<Option<Vec<u8>>, String>> {
        let mut pause = std::time::Duration::from_millis(100);
        let mut warned = false;
        loop {
            match self.to_json(value) {
                Ok(json) => {
                    if warned {
                        log::info!("{who}: the schema registry answers again");
                    }
                    return Some(Ok(json));
                }
                Err(Failure::Unreadable(why)) => return Some(Err(why)),
                Err(Failure::Unavailable(why)) => {
                    if !warned {
                        log::warn!(
                            "{who}: {why}; waiting for the schema registry (records wait, none is parked for an outage)"
                        );
                        warned = true;
                    }
                    let until = std::time::Instant::now() + pause;
                    while std::time::Instant::now() < until {
                        if stopped() {
                            return None;
                        }
                        idle();
                    }
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }
}

/// A schema file's text parsed by `parse`; errors name the file.
pub fn open_schema<T>(
    file: &std::path::Path,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", file.display()))
}

/// Runs `f` (a schema parser or compiler: they recurse as deep as a
/// schema nests) on a thread of its own with a large stack, so that no
/// schema can overflow the small stacks of connection threads; a parser
/// that panics is an error.
pub fn on_big_stack<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    std::thread::Builder::new()
        .name("schema".into())
        .stack_size(64 << 20)
        .spawn(f)
        .map_err(|e| format!("cannot start the schema parser: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("the schema parser failed on it".into()))
}

/// A kind of registry schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaKind {
    Avro,
    Json,
    Protobuf,
}

fn kind_name(k: &Registered) -> &'static str {
    match k {
        Registered::Avro(_) => "an Avro schema",
        Registered::Json(_) => "a JSON Schema",
        Registered::Protobuf(_) => "a Protobuf schema",
    }
}

/// Whether `b` is one JSON value.
pub fn is_json(b: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(b).is_ok()
}

fn json_string(t: &str) -> Vec<u8> {
    serde_json::to_vec(t).unwrap_or_default()
}

fn base64_string(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() * 4 / 3 + 4);
    out.push(b'"');
    let mut s = String::new();
    base64::engine::general_purpose::STANDARD.encode_string(b, &mut s);
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
    out
}

#[cfg(test)]
mod tests;
