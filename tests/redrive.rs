//! `kbridge replay --subscription <name>`: what one subscription parked goes
//! back to its own endpoint only, under its rules, as the record it stands
//! for (same URL, same idempotency key); the source topic gets nothing, so
//! no other group sees anything again; another subscription's parked
//! records in the same dead-letter topic are passed over; what fails again
//! is parked again and redriven by the next run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::util::process::{replay_subscription, spawn_bin, wait_ready};
use crate::util::sink::{Reply, Sink};
use crate::util::*;

#[test]
fn redrive_sends_one_subscriptions_parked_messages_to_its_endpoint_only() {
    let b = brokers();
    let topic = unique_topic("redrive");
    create_topic(&b, &topic, 2);
    // crm refuses m-1 and m-4 (phase 0); then only m-4 (phase 1); then
    // nothing. audit refuses m-7 always.
    let phase = Arc::new(AtomicU8::new(0));
    let p = phase.clone();
    let crm = Sink::start(Arc::new(move |call, _| {
        let id = call.ids().first().cloned().unwrap_or_default();
        let refused = match p.load(Ordering::SeqCst) {
            0 => id == "m-1" || id == "m-4",
            1 => id == "m-4",
            _ => false,
        };
        Reply::status(if refused { 400 } else { 200 })
    }));
    let audit = Sink::start(Arc::new(|call, _| {
        let refused = call.ids().first().is_some_and(|id| id == "m-7");
        Reply::status(if refused { 400 } else { 200 })
    }));
    let dir = TempDir::new("redrive");
    let admin = free_port();
    let tag = unique_topic("g");
    // One consumer thread each: no partition moves between threads of a
    // group after start, so nothing is parked twice (at least once).
    let ini = format!(
        "[kafka]\nbrokers = {b}\n[admin]\nlisten = 127.0.0.1:{admin}\n\
         [subscription.crm]\ngroup_id = {tag}-crm\ntopics = {topic}\n\
         target_url = {}/{{partition}}/{{offset}}\ncommit_interval_ms = 200\nmax_threads = 1\n\
         [subscription.audit]\ngroup_id = {tag}-audit\ntopics = {topic}\ntarget_url = {}\ncommit_interval_ms = 200\nmax_threads = 1\n",
        crm.url, audit.url
    );
    let mut bin = spawn_bin(&ini, &dir);
    wait_ready(&format!("http://127.0.0.1:{admin}"));
    let recs: Vec<(Option<String>, String)> = (0..10)
        .map(|i| (Some(format!("k{i}")), format!("{{\"id\":\"m-{i}\"}}")))
        .collect();
    produce(&b, &topic, &recs);
    let dlq = format!("{topic}.dlq");
    let parked = read_exactly(&b, &dlq, 3);
    let by = |r: &Rec| r.header("kbridge-dlq-subscription");
    let mut owners: Vec<String> = parked.iter().map(by).collect();
    owners.sort();
    assert_eq!(owners, ["audit", "crm", "crm"]);
    wait_until("both groups committed all", Duration::from_secs(30), || {
        ["crm", "audit"].iter().all(|s| {
            committed(&b, &format!("{tag}-{s}"), &topic, 2)
                .iter()
                .sum::<i64>()
                == 10
        })
    });
    let first_calls = crm.calls();
    let original = |id: &str| {
        first_calls
            .iter()
            .find(|c| c.ids() == [id])
            .cloned()
            .unwrap_or_else(|| panic!("{id} was called"))
    };
    let audit_calls = audit.calls().len();

    // The running process stays: its groups must see nothing again.
    phase.store(1, Ordering::SeqCst);
    let path = dir.0.join("config.ini");
    let (code, text) = replay_subscription(&path, "crm", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(
            "redrove 3 parked records to subscription crm: 1 delivered, 1 parked again, 0 skipped by its rules, 1 of other subscriptions passed over"
        ),
        "{text}"
    );
    let again: Vec<_> = crm.calls().into_iter().skip(first_calls.len()).collect();
    let mut ids: Vec<String> = again.iter().flat_map(|c| c.ids()).collect();
    ids.sort();
    assert_eq!(ids, ["m-1", "m-4"], "only crm's parked messages, once each");
    for c in &again {
        let first = original(&c.ids()[0]);
        assert_eq!(c.url, first.url, "the URL of the original record");
        for h in ["Idempotency-Key", "X-Kafka-Topic", "X-Kafka-Offset"] {
            assert_eq!(c.header(h), first.header(h), "{h}");
        }
        assert!(
            c.headers.keys().all(|k| !k.starts_with("kbridge-dlq")),
            "{:?}",
            c.headers
        );
    }
    // m-4 failed again: parked again, naming its original record.
    let parked = read_exactly(&b, &dlq, 4);
    let m4 = parked
        .iter()
        .filter(|r| r.value_str() == "{\"id\":\"m-4\"}")
        .collect::<Vec<_>>();
    assert_eq!(m4.len(), 2);
    assert_eq!(
        m4[0].header("kbridge-dlq-source"),
        m4[1].header("kbridge-dlq-source")
    );
    assert!(
        m4[1]
            .header("kbridge-dlq-source")
            .starts_with(&format!("{topic}/"))
    );
    assert_eq!(by(m4[1]), "crm");
    assert_eq!(
        read_all(&b, &topic).len(),
        10,
        "nothing went back into the source topic"
    );
    assert_eq!(
        audit.calls().len(),
        audit_calls,
        "audit was not called again"
    );

    // The next run takes only what was parked since.
    phase.store(2, Ordering::SeqCst);
    let (code, text) = replay_subscription(&path, "crm", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("redrove 1 parked records to subscription crm: 1 delivered, 0 parked again"),
        "{text}"
    );
    let (code, text) = replay_subscription(&path, "crm", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("redrove 0 parked records"), "{text}");
    let (code, text) = replay_subscription(&path, "nobody", &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no subscription \"nobody\""), "{text}");
    bin.sigterm();
    assert_eq!(bin.wait_exit(Duration::from_secs(30)).code(), Some(0));
}
