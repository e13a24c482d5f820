//! The sender pool: take one message (or up to `batch_size` within
//! `batch_linger_ms`), POST it to `target_url` through one shared ureq agent
//! under the `max_in_flight` semaphore and the optional rate limit, then act
//! on the classified outcome. A failing message is requeued with backoff,
//! never waited for in place, so it does not stall the others; a sick
//! endpoint is slowed as a whole at the gate (`backoff`), which also caps
//! the calls in flight at `max_in_flight`.
//!
//! A message counts as delivered only when the configured endpoint answered
//! 2xx to the POST that carried it: redirects are not followed (a POST
//! turned into a GET delivers nothing) unless `follow_redirects`, and then
//! only 307/308, which keep method and body. Answers are read within the
//! call's deadline and a cap; one that breaks off is a failed call.

use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::warn;

use super::backoff::{Gate, Verdict};
use super::batch::{body_of, bulk_item_statuses, headers_of, item_statuses};
use super::config::BatchFormat;
use super::dlq::DeadLetters;
use super::outbound::origin;
use super::retry::{Action, CallResult, classify, is_retried, parse_retry_after};
use super::{Shared, Stage, Work};
use crate::kafka::offsets::Busy;
use crate::pool::WorkerPool;

/// Spaces calls to at most `per_s` messages a second (0 = no limit).
pub struct RateLimit {
    per_s: u32,
    next: Mutex<Instant>,
}

impl RateLimit {
    pub fn new(per_s: u32) -> Self {
        RateLimit {
            per_s,
            next: Mutex::new(Instant::now()),
        }
    }
    /// Reserves `n` messages' worth of slots and sleeps until the first.
    pub fn take(&self, n: usize) {
        if self.per_s == 0 {
            return;
        }
        let start = {
            let Ok(mut next) = self.next.lock() else {
                return;
            };
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(n as f64 / f64::from(self.per_s));
            start
        };
        std::thread::sleep(start.saturating_duration_since(Instant::now()));
    }
}

pub fn spawn_pool(
    shared: Arc<Shared>,
    dlq: Arc<DeadLetters>,
    rx: Receiver<Work>,
) -> anyhow::Result<WorkerPool> {
    let c = &shared.config;
    let agent: ureq::Agent = crate::http_client::agent(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(c.request_timeout))
            .timeout_connect(Some(c.connect_timeout))
            .max_idle_connections_per_host(c.senders.max(8))
            .max_idle_connections(c.senders.max(8) * 2)
            // Redirects are ours to judge (see the module comment).
            .max_redirects(0)
            .no_delay(true)
            .tls_config(c.outbound.tls())
            .build(),
    );
    let gate = Arc::new(Gate::new(c.max_in_flight, c.backoff_initial, c.backoff_max));
    let rate = Arc::new(RateLimit::new(c.rate_limit_per_s));
    shared.metrics.set_gate(gate.clone());
    let size = c.senders;
    Ok(WorkerPool::spawn(
        "deliver-s",
        size,
        &shared.fatal.clone(),
        move |_, g| {
            let mut stop_deadline: Option<Instant> = None;
            // A message that must go alone, met while gathering a batch.
            let mut carried: Option<Work> = None;
            loop {
                let received = match carried.take() {
                    Some(w) => Ok(w),
                    None => rx.recv_timeout(Duration::from_millis(100)),
                };
                let first = match received {
                    Ok(w) => w,
                    Err(RecvTimeoutError::Disconnected) => return,
                    Err(RecvTimeoutError::Timeout) => {
                        if shared.stop.is_stopped() {
                            return;
                        }
                        continue;
                    }
                };
                if shared.stop.is_stopped() {
                    let d = *stop_deadline
                        .get_or_insert_with(|| Instant::now() + shared.config.shutdown_timeout);
                    if Instant::now() > d {
                        shared.abandon(first);
                        continue;
                    }
                }
                let _task = g.task();
                shared.metrics.busy.add(1);
                let mut first = first;
                shared.hold(&mut first);
                // A message whose partition was revoked is given up where
                // it would start: in `send` (the lease) or in `park`.
                if first.parking.is_some() {
                    dlq.park(first);
                } else {
                    let (batch, alone) = gather(&shared, &rx, first, &dlq);
                    carried = alone;
                    send(&shared, &agent, &gate, &rate, &dlq, batch, stop_deadline);
                }
                shared.metrics.busy.add(-1);
            }
        },
    ))
}

/// Up to `batch_size` messages, waiting at most `batch_linger` for more;
/// a message that must go alone ends the batch and comes back second.
fn gather(
    shared: &Shared,
    rx: &Receiver<Work>,
    first: Work,
    dlq: &DeadLetters,
) -> (Vec<Work>, Option<Work>) {
    let n = if first.solo {
        1
    } else {
        shared.config.batch_size
    };
    let mut batch = vec![first];
    let deadline = Instant::now() + shared.config.batch_linger;
    while batch.len() < n {
        // What is queued already is taken without waiting (and without a
        // clock read per message); only an empty channel is waited on.
        let next = match rx.try_recv() {
            Ok(w) => Ok(w),
            Err(crossbeam_channel::TryRecvError::Empty) => {
                rx.recv_deadline(deadline).map_err(|_| ())
            }
            Err(crossbeam_channel::TryRecvError::Disconnected) => Err(()),
        };
        let next = next.map(|mut w| {
            shared.hold(&mut w);
            w
        });
        match next {
            Ok(w) if w.parking.is_some() => dlq.park(w),
            Ok(w) if w.solo => return (batch, Some(w)),
            Ok(w) => batch.push(w),
            Err(()) => break,
        }
    }
    (batch, None)
}

/// One call for `batch`: through the gate, under the leases of its
/// messages (a message whose partition was revoked meanwhile is given up,
/// never sent), then each message's outcome.
fn send(
    shared: &Shared,
    agent: &ureq::Agent,
    gate: &Gate,
    rate: &RateLimit,
    dlq: &DeadLetters,
    batch: Vec<Work>,
    stop_deadline: Option<Instant>,
) {
    let c = &shared.config;
    rate.take(batch.len());
    // At stop a closed gate is not waited out: the messages go back.
    let give_up = |closed: bool| {
        batch.iter().all(|w| w.msg.lease.ended())
            || (shared.stop.is_stopped()
                && (closed || stop_deadline.is_some_and(|d| Instant::now() > d)))
    };
    let Some(ticket) = gate.enter(&give_up) else {
        for w in batch {
            shared.abandon(w);
        }
        return;
    };
    // Each partition's lease is entered once for the call (a batch holds
    // messages of a few partitions at most: no atomics per message).
    let mut busy: Vec<(crate::kafka::offsets::Lease, Option<Busy>)> = Vec::new();
    let mut live = Vec::with_capacity(batch.len());
    for w in batch {
        let lease = &w.msg.lease;
        let entered = match busy.iter().find(|(l, _)| l.same(lease)) {
            Some((_, b)) => b.is_some(),
            None => {
                let b = lease.enter();
                let ok = b.is_some();
                busy.push((lease.clone(), b));
                ok
            }
        };
        if entered {
            live.push(w);
        } else {
            shared.abandon(w);
        }
    }
    if live.is_empty() {
        gate.release(ticket);
        return;
    }
    let batch = live;
    let (content_type, body) = body_of(c.batch_size, c.batch_format, &c.es_index, &batch);
    let mut headers = headers_of(content_type, &batch);
    if let Some(a) = &c.outbound.authorization {
        headers.push(("Authorization", a.expose().to_string()));
    }
    if let Some(signer) = &c.signer {
        let id = headers
            .iter()
            .find(|(k, _)| *k == "Idempotency-Key")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        headers.extend(signer.headers(&id, now, &body));
    }
    let shaped = super::shape::shape_of(c, &batch);
    if shaped.method == "DELETE" {
        headers.retain(|(k, _)| *k != "Content-Type");
    }
    let started = Instant::now();
    let bulk = c.batch_format == BatchFormat::EsBulk && c.batch_size > 1;
    let per_item = c.per_item_answers && c.batch_size > 1;
    shared.metrics.calls.inc();
    let answer = call(
        agent,
        &shaped,
        &headers,
        &body,
        c.follow_redirects,
        bulk || per_item,
    );
    shared
        .metrics
        .call_latency
        .record_us(started.elapsed().as_micros() as u64);
    let (result, items, location) = match answer {
        Ok(a) => {
            let status = CallResult::Status {
                status: a.status,
                retry_after: a.retry_after,
            };
            let ok = (200..300).contains(&a.status);
            let judged = if bulk && ok {
                Some(bulk_item_statuses(&a.body, batch.len()))
            } else if per_item && ok {
                Some(item_statuses(&a.body, batch.len()).map(Some))
            } else {
                None
            };
            match judged {
                Some(Err(e)) => (
                    CallResult::Transport(format!("HTTP {}: {e}", a.status)),
                    None,
                    None,
                ),
                Some(Ok(items)) => (status, items, None),
                None => (status, None, a.location),
            }
        }
        Err(e) => (CallResult::Transport(e), None, None),
    };
    let retried = match &result {
        CallResult::Status { status, .. } => is_retried(&c.rules, *status),
        CallResult::Transport(_) => true,
    };
    gate.finished(ticket, Verdict::of(&result, retried));
    // Too large for the endpoint as a batch: each message goes again
    // alone (no attempt spent), so one huge record parks only itself.
    let split = batch.len() > 1 && matches!(result, CallResult::Status { status: 413, .. });
    for (i, mut w) in batch.into_iter().enumerate() {
        if split {
            w.solo = true;
            shared.requeue(Instant::now(), Stage::Send, w);
            continue;
        }
        w.attempts += 1;
        // `_bulk` (and `batch_answer = items`) answers 2xx with a status
        // per item: judge each by its own.
        let own = items
            .as_ref()
            .and_then(|s| s.get(i))
            .map(|s| CallResult::Status {
                status: *s,
                retry_after: None,
            });
        let r = own.as_ref().unwrap_or(&result);
        let mut action = classify(
            r,
            w.attempts,
            c.max_retries,
            &c.rules,
            c.backoff_initial,
            c.backoff_max,
            fastrand::f64(),
        );
        if let (Action::DeadLetter { reason, .. }, Some(to)) = (&mut action, &location) {
            reason.push_str(&format!(" (redirect to {to}, not followed)"));
        }
        apply(shared, dlq, w, action, r);
    }
    // The leases are left only now: a revocation waits until every outcome
    // of this call is applied.
    drop(busy);
}

fn apply(shared: &Shared, dlq: &DeadLetters, w: Work, action: Action, result: &CallResult) {
    let m = &shared.metrics;
    match action {
        Action::Delivered => {
            m.delivered.inc();
            if shared
                .config
                .aggregate_topics
                .iter()
                .any(|t| **t == *w.msg.topic)
            {
                shared.aggregates.delivered(&w.msg.topic);
            }
            shared.finish(w);
        }
        Action::Retry(wait) => {
            m.retries.inc();
            m.log_failure(&w.msg.topic, result);
            shared.requeue(Instant::now() + wait, Stage::Send, w);
        }
        Action::DeadLetter { reason, status } => {
            m.log_failure(&w.msg.topic, result);
            let mut w = w;
            w.parking = Some((reason, status));
            dlq.park(w);
        }
        Action::Drop { status } => {
            m.dropped.inc();
            warn!(
                "dropped {}/{}@{} on HTTP {status} (drop_statuses)",
                w.msg.topic, w.msg.partition, w.msg.offset
            );
            shared.finish(w);
        }
    }
}

/// What an endpoint answered.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    /// `Location` of a 3xx answer.
    location: Option<String>,
    body: Vec<u8>,
}

/// Redirects followed at most (307/308 with `follow_redirects`).
const MAX_HOPS: usize = 5;

/// One call (and its 307/308 hops when allowed). The answer's body is read
/// to its end within the agent's deadline, up to a cap (`_bulk` and per-item answers,
/// `whole`, are read whole, up to 16 MiB; other bodies matter only by their status,
/// 64 KiB are read): a body that breaks off is a failed call.
fn call(
    agent: &ureq::Agent,
    shaped: &super::shape::Shaped<'_>,
    headers: &[(&'static str, String)],
    body: &[u8],
    follow: bool,
    whole: bool,
) -> Result<Answer, String> {
    let mut url = shaped.url.to_string();
    let home = origin(&url).to_string();
    for _ in 0..=MAX_HOPS {
        // Credentials go only to the configured endpoint's origin.
        let away = origin(&url) != home;
        let fields = headers
            .iter()
            .filter(|(k, _)| !(away && *k == "Authorization"))
            .map(|(k, v)| (*k, v.as_str()))
            .chain(shaped.fields.iter().map(|(k, v)| (*k, v.as_str())));
        let sent = match shaped.method {
            "DELETE" => fields
                .fold(agent.delete(&url), |r, (k, v)| r.header(k, v))
                .call(),
            method => {
                let req = match method {
                    "PUT" => agent.put(&url),
                    "PATCH" => agent.patch(&url),
                    _ => agent.post(&url),
                };
                fields.fold(req, |r, (k, v)| r.header(k, v)).send(body)
            }
        };
        let mut resp = sent.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let location = header("location");
        let retry_after =
            header("retry-after").and_then(|v| parse_retry_after(&v, SystemTime::now()));
        if follow
            && (status == 307 || status == 308)
            && let Some(next) = location.as_deref().and_then(|l| resolve(&url, l))
            // Never from https to plain http: what was encrypted stays so.
            && !(url.starts_with("https://") && next.starts_with("http://"))
        {
            url = next;
            continue;
        }
        let cap: u64 = if whole { 16 << 20 } else { 64 << 10 };
        let mut buf = Vec::new();
        resp.body_mut()
            .as_reader()
            .take(cap)
            .read_to_end(&mut buf)
            .map_err(|e| format!("HTTP {status}, then the answer broke off: {e}"))?;
        return Ok(Answer {
            status,
            retry_after,
            location: (300..400)
                .contains(&status)
                .then(|| location.unwrap_or_default()),
            body: buf,
        });
    }
    Err(format!("more than {MAX_HOPS} redirects (last to {url})"))
}

/// `location` resolved against `base` (absolute, `/path` or relative path);
/// only http and https.
fn resolve(base: &str, location: &str) -> Option<String> {
    let location = location.trim();
    if location.starts_with("http://") || location.starts_with("https://") {
        return Some(location.to_string());
    }
    let scheme_end = base.find("://")? + 3;
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    if location.starts_with("//") {
        return Some(format!("{}{}", &base[..scheme_end - 2], location));
    }
    if location.starts_with('/') {
        return Some(format!("{}{location}", &base[..path_start]));
    }
    let path = &base[path_start..];
    let path = path.split(['?', '#']).next().unwrap_or("");
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    Some(format!("{}{dir}{location}", &base[..path_start]))
}

#[cfg(test)]
#[path = "sender_tests.rs"]
mod tests;
