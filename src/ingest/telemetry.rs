//! Ingest's counters, its once-a-second stats lines, its `/metrics` text and
//! its readiness. Metric names are spelled here and nowhere else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;
use log::error;

use super::Shared;
use super::produce::Job;
use crate::kafka::KafkaStats;
use crate::metrics::{Counter, Latency, Prom};
use crate::pool::{PoolView, render_pools};
use crate::shutdown::StopToken;
use crate::stats::{Rates, Telemetry};

/// Statuses counted separately; anything else counts as "other".
const STATUSES: [u16; 13] = [
    200, 202, 207, 400, 401, 403, 404, 405, 413, 415, 422, 500, 503,
];

#[derive(Default)]
pub struct IngestMetrics {
    /// Per route (last slot: no route) × status (last slot: other).
    responses: Vec<[Counter; STATUSES.len() + 1]>,
    /// Records accepted into the job channel.
    pub records_in: Counter,
    pub bytes_in: Counter,
    pub records_acked: Counter,
    pub records_failed: Counter,
    /// Records answered 202 and then not acknowledged: real loss.
    pub lost_queued: Counter,
    /// Requests refused because the job channel stayed full.
    pub channel_full: Counter,
    /// Retries of a send into a full librdkafka queue.
    pub producer_queue_full: Counter,
    pub idempotent_replays: Counter,
    pub panics: Counter,
    pub latency: Latency,
    /// Unix second of the last loss log line (rate limit: one per 10 s).
    last_loss_log: AtomicU64,
    unlogged_loss: AtomicU64,
}

impl IngestMetrics {
    pub fn new(routes: usize) -> Self {
        IngestMetrics {
            responses: (0..=routes).map(|_| Default::default()).collect(),
            ..Default::default()
        }
    }

    pub fn count_response(&self, route: Option<usize>, status: u16) {
        let row = route
            .unwrap_or(self.responses.len() - 1)
            .min(self.responses.len() - 1);
        let col = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        self.responses[row][col].inc();
    }

    fn responses_with(&self, pred: impl Fn(u16) -> bool) -> u64 {
        self.responses
            .iter()
            .flat_map(|row| STATUSES.iter().zip(row.iter()))
            .filter(|(s, _)| pred(**s))
            .map(|(_, c)| c.get())
            .sum()
    }

    /// Logs lost records at most once per 10 s, with the count since.
    pub fn log_loss(&self, n: usize, topic: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let pending = self.unlogged_loss.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let last = self.last_loss_log.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .last_loss_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.unlogged_loss.store(0, Ordering::Relaxed);
            error!(
                "lost {pending} records answered 202 (ack = queued) that Kafka did not acknowledge; latest topic {topic}"
            );
        }
    }
}

pub struct IngestTelemetry {
    shared: Arc<Shared>,
    kafka: Arc<KafkaStats>,
    pools: Vec<PoolView>,
    /// A receiver clone, only to read the channel's fill.
    jobs: Receiver<Job>,
    stop: StopToken,
    rates: Rates<3>,
}

impl IngestTelemetry {
    pub fn new(
        shared: Arc<Shared>,
        kafka: Arc<KafkaStats>,
        pools: Vec<PoolView>,
        jobs: Receiver<Job>,
        stop: StopToken,
    ) -> Self {
        IngestTelemetry {
            shared,
            kafka,
            pools,
            jobs,
            stop,
            rates: Rates::default(),
        }
    }
}

impl Telemetry for IngestTelemetry {
    fn stalled(&self, limit: Duration) -> Option<String> {
        if self.stop.is_stopped() {
            return None;
        }
        crate::liveness::stalled([("ingest-probe", &self.shared.probe.heartbeat)], limit)
    }

    fn name(&self) -> &'static str {
        "ingest"
    }

    fn stats_lines(&self, elapsed: Duration) -> Vec<String> {
        let m = &self.shared.metrics;
        let [req_s, in_s, ack_s] = self.rates.per_second(
            [
                m.responses_with(|_| true),
                m.records_in.get(),
                m.records_acked.get(),
            ],
            elapsed,
        );
        let extra = [
            format!(
                "requests/s={req_s:.0} 4xx={} 5xx={}",
                m.responses_with(|s| (400..500).contains(&s)),
                m.responses_with(|s| s >= 500)
            ),
            format!(
                "channel={}/{} events/s={in_s:.0} errors={} channel-full={}",
                self.jobs.len(),
                self.jobs.capacity().unwrap_or(0),
                m.records_failed.get(),
                m.channel_full.get()
            ),
            format!(
                "acked/s={ack_s:.0} kafka-queue={} brokers-up={} kafka-reachable={}",
                self.kafka.queued_msgs.get(),
                self.kafka.brokers_up.get(),
                self.shared.probe.reachable()
            ),
        ];
        self.pools
            .iter()
            .zip(extra)
            .map(|(p, e)| format!("{} {e}", p.stats_line()))
            .collect()
    }

    fn prometheus(&self, out: &mut String) {
        let m = &self.shared.metrics;
        let mut p = Prom::new(out);
        self.shared.server_stats.render(&mut p, "ingest");
        if let Some(auth) = &self.shared.auth {
            auth.render(&mut p);
        }
        if let Some(registry) = &self.shared.config.registry {
            registry.prometheus(&mut p);
        }
        let name = "kbridge_ingest_responses_total";
        p.describe(name, "counter", "HTTP responses by route and status.");
        for (i, row) in m.responses.iter().enumerate() {
            let route = self
                .shared
                .routes
                .get(i)
                .map(|r| r.stream.as_str())
                .unwrap_or("none");
            for (j, c) in row.iter().enumerate() {
                if c.get() > 0 {
                    let status = STATUSES
                        .get(j)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "other".into());
                    p.sample(name, &[("route", route), ("status", &status)], c.get());
                }
            }
        }
        let counters: [(&str, &str, &Counter); 10] = [
            (
                "kbridge_ingest_records_total",
                "Records accepted into the job channel.",
                &m.records_in,
            ),
            (
                "kbridge_ingest_record_bytes_total",
                "Bytes of records accepted.",
                &m.bytes_in,
            ),
            (
                "kbridge_ingest_records_acked_total",
                "Records acknowledged by Kafka.",
                &m.records_acked,
            ),
            (
                "kbridge_ingest_records_failed_total",
                "Records Kafka did not acknowledge.",
                &m.records_failed,
            ),
            (
                "kbridge_ingest_records_lost_total",
                "Records answered 202 (ack = queued) and then not acknowledged.",
                &m.lost_queued,
            ),
            (
                "kbridge_ingest_channel_full_total",
                "Requests refused with 503 because the job channel stayed full.",
                &m.channel_full,
            ),
            (
                "kbridge_ingest_producer_queue_full_total",
                "Waits for room in the librdkafka queue.",
                &m.producer_queue_full,
            ),
            (
                "kbridge_ingest_idempotent_replays_total",
                "Requests answered from the Idempotency-Key window.",
                &m.idempotent_replays,
            ),
            (
                "kbridge_ingest_panics_total",
                "Request handlers that panicked (answered 500).",
                &m.panics,
            ),
            (
                "kbridge_ingest_kafka_stats_total",
                "librdkafka statistics reports received.",
                &self.kafka.stats_received,
            ),
        ];
        for (name, help, c) in counters {
            p.single(name, "counter", help, &[], c.get());
        }
        p.single(
            "kbridge_ingest_channel_length",
            "gauge",
            "Jobs waiting in the channel (seed: fillness).",
            &[],
            self.jobs.len(),
        );
        p.single(
            "kbridge_ingest_channel_capacity",
            "gauge",
            "Capacity of the job channel.",
            &[],
            self.jobs.capacity().unwrap_or(0),
        );
        p.single(
            "kbridge_ingest_kafka_reachable",
            "gauge",
            "1 when the last metadata probe succeeded.",
            &[],
            u8::from(self.shared.probe.reachable()),
        );
        p.latency(
            "kbridge_ingest_request_duration_seconds",
            "Time from request to response.",
            &[],
            &m.latency,
        );
        render_pools(&mut p, &self.pools.iter().collect::<Vec<_>>());
        KafkaStats::render_all(&mut p, &[("ingest", &self.kafka)]);
    }

    fn readiness(&self) -> Result<(), String> {
        if self.stop.is_stopped() {
            return Err("ingest is stopping".into());
        }
        for pool in &self.pools {
            pool.check_running()?;
        }
        if !self.shared.probe.reachable() {
            return Err(format!(
                "Kafka unreachable: {}",
                self.shared
                    .probe
                    .last_error()
                    .unwrap_or_else(|| "no answer yet".into())
            ));
        }
        Ok(())
    }
}
