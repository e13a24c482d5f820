//! The per-partition offset tracker both consumer roles use (pure): which
//! offsets were handed out and not yet finished, and so the highest offset
//! that may be committed — the lowest unfinished one, or one past the
//! highest taken when all are done. Work finishes out of order; a commit
//! never passes an unfinished offset. Gaps (compaction, transaction
//! markers) need nothing.
//!
//! - deliver opens every message (`polled`) and closes it when delivered,
//!   parked or dropped (`done`), or gives it up (`abandon`: it stops
//!   counting as in flight but caps the position for good);
//! - collect opens only the first offset of a file and of each retry-topic
//!   produce; the lines between are `seen` (no per-line bookkeeping): the
//!   open first offset holds the position below the whole file.
//!
//! Each partition's tracking carries a [`Lease`]. Revocation ends the lease
//! (`remove`), and so does an offset regression (`restart`): a report made
//! under an ended lease changes nothing, so late completions can never move
//! the position of a partition that was given away or whose offsets began
//! again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// One tenure of a partition's tracking: from its first message after an
/// assignment (or an offset regression) until revocation (or the next
/// regression). Cheap to clone (one `Arc`).
#[derive(Debug, Clone, Default)]
pub struct Lease(Arc<LeaseState>);

// A line of its own: the `Arc`'s counts change with every message taken and
// finished, and must not evict the flags the senders read.
#[derive(Debug, Default)]
#[repr(align(64))]
struct LeaseState {
    ended: AtomicBool,
    /// Work of this lease inside a call now (see [`Lease::enter`]).
    busy: AtomicUsize,
}

impl Lease {
    /// The partition was revoked (or its offsets restarted): work under
    /// this lease must not be done any more, only given up.
    pub fn ended(&self) -> bool {
        self.0.ended.load(Ordering::SeqCst)
    }

    fn end(&self) {
        self.0.ended.store(true, Ordering::SeqCst);
    }

    pub fn same(&self, other: &Lease) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Work of this lease is about to start (a call): `None` when the lease
    /// has ended, so the work must be given up instead. Counted first and
    /// checked after, against [`Lease::end`] then [`Lease::busy`] on the
    /// other side: either the work sees the end, or the ender sees it busy.
    pub fn enter(&self) -> Option<Busy> {
        self.0.busy.fetch_add(1, Ordering::SeqCst);
        let guard = Busy(self.clone());
        (!self.ended()).then_some(guard)
    }

    /// Work of this lease inside a call now.
    pub fn busy(&self) -> usize {
        self.0.busy.load(Ordering::SeqCst)
    }
}

/// A piece of work of a lease in progress; leaves on drop.
#[derive(Debug)]
pub struct Busy(Lease);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Default)]
pub struct PartitionOffsets {
    /// Taken and not yet done.
    open: BTreeSet<i64>,
    /// One past the highest offset taken.
    next: Option<i64>,
    /// The last position committed (or known committed).
    committed: Option<i64>,
    /// The lowest offset given up on: it is redelivered, never committed past.
    abandoned: Option<i64>,
    lease: Lease,
}

impl PartitionOffsets {
    pub fn polled(&mut self, offset: i64) {
        self.open.insert(offset);
        self.seen(offset);
    }

    /// `offset` was taken and needs no bookkeeping of its own (an open
    /// offset below it holds the position).
    pub fn seen(&mut self, offset: i64) {
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// Marks `offset` done; unknown offsets are ignored.
    pub fn done(&mut self, offset: i64) {
        self.open.remove(&offset);
    }

    /// Gives up on `offset`: nothing waits for it any more, and the
    /// position never passes it.
    pub fn abandon(&mut self, offset: i64) {
        if self.open.remove(&offset) {
            self.abandoned = Some(self.abandoned.map_or(offset, |a| a.min(offset)));
        }
    }

    /// The offsets from `offset` on will be read again (a seek back):
    /// nothing at or above it is open any more.
    pub fn rewind(&mut self, offset: i64) {
        self.open.retain(|o| *o < offset);
        self.next = Some(offset);
        if self.abandoned.is_some_and(|a| a >= offset) {
            self.abandoned = None;
        }
    }

    /// The offsets began again below what was taken (topic recreated,
    /// offsets reset, log truncated): everything tracked belongs to the
    /// old offsets. A new lease; tracking starts at `offset`, and the
    /// position may go back (to be committed, it must).
    pub fn restart(&mut self, offset: i64) -> Lease {
        self.lease.end();
        *self = PartitionOffsets::default();
        self.next = Some(offset);
        self.lease.clone()
    }

    /// The position to commit: every offset below it is done.
    pub fn position(&self) -> Option<i64> {
        let open = self.open.first().copied().or(self.next);
        match (open, self.abandoned) {
            (Some(o), Some(a)) => Some(o.min(a)),
            (o, a) => o.or(a),
        }
    }

    /// The position if it moved past the last commit.
    pub fn to_commit(&self) -> Option<i64> {
        let p = self.position()?;
        (self.committed.is_none_or(|c| p > c)).then_some(p)
    }

    pub fn committed(&mut self, position: i64) {
        self.committed = Some(self.committed.map_or(position, |c| c.max(position)));
    }

    pub fn in_flight(&self) -> usize {
        self.open.len()
    }
}

/// Trackers of one group member, by topic then partition (looked up by
/// `&str`, so the per-message calls allocate nothing).
#[derive(Debug, Default)]
pub struct Offsets {
    parts: HashMap<String, HashMap<i32, PartitionOffsets>>,
}

impl Offsets {
    pub fn get(&self, topic: &str, partition: i32) -> Option<&PartitionOffsets> {
        self.parts.get(topic)?.get(&partition)
    }

    pub fn get_mut(&mut self, topic: &str, partition: i32) -> Option<&mut PartitionOffsets> {
        self.parts.get_mut(topic)?.get_mut(&partition)
    }

    /// The tracking of a partition, created on its first message.
    pub fn entry(&mut self, topic: &str, partition: i32) -> &mut PartitionOffsets {
        if self.get(topic, partition).is_none() {
            self.parts
                .entry(topic.to_string())
                .or_default()
                .insert(partition, PartitionOffsets::default());
        }
        self.parts
            .get_mut(topic)
            .and_then(|ps| ps.get_mut(&partition))
            .expect("inserted above")
    }

    /// Opens `offset`; returns the lease it was taken under.
    pub fn polled(&mut self, topic: &str, partition: i32, offset: i64) -> Lease {
        let p = self.entry(topic, partition);
        p.polled(offset);
        p.lease.clone()
    }

    /// `f` on the partition's tracking when `lease` is still its own.
    fn under(
        &mut self,
        topic: &str,
        partition: i32,
        lease: &Lease,
        f: impl FnOnce(&mut PartitionOffsets),
    ) {
        if let Some(p) = self.get_mut(topic, partition)
            && p.lease.same(lease)
        {
            f(p);
        }
    }

    pub fn done(&mut self, topic: &str, partition: i32, offset: i64, lease: &Lease) {
        self.under(topic, partition, lease, |p| p.done(offset));
    }

    pub fn abandon(&mut self, topic: &str, partition: i32, offset: i64, lease: &Lease) {
        self.under(topic, partition, lease, |p| p.abandon(offset));
    }

    fn each(&self) -> impl Iterator<Item = (&String, i32, &PartitionOffsets)> {
        self.parts
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |(p, o)| (t, *p, o)))
    }

    /// Positions of the selected partitions: those that moved since the
    /// last commit, or (`all`) every known one.
    pub fn positions(
        &self,
        all: bool,
        select: &dyn Fn(&str, i32) -> bool,
    ) -> Vec<(String, i32, i64)> {
        self.each()
            .filter(|(t, p, _)| select(t, *p))
            .filter_map(|(t, p, o)| {
                let pos = if all { o.position() } else { o.to_commit() };
                pos.map(|pos| (t.clone(), p, pos))
            })
            .collect()
    }

    pub fn committed(&mut self, topic: &str, partition: i32, position: i64) {
        if let Some(p) = self.get_mut(topic, partition) {
            p.committed(position);
        }
    }

    pub fn in_flight(&self, select: &dyn Fn(&str, i32) -> bool) -> usize {
        self.each()
            .filter(|(t, p, _)| select(t, *p))
            .map(|(_, _, o)| o.in_flight())
            .sum()
    }

    /// Ends the leases of the selected partitions (they are being revoked)
    /// and returns them; their tracking goes on until [`Offsets::remove`].
    pub fn end(&mut self, select: &dyn Fn(&str, i32) -> bool) -> Vec<Lease> {
        self.each()
            .filter(|(t, p, _)| select(t, *p))
            .map(|(_, _, o)| {
                o.lease.end();
                o.lease.clone()
            })
            .collect()
    }

    /// Forgets a revoked partition and ends its lease.
    pub fn remove(&mut self, topic: &str, partition: i32) {
        if let Some(ps) = self.parts.get_mut(topic) {
            if let Some(p) = ps.remove(&partition) {
                p.lease.end();
            }
            if ps.is_empty() {
                self.parts.remove(topic);
            }
        }
    }

    /// ((topic, partition), position, in flight) of every partition, for logs.
    pub fn summary(&self) -> Vec<((String, i32), Option<i64>, usize)> {
        self.each()
            .map(|(t, p, o)| ((t.clone(), p), o.position(), o.in_flight()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_waits_for_the_lowest_unfinished_offset() {
        let mut p = PartitionOffsets::default();
        for o in 10..15 {
            p.polled(o);
        }
        p.done(11);
        p.done(12);
        assert_eq!(p.position(), Some(10), "10 is still open");
        p.done(10);
        assert_eq!(p.position(), Some(13), "10..=12 done, 13 open");
        p.done(14);
        assert_eq!(p.position(), Some(13));
        p.done(13);
        assert_eq!(p.position(), Some(15), "all done: one past the highest");
    }

    #[test]
    fn abandoned_offsets_stop_waiting_but_cap_the_position() {
        let mut p = PartitionOffsets::default();
        for o in 20..25 {
            p.polled(o);
        }
        p.done(20);
        p.abandon(22);
        p.abandon(21);
        p.done(23);
        assert_eq!(p.in_flight(), 1, "only 24 is still awaited");
        assert_eq!(p.position(), Some(21), "never past the lowest abandoned");
        p.done(24);
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.position(), Some(21));
        p.abandon(20);
        assert_eq!(
            p.position(),
            Some(21),
            "abandoning a done offset changes nothing"
        );
    }

    #[test]
    fn gaps_in_offsets_do_not_block() {
        let mut p = PartitionOffsets::default();
        for o in [3, 7, 8] {
            p.polled(o);
        }
        p.done(3);
        assert_eq!(p.position(), Some(7));
        p.done(8);
        p.done(7);
        assert_eq!(p.position(), Some(9));
    }

    #[test]
    fn a_file_holds_the_position_with_one_open_offset() {
        let mut p = PartitionOffsets::default();
        p.polled(100);
        for o in 101..200 {
            p.seen(o);
        }
        assert_eq!(p.position(), Some(100), "the file from 100 is not durable");
        p.done(100);
        assert_eq!(p.position(), Some(200));
        p.polled(200);
        p.seen(201);
        p.rewind(200);
        assert_eq!(
            (p.position(), p.in_flight()),
            (Some(200), 0),
            "read again from 200"
        );
    }

    #[test]
    fn to_commit_only_when_the_position_moved() {
        let mut p = PartitionOffsets::default();
        assert_eq!(p.to_commit(), None);
        p.polled(0);
        assert_eq!(p.to_commit(), Some(0));
        p.committed(0);
        assert_eq!(p.to_commit(), None);
        p.done(0);
        assert_eq!(p.to_commit(), Some(1));
        p.committed(1);
        assert_eq!(p.to_commit(), None);
    }

    #[test]
    fn a_restart_commits_lower_positions_and_ignores_the_old_lease() {
        let mut o = Offsets::default();
        let old = o.polled("t", 0, 500);
        o.done("t", 0, 500, &old);
        o.committed("t", 0, 501);
        let new = o.entry("t", 0).restart(0);
        assert!(old.ended() && !new.ended());
        o.entry("t", 0).polled(3);
        o.done("t", 0, 3, &old);
        assert_eq!(
            o.get("t", 0).unwrap().position(),
            Some(3),
            "the old lease is ignored"
        );
        o.done("t", 0, 3, &new);
        assert_eq!(
            o.positions(false, &|_, _| true),
            vec![("t".to_string(), 0, 4)],
            "4 < 501 is committed all the same"
        );
    }

    #[test]
    fn revoked_partition_forgets_and_late_completions_are_ignored() {
        let mut o = Offsets::default();
        let l0 = o.polled("t", 0, 5);
        let l1 = o.polled("t", 1, 9);
        assert_eq!(o.in_flight(&|_, _| true), 2);
        let busy = l0.enter();
        assert!(busy.is_some() && l0.busy() == 1);
        o.remove("t", 0);
        assert!(l0.ended() && !l1.ended());
        assert!(l0.enter().is_none(), "no new work under an ended lease");
        drop(busy);
        assert_eq!(l0.busy(), 0);
        o.done("t", 0, 5, &l0);
        assert_eq!(o.in_flight(&|_, _| true), 1);
        // Assigned again: a fresh lease, and the old report still counts for nothing.
        let again = o.polled("t", 0, 5);
        o.done("t", 0, 5, &l0);
        assert_eq!(o.in_flight(&|t, p| t == "t" && p == 0), 1);
        o.done("t", 0, 5, &again);
        let mut c = o.positions(false, &|_, _| true);
        c.sort();
        assert_eq!(c, vec![("t".to_string(), 0, 6), ("t".to_string(), 1, 9)]);
    }
}
