//! The sender pool: take one message (or up to `batch_size` within
//! `batch_linger_ms`), POST it to `target_url` through one shared ureq agent
//! under the `max_in_flight` semaphore and the optional rate limit, then act
//! on the classified outcome. A failing message is requeued with backoff,
//! never waited for in place, so it does not stall the others.

use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::warn;

use super::config::BatchFormat;
use super::dlq::DeadLetters;
use super::retry::{Action, CallResult, classify, parse_retry_after};
use super::{Shared, Stage, Work};
use crate::pool::WorkerPool;

/// Caps concurrent calls: a token is taken before a call and given back after.
pub struct Semaphore {
    tokens_tx: Sender<()>,
    tokens_rx: Receiver<()>,
}

impl Semaphore {
    pub fn new(n: usize) -> Self {
        let (tokens_tx, tokens_rx) = crossbeam_channel::bounded(n);
        for _ in 0..n {
            let _ = tokens_tx.send(());
        }
        Semaphore {
            tokens_tx,
            tokens_rx,
        }
    }
    pub fn acquire(&self) -> Permit<'_> {
        let _ = self.tokens_rx.recv();
        Permit(self)
    }
    /// Permits given out now.
    pub fn in_use(&self) -> usize {
        self.tokens_tx.capacity().unwrap_or(0) - self.tokens_rx.len()
    }
}

pub struct Permit<'a>(&'a Semaphore);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let _ = self.0.tokens_tx.send(());
    }
}

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
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(c.request_timeout))
        .timeout_connect(Some(c.connect_timeout))
        .max_idle_connections_per_host(c.senders.max(8))
        .max_idle_connections(c.senders.max(8) * 2)
        .build()
        .into();
    let semaphore = Arc::new(Semaphore::new(c.max_in_flight));
    let rate = Arc::new(RateLimit::new(c.rate_limit_per_s));
    shared.metrics.set_semaphore(semaphore.clone());
    let size = c.senders;
    Ok(WorkerPool::spawn("deliver-s", size, move |_, g| {
        let mut stop_deadline: Option<Instant> = None;
        loop {
            let first = match rx.recv_timeout(Duration::from_millis(100)) {
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
            if first.parking.is_some() {
                dlq.park(first);
            } else {
                let batch = gather(&shared, &rx, first, &dlq);
                send(&shared, &agent, &semaphore, &rate, &dlq, batch);
            }
            shared.metrics.busy.add(-1);
        }
    }))
}

/// Up to `batch_size` messages, waiting at most `batch_linger` for more.
fn gather(shared: &Shared, rx: &Receiver<Work>, first: Work, dlq: &DeadLetters) -> Vec<Work> {
    let n = shared.config.batch_size;
    let mut batch = vec![first];
    let deadline = Instant::now() + shared.config.batch_linger;
    while batch.len() < n {
        match rx.recv_deadline(deadline) {
            Ok(w) if w.parking.is_some() => dlq.park(w),
            Ok(w) => batch.push(w),
            Err(_) => break,
        }
    }
    batch
}

fn send(
    shared: &Shared,
    agent: &ureq::Agent,
    sem: &Semaphore,
    rate: &RateLimit,
    dlq: &DeadLetters,
    batch: Vec<Work>,
) {
    let c = &shared.config;
    let (content_type, body) = body_of(c.batch_size, c.batch_format, &c.es_index, &batch);
    let first = &batch[0].msg;
    let mut req = agent
        .post(&c.target_url)
        .header("Content-Type", content_type);
    if batch.len() == 1 {
        req = req
            .header("X-Kafka-Topic", &*first.topic)
            .header("X-Kafka-Partition", first.partition.to_string())
            .header("X-Kafka-Offset", first.offset.to_string())
            .header(
                "Idempotency-Key",
                format!("{}-{}-{}", first.topic, first.partition, first.offset),
            );
        if let Some(k) = &first.key {
            req = match std::str::from_utf8(k) {
                Ok(s) if s.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
                    req.header("X-Kafka-Key", s)
                }
                _ => req
                    .header("X-Kafka-Key", hex(k))
                    .header("X-Kafka-Key-Encoding", "hex"),
            };
        }
    } else {
        let last = &batch[batch.len() - 1].msg;
        req = req
            .header("X-Kafka-Batch-Size", batch.len().to_string())
            .header(
                "Idempotency-Key",
                format!(
                    "{}-{}-{}+{}-{}-{}",
                    first.topic,
                    first.partition,
                    first.offset,
                    last.topic,
                    last.partition,
                    last.offset
                ),
            );
    }
    rate.take(batch.len());
    let started = Instant::now();
    let result = {
        let _permit = sem.acquire();
        shared.metrics.calls.inc();
        call(req, &body)
    };
    shared
        .metrics
        .call_latency
        .record_us(started.elapsed().as_micros() as u64);
    let (result, items) = match result {
        Ok((status, retry_after, resp_body)) => {
            let items = (c.batch_format == BatchFormat::EsBulk && (200..300).contains(&status))
                .then(|| bulk_item_statuses(&resp_body))
                .flatten();
            (
                CallResult::Status {
                    status,
                    retry_after,
                },
                items,
            )
        }
        Err(e) => (CallResult::Transport(e), None),
    };
    for (i, mut w) in batch.into_iter().enumerate() {
        w.attempts += 1;
        // `_bulk` answers 200 with a status per item: judge each by its own.
        let own = items
            .as_ref()
            .and_then(|s| s.get(i))
            .map(|s| CallResult::Status {
                status: *s,
                retry_after: None,
            });
        let r = own.as_ref().unwrap_or(&result);
        let action = classify(
            r,
            w.attempts,
            c.max_retries,
            &c.rules,
            c.backoff_initial,
            c.backoff_max,
            fastrand::f64(),
        );
        apply(shared, dlq, w, action, r);
    }
}

fn apply(shared: &Shared, dlq: &DeadLetters, w: Work, action: Action, result: &CallResult) {
    let m = &shared.metrics;
    match action {
        Action::Delivered => {
            m.delivered.inc();
            shared.aggregates.delivered(&w.msg.topic);
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

/// One POST: status, Retry-After and the body (read to the end, capped, so
/// the connection goes back to the pool).
fn call(
    req: ureq::RequestBuilder<ureq::typestate::WithBody>,
    body: &[u8],
) -> Result<(u16, Option<Duration>, Vec<u8>), String> {
    let mut resp = req.send(body).map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let mut buf = Vec::new();
    let _ = resp
        .body_mut()
        .as_reader()
        .take(16 << 20)
        .read_to_end(&mut buf);
    Ok((status, retry_after, buf))
}

/// Content type and body for one message or a batch.
pub fn body_of(
    batch_size: usize,
    format: BatchFormat,
    es_index: &str,
    batch: &[Work],
) -> (&'static str, Vec<u8>) {
    if batch_size == 1 && batch.len() == 1 {
        return ("application/json", batch[0].msg.payload.clone());
    }
    let size: usize = batch.iter().map(|w| w.msg.payload.len() + 64).sum();
    let mut out = Vec::with_capacity(size);
    match format {
        BatchFormat::Ndjson => {
            for w in batch {
                out.extend_from_slice(&w.msg.payload);
                out.push(b'\n');
            }
            ("application/x-ndjson", out)
        }
        BatchFormat::JsonArray => {
            out.push(b'[');
            for (i, w) in batch.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&w.msg.payload);
            }
            out.push(b']');
            ("application/json", out)
        }
        BatchFormat::EsBulk => {
            for w in batch {
                let index = if es_index.is_empty() {
                    &*w.msg.topic
                } else {
                    es_index
                };
                let id = format!("{}-{}-{}", w.msg.topic, w.msg.partition, w.msg.offset);
                let action = serde_json::json!({ "index": { "_index": index, "_id": id } });
                out.extend_from_slice(action.to_string().as_bytes());
                out.push(b'\n');
                out.extend_from_slice(&w.msg.payload);
                out.push(b'\n');
            }
            ("application/x-ndjson", out)
        }
    }
}

/// Per-item statuses of an Elasticsearch `_bulk` answer with errors.
fn bulk_item_statuses(body: &[u8]) -> Option<Vec<u16>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("errors")?.as_bool() != Some(true) {
        return None;
    }
    v.get("items")?
        .as_array()?
        .iter()
        .map(|item| {
            item.as_object()?
                .values()
                .next()?
                .get("status")?
                .as_u64()
                .map(|s| s as u16)
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_items_give_one_status_each() {
        let body = br#"{"took":3,"errors":true,"items":[{"index":{"status":201}},{"index":{"status":429}},{"create":{"status":400}}]}"#;
        assert_eq!(bulk_item_statuses(body), Some(vec![201, 429, 400]));
        assert_eq!(bulk_item_statuses(br#"{"errors":false,"items":[]}"#), None);
    }

    #[test]
    fn semaphore_counts_permits() {
        let s = Semaphore::new(2);
        let a = s.acquire();
        assert_eq!(s.in_use(), 1);
        let b = s.acquire();
        assert_eq!(s.in_use(), 2);
        drop((a, b));
        assert_eq!(s.in_use(), 0);
    }

    #[test]
    fn rate_limit_spaces_calls() {
        let r = RateLimit::new(100);
        let start = Instant::now();
        for _ in 0..11 {
            r.take(1);
        }
        assert!(
            start.elapsed() >= Duration::from_millis(95),
            "{:?}",
            start.elapsed()
        );
    }
}
