//! The shared aggregates the deliver role updates per message and the
//! dashboard reads: counts per topic, per value of the aggregated field
//! (e.g. `type`), and per minute over the last hour. Lock-free counters on
//! the hot path; maps are read-locked except when a new name first appears.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::metrics::Counter;

/// Distinct values kept per topic; further values count as "other".
const MAX_VALUES: usize = 1000;
/// Longest value kept, in bytes; a longer one is cut at a character
/// boundary and ends in [`TRUNCATED`]: a topic's values hold at most
/// `MAX_VALUES` × 256 bytes, and every answer built from them is bounded.
pub const MAX_VALUE_BYTES: usize = 256;
pub const TRUNCATED: &str = "…(truncated)";
/// Minutes of per-minute counts kept.
pub const MINUTES: usize = 60;
const COUNT_BITS: u32 = 38;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

pub struct TopicAggregates {
    pub consumed: Counter,
    pub delivered: Counter,
    values: RwLock<HashMap<String, Arc<Counter>>>,
    /// Per slot, the minute since the epoch (high bits) and its count (low
    /// [`COUNT_BITS`] bits) in one word, so a slot moves to a new minute and
    /// counts in one atomic step.
    minutes: [AtomicU64; MINUTES],
}

impl Default for TopicAggregates {
    fn default() -> Self {
        TopicAggregates {
            consumed: Counter::default(),
            delivered: Counter::default(),
            values: RwLock::default(),
            minutes: std::array::from_fn(|_| Default::default()),
        }
    }
}

#[derive(Default)]
pub struct Aggregates {
    topics: RwLock<HashMap<String, Arc<TopicAggregates>>>,
}

impl Aggregates {
    fn topic(&self, topic: &str) -> Option<Arc<TopicAggregates>> {
        if let Some(t) = self.topics.read().ok()?.get(topic) {
            return Some(t.clone());
        }
        Some(
            self.topics
                .write()
                .ok()?
                .entry(topic.to_string())
                .or_default()
                .clone(),
        )
    }

    /// Counts a consumed message: per topic, per `field` value, per minute.
    pub fn record(&self, topic: &str, payload: &[u8], field: &str, timestamp_ms: Option<i64>) {
        self.record_at(topic, payload, field, timestamp_ms, now_ms());
    }

    /// Counts a consumed message whose `field` value was already read
    /// (see [`inspect`]).
    pub fn record_value(&self, topic: &str, value: Option<String>, timestamp_ms: Option<i64>) {
        let Some(t) = self.topic(topic) else { return };
        t.consumed.inc();
        if let Some(v) = value {
            t.count_value(v);
        }
        let now = now_ms();
        let ms = timestamp_ms.filter(|m| *m > 0).unwrap_or(now);
        t.count_minute(ms_to_minute(ms), ms_to_minute(now));
    }

    /// [`Self::record`] with the clock read at `now` (Unix ms).
    pub fn record_at(
        &self,
        topic: &str,
        payload: &[u8],
        field: &str,
        timestamp_ms: Option<i64>,
        now: i64,
    ) {
        let Some(t) = self.topic(topic) else { return };
        t.consumed.inc();
        if !field.is_empty() {
            let value = field_value(payload, field).unwrap_or_else(|| "(none)".into());
            t.count_value(value);
        }
        let ms = timestamp_ms.filter(|m| *m > 0).unwrap_or(now);
        t.count_minute(ms_to_minute(ms), ms_to_minute(now));
    }

    pub fn delivered(&self, topic: &str) {
        if let Some(t) = self.topic(topic) {
            t.delivered.inc();
        }
    }

    /// Topics and their aggregates, sorted by name.
    pub fn snapshot(&self) -> Vec<(String, Arc<TopicAggregates>)> {
        let mut v: Vec<_> = self
            .topics
            .read()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

impl TopicAggregates {
    /// Counts one message of `minute` (by its Kafka timestamp). A timestamp
    /// ahead of the clock counts as now; one older than the hour kept
    /// counts in the totals only, and never evicts a newer minute.
    fn count_minute(&self, minute: u64, now: u64) {
        let minute = minute.min(now);
        if minute + MINUTES as u64 <= now {
            return;
        }
        let slot = &self.minutes[minute as usize % MINUTES];
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
            let held = word >> COUNT_BITS;
            if held == minute {
                Some(word + u64::from(word & COUNT_MASK < COUNT_MASK))
            } else if held < minute {
                Some((minute << COUNT_BITS) | 1)
            } else {
                None // a newer minute owns the slot already
            }
        });
    }

    fn count_value(&self, mut value: String) {
        if value.len() > MAX_VALUE_BYTES {
            let mut cut = MAX_VALUE_BYTES - TRUNCATED.len();
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value.truncate(cut);
            value.push_str(TRUNCATED);
        }
        if let Ok(m) = self.values.read()
            && let Some(c) = m.get(&value)
        {
            c.inc();
            return;
        }
        let Ok(mut m) = self.values.write() else {
            return;
        };
        let key = if m.len() >= MAX_VALUES && !m.contains_key(&value) {
            "other".to_string()
        } else {
            value
        };
        m.entry(key).or_default().inc();
    }

    /// (value, count), largest first.
    pub fn values(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .values
            .read()
            .map(|m| m.iter().map(|(k, c)| (k.clone(), c.get())).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// (minute since the epoch, count) for the hour up to `now` (a minute
    /// since the epoch), minutes with counts only, oldest first.
    pub fn per_minute(&self, now: u64) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .minutes
            .iter()
            .map(|w| {
                let w = w.load(Ordering::Relaxed);
                (w >> COUNT_BITS, w & COUNT_MASK)
            })
            .filter(|(m, c)| *c > 0 && *m + MINUTES as u64 > now && *m <= now)
            .collect();
        v.sort();
        v
    }
}

/// The minute since the epoch that holds `ms`.
pub fn ms_to_minute(ms: i64) -> u64 {
    (ms.max(0) / 60_000) as u64
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Is `payload` one JSON value, and its top-level `field` (see
/// [`field_value`]; `"(none)"` when absent, nothing when `field` is
/// empty), in one pass over an object. JSON nested deeper than serde's
/// recursion limit counts as JSON (it is checked without building it).
pub fn inspect(payload: &[u8], field: &str) -> (bool, Option<String>) {
    if !field.is_empty() {
        let mut de = serde_json::Deserializer::from_slice(payload);
        if let Ok(v) = FieldSeed(field).deserialize(&mut de) {
            let json = de.end().is_ok();
            let v = if json { v } else { None };
            return (json, Some(v.unwrap_or_else(|| "(none)".into())));
        }
    }
    let json = serde_json::from_slice::<&serde_json::value::RawValue>(payload).is_ok();
    (json, (!field.is_empty()).then(|| "(none)".into()))
}

/// The top-level `field` of a JSON object as text (strings as they are,
/// numbers and booleans as JSON), without building the whole document.
pub fn field_value(payload: &[u8], field: &str) -> Option<String> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    FieldSeed(field).deserialize(&mut de).ok().flatten()
}

struct FieldSeed<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Option<String>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(k) = map.next_key::<Cow<'de, str>>()? {
            if found.is_none() && k == self.0 {
                found = match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::String(s) => Some(s),
                    v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => {
                        Some(v.to_string())
                    }
                    _ => None,
                };
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_tells_json_from_the_rest_in_the_same_pass() {
        assert_eq!(
            inspect(br#"{"type":"a"}"#, "type"),
            (true, Some("a".into()))
        );
        assert_eq!(
            inspect(b"{\n\"type\": 1\n}\n", "type"),
            (true, Some("1".into()))
        );
        assert_eq!(
            inspect(br#"{"x":1}"#, "type"),
            (true, Some("(none)".into()))
        );
        assert_eq!(inspect(br#"[1,2]"#, "type"), (true, Some("(none)".into())));
        assert_eq!(
            inspect(br#"{"type":"a"} trailing"#, "type"),
            (false, Some("(none)".into()))
        );
        for bad in [&b""[..], b"not json", b"\xff", b"{\"a\":"] {
            assert!(!inspect(bad, "type").0, "{bad:?}");
            assert!(!inspect(bad, "").0, "{bad:?}");
        }
        assert_eq!(inspect(b"7", ""), (true, None));
        let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
        assert!(inspect(deep.as_bytes(), "type").0);
    }

    #[test]
    fn long_values_are_cut_with_a_marker_at_a_character_boundary() {
        let a = Aggregates::default();
        let long = format!("{{\"type\":\"{}\"}}", "é".repeat(450_000));
        a.record_at("t", long.as_bytes(), "type", None, 0);
        a.record_at("t", long.as_bytes(), "type", None, 0);
        let values = a.snapshot()[0].1.values();
        assert_eq!(values.len(), 1);
        let (v, n) = &values[0];
        assert_eq!(*n, 2);
        assert!(
            v.len() <= MAX_VALUE_BYTES && v.ends_with(TRUNCATED),
            "{}",
            v.len()
        );
        assert!(v.starts_with("éé"));
    }

    #[test]
    fn field_value_reads_top_level_strings_and_numbers() {
        assert_eq!(
            field_value(br#"{"a":{"type":"inner"},"type":"click","z":[1]}"#, "type"),
            Some("click".into())
        );
        assert_eq!(field_value(br#"{"type":7}"#, "type"), Some("7".into()));
        assert_eq!(field_value(br#"{"type":null}"#, "type"), None);
        assert_eq!(field_value(br#"[1,2]"#, "type"), None);
        assert_eq!(field_value(b"not json", "type"), None);
    }

    #[test]
    fn counts_per_topic_value_and_minute() {
        let a = Aggregates::default();
        let now = now_ms();
        for p in [
            &br#"{"type":"visit"}"#[..],
            br#"{"type":"visit"}"#,
            br#"{"type":"click"}"#,
            br#"{}"#,
        ] {
            a.record("t", p, "type", Some(now));
        }
        a.delivered("t");
        let snap = a.snapshot();
        let t = &snap[0].1;
        assert_eq!((t.consumed.get(), t.delivered.get()), (4, 1));
        assert_eq!(
            t.values(),
            vec![
                ("visit".into(), 2),
                ("(none)".into(), 1),
                ("click".into(), 1)
            ]
        );
        let minute = ms_to_minute(now_ms());
        assert_eq!(t.per_minute(minute).iter().map(|m| m.1).sum::<u64>(), 4);
    }

    #[test]
    fn minutes_roll_over_and_old_or_future_timestamps_cannot_evict() {
        let t = TopicAggregates::default();
        let now = 29_000_000;
        t.count_minute(now - 1, now);
        t.count_minute(now, now);
        t.count_minute(now + 5, now); // clock skew: counts as now
        t.count_minute(now - 60, now); // shares a slot with `now`: dropped
        t.count_minute(now - 59, now);
        assert_eq!(
            t.per_minute(now),
            vec![(now - 59, 1), (now - 1, 1), (now, 2)]
        );
        // An hour later the slot of `now` is reused and the rest expired;
        // a reader a minute after `now` sees neither `now - 59` (expired)
        // nor the future minute.
        let later = now + 60;
        t.count_minute(later, later);
        assert_eq!(t.per_minute(later), vec![(later, 1)]);
        assert_eq!(t.per_minute(now + 1), vec![(now - 1, 1)]);
    }

    #[test]
    fn concurrent_counting_loses_nothing() {
        let t = Arc::new(TopicAggregates::default());
        let now = 29_000_000;
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for n in 0..20_000u64 {
                        t.count_minute(now - (n + i) % 3, now);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let total: u64 = t.per_minute(now).iter().map(|m| m.1).sum();
        assert_eq!(total, 80_000);
    }
}
