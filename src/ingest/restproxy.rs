//! The Confluent REST Proxy v2 produce API on the ingest listener, as pure
//! functions: `POST /topics/{topic}` and `POST /topics/{topic}/partitions/{p}`
//! for the topics of `[ingest] rest_proxy_topics`, with the
//! `application/vnd.kafka.{json,binary}.v2+json` envelopes
//! (`{"records":[{"key","value","partition"}]}`), answered as the REST Proxy
//! documents (`{"offsets":[{"partition","offset","error_code","error"}],
//! "key_schema_id","value_schema_id"}`, `Content-Type:
//! application/vnd.kafka.v2+json`, errors as `{"error_code","message"}`).
//! The records become the same jobs the native routes make (server.rs and
//! produce.rs stay the one way into Kafka), under the same tokens, limits,
//! budgets, ack modes and idempotency keys. `avro` and `jsonschema`
//! envelopes carry a
//! schema (`value_schema`, `key_schema`: registered under `<topic>-value`,
//! `<topic>-key`) or a schema id (`value_schema_id`, `key_schema_id`), which
//! the caller's `schemas` resolves through the registry; records are
//! encoded in the Confluent wire format and the answer names the ids.
//! `protobuf` envelopes carry `.proto` text (without imports) or ids; a
//! record is the file's first message (message index `[0]`).

use base64::Engine as _;
use serde_json::json;
use serde_json::value::RawValue;

use std::sync::Arc;

use super::body::{RecordLimits, Span};
use super::envelope;
use super::produce::Outcome;
use super::scan;
use crate::codec::writer::Encoder;

/// The answer's content type.
pub const CONTENT_TYPE: &str = "application/vnd.kafka.v2+json";

/// How a record's key and value are embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedded {
    /// Any JSON value, stored as its bytes in the request.
    Json,
    /// A base64 string, stored decoded.
    Binary,
    /// Avro's JSON encoding, stored as Avro in the wire format.
    Avro,
    /// JSON checked against a JSON Schema, stored in the wire format.
    JsonSchema,
    /// Protobuf's JSON mapping, stored as the `.proto`'s first message in
    /// the wire format.
    Protobuf,
}

impl Embedded {
    /// Whether its envelopes name schemas.
    pub fn has_schemas(self) -> bool {
        matches!(
            self,
            Embedded::Avro | Embedded::JsonSchema | Embedded::Protobuf
        )
    }

    /// The kind of schema its envelopes name.
    pub fn schema_kind(self) -> crate::codec::SchemaKind {
        match self {
            Embedded::JsonSchema => crate::codec::SchemaKind::Json,
            Embedded::Protobuf => crate::codec::SchemaKind::Protobuf,
            _ => crate::codec::SchemaKind::Avro,
        }
    }
}

/// A schema an envelope names: its text or its registry id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaRef {
    Text(String),
    Id(u32),
}

/// Resolves a part's (`"key"`, `"value"`) schema to its encoder.
pub type Schemas<'s> = dyn FnMut(&'static str, SchemaRef) -> Result<Arc<Encoder>, Refusal> + 's;

/// What an envelope holds: its values one after the other, a span each,
/// and the ids of the key and value schemas used.
#[derive(Debug)]
pub struct Produced {
    pub values: Vec<u8>,
    pub spans: Vec<Span>,
    pub schema_ids: [Option<u32>; 2],
}

/// A refusal: HTTP status, REST Proxy error code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: u32,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, code: u32, message: String) -> Refusal {
        Refusal {
            status,
            code,
            message,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({ "error_code": self.code, "message": self.message })
    }
}

/// `/topics/{topic}` or `/topics/{topic}/partitions/{p}`: (topic, partition).
pub fn topic_path(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix("/topics/")?.trim_end_matches('/');
    match rest.split_once("/partitions/") {
        Some((topic, p)) if !topic.is_empty() && !p.contains('/') => Some((topic, Some(p))),
        Some(_) => None,
        None if !rest.is_empty() && !rest.contains('/') => Some((rest, None)),
        None => None,
    }
}

/// The route of `path` and the partition its path names: a native route
/// or `/topics/<t>` by exact match, `/topics/<t>/partitions/<p>` by its topic.
pub fn route_of<'a>(
    paths: &std::collections::HashMap<String, usize>,
    path: &'a str,
) -> Option<(usize, Option<&'a str>)> {
    if let Some(r) = paths.get(path) {
        return Some((*r, None));
    }
    let (topic, partition) = topic_path(path)?;
    let r = paths.get(&format!("/topics/{topic}"))?;
    Some((*r, partition))
}

/// An error answer in the REST Proxy's shape: `error_code` is the code
/// given, else the HTTP status.
pub fn error_reply(status: u16, message: &str, code: Option<u64>) -> crate::http::Reply {
    let v = json!({ "error_code": code.unwrap_or(u64::from(status)), "message": message });
    crate::http::body(status, CONTENT_TYPE, v.to_string().into_bytes())
}

/// The partition of a `/partitions/<p>` path, below the count last seen.
pub fn path_partition(p: &str, topic: &str, count: Option<i32>) -> Result<i32, Refusal> {
    let n: i32 = p.parse().ok().filter(|n| *n >= 0).ok_or_else(|| {
        Refusal::new(
            404,
            40402,
            format!("partition {p:?} of topic {topic} not found"),
        )
    })?;
    match count {
        Some(c) if n >= c => Err(Refusal::new(
            404,
            40402,
            format!("partition {n} of topic {topic} not found: it has {c}"),
        )),
        _ => Ok(n),
    }
}

/// Every record's partition exists (as last seen): 404 40402 otherwise.
pub fn check_partitions(spans: &[Span], topic: &str, count: Option<i32>) -> Result<(), Refusal> {
    match (spans.iter().filter_map(|s| s.partition).max(), count) {
        (Some(p), Some(c)) if p >= c => Err(Refusal::new(
            404,
            40402,
            format!("partition {p} of topic {topic} not found: it has {c}"),
        )),
        _ => Ok(()),
    }
}

/// The embedded format of a `Content-Type`.
pub fn embedded(content_type: Option<&str>) -> Result<Embedded, Refusal> {
    let raw = content_type.unwrap_or("");
    let mime = super::body::mime(raw);
    match mime.as_str() {
        "application/vnd.kafka.json.v2+json" => Ok(Embedded::Json),
        "application/vnd.kafka.binary.v2+json" => Ok(Embedded::Binary),
        "application/vnd.kafka.avro.v2+json" => Ok(Embedded::Avro),
        "application/vnd.kafka.jsonschema.v2+json" => Ok(Embedded::JsonSchema),
        "application/vnd.kafka.protobuf.v2+json" => Ok(Embedded::Protobuf),
        _ => Err(Refusal::new(
            415,
            415,
            format!(
                "unsupported Content-Type {raw:?}: expected application/vnd.kafka.{{json,binary,avro,jsonschema,protobuf}}.v2+json"
            ),
        )),
    }
}

/// The records of an envelope: their values one after the other in one
/// buffer, and a span each (its key and partition with it). `path_partition`
/// (from `/partitions/{p}`) applies to records that name none; `schemas`
/// resolves the schemas of avro envelopes.
pub fn records(
    body: &[u8],
    embedded: Embedded,
    path_partition: Option<i32>,
    limits: RecordLimits,
    schemas: &mut Schemas<'_>,
) -> Result<Produced, Refusal> {
    let bad = |m: String| Refusal::new(422, 42205, m);
    let text =
        std::str::from_utf8(body).map_err(|_| bad("the request body is not UTF-8".into()))?;
    let env = envelope::parse(text)?;
    let named = [
        schema_ref("key", env.key_schema, env.key_schema_id.as_ref())?,
        schema_ref("value", env.value_schema, env.value_schema_id.as_ref())?,
    ];
    let mut encoders: [Option<Arc<Encoder>>; 2] = [None, None];
    if !embedded.has_schemas() && named.iter().any(Option::is_some) {
        return Err(Refusal::new(
            422,
            42201,
            "schemas are not taken with the json and binary embedded formats".into(),
        ));
    }
    let records = envelope::records(env.records.get(), limits.max_records)?;
    if embedded.has_schemas() {
        if named[1].is_none() {
            return Err(Refusal::new(
                422,
                42201,
                "value_schema or value_schema_id is required with the avro, jsonschema and protobuf embedded formats".into(),
            ));
        }
        for (i, (part, r)) in ["key", "value"].into_iter().zip(named).enumerate() {
            if let Some(r) = r {
                encoders[i] = Some(schemas(part, r)?);
            }
        }
    }
    if records.is_empty() {
        return Err(bad("records: expected at least one record".into()));
    }
    let mut values = Vec::new();
    let mut spans = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let field = |part: &str, raw: &RawValue| -> Result<Option<Vec<u8>>, Refusal> {
            let s = raw.get();
            match embedded {
                _ if s == "null" => Ok(None),
                Embedded::Json => {
                    if scan::check_depth(s.as_bytes(), limits.max_depth).is_err() {
                        return Err(bad(format!(
                            "records[{i}].{part}: nests deeper than max_json_depth ({})",
                            limits.max_depth
                        )));
                    }
                    Ok(Some(s.as_bytes().to_vec()))
                }
                Embedded::Avro | Embedded::JsonSchema | Embedded::Protobuf => {
                    let slot = usize::from(part == "value");
                    let enc = encoders[slot].as_ref().ok_or_else(|| {
                        Refusal::new(
                            422,
                            42201,
                            format!("records[{i}].{part}: a key needs key_schema or key_schema_id"),
                        )
                    })?;
                    let mut out = Vec::new();
                    enc.encode(s.as_bytes(), &mut out).map_err(|m| {
                        let at = match m.path.is_empty() {
                            true => String::new(),
                            false => format!(".{}", m.path),
                        };
                        bad(format!(
                            "records[{i}].{part}{at}: does not fit {}: {}",
                            enc.name(),
                            m.message
                        ))
                    })?;
                    Ok(Some(out))
                }
                Embedded::Binary => {
                    let b64: String = serde_json::from_str(s).map_err(|_| {
                        bad(format!(
                            "records[{i}].{part}: expected a base64 string or null"
                        ))
                    })?;
                    base64::engine::general_purpose::STANDARD
                        .decode(b64.as_bytes())
                        .map(Some)
                        .map_err(|e| bad(format!("records[{i}].{part}: invalid base64: {e}")))
                }
            }
        };
        let Some(value) = field("value", r.value)? else {
            return Err(bad(format!(
                "records[{i}].value: null values (tombstones) are not taken"
            )));
        };
        let key = match r.key {
            Some(k) => field("key", k)?,
            None => None,
        };
        let size = value.len() + key.as_ref().map_or(0, Vec::len);
        if size > limits.max_bytes {
            return Err(Refusal::new(
                422,
                42201,
                format!(
                    "records[{i}]: key and value hold {size} bytes, more than max_record_bytes ({})",
                    limits.max_bytes
                ),
            ));
        }
        if let Some(p) = r.partition
            && p < 0
        {
            return Err(Refusal::new(
                422,
                42202,
                format!("records[{i}].partition: expected a partition number, got {p}"),
            ));
        }
        let start = values.len();
        values.extend_from_slice(&value);
        spans.push(Span {
            range: start..values.len(),
            key,
            partition: r.partition.or(path_partition),
        });
    }
    let id = |e: &Option<Arc<Encoder>>| e.as_deref().and_then(Encoder::id);
    Ok(Produced {
        values,
        spans,
        schema_ids: [id(&encoders[0]), id(&encoders[1])],
    })
}

/// The schema an envelope names for `part`: its text, or its id.
fn schema_ref(
    part: &str,
    text: Option<&RawValue>,
    id: Option<&serde_json::Value>,
) -> Result<Option<SchemaRef>, Refusal> {
    let bad = |m: String| Refusal::new(422, 42201, m);
    match (text, id) {
        (Some(_), Some(_)) => Err(bad(format!(
            "{part}_schema and {part}_schema_id: give one of them"
        ))),
        (Some(t), None) => {
            let s: String = serde_json::from_str(t.get()).map_err(|_| {
                bad(format!(
                    "{part}_schema: expected the schema as a JSON string"
                ))
            })?;
            Ok(Some(SchemaRef::Text(s)))
        }
        (None, Some(v)) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(|n| Some(SchemaRef::Id(n)))
            .ok_or_else(|| bad(format!("{part}_schema_id: expected a schema id, got {v}"))),
        (None, None) => Ok(None),
    }
}

/// The answer to a settled request: 200 with an entry per record (an
/// `error_code` of 1 for a retriable failure, 2 otherwise, as the REST Proxy
/// reports Kafka errors per record), or the status a native route would
/// give when no record was stored.
pub fn answer(outcomes: &[Outcome], schema_ids: [Option<u32>; 2]) -> (u16, String) {
    let mut any_ok = false;
    let mut worst = 200;
    let offsets: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Acked { partition, offset } => {
                any_ok = true;
                json!({"partition": partition, "offset": offset, "error_code": null, "error": null})
            }
            Outcome::Failed {
                message,
                retriable,
                possibly_stored,
                ..
            } => {
                worst = worst.max(match (possibly_stored, retriable) {
                    (true, _) => 504,
                    (false, true) => 503,
                    (false, false) => 500,
                });
                json!({"partition": null, "offset": null,
                       "error_code": if *retriable { 1 } else { 2 }, "error": message})
            }
            Outcome::Waiting => {
                json!({"partition": null, "offset": null, "error_code": 2, "error": "not settled"})
            }
        })
        .collect();
    let status = if any_ok { 200 } else { worst };
    let body = json!({"offsets": offsets, "key_schema_id": schema_ids[0], "value_schema_id": schema_ids[1]});
    (status, body.to_string())
}

#[cfg(test)]
#[path = "restproxy_tests.rs"]
mod tests;
