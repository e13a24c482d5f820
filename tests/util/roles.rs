//! The roles run in the test process: [`Ingest`] and [`Deliver`] with
//! their config builders, stopped when dropped.

use std::net::TcpListener;
use std::time::Duration;

use super::{load_config, metric, sink, unique_topic, wait_until};

/// An ingest config with one route `t` → `topic`, the test broker, and
/// extra `[ingest]` / `[ingest.producer]` lines.
pub fn ingest_ini(brokers: &str, topic: &str, ingest_extra: &str, producer_extra: &str) -> String {
    format!(
        "[kafka]\nbrokers = {brokers}\n[ingest]\nlisten = 127.0.0.1:0\n{ingest_extra}\n\
         [ingest.routes]\nt = {topic}\n[ingest.producer]\n{producer_extra}\n"
    )
}

/// Logs of in-process roles go to stderr when `KBRIDGE_TEST_LOG` names a
/// level (e.g. `KBRIDGE_TEST_LOG=debug`); silent otherwise.
pub fn init_test_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(level) = std::env::var("KBRIDGE_TEST_LOG") {
            let _ = kbridge::logging::init(&level, None);
        }
    });
}

/// An in-process ingest role on port 0.
pub struct Ingest {
    pub handle: Option<kbridge::ingest::Handle>,
    pub url: String,
    pub fatal: crossbeam_channel::Receiver<String>,
}

impl Ingest {
    pub fn start(ini: &str) -> Ingest {
        init_test_log();
        let c = load_config(ini);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (tx, fatal) = crossbeam_channel::bounded(16);
        let handle =
            kbridge::ingest::spawn(c.ingest.expect("[ingest]"), &c.common.kafka, listener, tx)
                .unwrap();
        let url = format!("http://{}/api/t/v1/", handle.local_addr());
        Ingest {
            handle: Some(handle),
            url,
            fatal,
        }
    }

    pub fn telemetry(&self) -> std::sync::Arc<dyn kbridge::stats::Telemetry> {
        self.handle.as_ref().unwrap().telemetry()
    }

    pub fn metrics(&self) -> String {
        let mut s = String::new();
        self.telemetry().prometheus(&mut s);
        s
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
        }
    }
}

/// A deliver config for tests: the test broker, a group, one topic, the
/// sink, and extra `[deliver]` lines (the test broker evicts a dead member
/// after 6 s: `scripts/broker`).
pub fn deliver_ini(brokers: &str, group: &str, topic: &str, target: &str, extra: &str) -> String {
    format!(
        "[kafka]\nbrokers = {brokers}\n[deliver]\ngroup_id = {group}\ntopics = {topic}\ntarget_url = {target}\n\
         shutdown_timeout_ms = 4000\ncommit_interval_ms = 200\nbackoff_initial_ms = 50\n{extra}\n\
         [deliver.consumer]\n"
    )
}

/// An in-process deliver role.
pub struct Deliver {
    pub handle: Option<kbridge::deliver::Handle>,
    pub fatal: crossbeam_channel::Receiver<String>,
}

impl Deliver {
    /// A deliver of a fresh group reading `topic` into `target`, with
    /// `extra` lines in `[deliver]` (see [`deliver_ini`]).
    pub fn of(brokers: &str, topic: &str, target: &str, extra: &str) -> Deliver {
        Deliver::start(&deliver_ini(
            brokers,
            &unique_topic("g"),
            topic,
            target,
            extra,
        ))
    }

    pub fn start(ini: &str) -> Deliver {
        init_test_log();
        let c = load_config(ini);
        let (tx, fatal) = crossbeam_channel::bounded(16);
        let aggregates = std::sync::Arc::new(kbridge::aggregates::Aggregates::default());
        let handle = kbridge::deliver::spawn(
            c.deliver.expect("[deliver]"),
            &c.common.kafka,
            aggregates,
            tx,
        )
        .unwrap();
        Deliver {
            handle: Some(handle),
            fatal,
        }
    }

    pub fn metrics(&self) -> String {
        let mut s = String::new();
        self.handle.as_ref().unwrap().telemetry().prometheus(&mut s);
        s
    }

    /// Waits until the group settled: all `partitions` assigned and every
    /// consumer thread holding one (tests that count calls exactly start
    /// producing only then, so no rebalance redelivers).
    pub fn wait_settled(&self, partitions: usize) {
        wait_until("the group to settle", Duration::from_secs(60), || {
            let m = self.metrics();
            metric(&m, "kbridge_deliver_assigned_partitions") == partitions as f64
                && metric(&m, "kbridge_deliver_members_without_partitions") == 0.0
        });
    }

    pub fn stop(&mut self) -> bool {
        self.handle.take().map(|h| h.stop()).unwrap_or(true)
    }
}

impl Drop for Deliver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until every id in `ids` was answered 2xx by `sink`.
pub fn wait_delivered(sink: &sink::Sink, ids: &[String], timeout: Duration) {
    wait_until(&format!("{} ids delivered", ids.len()), timeout, || {
        let got: std::collections::HashSet<String> = sink.delivered().into_iter().collect();
        ids.iter().all(|i| got.contains(i))
    });
}
