//! deliver's stash: polled messages that found no room, per partition, in
//! offset order, and the pauses that go with it. A full channel pauses the
//! member's whole assignment; a key lane at its capacity holds back only
//! its own key (other keys of the partition go past it), and the partition
//! pauses only once what waits behind full lanes is as much as a lane holds.
//! Owned by one consumer thread (`consumer`), behind its role's mutex.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;

use super::consumer::DeliverConsumer;
use super::{Refused, Shared, Work};

/// A partition's name as messages carry it.
pub type Part = (Arc<str>, i32);

/// Polled messages waiting for room, per partition, in offset order.
#[derive(Default)]
pub struct Stash {
    waiting: HashMap<Part, VecDeque<Work>>,
    count: usize,
    /// The next channel was full: every partition of the member is paused.
    full: bool,
    /// Partitions paused on their own (a key lane at its capacity).
    paused: HashSet<Part>,
}

impl Stash {
    /// Takes the selected partitions' stashed messages out (never handed
    /// out, so redelivered later).
    pub fn take(&mut self, select: &dyn Fn(&str, i32) -> bool) -> Vec<Work> {
        let st = self;
        let keys: Vec<Part> = st
            .waiting
            .keys()
            .filter(|(t, p)| select(t, *p))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for k in keys {
            out.extend(st.waiting.remove(&k).unwrap_or_default());
        }
        st.count -= out.len();
        out
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Puts `w` at the end of its partition's stash.
    pub fn push(&mut self, w: Work) {
        let k = (w.msg.topic.clone(), w.msg.partition);
        self.waiting.entry(k).or_default().push_back(w);
        self.count += 1;
    }

    /// Moves stashed messages on, pausing and resuming partitions to match;
    /// false while the channel is full (then nothing new is fetched).
    pub fn flush(&mut self, shared: &Shared, consumer: &DeliverConsumer) -> bool {
        let st = self;
        if st.count == 0 && !st.full {
            return true;
        }
        let mut full = false;
        let cap = shared.lane_capacity();
        let mut lane_blocked: Vec<Part> = Vec::new();
        for (part, q) in st.waiting.iter_mut() {
            if full {
                break;
            }
            // Messages of a key whose lane is full keep their order and
            // wait; other keys of the partition go past them.
            let mut blocked_keys: Vec<Vec<u8>> = Vec::new();
            let mut kept = VecDeque::with_capacity(q.len());
            while let Some(w) = q.pop_front() {
                let waits = w.msg.key.as_ref().is_some_and(|k| blocked_keys.contains(k));
                if waits {
                    kept.push_back(w);
                    continue;
                }
                let refused = if shared.saturated() {
                    Err(Refused::Full(w))
                } else {
                    shared.dispatch(w)
                };
                match refused {
                    Ok(()) => st.count -= 1,
                    Err(Refused::Full(w)) => {
                        kept.push_back(w);
                        kept.extend(q.drain(..));
                        full = true;
                    }
                    Err(Refused::Lane(w)) => {
                        blocked_keys.extend(w.msg.key.clone());
                        kept.push_back(w);
                    }
                }
            }
            // Held back behind full lanes: the partition stops fetching
            // once that is as much as one lane holds.
            if kept.len() >= cap {
                lane_blocked.push(part.clone());
            }
            *q = kept;
        }
        st.waiting.retain(|_, q| !q.is_empty());
        // A partition waits on its own while its stash is that long and the
        // channel has room; when the channel is full the whole assignment
        // waits.
        for part in lane_blocked {
            if st.paused.insert(part.clone()) {
                let _ = consumer.pause(&one(&part));
                shared.metrics.pauses.inc();
            }
        }
        let ready: Vec<Part> = st
            .paused
            .iter()
            .filter(|k| st.waiting.get(*k).is_none_or(|q| q.len() < cap))
            .cloned()
            .collect();
        for part in ready {
            st.paused.remove(&part);
            if !st.full {
                let _ = consumer.resume(&one(&part));
            }
        }
        match (full, st.full) {
            (true, false) => {
                st.hold(consumer);
                shared.metrics.pauses.inc();
            }
            (false, true) => {
                if let Ok(a) = consumer.assignment() {
                    let _ = consumer.resume(&a);
                }
                for part in &st.paused {
                    let _ = consumer.pause(&one(part));
                }
                st.full = false;
            }
            _ => {}
        }
        !full
    }

    /// Pauses the whole assignment as a full channel does (suspension);
    /// the next [`Self::flush`] after it resumes it.
    pub fn hold(&mut self, consumer: &DeliverConsumer) {
        if !self.full {
            if let Ok(a) = consumer.assignment() {
                let _ = consumer.pause(&a);
            }
            self.full = true;
        }
    }

    /// True when `w` must wait behind stashed messages of its partition (or
    /// behind a full channel).
    pub fn must_wait(&self, w: &Work) -> bool {
        self.full
            || (self.count > 0
                && self
                    .waiting
                    .contains_key(&(w.msg.topic.clone(), w.msg.partition)))
    }

    /// The whole assignment is paused (the channel was full).
    pub fn full(&self) -> bool {
        self.full
    }

    /// Forgets the pauses of revoked partitions.
    pub fn forget(&mut self, gone: &dyn Fn(&Part) -> bool) {
        self.paused.retain(|k| !gone(k));
    }
}

fn one((t, p): &Part) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(t, *p);
    tpl
}
