//! What an operator does to topics and groups, for the tests of broker
//! events: delete and recreate a topic, delete records (truncate a log's
//! head), reset a group's offsets with Kafka's own tool, create a topic
//! with settings.

use std::process::Command;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::{Offset, TopicPartitionList};

use super::wait_until;

fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap()
}

fn opts() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)))
}

/// Creates `topic` with `partitions` and topic `settings` (e.g.
/// `max.message.bytes`); waits until it can be produced to.
pub fn create_topic_with(brokers: &str, topic: &str, partitions: i32, settings: &[(&str, &str)]) {
    let a = admin(brokers);
    wait_until(&format!("{topic} created"), Duration::from_secs(60), || {
        let mut t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        for (k, v) in settings {
            t = t.set(k, v);
        }
        let r = futures_executor::block_on(a.create_topics(&[t], &opts())).unwrap();
        // A topic being deleted refuses its name for a moment.
        r.iter().all(|r| r.is_ok())
    });
    wait_until(
        &format!("{topic} has its partitions"),
        Duration::from_secs(30),
        || super::partition_count(brokers, topic) == partitions as usize,
    );
}

/// Deletes `topic` and waits until the cluster no longer lists it.
pub fn delete_topic(brokers: &str, topic: &str) {
    let r = futures_executor::block_on(admin(brokers).delete_topics(&[topic], &opts())).unwrap();
    assert!(r.iter().all(|r| r.is_ok()), "delete {topic}: {r:?}");
    wait_until(&format!("{topic} gone"), Duration::from_secs(60), || {
        super::partition_count(brokers, topic) == 0
    });
}

/// Deletes the records of `topic`/`partition` below `before` (the log's
/// start moves there).
pub fn delete_records(brokers: &str, topic: &str, partition: i32, before: i64) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(before))
        .unwrap();
    let r = futures_executor::block_on(admin(brokers).delete_records(&tpl, &opts())).unwrap();
    for e in r.elements() {
        assert!(
            e.error().is_ok(),
            "delete records of {topic}: {:?}",
            e.error()
        );
    }
}

/// Resets `group`'s offsets of `topic` to the earliest, as an operator
/// does: Kafka's own `kafka-consumer-groups --reset-offsets` (the group
/// must have no member).
pub fn reset_group_to_earliest(brokers: &str, group: &str, topic: &str) {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/broker"))
        .args([
            "run",
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        ])
        .args([
            "--bootstrap-server",
            brokers,
            "--group",
            group,
            "--topic",
            topic,
        ])
        .args(["--reset-offsets", "--to-earliest", "--execute"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reset-offsets failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
