//! Brokers without KIP-848 consumer groups — a stock Apache Kafka 3.9.1
//! node (classic groups only, as many managed clusters today) and tansu —
//! with the default configuration: deliver and collect learn it from the
//! broker's ApiVersions and use the classic protocol, so every event is
//! delivered and filed; a `group.protocol = consumer` set on purpose stops
//! start-up naming the key.

use std::sync::Arc;
use std::time::Duration;

use crate::collect::{Collect, assert_exactly, collect_ini, stored};
use crate::interop::Tansu;
use crate::util::broker::Broker;
use crate::util::sink::Sink;
use crate::util::*;

/// Default deliver and collect on `b`: every event delivered and filed once.
fn round_trip_with_defaults(b: &str, prefix: &str) {
    let topic = unique_topic(prefix);
    create_topic(b, &topic, 2);
    let recs = events(prefix, 40);
    let ids: Vec<String> = (0..40).map(|i| format!("{prefix}-{i}")).collect();
    produce(b, &topic, &recs);

    let sink = Arc::new(Sink::always(200));
    let d = Deliver::of(b, &topic, &sink.url, "");
    wait_delivered(&sink, &ids, Duration::from_secs(90));
    let m = d.metrics();
    assert!(metric(&m, "kbridge_deliver_members_joined") >= 1.0);
    drop(d);

    let dir = TempDir::new(prefix);
    let mut c = Collect::start(&collect_ini(
        b,
        &unique_topic("g"),
        &topic,
        &dir.0,
        "idle_close_s = 1",
    ));
    wait_until("every event filed", Duration::from_secs(90), || {
        stored(&dir.0, &topic)
            .0
            .iter()
            .map(|f| f.lines.len())
            .sum::<usize>()
            >= 40
    });
    assert!(c.stop());
    assert_exactly(&dir.0, &topic, b, 40);
}

#[test]
fn default_config_works_on_kafka_3_9_which_has_only_classic_groups() {
    let broker = Broker::start_version("3.9.1");
    let b = broker.addr();
    let kafka = kbridge::config::KafkaConfig {
        brokers: b.clone(),
        properties: vec![],
    };
    assert_eq!(
        kbridge::kafka::protocol::kip848(&kafka, Duration::from_secs(20)),
        Some(false),
        "Kafka 3.9 lists no ConsumerGroupHeartbeat"
    );
    round_trip_with_defaults(&b, "k39");

    // Asked for on purpose, KIP-848 stops start-up with the key to change.
    let topic = unique_topic("k39-forced");
    create_topic(&b, &topic, 1);
    let ini = deliver_ini(&b, "g", &topic, "http://127.0.0.1:9/", "").replace(
        "[deliver.consumer]\n",
        "[deliver.consumer]\ngroup.protocol = consumer\n",
    );
    let c = load_config(&ini);
    let (tx, _rx) = crossbeam_channel::bounded(4);
    let aggregates = Arc::new(kbridge::aggregates::Aggregates::default());
    let err = kbridge::deliver::spawn(c.deliver.unwrap(), &c.common.kafka, aggregates, tx)
        .err()
        .expect("refused");
    assert!(
        format!("{err:#}")
            .contains("[deliver.consumer] group.protocol: the cluster offers no KIP-848"),
        "{err:#}"
    );
}

#[test]
fn default_config_works_on_tansu() {
    let tansu = Tansu::start();
    round_trip_with_defaults(&format!("127.0.0.1:{}", tansu.port), "tansu-dflt");
}

#[test]
fn kafka_4_offers_kip_848_and_gets_it() {
    let kafka = kbridge::config::KafkaConfig {
        brokers: brokers(),
        properties: vec![],
    };
    assert_eq!(
        kbridge::kafka::protocol::kip848(&kafka, Duration::from_secs(20)),
        Some(true)
    );
}
