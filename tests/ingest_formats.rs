//! Text and binary routes (`[ingest.formats]`): the body is the record, byte
//! for byte (text: UTF-8, or a record per line when sent as NDJSON), read
//! back so by kafka-python; what a route does not take is refused with
//! nothing produced, and JSON routes are as before.

use std::io::Write as _;

use crate::util::*;

fn route(format: &str) -> (Ingest, String, String) {
    let b = brokers();
    let topic = unique_topic(&format!("fmt-{format}"));
    create_topic(&b, &topic, 1);
    let ini = ingest_ini(&b, &topic, "", "") + &format!("[ingest.formats]\nt = {format}\n");
    (Ingest::start(&ini), topic, b)
}

fn values(b: &str, topic: &str) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    read_with_kafka_python(b, topic)
        .into_iter()
        .map(|(r, _)| (r.key, r.value))
        .collect()
}

#[test]
fn a_text_route_stores_the_body_or_its_lines_as_utf8_records() {
    let (ing, topic, b) = route("text");
    let text = "héllo {not json}\nworld";
    let r = post(
        &ing.url,
        &[
            ("Content-Type", "text/plain; charset=utf-8"),
            ("X-Kafka-Key", "k1"),
        ],
        text.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["offsets"].as_array().unwrap().len(), 1);
    let r = post(
        &ing.url,
        &[("Content-Type", "application/x-ndjson")],
        b"line one\n\nline two\r\n",
    );
    assert_eq!(
        r.json()["offsets"].as_array().unwrap().len(),
        2,
        "{}",
        r.body
    );
    // Refused, nothing stored: bytes that are not UTF-8, a type it does not take.
    let r = post(
        &ing.url,
        &[("Content-Type", "text/plain")],
        b"fine\nbad \xff here",
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        (r.json()["line"].as_u64(), r.json()["column"].as_u64()),
        (Some(2), Some(5)),
        "{}",
        r.body
    );
    let r = post(
        &ing.url,
        &[("Content-Type", "application/json")],
        br#"{"a":1}"#,
    );
    assert_eq!(r.status, 415, "{}", r.body);
    assert!(
        r.body.contains("a text route takes text/plain"),
        "{}",
        r.body
    );
    let r = post(&ing.url, &[("Content-Type", "text/plain")], b"");
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        values(&b, &topic),
        [
            (Some(b"k1".to_vec()), text.as_bytes().to_vec()),
            (None, b"line one".to_vec()),
            (None, b"line two".to_vec()),
        ]
    );
}

#[test]
fn a_binary_route_stores_any_bytes_as_one_record_also_gzipped() {
    let (ing, topic, b) = route("binary");
    let bytes: Vec<u8> = (0..=255u8).chain([b'\n', b'{', 0]).collect();
    let r = post(
        &ing.url,
        &[("Content-Type", "application/octet-stream")],
        &bytes,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&bytes[..100]).unwrap();
    let r = post(
        &ing.url,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Encoding", "gzip"),
        ],
        &gz.finish().unwrap(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let big = vec![7u8; 1_000_001];
    let r = post(
        &ing.url,
        &[("Content-Type", "application/octet-stream")],
        &big,
    );
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("max_record_bytes"), "{}", r.body);
    assert_eq!(
        values(&b, &topic),
        [(None, bytes.clone()), (None, bytes[..100].to_vec())]
    );
}

#[test]
fn a_json_route_still_takes_only_json() {
    let (ing, _, _) = route("json");
    let r = post(&ing.url, &[("Content-Type", "text/plain")], b"hello");
    assert_eq!(r.status, 415, "{}", r.body);
    let r = post(&ing.url, &[("Content-Type", "application/json")], b"hello");
    assert_eq!(r.status, 400, "{}", r.body);
}
