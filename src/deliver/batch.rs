//! What one call carries and what its answer says (pure): the body of one
//! message or a batch (NDJSON, JSON array, Elasticsearch `_bulk` lines), its
//! headers, and the per-item statuses of a `_bulk` answer — which must be
//! read whole: an answer that cannot be read delivers nothing.
//!
//! Framing is the writer's: one record is one item whatever its bytes. A
//! JSON value spread over lines is joined for the line formats (line breaks
//! between JSON tokens mean nothing); a tombstone sent is `null`; a value
//! that is not JSON and is sent (`on_invalid_json = send`) is a JSON string
//! of its text, or `"base64:<base64>"` when it is not UTF-8.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use super::config::BatchFormat;
use super::{Msg, ValueKind, Work};
use crate::kafka::record::{base64, hex};

/// Keys longer than this are not sent in `X-Kafka-Key` (hex doubles them);
/// `X-Kafka-Key-Size` says how long the key was.
pub const MAX_HEADER_KEY: usize = 1024;

/// Does `v` hold a line break (a JSON value spread over lines)?
fn has_line_break(v: &[u8]) -> bool {
    memchr::memchr2(b'\n', b'\r', v).is_some()
}

/// A message's value as one batch item; `line`: for a line format.
fn item(m: &Msg, line: bool) -> Cow<'_, [u8]> {
    match m.kind {
        ValueKind::Tombstone => Cow::Borrowed(b"null"),
        ValueKind::Json if line && has_line_break(&m.payload) => Cow::Owned(
            m.payload
                .iter()
                .copied()
                .filter(|b| *b != b'\n' && *b != b'\r')
                .collect(),
        ),
        ValueKind::Json => Cow::Borrowed(&m.payload),
        ValueKind::Other => {
            let text = match std::str::from_utf8(&m.payload) {
                Ok(t) => Cow::Borrowed(t),
                Err(_) => Cow::Owned(format!("base64:{}", base64(&m.payload))),
            };
            Cow::Owned(serde_json::to_vec(&*text).unwrap_or_else(|_| b"null".to_vec()))
        }
    }
}

/// Content type and body for one message or a batch.
pub fn body_of(
    batch_size: usize,
    format: BatchFormat,
    es_index: &str,
    batch: &[Work],
) -> (&'static str, Vec<u8>) {
    if batch_size == 1 && batch.len() == 1 {
        let m = &batch[0].msg;
        let ct = match m.kind {
            ValueKind::Other => "application/octet-stream",
            _ => "application/json",
        };
        return (ct, m.payload.clone());
    }
    let size: usize = batch.iter().map(|w| w.msg.payload.len() + 64).sum();
    let mut out = Vec::with_capacity(size);
    match format {
        BatchFormat::Ndjson => {
            for w in batch {
                out.extend_from_slice(&item(&w.msg, true));
                out.push(b'\n');
            }
            ("application/x-ndjson", out)
        }
        BatchFormat::JsonArray => {
            out.push(b'[');
            for (i, w) in batch.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&item(&w.msg, false));
            }
            out.push(b']');
            ("application/json", out)
        }
        BatchFormat::EsBulk => {
            for w in batch {
                let (topic, partition, offset) = w.msg.source();
                let index = if es_index.is_empty() { topic } else { es_index };
                let id = format!("{topic}-{partition}-{offset}");
                let action = serde_json::json!({ "index": { "_index": index, "_id": id } });
                out.extend_from_slice(action.to_string().as_bytes());
                out.push(b'\n');
                out.extend_from_slice(&item(&w.msg, true));
                out.push(b'\n');
            }
            ("application/x-ndjson", out)
        }
    }
}

/// The headers of a call: the Kafka coordinates of one message, or the
/// span of a batch; the idempotency key lets a receiver drop redeliveries.
/// A batch's key covers every message in it (a digest of their
/// coordinates), so a batch regrouped on redelivery has a key of its own.
pub fn headers_of(content_type: &str, batch: &[Work]) -> Vec<(&'static str, String)> {
    let first = &batch[0].msg;
    let (topic, partition, offset) = first.source();
    let mut h = vec![("Content-Type", content_type.to_string())];
    if batch.len() == 1 {
        h.push(("X-Kafka-Topic", topic.to_string()));
        h.push(("X-Kafka-Partition", partition.to_string()));
        h.push(("X-Kafka-Offset", offset.to_string()));
        h.push(("Idempotency-Key", format!("{topic}-{partition}-{offset}")));
        if let Some(k) = first.key_text.as_ref().or(first.key.as_ref()) {
            if k.len() > MAX_HEADER_KEY {
                h.push(("X-Kafka-Key-Size", k.len().to_string()));
            } else {
                match std::str::from_utf8(k) {
                    Ok(s) if s.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
                        h.push(("X-Kafka-Key", s.to_string()))
                    }
                    _ => {
                        h.push(("X-Kafka-Key", hex(k)));
                        h.push(("X-Kafka-Key-Encoding", "hex".into()));
                    }
                }
            }
        }
    } else {
        let (last_topic, last_partition, last_offset) = batch[batch.len() - 1].msg.source();
        // The coordinates in a fixed binary form (topic, then partition
        // and offset big-endian per message): no text built per message.
        let mut digest = Sha256::new();
        let mut current: Option<&str> = None;
        for w in batch {
            let (t, p, o) = w.msg.source();
            if current != Some(t) {
                current = Some(t);
                digest.update((t.len() as u32).to_be_bytes());
                digest.update(t.as_bytes());
            }
            digest.update(p.to_be_bytes());
            digest.update(o.to_be_bytes());
        }
        h.push(("X-Kafka-Batch-Size", batch.len().to_string()));
        h.push((
            "Idempotency-Key",
            format!(
                "{topic}-{partition}-{offset}+{last_topic}-{last_partition}-{last_offset}~{}",
                hex(&digest.finalize()[..12])
            ),
        ));
    }
    h
}

/// What a 2xx `_bulk` answer says of a batch of `n` items: `Ok(None)` all
/// indexed (`"errors": false`), `Ok(Some(statuses))` one per item, `Err`
/// when the answer is not a complete `_bulk` answer for `n` items (then
/// nothing counts as delivered: the batch is retried).
pub fn bulk_item_statuses(body: &[u8], n: usize) -> Result<Option<Vec<u16>>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the _bulk answer is not JSON ({e})"))?;
    match v.get("errors").and_then(serde_json::Value::as_bool) {
        Some(false) => return Ok(None),
        Some(true) => {}
        None => return Err("the _bulk answer has no \"errors\" flag".into()),
    }
    statuses(&v, n, "the _bulk answer", |item| {
        item.as_object()
            .and_then(|o| o.values().next())
            .and_then(|a| a.get("status"))
            .and_then(serde_json::Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
    })
    .map(Some)
}

/// One status per message from `answer`'s `items` array, in order; `what`
/// names the answer in errors.
fn statuses(
    answer: &serde_json::Value,
    n: usize,
    what: &str,
    status: impl Fn(&serde_json::Value) -> Option<u16>,
) -> Result<Vec<u16>, String> {
    let items = answer
        .get("items")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| format!("{what} has no \"items\" array"))?;
    if items.len() != n {
        return Err(format!("{what} has {} items for {n} sent", items.len()));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| status(item).ok_or_else(|| format!("item {i} of {what} has no status")))
        .collect()
}

/// Each message's status from a batch answer of `batch_answer = items`:
/// `{"items":[{"status":200},{"status":503},…]}`, one per message in
/// request order. Anything else — not JSON, no `items`, another count, an
/// item without a status from 100 to 599 — is an error: the whole batch
/// failed, never a success.
pub fn item_statuses(body: &[u8], n: usize) -> Result<Vec<u16>, String> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("the per-item answer is not JSON ({e})"))?;
    statuses(&v, n, "the per-item answer", |item| {
        item.get("status")
            .and_then(serde_json::Value::as_u64)
            .filter(|s| (100..=599).contains(s))
            .map(|s| s as u16)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::offsets::Lease;

    #[test]
    fn per_item_answers_are_read_in_order_and_anything_odd_fails_the_batch() {
        let ok = br#"{"items":[{"status":200},{"status":503,"error":"later"},{"status":400}]}"#;
        assert_eq!(item_statuses(ok, 3).unwrap(), [200, 503, 400]);
        for (body, why) in [
            (&b"not json"[..], "not JSON"),
            (br#"{"results":[]}"#, "no \"items\""),
            (br#"{"items":[{"status":200}]}"#, "1 items for 3"),
            (
                br#"{"items":[{"status":200},{"ok":true},{"status":200}]}"#,
                "item 1",
            ),
            (
                br#"{"items":[{"status":200},{"status":99},{"status":200}]}"#,
                "item 1",
            ),
            (
                br#"{"items":[{"status":200},{"status":"200"},{"status":200}]}"#,
                "item 1",
            ),
        ] {
            let e = item_statuses(body, 3).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    fn work(offset: i64, payload: &[u8], kind: ValueKind) -> Work {
        Work {
            msg: Msg {
                topic: "t".into(),
                partition: 0,
                offset,
                key: None,
                key_text: None,
                payload: payload.to_vec(),
                kind,
                headers: vec![],
                timestamp: None,
                url: None,
                lease: Lease::default(),
                done: crossbeam_channel::unbounded().0,
                origin: None,
                raw: None,
            },
            attempts: 0,
            parking: None,
            enrich_attempts: 0,
            solo: false,
            shrunk: 0,
            copied: false,
        }
    }

    fn hostile_batch() -> Vec<Work> {
        vec![
            work(0, b"{\n  \"id\": \"a\"\n}\n", ValueKind::Json),
            work(1, b"", ValueKind::Tombstone),
            work(2, b"not json\n{\"id\":\"x\"}", ValueKind::Other),
            work(3, b"\xff\n", ValueKind::Other),
            work(4, br#"{"id":"b"}"#, ValueKind::Json),
        ]
    }

    #[test]
    fn one_record_is_one_item_in_every_format_whatever_its_bytes() {
        let batch = hostile_batch();
        let (_, nd) = body_of(10, BatchFormat::Ndjson, "", &batch);
        let lines: Vec<serde_json::Value> = nd
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5, "{}", String::from_utf8_lossy(&nd));
        assert_eq!(lines[0]["id"], "a");
        assert!(lines[1].is_null());
        assert_eq!(lines[2], "not json\n{\"id\":\"x\"}");
        assert_eq!(lines[3], "base64:/wo=");
        let (_, arr) = body_of(10, BatchFormat::JsonArray, "", &batch);
        let v: Vec<serde_json::Value> = serde_json::from_slice(&arr).unwrap();
        assert_eq!(v.len(), 5);
        assert_eq!(v[4]["id"], "b");
        let (_, bulk) = body_of(10, BatchFormat::EsBulk, "", &batch);
        let lines: Vec<&[u8]> = bulk
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 10, "action and source per record");
        for pair in lines.chunks(2) {
            let action: serde_json::Value = serde_json::from_slice(pair[0]).unwrap();
            assert!(action["index"]["_id"].is_string());
            serde_json::from_slice::<serde_json::Value>(pair[1]).unwrap();
        }
    }

    #[test]
    fn a_value_sent_alone_keeps_its_bytes() {
        let w = work(0, b"\xff\x00", ValueKind::Other);
        assert_eq!(
            body_of(1, BatchFormat::Ndjson, "", std::slice::from_ref(&w)),
            ("application/octet-stream", b"\xff\x00".to_vec())
        );
    }

    #[test]
    fn batch_keys_cover_every_message_and_keys_are_capped() {
        let key = |b: &[Work]| {
            headers_of("x", b)
                .into_iter()
                .find(|(k, _)| *k == "Idempotency-Key")
                .unwrap()
                .1
        };
        let a = vec![
            work(0, b"1", ValueKind::Json),
            work(1, b"1", ValueKind::Json),
            work(2, b"1", ValueKind::Json),
        ];
        let b = vec![
            work(0, b"1", ValueKind::Json),
            work(2, b"1", ValueKind::Json),
        ];
        assert!(key(&a).starts_with("t-0-0+t-0-2~"));
        assert_ne!(key(&a), key(&b), "same ends, other middle: another key");
        assert_eq!(
            key(&a),
            key(&a
                .iter()
                .map(|w| work(w.msg.offset, b"2", ValueKind::Json))
                .collect::<Vec<_>>())
        );
        let mut w = work(0, b"1", ValueKind::Json);
        w.msg.key = Some(vec![b'k'; MAX_HEADER_KEY + 1]);
        let h = headers_of("x", std::slice::from_ref(&w));
        assert!(!h.iter().any(|(k, _)| *k == "X-Kafka-Key"));
        assert!(h.contains(&("X-Kafka-Key-Size", "1025".to_string())));
        w.msg.key = Some(b"\xff k".to_vec());
        let h = headers_of("x", std::slice::from_ref(&w));
        assert!(h.contains(&("X-Kafka-Key", "ff206b".to_string())));
    }

    #[test]
    fn bulk_items_give_one_status_each() {
        let body = br#"{"took":3,"errors":true,"items":[{"index":{"status":201}},{"index":{"status":429}},{"create":{"status":400}}]}"#;
        assert_eq!(bulk_item_statuses(body, 3), Ok(Some(vec![201, 429, 400])));
        assert_eq!(
            bulk_item_statuses(br#"{"errors":false,"items":[]}"#, 5),
            Ok(None)
        );
    }

    #[test]
    fn an_unreadable_bulk_answer_delivers_nothing() {
        for bad in [
            &br#"{"took":3,"errors":true,"items":[{"index":{"status":201}}"#[..],
            br#"{"took":3}"#,
            br#"{"errors":true,"items":[{"index":{"status":201}}]}"#,
            br#"{"errors":true,"items":[{"index":{}},{"index":{"status":201}}]}"#,
            b"",
        ] {
            assert!(
                bulk_item_statuses(bad, 2).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
