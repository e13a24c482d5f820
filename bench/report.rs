//! What a run measured: per-thread figures (each locked only by its own
//! client thread and, once per report interval, by the reporter), the live
//! progress line, and the summary (text, or JSON for machines).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

/// Figures of one client thread.
pub struct ThreadStats {
    /// Latency per request, µs (from the intended send time in open loop).
    pub latency: Histogram<u64>,
    /// The same since the last progress line.
    pub recent: Histogram<u64>,
    pub requests: u64,
    pub events_sent: u64,
    pub events_acked: u64,
    pub payload_bytes: u64,
    /// Failed requests by status (0: no answer: refused, reset, timeout).
    pub errors: BTreeMap<u16, u64>,
    pub acked_ids: Vec<String>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 10 min at 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

impl Default for ThreadStats {
    fn default() -> Self {
        ThreadStats {
            latency: histogram(),
            recent: histogram(),
            requests: 0,
            events_sent: 0,
            events_acked: 0,
            payload_bytes: 0,
            errors: BTreeMap::new(),
            acked_ids: Vec::new(),
        }
    }
}

impl ThreadStats {
    pub fn record(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).max(1);
        self.latency.saturating_record(us);
        self.recent.saturating_record(us);
        self.requests += 1;
    }
}

/// Sums of every thread.
pub struct Totals {
    pub latency: Histogram<u64>,
    pub requests: u64,
    pub events_sent: u64,
    pub events_acked: u64,
    pub payload_bytes: u64,
    pub errors: BTreeMap<u16, u64>,
}

pub fn totals(threads: &[Mutex<ThreadStats>]) -> Totals {
    let mut t = Totals {
        latency: histogram(),
        requests: 0,
        events_sent: 0,
        events_acked: 0,
        payload_bytes: 0,
        errors: BTreeMap::new(),
    };
    for s in threads {
        let Ok(s) = s.lock() else { continue };
        let _ = t.latency.add(&s.latency);
        t.requests += s.requests;
        t.events_sent += s.events_sent;
        t.events_acked += s.events_acked;
        t.payload_bytes += s.payload_bytes;
        for (k, v) in &s.errors {
            *t.errors.entry(*k).or_default() += v;
        }
    }
    t
}

/// The progress line: events acknowledged per second over the interval,
/// totals, errors and p99 of the interval.
pub fn progress(
    threads: &[Mutex<ThreadStats>],
    elapsed: Duration,
    acked_before: u64,
    interval: Duration,
) -> (String, u64) {
    let mut recent = histogram();
    for s in threads {
        if let Ok(mut s) = s.lock() {
            let _ = recent.add(&s.recent);
            s.recent.reset();
        }
    }
    let t = totals(threads);
    let rate = (t.events_acked - acked_before) as f64 / interval.as_secs_f64().max(1e-3);
    let errors: u64 = t.errors.values().sum();
    let line = format!(
        "[{:6.1}s] {:>9.0} events/s  acked {:>10}  errors {:>6}  p99 {:>7.2} ms",
        elapsed.as_secs_f64(),
        rate,
        t.events_acked,
        errors,
        recent.value_at_quantile(0.99) as f64 / 1000.0
    );
    (line, t.events_acked)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The summary as JSON.
pub fn summary_json(
    t: &Totals,
    elapsed: Duration,
    settings: serde_json::Value,
) -> serde_json::Value {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let q = |p: f64| ms(t.latency.value_at_quantile(p));
    json!({
        "settings": settings,
        "duration_s": secs,
        "requests": t.requests,
        "events_sent": t.events_sent,
        "events_acked": t.events_acked,
        "events_per_s": t.events_acked as f64 / secs,
        "mb_per_s": t.payload_bytes as f64 / secs / 1e6,
        "latency_ms": {
            "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p99_9": q(0.999),
            "max": ms(t.latency.max()),
        },
        "errors": t.errors.iter().map(|(k, v)| {
            (if *k == 0 { "no_answer".to_string() } else { k.to_string() }, json!(v))
        }).collect::<serde_json::Map<_, _>>(),
    })
}

/// The summary for people.
pub fn summary_text(j: &serde_json::Value) -> String {
    let l = &j["latency_ms"];
    let mut s = format!(
        "events acknowledged {} of {} sent in {:.1} s ({} requests)\n\
         throughput  {:.0} events/s, {:.2} MB/s of payload\n\
         latency     p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms\n",
        j["events_acked"],
        j["events_sent"],
        j["duration_s"].as_f64().unwrap_or(0.0),
        j["requests"],
        j["events_per_s"].as_f64().unwrap_or(0.0),
        j["mb_per_s"].as_f64().unwrap_or(0.0),
        l["p50"].as_f64().unwrap_or(0.0),
        l["p90"].as_f64().unwrap_or(0.0),
        l["p99"].as_f64().unwrap_or(0.0),
        l["p99_9"].as_f64().unwrap_or(0.0),
        l["max"].as_f64().unwrap_or(0.0),
    );
    let errors = j["errors"].as_object().cloned().unwrap_or_default();
    if errors.is_empty() {
        s.push_str("errors      none\n");
    } else {
        let list: Vec<String> = errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        s.push_str(&format!("errors      {}\n", list.join(", ")));
    }
    s
}
