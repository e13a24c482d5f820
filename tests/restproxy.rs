//! The Confluent REST Proxy v2 produce API on the ingest listener: json and
//! binary envelopes to `/topics/{t}` and `/topics/{t}/partitions/{p}` for
//! the topics of `rest_proxy_topics` only, answered in the REST Proxy's
//! shape and content type, read back with kafka-python; refusals carry its
//! error codes and store nothing; idempotency keys hold as on native routes.

use crate::util::*;

const JSON: &str = "application/vnd.kafka.json.v2+json";
const BINARY: &str = "application/vnd.kafka.binary.v2+json";

fn start() -> (Ingest, String, String, String) {
    let b = brokers();
    let topic = unique_topic("v2");
    create_topic(&b, &topic, 2);
    let native = unique_topic("v2-native");
    let ini = ingest_ini(&b, &native, &format!("rest_proxy_topics = {topic}"), "");
    let ing = Ingest::start(&ini);
    let base = ing.url.trim_end_matches("/api/t/v1/").to_string();
    (ing, base, topic, b)
}

#[test]
fn json_and_binary_envelopes_are_produced_and_answered_as_the_rest_proxy_does() {
    let (_ing, base, topic, b) = start();
    let url = format!("{base}/topics/{topic}");
    let r = post(
        &url,
        &[("Content-Type", JSON), ("Accept", "application/vnd.kafka.v2+json")],
        br#"{"records":[{"key":"k1","value":{"id":"j-0","n":[1, 2]}},{"value":"text","partition":1},{"key":{"a":1},"value":3}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/vnd.kafka.v2+json");
    let v = r.json();
    assert_eq!(v["key_schema_id"], serde_json::Value::Null);
    assert_eq!(v["value_schema_id"], serde_json::Value::Null);
    let offsets = v["offsets"].as_array().unwrap();
    assert_eq!(offsets.len(), 3);
    assert!(
        offsets
            .iter()
            .all(|o| o["error_code"].is_null() && o["offset"].is_i64()),
        "{v}"
    );
    assert_eq!(offsets[1]["partition"], 1);
    let r = post(
        &format!("{url}/partitions/0"),
        &[("Content-Type", BINARY)],
        br#"{"records":[{"key":"AP8=","value":"aGVsbG8="},{"value":"AAEC"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let offsets = r.json()["offsets"].as_array().unwrap().clone();
    assert!(offsets.iter().all(|o| o["partition"] == 0), "{offsets:?}");

    let mut got: Vec<(i32, Option<Vec<u8>>, Vec<u8>)> = read_with_kafka_python(&b, &topic)
        .into_iter()
        .map(|(r, _)| (r.partition, r.key, r.value))
        .collect();
    got.sort_by(|a, b| a.2.cmp(&b.2));
    let mut want = vec![
        (
            None::<i32>,
            Some(br#""k1""#.to_vec()),
            br#"{"id":"j-0","n":[1, 2]}"#.to_vec(),
        ),
        (Some(1), None, br#""text""#.to_vec()),
        (None, Some(br#"{"a":1}"#.to_vec()), b"3".to_vec()),
        (Some(0), Some(vec![0, 0xff]), b"hello".to_vec()),
        (Some(0), None, vec![0, 1, 2]),
    ];
    want.sort_by(|a, b| a.2.cmp(&b.2));
    assert_eq!(got.len(), want.len(), "{got:?}");
    for ((gp, gk, gv), (wp, wk, wv)) in got.iter().zip(&want) {
        assert_eq!((gk, gv), (wk, wv));
        if let Some(p) = wp {
            assert_eq!(gp, p, "{gv:?}");
        }
    }
}

#[test]
fn refusals_carry_the_rest_proxy_error_codes_and_store_nothing() {
    let (_ing, base, topic, b) = start();
    let url = format!("{base}/topics/{topic}");
    let code = |r: &Resp| r.json()["error_code"].as_u64().unwrap_or(0);
    let cases: Vec<(String, &str, &[u8], u16, u64)> = vec![
        (
            format!("{base}/topics/not-allowed"),
            JSON,
            br#"{"records":[{"value":1}]}"#,
            404,
            40401,
        ),
        (
            format!("{url}/partitions/9"),
            JSON,
            br#"{"records":[{"value":1}]}"#,
            404,
            40402,
        ),
        (
            url.clone(),
            JSON,
            br#"{"records":[{"value":1,"partition":5}]}"#,
            404,
            40402,
        ),
        (
            url.clone(),
            BINARY,
            br#"{"records":[{"value":"!!"}]}"#,
            422,
            42205,
        ),
        (
            url.clone(),
            JSON,
            br#"{"records":[{"value":1}],"value_schema_id":3}"#,
            422,
            42201,
        ),
        (url.clone(), JSON, b"{not json", 422, 42205),
        (
            url.clone(),
            "application/vnd.kafka.avro.v2+json",
            br#"{"records":[{"value":1}]}"#,
            415,
            415,
        ),
        (
            url.clone(),
            "application/json",
            br#"{"records":[{"value":1}]}"#,
            415,
            415,
        ),
    ];
    for (u, ct, body, status, want) in &cases {
        let r = post(u, &[("Content-Type", ct)], body);
        assert_eq!(
            (r.status, code(&r)),
            (*status, *want),
            "{u} {ct}: {}",
            r.body
        );
        assert!(r.json()["message"].is_string(), "{}", r.body);
    }
    let r = get(&url);
    assert_eq!((r.status, code(&r)), (405, 405), "{}", r.body);
    assert!(read_all(&b, &topic).is_empty(), "nothing was produced");
}

#[test]
fn an_idempotency_key_is_answered_once_and_produced_once_on_the_v2_api() {
    let (_ing, base, topic, b) = start();
    let url = format!("{base}/topics/{topic}");
    let body = br#"{"records":[{"key":"a","value":{"id":"x"}}]}"#;
    let first = post(
        &url,
        &[("Content-Type", JSON), ("Idempotency-Key", "v2-1")],
        body,
    );
    let again = post(
        &url,
        &[("Content-Type", JSON), ("Idempotency-Key", "v2-1")],
        body,
    );
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(again.body, first.body);
    assert_eq!(
        again.headers.get("idempotent-replayed").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        again.headers["content-type"],
        "application/vnd.kafka.v2+json"
    );
    let other_key = post(
        &url,
        &[("Content-Type", JSON), ("Idempotency-Key", "v2-1")],
        br#"{"records":[{"key":"b","value":{"id":"x"}}]}"#,
    );
    assert_eq!(
        other_key.status, 422,
        "another key is another request: {}",
        other_key.body
    );
    assert_eq!(read_all(&b, &topic).len(), 1);
}

#[test]
fn without_rest_proxy_topics_the_api_is_off() {
    let b = brokers();
    let topic = unique_topic("v2-off");
    let ing = Ingest::start(&ingest_ini(&b, &topic, "", ""));
    let base = ing.url.trim_end_matches("/api/t/v1/");
    let r = post(
        &format!("{base}/topics/{topic}"),
        &[("Content-Type", JSON)],
        br#"{"records":[{"value":1}]}"#,
    );
    assert_eq!(
        (r.status, r.json()["error_code"].as_u64()),
        (404, Some(40401)),
        "{}",
        r.body
    );
}

#[test]
fn tokens_scope_the_v2_topics_as_routes_named_topics_slash_topic() {
    let b = brokers();
    let topic = unique_topic("v2-auth");
    create_topic(&b, &topic, 1);
    let dir = TempDir::new("v2-auth");
    let (web, proxy) = ("web-token-0123456789abcdef", "proxy-token-0123456789abcdef");
    let tokens = write_mode(
        &dir,
        "tokens",
        &format!("web {web} t\nproxy {proxy} topics/{topic}\n"),
        0o600,
    );
    let extra = format!(
        "rest_proxy_topics = {topic}\nauth_tokens_file = {}",
        tokens.display()
    );
    let ing = Ingest::start(&ingest_ini(&b, &unique_topic("v2-n"), &extra, ""));
    let url = format!("{}/topics/{topic}", ing.url.trim_end_matches("/api/t/v1/"));
    let body = br#"{"records":[{"value":1}]}"#;
    let as_ = |token: Option<&str>| {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut h = vec![("Content-Type", JSON)];
        if let Some(b) = &bearer {
            h.push(("Authorization", b.as_str()));
        }
        post(&url, &h, body).status
    };
    assert_eq!(as_(None), 401);
    assert_eq!(as_(Some(web)), 403, "a token for the native route only");
    assert_eq!(as_(Some(proxy)), 200);
    assert_eq!(read_all(&b, &topic).len(), 1);
}
