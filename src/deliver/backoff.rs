//! The endpoint-wide gate: how many calls an endpoint gets at once, and
//! when. Per-message backoff alone turns a 429 into a flood (every waiting
//! message retries on its own schedule), so the endpoint is slowed as a
//! whole, the way Hermes' slow mode and Vector's adaptive concurrency do:
//!
//! - `Retry-After` on a status that is retried closes the gate for that
//!   long (capped at `backoff_max_ms`); so do three calls in a row that
//!   signal overload — 429, 503, timeouts, refused or broken connections —
//!   for an exponential backoff from `backoff_initial_ms` (doubling while
//!   it stays sick); one such call halves the calls allowed at once. Other
//!   retried statuses, 500 among them, may be the message's own trouble:
//!   one slows only its message, but three in a row (an endpoint that
//!   fails everything) close the gate the same way;
//! - a gate that opens again lets one call through (the probe); each call
//!   that succeeds doubles the calls allowed at once, up to `max_in_flight`,
//!   and a success ends the doubling of the backoff.
//!
//! Senders wait at the gate holding their message; the channel behind them
//! fills, consumers pause: nothing is fetched while the endpoint is sick,
//! and memory does not grow with the backlog. The decisions are pure
//! ([`GateState`]); [`Gate`] adds the waiting.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::retry::{CallResult, backoff};

/// Failed calls in a row that close the gate without a `Retry-After`.
const STRIKES: u32 = 3;

/// How a call went, for the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The endpoint answered (any status it is not asked to retry).
    Healthy,
    /// Another retried status (500 among them): maybe the message's own
    /// trouble; only a run of them closes the gate.
    Failed,
    /// Overloaded: 408, 429, 503, 504, a call without an answer, or any
    /// retried status with the endpoint's `Retry-After`.
    Sick(Option<Duration>),
}

impl Verdict {
    /// The verdict of `result`, given whether its status is retried: a
    /// retried status with `Retry-After`, 408, 429, 503 and 504 signal an
    /// overloaded endpoint, and so does a call without an answer.
    pub fn of(result: &CallResult, retried: bool) -> Verdict {
        match result {
            CallResult::Status { .. } if !retried => Verdict::Healthy,
            CallResult::Status {
                retry_after: Some(r),
                ..
            } => Verdict::Sick(Some(*r)),
            CallResult::Status {
                status: 408 | 429 | 503 | 504,
                ..
            } => Verdict::Sick(None),
            CallResult::Status { .. } => Verdict::Failed,
            CallResult::Transport(_) => Verdict::Sick(None),
        }
    }
}

/// The gate's state (pure: every decision takes `now`).
#[derive(Debug, Clone)]
pub struct GateState {
    max: usize,
    initial: Duration,
    cap: Duration,
    /// Calls allowed at once now (`max` when healthy).
    limit: usize,
    in_use: usize,
    /// No call starts before this.
    closed_until: Option<Instant>,
    /// Failed calls in a row.
    failures: u32,
    /// Closings in a row without a success between (the backoff exponent).
    closings: u32,
    /// Times the gate closed, for metrics.
    pub closed_total: u64,
}

impl GateState {
    pub fn new(max: usize, initial: Duration, cap: Duration) -> GateState {
        GateState {
            max: max.max(1),
            initial,
            cap,
            limit: max.max(1),
            in_use: 0,
            closed_until: None,
            failures: 0,
            closings: 0,
            closed_total: 0,
        }
    }

    /// How long a call must wait before it may start (`None`: now).
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        if let Some(until) = self.closed_until
            && until > now
        {
            return Some(until - now);
        }
        (self.in_use >= self.limit).then_some(Duration::from_millis(100))
    }

    /// Starts a call if [`GateState::wait`] allows it.
    pub fn try_start(&mut self, now: Instant) -> bool {
        if self.wait(now).is_some() {
            return false;
        }
        self.in_use += 1;
        true
    }

    /// A call ended as `verdict`.
    pub fn finished(&mut self, verdict: Verdict, now: Instant, jitter: f64) {
        self.in_use = self.in_use.saturating_sub(1);
        match verdict {
            Verdict::Healthy => {
                self.failures = 0;
                self.closings = 0;
                self.limit = (self.limit * 2).min(self.max);
            }
            Verdict::Failed => {
                let already = self.closed(now);
                self.failures += 1;
                if !already && self.failures >= STRIKES {
                    let wait = backoff(self.closings + 1, self.initial, self.cap, jitter);
                    self.close(now + wait, already);
                }
            }
            Verdict::Sick(retry_after) => {
                // Calls that were under way when the gate closed add no
                // closing of their own (only a longer Retry-After).
                let already = self.closed(now);
                self.failures += 1;
                if let Some(r) = retry_after {
                    self.close(now + r.min(self.cap), already);
                } else if already {
                } else if self.failures >= STRIKES {
                    let wait = backoff(self.closings + 1, self.initial, self.cap, jitter);
                    self.close(now + wait, already);
                } else {
                    // Fewer calls at once while it struggles.
                    self.limit = (self.limit / 2).max(1);
                }
            }
        }
    }

    fn close(&mut self, until: Instant, already: bool) {
        // A later answer never shortens a closing already decided.
        if self.closed_until.is_none_or(|u| u < until) {
            self.closed_until = Some(until);
        }
        if !already {
            self.closed_total += 1;
            self.closings += 1;
        }
        self.failures = 0;
        self.limit = 1;
    }

    pub fn in_use(&self) -> usize {
        self.in_use
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn closed(&self, now: Instant) -> bool {
        self.closed_until.is_some_and(|u| u > now)
    }
}

/// The gate the senders of one endpoint share.
pub struct Gate {
    state: Mutex<GateState>,
    opened: Condvar,
}

/// A call under way; [`Gate::finished`] ends it.
#[must_use]
pub struct Ticket;

impl Gate {
    pub fn new(max: usize, initial: Duration, cap: Duration) -> Gate {
        Gate {
            state: Mutex::new(GateState::new(max, initial, cap)),
            opened: Condvar::new(),
        }
    }

    /// Waits until a call may start; `None` when `give_up(closed)` says so
    /// first (stop, or the work's partition was revoked; `closed`: the
    /// gate is closed now), asked at least every 100 ms.
    pub fn enter(&self, give_up: &dyn Fn(bool) -> bool) -> Option<Ticket> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            if give_up(st.closed(now)) {
                return None;
            }
            if st.try_start(now) {
                return Some(Ticket);
            }
            let wait = st
                .wait(now)
                .unwrap_or_default()
                .min(Duration::from_millis(100));
            st = self
                .opened
                .wait_timeout(st, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Gives `ticket` back without a call.
    pub fn release(&self, _ticket: Ticket) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.in_use = st.in_use.saturating_sub(1);
        drop(st);
        self.opened.notify_one();
    }

    /// The call of `ticket` ended as `verdict`.
    pub fn finished(&self, _ticket: Ticket, verdict: Verdict) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.finished(verdict, Instant::now(), fastrand::f64());
        drop(st);
        self.opened.notify_all();
    }

    /// (calls under way, calls allowed at once, closed now, times closed).
    pub fn snapshot(&self) -> (usize, usize, bool, u64) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (
            st.in_use(),
            st.limit(),
            st.closed(Instant::now()),
            st.closed_total,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_millis(100);
    const M: Duration = Duration::from_secs(30);

    fn start_all(g: &mut GateState, now: Instant) -> usize {
        let mut n = 0;
        while g.try_start(now) {
            n += 1;
        }
        n
    }

    #[test]
    fn retry_after_closes_the_gate_then_one_probe_goes_and_success_ramps_up() {
        let t0 = Instant::now();
        let mut g = GateState::new(8, I, M);
        assert_eq!(start_all(&mut g, t0), 8);
        g.finished(Verdict::Sick(Some(Duration::from_secs(30))), t0, 1.0);
        for _ in 0..7 {
            g.finished(Verdict::Sick(Some(Duration::from_secs(30))), t0, 1.0);
        }
        assert_eq!(
            g.wait(t0 + Duration::from_secs(29)),
            Some(Duration::from_secs(1))
        );
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(start_all(&mut g, t1), 1, "one probe when the gate opens");
        g.finished(Verdict::Healthy, t1, 1.0);
        assert_eq!(start_all(&mut g, t1), 2, "then two");
        g.finished(Verdict::Healthy, t1, 1.0);
        g.finished(Verdict::Healthy, t1, 1.0);
        assert_eq!(start_all(&mut g, t1), 8, "4, 8: back to max_in_flight");
        assert_eq!(g.closed_total, 1);
    }

    #[test]
    fn forty_five_seconds_of_429_with_retry_after_30_cost_a_handful_of_calls() {
        let t0 = Instant::now();
        let mut g = GateState::new(8, I, M);
        let mut calls = 0;
        let mut now = t0;
        while now < t0 + Duration::from_secs(45) {
            let n = start_all(&mut g, now);
            calls += n;
            for _ in 0..n {
                g.finished(Verdict::Sick(Some(Duration::from_secs(30))), now, 0.5);
            }
            now += Duration::from_millis(10);
        }
        assert_eq!(calls, 9, "8 at once, then one probe at 30 s");
    }

    #[test]
    fn three_failures_in_a_row_close_with_growing_backoff_and_a_success_resets() {
        let t0 = Instant::now();
        let mut g = GateState::new(4, I, M);
        let fail = |g: &mut GateState, now: Instant| {
            assert!(g.try_start(now));
            g.finished(Verdict::Sick(None), now, 1.0);
        };
        fail(&mut g, t0);
        fail(&mut g, t0);
        assert!(!g.closed(t0), "two failures keep it open");
        assert_eq!(g.limit(), 1, "but halve the calls at once each time");
        fail(&mut g, t0);
        assert_eq!(
            g.wait(t0),
            Some(I),
            "the third closes it for backoff_initial_ms"
        );
        let t1 = t0 + I;
        for _ in 0..3 {
            fail(&mut g, t1);
        }
        assert_eq!(
            g.wait(t1),
            Some(2 * I),
            "three failed probes close it for longer"
        );
        let t2 = t1 + 2 * I;
        assert!(g.try_start(t2));
        g.finished(Verdict::Healthy, t2, 1.0);
        assert_eq!(g.limit(), 2);
        for _ in 0..3 {
            fail(&mut g, t2);
        }
        assert_eq!(
            g.wait(t2),
            Some(I),
            "after a success the backoff starts over"
        );
    }

    #[test]
    fn statuses_that_are_not_retried_count_as_healthy() {
        let ok = CallResult::Status {
            status: 400,
            retry_after: None,
        };
        assert_eq!(Verdict::of(&ok, false), Verdict::Healthy);
        let busy = CallResult::Status {
            status: 503,
            retry_after: None,
        };
        assert_eq!(Verdict::of(&busy, true), Verdict::Sick(None));
        let wait = CallResult::Status {
            status: 429,
            retry_after: Some(M),
        };
        assert_eq!(Verdict::of(&wait, true), Verdict::Sick(Some(M)));
        let fine = CallResult::Status {
            status: 202,
            retry_after: Some(M),
        };
        assert_eq!(Verdict::of(&fine, false), Verdict::Healthy);
        assert_eq!(
            Verdict::of(&CallResult::Transport("reset".into()), true),
            Verdict::Sick(None)
        );
        let own = CallResult::Status {
            status: 500,
            retry_after: None,
        };
        assert_eq!(Verdict::of(&own, true), Verdict::Failed);
    }

    #[test]
    fn a_500_slows_only_its_message_but_a_run_of_them_closes_the_gate() {
        let t0 = Instant::now();
        let mut g = GateState::new(8, I, M);
        for _ in 0..2 {
            assert!(g.try_start(t0));
            g.finished(Verdict::Failed, t0, 1.0);
        }
        assert_eq!(
            (g.limit(), g.closed(t0)),
            (8, false),
            "no halving for a 500"
        );
        assert!(g.try_start(t0));
        g.finished(Verdict::Healthy, t0, 1.0);
        for _ in 0..3 {
            assert!(g.try_start(t0));
            g.finished(Verdict::Failed, t0, 1.0);
        }
        assert_eq!(
            g.wait(t0),
            Some(I),
            "three in a row: an endpoint that fails everything"
        );
    }
}
