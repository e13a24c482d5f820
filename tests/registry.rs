//! The registry client against a scripted registry (a sink that answers the
//! Confluent API): every call carries the basic auth of `basic_auth_file`;
//! a schema is fetched once however many records carry its id, and an id
//! the registry does not know is asked once (within `unknown_retry_s`), its
//! records parked; wrong credentials are an outage (records wait, the failed
//! calls counted, nothing parked). And Avro without a registry: an
//! `avro:<file>` route writes plain datums that deliver reads back by
//! `avro_schema_file`. A registry's answer cannot forge a log line.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::avro::produce_raw;
use crate::util::process::spawn_bin;
use crate::util::sink::{Reply, Sink};
use crate::util::*;

const SCHEMA: &str = r#"{"type":"record","name":"P","fields":[{"name":"n","type":"long"}]}"#;

/// A framed datum of `{"n": n}` under schema `id`.
fn framed(id: u32, n: i64) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&id.to_be_bytes());
    v.push(((n << 1) ^ (n >> 63)) as u8);
    v
}

/// A registry that knows schema 7 and asks for `user:pw`.
fn scripted_registry() -> Sink {
    Sink::start(Arc::new(|call, _| {
        if call.header("Authorization") != Some("Basic dXNlcjpwdw==") {
            return Reply::status(401).body(r#"{"error_code":401,"message":"Unauthorized"}"#);
        }
        match call.url.ends_with("/schemas/ids/7") {
            true => Reply::status(200).body(&json!({ "schema": SCHEMA }).to_string()),
            false => {
                Reply::status(404).body(r#"{"error_code":40403,"message":"Schema not found"}"#)
            }
        }
    }))
}

fn calls_to(registry: &Sink, path: &str) -> usize {
    registry
        .calls()
        .iter()
        .filter(|c| c.url.ends_with(path))
        .count()
}

#[test]
fn schemas_are_fetched_once_with_basic_auth_and_unknown_ids_are_parked() {
    let b = brokers();
    let topic = unique_topic("reg");
    create_topic(&b, &topic, 1);
    for n in 1..=3 {
        produce_raw(&b, &topic, &framed(7, n));
        produce_raw(&b, &topic, &framed(8, n));
    }
    let registry = scripted_registry();
    let dir = TempDir::new("reg");
    let auth = write_mode(&dir, "auth", "user:pw\n", 0o600);
    let sink = Sink::always(200);
    let extra = format!(
        "value_format = avro\n[schema_registry]\nurl = {}\nbasic_auth_file = {}\nunknown_retry_s = 3600\n",
        registry.url,
        auth.display()
    );
    // One partition: one consumer thread, so no record is read twice.
    let mut d = Deliver::of(&b, &topic, &sink.url, &extra);
    let dlq = read_exactly(&b, &format!("{topic}.dlq"), 3);
    assert!(
        dlq.iter()
            .all(|r| r.header("kbridge-dlq-reason").contains("Schema not found")),
        "{dlq:?}"
    );
    wait_until("three delivered", Duration::from_secs(30), || {
        sink.calls().len() >= 3
    });
    let mut got: Vec<i64> = sink
        .calls()
        .iter()
        .map(|c| {
            serde_json::from_slice::<serde_json::Value>(&c.body).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    got.sort();
    assert_eq!(got, [1, 2, 3]);
    assert!(d.stop());
    assert_eq!(calls_to(&registry, "/schemas/ids/7"), 1, "fetched once");
    assert_eq!(
        calls_to(&registry, "/schemas/ids/8"),
        1,
        "unknown, asked once"
    );
    assert!(
        registry
            .calls()
            .iter()
            .all(|c| c.header("Authorization").is_some()),
        "every call authenticated"
    );

    // Wrong credentials: the registry refuses (401), records wait.
    let topic = unique_topic("reg-401");
    create_topic(&b, &topic, 1);
    produce_raw(&b, &topic, &framed(7, 9));
    let wrong = write_mode(&dir, "wrong", "user:nope\n", 0o600);
    let extra = format!(
        "value_format = avro\n[schema_registry]\nurl = {}\nbasic_auth_file = {}\n",
        registry.url,
        wrong.display()
    );
    let sink = Sink::always(200);
    let mut d = Deliver::of(&b, &topic, &sink.url, &extra);
    wait_until("refused calls counted", Duration::from_secs(30), || {
        metric(&d.metrics(), "kbridge_schema_registry_errors_total") >= 2.0
    });
    assert!(sink.calls().is_empty());
    assert_eq!(
        metric(&d.metrics(), "kbridge_deliver_dead_letters_total"),
        0.0
    );
    assert!(d.stop());
}

#[test]
fn without_a_registry_avro_routes_write_plain_datums_deliver_reads_by_file() {
    let b = brokers();
    let topic = unique_topic("avro-plain");
    create_topic(&b, &topic, 1);
    let dir = TempDir::new("avro-plain");
    let avsc = write_mode(&dir, "p.avsc", SCHEMA, 0o644);
    let mut ini = ingest_ini(&b, &topic, "", "");
    ini.push_str(&format!("[ingest.formats]\nt = avro:{}\n", avsc.display()));
    let i = Ingest::start(&ini);
    let r = post(
        &i.url,
        &[("Content-Type", "application/json")],
        br#"[{"n":5},{"n":-1}]"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let stored = read_topic(&b, &topic, 2, Duration::from_secs(10));
    let values: Vec<Vec<u8>> = stored.iter().map(|r| r.value.clone()).collect();
    assert_eq!(values, [vec![10u8], vec![1u8]], "zig-zag longs, no frame");
    let sink = Sink::always(200);
    let extra = format!(
        "value_format = avro\navro_schema_file = {}\n",
        avsc.display()
    );
    let mut d = Deliver::of(&b, &topic, &sink.url, &extra);
    wait_until("two delivered", Duration::from_secs(30), || {
        sink.calls().len() >= 2
    });
    let mut got: Vec<serde_json::Value> = sink.bodies();
    got.sort_by_key(|v| v["n"].as_i64());
    assert_eq!(got, [json!({"n": -1}), json!({"n": 5})]);
    assert!(d.stop());
}

#[test]
fn a_registry_answer_cannot_start_a_line_of_its_own_in_the_log() {
    let b = brokers();
    let topic = unique_topic("reg-forge");
    create_topic(&b, &topic, 1);
    produce_raw(&b, &topic, &framed(7, 1));
    let forged = "2026-01-01T00:00:00Z [ERROR] (main) kbridge::app: forged";
    let body = format!("{{\"message\":\"down\"}}\r\n{forged}\n");
    let registry = Sink::start(Arc::new(move |_, _| Reply::status(503).body(&body)));
    let sink = Sink::always(200);
    let extra = format!(
        "value_format = avro\n[schema_registry]\nurl = {}\n[admin]\nlisten = 127.0.0.1:0\n",
        registry.url
    );
    let dir = TempDir::new("reg-forge");
    let mut bin = spawn_bin(
        &deliver_ini(&b, &unique_topic("g"), &topic, &sink.url, &extra),
        &dir,
    );
    wait_until("the outage logged", Duration::from_secs(30), || {
        bin.log().contains("forged")
    });
    let log = bin.log();
    assert!(
        log.lines().all(|l| !l.starts_with(forged)),
        "a line of the registry's own: {log}"
    );
    assert!(log.contains("\\r\\n2026-01-01T00:00:00Z [ERROR]"), "{log}");
    bin.sigterm();
    assert_eq!(bin.wait_exit(Duration::from_secs(20)).code(), Some(0));
    assert!(sink.calls().is_empty());
}
