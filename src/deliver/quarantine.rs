//! Key quarantine (`on_park = quarantine_key`, with `ordering = key`): once
//! one message of a key is parked, every later message of that key is
//! parked too, in order (reason `quarantined after <topic>/<partition>@<offset>`),
//! until `kbridge replay --subscription <name> --key <key>` has delivered
//! the key's parked messages in offset order and released it.
//!
//! The state lives in Kafka, in a compacted topic (`quarantine_topic`), one
//! record per (source topic, key): `Held` (where the quarantine began, the
//! last source offset parked under it) or `Released` (through which source
//! offset the replay delivered). Every process of the subscription tails
//! that topic from its beginning, before its first message and again at
//! each assignment, so a restart, a rebalance or kill -9 finds the keys
//! still held. A parked message's state record is written after its
//! dead-letter copy is acknowledged and before its offset may be
//! committed, so the state never names a copy the topic lacks.
//!
//! A release holds only if nothing of the key was parked past the offset
//! it names: a message parked while the replay ran keeps the key held (its
//! `Held` record lands after the release, or the tail writes one again
//! when it landed before), and the next replay delivers it. Applying the
//! records in log order gives every reader the same answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use log::{info, warn};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::KafkaConfig;
use crate::kafka::client_config;
use crate::shutdown::StopToken;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Where a key's quarantine began, and the last source offset parked under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub topic: String,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    /// Why the first message was parked.
    #[serde(default)]
    pub reason: String,
}

/// One record of the state topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Change {
    Released {
        topic: String,
        released_through: i64,
    },
    Held(Entry),
}

/// The state record's key: the source topic, a zero byte (never in a topic
/// name), the message's key.
pub fn state_key(topic: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 1 + key.len());
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// The message key of a state key (after the topic's zero byte).
fn message_key(state_key: &[u8]) -> Option<&[u8]> {
    let at = state_key.iter().position(|b| *b == 0)?;
    Some(&state_key[at + 1..])
}

#[derive(Debug)]
struct Slot {
    entry: Entry,
    /// The log's latest record for this key is a release that did not hold.
    stale_release: bool,
}

/// The quarantined keys of one subscription (or of one redrive run, in
/// memory only, so that a message failing again holds back its key's rest).
#[derive(Debug)]
pub struct Held {
    topic: Option<String>,
    keys: Mutex<HashMap<Vec<u8>, Slot>>,
    count: AtomicUsize,
    /// Catch-up requests asked and answered (see [`Held::catch_up`]).
    sync: Mutex<(u64, u64)>,
    caught_up: Condvar,
}

impl Held {
    pub fn memory() -> Arc<Held> {
        Arc::new(Held::new(None))
    }

    fn new(topic: Option<String>) -> Held {
        Held {
            topic,
            keys: Mutex::default(),
            count: AtomicUsize::new(0),
            sync: Mutex::new((0, 0)),
            caught_up: Condvar::new(),
        }
    }

    /// The state topic, when the state is kept in Kafka.
    pub fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    /// Keys held now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Why the message at `topic/partition@offset` with `key` is parked
    /// unsent, when its key is held: the message that began the quarantine
    /// and every later one are (earlier ones, read again after a
    /// rebalance, are not).
    pub fn reason(&self, topic: &str, partition: i32, offset: i64, key: &[u8]) -> Option<String> {
        if self.count() == 0 {
            return None;
        }
        let keys = self.keys.lock().ok()?;
        let e = &keys.get(&state_key(topic, key))?.entry;
        (e.partition != partition || offset >= e.first)
            .then(|| format!("quarantined after {}/{}@{}", e.topic, e.partition, e.first))
    }

    /// A message of `key` is being parked: its key is held from here on.
    /// Returns the state record to write (`None` in memory only).
    pub fn note(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: &[u8],
        reason: &str,
    ) -> Option<(Vec<u8>, Vec<u8>)> {
        let k = state_key(topic, key);
        let mut keys = self.keys.lock().ok()?;
        let slot = keys.entry(k.clone()).or_insert_with(|| {
            self.count.fetch_add(1, Ordering::Relaxed);
            Slot {
                entry: Entry {
                    topic: topic.to_string(),
                    partition,
                    first: offset,
                    last: offset,
                    reason: reason.to_string(),
                },
                stale_release: false,
            }
        });
        slot.entry.last = slot.entry.last.max(offset);
        self.topic.as_ref()?;
        let value = serde_json::to_vec(&Change::Held(slot.entry.clone())).ok()?;
        Some((k, value))
    }

    /// Applies one state record, in log order. Returns a `Held` record to
    /// write again when a release did not hold (it named an offset before
    /// the last one parked) and would otherwise be the key's latest record.
    pub fn apply(&self, k: &[u8], value: Option<&[u8]>) -> Option<Vec<u8>> {
        let change = value.and_then(|v| serde_json::from_slice::<Change>(v).ok());
        let mut keys = self.keys.lock().ok()?;
        match change {
            Some(Change::Held(e)) => {
                match keys.get_mut(k) {
                    Some(slot) => {
                        slot.entry.last = slot.entry.last.max(e.last);
                        slot.stale_release = false;
                    }
                    None => {
                        self.count.fetch_add(1, Ordering::Relaxed);
                        keys.insert(
                            k.to_vec(),
                            Slot {
                                entry: e,
                                stale_release: false,
                            },
                        );
                    }
                }
                None
            }
            Some(Change::Released {
                released_through, ..
            }) => {
                let slot = keys.get_mut(k)?;
                if slot.entry.last <= released_through {
                    keys.remove(k);
                    self.count.fetch_sub(1, Ordering::Relaxed);
                    return None;
                }
                slot.stale_release = true;
                serde_json::to_vec(&Change::Held(slot.entry.clone())).ok()
            }
            // A record kbridge did not write: ignored (logged by the tail).
            None => None,
        }
    }

    /// The held entries of a message key, in every topic.
    pub fn entries_of(&self, key: &[u8]) -> Vec<Entry> {
        let Ok(keys) = self.keys.lock() else {
            return Vec::new();
        };
        keys.iter()
            .filter(|(k, _)| message_key(k) == Some(key))
            .map(|(_, s)| s.entry.clone())
            .collect()
    }

    /// The entry holding `key` in `topic`, if any.
    pub fn entry(&self, topic: &str, key: &[u8]) -> Option<Entry> {
        let keys = self.keys.lock().ok()?;
        keys.get(&state_key(topic, key)).map(|s| s.entry.clone())
    }

    /// Waits until the tail has read the state topic up to its end as of
    /// now; false on `timeout` (always true in memory only).
    pub fn catch_up(&self, timeout: Duration) -> bool {
        if self.topic.is_none() {
            return true;
        }
        let Ok(mut s) = self.sync.lock() else {
            return false;
        };
        s.0 += 1;
        let asked = s.0;
        let deadline = Instant::now() + timeout;
        while s.1 < asked {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.caught_up.wait_timeout(s, left) {
                Ok((guard, _)) => s = guard,
                Err(_) => return false,
            }
        }
        true
    }

    /// The `Held` records to write again after the first catch-up: keys
    /// whose latest record is a release that did not hold.
    fn stale(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let Ok(keys) = self.keys.lock() else {
            return Vec::new();
        };
        keys.iter()
            .filter(|(_, s)| s.stale_release)
            .filter_map(|(k, s)| {
                let v = serde_json::to_vec(&Change::Held(s.entry.clone())).ok()?;
                Some((k.clone(), v))
            })
            .collect()
    }
}

/// Properties of the state topic's clients.
fn props(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    [("statistics.interval.ms", "0")]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Creates `topic` (compacted, one partition) when missing, starts the
/// tail and waits for it to read the topic to its end.
pub fn start(
    kafka: &KafkaConfig,
    topic: &str,
    stop: StopToken,
    fatal: crossbeam_channel::Sender<String>,
) -> anyhow::Result<(Arc<Held>, JoinHandle<()>)> {
    crate::kafka::ensure_topics(
        &client_config(kafka, &[]),
        &[topic.to_string()],
        1,
        -1,
        &[("cleanup.policy", "compact")],
        TIMEOUT,
    )
    .with_context(|| format!("the quarantine topic {topic}"))?;
    let consumer: BaseConsumer = client_config(
        kafka,
        &props(&[
            ("group.id", "kbridge-quarantine-tail"),
            ("enable.auto.commit", "false"),
        ]),
    )
    .create()
    .context("cannot create the quarantine's consumer")?;
    let md = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("cannot read the metadata of {topic}"))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let producer: ThreadedProducer<DefaultProducerContext> = client_config(
        kafka,
        &props(&[("acks", "all"), ("enable.idempotence", "true")]),
    )
    .create()
    .context("cannot create the quarantine's producer")?;
    let held = Arc::new(Held::new(Some(topic.to_string())));
    let watch = crate::panics::Watch::new("deliver-quarantine", fatal);
    let thread = {
        let held = held.clone();
        std::thread::Builder::new()
            .name("deliver-quarantine".into())
            .spawn(move || {
                let _watch = watch;
                tail(&held, &consumer, &producer, &stop)
            })?
    };
    anyhow::ensure!(
        held.catch_up(Duration::from_secs(30)),
        "cannot read the quarantine topic {topic} to its end within 30 s"
    );
    info!("{} key(s) quarantined per {topic}", held.count());
    Ok((held, thread))
}

/// Writes one state record and waits for its acknowledgement.
pub fn write(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &[u8],
    value: &[u8],
) -> anyhow::Result<()> {
    producer
        .send(BaseRecord::<[u8], [u8]>::to(topic).key(key).payload(value))
        .map_err(|(e, _)| e)
        .with_context(|| format!("cannot write to {topic}"))?;
    producer
        .flush(TIMEOUT)
        .with_context(|| format!("no acknowledgement from {topic}"))
}

/// The tail: applies every record in order, answers catch-up requests once
/// the position reaches the end seen when asked, and writes again the
/// `Held` records of releases that did not hold.
fn tail(
    held: &Held,
    consumer: &BaseConsumer,
    producer: &ThreadedProducer<DefaultProducerContext>,
    stop: &StopToken,
) {
    let Some(topic) = held.topic() else { return };
    let mut target: Option<(u64, Ends)> = None;
    let mut live = false;
    let mut last_error: Option<String> = None;
    let rewrite = |k: &[u8], v: &[u8]| {
        if let Err(e) = write(producer, topic, k, v) {
            warn!("quarantine: cannot write a key's state again: {e:#}");
        }
    };
    while !stop.is_stopped() {
        let asked = held.sync.lock().map(|s| (s.0 > s.1).then_some(s.0));
        if let (Ok(Some(asked)), None) = (asked, &target) {
            target = ends(consumer, topic).map(|e| (asked, e));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if let Some(k) = m.key()
                    && let Some(v) = held.apply(k, m.payload())
                    && live
                {
                    rewrite(k, &v);
                }
            }
            // Logged once per kind of error, not once per poll.
            Some(Err(e)) => {
                let e = e.to_string();
                if last_error.as_ref() != Some(&e) {
                    warn!("quarantine: reading {topic}: {e}");
                    last_error = Some(e);
                }
            }
            None => {}
        }
        let Some((asked, ends)) = &target else {
            continue;
        };
        let Ok(pos) = consumer.position() else {
            continue;
        };
        let reached = ends.iter().all(|(p, (low, end))| {
            end <= low
                || matches!(pos.find_partition(topic, *p).map(|e| e.offset()),
                    Some(Offset::Offset(o)) if o >= *end)
        });
        if reached {
            if !live {
                live = true;
                for (k, v) in held.stale() {
                    rewrite(&k, &v);
                }
            }
            if let Ok(mut s) = held.sync.lock() {
                s.1 = *asked;
            }
            held.caught_up.notify_all();
            target = None;
        }
    }
}

/// Per partition: its first and end offsets.
type Ends = HashMap<i32, (i64, i64)>;

/// The first and end offsets of each partition of `topic` now.
fn ends(consumer: &BaseConsumer, topic: &str) -> Option<Ends> {
    let md = consumer.fetch_metadata(Some(topic), TIMEOUT).ok()?;
    let mut out = HashMap::new();
    for t in md.topics() {
        for p in t.partitions() {
            let w = consumer.fetch_watermarks(topic, p.id(), TIMEOUT).ok()?;
            out.insert(p.id(), w);
        }
    }
    Some(out)
}

#[cfg(test)]
#[path = "quarantine_tests.rs"]
mod tests;
