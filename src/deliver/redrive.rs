//! `kbridge replay --subscription <name>`: redrives the messages that one
//! subscription parked back to its own endpoint, under its own rules
//! (filter, shaping, signature, retries, status rules), instead of
//! re-producing them into the source topic every other group reads again.
//!
//! The subscription's deliver pipeline runs as group `kbridge-redrive-<name>`
//! on its dead-letter topics, from that group's committed offsets (else the
//! earliest) up to the ends seen at start (`--max` shares fewer out over the
//! partitions), and the run ends when the group has committed every one of
//! them. Each parked record is the message it stands for again: its calls,
//! idempotency key (`Idempotency-Key`, `webhook-id`) and URL placeholders
//! name the original record (`kbridge-dlq-source`), its `kbridge-dlq-*`
//! headers are gone, and a message that fails again is parked again (after
//! the ends, so not read twice in one run). Records another subscription
//! parked (`kbridge-dlq-subscription`) are passed over; records parked
//! before that header existed are this subscription's when no other one
//! parks into the same topics. Records of keys quarantined now
//! (`on_park = quarantine_key`) are left for `replay --key` (see `release`),
//! which runs this pipeline on one key's records only.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use log::info;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::DeliverConfig;
use super::dlq::{SOURCE, SUBSCRIPTION};
use super::quarantine::{Entry, Held};
use crate::aggregates::Aggregates;
use crate::config::KafkaConfig;
use crate::kafka::client_config;
use crate::kafka::record::Header;

const TIMEOUT: Duration = Duration::from_secs(30);

/// The record a redriven message was first read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// What a pipeline reading dead-letter topics needs to know.
#[derive(Debug)]
pub struct Redrive {
    /// The name parked records carry in `kbridge-dlq-subscription`.
    name: String,
    /// Whether records without that header are this subscription's.
    claims_unnamed: bool,
    dlq_suffix: String,
    /// Per dead-letter partition, the first offset not to take.
    until: HashMap<(String, i32), i64>,
    /// Records of other subscriptions (or other keys) passed over.
    passed_over: AtomicU64,
    scope: Scope,
    /// Records of quarantined keys left for `replay --key`.
    held_back: AtomicU64,
}

/// Which of the subscription's parked records a run redrives.
#[derive(Debug)]
pub enum Scope {
    /// All of them but those of keys quarantined now (the state as read
    /// at start; `None` when the subscription quarantines nothing).
    All(Option<Arc<Held>>),
    /// One quarantined key's: those parked since each entry's first offset.
    Key(Vec<u8>, Vec<Entry>),
}

/// What a dead-letter record is to the redriving pipeline.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// At or past the run's end: not taken (never committed past).
    Beyond,
    /// Parked by another subscription: done without a call.
    NotOurs,
    /// This subscription's: delivered again as the original record.
    Ours(Origin),
}

impl Redrive {
    /// Judges a dead-letter record; on `Ours` its `kbridge-dlq-*` headers
    /// are taken out of `headers`.
    pub fn claim(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        headers: &mut Vec<Header>,
    ) -> Claim {
        let end = self.until.get(&(topic.to_string(), partition));
        if end.is_none_or(|end| offset >= *end) {
            return Claim::Beyond;
        }
        let value = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name.as_bytes())
                .and_then(|(_, v)| v.as_deref())
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let ours = match value(SUBSCRIPTION) {
            Some(n) => n == self.name,
            None => self.claims_unnamed,
        };
        if !ours {
            self.passed_over.fetch_add(1, Ordering::Relaxed);
            return Claim::NotOurs;
        }
        let origin = value(SOURCE)
            .and_then(|s| parse_source(&s))
            .unwrap_or_else(|| Origin {
                topic: Arc::from(topic.strip_suffix(&*self.dlq_suffix).unwrap_or(topic)),
                partition,
                offset,
            });
        let since = |e: &Entry| {
            *e.topic == *origin.topic
                && (e.partition != origin.partition || origin.offset >= e.first)
        };
        match (&self.scope, key) {
            (Scope::Key(k, entries), Some(key)) if k == key && entries.iter().any(since) => {}
            (Scope::Key(..), _) => {
                self.passed_over.fetch_add(1, Ordering::Relaxed);
                return Claim::NotOurs;
            }
            (Scope::All(Some(held)), Some(key))
                if held
                    .reason(&origin.topic, origin.partition, origin.offset, key)
                    .is_some() =>
            {
                self.held_back.fetch_add(1, Ordering::Relaxed);
                return Claim::NotOurs;
            }
            (Scope::All(_), _) => {}
        }
        headers.retain(|(k, _)| !k.starts_with(b"kbridge-dlq-"));
        Claim::Ours(origin)
    }
}

/// `topic/partition@offset` (topic names hold no `/`).
fn parse_source(s: &str) -> Option<Origin> {
    let (rest, offset) = s.rsplit_once('@')?;
    let (topic, partition) = rest.rsplit_once('/')?;
    Some(Origin {
        topic: Arc::from(topic),
        partition: partition.parse().ok()?,
        offset: offset.parse().ok()?,
    })
}

/// How a redrive run ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Dead-letter records read (up to the ends).
    pub read: u64,
    pub delivered: u64,
    pub parked_again: u64,
    /// Done without a call by the subscription's own rules (filter, skip).
    pub skipped: u64,
    /// Records of other subscriptions (or keys).
    pub passed_over: u64,
    /// Records of quarantined keys, left for `replay --key`.
    pub held_back: u64,
}

impl std::ops::AddAssign for Outcome {
    fn add_assign(&mut self, o: Outcome) {
        self.read += o.read;
        self.delivered += o.delivered;
        self.parked_again += o.parked_again;
        self.skipped += o.skipped;
        self.passed_over += o.passed_over;
        self.held_back += o.held_back;
    }
}

/// The subscription's name in commands and headers: `deliver` for `[deliver]`.
pub fn name_of(c: &DeliverConfig) -> &str {
    c.subscription.as_deref().unwrap_or("deliver")
}

/// Redrives up to `max` of what `name` parked (see the module's text).
pub fn redrive(
    kafka: &KafkaConfig,
    all: &[&DeliverConfig],
    name: &str,
    max: Option<u64>,
) -> anyhow::Result<Outcome> {
    let (c, claims_unnamed) = find(all, name)?;
    let stopper = crate::shutdown::Stopper::new();
    let held = match &c.quarantine {
        Some(topic) => {
            let (fatal, _) = crossbeam_channel::unbounded();
            Some(super::quarantine::start(kafka, topic, stopper.token(), fatal)?.0)
        }
        None => None,
    };
    let group = format!("kbridge-redrive-{name}");
    let outcome = run(kafka, c, claims_unnamed, group, Scope::All(held), max);
    stopper.stop();
    outcome
}

/// The subscription called `name`, and whether records without a
/// subscription header are its own (no other subscription parks into the
/// same topics).
pub fn find<'a>(
    all: &[&'a DeliverConfig],
    name: &str,
) -> anyhow::Result<(&'a DeliverConfig, bool)> {
    let Some(c) = all.iter().find(|c| name_of(c) == name) else {
        let known: Vec<&str> = all.iter().map(|c| name_of(c)).collect();
        anyhow::bail!("no subscription {name:?} in the configuration (it has {known:?})");
    };
    let dlq_topics = c.dlq_topics();
    let claims_unnamed = !all
        .iter()
        .filter(|o| name_of(o) != name)
        .any(|o| o.dlq_topics().iter().any(|t| dlq_topics.contains(t)));
    Ok((c, claims_unnamed))
}

/// Runs `c`'s pipeline as `group` on its dead-letter topics over `scope`,
/// up to the ends seen now (`max` shares fewer out).
pub fn run(
    kafka: &KafkaConfig,
    c: &DeliverConfig,
    claims_unnamed: bool,
    group: String,
    scope: Scope,
    max: Option<u64>,
) -> anyhow::Result<Outcome> {
    let name = name_of(c).to_string();
    let dlq_topics = c.dlq_topics();
    let watcher_props = [
        ("group.id".to_string(), group.clone()),
        ("statistics.interval.ms".to_string(), "0".to_string()),
    ];
    let watcher: BaseConsumer = client_config(kafka, &watcher_props)
        .create()
        .context("cannot create a Kafka client")?;
    let (start, until) = plan(&watcher, &dlq_topics, max)?;
    let read: i64 = until.iter().map(|(k, end)| end - start[k]).sum();
    if read == 0 {
        info!("nothing parked by {name} to redrive in {dlq_topics:?}");
        return Ok(Outcome::default());
    }
    let redrive = Arc::new(Redrive {
        name: name.to_string(),
        claims_unnamed,
        dlq_suffix: c.dlq_suffix.clone(),
        until: until.clone(),
        passed_over: AtomicU64::new(0),
        scope,
        held_back: AtomicU64::new(0),
    });
    let mut config = c.clone();
    config.group_id = group;
    config.redrive = Some(redrive.clone());
    config
        .consumer
        .retain(|(k, _)| k != "auto.offset.reset" && k != "group.instance.id");
    config
        .consumer
        .push(("auto.offset.reset".into(), "earliest".into()));
    // A message may retry for its whole backoff schedule before it counts.
    let patience = TIMEOUT
        + (config.request_timeout + config.backoff_max) * (config.max_retries + 1)
        + config.shutdown_timeout;
    let (fatal_tx, fatal_rx) = crossbeam_channel::unbounded();
    let handle = super::spawn(config, kafka, Arc::new(Aggregates::default()), fatal_tx)?;
    info!("redriving {read} parked records of {dlq_topics:?} to subscription {name}");
    let mut committed_before = -1;
    let mut deadline = Instant::now() + patience;
    let waited = loop {
        if let Ok(why) = fatal_rx.try_recv() {
            break Err(anyhow::anyhow!("{why}"));
        }
        let committed = committed_total(&watcher, &start, &until)?;
        if committed == read {
            break Ok(());
        }
        if committed > committed_before {
            committed_before = committed;
            deadline = Instant::now() + patience;
        } else if Instant::now() >= deadline {
            break Err(anyhow::anyhow!(
                "redrive stalled: {committed} of {read} records committed, none more within {patience:?}; run replay again to go on"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let counts = handle.counts();
    handle.stop();
    waited?;
    let outcome = Outcome {
        read: read as u64,
        delivered: counts.delivered,
        parked_again: counts.dead_lettered,
        skipped: counts.skipped,
        passed_over: redrive.passed_over.load(Ordering::Relaxed),
        held_back: redrive.held_back.load(Ordering::Relaxed),
    };
    info!("redrive to {name} done: {outcome:?}");
    Ok(outcome)
}

type Ends = HashMap<(String, i32), i64>;

/// Per dead-letter partition: where the run starts (the group's committed
/// offset, else the earliest) and ends (the end now, or less for `max`).
fn plan(c: &BaseConsumer, topics: &[String], max: Option<u64>) -> anyhow::Result<(Ends, Ends)> {
    let md = c
        .fetch_metadata(None, TIMEOUT)
        .context("cannot read the cluster's metadata")?;
    let mut wanted = TopicPartitionList::new();
    for t in md
        .topics()
        .iter()
        .filter(|t| topics.iter().any(|n| n == t.name()))
    {
        for p in t.partitions() {
            wanted.add_partition(t.name(), p.id());
        }
    }
    let (mut start, mut until) = (Ends::new(), Ends::new());
    if wanted.count() == 0 {
        return Ok((start, until));
    }
    let committed = c
        .committed_offsets(wanted.clone(), TIMEOUT)
        .context("cannot read the redrive group's offsets")?;
    let mut left = max.unwrap_or(u64::MAX);
    for e in wanted.elements() {
        let (t, p) = (e.topic(), e.partition());
        let (low, high) = c
            .fetch_watermarks(t, p, TIMEOUT)
            .with_context(|| format!("cannot read the offsets of {t}/{p}"))?;
        let from = match committed.find_partition(t, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.clamp(low, high),
            _ => low,
        };
        let take = ((high - from).max(0) as u64).min(left);
        left -= take;
        start.insert((t.to_string(), p), from);
        until.insert((t.to_string(), p), from + take as i64);
    }
    Ok((start, until))
}

/// How many of the run's records the group has committed so far.
fn committed_total(c: &BaseConsumer, start: &Ends, until: &Ends) -> anyhow::Result<i64> {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in until.keys() {
        tpl.add_partition(t, *p);
    }
    let committed = c
        .committed_offsets(tpl, TIMEOUT)
        .context("cannot read the redrive group's offsets")?;
    Ok(until
        .iter()
        .map(|(k, end)| {
            let from = start[k];
            match committed.find_partition(&k.0, k.1).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o.clamp(from, *end) - from,
                _ => 0,
            }
        })
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redrive(name: &str, unnamed: bool) -> Redrive {
        Redrive {
            name: name.into(),
            claims_unnamed: unnamed,
            dlq_suffix: ".dlq".into(),
            until: [(("t.dlq".to_string(), 0), 10)].into_iter().collect(),
            passed_over: AtomicU64::new(0),
            scope: Scope::All(None),
            held_back: AtomicU64::new(0),
        }
    }

    fn h(k: &str, v: &str) -> Header {
        (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()))
    }

    #[test]
    fn a_record_is_ours_by_its_header_and_stands_for_its_source() {
        let r = redrive("crm", false);
        let mut headers = vec![h("a", "1"), h(SUBSCRIPTION, "crm"), h(SOURCE, "t.x/3@41")];
        let origin = Origin {
            topic: "t.x".into(),
            partition: 3,
            offset: 41,
        };
        assert_eq!(
            r.claim("t.dlq", 0, 2, None, &mut headers),
            Claim::Ours(origin)
        );
        assert_eq!(headers, vec![h("a", "1")]);
        let mut other = vec![h(SUBSCRIPTION, "audit")];
        assert_eq!(r.claim("t.dlq", 0, 3, None, &mut other), Claim::NotOurs);
        assert_eq!(r.passed_over.load(Ordering::Relaxed), 1);
        assert_eq!(r.claim("t.dlq", 0, 10, None, &mut vec![]), Claim::Beyond);
        assert_eq!(r.claim("u.dlq", 0, 0, None, &mut vec![]), Claim::Beyond);
    }

    #[test]
    fn unnamed_records_are_claimed_only_by_the_topics_sole_parker() {
        assert_eq!(
            redrive("crm", false).claim("t.dlq", 0, 1, None, &mut vec![]),
            Claim::NotOurs
        );
        let origin = Origin {
            topic: "t".into(),
            partition: 0,
            offset: 1,
        };
        let mut bad_source = vec![h(SOURCE, "no-offset")];
        assert_eq!(
            redrive("crm", true).claim("t.dlq", 0, 1, None, &mut bad_source),
            Claim::Ours(origin)
        );
    }
}
