//! Counters, gauges and the Prometheus text writer. Every role keeps its
//! figures in these lock-free cells; the stats thread and `/metrics` read them.
//!
//! Metric names are `kbridge_<stage>_<noun>[_<unit>]_total` and are spelled
//! once, in the role's own telemetry module, through these helpers.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Latency in microseconds; recorded under a short lock (no I/O inside).
pub struct Latency(Mutex<hdrhistogram::Histogram<u64>>);

impl Default for Latency {
    fn default() -> Self {
        // 1 µs .. 10 min at 3 significant digits; the bounds are constants.
        let h = hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)
            .unwrap_or_else(|_| hdrhistogram::Histogram::new(3).expect("3 sigfig is valid"));
        Latency(Mutex::new(h))
    }
}

impl Latency {
    pub fn record_us(&self, us: u64) {
        if let Ok(mut h) = self.0.lock() {
            h.saturating_record(us.max(1));
        }
    }
    /// (count, p50, p99, max) in microseconds.
    pub fn summary(&self) -> (u64, u64, u64, u64) {
        match self.0.lock() {
            Ok(h) => (
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.max(),
            ),
            Err(_) => (0, 0, 0, 0),
        }
    }
}

/// Writes Prometheus text exposition lines.
pub struct Prom<'a> {
    out: &'a mut String,
}

impl<'a> Prom<'a> {
    pub fn new(out: &'a mut String) -> Self {
        Prom { out }
    }

    /// `# HELP` and `# TYPE` lines; call once per metric name.
    pub fn describe(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A metric with one sample.
    pub fn single(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        self.describe(name, kind, help);
        self.sample(name, labels, value);
    }

    /// A latency summary (quantiles in seconds) from a [`Latency`].
    pub fn latency(&mut self, name: &str, help: &str, labels: &[(&str, &str)], lat: &Latency) {
        let (count, p50, p99, max) = lat.summary();
        self.describe(name, "summary", help);
        for (q, v) in [("0.5", p50), ("0.99", p99), ("1", max)] {
            let mut l = labels.to_vec();
            l.push(("quantile", q));
            self.sample(name, &l, v as f64 / 1e6);
        }
        self.sample(&format!("{name}_count"), labels, count);
    }
}

/// Regroups Prometheus text written by several roles so each metric family
/// appears once, with one HELP and TYPE line and its samples together; a
/// series written twice keeps its first sample (a scrape with duplicate
/// series is rejected whole).
pub fn group_families(text: &str) -> String {
    let mut series: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut order: Vec<&str> = Vec::new();
    let mut families: std::collections::HashMap<&str, (Vec<&str>, Vec<&str>)> =
        std::collections::HashMap::new();
    let mut current = "";
    for line in text.lines() {
        let (name, is_meta) = match line.strip_prefix("# ") {
            Some(rest) => (rest.split_whitespace().nth(1).unwrap_or(""), true),
            None => (line.split(['{', ' ']).next().unwrap_or(""), false),
        };
        // `_count` etc. belong to the family whose HELP came just before.
        let family = if !is_meta && !current.is_empty() && name.starts_with(current) {
            current
        } else {
            name
        };
        if is_meta {
            current = name;
        }
        let entry = families.entry(family).or_insert_with(|| {
            order.push(family);
            (Vec::new(), Vec::new())
        });
        if is_meta {
            if !entry.0.contains(&line) && entry.0.len() < 2 {
                entry.0.push(line);
            }
        } else if series.insert(line.rsplit_once(' ').map_or(line, |(s, _)| s)) {
            entry.1.push(line);
        }
    }
    let mut out = String::with_capacity(text.len());
    for f in order {
        let (meta, samples) = &families[f];
        for l in meta.iter().chain(samples) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// `text` with `key="value"` added first to the labels of every sample
/// (one role instance among several: `subscription="crm"`).
pub fn with_label(text: &str, key: &str, value: &str) -> String {
    let label = format!("{key}=\"{}\"", escape(value));
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for line in text.lines() {
        if line.starts_with('#') {
            out.push_str(line);
        } else if let Some(i) = line.find(['{', ' ']) {
            let (name, rest) = line.split_at(i);
            out.push_str(name);
            out.push('{');
            out.push_str(&label);
            match rest.strip_prefix('{') {
                Some(labels) if labels.starts_with('}') => out.push_str(labels),
                Some(labels) => {
                    out.push(',');
                    out.push_str(labels);
                }
                None => {
                    out.push('}');
                    out.push_str(rest);
                }
            }
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_is_added_to_every_sample() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total 3\nb{x=\"1\"} 2\nc{} 1\n";
        assert_eq!(
            with_label(text, "subscription", "crm"),
            "# HELP a_total A.\n# TYPE a_total counter\na_total{subscription=\"crm\"} 3\nb{subscription=\"crm\",x=\"1\"} 2\nc{subscription=\"crm\"} 1\n"
        );
    }

    #[test]
    fn renders_prometheus_text_with_escaped_labels() {
        let mut s = String::new();
        let mut p = Prom::new(&mut s);
        p.single(
            "kbridge_x_total",
            "counter",
            "X things.",
            &[("route", "a\"b")],
            3,
        );
        assert_eq!(
            s,
            "# HELP kbridge_x_total X things.\n# TYPE kbridge_x_total counter\nkbridge_x_total{route=\"a\\\"b\"} 3\n"
        );
    }

    #[test]
    fn families_written_twice_are_merged() {
        let text = "# HELP a A.\n# TYPE a gauge\na{r=\"1\"} 1\n# HELP b B.\n# TYPE b counter\nb 2\n# HELP a A.\n# TYPE a gauge\na{r=\"2\"} 3\n";
        assert_eq!(
            group_families(text),
            "# HELP a A.\n# TYPE a gauge\na{r=\"1\"} 1\na{r=\"2\"} 3\n# HELP b B.\n# TYPE b counter\nb 2\n"
        );
    }

    #[test]
    fn a_series_written_twice_keeps_its_first_sample() {
        let text = "# HELP a A.\n# TYPE a gauge\na{p=\"1\"} 1\na{p=\"1\"} 2\na{p=\"2\"} 3\n";
        assert_eq!(
            group_families(text),
            "# HELP a A.\n# TYPE a gauge\na{p=\"1\"} 1\na{p=\"2\"} 3\n"
        );
    }

    #[test]
    fn latency_summary_reports_quantiles() {
        let l = Latency::default();
        for us in 1..=100 {
            l.record_us(us * 1000);
        }
        let (count, p50, p99, max) = l.summary();
        assert_eq!(count, 100);
        assert!((49_000..=51_000).contains(&p50), "{p50}");
        assert!((98_000..=100_100).contains(&p99), "{p99}");
        assert!((99_000..=100_100).contains(&max), "{max}");
    }
}
