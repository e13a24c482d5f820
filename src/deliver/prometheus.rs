//! Deliver's `/metrics` text: every `kbridge_deliver_*` series, with its
//! help, rendered from the role's counters, gauges and consumer statistics.

use super::telemetry::DeliverTelemetry;
use crate::kafka::KafkaStats;
use crate::metrics::{Counter, Prom};
use crate::pool::render_pools;

impl DeliverTelemetry {
    /// Deliver's `/metrics` text.
    pub(super) fn render(&self, out: &mut String) {
        let m = &self.shared.metrics;
        let mut p = Prom::new(out);
        let counters: [(&str, &str, &Counter); 17] = [
            (
                "kbridge_deliver_consumed_total",
                "Messages consumed.",
                &m.consumed,
            ),
            (
                "kbridge_deliver_delivered_total",
                "Messages delivered (2xx).",
                &m.delivered,
            ),
            (
                "kbridge_deliver_retries_total",
                "Calls to be retried.",
                &m.retries,
            ),
            (
                "kbridge_deliver_dead_letters_total",
                "Messages parked in the dead-letter topic.",
                &m.dead_lettered,
            ),
            (
                "kbridge_deliver_dropped_total",
                "Messages dropped by drop_statuses.",
                &m.dropped,
            ),
            (
                "kbridge_deliver_dead_letter_errors_total",
                "Failed attempts to park a message.",
                &m.dlq_errors,
            ),
            (
                "kbridge_deliver_dead_letter_dropped_total",
                "Messages that could be neither delivered nor parked (a permanent produce error): lost, logged as ERROR.",
                &m.dlq_dropped,
            ),
            ("kbridge_deliver_calls_total", "HTTP calls made.", &m.calls),
            (
                "kbridge_deliver_commits_total",
                "Offset commits.",
                &m.group.commits,
            ),
            (
                "kbridge_deliver_commit_errors_total",
                "Failed offset commits.",
                &m.group.commit_errors,
            ),
            (
                "kbridge_deliver_consume_errors_total",
                "Consume errors.",
                &m.consume_errors,
            ),
            (
                "kbridge_deliver_pauses_total",
                "Times fetching paused on a full channel.",
                &m.pauses,
            ),
            (
                "kbridge_deliver_abandoned_total",
                "Messages left unfinished at stop or revocation (redelivered).",
                &m.abandoned,
            ),
            (
                "kbridge_deliver_enriched_total",
                "Messages enriched.",
                &m.enriched,
            ),
            (
                "kbridge_deliver_enrich_errors_total",
                "Failed enrichment lookups.",
                &m.enrich_errors,
            ),
            (
                "kbridge_deliver_geoip_misses_total",
                "Messages geoip_database left as they were: no address in geoip_field, not an address, or in no database.",
                &m.geoip_misses,
            ),
            (
                "kbridge_deliver_stats_total",
                "librdkafka statistics reports of the dead-letter producer.",
                &self.dlq_stats.stats_received,
            ),
        ];
        for (name, help, c) in counters {
            p.single(name, "counter", help, &[], c.get());
        }
        self.shared.config.value_format.prometheus(&mut p);
        p.single(
            "kbridge_deliver_suspended",
            "gauge",
            "1 while the subscription is suspended over the admin API (partitions paused, offsets kept).",
            &[],
            u8::from(self.shared.suspended.load(std::sync::atomic::Ordering::Relaxed)),
        );
        if let Some(h) = &self.shared.held {
            p.single(
                "kbridge_deliver_quarantined_keys",
                "gauge",
                "Keys quarantined (on_park = quarantine_key): their messages are parked unsent until replay --key releases them.",
                &[],
                h.count(),
            );
        }
        p.describe(
            "kbridge_deliver_skipped_total",
            "counter",
            "Records done without a call (on_tombstone, on_invalid_json = skip; filtered: the filter did not match).",
        );
        for (reason, c) in [
            ("tombstone", &m.skipped_tombstones),
            ("invalid_json", &m.skipped_invalid),
            ("filtered", &m.filtered),
        ] {
            p.sample(
                "kbridge_deliver_skipped_total",
                &[("reason", reason)],
                c.get(),
            );
        }
        let (_, limit, closed, closings) = m.gate();
        p.single(
            "kbridge_deliver_endpoint_concurrency",
            "gauge",
            "Calls the endpoint may get at once now (max_in_flight while healthy; fewer while it struggles).",
            &[],
            limit,
        );
        p.single(
            "kbridge_deliver_endpoint_closed",
            "gauge",
            "1 while the endpoint is waited out (Retry-After or overload backoff).",
            &[],
            u8::from(closed),
        );
        p.single(
            "kbridge_deliver_endpoint_backoffs_total",
            "counter",
            "Times the endpoint as a whole was waited out.",
            &[],
            closings,
        );
        let rx = &self.shared.work_rx;
        p.single(
            "kbridge_deliver_channel_length",
            "gauge",
            "Messages waiting for a sender (seed: fillness).",
            &[],
            rx.len(),
        );
        p.single(
            "kbridge_deliver_channel_capacity",
            "gauge",
            "Capacity of the sender channel.",
            &[],
            rx.capacity().unwrap_or(0),
        );
        p.single(
            "kbridge_deliver_in_flight_calls",
            "gauge",
            "HTTP calls in flight (semaphore permits in use).",
            &[],
            self.shared.metrics.in_flight_calls(),
        );
        p.single(
            "kbridge_deliver_max_in_flight",
            "gauge",
            "The semaphore's size.",
            &[],
            m.max_in_flight,
        );
        p.single(
            "kbridge_deliver_waiting",
            "gauge",
            "Messages waiting for a retry or behind their key.",
            &[],
            m.requeued.get() + self.shared.lanes.parked() as i64,
        );
        p.single(
            "kbridge_deliver_consumer_threads",
            "gauge",
            "Consumer threads (group members).",
            &[],
            self.threads,
        );
        let (assigned, idle) = self.assignment();
        p.single(
            "kbridge_deliver_assigned_partitions",
            "gauge",
            "Partitions the group assigns to this instance's members.",
            &[],
            assigned,
        );
        p.single(
            "kbridge_deliver_members_joined",
            "gauge",
            "Consumer threads that have joined the group (received an assignment, maybe empty).",
            &[],
            m.group.members_joined.get(),
        );
        p.single(
            "kbridge_deliver_members_without_partitions",
            "gauge",
            "Consumer threads the group gave no partition (yet).",
            &[],
            idle,
        );
        p.latency(
            "kbridge_deliver_call_duration_seconds",
            "Duration of HTTP calls.",
            &[],
            &m.call_latency,
        );
        let lag = self.lag();
        p.describe(
            "kbridge_deliver_consumer_lag",
            "gauge",
            "Messages behind the partition's end.",
        );
        for (t, part, l, _) in &lag {
            p.sample(
                "kbridge_deliver_consumer_lag",
                &[("topic", t), ("partition", &part.to_string())],
                l,
            );
        }
        p.describe(
            "kbridge_deliver_committed_offset",
            "gauge",
            "Committed offset per partition.",
        );
        for (t, part, _, c) in &lag {
            p.sample(
                "kbridge_deliver_committed_offset",
                &[("topic", t), ("partition", &part.to_string())],
                c,
            );
        }
        render_pools(&mut p, &self.pools.iter().collect::<Vec<_>>());
        let mut clients: Vec<(String, &KafkaStats)> =
            vec![("deliver-dlq".into(), &*self.dlq_stats)];
        clients.extend(
            self.consumers
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("deliver-c{i}"), &*c.stats)),
        );
        let refs: Vec<(&str, &KafkaStats)> =
            clients.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        KafkaStats::render_all(&mut p, &refs);
    }
}
