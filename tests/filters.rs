//! deliver's `filter` against the real broker: only matching messages are
//! sent, the others are committed uncalled and counted; values that are no
//! JSON and hostile header bytes are judged, never fatal.

use std::time::Duration;

use crate::util::records::{Raw, produce_raw};
use crate::util::sink::Sink;
use crate::util::*;

#[test]
fn only_matching_messages_are_sent_and_every_offset_is_committed() {
    let b = brokers();
    let topic = unique_topic("flt");
    create_topic(&b, &topic, 1);
    let sink = Sink::always(200);
    let group = unique_topic("g");
    let filter = r#"{"all":[{"field":"/type","one_of":["click","view"]},{"not":{"header":"source","prefix":"test-"}},{"any":[{"key":true,"absent":true},{"key":true,"regex":"^user-[0-9]+$"}]}]}"#;
    let mut d = Deliver::start(&deliver_ini(
        &b,
        &group,
        &topic,
        &sink.url,
        &format!("filter = {filter}\non_invalid_json = send"),
    ));
    d.wait_settled(1);
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
