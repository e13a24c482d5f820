//! Broker events under collect: the archive is append-only. A topic deleted
//! and created again, a group reset to the earliest offsets, records
//! deleted from a log's head: every file already filed stays on disk,
//! byte for byte, and the records read afterwards land exactly once, under
//! names that cannot clash with the old ones (`-e<era>` once offsets went
//! back).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::collect::{Collect, collect_ini, id_of, stored};
use crate::util::admin::{delete_records, delete_topic, reset_group_to_earliest};
use crate::util::*;

/// Every final file: path → bytes.
fn snapshot(root: &Path, topic: &str) -> BTreeMap<PathBuf, Vec<u8>> {
    let (files, _) = stored(root, topic);
    files
        .iter()
        .map(|f| (f.path().to_path_buf(), std::fs::read(f.path()).unwrap()))
        .collect()
}

/// Ids filed per era, each with its count.
fn ids_by_era(root: &Path, topic: &str) -> BTreeMap<u32, BTreeMap<String, usize>> {
    let mut out: BTreeMap<u32, BTreeMap<String, usize>> = BTreeMap::new();
    for f in stored(root, topic).0 {
        for l in &f.lines {
            *out.entry(f.era).or_default().entry(id_of(l)).or_default() += 1;
        }
    }
    out
}

fn filed(root: &Path, topic: &str) -> usize {
    stored(root, topic).0.iter().map(|f| f.lines.len()).sum()
}

fn once(prefix: &str, range: std::ops::Range<usize>) -> BTreeMap<String, usize> {
    range.map(|i| (format!("{prefix}-{i}"), 1)).collect()
}

fn assert_kept(before: &BTreeMap<PathBuf, Vec<u8>>, root: &Path, topic: &str) {
    let now = snapshot(root, topic);
    for (path, bytes) in before {
        assert_eq!(
            now.get(path),
            Some(bytes),
            "{} changed or vanished",
            path.display()
        );
    }
}

/// A one-partition topic whose archive a collect run filed and stopped on.
struct Filed {
    b: String,
    topic: String,
    dir: TempDir,
    group: String,
    ini: String,
}

impl Filed {
    /// `n` events `<prefix>-<i>` in a new topic, filed by collect (with
    /// `extra` settings), which then stopped.
    fn new(name: &str, prefix: &str, n: usize, extra: &str) -> Filed {
        let b = brokers();
        let topic = unique_topic(name);
        create_topic(&b, &topic, 1);
        produce(&b, &topic, &events(prefix, n));
        let dir = TempDir::new(name);
        let group = unique_topic("g");
        let ini = collect_ini(
            &b,
            &group,
            &topic,
            &dir.0,
            &format!("idle_close_s = 1\n{extra}"),
        );
        let f = Filed {
            b,
            topic,
            dir,
            group,
            ini,
        };
        f.collect_until(n, Duration::from_secs(60));
        f
    }

    /// Runs collect again until `n` lines are filed in all, then stops it.
    fn collect_until(&self, n: usize, timeout: Duration) {
        let mut c = Collect::start(&self.ini);
        wait_until(&format!("{n} lines filed"), timeout, || {
            filed(&self.dir.0, &self.topic) >= n
        });
        assert!(c.stop());
    }
}

#[test]
fn a_topic_deleted_and_created_again_keeps_every_filed_line_and_files_the_new_ones_once() {
    let b = brokers();
    let topic = unique_topic("ev-recreate");
    create_topic(&b, &topic, 1);
    produce(&b, &topic, &events("old", 100));
    let dir = TempDir::new("ev-recreate");
    let c = Collect::start(&collect_ini(
        &b,
        &unique_topic("g"),
        &topic,
        &dir.0,
        "idle_close_s = 1\nrotate_bytes = 2000",
    ));
    wait_until("the 100 filed", Duration::from_secs(60), || {
        filed(&dir.0, &topic) >= 100
    });
    let before = snapshot(&dir.0, &topic);

    delete_topic(&b, &topic);
    create_topic(&b, &topic, 1);
    produce(&b, &topic, &events("new", 10));
    wait_until("the 10 new filed", Duration::from_secs(90), || {
        filed(&dir.0, &topic) >= 110
    });
    assert!(metric(&c.metrics(), "kbridge_collect_offset_regressions_total") >= 1.0);
    drop(c);

    assert_kept(&before, &dir.0, &topic);
    let eras = ids_by_era(&dir.0, &topic);
    assert_eq!(
        eras.get(&0),
        Some(&once("old", 0..100)),
        "the old records, once"
    );
    assert_eq!(
        eras.get(&1),
        Some(&once("new", 0..10)),
        "the new ones, once, in era 1"
    );
}

#[test]
fn a_group_reset_to_earliest_files_again_in_a_new_era_and_erases_nothing() {
    let f = Filed::new("ev-reset", "old", 50, "rotate_bytes = 1500");
    let (b, topic, dir) = (&f.b, &f.topic, &f.dir);
    let before = snapshot(&dir.0, topic);

    reset_group_to_earliest(b, &f.group, topic);
    produce(b, topic, &events("new", 10));
    f.collect_until(110, Duration::from_secs(90));

    assert_kept(&before, &dir.0, topic);
    let eras = ids_by_era(&dir.0, topic);
    assert_eq!(eras.get(&0), Some(&once("old", 0..50)));
    let mut again = once("old", 0..50);
    again.extend(once("new", 0..10));
    assert_eq!(
        eras.get(&1),
        Some(&again),
        "what the reset asked for, once each"
    );
}

#[test]
fn records_deleted_below_the_committed_offset_and_beyond_leave_the_archive_whole() {
    let f = Filed::new("ev-truncate", "a", 30, "");
    let (b, topic, dir) = (&f.b, &f.topic, &f.dir);
    let before = snapshot(&dir.0, topic);

    // 30 more, then the log's head is cut at 45: 30..44 are gone before
    // collect could read them, and its committed offset (30) is out of range.
    produce(b, topic, &events("b", 30));
    delete_records(b, topic, 0, 45);
    f.collect_until(45, Duration::from_secs(90));

    assert_kept(&before, &dir.0, topic);
    let eras = ids_by_era(&dir.0, topic);
    let mut want = once("a", 0..30);
    want.extend(once("b", 15..30));
    assert_eq!(eras.get(&0), Some(&want), "no offset went back: one era");
    assert_eq!(eras.len(), 1);
    assert_eq!(committed(b, &f.group, topic, 1), vec![60]);
}

#[test]
fn a_crash_between_a_commit_and_the_rename_is_mended_at_the_next_assignment() {
    let f = Filed::new("ev-rename", "r", 10, "");
    let (b, topic, dir) = (&f.b, &f.topic, &f.dir);
    // The state such a crash leaves: the offsets committed, the file still
    // under its pending name. No message comes for the partition again.
    let (files, _) = stored(&dir.0, topic);
    assert_eq!(files.len(), 1);
    let done = files[0].path().to_path_buf();
    let name = done.file_name().unwrap().to_string_lossy().into_owned();
    let pending = done.with_file_name(format!(".{name}.pending"));
    std::fs::rename(&done, &pending).unwrap();
    assert_eq!(committed(b, &f.group, topic, 1), vec![10]);

    let mut c = Collect::start(&f.ini);
    wait_until(
        "the file named final again",
        Duration::from_secs(30),
        || done.exists(),
    );
    assert!(c.stop());
    assert!(!pending.exists());
    crate::collect::assert_exactly(&dir.0, topic, b, 10);
}
