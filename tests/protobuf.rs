//! Seed 002's case: Protobuf records decoded by a local descriptor set
//! (`value_format = protobuf`, no registry). Records written by Google's
//! protobuf runtime (`scripts/protobuf-io.py`, plain and in the
//! Confluent wire format) reach the endpoint as the canonical JSON that
//! runtime gives for them; a record that is no such message is parked with
//! the reason, one the endpoint refuses is parked as the bytes it was read
//! as (not its JSON), and everything is committed.

use std::process::Command;
use std::time::Duration;

use crate::collect::collected_lines;
use crate::util::sink::Sink;
use crate::util::*;

const PROTO: &str = r#"syntax = "proto3";
package shop;
message Customer { string name = 1; }
enum State { NEW = 0; PAID = 1; }
message Order {
  string id = 1;
  int64 amount_cents = 2;
  repeated string tags = 3;
  Customer customer = 4;
  State state = 5;
  bytes note = 6;
}
"#;

/// Runs `protobuf-io.py <args> <desc> shop.Order` (Google's runtime) with
/// `lines` on its stdin.
pub(crate) fn google_protobuf(
    args: &[&str],
    desc: &std::path::Path,
    lines: &[String],
) -> Vec<serde_json::Value> {
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    all.extend([desc.as_os_str(), std::ffi::OsStr::new("shop.Order")]);
    crate::util::python::json_lines("protobuf-io.py", &all, lines)
}

/// `orders.desc`, made by protoc from `PROTO`.
pub(crate) fn descriptor_set(dir: &TempDir) -> std::path::PathBuf {
    descriptor_set_of(dir, PROTO)
}

/// The descriptor set protoc makes of `proto`.
pub(crate) fn descriptor_set_of(dir: &TempDir, proto: &str) -> std::path::PathBuf {
    std::fs::write(dir.0.join("orders.proto"), proto).unwrap();
    let out = dir.0.join("orders.desc");
    let status = Command::new("protoc")
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg(format!("-I{}", dir.0.display()))
        .arg("orders.proto")
        .status()
        .expect("protoc (scripts/test installs Debian's protobuf-compiler)");
    assert!(status.success());
    out
}

#[test]
fn protobuf_records_reach_the_endpoint_as_their_canonical_json() {
    let b = brokers();
    let topic = unique_topic("pb");
    create_topic(&b, &topic, 1);
    let dir = TempDir::new("pb");
    let desc = descriptor_set(&dir);
    let specs = [
        serde_json::json!({"value": {"id": "o-1", "amountCents": "1999", "tags": ["a", "b"],
                                     "customer": {"name": "Ann"}, "state": "PAID", "note": "AP8="}, "key": "c1"}),
        serde_json::json!({"value": {"id": "o-2"}, "framed": 42}),
        serde_json::json!({"raw_hex": "ffffffff0a"}),
        serde_json::json!({"value": {"id": "o-3", "amountCents": "-5"}}),
    ];
    let lines: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
    let written = google_protobuf(&["produce", &b, &topic], &desc, &lines);
    assert_eq!(written.len(), 3);
    let expected: Vec<serde_json::Value> = written.iter().map(|w| w["json"].clone()).collect();

    // o-3 is refused (400: parked).
    let sink = Sink::start(std::sync::Arc::new(|call, _| {
        let refused = call.ids().first().is_some_and(|id| id == "o-3");
        crate::util::sink::Reply::status(if refused { 400 } else { 200 })
    }));
    let group = unique_topic("g");
    let extra = format!(
        "value_format = protobuf\nprotobuf_descriptor_file = {}\nprotobuf_message = shop.Order\n",
        desc.display()
    );
    let mut d = Deliver::start(&deliver_ini(&b, &group, &topic, &sink.url, &extra));
    let mut dlq = read_exactly(&b, &format!("{topic}.dlq"), 2);
    dlq.sort_by_key(|r| r.header("kbridge-dlq-status"));
    assert!(
        dlq[0]
            .header("kbridge-dlq-reason")
            .starts_with("value is not a valid shop.Order"),
        "{}",
        dlq[0].header("kbridge-dlq-reason")
    );
    assert_eq!(
        dlq[0].value,
        vec![0xff, 0xff, 0xff, 0xff, 0x0a],
        "parked as it was"
    );
    assert_eq!(dlq[1].header("kbridge-dlq-status"), "400");
    assert_eq!(
        kbridge::kafka::record::hex(&dlq[1].value),
        written[2]["hex"].as_str().unwrap(),
        "o-3 parked as the protobuf bytes it was read as"
    );
    wait_until("three delivered", Duration::from_secs(30), || {
        sink.calls().len() >= 3
    });
    let by_id = |mut v: Vec<serde_json::Value>| {
        v.sort_by_key(|x| x["id"].as_str().unwrap_or_default().to_string());
        v
    };
    let got: Vec<serde_json::Value> = sink.bodies();
    assert_eq!(
        by_id(got),
        by_id(expected.clone()),
        "the protobuf runtime's own JSON for each"
    );
    wait_until("all committed", Duration::from_secs(30), || {
        committed(&b, &group, &topic, 1) == [4]
    });
    assert!(d.stop());

    // collect files the same JSON, and the record that is no message as it
    // is (in its documented encoding), counted.
    let lines = collected_lines(&b, &topic, &extra, 4, 1);
    assert_eq!(lines.len(), 4, "{lines:?}");
    let filed: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(
        by_id(filed.into_iter().filter(|v| v.is_object()).collect()),
        by_id(expected.clone())
    );
    assert!(
        lines.iter().any(|l| l.starts_with("\"base64:")),
        "{lines:?}"
    );
}

#[test]
fn protobuf_mistakes_stop_start_naming_their_keys() {
    let dir = TempDir::new("pb-cfg");
    let desc = descriptor_set(&dir);
    let check = |extra: &str| {
        let ini = dir.0.join("c.ini");
        std::fs::write(
            &ini,
            format!("[kafka]\nbrokers = 127.0.0.1:1\n[deliver]\ngroup_id = g\ntopics = t\ntarget_url = http://h/x\n{extra}"),
        )
        .unwrap();
        let out = Command::new(kbridge_bin())
            .args(["check-config", "--config"])
            .arg(&ini)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, e) = check(&format!(
        "value_format = protobuf\nprotobuf_descriptor_file = {}\nprotobuf_message = shop.Nope\n",
        desc.display()
    ));
    assert_eq!(code, Some(2));
    assert!(
        e.contains("[deliver] protobuf_message: no message \"shop.Nope\""),
        "{e}"
    );
    assert!(e.contains("shop.Order"), "it names what there is: {e}");
    let (_, e) = check("value_format = protobuf\nprotobuf_message = shop.Order\n");
    assert!(
        e.contains("[deliver] protobuf_descriptor_file: required"),
        "{e}"
    );
    let (_, e) = check(&format!(
        "value_format = protobuf\nprotobuf_descriptor_file = {}\nprotobuf_message = shop.Order\n",
        dir.0.join("orders.proto").display()
    ));
    assert!(e.contains("is not a descriptor set"), "{e}");
    let (code, _) = check(&format!(
        "value_format = protobuf\nprotobuf_descriptor_file = {}\nprotobuf_message = shop.Order\n",
        desc.display()
    ));
    assert_eq!(code, Some(0));
}

#[test]
fn a_protobuf_route_encodes_json_records_that_googles_runtime_reads_back() {
    let b = brokers();
    let topic = unique_topic("pb-in");
    create_topic(&b, &topic, 1);
    let dir = TempDir::new("pb-in");
    let desc = descriptor_set(&dir);
    let ini = ingest_ini(
        &b,
        &topic,
        &format!("protobuf_descriptor_file = {}", desc.display()),
        "",
    ) + "[ingest.formats]\nt = protobuf:shop.Order\n";
    let ing = Ingest::start(&ini);
    let orders = r#"[{"id":"o-1","amountCents":"1999","tags":["a"],"customer":{"name":"Ann"},"state":"PAID"},{"id":"o-2","amount_cents":7}]"#;
    let r = post(
        &ing.url,
        &[("Content-Type", "application/json")],
        orders.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Records that do not fit: the record and the field path, nothing stored.
    for (body, record, path) in [
        (
            r#"[{"id":"ok"},{"id":"x","amountCents":"lots"}]"#,
            1,
            "amountCents",
        ),
        // An unknown field: the object that holds it (the message names it).
        (r#"{"id":"x","customer":{"nam":"typo"}}"#, 0, "customer"),
        (r#"{"id":"x","tags":["a",3]}"#, 0, "tags[1]"),
    ] {
        let r = post(
            &ing.url,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let v = r.json();
        assert_eq!(v["record"], record, "{}", r.body);
        assert_eq!(v["path"], path, "{}", r.body);
        assert!(
            v["error"].as_str().unwrap().contains("is no shop.Order"),
            "{}",
            r.body
        );
    }
    let records = read_with_kafka_python(&b, &topic);
    assert_eq!(records.len(), 2, "only the first request was stored");
    let values: Vec<String> = records
        .iter()
        .map(|(r, _)| kbridge::kafka::record::hex(&r.value))
        .collect();
    let read = google_protobuf(&["decode"], &desc, &values);
    assert_eq!(
        read,
        [
            serde_json::json!({"id": "o-1", "amountCents": "1999", "tags": ["a"], "customer": {"name": "Ann"}, "state": "PAID"}),
            serde_json::json!({"id": "o-2", "amountCents": "7"}),
        ]
    );
}

#[test]
fn keys_are_read_by_local_schemas_without_a_registry() {
    let b = brokers();
    let topic = unique_topic("pb-keys");
    create_topic(&b, &topic, 1);
    let dir = TempDir::new("pb-keys");
    let desc = descriptor_set_of(
        &dir,
        &format!("{PROTO}message OrderKey {{ string customer = 1; }}\n"),
    );
    // Field 1, 3 bytes "c-1"; then a length of 127 with nothing after it.
    produce(
        &b,
        &topic,
        &[
            (Some("\n\x03c-1".into()), r#"{"id":"o-1"}"#.into()),
            (Some("\n\x7f".into()), r#"{"id":"o-2"}"#.into()),
        ],
    );
    let sink = Sink::always(200);
    let extra = format!(
        "key_format = protobuf\nkey_protobuf_descriptor_file = {}\nkey_protobuf_message = shop.OrderKey\n",
        desc.display()
    );
    let mut d = Deliver::of(&b, &topic, &format!("{}/{{key}}", sink.url), &extra);
    let dlq = read_exactly(&b, &format!("{topic}.dlq"), 1);
    let reason = dlq[0].header("kbridge-dlq-reason");
    assert!(reason.starts_with("key: "), "{reason}");
    assert_eq!(
        dlq[0].key.as_deref(),
        Some(&b"\n\x7f"[..]),
        "parked as it was"
    );
    wait_until("o-1 delivered", Duration::from_secs(30), || {
        !sink.calls().is_empty()
    });
    let call = &sink.calls()[0];
    assert_eq!(call.header("X-Kafka-Key"), Some(r#"{"customer":"c-1"}"#));
    assert!(
        call.url.ends_with("/%7B%22customer%22%3A%22c-1%22%7D"),
        "{}",
        call.url
    );
    assert!(d.stop());

    // An Avro long as the key (zig-zag 5 is the byte 10), filed as JSON.
    let avsc = write_mode(&dir, "key.avsc", r#""long""#, 0o644);
    let avro_keys = unique_topic("avro-keys");
    create_topic(&b, &avro_keys, 1);
    // The second key has a byte left over: filed as it is, counted.
    produce(
        &b,
        &avro_keys,
        &[
            (Some("\n".into()), r#"{"id":"o-3"}"#.into()),
            (Some("\n\n".into()), r#"{"id":"o-4"}"#.into()),
        ],
    );
    let extra = format!(
        "format = envelope\nkey_format = avro\nkey_avro_schema_file = {}\n",
        avsc.display()
    );
    let lines = collected_lines(&b, &avro_keys, &extra, 2, 1);
    let filed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(filed[0]["key"], serde_json::json!(5), "{filed:?}");
    assert_eq!(filed[0]["value"], serde_json::json!({"id": "o-3"}));
    assert_eq!(filed[1]["key"], serde_json::json!("\n\n"), "as it was");
    assert_eq!(filed[1]["value"], serde_json::json!({"id": "o-4"}));
}
