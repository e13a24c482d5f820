//! Record files: names, rotation decisions and dates (pure), and the writer
//! that makes a file durable — written under a temporary name, flushed,
//! fsynced, renamed to `<topic>-<partition>-<first>-<last>.ndjson[.gz]`,
//! directory fsynced — before its offsets may be committed. Leftovers of a
//! crashed run (temporary files, and finished files whose offsets were never
//! committed) are removed before the same offsets are written again, so a
//! re-run rewrites rather than duplicates.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::valid_topic;

/// Why a file is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    Size,
    Age,
    Idle,
}

/// The rotation rule: size first, then age since opening, then idleness.
pub fn should_close(
    bytes: u64,
    age: Duration,
    idle: Duration,
    rotate_bytes: u64,
    rotate_age: Duration,
    idle_close: Duration,
) -> Option<Close> {
    if bytes >= rotate_bytes {
        Some(Close::Size)
    } else if age >= rotate_age {
        Some(Close::Age)
    } else if idle >= idle_close {
        Some(Close::Idle)
    } else {
        None
    }
}

/// `yyyy-mm-dd` (UTC) of a Unix time in milliseconds.
pub fn date_of(ms: i64) -> String {
    // Days to civil date (H. Hinnant's algorithm).
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

pub fn extension(gzip: bool) -> &'static str {
    if gzip { "ndjson.gz" } else { "ndjson" }
}

pub fn final_name(topic: &str, partition: i32, first: i64, last: i64, gzip: bool) -> String {
    format!("{topic}-{partition}-{first}-{last}.{}", extension(gzip))
}

fn temp_name(topic: &str, partition: i32, first: i64) -> String {
    format!(".{topic}-{partition}-{first}.tmp")
}

/// (partition, first, last) of a final file name of `topic`, or `None`.
pub fn parse_name(name: &str, topic: &str) -> Option<(i32, i64, i64)> {
    let stem = name
        .strip_suffix(".ndjson.gz")
        .or_else(|| name.strip_suffix(".ndjson"))?;
    let rest = stem.strip_prefix(topic)?.strip_prefix('-')?;
    let mut parts = rest.split('-');
    let p = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((p, first, last))
}

/// Removes what a crashed run left for `topic`/`partition` from `from` on:
/// temporary files and finished files starting at or after `from` (their
/// offsets were never committed, so they are about to be written again).
/// Files of `topic` live in the directory of `dir_topic` (a retry topic's
/// files sit with the topic they came from).
pub fn remove_leftovers(
    root: &Path,
    dir_topic: &str,
    topic: &str,
    partition: i32,
    from: i64,
) -> io::Result<usize> {
    if !valid_topic(dir_topic) {
        return Ok(0);
    }
    let dir = root.join(dir_topic);
    let Ok(dates) = fs::read_dir(&dir) else {
        return Ok(0);
    };
    let tmp_prefix = format!(".{topic}-{partition}-");
    let mut removed = 0;
    for date in dates.flatten() {
        let Ok(files) = fs::read_dir(date.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let stale = (name.starts_with(&tmp_prefix) && name.ends_with(".tmp"))
                || parse_name(&name, topic)
                    .is_some_and(|(p, first, _)| p == partition && first >= from);
            if stale {
                fs::remove_file(f.path())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

enum Out {
    Plain(BufWriter<File>),
    Gzip(flate2::write::GzEncoder<BufWriter<File>>),
}

/// A file being written for one partition.
pub struct OpenFile {
    pub topic: String,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    pub bytes: u64,
    pub opened: Instant,
    pub last_write: Instant,
    dir: PathBuf,
    tmp: PathBuf,
    gzip: bool,
    out: Option<Out>,
    /// `bytes` when write-back was last started (see [`WRITE_BACK_EVERY`]).
    written_back: u64,
}

/// How many line bytes a file takes between two starts of write-back
/// (`sync_file_range`, which does not wait): the fsync before a commit then
/// finds little left to write, so the consumer thread, which waits for it,
/// is not held while a whole file goes to disk.
const WRITE_BACK_EVERY: u64 = 2 << 20;

impl OpenFile {
    /// Opens `.tmp` in `root/<topic>/<date>/`, creating directories.
    pub fn create(
        root: &Path,
        dir_topic: &str,
        topic: &str,
        partition: i32,
        first: i64,
        date: &str,
        gzip: bool,
    ) -> io::Result<OpenFile> {
        // Names become paths: only Kafka topic names (no '/', '.', '..').
        if !valid_topic(dir_topic) || !valid_topic(topic) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{dir_topic:?}/{topic:?} is not a topic name"),
            ));
        }
        let dir = root.join(dir_topic).join(date);
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(temp_name(topic, partition, first));
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)?;
        let w = BufWriter::with_capacity(256 * 1024, f);
        let out = if gzip {
            Out::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::default(),
            ))
        } else {
            Out::Plain(w)
        };
        let now = Instant::now();
        Ok(OpenFile {
            topic: topic.into(),
            partition,
            first,
            last: first - 1,
            bytes: 0,
            opened: now,
            last_write: now,
            dir,
            tmp,
            gzip,
            out: Some(out),
            written_back: 0,
        })
    }

    /// Appends one line (the caller's bytes plus `\n`) for `offset`, read
    /// at `now`.
    pub fn append(&mut self, offset: i64, line: &[u8], now: Instant) -> io::Result<()> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| io::Error::other("file already closed"))?;
        match out {
            Out::Plain(w) => {
                w.write_all(line)?;
                w.write_all(b"\n")?;
            }
            Out::Gzip(w) => {
                w.write_all(line)?;
                w.write_all(b"\n")?;
            }
        }
        self.last = offset;
        self.bytes += line.len() as u64 + 1;
        self.last_write = now;
        if self.bytes - self.written_back >= WRITE_BACK_EVERY {
            self.written_back = self.bytes;
            start_write_back(out);
        }
        Ok(())
    }

    /// Flush, fsync, rename, fsync the directory; returns the final path.
    /// On failure the temporary file is removed (its offsets are read again).
    pub fn close(self) -> io::Result<PathBuf> {
        let tmp = self.tmp.clone();
        self.finish().inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }

    fn finish(mut self) -> io::Result<PathBuf> {
        let file = match self.out.take() {
            Some(Out::Plain(w)) => w.into_inner().map_err(|e| e.into_error())?,
            Some(Out::Gzip(g)) => g.finish()?.into_inner().map_err(|e| e.into_error())?,
            None => return Err(io::Error::other("file already closed")),
        };
        file.sync_all()?;
        drop(file);
        let path = self.dir.join(final_name(
            &self.topic,
            self.partition,
            self.first,
            self.last,
            self.gzip,
        ));
        fs::rename(&self.tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }

    /// Drops the unfinished file (after a write error).
    pub fn discard(mut self) {
        self.out.take();
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Starts writing what the kernel holds of this file to disk, without
/// waiting (durability still comes from the fsync in `close`).
fn start_write_back(out: &Out) {
    use std::os::fd::AsRawFd;
    let fd = match out {
        Out::Plain(w) => w.get_ref().as_raw_fd(),
        Out::Gzip(g) => g.get_ref().get_ref().as_raw_fd(),
    };
    // SAFETY: `fd` is this file's open descriptor; offset 0 and length
    // 0 mean the whole file. A failure only loses the head start.
    unsafe {
        libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_even_with_dashes_in_topics() {
        let n = final_name("web-visits", 3, 100, 199, true);
        assert_eq!(n, "web-visits-3-100-199.ndjson.gz");
        assert_eq!(parse_name(&n, "web-visits"), Some((3, 100, 199)));
        assert_eq!(
            parse_name("web-visits-3-100-199.ndjson", "web-visits"),
            Some((3, 100, 199))
        );
        assert_eq!(parse_name("web-visits-3-100-199.ndjson", "web"), None);
        assert_eq!(parse_name(".web-3-1.tmp", "web"), None);
    }

    #[test]
    fn rotation_by_size_then_age_then_idleness() {
        let s = Duration::from_secs;
        assert_eq!(
            should_close(100, s(1), s(0), 100, s(60), s(10)),
            Some(Close::Size)
        );
        assert_eq!(
            should_close(10, s(60), s(0), 100, s(60), s(10)),
            Some(Close::Age)
        );
        assert_eq!(
            should_close(10, s(5), s(10), 100, s(60), s(10)),
            Some(Close::Idle)
        );
        assert_eq!(should_close(10, s(5), s(1), 100, s(60), s(10)), None);
    }

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(951_782_400_000), "2000-02-29");
        assert_eq!(date_of(1_795_392_000_000 - 1), "2026-11-22");
    }

    #[test]
    fn files_bigger_than_the_write_back_step_keep_every_line() {
        use std::io::Read as _;
        let root = std::env::temp_dir().join(format!("kbridge-wb-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let line = [b'x'; 127];
        let n = 3 * WRITE_BACK_EVERY / 128 + 1;
        for gzip in [false, true] {
            let mut f = OpenFile::create(&root, "t", "t", 0, 0, "2026-01-01", gzip).unwrap();
            for i in 0..n {
                f.append(i as i64, &line, Instant::now()).unwrap();
            }
            assert_eq!(f.written_back, 3 * WRITE_BACK_EVERY);
            let path = f.close().unwrap();
            let mut text = Vec::new();
            let file = File::open(&path).unwrap();
            if gzip {
                flate2::read::GzDecoder::new(file)
                    .read_to_end(&mut text)
                    .unwrap();
            } else {
                (&file).read_to_end(&mut text).unwrap();
            }
            assert_eq!(text.len() as u64, n * 128);
            assert!(
                text.chunks(128)
                    .all(|l| l[..127] == line && l[127] == b'\n')
            );
        }
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn files_become_durable_under_their_final_name_and_leftovers_go() {
        let root = std::env::temp_dir().join(format!("kbridge-files-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let mut f = OpenFile::create(&root, "t", "t", 0, 10, "2026-01-01", false).unwrap();
        f.append(10, b"{\"a\":1}", Instant::now()).unwrap();
        f.append(11, b"{\"a\":2}", Instant::now()).unwrap();
        let path = f.close().unwrap();
        assert_eq!(path, root.join("t/2026-01-01/t-0-10-11.ndjson"));
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"a\":2}\n");
        let g = OpenFile::create(&root, "t", "t", 0, 12, "2026-01-01", true).unwrap();
        drop(g); // a crash: the temporary file stays
        assert_eq!(
            remove_leftovers(&root, "t", "t", 0, 12).unwrap(),
            1,
            "the temporary file"
        );
        assert_eq!(
            remove_leftovers(&root, "t", "t", 0, 10).unwrap(),
            1,
            "the uncommitted finished file"
        );
        assert!(!path.exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
