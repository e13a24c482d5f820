//! Detects a Kafka client that librdkafka left without any broker for
//! good, and stops the process so the service restarts with fresh clients.
//!
//! librdkafka (2.10 and later, including the 2.12.1 kbridge links) drops
//! every broker a metadata answer does not list. A KRaft broker that was
//! paused past its session (a long GC or VM stall) is fenced for a moment
//! when it comes back, and a metadata answer in that moment lists no broker
//! at all: the client then forgets every broker it knew and never asks again
//! (librdkafka issue #5301, fix not released). Reproduced here: ingest then
//! answered 503 to every request while the broker was healthy, and stayed so.
//!
//! The sign is unambiguous in the client's own statistics: it knew brokers
//! (node ids ≥ 0) and now knows none; a broker that is merely down keeps its
//! entry. After [`GRACE`] of that, a fresh client asks the cluster; if the
//! cluster lists a broker, the stranded client cannot recover and the
//! process stops with an error (systemd restarts it; nothing acknowledged is
//! lost: ingest answered only what Kafka kept, consumers commit only past
//! finished work). If the cluster itself lists none, it waits and asks again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{error, warn};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer};

/// How long a client may know no broker before the cluster is asked.
pub const GRACE: Duration = Duration::from_secs(10);
/// Between two questions to the cluster while it lists no broker.
const RECHECK: Duration = Duration::from_secs(30);

/// The `[kafka]` settings a fresh client is made from; set once at start.
static CLUSTER: OnceLock<ClientConfig> = OnceLock::new();

/// Records the `[kafka]` client settings the cross-check uses.
pub fn set_cluster_config(config: ClientConfig) {
    let _ = CLUSTER.set(config);
}

/// What one client's statistics said about its brokers.
#[derive(Debug, Default)]
pub struct Watch {
    knew_brokers: AtomicBool,
    /// Milliseconds since `epoch` when the client last knew a broker, +1
    /// (0: it still does, or never did).
    lost_at_ms: AtomicU64,
    /// A question to the cluster is under way or was answered "none" at
    /// (ms since `epoch`, +1).
    asked_at_ms: AtomicU64,
    reported: AtomicBool,
}

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

impl Watch {
    /// Takes one statistics report: `learned` brokers (node id ≥ 0) known.
    /// Returns true when the client has known none for [`GRACE`] after
    /// having known some, and the cluster should be asked now.
    pub fn observe(&self, learned: usize) -> bool {
        self.observe_at(learned, now_ms())
    }

    fn observe_at(&self, learned: usize, now: u64) -> bool {
        if learned > 0 {
            self.knew_brokers.store(true, Ordering::Relaxed);
            self.lost_at_ms.store(0, Ordering::Relaxed);
            return false;
        }
        if !self.knew_brokers.load(Ordering::Relaxed) || self.reported.load(Ordering::Relaxed) {
            return false;
        }
        let lost = match self.lost_at_ms.load(Ordering::Relaxed) {
            0 => {
                self.lost_at_ms.store(now, Ordering::Relaxed);
                now
            }
            t => t,
        };
        let asked = self.asked_at_ms.load(Ordering::Relaxed);
        now.saturating_sub(lost) >= GRACE.as_millis() as u64
            && (asked == 0 || now.saturating_sub(asked) >= RECHECK.as_millis() as u64)
            && self
                .asked_at_ms
                .compare_exchange(asked, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Asks the cluster from a fresh client on a thread of its own; when it
/// lists a broker, reports client `name` as stranded through `fatal` (once).
pub fn ask_cluster(watch: Arc<Watch>, name: Arc<str>, fatal: Sender<String>) {
    let shown = name.clone();
    let run = move || match cluster_brokers() {
        Ok(n) if n > 0 => {
            watch.reported.store(true, Ordering::Relaxed);
            let msg = format!(
                "{name}: librdkafka dropped every broker (a metadata answer listed none, as while a \
                     broker is fenced: librdkafka issue #5301) and will not reconnect, while the cluster \
                     lists {n} broker(s); stopping so the service restarts with fresh Kafka clients"
            );
            error!(target: "kbridge::kafka", "{msg}");
            let _ = fatal.try_send(msg);
        }
        Ok(_) => warn!(
            target: "kbridge::kafka",
            "{name}: knows no broker, and the cluster lists none either; asking again in {} s",
            RECHECK.as_secs()
        ),
        Err(e) => warn!(
            target: "kbridge::kafka",
            "{name}: knows no broker, and a fresh client cannot reach the cluster ({e}); asking again in {} s",
            RECHECK.as_secs()
        ),
    };
    if std::thread::Builder::new()
        .name("kafka-cross-check".into())
        .spawn(run)
        .is_err()
    {
        warn!(target: "kbridge::kafka", "{shown}: cannot start the cross-check thread");
    }
}

/// Brokers the cluster lists to a fresh client.
fn cluster_brokers() -> Result<usize, String> {
    let config = CLUSTER
        .get()
        .ok_or("no [kafka] settings recorded for a fresh client")?;
    let mut config = config.clone();
    config.set("statistics.interval.ms", "0");
    let client: BaseProducer<DefaultProducerContext> =
        config.create().map_err(|e| e.to_string())?;
    let md = client
        .client()
        .fetch_metadata(None, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    Ok(md.brokers().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    #[test]
    fn asks_only_after_the_grace_once_brokers_were_known_and_all_vanished() {
        let w = Watch::default();
        // Before the first metadata answer nothing is known: not a sign.
        assert!(!w.observe_at(0, 1));
        assert!(!w.observe_at(0, 60 * S));
        assert!(!w.observe_at(1, 61 * S));
        // Every broker dropped: asked once the grace is over, not before.
        assert!(!w.observe_at(0, 62 * S));
        assert!(!w.observe_at(0, 62 * S + GRACE.as_millis() as u64 - 1));
        assert!(w.observe_at(0, 62 * S + GRACE.as_millis() as u64));
        // Not again while an answer is pending or was "none" recently.
        assert!(!w.observe_at(0, 80 * S));
        assert!(w.observe_at(0, 72 * S + RECHECK.as_millis() as u64));
    }

    #[test]
    fn a_broker_known_again_resets_the_clock_and_a_report_ends_the_asking() {
        let w = Watch::default();
        w.observe_at(2, 1);
        w.observe_at(0, 10 * S);
        w.observe_at(1, 15 * S); // came back: the clock starts over
        assert!(!w.observe_at(0, 16 * S));
        assert!(!w.observe_at(0, 25 * S));
        assert!(w.observe_at(0, 26 * S));
        w.reported.store(true, Ordering::Relaxed);
        assert!(!w.observe_at(0, 100 * S));
    }
}
