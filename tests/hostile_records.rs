//! Records are untrusted input: a raw producer writes header names and
//! values that are not UTF-8 (the byte 0xff as a name), null and empty
//! values, values that are not JSON or not UTF-8, JSON over several lines,
//! a 100 kB key and a 900 kB value between good records, into a topic that
//! deliver (in every batch format) and collect (raw and envelope) read. No
//! thread panics; every good record is delivered and filed; each hostile
//! one has its documented outcome (docs/roles.md).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::collect::{Collect, collect_ini};
use crate::util::records::{Raw, produce_raw};
use crate::util::sink::{Reply, Sink};
use crate::util::*;

const GOOD: [&str; 7] = [
    "good-0", "hdr-ff", "hdr-null", "multi", "bigkey", "big", "good-1",
];
/// What deliver parks, by default, as "value is not JSON".
const NOT_JSON: [&[u8]; 3] = [b"\xff\xfe\xfd", b"", b"line one\nline two"];

fn hostile() -> Vec<Raw> {
    let big = format!("{{\"id\":\"big\",\"pad\":\"{}\"}}", "x".repeat(900_000));
    vec![
        Raw::value(r#"{"id":"good-0"}"#),
        Raw::value(r#"{"id":"hdr-ff"}"#).header(b"\xff".to_vec(), Some(b"\xfe\x00")),
        Raw::value(r#"{"id":"hdr-null"}"#)
            .header("null", None)
            .header("empty", Some(b"")),
        Raw::value(NOT_JSON[0]),
        Raw::tombstone().key("tomb"),
        Raw::value(NOT_JSON[1]),
        Raw::value("{\n  \"id\": \"multi\",\n  \"n\": [1,\n 2]\n}\n"),
        Raw::value(NOT_JSON[2]),
        Raw::value(r#"{"id":"bigkey"}"#).key(vec![b'k'; 100_000]),
        Raw::value(big),
        Raw::value(r#"{"id":"good-1"}"#),
    ]
}

/// A one-partition topic holding [`hostile`] records: (brokers, topic, records).
fn hostile_topic(prefix: &str) -> (String, String, Vec<Raw>) {
    let b = brokers();
    let topic = unique_topic(prefix);
    create_topic(&b, &topic, 1);
    let recs = hostile();
    produce_raw(
        &b,
        &topic,
        Some(0),
        &recs,
        &[("message.max.bytes", "2000000")],
    );
    (b, topic, recs)
}

/// Every call body is well formed for its format: one record, one item.
fn assert_framed(format: &str, body: &[u8]) {
    let json = |b: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(b)
            .unwrap_or_else(|e| panic!("{format}: not JSON ({e}): {}", String::from_utf8_lossy(b)))
    };
    let lines = || body.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    match format {
        "single" => assert!(json(body).is_object()),
        "json_array" => assert!(json(body).is_array()),
        "ndjson" => lines().for_each(|l| assert!(json(l).is_object())),
        "es_bulk" => {
            let lines: Vec<&[u8]> = lines().collect();
            assert_eq!(lines.len() % 2, 0, "action and source pairs");
            for pair in lines.chunks(2) {
                assert!(json(pair[0])["index"]["_id"].is_string());
                assert!(json(pair[1]).is_object());
            }
        }
        _ => unreachable!(),
    }
}

#[test]
fn deliver_in_every_batch_format_sends_good_records_and_parks_the_rest() {
    let (b, topic, recs) = hostile_topic("hx-rec");
    for format in ["single", "ndjson", "json_array", "es_bulk"] {
        // `_bulk` callers read the answer, the others ignore it.
        let sink = Arc::new(Sink::start(Arc::new(|_, _| {
            Reply::status(200).body(r#"{"errors":false,"items":[]}"#)
        })));
        let batch = match format {
            "single" => "batch_size = 1".to_string(),
            f => format!("batch_size = 10\nbatch_format = {f}\nbatch_linger_ms = 50"),
        };
        let url = sink.url.clone();
        let extra = format!("{batch}\ndlq_suffix = .dlq-{format}");
        let group = unique_topic("g");
        let d = Deliver::start(&deliver_ini(&b, &group, &topic, &url, &extra));
        wait_until(
            &format!("{format}: every offset committed"),
            Duration::from_secs(90),
            || committed(&b, &group, &topic, 1) == vec![recs.len() as i64],
        );
        assert!(d.fatal.try_recv().is_err(), "{format}: no thread died");
        let m = d.metrics();
        assert_eq!(
            metric(&m, "kbridge_deliver_skipped_total{reason=\"tombstone\"}"),
            1.0,
            "{format}"
        );
        drop(d);

        let mine: Vec<_> = sink
            .calls()
            .into_iter()
            .filter(|c| (200..300).contains(&c.status))
            .collect();
        let mut ids: Vec<String> = mine.iter().flat_map(|c| c.ids()).collect();
        for c in &mine {
            assert_framed(format, &c.body);
        }
        ids.sort();
        let mut want: Vec<String> = GOOD.iter().map(|s| s.to_string()).collect();
        want.sort();
        let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert!(
            want.iter().all(|w| distinct.contains(w)),
            "{format}: {ids:?}"
        );
        if format == "single" {
            let big_key = mine.iter().find(|c| c.ids() == ["bigkey"]).unwrap();
            assert_eq!(big_key.header("x-kafka-key-size"), Some("100000"));
            assert!(
                big_key.header("x-kafka-key").is_none(),
                "a 100 kB key is not a header"
            );
        }

        let parked = read_exactly(&b, &format!("{topic}.dlq-{format}"), NOT_JSON.len());
        let mut values: Vec<&[u8]> = parked.iter().map(|r| &r.value[..]).collect();
        values.sort();
        let mut want = NOT_JSON.to_vec();
        want.sort();
        assert_eq!(values, want, "{format}: parked byte for byte");
        for r in &parked {
            assert_eq!(r.header("kbridge-dlq-reason"), "value is not JSON");
        }
    }
}

/// The lines of every final file of `topic` (one partition), in offset order.
fn lines_on_disk(root: &Path, topic: &str) -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    for d in std::fs::read_dir(root.join(topic))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let first: i64 = name.rsplit('-').nth(1).unwrap().parse().unwrap();
            files.push((first, std::fs::read(f.path()).unwrap()));
        }
    }
    files.sort();
    let mut out = Vec::new();
    for (_, bytes) in files {
        assert!(bytes.is_empty() || bytes.ends_with(b"\n"), "no torn line");
        let mut lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
        lines.pop();
        out.extend(lines);
    }
    out
}

#[test]
fn collect_writes_exactly_one_line_per_record_whatever_its_bytes() {
    let (b, topic, recs) = hostile_topic("hx-col");
    for format in ["raw", "envelope"] {
        let dir = TempDir::new("hx-col");
        let mut c = Collect::start(&collect_ini(
            &b,
            &unique_topic("g"),
            &topic,
            &dir.0,
            &format!("format = {format}\nidle_close_s = 1"),
        ));
        wait_until(
            &format!("{format}: every record filed"),
            Duration::from_secs(60),
            || lines_on_disk(&dir.0, &topic).len() >= recs.len(),
        );
        assert!(c.stop());
        let lines = lines_on_disk(&dir.0, &topic);
        assert_eq!(lines.len(), recs.len(), "{format}: one line per record");
        let text = |i: usize| String::from_utf8(lines[i].clone()).unwrap();
        if format == "raw" {
            assert_eq!(
                lines[3], b"\xff\xfe\xfd",
                "no line break: the bytes themselves"
            );
            assert!(
                lines[4].is_empty() && lines[5].is_empty(),
                "tombstone and empty value"
            );
            let multi: serde_json::Value = serde_json::from_slice(&lines[6]).unwrap();
            assert_eq!(multi["id"], "multi");
            assert_eq!(text(7), r#""line one\nline two""#);
            for i in [0, 1, 2, 8, 9, 10] {
                serde_json::from_slice::<serde_json::Value>(&lines[i]).unwrap();
            }
        } else {
            let v: Vec<serde_json::Value> = lines
                .iter()
                .map(|l| {
                    serde_json::from_slice(l)
                        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(l)))
                })
                .collect();
            assert_eq!(v[3]["value"], "//79");
            assert_eq!(v[3]["value_encoding"], "base64");
            assert!(v[4]["value"].is_null(), "a tombstone is null");
            assert_eq!(v[4]["key"], "tomb");
            assert_eq!(v[5]["value"], "");
            assert_eq!(v[6]["value"]["n"], serde_json::json!([1, 2]));
            assert_eq!(v[7]["value"], "line one\nline two");
            assert_eq!(v[8]["key"].as_str().map(str::len), Some(100_000));
            assert_eq!(v[9]["value"]["id"], "big");
            for (i, line) in v.iter().enumerate() {
                assert_eq!(line["offset"], i as i64);
            }
        }
    }
}
