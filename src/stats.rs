//! The stats thread and the [`Telemetry`] trait every role implements: once a
//! second each role logs one line per pool (the seed's gauges, channel fill,
//! rates, errors); `/metrics` and `/ready` read the same sources. The thread
//! also sends the systemd watchdog pings.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::info;

use crate::shutdown::StopToken;

/// What a running role tells the stats thread and the admin server.
pub trait Telemetry: Send + Sync {
    /// The role's name, as in logs and labels.
    fn name(&self) -> &'static str;
    /// Lines for the once-a-second log; `elapsed` is the time since the
    /// previous call, for rates.
    fn stats_lines(&self, elapsed: Duration) -> Vec<String>;
    /// Prometheus text for `/metrics`.
    fn prometheus(&self, out: &mut String);
    /// `Err` with the reason when the role cannot do its work now.
    fn readiness(&self) -> Result<(), String>;
    /// The loops that made no progress for `limit` (the watchdog stops
    /// pinging while any does).
    fn stalled(&self, _limit: Duration) -> Option<String> {
        None
    }
    /// The deliver subscription this is (`deliver` for `[deliver]`) and
    /// whether it is suspended; `None` for other roles.
    fn subscription(&self) -> Option<(&str, bool)> {
        None
    }
    /// Suspends (`true`) or resumes a subscription; false for other roles.
    fn set_suspended(&self, _suspended: bool) -> bool {
        false
    }
}

/// Per-second rates of `N` counters, from one reading to the next.
#[derive(Debug)]
pub struct Rates<const N: usize> {
    last: std::sync::Mutex<[u64; N]>,
}

impl<const N: usize> Default for Rates<N> {
    fn default() -> Self {
        Rates {
            last: std::sync::Mutex::new([0; N]),
        }
    }
}

impl<const N: usize> Rates<N> {
    /// The counters' growth per second since the last call (`elapsed` ago).
    pub fn per_second(&self, now: [u64; N], elapsed: Duration) -> [f64; N] {
        let secs = elapsed.as_secs_f64();
        let Ok(mut last) = self.last.lock() else {
            return [0.0; N];
        };
        std::array::from_fn(|i| {
            let delta = now[i].saturating_sub(last[i]);
            last[i] = now[i];
            if secs > 0.0 { delta as f64 / secs } else { 0.0 }
        })
    }
}

/// Starts the thread that logs every role's lines each `interval`.
pub fn spawn(
    roles: Vec<Arc<dyn Telemetry>>,
    interval: Duration,
    stop: StopToken,
    fatal: crossbeam_channel::Sender<String>,
) -> std::io::Result<JoinHandle<()>> {
    let watch = crate::panics::Watch::new("stats", fatal);
    std::thread::Builder::new()
        .name("stats".into())
        .spawn(move || {
            let _watch = watch;
            let mut last = Instant::now();
            let watchdog = crate::systemd::watchdog_period();
            let mut last_ping = Instant::now();
            let mut stalled_before = false;
            while !stop.wait(interval) {
                let elapsed = last.elapsed();
                last = Instant::now();
                for role in &roles {
                    for line in role.stats_lines(elapsed) {
                        info!(target: "kbridge::stats", "{} {line}", role.name());
                    }
                }
                // A ping says every role's loops still turn: a thread stuck
                // for a whole watchdog period stops the pings and systemd
                // restarts the unit. Kafka being away is not a reason to be
                // restarted, so readiness does not gate it.
                if let Some(period) = watchdog {
                    let stalled: Vec<String> = roles
                        .iter()
                        .filter_map(|r| r.stalled(period).map(|s| format!("{}: {s}", r.name())))
                        .collect();
                    if stalled.is_empty() {
                        if stalled_before {
                            info!(target: "kbridge::stats", "every loop turns again; watchdog pings resume");
                            stalled_before = false;
                        }
                        if last_ping.elapsed() >= period / 2 {
                            crate::systemd::watchdog();
                            last_ping = Instant::now();
                        }
                    } else if !stalled_before {
                        log::error!(
                            target: "kbridge::stats",
                            "{}; watchdog pings stop (systemd restarts the unit after WatchdogSec)",
                            stalled.join("; ")
                        );
                        stalled_before = true;
                    }
                }
            }
        })
}
