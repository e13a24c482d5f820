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
use super::config::AckMode;
use super::idempotency::{Answer, Begin, Window};
use super::produce::{Job, Pending};
use super::request::{Parsed, parse};
use super::restproxy;
use crate::http::{self, error_reply, header_value, json_reply, with_header, with_retry_after};

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
    let (route, path_partition) = match restproxy::route_of(&shared.paths, path) {
        Some((r, p)) => (Some(r), p.map(str::to_string)),
        None => (None, None),
    };
    let rest = route.is_some_and(|r| shared.routes[r].rest_proxy);
    // Refusals in the shape the route's clients read.
    let refuse = |status: u16, msg: &str, extra: serde_json::Value| match rest {
        true => restproxy::error_reply(status, msg, extra["error_code"].as_u64()),
        false => error_reply(status, msg, extra),
    };
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
        if let Some((topic, _)) = restproxy::topic_path(path) {
            let msg = format!("topic {topic} not found (it is not in [ingest] rest_proxy_topics)");
            let r = restproxy::error_reply(404, &msg, Some(40401));
            return shared.reply(req, None, started, r);
        }
        let msg = format!("no route for {path}; routes: {}", shared.route_list());
        return shared.reply(req, None, started, error_reply(404, &msg, json!({})));
    };
    if *req.method() != Method::Post {
        let msg = format!("method {} not allowed on {path}: use POST", req.method());
        let r = with_header(refuse(405, &msg, json!({})), "Allow", "POST");
        return shared.reply(req, Some(route), started, r);
    }
    let parsed = match parse(shared, &mut req, &query, route, path_partition.as_deref()) {
        Ok(p) => p,
        Err((status, msg, extra)) => {
            // The server read the whole body before this handler saw it, so
            // the connection's framing is intact: it stays open.
            let mut r = refuse(status, &msg, extra);
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
            return shared.reply(req, Some(route), started, refuse(400, &msg, json!({})));
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
                let content_type = match rest {
                    true => restproxy::CONTENT_TYPE,
                    false => "application/json",
                };
                let reply = with_header(
                    http::body(answer.status, content_type, answer.body.as_bytes().to_vec()),
                    "Idempotent-Replayed",
                    "true",
                );
                return shared.reply(r, Some(route), started, reply);
            }
            Begin::Mismatch(r) => {
                let msg = format!("Idempotency-Key {key:?} was used with a different request");
                return shared.reply(r, Some(route), started, refuse(422, &msg, json!({})));
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
    let mut pending = Pending::new(route, topic.clone(), records, None, travels, parsed.charge);
    pending.schema_ids = parsed.schema_ids;
    let pending = Arc::new(pending);
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
            let msg = format!(
                "ingest is saturated: the request channel stayed full for {} ms; nothing of this request is stored",
                shared.config.enqueue_timeout.as_millis()
            );
            let body = match rest {
                true => json!({ "error_code": 503, "message": msg }),
                false => json!({ "status": 503, "error": msg }),
            };
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
        let route = restproxy::route_of(&paths, path).map(|(r, _)| r);
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
    (route, &p.body, &p.spans, p.partition, &p.key, &p.headers).hash(&mut h);
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
            .map(|r| match r.rest_proxy {
                true => format!("POST /{}", r.stream),
                false => format!("POST /api/{}/v1/", r.stream),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}
