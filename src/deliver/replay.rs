//! `kbridge replay --from <topic>.dlq --to <topic>`: re-queues parked
//! messages. Reads the source from the replay group's committed offsets up to
//! the end seen at start, produces each record (key, value, headers without
//! the dead-letter headers) to the target, waits for the broker's acks, and
//! only then commits, per partition no further than its first record the
//! target refused — a failed run replays again, it never skips. The run
//! gives up only when it makes no progress for 30 s, however long it is.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use log::info;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::kafka::{client_config, record};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Records which replayed records the target refused: per source
/// partition, the lowest offset, and the first error.
#[derive(Default)]
struct Acks {
    failed: Mutex<(HashMap<i32, i64>, u64, Option<String>)>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    /// (source partition, source offset).
    type DeliveryOpaque = Box<(i32, i64)>;
    fn delivery(&self, r: &DeliveryResult<'_>, o: Self::DeliveryOpaque) {
        if let Err((e, _)) = r
            && let Ok(mut f) = self.failed.lock()
        {
            let (p, offset) = *o;
            let low = f.0.entry(p).or_insert(offset);
            *low = (*low).min(offset);
            f.1 += 1;
            f.2.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Replays up to `max` messages; returns how many were produced.
pub fn replay(kafka: &KafkaConfig, from: &str, to: &str, max: Option<u64>) -> anyhow::Result<u64> {
    let group = format!("kbridge-replay-{from}");
    let consumer_props = [
        ("group.id", group.as_str()),
        ("enable.auto.commit", "false"),
        ("auto.offset.reset", "earliest"),
        // Nobody reads its statistics: not logged each second either.
        ("statistics.interval.ms", "0"),
    ];
    let consumer: BaseConsumer = client_config(kafka, &pairs(&consumer_props))
        .create()
        .context("cannot create the replay consumer")?;
    let producer_props = [
        ("acks", "all"),
        ("enable.idempotence", "true"),
        ("compression.codec", "gzip"),
    ];
    let producer: ThreadedProducer<Acks> = client_config(kafka, &pairs(&producer_props))
        .create_with_context(Acks::default())
        .context("cannot create the replay producer")?;

    let md = consumer
        .fetch_metadata(Some(from), TIMEOUT)
        .context("cannot read the metadata")?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == from && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    anyhow::ensure!(!partitions.is_empty(), "topic {from} does not exist");

    let mut wanted = TopicPartitionList::new();
    for p in &partitions {
        wanted.add_partition(from, *p);
    }
    let committed = consumer
        .committed_offsets(wanted, TIMEOUT)
        .context("cannot read the replay group's offsets")?;
    // Per partition: where to start (committed, else the low watermark)
    // and the end seen now, so a live topic still ends the run.
    let mut start = TopicPartitionList::new();
    let mut end: HashMap<i32, i64> = HashMap::new();
    let mut next: HashMap<i32, i64> = HashMap::new();
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(from, *p, TIMEOUT)?;
        let at = match committed.find_partition(from, *p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.max(low),
            _ => low,
        };
        start.add_partition_offset(from, *p, Offset::Offset(at))?;
        end.insert(*p, high);
        next.insert(*p, at);
    }
    consumer.assign(&start)?;

    let mut produced = 0u64;
    let limit = max.unwrap_or(u64::MAX);
    let mut deadline = Instant::now() + TIMEOUT;
    let done = |next: &HashMap<i32, i64>| {
        end.iter()
            .all(|(p, high)| next.get(p).is_some_and(|n| n >= high))
    };
    while produced < limit && !done(&next) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "replay stalled: no progress within {TIMEOUT:?}"
        );
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m?;
        if end
            .get(&m.partition())
            .is_none_or(|high| m.offset() >= *high)
        {
            continue;
        }
        // Headers as bytes, whatever they hold; the parking ones stay behind.
        let mut headers = OwnedHeaders::new();
        record::each_header(&m, |k, v| {
            if !k.starts_with(b"kbridge-dlq-") {
                headers = record::with_header(std::mem::take(&mut headers), k, v);
            }
        });
        headers = record::with_header(headers, b"kbridge-replayed-from", Some(from.as_bytes()));
        let mut r: BaseRecord<'_, [u8], [u8], Box<(i32, i64)>> =
            BaseRecord::with_opaque_to(to, Box::new((m.partition(), m.offset()))).headers(headers);
        if let Some(v) = m.payload() {
            r = r.payload(v);
        }
        if let Some(k) = m.key() {
            r = r.key(k);
        }
        // A full producer queue is waited out (its records are being sent).
        loop {
            match producer.send(r) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    r = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    return Err(e).with_context(|| format!("cannot produce to {to}"));
                }
            }
        }
        next.insert(m.partition(), m.offset() + 1);
        produced += 1;
        deadline = Instant::now() + TIMEOUT;
    }
    // Waits for every acknowledgement, as long as they keep coming.
    loop {
        let before = producer.in_flight_count();
        match producer.flush(TIMEOUT) {
            Ok(()) => break,
            Err(_) if producer.in_flight_count() < before => continue,
            Err(e) => {
                return Err(e).context(
                    "the target did not acknowledge every replayed message within 30 s; nothing committed",
                );
            }
        }
    }
    let (failed_at, failed, first_error) = producer
        .context()
        .failed
        .lock()
        .map(|f| f.clone())
        .unwrap_or_default();
    let mut commit = TopicPartitionList::new();
    for (p, o) in &next {
        // Never past a record the target refused: it is replayed next run.
        let o = failed_at.get(p).map_or(*o, |f| (*f).min(*o));
        commit.add_partition_offset(from, *p, Offset::Offset(o))?;
    }
    if commit.count() > 0 {
        consumer
            .commit(&commit, CommitMode::Sync)
            .context("cannot commit the replay group's offsets")?;
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {produced} replayed messages were refused by {to} ({}); committed only up to the first refused one per partition, run replay again",
            first_error.unwrap_or_default()
        );
    }
    info!("replayed {produced} messages from {from} to {to}");
    Ok(produced)
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
