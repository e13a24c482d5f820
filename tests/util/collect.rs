//! The collect role run in the test process ([`Collect`]), its config
//! builder, and readers of what it filed: every file of a topic
//! ([`stored`]) and the check that each produced record landed once, in
//! partition order ([`assert_exactly`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::*;

/// A file of the record directory: its name and its lines.
pub struct Stored {
    pub path: PathBuf,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    /// The offset era of its name (`-e<era>`; 0 without).
    pub era: u32,
    pub lines: Vec<String>,
}

/// Every final file under `root/<topic>/`, read (gzip via `gzip -dc`),
/// sorted by (era, partition, first offset); also names of the files not
/// final yet (temporary, or pending their commit).
pub fn stored(root: &Path, topic: &str) -> (Vec<Stored>, Vec<PathBuf>) {
    let mut files = Vec::new();
    let mut temps = Vec::new();
    let Ok(dates) = std::fs::read_dir(root.join(topic)) else {
        return (files, temps);
    };
    for d in dates.flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") || name.ends_with(".pending") {
                temps.push(f.path());
                continue;
            }
            let stem = name.trim_end_matches(".gz").trim_end_matches(".ndjson");
            let (stem, era) = match stem.rsplit_once("-e") {
                Some((s, e)) if e.parse::<u32>().is_ok() => (s, e.parse().unwrap()),
                _ => (stem, 0),
            };
            let mut parts = stem.rsplitn(4, '-');
            let last: i64 = parts.next().unwrap().parse().unwrap();
            let first: i64 = parts.next().unwrap().parse().unwrap();
            let partition: i32 = parts.next().unwrap().parse().unwrap();
            let text = if name.ends_with(".gz") {
                let out = Command::new("gzip")
                    .arg("-dc")
                    .arg(f.path())
                    .output()
                    .unwrap();
                assert!(out.status.success(), "gzip -dc {name}");
                String::from_utf8(out.stdout).unwrap()
            } else {
                std::fs::read_to_string(f.path()).unwrap()
            };
            assert!(
                text.is_empty() || text.ends_with('\n'),
                "{name}: torn last line"
            );
            files.push(Stored {
                path: f.path(),
                partition,
                first,
                last,
                era,
                lines: text.lines().map(String::from).collect(),
            });
        }
    }
    files.sort_by_key(|s| (s.era, s.partition, s.first));
    (files, temps)
}

impl Stored {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

pub fn id_of(line: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("torn or invalid line {line:?}: {e}"));
    v["id"]
        .as_str()
        .or_else(|| v["value"]["id"].as_str())
        .unwrap()
        .to_string()
}

/// Checks: every produced id exactly once on disk, and within each
/// partition in Kafka's order.
pub fn assert_exactly(root: &Path, topic: &str, brokers: &str, n: usize) {
    let recs = read_topic(brokers, topic, n, Duration::from_secs(30));
    let order: HashMap<String, (i32, i64)> = recs
        .iter()
        .map(|r| {
            (
                serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                (r.partition, r.offset),
            )
        })
        .collect();
    let (files, temps) = stored(root, topic);
    assert!(temps.is_empty(), "temporary files left: {temps:?}");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_per_partition: HashMap<i32, i64> = HashMap::new();
    for f in &files {
        for line in &f.lines {
            let id = id_of(line);
            *seen.entry(id.clone()).or_default() += 1;
            if let Some((p, o)) = order.get(&id) {
                assert_eq!(
                    *p, f.partition,
                    "{id} filed under partition {} of {:?}",
                    f.partition, f.path
                );
                assert!(
                    last_per_partition.get(p).is_none_or(|l| l < o),
                    "{id} out of partition order"
                );
                assert!(
                    (f.first..=f.last).contains(o),
                    "{id} at offset {o} outside {:?}",
                    f.path
                );
                last_per_partition.insert(*p, *o);
            }
        }
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(doubled.is_empty(), "stored twice: {doubled:?}");
    let missing: Vec<_> = order.keys().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(seen.len(), n);
}

pub fn collect_ini(brokers: &str, group: &str, topic: &str, dir: &Path, extra: &str) -> String {
    format!(
        "[kafka]\nbrokers = {brokers}\n[admin]\nlisten = 127.0.0.1:{}\n[collect]\ngroups = {group}:{topic}\nrecord_directory = {}\n\
         concurrent_count = 2\nretry_delay_ms = 1000\nshutdown_timeout_ms = 4000\n{extra}\n",
        free_port(),
        dir.display()
    )
}

/// Runs collect on `topic` (a fresh group, `extra` lines in `[collect]`)
/// until it consumed `n` records, checks that `undecodable` of them could
/// not be decoded, stops it and returns every line it filed, in order.
pub fn collected_lines(
    brokers: &str,
    topic: &str,
    extra: &str,
    n: usize,
    undecodable: usize,
) -> Vec<String> {
    let files = TempDir::new("collected");
    let ini = collect_ini(brokers, &unique_topic("gc"), topic, &files.0, extra);
    let mut c = Collect::start(&ini);
    wait_until(
        &format!("collect consumed all {n}"),
        Duration::from_secs(60),
        || metric(&c.metrics(), "kbridge_collect_consumed_total") >= n as f64,
    );
    assert_eq!(
        metric(&c.metrics(), "kbridge_collect_undecodable_total"),
        undecodable as f64
    );
    assert!(c.stop());
    stored(&files.0, topic)
        .0
        .into_iter()
        .flat_map(|f| f.lines)
        .collect()
}

pub struct Collect(Option<kbridge::collect::Handle>);

impl Collect {
    pub fn start(ini: &str) -> Collect {
        init_test_log();
        let c = load_config(ini);
        let (tx, _rx) = crossbeam_channel::bounded(16);
        Collect(Some(
            kbridge::collect::spawn(c.collect.expect("[collect]"), &c.common.kafka, tx).unwrap(),
        ))
    }
    pub fn metrics(&self) -> String {
        let mut s = String::new();
        self.0.as_ref().unwrap().telemetry().prometheus(&mut s);
        s
    }
    pub fn stop(&mut self) -> bool {
        self.0.take().map(|h| h.stop()).unwrap_or(true)
    }
}

impl Drop for Collect {
    fn drop(&mut self) {
        self.stop();
    }
}
