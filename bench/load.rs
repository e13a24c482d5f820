//! The load: `clients` threads, each with its own keep-alive connection (a
//! ureq agent), POSTing batches of events. Closed loop by default (each
//! client sends its next request when the last is answered); with a rate,
//! open loop: request k is due at `start + k × batch / rate`, and its
//! latency counts from that due time, so a slow server is not hidden by
//! the clients waiting for it (coordinated omission).

use std::io::{Read, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::event::{Kind, now_us, write_event};
use crate::report::ThreadStats;

/// What to send and for how long.
pub struct Plan {
    pub visit_url: String,
    pub activity_url: String,
    pub clients: usize,
    pub batch: usize,
    pub gzip: bool,
    pub kind: Kind,
    /// Stop after this many events…
    pub count: Option<u64>,
    /// …or after this long.
    pub duration: Option<Duration>,
    /// Events per second, open loop; `None`: closed loop.
    pub rate: Option<f64>,
    pub keep_ids: bool,
    /// A prefix unique to the run, for the events' ids.
    pub run: String,
}

/// What the client threads share.
pub struct Load {
    pub plan: Plan,
    next: AtomicU64,
    pub stop: AtomicBool,
    pub start: Instant,
}

impl Load {
    pub fn new(plan: Plan) -> Load {
        Load {
            plan,
            next: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            start: Instant::now(),
        }
    }

    /// Requests in the run (count mode).
    fn requests(&self) -> Option<u64> {
        let b = self.plan.batch as u64;
        self.plan.count.map(|c| c.div_ceil(b))
    }

    /// The next request slot: its index and when it is due (open loop).
    fn take(&self) -> Option<(u64, Option<Instant>)> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(d) = self.plan.duration
            && self.start.elapsed() >= d
        {
            return None;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        if self.requests().is_some_and(|n| k >= n) {
            return None;
        }
        let due = self
            .plan
            .rate
            .map(|r| self.start + Duration::from_secs_f64(k as f64 * self.plan.batch as f64 / r));
        Some((k, due))
    }

    /// Events in request `k` (the last one of a count may be short).
    fn events_in(&self, k: u64) -> u64 {
        let b = self.plan.batch as u64;
        match self.plan.count {
            Some(c) => b.min(c - k * b),
            None => b,
        }
    }
}

/// One client's loop.
pub fn client(load: &Load, index: usize, stats: &Mutex<ThreadStats>) {
    let p = &load.plan;
    let agent: ureq::Agent = kbridge::http_client::agent(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .max_idle_connections_per_host(1)
            .no_delay(true)
            .build(),
    );
    let mut body = Vec::with_capacity(p.batch * 256);
    let mut ids: Vec<String> = Vec::with_capacity(p.batch);
    let mut id = String::with_capacity(64);
    let mut answer = Vec::with_capacity(4096);
    while let Some((k, due)) = load.take() {
        if let Some(due) = due {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let n = load.events_in(k);
        let visit = p.kind.is_visit(k);
        body.clear();
        ids.clear();
        let ts = now_us();
        for i in 0..n {
            id.clear();
            let _ = std::fmt::Write::write_fmt(&mut id, format_args!("{}-{index}-{k}-{i}", p.run));
            if i > 0 {
                body.push(b'\n');
            }
            write_event(&mut body, &id, visit, k * p.batch as u64 + i, ts);
            if p.keep_ids {
                ids.push(id.clone());
            }
        }
        let payload = body.len() as u64;
        let url = if visit { &p.visit_url } else { &p.activity_url };
        let mut req = agent.post(url).header(
            "Content-Type",
            if p.batch > 1 {
                "application/x-ndjson"
            } else {
                "application/json"
            },
        );
        let sent_at = Instant::now();
        let result = if p.gzip {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = e.write_all(&body);
            let gz = e.finish().unwrap_or_default();
            req = req.header("Content-Encoding", "gzip");
            req.send(&gz[..])
        } else {
            req.send(&body[..])
        };
        let outcome = result.map(|mut r| {
            answer.clear();
            let _ = r
                .body_mut()
                .as_reader()
                .take(1 << 20)
                .read_to_end(&mut answer);
            r.status().as_u16()
        });
        let latency = due.unwrap_or(sent_at).elapsed();
        let Ok(mut s) = stats.lock() else { return };
        s.record(latency);
        s.events_sent += n;
        s.payload_bytes += payload;
        match outcome {
            Ok(200 | 202) => {
                s.events_acked += n;
                if p.keep_ids {
                    s.acked_ids.append(&mut ids);
                }
            }
            Ok(207) => {
                // Only the records whose own status is 200.
                let per: Vec<bool> = serde_json::from_slice::<serde_json::Value>(&answer)
                    .ok()
                    .and_then(|v| {
                        Some(
                            v["offsets"]
                                .as_array()?
                                .iter()
                                .map(|o| o["status"] == 200)
                                .collect(),
                        )
                    })
                    .unwrap_or_default();
                let ok = per.iter().filter(|b| **b).count() as u64;
                s.events_acked += ok;
                *s.errors.entry(207).or_default() += 1;
                if p.keep_ids {
                    for (id, ok) in ids.drain(..).zip(per) {
                        if ok {
                            s.acked_ids.push(id);
                        }
                    }
                }
            }
            Ok(status) => *s.errors.entry(status).or_default() += 1,
            Err(_) => *s.errors.entry(0).or_default() += 1,
        }
    }
}
