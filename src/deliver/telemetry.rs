//! Deliver's counters, stats lines and readiness; its `/metrics` text is
//! rendered in `prometheus.rs`, where metric names are spelled and nowhere
//! else.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use log::warn;

use super::Shared;
use super::backoff::Gate;
use super::consumer::DeliverMember;
use super::retry::CallResult;
use crate::kafka::KafkaStats;
use crate::kafka::member::GroupCounters;
use crate::kafka::probe::Probe;
use crate::metrics::{Counter, Gauge, Latency};
use crate::pool::PoolView;
use crate::stats::{Rates, Telemetry};

#[derive(Default)]
pub struct DeliverMetrics {
    pub consumed: Counter,
    pub delivered: Counter,
    pub retries: Counter,
    pub dead_lettered: Counter,
    pub dropped: Counter,
    /// Records done without a call: tombstones (`on_tombstone = skip`) and
    /// values that are not JSON (`on_invalid_json = skip`).
    pub skipped_tombstones: Counter,
    /// Records the subscription's `filter` did not match (done, never sent).
    pub filtered: Counter,
    pub skipped_invalid: Counter,
    pub dlq_errors: Counter,
    pub calls: Counter,
    /// Commits, joins and assignments of the consumer threads.
    pub group: Arc<GroupCounters>,
    pub consume_errors: Counter,
    pub pauses: Counter,
    /// Messages left unfinished at stop or revocation (redelivered later).
    pub abandoned: Counter,
    pub enriched: Counter,
    pub enrich_errors: Counter,
    /// Messages the geoIP lookup left as they were (no address, none found).
    pub geoip_misses: Counter,
    /// Senders inside a call (or parking).
    pub busy: Gauge,
    /// Messages waiting for their retry time or their lane.
    pub requeued: Gauge,
    pub call_latency: Latency,
    gate: OnceLock<Arc<Gate>>,
    pub(super) max_in_flight: usize,
    failure_log: crate::logging::Every,
    /// Dead-letter copies dropped for good (see `dlq`).
    pub dlq_dropped: Counter,
    pub dlq_drop_log: crate::logging::Every,
}

impl DeliverMetrics {
    pub fn new(max_in_flight: usize) -> Self {
        DeliverMetrics {
            max_in_flight,
            group: Arc::default(),
            ..Default::default()
        }
    }

    pub fn set_gate(&self, g: Arc<Gate>) {
        let _ = self.gate.set(g);
    }

    /// (calls in flight, calls allowed at once, gate closed, times closed).
    pub fn gate(&self) -> (usize, usize, bool, u64) {
        self.gate
            .get()
            .map_or((0, self.max_in_flight, false, 0), |g| g.snapshot())
    }

    pub fn in_flight_calls(&self) -> usize {
        self.gate().0
    }

    /// Logs failed calls at most once per 10 s, with the count since.
    pub fn log_failure(&self, topic: &str, r: &CallResult) {
        if let Some(n) = self.failure_log.hit() {
            let what = match r {
                CallResult::Status { status, .. } => format!("HTTP {status}"),
                CallResult::Transport(e) => e.clone(),
            };
            warn!("{n} failed calls since the last report; latest for topic {topic}: {what}");
        }
    }
}

pub struct DeliverTelemetry {
    pub(super) shared: Arc<Shared>,
    pub(super) dlq_stats: Arc<KafkaStats>,
    pub(super) pools: Vec<PoolView>,
    pub(super) consumers: Vec<Arc<DeliverMember>>,
    pub(super) probe: Arc<Probe>,
    pub(super) threads: usize,
    pub(super) rates: Rates<2>,
}

impl DeliverTelemetry {
    pub fn new(
        shared: Arc<Shared>,
        dlq_stats: Arc<KafkaStats>,
        pools: Vec<PoolView>,
        consumers: Vec<Arc<DeliverMember>>,
        probe: Arc<Probe>,
        threads: usize,
    ) -> Self {
        DeliverTelemetry {
            shared,
            dlq_stats,
            pools,
            consumers,
            probe,
            threads,
            rates: Rates::default(),
        }
    }

    pub fn metrics(&self) -> &DeliverMetrics {
        &self.shared.metrics
    }

    /// (topic, partition, lag, committed) over every consumer thread, one
    /// row per partition (a partition that just moved between this
    /// instance's members may show in both until their next statistics;
    /// a scrape with the same series twice is rejected).
    pub(super) fn lag(&self) -> Vec<(String, i32, i64, i64)> {
        let mut v: Vec<_> = self
            .consumers
            .iter()
            .flat_map(|c| c.lag.lock().map(|l| l.clone()).unwrap_or_default())
            .collect();
        v.sort();
        v.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        v
    }

    /// Partitions assigned to this instance's consumer threads, and how
    /// many of those threads have none (mid-rebalance, or more members than
    /// partitions).
    pub(super) fn assignment(&self) -> (usize, usize) {
        self.consumers
            .iter()
            .map(|c| c.assigned())
            .fold((0, 0), |(sum, idle), n| {
                (sum + n, idle + usize::from(n == 0))
            })
    }

    fn consumer_totals(&self) -> (usize, usize) {
        self.consumers.iter().fold((0, 0), |(open, stashed), c| {
            (
                open + c.with_offsets(|o| o.in_flight(&|_, _| true)),
                stashed + c.role.stashed(),
            )
        })
    }
}

impl Telemetry for DeliverTelemetry {
    fn name(&self) -> &'static str {
        "deliver"
    }

    fn stalled(&self, limit: Duration) -> Option<String> {
        if self.shared.stop.is_stopped() {
            return None;
        }
        crate::liveness::stalled_numbered(
            "deliver-c",
            self.consumers.iter().map(|c| &c.heartbeat),
            [
                ("deliver-requeue", &self.shared.requeue_beat),
                ("deliver-probe", &self.probe.heartbeat),
            ],
            limit,
        )
    }

    fn stats_lines(&self, elapsed: Duration) -> Vec<String> {
        let m = &self.shared.metrics;
        let [in_s, out_s] = self
            .rates
            .per_second([m.consumed.get(), m.delivered.get()], elapsed);
        let (open, stashed) = self.consumer_totals();
        let lag: i64 = self.lag().iter().map(|l| l.2).sum();
        let rx = &self.shared.work_rx;
        let sub = self
            .shared
            .config
            .subscription
            .as_ref()
            .map(|n| format!("subscription={n} "))
            .unwrap_or_default();
        let mut lines = vec![format!(
            "{sub}pool=deliver-c pool-size={} events/s={in_s:.0} unfinished={open} stashed={stashed} lag={lag} commits={} errors={}",
            self.threads,
            m.group.commits.get(),
            m.consume_errors.get() + m.group.commit_errors.get()
        )];
        for (i, p) in self.pools.iter().enumerate() {
            if i == 0 {
                lines.push(format!(
                    "{sub}{} channel={}/{} in-flight={}/{} delivered/s={out_s:.0} retries={} dead-letters={} waiting={} errors={}",
                    p.stats_line(),
                    rx.len(),
                    rx.capacity().unwrap_or(0),
                    m.in_flight_calls(),
                    m.max_in_flight,
                    m.retries.get(),
                    m.dead_lettered.get(),
                    m.requeued.get() + self.shared.lanes.parked() as i64,
                    m.dlq_errors.get()
                ));
            } else {
                lines.push(format!(
                    "{sub}{} enriched={} errors={}",
                    p.stats_line(),
                    m.enriched.get(),
                    m.enrich_errors.get()
                ));
            }
        }
        lines
    }

    fn prometheus(&self, out: &mut String) {
        match &self.shared.config.subscription {
            None => self.render(out),
            Some(name) => {
                let mut own = String::new();
                self.render(&mut own);
                out.push_str(&crate::metrics::with_label(&own, "subscription", name));
            }
        }
    }

    fn subscription(&self) -> Option<(&str, bool)> {
        let name = self
            .shared
            .config
            .subscription
            .as_deref()
            .unwrap_or("deliver");
        Some((
            name,
            self.shared
                .suspended
                .load(std::sync::atomic::Ordering::Relaxed),
        ))
    }

    fn set_suspended(&self, suspended: bool) -> bool {
        let was = self
            .shared
            .suspended
            .swap(suspended, std::sync::atomic::Ordering::Relaxed);
        if was != suspended {
            log::info!(
                "subscription {}: {}",
                self.subscription().map_or("deliver", |s| s.0),
                if suspended {
                    "suspended (partitions paused, offsets kept)"
                } else {
                    "resumed"
                }
            );
        }
        true
    }

    fn readiness(&self) -> Result<(), String> {
        self.ready()
            .map_err(|e| match &self.shared.config.subscription {
                None => e,
                Some(name) => format!("subscription {name}: {e}"),
            })
    }
}

impl DeliverTelemetry {
    fn ready(&self) -> Result<(), String> {
        if self.shared.stop.is_stopped() {
            return Err("deliver is stopping".into());
        }
        for pool in &self.pools {
            pool.check_running()?;
        }
        if !self.probe.reachable() {
            return Err(format!(
                "Kafka unreachable: {}",
                self.probe
                    .last_error()
                    .unwrap_or_else(|| "no answer yet".into())
            ));
        }
        if self.shared.metrics.group.members_joined.get() == 0 {
            return Err(format!(
                "joining consumer group {} (no assignment yet)",
                self.shared.config.group_id
            ));
        }
        Ok(())
    }
}
