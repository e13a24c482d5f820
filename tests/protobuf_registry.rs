//! Protobuf by the schema registry (Apicurio in the tests): `.proto` texts
//! sent in REST Proxy envelopes are registered and their records stored in
//! the Confluent wire format, as Google's runtime decodes them; records
//! Google's runtime framed with a registered `.proto` reach deliver and
//! collect as its JSON; envelope schemas may import Google's well-known
//! types.

use std::time::Duration;

use crate::collect::collected_lines;
use crate::protobuf::{descriptor_set, descriptor_set_of, google_protobuf};
use crate::util::sink::Sink;
use crate::util::*;

/// `PROTO` with `Order` first: the REST Proxy's protobuf envelope encodes
/// records as the file's first message.
const ORDER_FIRST: &str = r#"syntax = "proto3";
package shop;
message Order { string id = 1; int64 amount_cents = 2; repeated string tags = 3; State state = 5; }
enum State { NEW = 0; PAID = 1; }
"#;

#[test]
fn protobuf_schemas_from_the_registry_rest_proxy_envelopes_and_deliver() {
    let registry = crate::avro::registry();
    let b = brokers();
    let topic = unique_topic("pb-reg");
    create_topic(&b, &topic, 1);
    let dir = TempDir::new("pb-reg");
    let desc = descriptor_set_of(&dir, ORDER_FIRST);
    let ini = format!(
        "[kafka]\nbrokers = {b}\n[schema_registry]\nurl = {registry}\n[ingest]\nlisten = 127.0.0.1:0\n\
         rest_proxy_topics = {topic}\n[ingest.routes]\nt = {}\npb = {topic}\n[ingest.formats]\npb = protobuf\n",
        unique_topic("pb-native")
    );
    let i = Ingest::start(&ini);
    let url = i.url.replace("/api/t/v1/", &format!("/topics/{topic}"));
    let ct = [("Content-Type", "application/vnd.kafka.protobuf.v2+json")];
    let value =
        serde_json::json!({"id": "o-1", "amountCents": "1999", "tags": ["a"], "state": "PAID"});
    let key_schema = "syntax = \"proto3\"; package shop; message Key { string customer = 1; }";
    let body = serde_json::json!({"key_schema": key_schema, "value_schema": ORDER_FIRST,
                                  "records": [{"key": {"customer": "c-1"}, "value": value}]});
    let r = post(&url, &ct, body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.json()["value_schema_id"].as_u64().unwrap() as u32;
    let body = serde_json::json!({"value_schema_id": id, "records": [{"value": {"id": "o-2"}}]});
    let r = post(&url, &ct, body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    // A `protobuf` route takes the subject's latest schema (the one the
    // envelope registered) and writes its first message, framed. It asked
    // at start, before the subject existed: it asks again within a second.
    wait_until(
        "the route has the subject's schema",
        Duration::from_secs(10),
        || {
            let r = post(
                &i.url.replace("/api/t/", "/api/pb/"),
                &[("Content-Type", "application/json")],
                br#"{"id":"o-3","amountCents":"5"}"#,
            );
            assert!([200, 503].contains(&r.status), "{}", r.body);
            r.status == 200
        },
    );
    let body = serde_json::json!({"value_schema_id": id, "records": [{"value": {"nope": 1}}]});
    let r = post(&url, &ct, body.to_string().as_bytes());
    assert_eq!(
        (r.status, r.json()["error_code"].clone()),
        (422, serde_json::json!(42205)),
        "{}",
        r.body
    );

    // The wire format (magic byte, id, message index [0]), and a message
    // Google's runtime decodes to the same values.
    let stored = read_topic(&b, &topic, 3, Duration::from_secs(10));
    assert_eq!(stored.len(), 3);
    let mut frame = vec![0u8];
    frame.extend_from_slice(&id.to_be_bytes());
    frame.push(0);
    assert!(
        stored.iter().all(|r| r.value.starts_with(&frame)),
        "all framed alike"
    );
    let payload = kbridge::kafka::record::hex(&stored[0].value[6..]);
    let read = google_protobuf(&["decode"], &desc, &[payload]);
    assert_eq!(read, vec![value.clone()]);

    // deliver reads them by the registry: value_format = protobuf, no
    // descriptor set.
    let sink = Sink::always(200);
    let extra = format!(
        "value_format = protobuf\nkey_format = protobuf\n[schema_registry]\nurl = {registry}\n"
    );
    let mut d = Deliver::of(&b, &topic, &sink.url, &extra);
    wait_until("three delivered", Duration::from_secs(30), || {
        sink.calls().len() >= 3
    });
    let keyed = sink
        .calls()
        .into_iter()
        .find(|c| c.header("X-Kafka-Key").is_some());
    assert_eq!(
        keyed
            .and_then(|c| c.header("X-Kafka-Key").map(str::to_string))
            .as_deref(),
        Some(r#"{"customer":"c-1"}"#),
        "the key decoded by its registered .proto"
    );
    let mut got: Vec<serde_json::Value> = sink.bodies();
    got.sort_by_key(|v| v["id"].to_string());
    assert_eq!(
        got,
        vec![
            value,
            serde_json::json!({"id": "o-2"}),
            serde_json::json!({"id": "o-3", "amountCents": "5"})
        ]
    );
    assert!(d.stop());
}

#[test]
fn records_google_protobuf_framed_by_a_registered_proto_reach_deliver_and_collect() {
    let registry = crate::avro::registry();
    let b = brokers();
    let topic = unique_topic("pb-reg-in");
    create_topic(&b, &topic, 1);
    let dir = TempDir::new("pb-reg-in");
    let desc = descriptor_set(&dir);
    // shop.Order is the file's second message: message indexes [1].
    let specs = [
        serde_json::json!({"value": {"id": "o-1", "amountCents": "7", "customer": {"name": "Zoë"}},
                           "registered": true}),
        serde_json::json!({"value": {"id": "o-2", "state": "PAID"}, "registered": true}),
    ];
    let lines: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
    let proto = dir.0.join("orders.proto");
    let args = [
        std::ffi::OsStr::new("produce"),
        b.as_ref(),
        topic.as_ref(),
        desc.as_os_str(),
        "shop.Order".as_ref(),
        registry.as_ref(),
        proto.as_os_str(),
    ];
    let written = crate::util::python::json_lines("protobuf-io.py", &args, &lines);
    assert_eq!(written.len(), 2);
    assert_eq!(
        &written[0]["hex"].as_str().unwrap()[10..14],
        "0202",
        "framed with message indexes [1]"
    );
    let mut expected: Vec<serde_json::Value> = written.iter().map(|w| w["json"].clone()).collect();
    expected.sort_by_key(|v| v["id"].to_string());

    let sink = Sink::always(200);
    let extra = format!("value_format = protobuf\n[schema_registry]\nurl = {registry}\n");
    let mut d = Deliver::of(&b, &topic, &sink.url, &extra);
    wait_until("both delivered", Duration::from_secs(30), || {
        sink.calls().len() >= 2
    });
    let mut got: Vec<serde_json::Value> = sink.bodies();
    got.sort_by_key(|v| v["id"].to_string());
    assert_eq!(got, expected, "the runtime's own JSON for each");
    assert!(d.stop());

    let extra = format!("value_format = auto\n[schema_registry]\nurl = {registry}\n");
    let mut filed: Vec<serde_json::Value> = collected_lines(&b, &topic, &extra, 2, 0)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    filed.sort_by_key(|v| v["id"].to_string());
    assert_eq!(filed, expected);
}

#[test]
fn envelope_schemas_may_import_googles_well_known_types() {
    let registry = crate::avro::registry();
    let b = brokers();
    let topic = unique_topic("pb-wkt");
    create_topic(&b, &topic, 1);
    let ini = format!(
        "[kafka]\nbrokers = {b}\n[schema_registry]\nurl = {registry}\n[ingest]\nlisten = 127.0.0.1:0\n\
         rest_proxy_topics = {topic}\n[ingest.routes]\nt = {topic}\n"
    );
    let i = Ingest::start(&ini);
    let schema = "syntax = \"proto3\"; package ev; import \"google/protobuf/timestamp.proto\";\n\
                  message Ev { string id = 1; google.protobuf.Timestamp at = 2; }";
    let value = serde_json::json!({"id": "e-1", "at": "2026-12-02T10:00:00Z"});
    let body = serde_json::json!({"value_schema": schema, "records": [{"value": value}]});
    let r = post(
        &i.url.replace("/api/t/v1/", &format!("/topics/{topic}")),
        &[("Content-Type", "application/vnd.kafka.protobuf.v2+json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["value_schema_id"].is_u64(), "{}", r.body);
    // deliver compiles the registered text, the import resolved in memory.
    let sink = Sink::always(200);
    let extra = format!("value_format = protobuf\n[schema_registry]\nurl = {registry}\n");
    let mut d = Deliver::of(&b, &topic, &sink.url, &extra);
    wait_until("delivered", Duration::from_secs(30), || {
        !sink.calls().is_empty()
    });
    assert_eq!(sink.bodies(), vec![value]);
    assert!(d.stop());
}
