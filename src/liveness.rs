//! Liveness for the systemd watchdog: each loop that must keep turning
//! ticks a [`Heartbeat`]; the stats thread pings WATCHDOG=1 only while every
//! heartbeat of every role is younger than the watchdog period, so a stuck
//! thread (a hung disk under fsync, a deadlock) gets the unit restarted,
//! while an idle one (waiting for work, Kafka away) does not.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// When a loop last turned.
#[derive(Debug)]
pub struct Heartbeat(AtomicU64);

impl Default for Heartbeat {
    fn default() -> Self {
        let h = Heartbeat(AtomicU64::new(0));
        h.tick();
        h
    }
}

impl Heartbeat {
    pub fn tick(&self) {
        self.0
            .store(epoch().elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the last tick.
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.0.load(Ordering::Relaxed));
        epoch().elapsed().saturating_sub(last)
    }
}

/// As [`stalled`], for threads numbered `prefix0`, `prefix1`, … (one per
/// beat of `numbered`) and then the named `others`.
pub fn stalled_numbered<'a>(
    prefix: &str,
    numbered: impl IntoIterator<Item = &'a Heartbeat>,
    others: impl IntoIterator<Item = (&'a str, &'a Heartbeat)>,
    limit: Duration,
) -> Option<String> {
    let numbered = numbered
        .into_iter()
        .enumerate()
        .map(|(i, h)| (format!("{prefix}{i}"), h));
    stalled(
        numbered.chain(others.into_iter().map(|(n, h)| (n.to_string(), h))),
        limit,
    )
}

/// Names of the beats older than `limit`, as `name (N s)`.
pub fn stalled<'a, N: std::fmt::Display>(
    beats: impl IntoIterator<Item = (N, &'a Heartbeat)>,
    limit: Duration,
) -> Option<String> {
    let old: Vec<String> = beats
        .into_iter()
        .filter(|(_, h)| h.age() > limit)
        .map(|(n, h)| format!("{n} (no progress for {} s)", h.age().as_secs()))
        .collect();
    (!old.is_empty()).then(|| old.join(", "))
}

/// Test builds only: `KBRIDGE_DEBUG_STALL=<thread>@<secs>` makes that
/// thread stop turning (until the process stops) `secs` after start, so a
/// test can watch the watchdog pings stop. Release builds do nothing.
pub fn debug_stall(thread: &str, stop: &crate::shutdown::StopToken) {
    #[cfg(debug_assertions)]
    if let Ok(v) = std::env::var("KBRIDGE_DEBUG_STALL")
        && let Some((name, secs)) = v.split_once('@')
        && name == thread
        && secs
            .parse::<u64>()
            .is_ok_and(|s| epoch().elapsed() >= Duration::from_secs(s))
    {
        log::warn!("KBRIDGE_DEBUG_STALL: {thread} stops turning");
        while !stop.wait(Duration::from_secs(1)) {}
    }
    let _ = (thread, stop);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_heartbeats_are_named() {
        let (a, b) = (Heartbeat::default(), Heartbeat::default());
        assert_eq!(
            stalled([("a", &a), ("b", &b)], Duration::from_secs(60)),
            None
        );
        std::thread::sleep(Duration::from_millis(30));
        b.tick();
        let s = stalled([("a", &a), ("b", &b)], Duration::from_millis(20)).unwrap();
        assert!(s.starts_with("a (no progress"), "{s}");
        assert!(!s.contains('b'), "{s}");
    }
}
