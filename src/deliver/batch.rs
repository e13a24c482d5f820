//! What one call carries and what its answer says (pure): the body of one
//! message or a batch (NDJSON, JSON array, Elasticsearch `_bulk` lines), and
//! the per-item statuses of a `_bulk` answer — which must be read whole:
//! an answer that cannot be read delivers nothing.

use super::Work;
use super::config::BatchFormat;

/// Content type and body for one message or a batch.
pub fn body_of(
    batch_size: usize,
    format: BatchFormat,
    es_index: &str,
    batch: &[Work],
) -> (&'static str, Vec<u8>) {
    if batch_size == 1 && batch.len() == 1 {
        return ("application/json", batch[0].msg.payload.clone());
    }
    let size: usize = batch.iter().map(|w| w.msg.payload.len() + 64).sum();
    let mut out = Vec::with_capacity(size);
    match format {
        BatchFormat::Ndjson => {
            for w in batch {
                out.extend_from_slice(&w.msg.payload);
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
                out.extend_from_slice(&w.msg.payload);
            }
            out.push(b']');
            ("application/json", out)
        }
        BatchFormat::EsBulk => {
            for w in batch {
                let index = if es_index.is_empty() {
                    &*w.msg.topic
                } else {
                    es_index
                };
                let id = format!("{}-{}-{}", w.msg.topic, w.msg.partition, w.msg.offset);
                let action = serde_json::json!({ "index": { "_index": index, "_id": id } });
                out.extend_from_slice(action.to_string().as_bytes());
                out.push(b'\n');
                out.extend_from_slice(&w.msg.payload);
                out.push(b'\n');
            }
            ("application/x-ndjson", out)
        }
    }
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
    let items = v
        .get("items")
        .and_then(serde_json::Value::as_array)
        .ok_or("the _bulk answer has no \"items\"")?;
    if items.len() != n {
        return Err(format!(
            "the _bulk answer has {} items for {n} sent",
            items.len()
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_object()
                .and_then(|o| o.values().next())
                .and_then(|a| a.get("status"))
                .and_then(serde_json::Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .ok_or_else(|| format!("item {i} of the _bulk answer has no status"))
        })
        .collect::<Result<Vec<u16>, String>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

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
