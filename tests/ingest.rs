//! The ingest role against the real broker: what is produced is read back
//! with librdkafka and with kafka-python and compared byte for byte.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use crate::util::murmur2::java_partition;
use crate::util::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// value, key, headers, (partition, offset) from the answer.
type Sent = (String, Option<String>, Vec<(String, Vec<u8>)>, (i32, i64));
/// what, request headers, body, expected status, expected error text.
type BadCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);

/// (partition, offset) of every record of a 200 answer.
fn offsets(r: &Resp) -> Vec<(i32, i64)> {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["partition"].as_i64().unwrap() as i32,
                o["offset"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn produces_values_keys_headers_and_partitions_exactly_as_sent() {
    let b = brokers();
    let topic = unique_topic("ingest-exact");
    let ing = Ingest::start(&ingest_ini(&b, &topic, "key_field = user", ""));

    // Single object with odd spacing, an array, NDJSON, gzip, explicit
    // partition, header key winning over key_field, record headers.
    let single = "{ \"id\":\"s1\",  \"user\": \"u-1\", \"n\": [1, 2 ] }";
    let mut sent: Vec<Sent> = Vec::new();
    let r = post(
        &ing.url,
        &[
            JSON,
            ("X-Kafka-Header-Trace-Id", "abc"),
            ("X-Kafka-Header-Source", "test"),
        ],
        single.as_bytes(),
    );
    // Names arrive as the client sent them; ureq (like HTTP/2 clients) sends
    // them in lower case.
    let hdrs = vec![
        ("trace-id".to_string(), b"abc".to_vec()),
        ("source".to_string(), b"test".to_vec()),
    ];
    sent.push((single.into(), Some("u-1".into()), hdrs, offsets(&r)[0]));

    let arr = "[{\"id\":\"a1\",\"user\":\"u-2\"},\n  {\"id\":\"a2\"}]";
    let r = post(&ing.url, &[JSON], arr.as_bytes());
    let o = offsets(&r);
    sent.push((
        "{\"id\":\"a1\",\"user\":\"u-2\"}".into(),
        Some("u-2".into()),
        vec![],
        o[0],
    ));
    sent.push(("{\"id\":\"a2\"}".into(), None, vec![], o[1]));

    let nd = "{\"id\":\"n1\",\"user\":\"u-3\"}\r\n\n{\"id\":\"n2\",\"user\":\"u-3\"}\n";
    let r = post(
        &ing.url,
        &[NDJSON, ("X-Kafka-Key", "hdr-key")],
        nd.as_bytes(),
    );
    let o = offsets(&r);
    sent.push((
        "{\"id\":\"n1\",\"user\":\"u-3\"}".into(),
        Some("hdr-key".into()),
        vec![],
        o[0],
    ));
    sent.push((
        "{\"id\":\"n2\",\"user\":\"u-3\"}".into(),
        Some("hdr-key".into()),
        vec![],
        o[1],
    ));

    let gz = "{\"id\":\"g1\"}";
    let r = post(
        &format!("{}?partition=3", ing.url),
        &[JSON, ("Content-Encoding", "gzip")],
        &gzip(gz.as_bytes()),
    );
    let o = offsets(&r);
    assert_eq!(o[0].0, 3, "explicit partition honoured");
    sent.push((gz.into(), None, vec![], o[0]));

    let got = read_exactly(&b, &topic, sent.len());
    for (value, key, headers, (partition, offset)) in &sent {
        let rec = got
            .iter()
            .find(|r| r.value_str() == value)
            .unwrap_or_else(|| panic!("{value} not in Kafka: {got:#?}"));
        assert_eq!(
            (rec.partition, rec.offset),
            (*partition, *offset),
            "offsets in the 200 answer match Kafka for {value}"
        );
        assert_eq!(
            rec.key.as_deref(),
            key.as_deref().map(str::as_bytes),
            "key of {value}"
        );
        assert_eq!(&rec.headers, headers, "headers of {value}");
    }
    // Keys land where the Java client would put them.
    for rec in got.iter().filter(|r| r.key.is_some()) {
        assert_eq!(
            rec.partition,
            java_partition(rec.key.as_ref().unwrap(), 4),
            "{rec:?}"
        );
    }
}

#[test]
fn keyed_records_land_on_the_java_clients_partitions() {
    let b = brokers();
    let topic = unique_topic("ingest-murmur");
    let ing = Ingest::start(&ingest_ini(&b, &topic, "topic_partitions = 7", ""));
    // Fixed vectors: keys of Kafka's UtilsTest and a few more; expected
    // partitions computed by the Java formula over 7 partitions.
    let keys = [
        "21",
        "foobar",
        "a-little-bit-long-string",
        "a-little-bit-longer-string",
        "abc",
        "user-42",
        "7",
    ];
    for k in keys {
        let r = post(
            &ing.url,
            &[JSON, ("X-Kafka-Key", k)],
            format!("{{\"k\":\"{k}\"}}").as_bytes(),
        );
        let (partition, _) = offsets(&r)[0];
        assert_eq!(
            partition,
            java_partition(k.as_bytes(), 7),
            "answer for key {k}"
        );
    }
    assert_eq!(java_partition(b"foobar", 7), (1_357_151_166 % 7));
    for rec in read_exactly(&b, &topic, keys.len()) {
        assert_eq!(
            rec.partition,
            java_partition(rec.key.as_ref().unwrap(), 7),
            "{rec:?}"
        );
    }
}

#[test]
fn kafka_python_reads_back_gzip_batches_identical_to_what_was_sent() {
    let b = brokers();
    let topic = unique_topic("ingest-pyread");
    let ing = Ingest::start(&ingest_ini(&b, &topic, "", "linger.ms = 50"));
    // Compressible values so librdkafka keeps the gzip batch.
    let values: Vec<String> = (0..200)
        .map(|i| format!("{{\"id\":\"{i}\",\"pad\":\"{}\"}}", "x".repeat(300)))
        .collect();
    let body = values.join("\n");
    let r = post(
        &ing.url,
        &[NDJSON, ("X-Kafka-Key", "k"), ("X-Kafka-Header-H", "v")],
        body.as_bytes(),
    );
    assert_eq!(offsets(&r).len(), 200);
    let got = read_with_kafka_python(&b, &topic);
    assert_eq!(got.len(), 200);
    let want: HashSet<&str> = values.iter().map(String::as_str).collect();
    for (rec, codec) in &got {
        assert!(
            want.contains(rec.value_str()),
            "unexpected value {}",
            rec.value_str()
        );
        assert_eq!(rec.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(rec.headers, vec![("h".to_string(), b"v".to_vec())]);
        assert_eq!(*codec, 1, "batch compression codec is gzip (1)");
    }
    // librdkafka reports its statistics once a second.
    let tx = |name: &str| {
        metric(
            &ing.metrics(),
            &format!("kbridge_kafka_{name}_total{{client=\"ingest\"}}"),
        )
    };
    wait_until("librdkafka statistics", Duration::from_secs(10), || {
        tx("tx_message_bytes") > 60_000.0
    });
    let (raw, wire) = (tx("tx_message_bytes"), tx("tx_wire_bytes"));
    assert!(
        wire < raw / 3.0,
        "gzip shrinks the wire bytes: raw {raw}, wire {wire}"
    );
}

#[test]
fn partial_failure_answers_207_with_a_status_per_record() {
    let b = brokers();
    let topic = unique_topic("ingest-207");
    // Records pass our own limit but exceed librdkafka's message.max.bytes.
    let ing = Ingest::start(&ingest_ini(
        &b,
        &topic,
        "max_record_bytes = 3000000",
        "message.max.bytes = 100000",
    ));
    let big = format!("{{\"id\":\"big\",\"pad\":\"{}\"}}", "y".repeat(200_000));
    let body = format!("{{\"id\":\"ok1\"}}\n{big}\n{{\"id\":\"ok2\"}}\n");
    let r = post(&ing.url, &[NDJSON], body.as_bytes());
    assert_eq!(r.status, 207, "{}", r.body);
    let o = r.json()["offsets"].clone();
    assert_eq!(o[0]["status"], 200);
    assert_eq!(o[1]["status"], 500);
    assert_eq!(o[1]["error_code"], "MessageSizeTooLarge");
    assert_eq!(o[2]["status"], 200);
    let got = read_exactly(&b, &topic, 2);
    assert!(got.iter().all(|r| r.value_str() != big));
    assert_eq!(
        metric(&ing.metrics(), "kbridge_ingest_records_failed_total"),
        1.0
    );
}

#[test]
fn idempotency_key_repeats_are_answered_once_and_produced_once() {
    let b = brokers();
    let topic = unique_topic("ingest-idem");
    let ing = Ingest::start(&ingest_ini(&b, &topic, "", ""));
    let body = b"[{\"id\":\"i1\"},{\"id\":\"i2\"}]";
    let first = post(&ing.url, &[JSON, ("Idempotency-Key", "req-1")], body);
    assert_eq!(first.status, 200);
    // Sequential and concurrent repeats.
    let again = post(&ing.url, &[JSON, ("Idempotency-Key", "req-1")], body);
    assert_eq!((again.status, again.json()), (200, first.json()));
    assert_eq!(
        again.headers.get("idempotent-replayed").map(String::as_str),
        Some("true")
    );
    let url = ing.url.clone();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                post(
                    &url,
                    &[JSON, ("Idempotency-Key", "req-2")],
                    b"{\"id\":\"c1\"}",
                )
            })
        })
        .collect();
    let answers: Vec<Resp> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        answers
            .iter()
            .all(|a| a.status == 200 && a.json() == answers[0].json()),
        "{answers:?}"
    );
    // Same key, different body: refused.
    let clash = post(
        &ing.url,
        &[JSON, ("Idempotency-Key", "req-1")],
        b"{\"id\":\"other\"}",
    );
    assert_eq!(clash.status, 422, "{}", clash.body);
    let got = read_exactly(&b, &topic, 3);
    let ids: Vec<&str> = got.iter().map(Rec::value_str).collect();
    assert_eq!(
        ids.iter().filter(|v| v.contains("c1")).count(),
        1,
        "{ids:?}"
    );
    assert_eq!(
        metric(&ing.metrics(), "kbridge_ingest_idempotent_replays_total"),
        4.0
    );
}

#[test]
fn full_channel_answers_503_with_retry_after_and_nothing_is_dropped() {
    let b = brokers();
    let topic = unique_topic("ingest-full");
    // One worker, a one-slot channel and a one-message librdkafka queue held
    // for a second by linger: the worker waits on the queue, the channel fills.
    let ing = Ingest::start(&ingest_ini(
        &b,
        &topic,
        "workers = 1\nchannel_capacity = 1\nenqueue_timeout_ms = 50",
        "linger.ms = 1000\nqueue.buffering.max.messages = 1",
    ));
    let url = ing.url.clone();
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                post(&url, &[JSON], format!("{{\"id\":\"f{i}\"}}").as_bytes())
            })
        })
        .collect();
    let answers: Vec<Resp> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    let refused: Vec<&Resp> = answers.iter().filter(|a| a.status == 503).collect();
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert!(
        !refused.is_empty(),
        "some requests must be refused: {answers:?}"
    );
    assert_eq!(
        ok + refused.len(),
        8,
        "every request is either stored or refused: {answers:?}"
    );
    for r in &refused {
        assert_eq!(r.headers.get("retry-after").map(String::as_str), Some("1"));
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("channel stayed full"),
            "{}",
            r.body
        );
    }
    read_exactly(&b, &topic, ok);
    assert_eq!(
        metric(&ing.metrics(), "kbridge_ingest_channel_full_total"),
        refused.len() as f64
    );
}

#[test]
fn bad_input_gets_the_right_4xx_and_nothing_is_produced() {
    let b = brokers();
    let topic = unique_topic("ingest-bad");
    let ing = Ingest::start(&ingest_ini(
        &b,
        &topic,
        "max_body_bytes = 100000\nmax_record_bytes = 50000",
        "",
    ));
    let mut bomb = gzip(&vec![b' '; 20_000_000]);
    let truncated = {
        let mut g = gzip(b"{\"id\":\"never\",\"pad\":\"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\"}");
        g.truncate(g.len() - 8);
        g
    };
    let big = format!("{{\"pad\":\"{}\"}}", "p".repeat(200_000));
    let cases: Vec<BadCase> = vec![
        (
            "malformed",
            vec![JSON],
            b"{\"a\":1,\n \"b\": }".to_vec(),
            400,
            "line 2 column",
        ),
        ("empty", vec![JSON], vec![], 400, "empty body"),
        (
            "not an object",
            vec![JSON],
            b"[{\"a\":1}, 7]".to_vec(),
            400,
            "record 1",
        ),
        (
            "content type",
            vec![("Content-Type", "text/plain")],
            b"{}".to_vec(),
            415,
            "Content-Type",
        ),
        (
            "no content type",
            vec![],
            b"{}".to_vec(),
            415,
            "Content-Type",
        ),
        (
            "encoding",
            vec![JSON, ("Content-Encoding", "br")],
            b"{}".to_vec(),
            415,
            "Content-Encoding",
        ),
        (
            "oversized",
            vec![JSON],
            big.into_bytes(),
            413,
            "max_body_bytes",
        ),
        (
            "gzip bomb",
            vec![JSON, ("Content-Encoding", "gzip")],
            std::mem::take(&mut bomb),
            413,
            "decompresses",
        ),
        (
            "truncated gzip",
            vec![JSON, ("Content-Encoding", "gzip")],
            truncated,
            400,
            "invalid gzip",
        ),
        (
            "invalid utf-8",
            vec![JSON],
            b"{\"a\":\"\xc3\x28\"}".to_vec(),
            400,
            "invalid UTF-8 at line 1 column 7",
        ),
        (
            "bad ndjson line",
            vec![NDJSON],
            b"{\"a\":1}\n{\"a\":\n".to_vec(),
            400,
            "line 2",
        ),
        (
            "bad partition",
            vec![JSON],
            b"{}".to_vec(),
            400,
            "partition",
        ),
    ];
    for (what, headers, body, status, needle) in cases {
        let url = if what == "bad partition" {
            format!("{}?partition=99", ing.url)
        } else {
            ing.url.clone()
        };
        let r = post(&url, &headers, &body);
        assert_eq!(r.status, status, "{what}: {}", r.body);
        let j = r.json();
        assert_eq!(j["status"], status, "{what}");
        assert!(
            j["error"].as_str().unwrap().contains(needle),
            "{what}: {}",
            r.body
        );
    }
    let malformed = post(&ing.url, &[JSON], b"{\"a\":1,\n \"b\": }");
    assert_eq!(
        (
            malformed.json()["line"].as_i64(),
            malformed.json()["column"].as_i64()
        ),
        (Some(2), Some(7))
    );
    // Routing and methods.
    let base = ing.url.trim_end_matches("/api/t/v1/").to_string();
    assert_eq!(
        post(&format!("{base}/api/nope/v1/"), &[JSON], b"{}").status,
        404
    );
    let g = agent().get(&ing.url).call().unwrap();
    assert_eq!(g.status().as_u16(), 405);
    assert_eq!(
        g.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    // Still serving, and only the valid request reached Kafka.
    let ok = post(&ing.url, &[JSON], b"{\"id\":\"valid\"}");
    assert_eq!(ok.status, 200, "{}", ok.body);
    let got = read_exactly(&b, &topic, 1);
    assert_eq!(got[0].value_str(), "{\"id\":\"valid\"}");
}

#[test]
fn queued_mode_answers_202_and_still_produces_everything() {
    let b = brokers();
    let topic = unique_topic("ingest-queued");
    let ing = Ingest::start(&ingest_ini(&b, &topic, "ack = queued", ""));
    for i in 0..20 {
        let r = post(&ing.url, &[JSON], format!("{{\"id\":\"q{i}\"}}").as_bytes());
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(r.json()["queued"], 1);
    }
    read_exactly(&b, &topic, 20);
    wait_until("acks counted", Duration::from_secs(10), || {
        metric(&ing.metrics(), "kbridge_ingest_records_acked_total") == 20.0
    });
}
