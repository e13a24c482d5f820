//! Key quarantine (`ordering = key`, `on_park = quarantine_key`): once a
//! message of a key is parked, every later one of that key is parked too,
//! in order, while other keys flow; the quarantine survives kill -9 (its
//! state is in Kafka); a full redrive leaves the key's records alone;
//! `replay --key` delivers them in offset order and releases the key, and
//! a message failing again during the replay keeps the key held, the rest
//! of its messages parked again behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::util::process::{replay_subscription, spawn_bin, wait_ready};
use crate::util::sink::{Reply, Sink};
use crate::util::*;

/// `kbridge replay --subscription orders [args]`: (exit code, output).
fn replay(ini: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    replay_subscription(ini, "orders", args)
}

fn keyed(items: &[(&str, &str)]) -> Vec<(Option<String>, String)> {
    items
        .iter()
        .map(|(k, id)| (Some(k.to_string()), format!("{{\"id\":\"{id}\"}}")))
        .collect()
}

#[test]
fn a_quarantined_key_stays_parked_in_order_across_kill_9_until_its_replay_releases_it() {
    let b = brokers();
    let topic = unique_topic("quar");
    create_topic(&b, &topic, 1);
    // Phase 0: a-1 is refused; 1: a-2 is; 2: nothing is.
    let phase = Arc::new(AtomicU8::new(0));
    let p = phase.clone();
    let sink = Sink::start(Arc::new(move |call, _| {
        let id = call.ids().first().cloned().unwrap_or_default();
        let refused = match p.load(Ordering::SeqCst) {
            0 => id == "a-1",
            1 => id == "a-2",
            _ => false,
        };
        Reply::status(if refused { 400 } else { 200 })
    }));
    let dir = TempDir::new("quar");
    let admin = free_port();
    let group = unique_topic("g");
    let state = format!("{group}.state");
    let ini = format!(
        "[kafka]\nbrokers = {b}\n[admin]\nlisten = 127.0.0.1:{admin}\n\
         [subscription.orders]\ngroup_id = {group}\ntopics = {topic}\ntarget_url = {}\n\
         ordering = key\non_park = quarantine_key\nquarantine_topic = {state}\n\
         commit_interval_ms = 200\n",
        sink.url
    );
    let path = dir.0.join("config.ini");
    let admin_url = format!("http://127.0.0.1:{admin}");
    let mut bin = spawn_bin(&ini, &dir);
    wait_ready(&admin_url);
    produce(
        &b,
        &topic,
        &keyed(&[
            ("a", "a-0"),
            ("b", "b-0"),
            ("a", "a-1"),
            ("b", "b-1"),
            ("a", "a-2"),
            ("a", "a-3"),
            ("b", "b-2"),
        ]),
    );
    let dlq = format!("{topic}.dlq");
    let parked = read_exactly(&b, &dlq, 3);
    let ids =
        |rs: &[Rec]| -> Vec<String> { rs.iter().map(|r| r.value_str().to_string()).collect() };
    assert_eq!(
        ids(&parked),
        ["{\"id\":\"a-1\"}", "{\"id\":\"a-2\"}", "{\"id\":\"a-3\"}"],
        "a's messages from the refused one on, in order"
    );
    assert!(parked[0].header("kbridge-dlq-reason").contains("400"));
    for r in &parked[1..] {
        assert_eq!(
            r.header("kbridge-dlq-reason"),
            format!("quarantined after {topic}/0@2")
        );
    }
    wait_until("all 7 committed", Duration::from_secs(30), || {
        committed(&b, &group, &topic, 1) == [7]
    });
    let delivered = sink.delivered();
    for id in ["a-0", "b-0", "b-1", "b-2"] {
        assert!(delivered.contains(&id.to_string()), "{id}: {delivered:?}");
    }
    assert!(
        !delivered.iter().any(|d| d == "a-2" || d == "a-3"),
        "nothing of a after its refused message was sent: {delivered:?}"
    );
    let m = get(&format!("{admin_url}/metrics")).body;
    assert!(
        m.contains("kbridge_deliver_quarantined_keys{subscription=\"orders\"} 1"),
        "{m}"
    );

    // kill -9: the state is in Kafka, so the next process holds `a` too.
    bin.kill();
    produce(&b, &topic, &keyed(&[("a", "a-4"), ("b", "b-3")]));
    let mut bin = spawn_bin(&ini, &dir);
    wait_ready(&admin_url);
    wait_delivered(&sink, &["b-3".to_string()], Duration::from_secs(60));
    let parked = read_exactly(&b, &dlq, 4);
    assert_eq!(parked[3].value_str(), "{\"id\":\"a-4\"}");
    assert_eq!(
        parked[3].header("kbridge-dlq-reason"),
        format!("quarantined after {topic}/0@2")
    );
    wait_until("all 9 committed", Duration::from_secs(30), || {
        committed(&b, &group, &topic, 1) == [9]
    });
    assert!(!sink.delivered().contains(&"a-4".to_string()));

    // A full redrive leaves a quarantined key's records to replay --key.
    let (code, text) = replay(&path, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("0 delivered")
            && text.contains("4 of quarantined keys left for replay --key"),
        "{text}"
    );

    // The replay while a-2 is still refused: a-1 goes, a-2 and what
    // follows are parked again, in order; the key stays held.
    phase.store(1, Ordering::SeqCst);
    let calls_before = sink.calls().len();
    let (code, text) = replay(&path, &["--key", "a"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("key \"a\" stays quarantined: 1 delivered"),
        "{text}"
    );
    let again = read_exactly(&b, &dlq, 7);
    assert_eq!(
        ids(&again[4..]),
        ["{\"id\":\"a-2\"}", "{\"id\":\"a-3\"}", "{\"id\":\"a-4\"}"]
    );

    // Then with nothing refused: a-2, a-3, a-4 in order, and `a` is free.
    phase.store(2, Ordering::SeqCst);
    let (code, text) = replay(&path, &["--key", "a"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(
            "released key \"a\" of subscription orders: 3 parked messages delivered in offset order"
        ),
        "{text}"
    );
    let replayed: Vec<String> = sink
        .calls()
        .into_iter()
        .skip(calls_before)
        .filter(|c| c.status == 200)
        .flat_map(|c| c.ids())
        .collect();
    assert_eq!(
        replayed,
        ["a-1", "a-2", "a-3", "a-4"],
        "in offset order, once each"
    );
    wait_until(
        "the running process saw the release",
        Duration::from_secs(20),
        || {
            get(&format!("{admin_url}/metrics"))
                .body
                .contains("kbridge_deliver_quarantined_keys{subscription=\"orders\"} 0")
        },
    );
    produce(&b, &topic, &keyed(&[("a", "a-5")]));
    wait_delivered(&sink, &["a-5".to_string()], Duration::from_secs(30));
    assert_eq!(read_all(&b, &dlq).len(), 7, "a-5 was not parked");
    let (code, text) = replay(&path, &["--key", "a"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("is not quarantined"), "{text}");
    bin.sigterm();
    assert_eq!(bin.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn a_member_that_takes_the_partition_over_holds_the_key_another_quarantined() {
    let b = brokers();
    let topic = unique_topic("quar-rb");
    create_topic(&b, &topic, 1);
    let sink = Sink::start(Arc::new(|call, _| {
        let refused = call.ids().first().is_some_and(|id| id == "a-1");
        Reply::status(if refused { 400 } else { 200 })
    }));
    let group = unique_topic("g");
    let ini = |admin: u16| {
        format!(
            "[kafka]\nbrokers = {b}\n[admin]\nlisten = 127.0.0.1:{admin}\n\
             [subscription.orders]\ngroup_id = {group}\ntopics = {topic}\ntarget_url = {}\n\
             ordering = key\non_park = quarantine_key\ncommit_interval_ms = 200\n",
            sink.url
        )
    };
    let (admin_a, admin_b) = (free_port(), free_port());
    let (dir_a, dir_b) = (TempDir::new("quar-a"), TempDir::new("quar-b"));
    let bin_a = spawn_bin(&ini(admin_a), &dir_a);
    wait_ready(&format!("http://127.0.0.1:{admin_a}"));
    // B is in the group before anything is quarantined, and idle (one
    // partition, which A holds).
    let mut bin_b = spawn_bin(&ini(admin_b), &dir_b);
    wait_until("B joined the group, idle", Duration::from_secs(30), || {
        let url = format!("http://127.0.0.1:{admin_b}/metrics");
        agent()
            .get(&url)
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .is_some_and(|m| {
                m.contains("kbridge_deliver_members_without_partitions{subscription=\"orders\"} 1")
            })
    });
    produce(
        &b,
        &topic,
        &keyed(&[("a", "a-0"), ("a", "a-1"), ("a", "a-2")]),
    );
    let dlq = format!("{topic}.dlq");
    read_exactly(&b, &dlq, 2);
    wait_until("A committed all 3", Duration::from_secs(30), || {
        committed(&b, &group, &topic, 1) == [3]
    });
    // A leaves; B takes the partition over and holds `a` as A did.
    let mut bin_a = bin_a;
    bin_a.sigterm();
    assert_eq!(bin_a.wait_exit(Duration::from_secs(20)).code(), Some(0));
    produce(&b, &topic, &keyed(&[("a", "a-3"), ("c", "c-0")]));
    wait_delivered(&sink, &["c-0".to_string()], Duration::from_secs(60));
    let parked = read_exactly(&b, &dlq, 3);
    assert_eq!(parked[2].value_str(), "{\"id\":\"a-3\"}");
    assert_eq!(
        parked[2].header("kbridge-dlq-reason"),
        format!("quarantined after {topic}/0@1")
    );
    assert!(!sink.delivered().iter().any(|d| d == "a-2" || d == "a-3"));
    bin_b.sigterm();
    assert_eq!(bin_b.wait_exit(Duration::from_secs(20)).code(), Some(0));
}
