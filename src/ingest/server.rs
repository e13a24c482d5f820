//! The HTTP half of ingest: one request → route, checks, body decoding and
//! splitting, idempotency, then a bounded `send_timeout` into the job channel
//! (the workers hold the receiver). Everything is validated before anything
//! is enqueued, so a rejected request produces nothing.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{SendTimeoutError, Sender};
use log::debug;
use serde_json::json;
use tiny_http::{Method, Request};

use super::Shared;
use super::auth::Denied;
use super::body::{self, BodyError};
use super::config::AckMode;
use super::cost;
use super::idempotency::{Answer, Begin, Window};
use super::produce::{Job, Pending};
use super::raw::RouteFormat;
use crate::http::{self, error_reply, header_value, json_reply, with_header, with_retry_after};

const HEADER_PREFIX: &str = "x-kafka-header-";
/// Record headers of this prefix are kbridge's own (retry and dead-letter
/// bookkeeping); clients cannot set them.
const RESERVED_PREFIX: &str = "kbridge-";
/// Longest `Idempotency-Key` accepted, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The first request of an idempotency key, until its answer is recorded.
/// Dropped unanswered (a panic on the way), it releases the key with a 500
/// for the requests that wait on it, so none waits forever.
pub(crate) struct Ticket {
    window: Arc<Mutex<Window<Request>>>,
    key: String,
    done: AtomicBool,
}

impl Ticket {
    /// Records the answer once; returns the requests that waited for it.
    fn finish(&self, answer: &Answer) -> Vec<Request> {
        if self.done.swap(true, Ordering::AcqRel) {
            return Vec::new();
        }
        match self.window.lock() {
            Ok(mut w) => w.finish(&self.key, answer, Instant::now()),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let body = json!({ "status": 500, "error": "the first request with this Idempotency-Key failed inside kbridge; retry" });
        let answer = Answer {
            status: 500,
            body: Arc::from(body.to_string()),
        };
        for w in self.finish(&answer) {
            http::send(w, json_reply(500, &body));
        }
    }
}

/// Answers one request (every branch ends in a response).
pub fn handle(shared: &Shared, jobs: &Sender<Job>, mut req: Request) {
    let started = Instant::now();
    let (path, query) = http::split_url(req.url());
    let (path, query) = (path.to_string(), query.to_string());
    let path = path.as_str();
    let route = shared.paths.get(path).copied();
    // The server checked the token from the head, before reading the body
    // (`head_check`): what arrives here is authenticated.
    let who = match &shared.auth {
        None => None,
        Some(_) => match req.principal() {
            Some(name) => Some(name.to_string()),
            None => {
                let denied = refusal(Denied::Unauthorized, path);
                return shared.reply(req, route, started, http_reply(denied));
            }
        },
    };
    if let Some(name) = &who {
        debug!(target: "kbridge::ingest::access", "{name}: {} {path}", req.method());
    }
    let Some(route) = route else {
        let msg = format!("no route for {path}; routes: {}", shared.route_list());
        return shared.reply(req, None, started, error_reply(404, &msg, json!({})));
    };
    if *req.method() != Method::Post {
        let msg = format!("method {} not allowed on {path}: use POST", req.method());
        let r = with_header(error_reply(405, &msg, json!({})), "Allow", "POST");
        return shared.reply(req, Some(route), started, r);
    }
    let parsed = match parse(shared, &mut req, &query, route) {
        Ok(p) => p,
        Err((status, msg, extra)) => {
            // The server read the whole body before this handler saw it, so
            // the connection's framing is intact: it stays open.
            let mut r = error_reply(status, &msg, extra);
            if status == 503 {
                r = with_retry_after(r, 1);
            }
            return shared.reply(req, Some(route), started, r);
        }
    };
    let topic = shared.routes[route].topic.clone();
    let records = parsed.spans.len();

    let mut ticket = None;
    if let Some(key) = header_value(&req, "Idempotency-Key").map(str::to_string)
        && !shared.config.idempotency_window.is_zero()
    {
        if key.len() > MAX_IDEMPOTENCY_KEY || key.is_empty() {
            let msg = format!(
                "Idempotency-Key: expected 1 to {MAX_IDEMPOTENCY_KEY} bytes, got {}",
                key.len()
            );
            return shared.reply(req, Some(route), started, error_reply(400, &msg, json!({})));
        }
        // One client cannot replay (and read) another's answer, nor evict
        // another's keys: each token name has a window of its own.
        let names = shared.auth.as_ref().map_or(1, |a| a.names());
        let Some(window) = shared.idempotency.of(who.as_deref().unwrap_or(""), names) else {
            return; // poisoned: the request went with the panic
        };
        let hash = body_hash(route, &parsed);
        let begun = match window.lock() {
            Ok(mut w) => w.begin(&key, hash, req, Instant::now()),
            Err(_) => return, // poisoned: the request went with the panic
        };
        req = match begun {
            Begin::New(r) => r,
            Begin::Parked => return,
            Begin::Replay(answer, r) => {
                shared.metrics.idempotent_replays.inc();
                let reply = with_header(
                    http::body(
                        answer.status,
                        "application/json",
                        answer.body.as_bytes().to_vec(),
                    ),
                    "Idempotent-Replayed",
                    "true",
                );
                return shared.reply(r, Some(route), started, reply);
            }
            Begin::Mismatch(r) => {
                let msg = format!("Idempotency-Key {key:?} was used with a different request");
                return shared.reply(r, Some(route), started, error_reply(422, &msg, json!({})));
            }
        };
        ticket = Some(Ticket {
            window,
            key,
            done: AtomicBool::new(false),
        });
    }

    let queued = shared.config.ack == AckMode::Queued;
    // ack = kafka: the ticket travels with the request and is settled by
    // the responder; ack = queued: here.
    let (kept, travels) = if queued {
        (ticket, None)
    } else {
        (None, ticket)
    };
    let pending = Arc::new(Pending::new(
        route,
        topic.clone(),
        records,
        None,
        travels,
        parsed.charge,
    ));
    // ack = kafka: the request travels with the job and is answered by a
    // responder; ack = queued: answered here.
    let mut here = Some(req);
    if !queued && let Ok(mut slot) = pending.reply.lock() {
        *slot = here.take();
    }
    let job = Job {
        pending: pending.clone(),
        body: parsed.body,
        spans: parsed.spans,
        partition: parsed.partition,
        key: parsed.key,
        headers: parsed.headers,
    };
    let bytes = job.spans.iter().map(|s| s.range.len() as u64).sum();
    match jobs.send_timeout(job, shared.config.enqueue_timeout) {
        Ok(()) => {
            shared.metrics.records_in.add(records as u64);
            shared.metrics.bytes_in.add(bytes);
            if queued {
                let (status, body) = (202, json!({ "topic": &*topic, "queued": records }));
                shared.finish_idempotent(kept.as_ref(), status, &body.to_string());
                if let Some(req) = here {
                    shared.reply(req, Some(route), started, json_reply(status, &body));
                }
            }
        }
        Err(SendTimeoutError::Timeout(job) | SendTimeoutError::Disconnected(job)) => {
            shared.metrics.channel_full.inc();
            let req = here.or_else(|| job.pending.reply.lock().ok().and_then(|mut r| r.take()));
            let body = json!({
                "status": 503,
                "error": format!("ingest is saturated: the request channel stayed full for {} ms; nothing of this request is stored", shared.config.enqueue_timeout.as_millis()),
            });
            shared.finish_idempotent(
                kept.as_ref().or(job.pending.idempotency.as_ref()),
                503,
                &body.to_string(),
            );
            if let Some(req) = req {
                shared.reply(
                    req,
                    Some(route),
                    started,
                    with_retry_after(json_reply(503, &body), 1),
                );
            }
        }
    }
}

/// A request that passed every check.
struct Parsed {
    body: Vec<u8>,
    spans: Vec<body::Span>,
    partition: Option<i32>,
    key: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    /// What the request holds of the budget (see `cost`).
    charge: tiny_http::Reservation,
}

type Reject = (u16, String, serde_json::Value);

fn parse(shared: &Shared, req: &mut Request, query: &str, route: usize) -> Result<Parsed, Reject> {
    let body_err = |e: BodyError| {
        let mut extra = json!({});
        if let Some((line, column)) = e.position() {
            extra = json!({ "line": line, "column": column });
        }
        if let Some(i) = e.record() {
            extra["record"] = json!(i);
        }
        (e.status(), e.to_string(), extra)
    };
    let partition = parse_query(shared, query, route)?;
    let route_format = shared.routes[route].format;
    // JSON routes (the common case) judge the type here, without a copy.
    let (format, content_type) = match route_format {
        RouteFormat::Json => (
            Some(body::format_of(header_value(req, "Content-Type")).map_err(body_err)?),
            None,
        ),
        RouteFormat::Text | RouteFormat::Binary => {
            (None, header_value(req, "Content-Type").map(str::to_string))
        }
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
    let spans = match format {
        Some(format) => {
            body::split(&decoded, format, shared.config.key_field.as_deref(), limits)
                .map_err(body_err)?
                .1
        }
        None => super::raw::records(&decoded, route_format, content_type.as_deref(), limits)
            .map_err(body_err)?,
    };
    charge.shrink(scratch);
    let records = cost::of_records(&spans, key.as_deref(), &headers);
    cost::grow(&mut charge, records, budget).map_err(refused)?;
    Ok(Parsed {
        body: decoded,
        spans,
        partition,
        key,
        headers,
        charge,
    })
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

/// 401 (one answer whatever was wrong) or 403 (a token for other routes).
pub(crate) fn refusal(denied: Denied, path: &str) -> tiny_http::Refusal {
    match denied {
        Denied::Unauthorized => tiny_http::Refusal {
            status: 401,
            reason: "a valid bearer token is required: Authorization: Bearer <token>".into(),
            headers: vec![("WWW-Authenticate".into(), "Bearer realm=\"kbridge\"".into())],
        },
        Denied::Forbidden(name) => tiny_http::Refusal {
            status: 403,
            reason: format!("token {name} may not write to {path}"),
            headers: Vec::new(),
        },
    }
}

/// The server's head check, as the server answers it: the token from the
/// head, before any body byte is read or any budget reserved. A second
/// `Authorization` is refused (which one a proxy in front read is anyone's
/// guess).
pub(crate) fn head_check(
    auth: Arc<super::auth::Auth>,
    paths: std::collections::HashMap<String, usize>,
    refused: impl Fn(Option<usize>, u16) + Send + Sync + 'static,
) -> tiny_http::HeadCheck {
    Arc::new(move |method, target, headers| {
        let (path, _) = http::split_url(target);
        let route = paths.get(path).copied();
        let mut given = headers
            .iter()
            .filter(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.as_str());
        let first = given.next();
        if given.next().is_some() {
            refused(route, 400);
            return Err(tiny_http::Refusal {
                status: 400,
                reason: "more than one Authorization header".into(),
                headers: Vec::new(),
            });
        }
        auth.check(first, route).map(Some).map_err(|denied| {
            debug!(target: "kbridge::ingest::access", "{method} {path}: {denied:?}");
            let r = refusal(denied, path);
            refused(route, r.status);
            r
        })
    })
}

/// A head refusal as a handler's reply.
fn http_reply(r: tiny_http::Refusal) -> http::Reply {
    r.headers.iter().fold(
        error_reply(r.status, &r.reason, json!({})),
        |reply, (k, v)| with_header(reply, k, v),
    )
}

/// What makes two requests "the same" for an idempotency key.
fn body_hash(route: usize, p: &Parsed) -> u64 {
    let mut h = DefaultHasher::new();
    (route, &p.body, p.partition, &p.key, &p.headers).hash(&mut h);
    h.finish()
}

impl Shared {
    /// Sends a reply and counts it.
    pub(super) fn reply(
        &self,
        req: Request,
        route: Option<usize>,
        started: Instant,
        reply: http::Reply,
    ) {
        self.metrics.count_response(route, reply.status_code().0);
        self.metrics
            .latency
            .record_us(started.elapsed().as_micros() as u64);
        http::send(req, reply);
    }

    /// Records the first answer of an idempotency key and answers the
    /// requests that waited for it.
    pub(super) fn finish_idempotent(&self, ticket: Option<&Ticket>, status: u16, body: &str) {
        let Some(ticket) = ticket else { return };
        let answer = Answer {
            status,
            body: Arc::from(body),
        };
        let waiters = ticket.finish(&answer);
        for w in waiters {
            let reply = with_header(
                http::body(status, "application/json", answer.body.as_bytes().to_vec()),
                "Idempotent-Replayed",
                "true",
            );
            self.metrics.idempotent_replays.inc();
            self.reply(w, None, Instant::now(), reply);
        }
    }

    fn route_list(&self) -> String {
        self.routes
            .iter()
            .map(|r| format!("POST /api/{}/v1/", r.stream))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
