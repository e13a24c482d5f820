//! What the collect role shows: the stats line (events and bytes per
//! second, files open, rotations, fsync p99, retry traffic, errors, lag) and
//! its `/metrics` families; readiness follows the Kafka probe.

use std::sync::Arc;
use std::time::Duration;

use super::{Shared, role};
use crate::kafka::KafkaStats;
use crate::kafka::probe::Probe;
use crate::metrics::{Counter, Prom};
use crate::stats::{Rates, Telemetry};

pub struct CollectTelemetry {
    pub(super) shared: Arc<Shared>,
    /// One per consumer thread.
    pub(super) members: Vec<Arc<role::CollectMember>>,
    pub(super) probe: Arc<Probe>,
    pub(super) threads: usize,
    pub(super) rates: Rates<2>,
    /// Per consumer thread: last counts of open files and delayed partitions.
    pub(super) last_counts: Vec<[std::sync::atomic::AtomicUsize; 2]>,
}

impl CollectTelemetry {
    /// Counts partitions over every consumer thread. A thread may hold its
    /// partitions' lock through an fsync: then its last count stands in,
    /// so `/metrics` and the stats line never wait on a disk.
    fn count_parts(&self, kind: usize, pick: fn(&role::PartState) -> bool) -> usize {
        self.members
            .iter()
            .zip(&self.last_counts)
            .map(|(m, last)| match m.role.parts.try_lock() {
                Ok(parts) => {
                    let n = parts.values().filter(|s| pick(s)).count();
                    last[kind].store(n, std::sync::atomic::Ordering::Relaxed);
                    n
                }
                Err(_) => last[kind].load(std::sync::atomic::Ordering::Relaxed),
            })
            .sum()
    }

    fn files_open(&self) -> usize {
        self.count_parts(0, role::PartState::file_open)
    }

    /// (topic, partition, lag) over every consumer thread, one row each.
    fn lag(&self) -> Vec<(String, i32, i64)> {
        let mut v: Vec<(String, i32, i64)> = self
            .members
            .iter()
            .flat_map(|m| m.lag.lock().map(|l| l.clone()).unwrap_or_default())
            .map(|(t, p, lag, _)| (t, p, lag))
            .collect();
        v.sort();
        v.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        v
    }
}

impl Telemetry for CollectTelemetry {
    fn stalled(&self, limit: Duration) -> Option<String> {
        if self.shared.stop.is_stopped() {
            return None;
        }
        crate::liveness::stalled_numbered(
            "collect-c",
            self.members.iter().map(|m| &m.heartbeat),
            [("collect-probe", &self.probe.heartbeat)],
            limit,
        )
    }

    fn name(&self) -> &'static str {
        "collect"
    }

    fn stats_lines(&self, elapsed: Duration) -> Vec<String> {
        let m = &self.shared.metrics;
        let [ev, by] = self
            .rates
            .per_second([m.consumed.get(), m.bytes.get()], elapsed);
        let lag: i64 = self.lag().iter().map(|x| x.2).sum();
        let (_, _, fsync_p99, _) = m.fsync.summary();
        vec![format!(
            "pool=collect-c pool-size={} events/s={ev:.0} bytes/s={by:.0} files-open={} rotations={} fsync-p99-ms={:.1} retry={} errors={} lag={lag}",
            self.threads,
            self.files_open(),
            m.files_closed.get(),
            fsync_p99 as f64 / 1000.0,
            m.retry_produced.get(),
            m.write_errors.get()
        )]
    }

    fn prometheus(&self, out: &mut String) {
        let m = &self.shared.metrics;
        let mut p = Prom::new(out);
        let counters: [(&str, &str, &Counter); 12] = [
            (
                "kbridge_collect_assignments_total",
                "Partition assignments received from the group (rebalances).",
                &m.group.assignments,
            ),
            (
                "kbridge_collect_commits_total",
                "Offset commits.",
                &m.group.commits,
            ),
            (
                "kbridge_collect_commit_errors_total",
                "Failed offset commits.",
                &m.group.commit_errors,
            ),
            (
                "kbridge_collect_offset_regressions_total",
                "Times a partition's offsets went back (a new era of file names began).",
                &m.regressions,
            ),
            (
                "kbridge_collect_consumed_total",
                "Messages consumed.",
                &m.consumed,
            ),
            (
                "kbridge_collect_undecodable_total",
                "Values value_format could not read: filed as they are, in the documented encoding.",
                &m.undecodable,
            ),
            (
                "kbridge_collect_written_bytes_total",
                "Bytes written to record files (before gzip).",
                &m.bytes,
            ),
            (
                "kbridge_collect_files_opened_total",
                "Record files opened.",
                &m.files_opened,
            ),
            (
                "kbridge_collect_rotations_total",
                "Record files closed durable (rotations).",
                &m.files_closed,
            ),
            (
                "kbridge_collect_write_errors_total",
                "Failed writes (messages sent to the retry topic).",
                &m.write_errors,
            ),
            (
                "kbridge_collect_retry_produced_total",
                "Messages produced to a retry topic.",
                &m.retry_produced,
            ),
            (
                "kbridge_collect_retry_failed_total",
                "Retry-topic produces that failed (read again).",
                &m.retry_failed,
            ),
        ];
        for (name, help, c) in counters {
            p.single(name, "counter", help, &[], c.get());
        }
        self.shared.config.value_format.prometheus(&mut p);
        p.single(
            "kbridge_collect_members_joined",
            "gauge",
            "Consumer threads that have joined their group (received an assignment, maybe empty).",
            &[],
            m.group.members_joined.get(),
        );
        p.single(
            "kbridge_collect_files_open",
            "gauge",
            "Record files open now.",
            &[],
            self.files_open(),
        );
        p.single(
            "kbridge_collect_delayed_partitions",
            "gauge",
            "Retry-topic partitions paused until their next message is due.",
            &[],
            self.count_parts(1, role::PartState::delayed),
        );
        p.latency(
            "kbridge_collect_fsync_duration_seconds",
            "Time to make a file durable (flush, fsync, rename, dir fsync).",
            &[],
            &m.fsync,
        );
        p.describe(
            "kbridge_collect_consumer_lag",
            "gauge",
            "Messages behind the partition's end.",
        );
        for (t, part, l) in self.lag() {
            p.sample(
                "kbridge_collect_consumer_lag",
                &[("topic", &t), ("partition", &part.to_string())],
                l,
            );
        }
        let mut clients: Vec<(&str, &KafkaStats)> =
            vec![("collect-retry", &*self.shared.retry_stats)];
        clients.extend(self.members.iter().map(|m| (m.name(), &*m.stats)));
        KafkaStats::render_all(&mut p, &clients);
    }

    fn readiness(&self) -> Result<(), String> {
        if self.shared.stop.is_stopped() {
            return Err("collect is stopping".into());
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
            return Err("joining the consumer groups (no assignment yet)".into());
        }
        Ok(())
    }
}
