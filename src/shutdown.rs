//! Stop tokens and the signal thread. A [`Stopper`] fires once; every
//! [`StopToken`] clone sees it, either by polling `is_stopped` or by waiting
//! on it in place of a sleep. SIGTERM/SIGINT arrive on a channel that the app
//! `select!`s on; a second signal means "exit now". The signal thread itself
//! handles SIGUSR1 / SIGUSR2 (log one step more / less verbose) and SIGHUP
//! (reopen the log file, run the reload hooks).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

/// The side that fires.
pub struct Stopper {
    flag: Arc<AtomicBool>,
    // Dropping the sender disconnects every token's receiver at once.
    tx: Mutex<Option<Sender<()>>>,
    rx: Receiver<()>,
}

/// The side that waits; cheap to clone into threads.
#[derive(Clone)]
pub struct StopToken {
    flag: Arc<AtomicBool>,
    rx: Receiver<()>,
}

impl Default for Stopper {
    fn default() -> Self {
        Self::new()
    }
}

impl Stopper {
    pub fn new() -> Stopper {
        let (tx, rx) = crossbeam_channel::bounded(0);
        Stopper {
            flag: Arc::new(AtomicBool::new(false)),
            tx: Mutex::new(Some(tx)),
            rx,
        }
    }

    pub fn token(&self) -> StopToken {
        StopToken {
            flag: self.flag.clone(),
            rx: self.rx.clone(),
        }
    }

    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
    }
}

impl StopToken {
    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Waits up to `d`; true when stopped (early or already).
    pub fn wait(&self, d: Duration) -> bool {
        if self.is_stopped() {
            return true;
        }
        let _ = self.rx.recv_timeout(d);
        self.is_stopped()
    }

    /// A receiver that disconnects on stop, for `select!`.
    pub fn receiver(&self) -> &Receiver<()> {
        &self.rx
    }
}

/// What SIGHUP runs besides reopening the log file (token files, …).
pub type ReloadHook = Box<dyn Fn() + Send + Sync>;

static RELOAD: Mutex<Vec<ReloadHook>> = Mutex::new(Vec::new());

/// Runs `hook` on every SIGHUP.
pub fn on_reload(hook: ReloadHook) {
    if let Ok(mut h) = RELOAD.lock() {
        h.push(hook);
    }
}

/// Starts the signal thread; SIGTERM and SIGINT arrive as their numbers.
pub fn signals() -> anyhow::Result<Receiver<i32>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2])?;
    let (tx, rx) = crossbeam_channel::bounded(4);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                match s {
                    SIGUSR1 => {
                        crate::logging::step(1, "SIGUSR1");
                    }
                    SIGUSR2 => {
                        crate::logging::step(-1, "SIGUSR2");
                    }
                    SIGHUP => {
                        crate::logging::reopen();
                        if let Ok(hooks) = RELOAD.lock() {
                            for h in hooks.iter() {
                                h();
                            }
                        }
                    }
                    _ => {
                        if tx.send(s).is_err() {
                            break;
                        }
                    }
                }
            }
        })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn wait_returns_early_when_stopped_from_another_thread() {
        let s = Stopper::new();
        let t = s.token();
        let start = Instant::now();
        let h = std::thread::spawn(move || t.wait(Duration::from_secs(30)));
        s.stop();
        assert!(h.join().unwrap());
        assert!(start.elapsed() < Duration::from_secs(30));
        assert!(s.token().is_stopped());
    }

    #[test]
    fn wait_times_out_when_not_stopped() {
        let s = Stopper::new();
        assert!(!s.token().wait(Duration::from_millis(10)));
    }
}
