//! The `Idempotency-Key` window: a repeat of a key seen within the window is
//! answered with the first answer and produces nothing. A repeat that arrives
//! while the first is still in flight waits for it. Failed first attempts
//! (5xx) are forgotten, so a client's retry is produced. Per instance: a load
//! balancer must hash on the header to keep it exact across instances.
//!
//! Pure over the clock and the waiter type `W` (a `tiny_http::Request` in the
//! service), so it is unit-tested without sockets.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A stored answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Arc<str>,
}

enum Entry<W> {
    InFlight {
        body_hash: u64,
        waiters: Vec<W>,
    },
    Done {
        body_hash: u64,
        answer: Answer,
        at: Instant,
    },
}

/// What to do with a request carrying a key.
pub enum Begin<W> {
    /// First time: process it, then call [`Window::finish`].
    New(W),
    /// Seen and answered: send this answer again.
    Replay(Answer, W),
    /// The first is still in flight; the waiter was parked and will be
    /// returned by `finish`.
    Parked,
    /// Same key, different body: refuse (422), the waiter comes back.
    Mismatch(W),
}

pub struct Window<W> {
    ttl: Duration,
    max_keys: usize,
    /// Bytes of the remembered keys and answers; the oldest go first past it.
    max_bytes: usize,
    bytes: usize,
    entries: HashMap<String, Entry<W>>,
    /// Keys of finished entries in finishing order, for expiry.
    order: VecDeque<(Instant, String)>,
}

impl<W> Window<W> {
    pub fn new(ttl: Duration, max_keys: usize, max_bytes: usize) -> Self {
        Window {
            ttl,
            max_keys,
            max_bytes,
            bytes: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn begin(&mut self, key: &str, body_hash: u64, waiter: W, now: Instant) -> Begin<W> {
        self.expire(now);
        match self.entries.get_mut(key) {
            None => {
                self.entries.insert(
                    key.to_string(),
                    Entry::InFlight {
                        body_hash,
                        waiters: Vec::new(),
                    },
                );
                Begin::New(waiter)
            }
            Some(Entry::InFlight { body_hash: h, .. }) | Some(Entry::Done { body_hash: h, .. })
                if *h != body_hash =>
            {
                Begin::Mismatch(waiter)
            }
            Some(Entry::InFlight { waiters, .. }) => {
                waiters.push(waiter);
                Begin::Parked
            }
            Some(Entry::Done { answer, .. }) => Begin::Replay(answer.clone(), waiter),
        }
    }

    /// Records the first attempt's answer; returns the parked waiters, who
    /// get the same answer. 5xx answers are not kept (nothing was stored,
    /// a retry may store it), except 504: the records may be stored, and a
    /// retry must not store them twice.
    pub fn finish(&mut self, key: &str, answer: &Answer, now: Instant) -> Vec<W> {
        let waiters = match self.entries.remove(key) {
            Some(Entry::InFlight { body_hash, waiters }) => {
                if answer.status < 500 || answer.status == 504 {
                    self.bytes += cost(key, answer);
                    self.entries.insert(
                        key.to_string(),
                        Entry::Done {
                            body_hash,
                            answer: answer.clone(),
                            at: now,
                        },
                    );
                    self.order.push_back((now, key.to_string()));
                }
                waiters
            }
            Some(done) => {
                self.entries.insert(key.to_string(), done);
                Vec::new()
            }
            None => Vec::new(),
        };
        self.expire(now);
        waiters
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, key)) = self.order.front() {
            let too_many = self.order.len() > self.max_keys || self.bytes > self.max_bytes;
            if !too_many && now.duration_since(*at) < self.ttl {
                break;
            }
            // An entry re-finished later has a newer `at`; only drop the one
            // this queue slot describes.
            if let Some(Entry::Done {
                at: entry_at,
                answer,
                ..
            }) = self.entries.get(key)
                && entry_at == at
            {
                self.bytes -= cost(key, answer);
                self.entries.remove(key);
            }
            self.order.pop_front();
        }
    }
}

/// One window per token name (one for all when there are no tokens), each
/// with its share of `idempotency_max_keys` and `idempotency_max_bytes`:
/// the limits divided by the token names in force when the name's first
/// key arrives. One client's fresh keys evict only its own.
pub struct Shares<W> {
    ttl: Duration,
    max_keys: usize,
    max_bytes: usize,
    windows: Mutex<HashMap<String, Arc<Mutex<Window<W>>>>>,
}

impl<W> Shares<W> {
    pub fn new(ttl: Duration, max_keys: usize, max_bytes: usize) -> Self {
        Shares {
            ttl,
            max_keys,
            max_bytes,
            windows: Mutex::default(),
        }
    }

    /// The window of `name`, one of `names` (`None` when poisoned).
    pub fn of(&self, name: &str, names: usize) -> Option<Arc<Mutex<Window<W>>>> {
        let mut w = self.windows.lock().ok()?;
        let names = names.max(1);
        let window = w.entry(name.to_string()).or_insert_with(|| {
            Arc::new(Mutex::new(Window::new(
                self.ttl,
                (self.max_keys / names).max(1),
                (self.max_bytes / names).max(1),
            )))
        });
        Some(window.clone())
    }
}

/// What a remembered answer costs in memory, in bytes (with the map's
/// bookkeeping).
fn cost(key: &str, answer: &Answer) -> usize {
    key.len() + answer.body.len() + 96
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Answer {
        Answer {
            status: 200,
            body: Arc::from(body),
        }
    }

    #[test]
    fn repeat_within_window_replays_the_first_answer() {
        let t0 = Instant::now();
        let mut w: Window<u32> = Window::new(Duration::from_secs(60), 100, 1 << 20);
        assert!(matches!(w.begin("k", 1, 0, t0), Begin::New(_)));
        assert!(w.finish("k", &ok("first"), t0).is_empty());
        match w.begin("k", 1, 0, t0 + Duration::from_secs(59)) {
            Begin::Replay(a, _) => assert_eq!(a, ok("first")),
            _ => panic!("expected replay"),
        }
    }

    #[test]
    fn one_name_evicts_only_its_own_keys() {
        let t0 = Instant::now();
        let shares: Shares<u32> = Shares::new(Duration::from_secs(60), 10, 1 << 20);
        let a = shares.of("a", 2).unwrap();
        let b = shares.of("b", 2).unwrap();
        b.lock().unwrap().begin("kept", 1, 0, t0);
        b.lock().unwrap().finish("kept", &ok("b"), t0);
        for i in 0..1000 {
            let mut a = a.lock().unwrap();
            a.begin(&format!("k{i}"), 1, 0, t0);
            a.finish(&format!("k{i}"), &ok("a"), t0);
        }
        assert_eq!(a.lock().unwrap().len(), 5, "half the keys each");
        assert!(matches!(
            b.lock().unwrap().begin("kept", 1, 0, t0),
            Begin::Replay(..)
        ));
        assert!(Arc::ptr_eq(&a, &shares.of("a", 2).unwrap()));
    }

    #[test]
    fn key_expires_after_the_window() {
        let t0 = Instant::now();
        let mut w: Window<u32> = Window::new(Duration::from_secs(60), 100, 1 << 20);
        w.begin("k", 1, 0, t0);
        w.finish("k", &ok("first"), t0);
        assert!(matches!(
            w.begin("k", 1, 0, t0 + Duration::from_secs(61)),
            Begin::New(_)
        ));
    }

    #[test]
    fn concurrent_repeat_waits_for_the_first() {
        let t0 = Instant::now();
        let mut w: Window<u32> = Window::new(Duration::from_secs(60), 100, 1 << 20);
        w.begin("k", 1, 0, t0);
        assert!(matches!(w.begin("k", 1, 7, t0), Begin::Parked));
        assert!(matches!(w.begin("k", 1, 8, t0), Begin::Parked));
        assert_eq!(w.finish("k", &ok("first"), t0), vec![7, 8]);
    }

    #[test]
    fn different_body_under_same_key_is_a_mismatch() {
        let t0 = Instant::now();
        let mut w: Window<u32> = Window::new(Duration::from_secs(60), 100, 1 << 20);
        w.begin("k", 1, 0, t0);
        assert!(matches!(w.begin("k", 2, 9, t0), Begin::Mismatch(9)));
    }

    #[test]
    fn server_errors_are_forgotten_so_retries_produce() {
        let t0 = Instant::now();
        let mut w: Window<u32> = Window::new(Duration::from_secs(60), 100, 1 << 20);
        w.begin("k", 1, 0, t0);
        w.finish(
            "k",
            &Answer {
                status: 503,
                body: Arc::from("down"),
            },
            t0,
        );
        assert!(matches!(w.begin("k", 1, 0, t0), Begin::New(_)));
    }

    #[test]
    fn oldest_keys_are_evicted_past_max_keys() {
        let t0 = Instant::now();
        let mut w: Window<u32> = Window::new(Duration::from_secs(60), 2, 1 << 20);
        for k in ["a", "b", "c"] {
            w.begin(k, 1, 0, t0);
            w.finish(k, &ok(k), t0);
        }
        assert_eq!(w.len(), 2);
        assert!(matches!(w.begin("a", 1, 0, t0), Begin::New(_)));
        assert!(matches!(w.begin("c", 1, 0, t0), Begin::Replay(..)));
    }

    #[test]
    fn oldest_answers_are_evicted_past_max_bytes() {
        let t0 = Instant::now();
        // Room for two answers of 1000 bytes, not three.
        let mut w: Window<u32> = Window::new(Duration::from_secs(60), 100, 2300);
        let big = "x".repeat(1000);
        for k in ["a", "b", "c"] {
            w.begin(k, 1, 0, t0);
            w.finish(k, &ok(&big), t0);
        }
        assert_eq!(w.len(), 2);
        assert!(matches!(w.begin("a", 1, 0, t0), Begin::New(_)));
        assert!(matches!(w.begin("c", 1, 0, t0), Begin::Replay(..)));
    }
}
