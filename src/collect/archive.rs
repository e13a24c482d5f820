//! A partition's archive on disk, and recovery: what a crash can leave
//! behind is removed, and nothing else. Before collect writes the first
//! file of a partition after an assignment, it reads the partition's file
//! names once (not per file: the cost is once per assignment) and decides,
//! from the first offset the group hands it:
//!
//! - temporary files (`.tmp`) were never durable: removed;
//! - pending files (durable, renamed before their commit was confirmed)
//!   below the first offset were committed: promoted to their final names;
//!   from the first offset on they were not (those offsets are being read
//!   again): removed, so a re-run rewrites rather than duplicates;
//! - final files are never touched.
//!
//! An offset regression — the first offset at or below what final files of
//! the current era already hold (topic recreated, offsets reset to
//! earliest, log truncated after an unclean election) — starts a new era:
//! pending files are all kept (promoted: their offsets will not come back
//! as they were) and new files are named `…-e<era>` so they cannot clash
//! with the old ones. The same applies when offsets go back while a
//! partition is being read (`consumer`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::files::{Pending, Span, is_temp, parse_name, parse_pending};
use crate::config::valid_topic;

/// A file of the partition found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Temp(PathBuf),
    Pending(PathBuf, Span),
    Final(Span),
}

/// What recovery does, and where the partition's archive then stands.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub remove: Vec<PathBuf>,
    pub promote: Vec<Pending>,
    /// The era new files get.
    pub era: u32,
    /// The highest offset filed in that era.
    pub high: Option<i64>,
    /// The first offset went back: a new era starts.
    pub regression: bool,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        self.path == o.path && self.span == o.span
    }
}
impl Eq for Pending {}

/// Decides recovery for a partition whose first message after an
/// assignment has offset `first` (pure).
pub fn plan(found: &[Found], first: i64) -> Plan {
    let spans = || {
        found.iter().filter_map(|f| match f {
            Found::Pending(_, s) | Found::Final(s) => Some(*s),
            Found::Temp(_) => None,
        })
    };
    let era = spans().map(|s| s.era).max().unwrap_or(0);
    let final_high = found
        .iter()
        .filter_map(|f| match f {
            Found::Final(s) if s.era == era => Some(s.last),
            _ => None,
        })
        .max();
    let regression = final_high.is_some_and(|h| first <= h);
    let mut p = Plan {
        era: era + u32::from(regression),
        regression,
        ..Plan::default()
    };
    for f in found {
        match f {
            Found::Temp(path) => p.remove.push(path.clone()),
            // Not committed, and being read again now.
            Found::Pending(path, s) if !regression && s.era == era && s.first >= first => {
                p.remove.push(path.clone())
            }
            Found::Pending(path, s) => p.promote.push(Pending {
                path: path.clone(),
                span: *s,
            }),
            Found::Final(_) => {}
        }
    }
    if !regression {
        p.high = final_high
            .into_iter()
            .chain(
                p.promote
                    .iter()
                    .filter(|f| f.span.era == era)
                    .map(|f| f.span.last),
            )
            .max();
    }
    p
}

/// The pending files below `committed`, the group's committed offset: they
/// were committed, and only their rename was cut short (pure).
pub fn committed_pending(found: &[Found], committed: i64) -> Vec<Pending> {
    found
        .iter()
        .filter_map(|f| match f {
            Found::Pending(path, s) if s.last < committed => Some(Pending {
                path: path.clone(),
                span: *s,
            }),
            _ => None,
        })
        .collect()
}

/// Every file of `topic`'s `partition` under `root/<dir_topic>/<date>/`.
pub fn scan(root: &Path, dir_topic: &str, topic: &str, partition: i32) -> io::Result<Vec<Found>> {
    let mut out = Vec::new();
    if !valid_topic(dir_topic) {
        return Ok(out);
    }
    let dates = match fs::read_dir(root.join(dir_topic)) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for date in dates {
        let date = date?;
        if !date.file_type()?.is_dir() {
            continue;
        }
        for f in fs::read_dir(date.path())? {
            let f = f?;
            let name = f.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_temp(name, topic, partition) {
                out.push(Found::Temp(f.path()));
            } else if let Some(s) = parse_pending(name, topic).filter(|s| s.partition == partition)
            {
                out.push(Found::Pending(f.path(), s));
            } else if let Some(s) = parse_name(name, topic).filter(|s| s.partition == partition) {
                out.push(Found::Final(s));
            }
        }
    }
    Ok(out)
}

/// Carries out `plan`'s removals and promotions; returns the pending files
/// that could not be promoted (kept pending, tried again at the next commit).
pub fn apply(plan: &mut Plan) -> io::Result<Vec<Pending>> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for path in plan.remove.drain(..) {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(d) = path.parent()
            && !dirs.iter().any(|x| x == d)
        {
            dirs.push(d.to_path_buf());
        }
    }
    for d in dirs {
        super::files::sync_dir(&d)?;
    }
    Ok(super::files::promote_all(std::mem::take(&mut plan.promote))
        .into_iter()
        .map(|(f, _)| f)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(first: i64, last: i64, era: u32) -> Span {
        Span {
            partition: 0,
            first,
            last,
            era,
        }
    }
    fn pending(first: i64, last: i64, era: u32) -> Found {
        Found::Pending(
            PathBuf::from(format!("p{first}-{era}")),
            s(first, last, era),
        )
    }

    #[test]
    fn after_a_crash_uncommitted_pending_files_go_and_committed_ones_stay() {
        let found = vec![
            Found::Final(s(0, 99, 0)),
            pending(100, 199, 0), // committed (first offset 300), not yet promoted
            pending(200, 299, 0),
            pending(300, 399, 0), // not committed: 300.. come again
            pending(400, 420, 0),
            Found::Temp(PathBuf::from("t")),
        ];
        let p = plan(&found, 300);
        assert!(!p.regression);
        assert_eq!(p.era, 0);
        assert_eq!(
            p.remove,
            vec![
                PathBuf::from("p300-0"),
                PathBuf::from("p400-0"),
                PathBuf::from("t")
            ]
        );
        let promoted: Vec<i64> = p.promote.iter().map(|f| f.span.first).collect();
        assert_eq!(promoted, vec![100, 200]);
        assert_eq!(p.high, Some(299));
    }

    #[test]
    fn offsets_that_went_back_start_a_new_era_and_keep_everything() {
        let found = vec![Found::Final(s(0, 99, 0)), pending(100, 109, 0)];
        let p = plan(&found, 0);
        assert!(p.regression);
        assert_eq!((p.era, p.high), (1, None));
        assert!(p.remove.is_empty(), "nothing durable is removed");
        assert_eq!(
            p.promote.len(),
            1,
            "the pending file of the old era is kept"
        );
        // Once more, from era 1.
        let found = vec![Found::Final(s(0, 99, 0)), Found::Final(s(0, 9, 1))];
        let p = plan(&found, 5);
        assert_eq!((p.era, p.regression), (2, true));
        // Old eras' finals never make a regression by themselves.
        let p = plan(&found, 10);
        assert_eq!((p.era, p.regression, p.high), (1, false, Some(9)));
    }

    #[test]
    fn pending_files_below_the_committed_offset_are_the_committed_ones() {
        let found = vec![
            Found::Final(s(0, 99, 0)),
            pending(100, 199, 0),
            pending(200, 299, 0),
            Found::Temp(PathBuf::from("t")),
        ];
        let c: Vec<i64> = committed_pending(&found, 200)
            .iter()
            .map(|f| f.span.first)
            .collect();
        assert_eq!(c, vec![100]);
        assert!(committed_pending(&found, 100).is_empty());
    }

    #[test]
    fn an_empty_archive_starts_at_era_zero() {
        let p = plan(&[], 42);
        assert_eq!(p, Plan::default());
    }
}
