//! Panics surface. A process-wide hook logs each one as ERROR (thread,
//! place, message) and counts it for `/metrics`; a [`Watch`] held by a
//! thread that must not die turns its death into a fatal error of the
//! process (non-zero exit, so systemd restarts it). A panic caught on
//! purpose (one request's handler) is logged and counted, not fatal.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::Sender;

/// Panics since start, caught or not.
static PANICS: AtomicU64 = AtomicU64::new(0);

pub fn count() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// Installs the hook (once, at start of the process).
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        log::error!(target: "kbridge::panic", "thread {name} panicked at {place}: {what}");
    }));
}

/// Held by a long-running thread: if the thread unwinds, the process is
/// told to stop (the role can no longer make progress).
pub struct Watch {
    name: String,
    fatal: Sender<String>,
}

impl Watch {
    pub fn new(name: impl Into<String>, fatal: Sender<String>) -> Watch {
        Watch {
            name: name.into(),
            fatal,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self
                .fatal
                .try_send(format!("thread {} died of a panic", self.name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_thread_that_panics_reports_fatal() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let t = std::thread::Builder::new()
            .name("watched".into())
            .spawn(move || {
                let _w = Watch::new("watched", tx);
                panic!("boom");
            })
            .unwrap();
        assert!(t.join().is_err());
        assert_eq!(rx.try_recv().unwrap(), "thread watched died of a panic");
        let (tx, rx) = crossbeam_channel::bounded::<String>(1);
        std::thread::spawn(move || {
            let _w = Watch::new("calm", tx);
        })
        .join()
        .unwrap();
        assert!(rx.try_recv().is_err(), "a normal end is not fatal");
    }
}
