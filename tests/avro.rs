//! Avro with a real schema registry (Apicurio, started by `scripts/test`:
//! `KBRIDGE_TEST_REGISTRY` is its Confluent API's URL), against fastavro
//! (`scripts/avro-io.py`) as the independent writer and reader: JSON posted
//! to Avro routes reads back with fastavro as the same values under the
//! registry's id; a record that does not fit is refused with its path and
//! nothing is produced; records fastavro wrote reach deliver's endpoint and
//! collect's files as Avro's JSON encoding; an unknown id and corrupt bytes
//! are hostile records (parked with the reason; filed as they are, counted);
//! while the registry is down records wait and a route answers 503, and both
//! carry on when it is back.

use std::time::Duration;

use serde_json::{Value, json};

use crate::collect::collected_lines;
use crate::util::relay::Relay;
use crate::util::sink::Sink;
use crate::util::*;

const ORDER: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
  {"name":"id","type":"string"},
  {"name":"amount_cents","type":"long"},
  {"name":"tags","type":{"type":"array","items":"string"}},
  {"name":"customer","type":{"type":"record","name":"Customer","fields":[{"name":"name","type":"string"}]}},
  {"name":"state","type":{"type":"enum","name":"State","symbols":["NEW","PAID"]}},
  {"name":"note","type":["null","string"],"default":null},
  {"name":"raw","type":"bytes","default":""}
]}"#;

pub fn registry() -> String {
    std::env::var("KBRIDGE_TEST_REGISTRY")
        .expect("KBRIDGE_TEST_REGISTRY: the schema registry scripts/test starts")
}

/// Runs `avro-io.py <args>` (fastavro) with `lines` on its stdin.
fn fastavro(args: &[&str], lines: &[String]) -> Vec<Value> {
    crate::util::python::json_lines("avro-io.py", args, lines)
}

fn schema_file(dir: &TempDir) -> String {
    let p = dir.0.join("order.avsc");
    std::fs::write(&p, ORDER).unwrap();
    p.display().to_string()
}

pub(crate) fn registry_call(method: &str, path: &str, body: Option<Value>) -> Value {
    let url = format!("{}{path}", registry());
    let r = match body {
        None => agent().get(&url).call(),
        Some(b) => agent()
            .post(&url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .send(b.to_string().as_bytes()),
    };
    let mut r = r.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

fn order(i: usize) -> Value {
    json!({"id": format!("o-{i}"), "amount_cents": 100 * i as i64, "tags": ["a"],
           "customer": {"name": "Zoë"}, "state": "PAID", "note": {"string": "n"}, "raw": "\u{0}\u{ff}"})
}

#[test]
fn json_posted_to_avro_routes_reads_back_with_fastavro_under_the_registrys_id() {
    let b = brokers();
    let (local, latest) = (unique_topic("avro-in"), unique_topic("avro-latest"));
    create_topic(&b, &local, 1);
    create_topic(&b, &latest, 1);
    let dir = TempDir::new("avro-in");
    let avsc = schema_file(&dir);
    // `latest`'s schema is registered beforehand, by someone else.
    let pre = registry_call(
        "POST",
        &format!("/subjects/{latest}-value/versions"),
        Some(json!({ "schema": ORDER })),
    );
    let ini = format!(
        "[kafka]\nbrokers = {b}\n[schema_registry]\nurl = {}\n[ingest]\nlisten = 127.0.0.1:0\n\
         [ingest.routes]\nt = {local}\nlatest = {latest}\n[ingest.formats]\nt = avro:{avsc}\nlatest = avro\n",
        registry()
    );
    let i = Ingest::start(&ini);
    // Avro's JSON encoding, and bare union values and defaults.
    let mut bare = order(2);
    bare["note"] = json!("n");
    bare.as_object_mut().unwrap().remove("raw");
    let body = format!("[{},{}]", order(1), bare);
    let r = post(
        &i.url,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        &i.url.replace("/api/t/", "/api/latest/"),
        &[("Content-Type", "application/json")],
        order(3).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // A misfit: 400 naming the record and the path; nothing produced.
    let mut bad = order(4);
    bad["customer"]["name"] = json!(7);
    let r = post(
        &i.url,
        &[("Content-Type", "application/json")],
        format!("[{},{bad}]", order(5)).as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let e = r.json();
    assert_eq!(
        (e["record"].clone(), e["path"].clone()),
        (json!(1), json!("customer.name"))
    );
    assert!(e["error"].as_str().unwrap().contains("shop.Order"), "{e}");

    let registered = registry_call(
        "GET",
        &format!("/subjects/{local}-value/versions/latest"),
        None,
    );
    let got = fastavro(&["read", &b, &local, &registry(), "2"], &[]);
    let mut second = order(2);
    second["raw"] = json!("");
    assert_eq!(
        got,
        vec![
            json!({"id": registered["id"], "json": order(1)}),
            json!({"id": registered["id"], "json": second}),
        ]
    );
    let got = fastavro(&["read", &b, &latest, &registry(), "1"], &[]);
    assert_eq!(got, vec![json!({"id": pre["id"], "json": order(3)})]);
    assert_eq!(read_topic(&b, &local, 3, Duration::from_secs(2)).len(), 2);
}

#[test]
fn avro_records_of_another_writer_reach_deliver_and_collect_as_their_json() {
    let b = brokers();
    let topic = unique_topic("avro-out");
    create_topic(&b, &topic, 1);
    let dir = TempDir::new("avro-out");
    let avsc = schema_file(&dir);
    let specs = [
        json!({"value": order(1)}),
        json!({"value": order(2), "id": 987_654_321}),
        json!({"raw_hex": "ff00"}),
        json!({"value": order(3)}),
    ];
    let lines: Vec<String> = specs.iter().map(Value::to_string).collect();
    let written = fastavro(&["produce", &b, &topic, &registry(), &avsc], &lines);
    let id = written[0]["id"].as_i64().unwrap();
    // The corrupt record names the id fastavro registered, cut short.
    let corrupt = format!("00{id:08x}ffff");
    produce_raw(&b, &topic, &hex(&corrupt));
    let expected = vec![written[0]["json"].clone(), written[2]["json"].clone()];

    let sink = Sink::always(200);
    let group = unique_topic("g");
    let extra = format!(
        "value_format = avro\n[schema_registry]\nurl = {}\n",
        registry()
    );
    let mut d = Deliver::start(&deliver_ini(&b, &group, &topic, &sink.url, &extra));
    let dlq = read_exactly(&b, &format!("{topic}.dlq"), 3);
    let reason = |what: &str| {
        dlq.iter()
            .find(|r| r.header("kbridge-dlq-reason").contains(what))
            .unwrap_or_else(|| panic!("no dead letter for {what:?}: {dlq:?}"))
    };
    reason("Schema 987654321 not found");
    reason("not in the Confluent wire format");
    let cut = reason(&format!("not a valid Avro datum of schema {id}"));
    assert!(cut.header("kbridge-dlq-reason").contains("cut short"));
    assert_eq!(cut.value, hex(&corrupt), "parked as it was read");
    wait_until("two delivered", Duration::from_secs(30), || {
        sink.calls().len() >= 2
    });
    let mut got: Vec<Value> = sink.bodies();
    got.sort_by_key(|v| v["id"].to_string());
    assert_eq!(got, expected, "fastavro's JSON encoding of each");
    wait_until("all committed", Duration::from_secs(30), || {
        committed(&b, &group, &topic, 1) == [5]
    });
    assert!(d.stop());

    // collect with value_format = auto: the same JSON; the bytes in no
    // wire format as a base64 string; the two it cannot read filed as they
    // are, counted.
    let extra = format!(
        "format = envelope\nvalue_format = auto\n[schema_registry]\nurl = {}\n",
        registry()
    );
    let lines = collected_lines(&b, &topic, &extra, 5, 2);
    assert_eq!(lines.len(), 5, "{lines:?}");
    let values: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect();
    let filed: Vec<Value> = values
        .iter()
        .map(|v| v["value"].clone())
        .filter(Value::is_object)
        .collect();
    assert_eq!(filed, expected);
    // No wire format: base64 as `auto` reads it; the two it cannot read are
    // filed as the bytes they are (base64 in the envelope).
    assert_eq!(values[2]["value"], json!("/wA="));
    assert_eq!(values[1]["value_encoding"], json!("base64"));
    assert_eq!(values[4]["value_encoding"], json!("base64"));
}

#[test]
fn while_the_registry_is_down_records_wait_and_routes_without_a_schema_answer_503() {
    let b = brokers();
    let topic = unique_topic("avro-down");
    create_topic(&b, &topic, 1);
    let dir = TempDir::new("avro-down");
    let avsc = schema_file(&dir);
    let upstream = registry()
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let relay = Relay::start(upstream);
    relay.set_down(true);
    let via_relay = format!("http://{}/apis/ccompat/v7", relay.addr);

    // Ingest: 503 while down, 200 once it is back.
    let ini = format!(
        "[kafka]\nbrokers = {b}\n[schema_registry]\nurl = {via_relay}\ntimeout_ms = 1000\n[ingest]\nlisten = 127.0.0.1:0\n\
         [ingest.routes]\nt = {topic}\n[ingest.formats]\nt = avro:{avsc}\n"
    );
    let i = Ingest::start(&ini);
    let r = post(
        &i.url,
        &[("Content-Type", "application/json")],
        order(1).to_string().as_bytes(),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("schema registry"),
        "{}",
        r.body
    );

    // Deliver: a record of a schema it has not seen waits, nothing parked.
    let written = fastavro(
        &["produce", &b, &topic, &registry(), &avsc],
        &[json!({"value": order(2)}).to_string()],
    );
    let sink = Sink::always(200);
    let extra =
        format!("value_format = avro\n[schema_registry]\nurl = {via_relay}\ntimeout_ms = 1000\n");
    let mut d = Deliver::of(&b, &topic, &sink.url, &extra);
    wait_until("registry errors counted", Duration::from_secs(30), || {
        metric(&d.metrics(), "kbridge_schema_registry_errors_total") >= 2.0
    });
    assert!(sink.calls().is_empty());
    assert_eq!(
        metric(&d.metrics(), "kbridge_deliver_dead_letters_total"),
        0.0
    );

    relay.set_down(false);
    wait_until(
        "delivered once the registry is back",
        Duration::from_secs(30),
        || !sink.calls().is_empty(),
    );
    let got: Value = serde_json::from_slice(&sink.calls()[0].body).unwrap();
    assert_eq!(got, written[0]["json"]);
    assert_eq!(
        metric(&d.metrics(), "kbridge_deliver_dead_letters_total"),
        0.0
    );
    assert!(d.stop());
    wait_until("the route writes again", Duration::from_secs(10), || {
        post(
            &i.url,
            &[("Content-Type", "application/json")],
            order(3).to_string().as_bytes(),
        )
        .status
            == 200
    });

    // A route that has its schema keeps it through an outage: this one
    // takes the subject's latest version, asked again after refresh_s = 1; while
    // the registry is down every refresh fails, and every POST is stored.
    let ini = format!(
        "[kafka]\nbrokers = {b}\n[schema_registry]\nurl = {via_relay}\ntimeout_ms = 1000\nrefresh_s = 1\n\
         [ingest]\nlisten = 127.0.0.1:0\n[ingest.routes]\nt = {topic}\n[ingest.formats]\nt = avro\n"
    );
    let u = Ingest::start(&ini);
    let post_u = |n: usize| {
        post(
            &u.url,
            &[("Content-Type", "application/json")],
            order(n).to_string().as_bytes(),
        )
    };
    let r = post_u(4);
    assert_eq!(r.status, 200, "{}", r.body);
    relay.set_down(true);
    let mut n = 5;
    wait_until("refreshes failing", Duration::from_secs(30), || {
        let r = post_u(n);
        assert_eq!(r.status, 200, "{}", r.body);
        n += 1;
        metric(&u.metrics(), "kbridge_schema_registry_errors_total") >= 2.0
    });
    // Before `u`: the fastavro record and route t's; then orders 4 to n-1.
    let stored = read_exactly(&b, &topic, n - 2);
    let latest = registry_call(
        "GET",
        &format!("/subjects/{topic}-value/versions/latest"),
        None,
    )["id"]
        .as_u64()
        .unwrap() as u32;
    for rec in &stored[2..] {
        assert_eq!(rec.value[..5], [&[0u8][..], &latest.to_be_bytes()].concat());
    }
    relay.set_down(false);
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// One record of `value` as it is.
pub(crate) fn produce_raw(brokers: &str, topic: &str, value: &[u8]) {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    p.send(BaseRecord::<(), [u8]>::to(topic).payload(value))
        .unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
}

#[test]
fn rest_proxy_avro_envelopes_are_stored_in_the_wire_format_fastavro_reads() {
    let b = brokers();
    let topic = unique_topic("v2-avro");
    create_topic(&b, &topic, 1);
    let ini = format!(
        "[kafka]\nbrokers = {b}\n[schema_registry]\nurl = {}\n[ingest]\nlisten = 127.0.0.1:0\n\
         rest_proxy_topics = {topic}\n[ingest.routes]\nt = {}\n",
        registry(),
        unique_topic("v2-native")
    );
    let i = Ingest::start(&ini);
    let url = i.url.replace("/api/t/v1/", &format!("/topics/{topic}"));
    let ct = [("Content-Type", "application/vnd.kafka.avro.v2+json")];
    let key_schema = r#"{"type":"string"}"#;
    let body = json!({"key_schema": key_schema, "value_schema": ORDER,
                      "records": [{"key": "c-1", "value": order(1)}, {"value": order(2)}]});
    let r = post(&url, &ct, body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/vnd.kafka.v2+json");
    let a = r.json();
    let value_id = registry_call(
        "GET",
        &format!("/subjects/{topic}-value/versions/latest"),
        None,
    )["id"]
        .clone();
    let key_id = registry_call(
        "GET",
        &format!("/subjects/{topic}-key/versions/latest"),
        None,
    )["id"]
        .clone();
    assert_eq!(
        (a["value_schema_id"].clone(), a["key_schema_id"].clone()),
        (value_id.clone(), key_id)
    );
    // By id, with the answer's id.
    let body = json!({"value_schema_id": value_id, "records": [{"value": order(3)}]});
    let r = post(
        &format!("{url}/partitions/0"),
        &ct,
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["value_schema_id"], value_id);

    let got = fastavro(&["read", &b, &topic, &registry(), "3"], &[]);
    let want: Vec<Value> = [1, 2, 3]
        .into_iter()
        .map(|n| json!({"id": value_id, "json": order(n)}))
        .collect();
    assert_eq!(got, want);
    let recs = read_topic(&b, &topic, 3, Duration::from_secs(10));
    let key = recs[0].key.clone().unwrap();
    assert_eq!(
        &key[5..],
        &[6, b'c', b'-', b'1'],
        "the key in the wire format of its string schema"
    );

    // Refusals, nothing stored: a record that does not fit, an unknown id,
    // a schema that is none.
    let mut bad = order(4);
    bad["tags"] = json!(["x", 5]);
    for (body, status, code, says) in [
        (
            json!({"value_schema_id": value_id, "records": [{"value": order(5)}, {"value": bad}]}),
            422,
            42205,
            "records[1].value.tags[1]",
        ),
        (
            json!({"value_schema_id": 999_999_999, "records": [{"value": order(6)}]}),
            404,
            40403,
            "value_schema_id",
        ),
        (
            json!({"value_schema": "{\"type\":\"recordz\"}", "records": [{"value": 1}]}),
            422,
            42201,
            "value_schema",
        ),
    ] {
        let r = post(&url, &ct, body.to_string().as_bytes());
        assert_eq!(r.status, status, "{}", r.body);
        let e = r.json();
        assert_eq!(e["error_code"], code, "{e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{e}");
    }
    assert_eq!(read_topic(&b, &topic, 4, Duration::from_secs(2)).len(), 3);

    // key_format = avro: deliver names the key by its text in the URL and
    // X-Kafka-Key; collect files it as its JSON in the envelope.
    let sink = Sink::always(200);
    let extra = format!(
        "value_format = avro\nkey_format = avro\n[schema_registry]\nurl = {}\n",
        registry()
    );
    let target = format!("{}/{{key}}", sink.url.trim_end_matches('/'));
    let mut d = Deliver::of(&b, &topic, &target, &extra);
    wait_until(
        "the keyed record delivered",
        Duration::from_secs(30),
        || {
            sink.calls()
                .iter()
                .any(|c| c.header("X-Kafka-Key") == Some("c-1"))
        },
    );
    let keyed = sink
        .calls()
        .into_iter()
        .find(|c| c.header("X-Kafka-Key") == Some("c-1"))
        .unwrap();
    assert!(keyed.url.ends_with("/c-1"), "{}", keyed.url);
    assert!(d.stop());
    let extra = format!(
        "format = envelope\nvalue_format = avro\nkey_format = avro\n[schema_registry]\nurl = {}\n",
        registry()
    );
    let lines: Vec<Value> = collected_lines(&b, &topic, &extra, 3, 0)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["key"], json!("c-1"));
    assert_eq!(lines[0]["value"], order(1));
    assert_eq!(lines[1]["key"], Value::Null);
}
