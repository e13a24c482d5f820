//! The 15-minute summary behind `/api/summary`: once a second the sampler
//! thread reads every role's figures (the very text `/metrics` serves) and
//! keeps each series in a ring of [`SAMPLES`] samples, so the page can draw
//! pool gauges, channel fill, delivery outcomes, responses by status, bytes
//! written and lag per partition over the last minutes. Counters are served
//! as per-second rates (with their last total), gauges as they are.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::shutdown::StopToken;
use crate::stats::Telemetry;

/// One sample a second for 15 minutes.
pub const SAMPLES: usize = 900;
/// Series kept; more (e.g. thousands of partitions) are not sampled.
pub const MAX_SERIES: usize = 400;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Counter,
    Gauge,
}

struct Series {
    metric: String,
    labels: Vec<(String, String)>,
    kind: Kind,
}

#[derive(Default)]
struct Ring {
    series: Vec<Series>,
    index: HashMap<String, usize>,
    /// (Unix ms, value per series; NaN where a series had no sample).
    samples: VecDeque<(i64, Vec<f64>)>,
    ignored_series: usize,
}

#[derive(Default)]
pub struct Summary(Mutex<Ring>);

impl Summary {
    /// Keeps one sample of every series in `text` (Prometheus exposition
    /// as the roles write it) at `t_ms`.
    pub fn record(&self, t_ms: i64, text: &str) {
        let Ok(mut ring) = self.0.lock() else { return };
        let ring = &mut *ring;
        let mut values = vec![f64::NAN; ring.series.len()];
        let mut types: HashMap<&str, &str> = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut w = rest.split_whitespace();
                if let (Some(n), Some(k)) = (w.next(), w.next()) {
                    types.insert(n, k);
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let Some((metric, labels)) = parse_series(key) else {
                continue;
            };
            let kind = match types.get(metric.as_str()).copied() {
                Some("counter") => Kind::Counter,
                Some("summary") => {
                    // Of a latency summary, the p99 alone.
                    if !labels.iter().any(|(k, v)| k == "quantile" && v == "0.99") {
                        continue;
                    }
                    Kind::Gauge
                }
                Some(_) => Kind::Gauge,
                None if metric.ends_with("_total") || metric.ends_with("_count") => Kind::Counter,
                None => Kind::Gauge,
            };
            let i = match ring.index.get(key) {
                Some(i) => *i,
                None if ring.series.len() >= MAX_SERIES => {
                    ring.ignored_series += 1;
                    continue;
                }
                None => {
                    ring.series.push(Series {
                        metric,
                        labels,
                        kind,
                    });
                    ring.index.insert(key.to_string(), ring.series.len() - 1);
                    values.push(f64::NAN);
                    ring.series.len() - 1
                }
            };
            values[i] = value;
        }
        if ring.samples.len() >= SAMPLES {
            ring.samples.pop_front();
        }
        ring.samples.push_back((t_ms, values));
    }

    /// The samples taken after `since` (Unix ms; all when `None`).
    pub fn to_json(&self, since: Option<i64>, roles: &[&str]) -> Value {
        let Ok(ring) = self.0.lock() else {
            return json!({ "error": "summary unavailable" });
        };
        let first = since.map_or(0, |s| ring.samples.partition_point(|(t, _)| *t <= s));
        let times: Vec<i64> = ring.samples.iter().skip(first).map(|(t, _)| *t).collect();
        let value =
            |i: usize, s: usize| -> f64 { ring.samples[i].1.get(s).copied().unwrap_or(f64::NAN) };
        let series: Vec<Value> = ring
            .series
            .iter()
            .enumerate()
            .map(|(s, meta)| {
                let values: Vec<Value> = (first..ring.samples.len())
                    .map(|i| {
                        let v = value(i, s);
                        let shown = match meta.kind {
                            Kind::Gauge => v,
                            Kind::Counter if i == 0 => f64::NAN,
                            Kind::Counter => {
                                let (before, dt) =
                                    (value(i - 1, s), ring.samples[i].0 - ring.samples[i - 1].0);
                                if v >= before && dt > 0 {
                                    (v - before) * 1000.0 / dt as f64
                                } else {
                                    f64::NAN // a restart of the count, or no sample
                                }
                            }
                        };
                        number(shown)
                    })
                    .collect();
                let last = ring
                    .samples
                    .back()
                    .map_or(f64::NAN, |(_, v)| v.get(s).copied().unwrap_or(f64::NAN));
                let labels: Map<String, Value> = meta
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                    .collect();
                json!({
                    "metric": meta.metric,
                    "labels": labels,
                    "kind": if meta.kind == Kind::Counter { "rate" } else { "gauge" },
                    "last": number(last),
                    "values": values,
                })
            })
            .collect();
        json!({
            "interval_ms": 1000,
            "kept": SAMPLES,
            "roles": roles,
            "version": env!("CARGO_PKG_VERSION"),
            "ignored_series": ring.ignored_series,
            "t": times,
            "series": series,
        })
    }
}

/// A finite value rounded to 3 decimals, or null.
fn number(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// `since=<Unix ms>`, the only parameter of `/api/summary`.
pub fn parse_since(query: &str) -> Result<Option<i64>, String> {
    let mut since = None;
    for pair in query.split('&').filter(|s| !s.is_empty()) {
        match pair.split_once('=') {
            Some(("since", v)) if since.is_none() => {
                since = Some(v.parse::<i64>().ok().filter(|t| *t >= 0).ok_or_else(|| {
                    format!("since: expected Unix milliseconds (the last t you have), got {v:?}")
                })?);
            }
            Some(("since", _)) => return Err("since given twice".into()),
            _ => {
                return Err(format!(
                    "unknown parameter {pair:?}; only since=<Unix ms> is accepted"
                ));
            }
        }
    }
    Ok(since)
}

/// `name{k="v",…}` → (name, labels), unescaping `\\`, `\"` and `\n`.
fn parse_series(key: &str) -> Option<(String, Vec<(String, String)>)> {
    let Some((name, rest)) = key.split_once('{') else {
        return Some((key.to_string(), Vec::new()));
    };
    let mut labels = Vec::new();
    let mut chars = rest.chars();
    loop {
        let label: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let label = label.trim_start_matches(',');
        if label == "}" || label.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        }
        labels.push((label.to_string(), value));
    }
    Some((name.to_string(), labels))
}

/// Starts the thread that samples every role once a second.
pub fn spawn_sampler(
    summary: Arc<Summary>,
    roles: Vec<Arc<dyn Telemetry>>,
    stop: StopToken,
    fatal: crossbeam_channel::Sender<String>,
) -> std::io::Result<JoinHandle<()>> {
    let watch = crate::panics::Watch::new("summary", fatal);
    std::thread::Builder::new()
        .name("summary".into())
        .spawn(move || {
            let _watch = watch;
            let mut text = String::with_capacity(16 * 1024);
            loop {
                text.clear();
                for r in &roles {
                    r.prometheus(&mut text);
                }
                summary.record(crate::aggregates::now_ms(), &text);
                if stop.wait(Duration::from_secs(1)) {
                    return;
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP a_total A.\n# TYPE a_total counter\na_total{topic=\"x\\\"y\",p=\"0\"} 10\n\
        # TYPE g gauge\ng 3\n# TYPE lat summary\nlat{quantile=\"0.5\"} 0.1\nlat{quantile=\"0.99\"} 0.2\nlat_count 4\n";

    #[test]
    fn parses_series_and_labels() {
        assert_eq!(
            parse_series("a{x=\"1\",y=\"a\\\\b\\n\"}"),
            Some((
                "a".into(),
                vec![("x".into(), "1".into()), ("y".into(), "a\\b\n".into())]
            ))
        );
        assert_eq!(parse_series("plain"), Some(("plain".into(), vec![])));
        assert_eq!(parse_series("bad{x=1}"), None);
        assert_eq!(parse_series("cut{x=\"1"), None);
    }

    #[test]
    fn counters_become_rates_and_gauges_stay() {
        let s = Summary::default();
        s.record(1_000, TEXT);
        s.record(2_000, &TEXT.replace("} 10", "} 15").replace("g 3", "g 7"));
        s.record(4_000, &TEXT.replace("} 10", "} 25").replace("g 3", "g 1"));
        s.record(5_000, &TEXT.replace("} 10", "} 2")); // a restart
        let v = s.to_json(None, &["deliver"]);
        assert_eq!(v["t"], json!([1000, 2000, 4000, 5000]));
        let series = v["series"].as_array().unwrap();
        let a = &series[0];
        assert_eq!(a["metric"], "a_total");
        assert_eq!(a["labels"]["topic"], "x\"y");
        assert_eq!(a["kind"], "rate");
        assert_eq!(a["values"], json!([null, 5.0, 5.0, null]));
        assert_eq!(a["last"], json!(2.0));
        assert_eq!(series[1]["values"], json!([3.0, 7.0, 1.0, 3.0]));
        // The p99 of the summary and its count; the p50 is not kept.
        assert_eq!(series.len(), 4, "{v}");
        assert_eq!(series[2]["labels"]["quantile"], "0.99");
        assert_eq!(series[3]["metric"], "lat_count");
        // Since: later samples only, rates still against the one before.
        let v = s.to_json(Some(2_000), &[]);
        assert_eq!(v["t"], json!([4000, 5000]));
        assert_eq!(v["series"][0]["values"], json!([5.0, null]));
    }

    #[test]
    fn series_appearing_later_are_null_before_and_the_ring_is_bounded() {
        let s = Summary::default();
        s.record(0, "g 1\n");
        s.record(1_000, "g 1\nh 2\n");
        let v = s.to_json(None, &[]);
        assert_eq!(v["series"][1]["values"], json!([null, 2.0]));
        for i in 0..SAMPLES as i64 + 10 {
            s.record(2_000 + i, "g 1\n");
        }
        assert_eq!(s.to_json(None, &[])["t"].as_array().unwrap().len(), SAMPLES);
        let many: String = (0..MAX_SERIES + 50)
            .map(|i| format!("m{{p=\"{i}\"}} 1\n"))
            .collect();
        s.record(99_999, &many);
        let v = s.to_json(Some(99_998), &[]);
        assert_eq!(v["series"].as_array().unwrap().len(), MAX_SERIES);
        assert_eq!(v["ignored_series"], 52);
    }

    #[test]
    fn since_is_validated() {
        assert_eq!(parse_since(""), Ok(None));
        assert_eq!(parse_since("since=5"), Ok(Some(5)));
        assert!(
            parse_since("since=x")
                .unwrap_err()
                .contains("Unix milliseconds")
        );
        assert!(parse_since("since=-1").is_err());
        assert!(
            parse_since("since=1&since=2")
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            parse_since("limit=3")
                .unwrap_err()
                .contains("unknown parameter")
        );
    }
}
