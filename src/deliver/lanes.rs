//! Key lanes for `ordering = key` and the requeue thread.
//!
//! A lane exists while a message of its key is in motion; later messages of
//! the key wait in the lane, in offset order, and the next one moves only
//! when the previous is finished (delivered, parked or dropped) — so one
//! key's messages go one at a time while other keys run in parallel.
//! The requeue thread puts messages back into their channel when their retry
//! backoff ends, and moves a lane's next message on; at stop it abandons
//! what waits (those offsets are not committed, so they are redelivered).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::{Refused, Shared, Stage, Work};

#[derive(Default)]
pub struct Lanes {
    busy: Mutex<HashMap<Vec<u8>, VecDeque<Work>>>,
    parked: AtomicUsize,
}

impl Lanes {
    /// Sends `w` on through `send` when its key's lane is free; parks it
    /// behind the lane otherwise, unless the lane holds `cap` already.
    /// `Err` gives the message back: `Lane` for a full lane, `Full` when
    /// the lane was free but `send` refused (full channel).
    #[allow(clippy::result_large_err)] // the caller's own message comes back
    pub fn admit(
        &self,
        w: Work,
        cap: usize,
        send: impl FnOnce(Work) -> Result<(), Work>,
    ) -> Result<(), Refused> {
        let Some(key) = w.msg.key.clone() else {
            return send(w).map_err(Refused::Full);
        };
        let Ok(mut busy) = self.busy.lock() else {
            return Err(Refused::Full(w));
        };
        if let Some(q) = busy.get_mut(&key) {
            if q.len() >= cap {
                return Err(Refused::Lane(w));
            }
            q.push_back(w);
            self.parked.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        send(w).map_err(Refused::Full)?;
        busy.insert(key, VecDeque::new());
        Ok(())
    }

    /// The message of `key` in motion finished: returns the next of the
    /// lane (which stays busy), or frees the lane.
    pub fn release(&self, key: &[u8]) -> Option<Work> {
        let mut busy = self.busy.lock().ok()?;
        let q = busy.get_mut(key)?;
        match q.pop_front() {
            Some(next) => {
                self.parked.fetch_sub(1, Ordering::Relaxed);
                Some(next)
            }
            None => {
                busy.remove(key);
                None
            }
        }
    }

    /// Messages waiting behind a busy lane.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    /// Takes out the waiting messages whose lease ended (revocation); the
    /// lanes stay busy until their message in motion is given up too.
    pub fn drain_ended(&self) -> Vec<Work> {
        let Ok(mut busy) = self.busy.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for q in busy.values_mut() {
            let (gone, keep): (VecDeque<Work>, VecDeque<Work>) =
                q.drain(..).partition(|w| w.msg.lease.ended());
            *q = keep;
            out.extend(gone);
        }
        self.parked.fetch_sub(out.len(), Ordering::Relaxed);
        out
    }

    /// Takes every waiting message out (stop).
    pub fn drain(&self) -> Vec<Work> {
        let Ok(mut busy) = self.busy.lock() else {
            return Vec::new();
        };
        self.parked.store(0, Ordering::Relaxed);
        busy.drain().flat_map(|(_, q)| q).collect()
    }
}

/// A requeued message ordered by due time (then arrival).
struct Due(Instant, u64, Stage, Work);

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

pub fn spawn_requeue(
    shared: Arc<Shared>,
    rx: Receiver<(Instant, Stage, Work)>,
) -> std::io::Result<JoinHandle<()>> {
    let watch = crate::panics::Watch::new("deliver-requeue", shared.fatal.clone());
    std::thread::Builder::new()
        .name("deliver-requeue".into())
        .spawn(move || {
            let _watch = watch;
            let mut heap: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
            let mut seq = 0u64;
            let mut last_scan = Instant::now();
            let m = &shared.metrics;
            loop {
                shared.requeue_beat.tick();
                if shared.stop.is_stopped() {
                    // Abandon: these offsets stay uncommitted and are redelivered.
                    m.requeued.set(0);
                    let waiting = heap.drain().map(|Reverse(Due(_, _, _, w))| w);
                    let arriving = rx.try_iter().map(|(_, _, w)| w);
                    for w in waiting.chain(arriving).chain(shared.lanes.drain()) {
                        shared.abandon(w);
                    }
                    return;
                }
                // Partitions were revoked: what waits for them goes now
                // (their next owner reads it again), not at its time.
                // Looked for every 100 ms, not per message.
                if last_scan.elapsed() >= Duration::from_millis(100) {
                    last_scan = Instant::now();
                    if heap.iter().any(|Reverse(d)| d.3.msg.lease.ended()) {
                        let (gone, keep): (Vec<_>, Vec<_>) =
                            heap.drain().partition(|Reverse(d)| d.3.msg.lease.ended());
                        heap = keep.into_iter().collect();
                        m.requeued.add(-(gone.len() as i64));
                        for Reverse(Due(_, _, _, w)) in gone {
                            shared.abandon(w);
                        }
                    }
                }
                while let Some(Reverse(Due(at, ..))) = heap.peek() {
                    if *at > Instant::now() {
                        break;
                    }
                    let Some(Reverse(Due(_, _, stage, w))) = heap.pop() else {
                        break;
                    };
                    if w.msg.lease.ended() {
                        m.requeued.add(-1);
                        shared.abandon(w);
                        continue;
                    }
                    let tx = match stage {
                        Stage::Enrich => shared.enrich_tx.as_ref().unwrap_or(&shared.work_tx),
                        Stage::Send => &shared.work_tx,
                    };
                    // A full channel is tried again shortly; the thread
                    // never blocks, so revocations and stops are seen.
                    match tx.try_send(w) {
                        Ok(()) => m.requeued.add(-1),
                        Err(e) => {
                            seq += 1;
                            let again = Instant::now() + Duration::from_millis(20);
                            heap.push(Reverse(Due(again, seq, stage, e.into_inner())));
                            break;
                        }
                    }
                }
                let wait = heap
                    .peek()
                    .map_or(Duration::from_millis(100), |Reverse(d)| {
                        d.0.saturating_duration_since(Instant::now())
                    });
                match rx.recv_timeout(wait.min(Duration::from_millis(100))) {
                    Ok((at, stage, w)) => {
                        seq += 1;
                        heap.push(Reverse(Due(at, seq, stage, w)));
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
}
