//! deliver where parking and rebalancing meet their limits: a dead-letter
//! copy too large for the broker is parked smaller (never retried for ever,
//! never pinning the partition), and a revocation while retries wait gives
//! the partition up at once — its new owner gets it within seconds, and the
//! old one never calls for it again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::util::admin::create_topic_with;
use crate::util::records::{Raw, produce_raw};
use crate::util::sink::{Reply, Sink};
use crate::util::*;

#[test]
fn a_dead_letter_copy_too_large_for_the_broker_is_parked_smaller_and_the_partition_moves_on() {
    let b = brokers();
    let topic = unique_topic("dlq-big");
    create_topic_with(&b, &topic, 1, &[("max.message.bytes", "4000000")]);
    let pad = "x".repeat(1_500_000);
    let headers: Vec<kbridge::kafka::record::Header> = (0..20)
        .map(|i| (format!("h{i}").into_bytes(), Some(vec![b'v'; 60_000])))
        .collect();
    let recs = vec![
        Raw::value(format!(r#"{{"id":"huge-value","pad":"{pad}"}}"#)),
        Raw::value(r#"{"id":"huge-key"}"#).key(vec![b'k'; 1_100_000]),
        Raw {
            headers,
            ..Raw::value(r#"{"id":"huge-headers"}"#)
        },
        Raw::value(r#"{"id":"fine"}"#),
    ];
    produce_raw(
        &b,
        &topic,
        Some(0),
        &recs,
        &[("message.max.bytes", "4000000")],
    );
    // Every call but "fine" is refused for good: parked at once.
    let sink = Arc::new(Sink::start(Arc::new(|c, _| {
        Reply::status(if c.ids() == ["fine"] { 200 } else { 400 })
    })));
    let group = unique_topic("g");
    let d = Deliver::start(&deliver_ini(&b, &group, &topic, &sink.url, ""));
    wait_until("every offset committed", Duration::from_secs(60), || {
        committed(&b, &group, &topic, 1) == vec![4]
    });
    let m = d.metrics();
    assert_eq!(metric(&m, "kbridge_deliver_dead_letters_total"), 3.0);
    assert_eq!(metric(&m, "kbridge_deliver_dead_letter_dropped_total"), 0.0);
    assert!(metric(&m, "kbridge_deliver_dead_letter_errors_total") >= 3.0);
    drop(d);

    let parked = read_exactly(&b, &format!("{topic}.dlq"), 3);
    // Parked copies name their source: offsets 0, 1, 2 of the partition.
    let at = |offset: i64| {
        parked
            .iter()
            .find(|r| {
                r.header("kbridge-dlq-source")
                    .ends_with(&format!("/0@{offset}"))
            })
            .unwrap_or_else(|| panic!("offset {offset} parked"))
    };
    let v = at(0);
    assert_eq!(v.value.len(), 64 << 10, "the value cut to 64 KiB");
    assert!(
        v.header("kbridge-dlq-truncated").starts_with("value=1500"),
        "{:?}",
        v.headers
    );
    assert_eq!(v.header("kbridge-dlq-reason"), "HTTP 400");
    let k = at(1);
    assert_eq!(
        k.key.as_ref().map(Vec::len),
        Some(1024),
        "the key cut to 1 KiB"
    );
    assert!(k.header("kbridge-dlq-truncated").contains("key=1100000"));
    let h = at(2);
    assert!(h.header("kbridge-dlq-truncated").contains("headers=20"));
    assert!(
        !h.headers.iter().any(|(n, _)| n == "h0"),
        "its own headers left out"
    );
}

#[test]
fn a_revocation_with_retries_waiting_hands_the_partition_over_at_once_and_never_twice() {
    let b = brokers();
    let topic = unique_topic("revoke");
    create_topic(&b, &topic, 2);
    let mut recs = Vec::new();
    for p in 0..2 {
        for i in 0..10 {
            recs.push((p, format!(r#"{{"id":"p{p}-{i}"}}"#)));
        }
    }
    for (p, v) in &recs {
        produce_raw(&b, &topic, Some(*p), &[Raw::value(v.as_str())], &[]);
    }
    // A's endpoint is overloaded (503, Retry-After) until released; B's is fine.
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    let sink_a = Arc::new(Sink::start(Arc::new(move |_, _| {
        if r.load(Ordering::SeqCst) {
            Reply::status(200)
        } else {
            Reply::status(503).header("Retry-After", "2")
        }
    })));
    let sink_b = Arc::new(Sink::always(200));
    let group = unique_topic("g");
    // A drain deadline far beyond what the hand-over may take.
    let ini = |url: &str| {
        deliver_ini(
            &b,
            &group,
            &topic,
            url,
            "max_threads = 1\nbackoff_max_ms = 2000",
        )
        .replace("shutdown_timeout_ms = 4000", "shutdown_timeout_ms = 30000")
    };
    let a = Deliver::start(&ini(&sink_a.url));
    a.wait_settled(2);
    wait_until("A's first refused calls", Duration::from_secs(30), || {
        !sink_a.calls().is_empty()
    });

    let joined = Instant::now();
    let bd = Deliver::start(&ini(&sink_b.url));
    // The old behaviour held the revocation until A's retries were over (or
    // 30 s): now it is handed over within a few seconds.
    wait_until("B owns a partition", Duration::from_secs(10), || {
        metric(&bd.metrics(), "kbridge_deliver_assigned_partitions") == 1.0
    });
    eprintln!("handed over after {:?}", joined.elapsed());
    wait_until("B delivered its partition", Duration::from_secs(30), || {
        sink_b.delivered().len() >= 10
    });
    let moved: String = sink_b.calls()[0]
        .header("x-kafka-partition")
        .unwrap()
        .to_string();
    let first_b = sink_b.calls().iter().map(|c| c.at).min().unwrap();
    release.store(true, Ordering::SeqCst);
    let mut ids: Vec<String> = (0..2)
        .flat_map(|p| (0..10).map(move |i| format!("p{p}-{i}")))
        .collect();
    ids.retain(|i| !i.starts_with(&format!("p{moved}-")));
    wait_delivered(&sink_a, &ids, Duration::from_secs(60));
    for c in sink_a.calls() {
        if c.header("x-kafka-partition") == Some(moved.as_str()) {
            assert!(
                c.at < first_b,
                "A called for partition {moved} after B took it over: {:?} >= {:?}",
                c.at,
                first_b
            );
        }
    }
    assert!(a.fatal.try_recv().is_err() && bd.fatal.try_recv().is_err());
}

#[test]
fn a_hot_key_whose_head_keeps_failing_holds_back_only_itself_and_its_own_partition() {
    let b = brokers();
    let topic = unique_topic("hotkey");
    create_topic(&b, &topic, 2);
    let mut p0 = Vec::new();
    // More of the hot key than the channel holds: waiting behind it, they
    // would fill what may wait at all and pause every partition.
    for i in 0..60 {
        p0.push(Raw::value(format!(r#"{{"id":"hot-{i}"}}"#)).key("hot"));
    }
    for i in 0..3 {
        p0.push(Raw::value(format!(r#"{{"id":"p0-{i}"}}"#)).key(format!("k0-{i}")));
    }
    let p1: Vec<Raw> = (0..40)
        .map(|i| Raw::value(format!(r#"{{"id":"p1-{i}"}}"#)).key(format!("k1-{i}")))
        .collect();
    // "hot" fails with 500 (the message's own trouble: the endpoint is not
    // slowed) until released.
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    let sink = Arc::new(Sink::start(Arc::new(move |c, _| {
        let hot = c.ids().iter().any(|i| i.starts_with("hot"));
        Reply::status(if hot && !r.load(Ordering::SeqCst) {
            500
        } else {
            200
        })
    })));
    let group = unique_topic("g");
    // A lane holds 32 / 16 = 2 messages; one member holds both partitions.
    let extra = "ordering = key\nchannel_capacity = 32\nmax_threads = 1\nmax_retries = 1000\nbackoff_max_ms = 200";
    let d = Deliver::start(&deliver_ini(&b, &group, &topic, &sink.url, extra));
    d.wait_settled(2);
    produce_raw(&b, &topic, Some(0), &p0, &[]);
    wait_until(
        "the hot key's head retried",
        Duration::from_secs(30),
        || sink.calls().len() >= 3,
    );
    produce_raw(&b, &topic, Some(1), &p1, &[]);
    let p1_ids: Vec<String> = (0..40).map(|i| format!("p1-{i}")).collect();
    wait_delivered(&sink, &p1_ids, Duration::from_secs(30));
    assert!(
        !sink.delivered().iter().any(|i| i.starts_with("hot")),
        "the hot key is still failing"
    );
    release.store(true, Ordering::SeqCst);
    let mut all: Vec<String> = (0..60).map(|i| format!("hot-{i}")).collect();
    all.extend((0..3).map(|i| format!("p0-{i}")));
    wait_delivered(&sink, &all, Duration::from_secs(60));
    // The hot key's messages went one at a time, in offset order.
    let hot: Vec<String> = sink
        .delivered()
        .into_iter()
        .filter(|i| i.starts_with("hot"))
        .collect();
    let want: Vec<String> = (0..60).map(|i| format!("hot-{i}")).collect();
    assert_eq!(hot, want);
    assert!(d.fatal.try_recv().is_err());
}
