//! Logging: `log` + `simplelog` to stderr (journald) and, when `[log] file`
//! is set, appended to that file. Each line carries the time, level, thread
//! and target (the component's module path, e.g. `kbridge::ingest`).
//!
//! Levels change while the process runs: a default and per-component levels
//! (`info,kbridge::deliver=debug`), from `[log] level`, `--log-level`,
//! `PUT /log-level` on the admin server, and SIGUSR1 / SIGUSR2 (one step
//! more / less verbose). Every change is logged. SIGHUP reopens the log file
//! (logrotate renames it; nothing is truncated under a writer).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use anyhow::Context as _;
use log::{LevelFilter, Log, Metadata, Record};
use simplelog::{CombinedLogger, ConfigBuilder, SharedLogger, ThreadLogMode, WriteLogger};

/// A default level and per-target levels (longest matching prefix wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub default: LevelFilter,
    pub targets: Vec<(String, LevelFilter)>,
}

impl Spec {
    /// Parses `info` or `warn,kbridge::deliver=debug,kbridge::kafka=off`.
    pub fn parse(s: &str) -> Result<Spec, String> {
        let mut spec = Spec {
            default: LevelFilter::Info,
            targets: Vec::new(),
        };
        let mut default_seen = false;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let level = |v: &str| {
                v.trim().parse::<LevelFilter>().map_err(|_| {
                    format!("{v:?} is not a level (off, error, warn, info, debug, trace)")
                })
            };
            match part.split_once('=') {
                Some((target, v)) => {
                    let target = target.trim();
                    if target.is_empty() || target.contains(char::is_whitespace) {
                        return Err(format!("{part:?}: expected component=level"));
                    }
                    spec.targets.push((target.to_string(), level(v)?));
                }
                None if !default_seen => {
                    spec.default = level(part)?;
                    default_seen = true;
                }
                None => return Err(format!("{part:?}: only one default level")),
            }
        }
        if !default_seen && spec.targets.is_empty() {
            return Err("empty: expected a level such as info".into());
        }
        // Longest prefix first, so the most specific wins.
        spec.targets.sort_by_key(|t| std::cmp::Reverse(t.0.len()));
        Ok(spec)
    }

    pub fn level_for(&self, target: &str) -> LevelFilter {
        self.targets
            .iter()
            .find(|(t, _)| {
                target == t
                    || (target.starts_with(t.as_str()) && target[t.len()..].starts_with("::"))
            })
            .map_or(self.default, |(_, l)| *l)
    }

    fn max(&self) -> LevelFilter {
        self.targets
            .iter()
            .map(|(_, l)| *l)
            .chain([self.default])
            .max()
            .unwrap_or(LevelFilter::Info)
    }

    /// One step more (`+1`) or less (`-1`) verbose, for every level.
    pub fn step(&self, by: i32) -> Spec {
        let all = [
            LevelFilter::Off,
            LevelFilter::Error,
            LevelFilter::Warn,
            LevelFilter::Info,
            LevelFilter::Debug,
            LevelFilter::Trace,
        ];
        let shift = |l: LevelFilter| {
            let i = all.iter().position(|x| *x == l).unwrap_or(3) as i32;
            all[(i + by).clamp(0, 5) as usize]
        };
        Spec {
            default: shift(self.default),
            targets: self
                .targets
                .iter()
                .map(|(t, l)| (t.clone(), shift(*l)))
                .collect(),
        }
    }
}

impl std::fmt::Display for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.default.as_str().to_lowercase())?;
        for (t, l) in self.targets.iter().rev() {
            write!(f, ",{t}={}", l.as_str().to_lowercase())?;
        }
        Ok(())
    }
}

/// The log file, reopened on the next write after [`reopen`].
struct Reopening {
    path: PathBuf,
    file: Mutex<File>,
    reopen: AtomicBool,
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[derive(Clone)]
struct FileHandle(Arc<Reopening>);

impl Write for FileHandle {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = &self.0;
        let mut f = r
            .file
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        if r.reopen.swap(false, Ordering::AcqRel)
            && let Ok(new) = open(&r.path)
        {
            *f = new;
        }
        f.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0
            .file
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .flush()
    }
}

struct Dynamic {
    inner: Box<CombinedLogger>,
}

static SPEC: OnceLock<RwLock<Spec>> = OnceLock::new();
static FILE: OnceLock<Arc<Reopening>> = OnceLock::new();

impl Log for Dynamic {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        SPEC.get()
            .and_then(|s| s.read().ok().map(|s| m.level() <= s.level_for(m.target())))
            .unwrap_or(true)
    }
    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match one_line(&record.args().to_string()) {
            None => self.inner.log(record),
            Some(clean) => self.inner.log(
                &Record::builder()
                    .metadata(record.metadata().clone())
                    .args(format_args!("{clean}"))
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            ),
        }
    }
    fn flush(&self) {
        self.inner.flush();
    }
}

/// A message with its control characters escaped (`\n` as `\\n`), when it
/// has any: what a registry, an endpoint or a record put in a message can
/// never start a line of its own in the log (a forged entry).
fn one_line(text: &str) -> Option<String> {
    if !text.contains(char::is_control) {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c.is_control() {
            true => out.extend(c.escape_default()),
            false => out.push(c),
        }
    }
    Some(out)
}

/// Installs the logger with `level` (a [`Spec`]) and, optionally, a file.
pub fn init(level: &str, file: Option<&Path>) -> anyhow::Result<()> {
    let spec = Spec::parse(level).map_err(|e| anyhow::anyhow!("log level {level:?}: {e}"))?;
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(LevelFilter::Error)
        .set_thread_mode(ThreadLogMode::Names)
        .set_target_level(LevelFilter::Error)
        .set_location_level(LevelFilter::Off)
        .build();
    // The inner loggers pass everything; `Dynamic` filters per target.
    let mut loggers: Vec<Box<dyn SharedLogger>> = vec![WriteLogger::new(
        LevelFilter::Trace,
        config.clone(),
        std::io::stderr(),
    )];
    if let Some(path) = file {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create log directory {}", dir.display()))?;
        }
        let f = open(path).with_context(|| format!("cannot open log file {}", path.display()))?;
        let r = Arc::new(Reopening {
            path: path.to_path_buf(),
            file: Mutex::new(f),
            reopen: AtomicBool::new(false),
        });
        let _ = FILE.set(r.clone());
        loggers.push(WriteLogger::new(LevelFilter::Trace, config, FileHandle(r)));
    }
    let max = spec.max();
    SPEC.set(RwLock::new(spec))
        .map_err(|_| anyhow::anyhow!("logger already initialised"))?;
    log::set_boxed_logger(Box::new(Dynamic {
        inner: CombinedLogger::new(loggers),
    }))
    .context("logger already initialised")?;
    log::set_max_level(max);
    Ok(())
}

/// The levels now, as text.
pub fn current() -> String {
    SPEC.get()
        .and_then(|s| s.read().ok().map(|s| s.to_string()))
        .unwrap_or_else(|| "info".into())
}

fn replace(new: Spec, why: &str) -> String {
    let Some(lock) = SPEC.get() else {
        return new.to_string();
    };
    let old = lock.read().map(|s| s.to_string()).unwrap_or_default();
    let text = new.to_string();
    log::set_max_level(new.max().max(LevelFilter::Warn));
    if let Ok(mut s) = lock.write() {
        *s = new.clone();
    }
    // Said at WARN so that it shows at any level but off and error.
    log::warn!(target: "kbridge::logging", "log level changed from {old} to {text} ({why})");
    log::set_max_level(new.max());
    text
}

/// Sets the levels from a [`Spec`] text; returns the new levels.
pub fn set(level: &str, why: &str) -> Result<String, String> {
    let spec = Spec::parse(level)?;
    Ok(replace(spec, why))
}

/// One step more (`+1`, SIGUSR1) or less (`-1`, SIGUSR2) verbose.
pub fn step(by: i32, why: &str) -> String {
    let now = SPEC
        .get()
        .and_then(|s| s.read().ok().map(|s| s.clone()))
        .unwrap_or(Spec {
            default: LevelFilter::Info,
            targets: vec![],
        });
    replace(now.step(by), why)
}

/// Reopens the log file at its next write (SIGHUP, after logrotate).
pub fn reopen() {
    if let Some(f) = FILE.get() {
        f.reopen.store(true, Ordering::Release);
        log::info!(target: "kbridge::logging", "log file {} reopened (SIGHUP)", f.path.display());
    }
}

/// A log line that repeats is written at most once per 10 s, with the
/// count of events since (STYLE 12): [`Every::hit`] counts one event and
/// says when to write.
#[derive(Debug, Default)]
pub struct Every {
    /// Seconds since the epoch of the last line written.
    last: std::sync::atomic::AtomicU64,
    unlogged: std::sync::atomic::AtomicU64,
}

impl Every {
    /// Counts an event; `Some(n)` when a line is due now, `n` events
    /// since the last one (this one included).
    pub fn hit(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let n = self.unlogged.fetch_add(1, Relaxed) + 1;
        let last = self.last.load(Relaxed);
        if (now >= last + 10 || last == 0)
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            self.unlogged.store(0, Relaxed);
            return Some(n);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_with_control_characters_are_kept_on_one_line() {
        assert_eq!(one_line("plain, with ünïcode"), None);
        assert_eq!(
            one_line("a\r\nb\tc\u{1b}[31m").as_deref(),
            Some("a\\r\\nb\\tc\\u{1b}[31m")
        );
    }

    #[test]
    fn specs_parse_and_the_longest_prefix_wins() {
        let s =
            Spec::parse("warn, kbridge::deliver=debug ,kbridge::deliver::consumer=trace").unwrap();
        assert_eq!(s.default, LevelFilter::Warn);
        assert_eq!(
            s.level_for("kbridge::deliver::consumer"),
            LevelFilter::Trace
        );
        assert_eq!(s.level_for("kbridge::deliver::sender"), LevelFilter::Debug);
        assert_eq!(s.level_for("kbridge::deliverx"), LevelFilter::Warn);
        assert_eq!(s.level_for("kbridge::ingest"), LevelFilter::Warn);
        assert_eq!(s.max(), LevelFilter::Trace);
        assert_eq!(
            s.to_string(),
            "warn,kbridge::deliver=debug,kbridge::deliver::consumer=trace"
        );
        for bad in ["", "loud", "info,debug", "=debug", "kbridge::x=loud"] {
            assert!(Spec::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Spec::parse("kbridge::x=debug").unwrap().default,
            LevelFilter::Info
        );
    }

    #[test]
    fn steps_move_every_level_and_stop_at_the_ends() {
        let s = Spec::parse("info,kbridge::kafka=error").unwrap();
        assert_eq!(s.step(1).to_string(), "debug,kbridge::kafka=warn");
        assert_eq!(s.step(-1).to_string(), "warn,kbridge::kafka=off");
        assert_eq!(s.step(9).to_string(), "trace,kbridge::kafka=trace");
    }
}
