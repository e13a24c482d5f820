//! One ingest request → its records: route checks (`?partition=`, record
//! headers), the body as the budget charges it (decoded, split), and what
//! the route takes — JSON records, text or binary ones, or REST Proxy v2
//! envelopes. Every problem is a refusal (status, message, extra fields),
//! found before anything is enqueued.

use serde_json::json;
use tiny_http::Request;

use super::Shared;
use super::body::{self, BodyError};
use super::cost;
use super::raw::RouteFormat;
use super::restproxy;
use crate::http::header_value;

const HEADER_PREFIX: &str = "x-kafka-header-";
/// Record headers of this prefix are kbridge's own (retry and dead-letter
/// bookkeeping); clients cannot set them.
const RESERVED_PREFIX: &str = "kbridge-";
/// A request that passed every check.
pub(super) struct Parsed {
    pub body: Vec<u8>,
    pub spans: Vec<body::Span>,
    pub partition: Option<i32>,
    pub key: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The key and value schema ids of a REST Proxy avro envelope.
    pub schema_ids: [Option<u32>; 2],
    /// What the request holds of the budget (see `cost`).
    pub charge: tiny_http::Reservation,
}

type Reject = (u16, String, serde_json::Value);

pub(super) fn parse(
    shared: &Shared,
    req: &mut Request,
    query: &str,
    route: usize,
    path_partition: Option<&str>,
) -> Result<Parsed, Reject> {
    let v2 = |r: restproxy::Refusal| (r.status, r.message, json!({ "error_code": r.code }));
    let body_err = |e: BodyError| {
        let mut extra = json!({});
        if let Some((line, column)) = e.position() {
            extra = json!({ "line": line, "column": column });
        }
        if let Some(i) = e.record() {
            extra["record"] = json!(i);
        }
        if let BodyError::Misfit { path, .. } = &e {
            extra["path"] = json!(path);
        }
        (e.status(), e.to_string(), extra)
    };
    let partition = parse_query(shared, query, route)?;
    let route_format = shared.routes[route].format;
    let topic = &shared.routes[route].topic;
    // Partition counts matter to REST Proxy routes only (native ones check
    // `?partition=` in `parse_query`).
    let count = match shared.routes[route].rest_proxy {
        true => shared.probe.partitions(topic),
        false => None,
    };
    // REST Proxy envelopes, JSON records (the common case: the type judged
    // without a copy), text or binary records.
    let (embedded, format, content_type) = match (shared.routes[route].rest_proxy, route_format) {
        (true, _) => {
            let e = restproxy::embedded(header_value(req, "Content-Type")).map_err(v2)?;
            if e.has_schemas() && shared.config.registry.is_none() {
                return Err((
                    415,
                    "the avro and jsonschema embedded formats need [schema_registry] url".into(),
                    json!({ "error_code": 415 }),
                ));
            }
            (Some(e), None, None)
        }
        (false, RouteFormat::Json | RouteFormat::Schema) => (
            None,
            Some(body::format_of(header_value(req, "Content-Type")).map_err(body_err)?),
            None,
        ),
        (false, RouteFormat::Text | RouteFormat::Binary) => (
            None,
            None,
            header_value(req, "Content-Type").map(str::to_string),
        ),
    };
    let path_partition = match path_partition {
        Some(p) => Some(restproxy::path_partition(p, topic, count).map_err(v2)?),
        None => None,
    };
    let encoding = header_value(req, "Content-Encoding").map(str::to_string);
    let key = header_value(req, "X-Kafka-Key").map(str::to_string);
    let headers: Vec<(String, Vec<u8>)> = req
        .headers()
        .iter()
        .filter_map(|h| {
            let name = h.field.as_str().as_str();
            let suffix = name.get(HEADER_PREFIX.len()..)?;
            (name[..HEADER_PREFIX.len()].eq_ignore_ascii_case(HEADER_PREFIX) && !suffix.is_empty())
                .then(|| (suffix.to_string(), h.value.as_str().as_bytes().to_vec()))
        })
        .collect();
    if let Some((name, _)) = headers.iter().find(|(n, _)| {
        n.len() >= RESERVED_PREFIX.len()
            && n[..RESERVED_PREFIX.len()].eq_ignore_ascii_case(RESERVED_PREFIX)
    }) {
        return Err((
            400,
            format!(
                "header X-Kafka-Header-{name}: record headers named {RESERVED_PREFIX}* are kbridge's own"
            ),
            json!({}),
        ));
    }

    let max = shared.config.limits.max_body_bytes;
    let budget = shared.budget.max();
    let refused = |r: cost::Refused| {
        let (status, msg) = r.reply();
        (status, msg, json!({}))
    };
    // The body as the server charged it, then everything it grows into.
    let mut charge = match req.take_reservation().or_else(|| shared.budget.reserve(0)) {
        Some(c) => c,
        None => return Err(refused(cost::Refused::Busy)),
    };
    let wire = req
        .take_body()
        .map_err(|e| (400, format!("cannot read the request body: {e}"), json!({})))?;
    if wire.len() > max {
        return Err(body_err(BodyError::TooLarge { max }));
    }
    let mut over = None;
    let decoded = body::decode_charged(encoding.as_deref(), wire, max, &mut |n| match cost::grow(
        &mut charge,
        n,
        budget,
    ) {
        Ok(()) => true,
        Err(r) => {
            over = Some(r);
            false
        }
    });
    let decoded = match (decoded, over) {
        (Ok(d), _) => d,
        (Err(_), Some(r)) => return Err(refused(r)),
        (Err(e), None) => return Err(body_err(e)),
    };
    // From here the body held is the decoded one (inflated, the wire form
    // it came from is gone; identity hands the wire form on).
    charge.shrink(charge.bytes().saturating_sub(decoded.len()));
    let limits = body::RecordLimits {
        max_bytes: shared.config.max_record_bytes,
        max_records: shared.config.max_records,
        max_depth: shared.config.max_json_depth,
    };
    let scratch = cost::records_bound(&decoded, limits.max_records) * cost::SPLIT_SCRATCH;
    cost::grow(&mut charge, scratch, budget).map_err(refused)?;
    let mut schema_ids = [None, None];
    let (body, spans) = match (embedded, format) {
        (Some(e), _) => {
            let registry = shared.config.registry.as_deref();
            let mut schemas = |part: &'static str, r: restproxy::SchemaRef| {
                envelope_schema(registry, e.schema_kind(), topic, part, r)
            };
            let restproxy::Produced {
                values,
                spans,
                schema_ids: ids,
            } = restproxy::records(&decoded, e, path_partition, limits, &mut schemas)
                .map_err(v2)?;
            schema_ids = ids;
            restproxy::check_partitions(&spans, topic, count).map_err(v2)?;
            // The values, copied out of their envelope, replace it.
            cost::grow(&mut charge, values.len(), budget).map_err(refused)?;
            charge.shrink(decoded.len());
            (values, spans)
        }
        (None, Some(format)) => {
            let (_, spans) =
                body::split(&decoded, format, shared.config.key_field.as_deref(), limits)
                    .map_err(body_err)?;
            match &shared.routes[route].writer {
                // Each record encoded as the route's schema says, in a new buffer.
                Some(writer) => {
                    let encoder = writer.encoder().map_err(|f| schema_unavailable(f, topic))?;
                    let (values, spans) =
                        encode(&encoder, &decoded, spans, limits.max_bytes).map_err(body_err)?;
                    cost::grow(&mut charge, values.len(), budget).map_err(refused)?;
                    charge.shrink(decoded.len());
                    (values, spans)
                }
                None => (decoded, spans),
            }
        }
        (None, None) => {
            let spans =
                super::raw::records(&decoded, route_format, content_type.as_deref(), limits)
                    .map_err(body_err)?;
            (decoded, spans)
        }
    };
    charge.shrink(scratch);
    let records = cost::of_records(&spans, key.as_deref(), &headers);
    cost::grow(&mut charge, records, budget).map_err(refused)?;
    Ok(Parsed {
        body,
        spans,
        partition,
        key,
        headers,
        schema_ids,
        charge,
    })
}

/// The encoder of a REST Proxy avro or jsonschema envelope's schema: its
/// text is parsed and registered under `<topic>-<part>` (or found there),
/// its id looked up. Refusals as the REST Proxy gives them: 42201 a schema
/// that is none of the kind or that the registry refuses, 40403 an unknown
/// id, 415 without a registry, 503 (50301) while the registry cannot be
/// reached.
fn envelope_schema(
    registry: Option<&crate::codec::registry::Registry>,
    kind: crate::codec::SchemaKind,
    topic: &str,
    part: &'static str,
    named: restproxy::SchemaRef,
) -> Result<std::sync::Arc<crate::codec::writer::Encoder>, restproxy::Refusal> {
    use crate::codec::Failure;
    use crate::codec::writer::Local;
    use restproxy::{Refusal, SchemaRef};
    use std::sync::Arc;
    let reg = registry.ok_or_else(|| {
        Refusal::new(
            415,
            415,
            "schema embedded formats need [schema_registry] url".into(),
        )
    })?;
    let down = |why: String| Refusal::new(503, 50301, why);
    let invalid = |why: String| Refusal::new(422, 42201, why);
    match named {
        SchemaRef::Text(text) => {
            let schema = reg
                .parsed(kind, &text)
                .map_err(|e| invalid(format!("{part}_schema: {e}")))?;
            match schema.register(reg, &format!("{topic}-{part}")) {
                Ok(e) => Ok(Arc::new(e)),
                Err(Failure::Unavailable(why)) => Err(down(why)),
                Err(Failure::Unreadable(why)) => Err(invalid(format!("{part}_schema: {why}"))),
            }
        }
        SchemaRef::Id(id) => match reg.by_id(id) {
            Ok(r) => match Local::from_registered(kind, &r.schema) {
                Some(s) => s.encoder(id).map(Arc::new).map_err(|f| match f {
                    Failure::Unavailable(why) | Failure::Unreadable(why) => {
                        invalid(format!("{part}_schema_id: {why}"))
                    }
                }),
                None => Err(invalid(format!(
                    "{part}_schema_id: schema {id} is not {kind:?}"
                ))),
            },
            Err(Failure::Unavailable(why)) => Err(down(why)),
            Err(Failure::Unreadable(why)) => {
                Err(Refusal::new(404, 40403, format!("{part}_schema_id: {why}")))
            }
        },
    }
}

/// `?partition=N`, checked against the partition count last seen.
fn parse_query(shared: &Shared, query: &str, route: usize) -> Result<Option<i32>, Reject> {
    let mut partition = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "partition" => {
                let p: i32 = v.parse().ok().filter(|p| *p >= 0).ok_or_else(|| {
                    (
                        400,
                        format!(
                            "query parameter partition: expected a partition number >= 0, got {v:?}"
                        ),
                        json!({}),
                    )
                })?;
                let topic = &shared.routes[route].topic;
                if let Some(n) = shared.probe.partitions(topic)
                    && p >= n
                {
                    return Err((
                        400,
                        format!(
                            "query parameter partition: topic {topic} has {n} partitions (0..={}), got {p}",
                            n - 1
                        ),
                        json!({}),
                    ));
                }
                if partition.replace(p).is_some() {
                    return Err((
                        400,
                        "query parameter partition given more than once".into(),
                        json!({}),
                    ));
                }
            }
            other => {
                return Err((
                    400,
                    format!("unknown query parameter {other:?}: only partition is accepted"),
                    json!({}),
                ));
            }
        }
    }
    Ok(partition)
}

/// Why a schema route cannot encode now: the registry is unreachable
/// (503, try again) or does not have what the route needs (503 too: it
/// takes an operator, not the client, to register it).
fn schema_unavailable(f: crate::codec::Failure, topic: &str) -> Reject {
    let why = match f {
        crate::codec::Failure::Unavailable(w) => w,
        crate::codec::Failure::Unreadable(w) => w,
    };
    (
        503,
        format!("the schema of topic {topic} cannot be had now: {why}"),
        json!({}),
    )
}

/// The records of `body` encoded as the route's schema says: one buffer
/// of values, the spans moved onto it (keys kept). A record that does not
/// fit names its index and field path.
fn encode(
    schema: &crate::codec::writer::Encoder,
    body: &[u8],
    spans: Vec<body::Span>,
    max_bytes: usize,
) -> Result<(Vec<u8>, Vec<body::Span>), BodyError> {
    let mut values = Vec::with_capacity(body.len());
    let mut out = Vec::with_capacity(spans.len());
    for (index, s) in spans.into_iter().enumerate() {
        let start = values.len();
        schema
            .encode(&body[s.range.clone()], &mut values)
            .map_err(|m| BodyError::Misfit {
                index,
                message: schema.name(),
                path: m.path,
                why: m.message,
            })?;
        if values.len() - start > max_bytes {
            return Err(BodyError::RecordTooLarge {
                index,
                size: values.len() - start,
                max: max_bytes,
            });
        }
        out.push(body::Span {
            range: start..values.len(),
            ..s
        });
    }
    Ok((values, out))
}
