//! deliver's `filter`, request shaping and signatures against the real
//! broker: only matching messages are sent, the others are committed
//! uncalled and counted; calls take their URL, method and headers from the
//! settings and the message, a tombstone can be a DELETE, and every call
//! verifies with the Standard Webhooks reference library.

use std::time::Duration;

use crate::util::records::{Raw, produce_raw};
use crate::util::sink::Sink;
use crate::util::*;

/// A deliver in a group of its own on `topic` (one partition), settled.
fn start(b: &str, topic: &str, target: &str, extra: &str) -> (Deliver, String) {
    let group = unique_topic("g");
    let d = Deliver::start(&deliver_ini(b, &group, topic, target, extra));
    d.wait_settled(1);
    (d, group)
}

#[test]
fn only_matching_messages_are_sent_and_every_offset_is_committed() {
    let b = brokers();
    let topic = unique_topic("flt");
    create_topic(&b, &topic, 1);
    let sink = Sink::always(200);
    let filter = r#"{"all":[{"field":"/type","one_of":["click","view"]},{"not":{"header":"source","prefix":"test-"}},{"any":[{"key":true,"absent":true},{"key":true,"regex":"^user-[0-9]+$"}]}]}"#;
    let (mut d, group) = start(
        &b,
        &topic,
        &sink.url,
        &format!("filter = {filter}\non_invalid_json = send"),
    );
    let v = |id: &str, ty: &str| format!("{{\"id\":\"{id}\",\"type\":\"{ty}\"}}");
    let recs = vec![
        Raw::value(v("send-1", "click")),
        Raw::value(v("drop-type", "buy")),
        Raw::value(v("send-2", "view")).key("user-17"),
        Raw::value(v("drop-key", "view")).key("robot"),
        Raw::value(v("drop-source", "click")).header("source", Some(b"test-suite")),
        Raw::value(v("send-3", "click")).header("source", Some(b"web")),
        Raw::value(v("send-4", "click")).header(b"\xff\xfe".to_vec(), Some(b"\x00")),
        Raw::value("not json at all"),
        Raw::tombstone(),
        Raw::value(r#"{"id":"drop-nested","type":{"is":"click"}}"#),
    ];
    let n = recs.len() as i64;
    produce_raw(&b, &topic, Some(0), &recs, &[]);
    wait_until("every offset committed", Duration::from_secs(60), || {
        committed(&b, &group, &topic, 1)[0] == n
    });
    let mut sent = sink.delivered();
    sent.sort();
    assert_eq!(sent, ["send-1", "send-2", "send-3", "send-4"]);
    assert_eq!(sink.calls().len(), 4, "nothing else was called");
    let m = d.metrics();
    // The value that is no JSON fails the field test: filtered, not sent,
    // whatever on_invalid_json says; the tombstone is skipped before.
    assert_eq!(
        metric(&m, "kbridge_deliver_skipped_total{reason=\"filtered\"}"),
        5.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "kbridge_deliver_skipped_total{reason=\"tombstone\"}"),
        1.0
    );
    assert!(d.fatal.try_recv().is_err(), "no fatal error");
    assert!(d.stop(), "clean stop");
}

#[test]
fn calls_are_shaped_from_the_message_and_a_tombstone_becomes_a_delete() {
    let b = brokers();
    let topic = unique_topic("shape");
    create_topic(&b, &topic, 1);
    let sink = Sink::always(200);
    let base = sink.url.trim_end_matches("/ingest");
    let extra = "method = PUT\nheaders = {\"X-Source\": \"kbridge\"}\nforward_headers = trace-id, tenant\non_tombstone = delete";
    let (mut d, group) = start(
        &b,
        &topic,
        &format!("{base}/items/{{topic}}/{{key}}"),
        extra,
    );
    let recs = vec![
        Raw::value(r#"{"id":"a","type":"click/x"}"#)
            .key("user 1")
            .header("trace-id", Some(b"t-1"))
            .header("tenant", Some(b"bad\r\nInjected: yes"))
            .header("other", Some(b"not forwarded")),
        // No key: {key} cannot be filled, so it is parked with the reason.
        Raw::value(r#"{"id":"b","type":"view"}"#),
        Raw::tombstone().key("user 1"),
    ];
    produce_raw(&b, &topic, Some(0), &recs, &[]);
    let parked = read_exactly(&b, &format!("{topic}.dlq"), 1);
    assert!(parked[0].value_str().contains("\"id\":\"b\""));
    assert!(
        parked[0].header("kbridge-dlq-reason").contains("{key}"),
        "{:?}",
        parked[0].header("kbridge-dlq-reason")
    );
    wait_until("both calls made", Duration::from_secs(30), || {
        sink.calls().len() >= 2
    });
    wait_until("every offset committed", Duration::from_secs(30), || {
        committed(&b, &group, &topic, 1)[0] == 3
    });
    let calls = sink.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    // The two calls may arrive in either order (ordering = none).
    let by = |m: &str| {
        calls
            .iter()
            .find(|c| c.method == m)
            .unwrap_or_else(|| panic!("no {m}: {calls:?}"))
    };
    let put = by("PUT");
    assert_eq!(put.method, "PUT");
    assert_eq!(put.url, format!("/items/{topic}/user%201"));
    assert_eq!(put.header("x-source"), Some("kbridge"));
    assert_eq!(put.header("trace-id"), Some("t-1"));
    assert_eq!(
        put.header("tenant"),
        None,
        "a value that could split the head is not sent"
    );
    assert_eq!(
        put.header("other"),
        None,
        "only the allow-list is forwarded"
    );
    assert!(
        put.header("x-kafka-timestamp")
            .is_some_and(|t| t.parse::<i64>().is_ok())
    );
    let del = by("DELETE");
    assert_eq!(del.method, "DELETE");
    assert_eq!(del.url, put.url, "{del:?}");
    assert!(del.body.is_empty());
    assert!(d.stop());
}

/// Verifies each call with the Standard Webhooks reference library
/// (`standardwebhooks` from PyPI), once per secret; prints `ok` per call,
/// then checks that a tampered body is refused.
const VERIFY: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
calls = json.load(open(sys.argv[1]))
for secret in sys.argv[2:]:
    wh = Webhook(secret)
    for c in calls:
        wh.verify(c["body"], c["headers"])
        print("ok")
    try:
        wh.verify(calls[0]["body"] + " ", calls[0]["headers"])
        print("tampered call accepted")
    except WebhookVerificationError:
        print("tampered refused")
"#;

#[test]
fn signed_calls_verify_with_the_standard_webhooks_library_under_either_secret() {
    let b = brokers();
    let topic = unique_topic("signed");
    create_topic(&b, &topic, 1);
    let dir = TempDir::new("signed");
    let (old, new) = (
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_c2VjcmV0LXJvdGF0ZWQtaW4tZm9yLXRoZS10ZXN0",
    );
    let secrets = write_mode(&dir, "signing", &format!("{old}\n{new}\n"), 0o600);
    let sink = Sink::always(200);
    let (mut d, _) = start(
        &b,
        &topic,
        &sink.url,
        &format!("signing_secret_file = {}", secrets.display()),
    );
    produce(&b, &topic, &events("s", 5));
    let ids: Vec<String> = (0..5).map(|i| format!("s-{i}")).collect();
    wait_delivered(&sink, &ids, Duration::from_secs(30));
    let calls: Vec<serde_json::Value> = sink
        .calls()
        .iter()
        .map(|c| {
            assert_eq!(
                c.header("webhook-id"),
                c.header("idempotency-key"),
                "the id is the call's idempotency key"
            );
            serde_json::json!({
                "body": String::from_utf8(c.body.clone()).unwrap(),
                "headers": {
                    "webhook-id": c.header("webhook-id"),
                    "webhook-timestamp": c.header("webhook-timestamp"),
                    "webhook-signature": c.header("webhook-signature"),
                },
            })
        })
        .collect();
    let file = dir.0.join("calls.json");
    std::fs::write(&file, serde_json::to_vec(&calls).unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-c", VERIFY])
        .arg(&file)
        .args([old, new])
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("ok").count(), 2 * calls.len(), "{text}");
    assert_eq!(text.matches("tampered refused").count(), 2, "{text}");
    assert!(d.stop());
}

#[test]
fn a_batch_answered_per_item_retries_and_parks_only_its_failed_items() {
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use crate::util::sink::Reply;
    let b = brokers();
    let topic = unique_topic("items");
    create_topic(&b, &topic, 1);
    // Per id, the status each answer gave it.
    let given: Arc<Mutex<HashMap<String, Vec<u16>>>> = Arc::default();
    let failed_once: Arc<Mutex<HashSet<String>>> = Arc::default();
    let malformed_sent = Arc::new(AtomicBool::new(false));
    let sink = {
        let (given, failed_once, malformed_sent) =
            (given.clone(), failed_once.clone(), malformed_sent.clone());
        Sink::start(Arc::new(move |call, _| {
            let ids = call.ids();
            // The first call's answer is 200 but no per-item answer: the
            // whole batch failed, every message of it comes again.
            if !malformed_sent.swap(true, Ordering::SeqCst) {
                for id in &ids {
                    given.lock().unwrap().entry(id.clone()).or_default().push(0);
                }
                return Reply::status(200).body("ok");
            }
            let statuses: Vec<u16> = ids
                .iter()
                .map(|id| {
                    let n: usize = id.trim_start_matches("p-").parse().unwrap();
                    let s = if n == 3 {
                        400
                    } else if n % 2 == 1 && failed_once.lock().unwrap().insert(id.clone()) {
                        503
                    } else {
                        200
                    };
                    given.lock().unwrap().entry(id.clone()).or_default().push(s);
                    s
                })
                .collect();
            let items: Vec<String> = statuses
                .iter()
                .map(|s| format!("{{\"status\":{s}}}"))
                .collect();
            Reply::status(200).body(&format!("{{\"items\":[{}]}}", items.join(",")))
        }))
    };
    let (mut d, group) = start(
        &b,
        &topic,
        &sink.url,
        "batch_size = 10\nbatch_format = json_array\nbatch_linger_ms = 50\nbatch_answer = items",
    );
    produce(&b, &topic, &events("p", 20));
    wait_until("every offset committed", Duration::from_secs(60), || {
        committed(&b, &group, &topic, 1)[0] == 20
    });
    let parked = read_exactly(&b, &format!("{topic}.dlq"), 1);
    assert!(parked[0].value_str().contains("\"p-3\""));
    let given = given.lock().unwrap();
    for i in 0..20 {
        let id = format!("p-{i}");
        let got = &given[&id];
        let oks = got.iter().filter(|s| **s == 200).count();
        match i {
            3 => assert_eq!((oks, got.last()), (0, Some(&400)), "{id}: {got:?}"),
            _ => assert_eq!(oks, 1, "{id} taken once, never sent after its 200: {got:?}"),
        }
        if i % 2 == 1 && i != 3 {
            assert!(
                got.contains(&503),
                "{id} failed once and came again: {got:?}"
            );
        }
    }
    assert!(
        given.values().filter(|g| g.first() == Some(&0)).count() >= 1,
        "the malformed answer's batch came again"
    );
    assert_eq!(
        metric(&d.metrics(), "kbridge_deliver_delivered_total"),
        19.0
    );
    assert!(d.stop());
}
