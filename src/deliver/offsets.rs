//! The per-partition offset tracker (pure): which offsets were handed out
//! and not yet finished, and so the highest offset that may be committed —
//! the lowest unfinished one, or one past the highest polled when all are
//! done. Workers finish out of order; a commit never passes an unfinished
//! message. Gaps in offsets (compaction, transaction markers) need nothing.
//! An abandoned offset (dropped at stop or revocation, never to finish
//! here) stops counting as in flight but caps the position for good.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default, Clone)]
pub struct PartitionOffsets {
    /// Polled and not yet done.
    open: BTreeSet<i64>,
    /// One past the highest offset polled.
    next: Option<i64>,
    /// The last position committed (or known committed).
    committed: Option<i64>,
    /// The lowest offset given up on: it is redelivered, never committed past.
    abandoned: Option<i64>,
}

impl PartitionOffsets {
    pub fn polled(&mut self, offset: i64) {
        self.open.insert(offset);
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// Marks `offset` done; unknown offsets (from before a revocation) are
    /// ignored.
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

/// Trackers of one consumer thread, by topic then partition (looked up by
/// `&str`, so the per-message calls allocate nothing).
#[derive(Debug, Default)]
pub struct Offsets {
    parts: HashMap<String, HashMap<i32, PartitionOffsets>>,
}

impl Offsets {
    fn get_mut(&mut self, topic: &str, partition: i32) -> Option<&mut PartitionOffsets> {
        self.parts.get_mut(topic)?.get_mut(&partition)
    }

    pub fn polled(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.get_mut(topic, partition) {
            return p.polled(offset);
        }
        self.parts
            .entry(topic.to_string())
            .or_default()
            .entry(partition)
            .or_default()
            .polled(offset);
    }

    pub fn done(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.get_mut(topic, partition) {
            p.done(offset);
        }
    }

    pub fn abandon(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.get_mut(topic, partition) {
            p.abandon(offset);
        }
    }

    fn each(&self) -> impl Iterator<Item = (&String, i32, &PartitionOffsets)> {
        self.parts
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |(p, o)| (t, *p, o)))
    }

    /// Positions that moved since the last commit.
    pub fn to_commit(&self) -> Vec<(String, i32, i64)> {
        self.each()
            .filter_map(|(t, p, o)| o.to_commit().map(|pos| (t.clone(), p, pos)))
            .collect()
    }

    pub fn committed(&mut self, topic: &str, partition: i32, position: i64) {
        if let Some(p) = self.get_mut(topic, partition) {
            p.committed(position);
        }
    }

    pub fn in_flight(&self, filter: impl Fn(&str, i32) -> bool) -> usize {
        self.each()
            .filter(|(t, p, _)| filter(t, *p))
            .map(|(_, _, o)| o.in_flight())
            .sum()
    }

    /// Forgets a revoked partition.
    pub fn remove(&mut self, topic: &str, partition: i32) {
        if let Some(ps) = self.parts.get_mut(topic) {
            ps.remove(&partition);
            if ps.is_empty() {
                self.parts.remove(topic);
            }
        }
    }

    pub fn positions(&self) -> Vec<((String, i32), Option<i64>, usize)> {
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
    fn revoked_partition_forgets_and_late_completions_are_ignored() {
        let mut o = Offsets::default();
        o.polled("t", 0, 5);
        o.polled("t", 1, 9);
        assert_eq!(o.in_flight(|_, _| true), 2);
        o.remove("t", 0);
        o.done("t", 0, 5);
        assert_eq!(o.in_flight(|_, _| true), 1);
        let mut c = o.to_commit();
        c.sort();
        assert_eq!(c, vec![("t".to_string(), 1, 9)]);
    }
}
