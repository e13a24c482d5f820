//! What collect adds to a group member (`kafka::member`): each partition's
//! state — its open file, the files pending their commit, where its archive
//! stands (era and highest offset filed), a diversion to the retry topic or
//! a delayed retry — and the role's hooks: files made durable before a
//! revocation, promoted to their final names once a commit is confirmed.
//! Used only by the collector thread that owns the member (`consumer`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::warn;
use rdkafka::consumer::Consumer;
use rdkafka::producer::Producer as _;
use rdkafka::{Offset, TopicPartitionList};

use super::files::{OpenFile, Pending, promote_all};
use super::{Shared, archive};
use crate::kafka::member::{Member, Role, RoleConsumer};
use crate::kafka::offsets::Lease;

/// (topic, partition, offset, acknowledged, lease) of a retry-topic produce.
pub type RetryDone = (String, i32, i64, bool, Lease);

pub type CollectMember = Member<CollectRole>;
pub(super) type CollectConsumer = RoleConsumer<CollectRole>;

/// Where a partition's archive stands (known from its first message on).
#[derive(Debug, Clone, Copy)]
pub(super) struct Archive {
    pub(super) era: u32,
    /// The highest offset filed in this era.
    pub(super) high: Option<i64>,
}

#[derive(Default)]
pub struct PartState {
    /// One past the highest offset taken. The tracker learns it when a file
    /// closes (the open file's first offset holds the position until then),
    /// so the lines of a file cost no tracker lock.
    pub(super) next: Option<i64>,
    pub(super) file: Option<OpenFile>,
    pub(super) diverted_until: Option<Instant>,
    /// A paused retry-topic partition resumes then.
    pub(super) delayed_until: Option<Instant>,
    pub(super) archive: Option<Archive>,
    /// Durable files waiting for their commit to be confirmed.
    pub(super) pending: Vec<Pending>,
}

impl PartState {
    pub fn file_open(&self) -> bool {
        self.file.is_some()
    }
    pub fn delayed(&self) -> bool {
        self.delayed_until.is_some()
    }
}

type Parts = HashMap<(String, i32), PartState>;

/// What collect adds to a group member.
pub struct CollectRole {
    pub(super) shared: Arc<Shared>,
    pub parts: Mutex<Parts>,
    pub(super) done_tx: Sender<RetryDone>,
    pub(super) done_rx: Receiver<RetryDone>,
}

impl Role for CollectRole {
    /// Makes the selected partitions' files durable and waits for their
    /// retry-topic acknowledgements; the member then commits.
    fn revoking(
        &self,
        member: &CollectMember,
        consumer: &CollectConsumer,
        select: &dyn Fn(&str, i32) -> bool,
    ) {
        if let Ok(mut parts) = self.parts.lock() {
            for ((t, p), st) in parts.iter_mut().filter(|((t, p), _)| select(t, *p)) {
                if let Some(f) = st.file.take() {
                    // Not durable: not committed, so re-read by the next owner.
                    let _ = self.close_file(member, t, *p, st, f);
                }
            }
        }
        let _ = self.shared.retry.flush(self.shared.config.shutdown_timeout);
        self.apply_done(member, consumer);
    }

    fn forget(&self, revoked: &[(String, i32)]) {
        if let Ok(mut parts) = self.parts.lock() {
            for k in revoked {
                parts.remove(k);
            }
        }
    }

    fn assigned(
        &self,
        _member: &CollectMember,
        consumer: &CollectConsumer,
        tpl: &TopicPartitionList,
    ) {
        // librdkafka keeps a partition paused across a revoke and re-assign,
        // but the delay that paused it (a retry not yet due) went with the
        // revocation: fetch again, and pause again if it is still early.
        let _ = consumer.resume(tpl);
        // A crash between a commit and the renames it allowed leaves
        // pending files below the committed offset; a partition that gets
        // no message again would keep them pending for good.
        let Ok(committed) = consumer.committed_offsets(tpl.clone(), Duration::from_secs(5)) else {
            return;
        };
        let root = &self.shared.config.record_directory;
        for e in committed.elements() {
            let Offset::Offset(c) = e.offset() else {
                continue;
            };
            let topic = e.topic();
            let dir_topic = self.shared.retry_source(topic).unwrap_or(topic);
            let Ok(found) = archive::scan(root, dir_topic, topic, e.partition()) else {
                continue;
            };
            for (f, err) in promote_all(archive::committed_pending(&found, c)) {
                warn!("cannot give {} its final name: {err}", f.path.display());
            }
        }
    }

    /// Files below a confirmed position are committed: now they get their
    /// final names.
    fn committed(&self, positions: &[(String, i32, i64)]) {
        let Ok(mut parts) = self.parts.lock() else {
            return;
        };
        for (t, p, pos) in positions {
            let Some(st) = parts.get_mut(&(t.clone(), *p)) else {
                continue;
            };
            let (due, keep): (Vec<Pending>, Vec<Pending>) =
                st.pending.drain(..).partition(|f| f.span.last < *pos);
            st.pending = keep;
            for (f, e) in promote_all(due) {
                warn!(
                    "cannot give {} its final name: {e}; tried again later",
                    f.path.display()
                );
                st.pending.push(f);
            }
        }
    }
}

impl CollectRole {
    /// Makes `f` durable (pending until committed); on failure its offsets
    /// are read again from its first (returned as the error).
    pub(super) fn close_file(
        &self,
        member: &CollectMember,
        topic: &str,
        p: i32,
        st: &mut PartState,
        f: OpenFile,
    ) -> Result<(), (i64, std::io::Error)> {
        let (first, last) = (f.first, f.last);
        let start = Instant::now();
        match f.close() {
            Ok(pending) => {
                let m = &self.shared.metrics;
                m.fsync.record_us(start.elapsed().as_micros() as u64);
                m.files_closed.inc();
                st.pending.push(pending);
                if let Some(a) = &mut st.archive {
                    a.high = Some(a.high.map_or(last, |h| h.max(last)));
                }
                let next = st.next;
                member.with_offsets(|o| {
                    if let Some(t) = o.get_mut(topic, p) {
                        if let Some(n) = next {
                            t.seen(n - 1);
                        }
                        t.done(first);
                    }
                });
                Ok(())
            }
            Err(e) => {
                member.with_offsets(|o| o.entry(topic, p).rewind(first));
                st.next = Some(first);
                Err((first, e))
            }
        }
    }

    pub(super) fn apply_done(&self, member: &CollectMember, consumer: &CollectConsumer) {
        let Ok(mut parts) = self.parts.lock() else {
            return;
        };
        for (t, p, o, ok, lease) in self.done_rx.try_iter() {
            if ok {
                member.with_offsets(|x| x.done(&t, p, o, &lease));
                continue;
            }
            // The retry topic refused it: read it again from there.
            let Some(st) = parts.get_mut(&(t.clone(), p)) else {
                continue;
            };
            if lease.ended() {
                continue;
            }
            let back = member.with_offsets(|x| {
                let track = x.entry(&t, p);
                let back = track.position().map_or(o, |pos| pos.min(o));
                track.rewind(back);
                back
            });
            st.next = Some(back);
            if let Some(f) = st.file.take() {
                f.discard();
            }
            // Files from `back` on were never committed: they are written
            // again from the offsets read again.
            let (stale, keep): (Vec<Pending>, Vec<Pending>) =
                st.pending.drain(..).partition(|f| f.span.first >= back);
            st.pending = keep;
            for f in stale {
                let _ = std::fs::remove_file(&f.path);
            }
            if let Some(a) = &mut st.archive {
                let kept = st.pending.iter().map(|f| f.span.last);
                a.high = kept.chain(a.high.filter(|h| *h < back)).max();
            }
            let _ = consumer.seek(&t, p, Offset::Offset(back), Duration::from_secs(5));
        }
    }

    /// Closes every open file, waits for the retry acknowledgements.
    pub(super) fn finish_all(&self, member: &CollectMember, consumer: &CollectConsumer) {
        self.revoking(member, consumer, &|_, _| true);
    }
}
