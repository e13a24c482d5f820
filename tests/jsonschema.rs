//! JSON Schema with the registry (`KBRIDGE_TEST_REGISTRY`): JSON posted to
//! a `jsonschema` route is checked and stored in the wire format under the
//! registry's id (a misfit is 400 with its path, nothing stored); deliver
//! with `value_format = jsonschema` sends records that fit as their JSON
//! and parks the one that does not, and one without a frame, with the
//! reason; the REST Proxy's jsonschema envelopes are stored the same way.
//! A record repeating a name is refused (readers differ on which counts).

use std::time::Duration;

use serde_json::{Value, json};

use crate::avro::{produce_raw, registry, registry_call};
use crate::util::sink::Sink;
use crate::util::*;

const ORDER: &str = r#"{"$schema":"http://json-schema.org/draft-07/schema#","title":"Order",
  "type":"object","required":["id"],"additionalProperties":false,
  "properties":{"id":{"type":"string"},"tags":{"type":"array","items":{"type":"string"}}}}"#;

fn framed(id: u64, json: &Value) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&(id as u32).to_be_bytes());
    v.extend_from_slice(json.to_string().as_bytes());
    v
}

#[test]
fn json_schema_routes_deliver_and_envelopes_check_and_frame_records() {
    let b = brokers();
    let (topic, v2) = (unique_topic("js"), unique_topic("js-v2"));
    create_topic(&b, &topic, 1);
    create_topic(&b, &v2, 1);
    let dir = TempDir::new("js");
    let file = dir.0.join("order.json");
    std::fs::write(&file, ORDER).unwrap();
    let ini = format!(
        "[kafka]\nbrokers = {b}\n[schema_registry]\nurl = {}\n[ingest]\nlisten = 127.0.0.1:0\n\
         rest_proxy_topics = {v2}\n[ingest.routes]\nt = {topic}\n[ingest.formats]\nt = jsonschema:{}\n",
        registry(),
        file.display()
    );
    let i = Ingest::start(&ini);
    let ok = json!({"id": "o-1", "tags": ["a"]});
    let r = post(
        &i.url,
        &[("Content-Type", "application/json")],
        ok.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        &i.url,
        &[("Content-Type", "application/json")],
        br#"[{"id":"o-2"},{"id":"o-3","tags":["b",4]}]"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        (r.json()["record"].clone(), r.json()["path"].clone()),
        (json!(1), json!("tags[1]"))
    );
    // A name repeated: the last fits, the first does not; other readers
    // keep the first, so the record is refused (and never delivered below).
    let r = post(
        &i.url,
        &[("Content-Type", "application/json")],
        br#"{"id":7,"tags":[],"id":"o-x"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("the name \"id\" appears twice in one object"),
        "{}",
        r.body
    );
    let id = registry_call(
        "GET",
        &format!("/subjects/{topic}-value/versions/latest"),
        None,
    )["id"]
        .as_u64()
        .unwrap();
    let stored = read_topic(&b, &topic, 1, Duration::from_secs(10));
    assert_eq!(
        stored[0].value,
        framed(id, &ok),
        "magic byte, the registry's id, the JSON"
    );

    // Deliver: records of the registry's id that fit go out as their JSON;
    // one that does not fit, and one without a frame, are parked.
    produce_raw(&b, &topic, &framed(id, &json!({"id": 7})));
    produce_raw(&b, &topic, br#"{"id":"plain"}"#);
    produce_raw(&b, &topic, &framed(id, &json!({"id": "o-4"})));
    let sink = Sink::always(200);
    let extra = format!(
        "value_format = jsonschema\n[schema_registry]\nurl = {}\n",
        registry()
    );
    let mut d = Deliver::of(&b, &topic, &sink.url, &extra);
    let dlq = read_exactly(&b, &format!("{topic}.dlq"), 2);
    let reasons: Vec<String> = dlq.iter().map(|r| r.header("kbridge-dlq-reason")).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&format!("does not fit JSON Schema {id}: at \"id\""))),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("not in the Confluent wire format")),
        "{reasons:?}"
    );
    wait_until("two delivered", Duration::from_secs(30), || {
        sink.calls().len() >= 2
    });
    let mut got: Vec<Value> = sink.bodies();
    got.sort_by_key(|v| v["id"].to_string());
    assert_eq!(got, vec![ok.clone(), json!({"id": "o-4"})]);
    assert!(d.stop());

    // The REST Proxy's jsonschema envelope, by schema text, then by id.
    let url = i.url.replace("/api/t/v1/", &format!("/topics/{v2}"));
    let ct = [("Content-Type", "application/vnd.kafka.jsonschema.v2+json")];
    let body = json!({"value_schema": ORDER, "records": [{"value": {"id": "e-1"}}]});
    let r = post(&url, &ct, body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let v2_id = r.json()["value_schema_id"].as_u64().unwrap();
    let body = json!({"value_schema_id": v2_id, "records": [{"value": {"id": "e-2", "extra": 1}}]});
    let r = post(&url, &ct, body.to_string().as_bytes());
    assert_eq!(
        (r.status, r.json()["error_code"].clone()),
        (422, json!(42205)),
        "{}",
        r.body
    );
    let body =
        format!(r#"{{"value_schema_id":{v2_id},"records":[{{"value":{{"id":1,"id":"e-3"}}}}]}}"#);
    let r = post(&url, &ct, body.as_bytes());
    assert_eq!(
        (r.status, r.json()["error_code"].clone()),
        (422, json!(42205)),
        "{}",
        r.body
    );
    assert!(r.body.contains("records[0].value"), "{}", r.body);
    let stored = read_exactly(&b, &v2, 1);
    assert_eq!(stored[0].value, framed(v2_id, &json!({"id": "e-1"})));
}
