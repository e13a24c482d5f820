//! Tests of the aggregates query API: bucket arithmetic, ranges, the kept
//! hour, and every bad parameter answered 400 (or 404) naming it.

use super::*;

/// 2026-11-25 12:00:30 UTC, half a minute into a minute.
const NOW: i64 = 1_795_608_030_000;
const MIN: i64 = 60_000;

fn minute_of(ms: i64) -> i64 {
    ms / MIN * MIN
}

/// `visit` has 1 event 0 minutes ago, 2 one minute ago, … 5 four minutes
/// ago, 7 events 50 minutes ago and 5 older than the hour kept; values:
/// 15 click, 7 view, 5 none.
fn sample() -> Aggregates {
    let a = Aggregates::default();
    for ago in 0..5 {
        for _ in 0..=ago {
            a.record_at(
                "visit",
                br#"{"type":"click"}"#,
                "type",
                Some(NOW - ago * MIN),
                NOW,
            );
        }
    }
    for i in 0..7 {
        let payload: &[u8] = if i < 2 { br#"{"type":"view"}"# } else { b"{}" };
        a.record_at("visit", payload, "type", Some(NOW - 50 * MIN), NOW);
    }
    for _ in 0..5 {
        a.record_at(
            "visit",
            br#"{"type":"view"}"#,
            "type",
            Some(NOW - 61 * MIN),
            NOW,
        );
    }
    a.record_at("activity", b"{}", "type", None, NOW);
    a
}

fn ask(q: &str) -> Result<Value, QueryError> {
    answer(&sample(), "type", q, NOW)
}

fn counts(v: &Value) -> Vec<Option<u64>> {
    v["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64())
        .collect()
}

#[test]
fn lists_topics_without_parameters() {
    let v = ask("").unwrap();
    assert_eq!(v["field"], "type");
    assert_eq!(v["kept_minutes"], 60);
    assert_eq!(v["topics"][0]["topic"], "activity");
    assert_eq!(v["topics"][1]["topic"], "visit");
    assert_eq!(v["topics"][1]["consumed"], 27);
}

#[test]
fn minute_buckets_cover_whole_minutes_oldest_first() {
    let v = ask("topic=visit&by=minute&from=now-5m").unwrap();
    // from 11:55:30 rounds down to 11:55; to = now rounds up to 12:01.
    assert_eq!(v["from"], minute_of(NOW) - 5 * MIN);
    assert_eq!(v["to"], minute_of(NOW) + MIN);
    assert_eq!(counts(&v), [0, 5, 4, 3, 2, 1].map(Some).to_vec(), "{v}");
    assert_eq!(v["total"], 15);
    assert_eq!(v["buckets"][5]["start"], minute_of(NOW));
}

#[test]
fn steps_sum_minutes_and_default_range_is_the_kept_hour() {
    let v = ask("topic=visit&step=5m").unwrap();
    assert_eq!(v["step_minutes"], 5);
    let c = counts(&v);
    // 61 minutes from now-60m, in 13 buckets of 5 (the last one partial).
    assert_eq!(c.len(), 13);
    assert_eq!(c.iter().flatten().sum::<u64>(), 22, "{v}");
    // The minute 61 ago was never kept (older than the hour); the bucket
    // holding 60 ago lies before the kept hour only in part.
    assert_eq!(c[0], Some(0));
    assert_eq!(ask("topic=visit&step=60").unwrap()["total"], 22);
    assert_eq!(ask("topic=visit&step=1h").unwrap()["step_minutes"], 60);
}

#[test]
fn buckets_before_the_kept_hour_are_null_and_to_stops_at_now() {
    let from = NOW - 120 * MIN;
    let v = ask(&format!("topic=visit&from={from}&to=now%2B1h")).unwrap_err();
    assert_eq!(v.at, "to");
    let v = ask(&format!("topic=visit&from={from}&to={}", NOW + 3_600_000)).unwrap();
    let c = counts(&v);
    assert_eq!(c.len(), 121, "to is cut at the current minute");
    assert!(c[..61].iter().all(Option::is_none), "{c:?}");
    assert_eq!(c[61..].iter().flatten().sum::<u64>(), 22);
    assert_eq!(v["kept_from"], minute_of(NOW) - 59 * MIN);
}

#[test]
fn explicit_millisecond_ranges_are_half_open_at_minute_edges() {
    let m = minute_of(NOW);
    let v = ask(&format!("topic=visit&from={}&to={}", m - 2 * MIN, m)).unwrap();
    assert_eq!(
        counts(&v),
        vec![Some(3), Some(2)],
        "to on an edge excludes that minute"
    );
    let v = ask(&format!(
        "topic=visit&from={}&to={}",
        m - 2 * MIN + 1,
        m + 1
    ))
    .unwrap();
    assert_eq!(counts(&v), vec![Some(3), Some(2), Some(1)]);
}

#[test]
fn top_values_largest_first_with_a_limit() {
    let v = ask("topic=visit&by=value").unwrap();
    assert_eq!(v["field"], "type");
    assert_eq!(v["distinct"], 3);
    assert_eq!(v["total"], 27);
    let vals: Vec<(String, u64)> = v["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["value"].as_str().unwrap().into(),
                x["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        vals,
        vec![
            ("click".into(), 15),
            ("view".into(), 7),
            ("(none)".into(), 5)
        ]
    );
    let v = ask("topic=visit&by=value&limit=1").unwrap();
    assert_eq!(v["values"].as_array().unwrap().len(), 1);
}

#[test]
fn bad_parameters_are_400_naming_the_parameter() {
    for (q, at, says) in [
        ("topic=visit&by=hour", "by", "expected minute or value"),
        ("topic=visit&from=yesterday", "from", "Unix milliseconds"),
        ("topic=visit&from=-5", "from", "Unix milliseconds"),
        ("topic=visit&from=now-5x", "from", "now-<n>"),
        (
            "topic=visit&to=99999999999999999999",
            "to",
            "Unix milliseconds",
        ),
        ("topic=visit&from=now&to=now-5m", "from", "before to"),
        ("topic=visit&from=now%2B5m", "from", "Unix milliseconds"),
        ("topic=visit&step=0", "step", "1..=1440"),
        ("topic=visit&step=90s", "step", "whole minutes"),
        ("topic=visit&step=abc", "step", "whole minutes"),
        ("topic=visit&from=0", "step", "at most 1440"),
        ("topic=visit&by=value&limit=0", "limit", "1..=1000"),
        ("topic=visit&by=value&limit=1001", "limit", "1..=1000"),
        ("topic=visit&by=value&from=now-1m", "from", "by=minute"),
        ("topic=visit&limit=5", "limit", "by=value"),
        ("topic=visit&topic=activity", "topic", "twice"),
        ("topic=visit&colour=red", "colour", "unknown parameter"),
        ("by=value", "by", "needs a topic"),
        ("topic=%FF", "query", "UTF-8"),
    ] {
        let e = ask(q).expect_err(q);
        assert_eq!((e.status, e.at.as_str()), (400, at), "{q}: {e:?}");
        assert!(e.message.contains(says), "{q}: {}", e.message);
    }
}

#[test]
fn unknown_topic_is_404_listing_the_known_ones() {
    let e = ask("topic=nope").unwrap_err();
    assert_eq!(e.status, 404);
    assert!(e.message.contains("activity, visit"), "{}", e.message);
    let e = answer(&Aggregates::default(), "type", "topic=x%20y", NOW).unwrap_err();
    assert!(
        e.message.contains("\"x y\"") && e.message.contains("none"),
        "{}",
        e.message
    );
}

#[test]
fn a_query_of_the_largest_allowed_size_is_bounded() {
    let v = ask("topic=visit&from=now-1439m").unwrap();
    assert_eq!(v["buckets"].as_array().unwrap().len(), 1440);
    assert!(v.to_string().len() < 64 * 1024);
}
