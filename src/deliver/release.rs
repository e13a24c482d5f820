//! `kbridge replay --subscription <name> --key <key>`: delivers one
//! quarantined key's parked messages to the subscription's endpoint, in
//! offset order and under its rules, then releases the key.
//!
//! A round reads the quarantine state to its end, redrives the key's
//! records parked since its quarantine began (the subscription's pipeline
//! as group `kbridge-release-<name>-<hash of the key>`, so a later round
//! or run goes on where this one stopped), and writes a release through
//! the last offset the state named. Messages the running subscription
//! parked meanwhile keep the key held (see `quarantine`): the next round
//! delivers them, up to five rounds. A message that fails again is parked
//! again, and so is every later one of the key in that round (the run's
//! own quarantine, in memory): the key stays held, its order intact, and
//! the next run starts from the first of them.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::producer::{DefaultProducerContext, ThreadedProducer};
use sha2::Digest as _;

use super::DeliverConfig;
use super::quarantine::{self, Change};
use super::redrive::{self, Outcome, Scope};
use crate::config::KafkaConfig;
use crate::kafka::client_config;

const ROUNDS: u32 = 5;

/// How a key's replay ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    pub outcome: Outcome,
    pub rounds: u32,
    /// The key is no longer quarantined.
    pub released: bool,
}

/// Replays and releases `key` of subscription `name` (see the module's text).
pub fn replay_key(
    kafka: &KafkaConfig,
    all: &[&DeliverConfig],
    name: &str,
    key: &[u8],
) -> anyhow::Result<Release> {
    let (c, claims_unnamed) = redrive::find(all, name)?;
    let Some(topic) = &c.quarantine else {
        anyhow::bail!(
            "subscription {name} quarantines no keys (its on_park is not quarantine_key)"
        );
    };
    let stopper = crate::shutdown::Stopper::new();
    let (fatal, _) = crossbeam_channel::unbounded();
    let (held, tail) = quarantine::start(kafka, topic, stopper.token(), fatal)?;
    let producer: ThreadedProducer<DefaultProducerContext> = client_config(
        kafka,
        &[
            ("acks".into(), "all".into()),
            ("enable.idempotence".into(), "true".into()),
            ("statistics.interval.ms".into(), "0".into()),
        ],
    )
    .create()
    .context("cannot create a Kafka producer")?;
    let digest = sha2::Sha256::digest(key);
    let group = format!(
        "kbridge-release-{name}-{}",
        crate::kafka::record::hex(&digest[..8])
    );
    let shown = String::from_utf8_lossy(key);
    let mut done = Release::default();
    let result = loop {
        let entries = held.entries_of(key);
        if entries.is_empty() {
            if done.rounds == 0 {
                break Err(anyhow::anyhow!(
                    "key {shown:?} is not quarantined by subscription {name} (per {topic})"
                ));
            }
            done.released = true;
            break Ok(done);
        }
        if done.rounds == ROUNDS {
            break Ok(done);
        }
        done.rounds += 1;
        let o = redrive::run(
            kafka,
            c,
            claims_unnamed,
            group.clone(),
            Scope::Key(key.to_vec(), entries.clone()),
            None,
        )?;
        done.outcome += o;
        if o.parked_again > 0 {
            break Ok(done);
        }
        for e in &entries {
            let change = Change::Released {
                topic: e.topic.clone(),
                released_through: e.last,
            };
            quarantine::write(
                &producer,
                topic,
                &quarantine::state_key(&e.topic, key),
                &serde_json::to_vec(&change)?,
            )?;
        }
        if !held.catch_up(Duration::from_secs(30)) {
            break Err(anyhow::anyhow!(
                "cannot read {topic} back after the release"
            ));
        }
    };
    stopper.stop();
    let _ = tail.join();
    result
}
