//! `GET /api/aggregates`: the query API over the deliver role's aggregates.
//!
//! - no parameters: the topics with their totals;
//! - `topic=T&by=minute[&from=…&to=…&step=…]`: counts per bucket of `step`
//!   whole minutes (default 1m), from `from` (default `now-60m`) up to `to`
//!   (default `now`); times are Unix milliseconds or `now`/`now-15m`, a
//!   partly covered minute counts whole, buckets before the kept hour
//!   are `null`, at most [`MAX_BUCKETS`] buckets;
//! - `topic=T&by=value[&limit=N]`: the most frequent values of the field
//!   since start, largest first (default 10, at most 1000).
//!
//! Every parameter is checked; a bad one is a 400 naming it.

use serde_json::{Value, json};

use crate::aggregates::{Aggregates, MINUTES, ms_to_minute};

/// Buckets one answer may hold.
pub const MAX_BUCKETS: u64 = 1440;
const MAX_LIMIT: usize = 1000;
/// Latest time accepted, in Unix ms (year 9999), so arithmetic cannot wrap.
const MAX_MS: i64 = 253_402_300_799_999;

#[derive(Debug, PartialEq)]
pub struct QueryError {
    pub status: u16,
    pub message: String,
    /// The parameter at fault (`query` for the query string as a whole).
    pub at: String,
}

fn bad(at: &str, message: impl Into<String>) -> QueryError {
    QueryError {
        status: 400,
        message: message.into(),
        at: at.into(),
    }
}

#[derive(Default)]
struct Params {
    topic: Option<String>,
    by: Option<String>,
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
    limit: Option<String>,
}

fn parse_params(query: &str) -> Result<Params, QueryError> {
    let mut p = Params::default();
    for pair in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| bad("query", format!("{s:?} is not UTF-8 once percent-decoded")))
        };
        let (k, v) = (decode(k)?, decode(v)?);
        let slot = match k.as_str() {
            "topic" => &mut p.topic,
            "by" => &mut p.by,
            "from" => &mut p.from,
            "to" => &mut p.to,
            "step" => &mut p.step,
            "limit" => &mut p.limit,
            _ => {
                return Err(bad(
                    &k,
                    format!("unknown parameter {k:?}; known: topic, by, from, to, step, limit"),
                ));
            }
        };
        if slot.is_some() {
            return Err(bad(&k, format!("parameter {k} given twice")));
        }
        *slot = Some(v);
    }
    Ok(p)
}

/// A duration such as `90s`, `15m` or `1h`, in milliseconds.
fn duration_ms(s: &str) -> Option<i64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().ok().filter(|n: &i64| *n <= 100_000_000)?;
    let unit = match unit {
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(n * unit)
}

/// `now`, `now-<duration>` or Unix milliseconds.
fn time_ms(name: &str, s: &str, now: i64) -> Result<i64, QueryError> {
    let t = if s == "now" {
        Some(now)
    } else if let Some(ago) = s.strip_prefix("now-") {
        duration_ms(ago).map(|d| now - d)
    } else {
        s.parse::<i64>().ok()
    };
    t.filter(|t| (0..=MAX_MS).contains(t)).ok_or_else(|| {
        bad(
            name,
            format!(
                "{name}: expected Unix milliseconds, now or now-<n>(s|m|h|d) such as now-15m, got {s:?}"
            ),
        )
    })
}

/// The answer to `query` at `now` (Unix ms).
pub fn answer(aggs: &Aggregates, field: &str, query: &str, now: i64) -> Result<Value, QueryError> {
    let p = parse_params(query)?;
    let topics = aggs.snapshot();
    let Some(topic) = p.topic.as_deref() else {
        if let Some(k) = [
            ("by", &p.by),
            ("from", &p.from),
            ("to", &p.to),
            ("step", &p.step),
            ("limit", &p.limit),
        ]
        .iter()
        .find_map(|(k, v)| v.as_ref().map(|_| *k))
        {
            return Err(bad(k, format!("{k} needs a topic: add topic=<name>")));
        }
        let list: Vec<Value> = topics
            .iter()
            .map(|(t, a)| json!({ "topic": t, "consumed": a.consumed.get(), "delivered": a.delivered.get() }))
            .collect();
        return Ok(json!({ "field": field, "kept_minutes": MINUTES, "topics": list }));
    };
    let Some((_, agg)) = topics.iter().find(|(t, _)| t == topic) else {
        let known: Vec<&str> = topics.iter().map(|(t, _)| t.as_str()).collect();
        return Err(QueryError {
            status: 404,
            message: format!(
                "no aggregates for topic {topic:?} (yet); known: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
            at: "topic".into(),
        });
    };
    match p.by.as_deref().unwrap_or("minute") {
        "minute" => {
            if p.limit.is_some() {
                return Err(bad("limit", "limit applies to by=value"));
            }
            let to = time_ms("to", p.to.as_deref().unwrap_or("now"), now)?;
            let from = time_ms("from", p.from.as_deref().unwrap_or("now-60m"), now)?;
            let step = match p.step.as_deref() {
                None => 1,
                Some(s) => s
                    .parse::<u64>()
                    .ok()
                    .or_else(|| duration_ms(s).filter(|d| d % 60_000 == 0).map(|d| (d / 60_000) as u64))
                    .filter(|m| (1..=1440).contains(m))
                    .ok_or_else(|| {
                        bad("step", format!("step: expected whole minutes in 1..=1440 such as 5 or 5m or 1h, got {s:?}"))
                    })?,
            };
            let mut buckets = minute_buckets(
                ms_to_minute(from),
                ms_to_minute(to + 59_999),
                ms_to_minute(now),
                step,
            )?;
            let per_minute = agg.per_minute(ms_to_minute(now));
            for b in &mut buckets {
                if let Some(count) = &mut b.count {
                    *count = per_minute
                        .iter()
                        .filter(|(m, _)| (b.start..b.start + step).contains(m))
                        .map(|(_, c)| c)
                        .sum();
                }
            }
            let total: u64 = buckets.iter().filter_map(|b| b.count).sum();
            let first = buckets.first().map_or(0, |b| b.start);
            let end = buckets.last().map_or(0, |b| b.start + step);
            Ok(json!({
                "topic": topic,
                "by": "minute",
                "from": first * 60_000,
                "to": end * 60_000,
                "step_minutes": step,
                "kept_from": (ms_to_minute(now) + 1).saturating_sub(MINUTES as u64) * 60_000,
                "buckets": buckets.iter().map(|b| json!({ "start": b.start * 60_000, "count": b.count })).collect::<Vec<_>>(),
                "total": total,
            }))
        }
        "value" => {
            if let Some(k) = [("from", &p.from), ("to", &p.to), ("step", &p.step)]
                .iter()
                .find_map(|(k, v)| v.as_ref().map(|_| *k))
            {
                return Err(bad(
                    k,
                    format!("{k} applies to by=minute; values are counted since start"),
                ));
            }
            let limit = match p.limit.as_deref() {
                None => 10,
                Some(s) => s
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| {
                        bad(
                            "limit",
                            format!("limit: expected an integer in 1..={MAX_LIMIT}, got {s:?}"),
                        )
                    })?,
            };
            let values = agg.values();
            Ok(json!({
                "topic": topic,
                "by": "value",
                "field": field,
                "distinct": values.len(),
                "total": agg.consumed.get(),
                "values": values.iter().take(limit).map(|(v, c)| json!({ "value": v, "count": c })).collect::<Vec<_>>(),
            }))
        }
        other => Err(bad(
            "by",
            format!("by: expected minute or value, got {other:?}"),
        )),
    }
}

#[derive(Debug, PartialEq)]
struct Bucket {
    /// First minute since the epoch.
    start: u64,
    /// `None` when the bucket lies wholly before the kept hour.
    count: Option<u64>,
}

/// Buckets of `step` minutes from minute `from` up to (not including) `to`,
/// cut at the minute after `now`; empty counts to fill in.
fn minute_buckets(from: u64, to: u64, now: u64, step: u64) -> Result<Vec<Bucket>, QueryError> {
    let to = to.min(now + 1);
    if from >= to {
        return Err(bad("from", "from must be before to, and not in the future"));
    }
    let n = (to - from).div_ceil(step);
    if n > MAX_BUCKETS {
        return Err(bad(
            "step",
            format!("{n} buckets asked for; at most {MAX_BUCKETS}: narrow from..to or widen step"),
        ));
    }
    let kept_from = (now + 1).saturating_sub(MINUTES as u64);
    Ok((0..n)
        .map(|i| {
            let start = from + i * step;
            Bucket {
                start,
                count: (start + step > kept_from).then_some(0),
            }
        })
        .collect())
}

#[cfg(test)]
#[path = "query_tests.rs"]
mod tests;
