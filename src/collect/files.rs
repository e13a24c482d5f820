//! Record files: names, rotation decisions and dates (pure), and the writer.
//! A file is written under a temporary name (`.<topic>-<p>-<first>.tmp`),
//! then made durable — flushed, fsynced, renamed to its *pending* name
//! (`.<final name>.pending`: durable, not yet committed), directory fsynced
//! — before its offsets may be committed; once the commit is confirmed it
//! is renamed to its final name
//! `<topic>-<p>-<first>-<last>[-e<era>].ndjson[.gz]` (directory fsynced
//! again). Final files are never deleted or rewritten: only temporary and
//! pending files are what a crash can leave behind (see `archive`). New
//! directories are fsynced into their parents.

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

/// Where a file's lines sit in its partition: offsets `first..=last` of
/// offset era `era` (0 until the partition's offsets first went back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    pub era: u32,
}

pub fn final_name(topic: &str, s: Span, gzip: bool) -> String {
    let era = if s.era == 0 {
        String::new()
    } else {
        format!("-e{}", s.era)
    };
    let ext = extension(gzip);
    format!("{topic}-{}-{}-{}{era}.{ext}", s.partition, s.first, s.last)
}

/// The name a durable file has until its offsets are committed.
pub fn pending_name(final_name: &str) -> String {
    format!(".{final_name}.pending")
}

fn temp_name(topic: &str, partition: i32, first: i64) -> String {
    format!(".{topic}-{partition}-{first}.tmp")
}

/// The span of a final file name of `topic`, or `None`.
pub fn parse_name(name: &str, topic: &str) -> Option<Span> {
    let stem = name
        .strip_suffix(".ndjson.gz")
        .or_else(|| name.strip_suffix(".ndjson"))?;
    let rest = stem.strip_prefix(topic)?.strip_prefix('-')?;
    let mut parts = rest.split('-');
    let partition = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    let era = match parts.next() {
        None => 0,
        Some(e) => e.strip_prefix('e')?.parse().ok().filter(|e| *e > 0)?,
    };
    parts.next().is_none().then_some(Span {
        partition,
        first,
        last,
        era,
    })
}

/// The span of a pending file name of `topic`, or `None`.
pub fn parse_pending(name: &str, topic: &str) -> Option<Span> {
    parse_name(name.strip_prefix('.')?.strip_suffix(".pending")?, topic)
}

/// Is `name` a temporary file of `topic`'s `partition`?
pub fn is_temp(name: &str, topic: &str, partition: i32) -> bool {
    name.strip_prefix(&format!(".{topic}-{partition}-"))
        .and_then(|r| r.strip_suffix(".tmp"))
        .is_some_and(|first| first.parse::<i64>().is_ok())
}

/// fsyncs a directory (its entries: a rename or a new file in it).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `root/<parts…>`, creating what is missing; each new directory is
/// fsynced into its parent, so a crash cannot lose the path to a file
/// made durable in it.
pub fn durable_dirs(root: &Path, parts: &[&str]) -> io::Result<PathBuf> {
    // The root itself is the operator's (made and checked at start).
    fs::create_dir_all(root)?;
    let mut dir = root.to_path_buf();
    for p in parts {
        let next = dir.join(p);
        match fs::create_dir(&next) {
            Ok(()) => sync_dir(&dir)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        dir = next;
    }
    Ok(dir)
}

/// A durable file whose offsets are not yet known committed.
#[derive(Debug, Clone)]
pub struct Pending {
    pub path: PathBuf,
    pub span: Span,
}

impl Pending {
    /// Renames it to its final name (the caller fsyncs the directory).
    pub fn promote(&self) -> io::Result<PathBuf> {
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let final_name = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".pending"))
            .ok_or_else(|| io::Error::other(format!("{name} is not a pending file name")))?;
        let to = self.path.with_file_name(final_name);
        fs::rename(&self.path, &to)?;
        Ok(to)
    }

    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

/// Promotes `files`, then fsyncs each of their directories once; returns
/// those that could not be promoted, with the error (tried again later).
pub fn promote_all(files: Vec<Pending>) -> Vec<(Pending, io::Error)> {
    let mut failed = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for f in files {
        match f.promote() {
            Ok(_) => {
                if !dirs.iter().any(|d| d == f.dir()) {
                    dirs.push(f.dir().to_path_buf());
                }
            }
            Err(e) => failed.push((f, e)),
        }
    }
    for d in dirs {
        // A promotion lost in a crash is made again at the next start:
        // the file's offsets are below the committed position (`archive`).
        let _ = sync_dir(&d);
    }
    failed
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
    /// The partition's offset era (see [`Span`]).
    pub era: u32,
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
    /// Opens `.tmp` in `root/<dir_topic>/<date>/`, creating directories
    /// (durably); the file's lines start at offset `first` of era `era`.
    #[allow(clippy::too_many_arguments)] // the coordinates of one file
    pub fn create(
        root: &Path,
        dir_topic: &str,
        topic: &str,
        partition: i32,
        first: i64,
        era: u32,
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
        let dir = durable_dirs(root, &[dir_topic, date])?;
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
            era,
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

    /// Flush, fsync, rename to the pending name, fsync the directory.
    /// On failure nothing of it is left (its offsets are read again or go
    /// to the retry topic), not even a renamed file whose directory entry
    /// might not be durable.
    pub fn close(self) -> io::Result<Pending> {
        let tmp = self.tmp.clone();
        let pending = self.dir.join(pending_name(&final_name(
            &self.topic,
            self.span(),
            self.gzip,
        )));
        self.finish(&pending).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_file(&pending);
        })
    }

    /// Where this file's lines sit.
    pub fn span(&self) -> Span {
        Span {
            partition: self.partition,
            first: self.first,
            last: self.last,
            era: self.era,
        }
    }

    fn finish(mut self, pending: &Path) -> io::Result<Pending> {
        let file = match self.out.take() {
            Some(Out::Plain(w)) => w.into_inner().map_err(|e| e.into_error())?,
            Some(Out::Gzip(g)) => g.finish()?.into_inner().map_err(|e| e.into_error())?,
            None => return Err(io::Error::other("file already closed")),
        };
        file.sync_all()?;
        drop(file);
        fs::rename(&self.tmp, pending)?;
        sync_dir(&self.dir)?;
        Ok(Pending {
            path: pending.to_path_buf(),
            span: self.span(),
        })
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
#[path = "files_tests.rs"]
mod tests;
