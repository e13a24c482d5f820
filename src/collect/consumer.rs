//! collect's group member: one collector thread (`collect-c<i>`) running a
//! `kafka::member` with this role. It writes each message to the open file
//! of its partition; the member's tracker holds the position at the first
//! offset of that file (and of each retry-topic produce not yet
//! acknowledged), so a commit never passes a line that is not durable. A
//! closed file is pending until the coordinator confirms the commit past
//! it, then promoted to its final name (see `files`, `archive`).
//!
//! A write error discards the open file, seeks back to its first offset and
//! diverts the partition to `<topic>.retry` for `retry_delay_ms`;
//! retry-topic messages are written (with the topic they came from) once
//! their delay has passed. Offsets that go back (see `archive`) start a new
//! era of file names, logged once as a WARN.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use log::{info, warn};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::Producer as _;
use rdkafka::{Offset, TopicPartitionList};

use super::archive;
use super::config::Format;
use super::files::{OpenFile, Pending, date_of, promote_all, should_close};
use super::lines::{Coordinates, envelope_line, raw_line};
use super::retry::{parse_source, retry_wait};
use super::{RETRY_AT, RETRY_SOURCE, Shared};
use crate::kafka::member::{self, GroupCounters, Member, Role, RoleConsumer, Spec};
use crate::kafka::offsets::Lease;
use crate::kafka::record;

/// (topic, partition, offset, acknowledged, lease) of a retry-topic produce.
pub type RetryDone = (String, i32, i64, bool, Lease);

pub type CollectMember = Member<CollectRole>;
type CollectConsumer = RoleConsumer<CollectRole>;

/// Where a partition's archive stands (known from its first message on).
#[derive(Debug, Clone, Copy)]
struct Archive {
    era: u32,
    /// The highest offset filed in this era.
    high: Option<i64>,
}

#[derive(Default)]
pub struct PartState {
    file: Option<OpenFile>,
    diverted_until: Option<Instant>,
    /// A paused retry-topic partition resumes then.
    delayed_until: Option<Instant>,
    archive: Option<Archive>,
    /// Durable files waiting for their commit to be confirmed.
    pending: Vec<Pending>,
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
    done_tx: Sender<RetryDone>,
    done_rx: Receiver<RetryDone>,
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
    fn close_file(
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
                member.with_offsets(|o| {
                    if let Some(t) = o.get_mut(topic, p) {
                        t.done(first);
                    }
                });
                Ok(())
            }
            Err(e) => {
                member.with_offsets(|o| o.entry(topic, p).rewind(first));
                Err((first, e))
            }
        }
    }

    fn apply_done(&self, member: &CollectMember, consumer: &CollectConsumer) {
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
                a.high = st
                    .pending
                    .iter()
                    .map(|f| f.span.last)
                    .max()
                    .or(a.high.filter(|h| *h < back));
            }
            let _ = consumer.seek(&t, p, Offset::Offset(back), Duration::from_secs(5));
        }
    }

    /// Closes every open file, waits for the retry acknowledgements.
    fn finish_all(&self, member: &CollectMember, consumer: &CollectConsumer) {
        self.revoking(member, consumer, &|_, _| true);
    }
}

pub fn build(
    shared: Arc<Shared>,
    kafka: &crate::config::KafkaConfig,
    group: &str,
    topics: &[String],
    counters: Arc<GroupCounters>,
    i: usize,
) -> anyhow::Result<CollectConsumer> {
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let role = CollectRole {
        shared: shared.clone(),
        parts: Mutex::default(),
        done_tx,
        done_rx,
    };
    member::build(
        Spec {
            kafka,
            properties: &shared.config.consumer,
            group,
            topics,
            name: format!("collect-c{i}"),
            fatal: shared.fatal.clone(),
            counters,
        },
        role,
    )
}

pub fn run(consumer: CollectConsumer, i: usize) -> std::io::Result<JoinHandle<()>> {
    let watch = crate::panics::Watch::new(
        format!("collect-c{i}"),
        consumer.context().role.shared.fatal.clone(),
    );
    std::thread::Builder::new()
        .name(format!("collect-c{i}"))
        .spawn(move || {
            let _watch = watch;
            poll_loop(&consumer)
        })
}

/// Now, in ms since the epoch (retry-topic due times).
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How often a busy thread does its chores (rotation and idle checks,
/// retry acknowledgements, the commit timer, its heartbeat): per message
/// they cost more than the message (a profile at 500,000 msg/s showed 20 %
/// of the time reading the clock).
const CHORES_EVERY: Duration = Duration::from_millis(10);

fn poll_loop(consumer: &CollectConsumer) {
    let member = &**consumer.context();
    let role = &member.role;
    let shared = &role.shared;
    let all = |_: &str, _: i32| true;
    let mut last_commit = Instant::now();
    let mut last_chores: Option<Instant> = None;
    let name = member.name().to_string();
    while !shared.stop.is_stopped() {
        let now = Instant::now();
        if last_chores.is_none_or(|t| now.duration_since(t) >= CHORES_EVERY) {
            last_chores = Some(now);
            member.heartbeat.tick();
            crate::liveness::debug_stall(&name, &shared.stop);
            role.apply_done(member, consumer);
            housekeeping(consumer, now);
            if now.duration_since(last_commit) >= Duration::from_millis(200) {
                member.commit(consumer, CommitMode::Async, &all);
                last_commit = now;
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => last_chores = None,
            Some(Err(e)) => warn!("consume error: {e}"),
            Some(Ok(m)) => take(consumer, &m, now),
        }
    }
    role.finish_all(member, consumer);
    member.commit(consumer, CommitMode::Sync, &all);
    consumer.unsubscribe();
}

/// Rotation, idle close, end of diversions, resumption of delayed retries.
fn housekeeping(consumer: &CollectConsumer, now: Instant) {
    let member = &**consumer.context();
    let role = &member.role;
    let c = &role.shared.config;
    let Ok(mut parts) = role.parts.lock() else {
        return;
    };
    for ((t, p), st) in parts.iter_mut() {
        let due = st.file.as_ref().and_then(|f| {
            should_close(
                f.bytes,
                now.saturating_duration_since(f.opened),
                now.saturating_duration_since(f.last_write),
                c.rotate_bytes,
                c.rotate_age,
                c.idle_close,
            )
        });
        if due.is_some() {
            close(consumer, t, *p, st);
        }
        if st.delayed_until.is_some_and(|d| d <= now) {
            st.delayed_until = None;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(t, *p);
            let _ = consumer.resume(&tpl);
        }
    }
}

/// Makes the open file of this partition durable; on failure its offsets
/// go to the retry topic.
fn close(consumer: &CollectConsumer, topic: &str, p: i32, st: &mut PartState) {
    let member = &**consumer.context();
    if let Some(f) = st.file.take()
        && let Err((first, e)) = member.role.close_file(member, topic, p, st, f)
    {
        member.role.shared.write_failed(topic, &e);
        divert(consumer, topic, p, st, first);
    }
}

/// Sends this partition to the retry topic for a while, from `from` on.
fn divert(consumer: &CollectConsumer, topic: &str, p: i32, st: &mut PartState, from: i64) {
    let member = &**consumer.context();
    st.diverted_until = Some(Instant::now() + member.role.shared.config.retry_delay);
    member.with_offsets(|o| o.entry(topic, p).rewind(from));
    let _ = consumer.seek(topic, p, Offset::Offset(from), Duration::from_secs(5));
}

/// Recovery of a partition at its first message after an assignment.
fn recover(member: &CollectMember, dir_topic: &str, topic: &str, p: i32, first: i64) -> Archive {
    let root = &member.role.shared.config.record_directory;
    let found = match archive::scan(root, dir_topic, topic, p) {
        Ok(f) => f,
        Err(e) => {
            // Unreadable: nothing is removed; the open fails and diverts.
            warn!(
                "{topic}/{p}: cannot read its files under {}: {e}",
                root.display()
            );
            return Archive { era: 0, high: None };
        }
    };
    let mut plan = archive::plan(&found, first);
    let (removed, promoted) = (plan.remove.len(), plan.promote.len());
    let stuck = archive::apply(&mut plan).unwrap_or_else(|e| {
        warn!("{topic}/{p}: recovery of its files failed: {e}");
        Vec::new()
    });
    if removed + promoted > 0 {
        info!(
            "{topic}/{p}: recovered from offset {first}: {removed} uncommitted file(s) removed, {promoted} committed file(s) named final"
        );
    }
    if !stuck.is_empty() {
        warn!(
            "{topic}/{p}: {} committed file(s) could not be named final yet",
            stuck.len()
        );
    }
    if plan.regression {
        regression_logged(member, topic, p, first, plan.era);
    }
    Archive {
        era: plan.era,
        high: plan.high,
    }
}

fn regression_logged(member: &CollectMember, topic: &str, p: i32, offset: i64, era: u32) {
    member.role.shared.metrics.regressions.inc();
    warn!(
        "{topic}/{p}: offsets went back to {offset}, below what is already filed (topic recreated, offsets reset or log truncated); \
         the files filed so far stay, new files are named …-e{era}"
    );
}

/// Offsets went back while reading: the open and pending files belong to
/// the old offsets and stay (promoted: those offsets will not come back as
/// they were); tracking starts again at `offset`, in a new era.
fn restart(consumer: &CollectConsumer, topic: &str, p: i32, st: &mut PartState, offset: i64) {
    let member = &**consumer.context();
    if let Some(f) = st.file.take()
        && let Err((_, e)) = member.role.close_file(member, topic, p, st, f)
    {
        member.role.shared.write_failed(topic, &e);
    }
    for (f, e) in promote_all(std::mem::take(&mut st.pending)) {
        warn!("cannot give {} its final name: {e}", f.path.display());
    }
    let era = st.archive.map_or(0, |a| a.era) + 1;
    st.archive = Some(Archive { era, high: None });
    regression_logged(member, topic, p, offset, era);
    member.with_offsets(|o| o.entry(topic, p).restart(offset));
}

/// Files one message; `now` is the time its poll began.
fn take(consumer: &CollectConsumer, m: &BorrowedMessage<'_>, now: Instant) {
    let member = &**consumer.context();
    let role = &member.role;
    let shared = &role.shared;
    let (topic, p, offset) = (m.topic(), m.partition(), m.offset());
    let header = |name: &str| record::header(m, name).flatten();
    // The retry headers count only on this role's retry topics.
    let retry_of = shared.retry_source(topic);
    let dir_topic = retry_of.unwrap_or(topic);
    let Ok(mut parts) = role.parts.lock() else {
        return;
    };
    let st = parts.entry((topic.to_string(), p)).or_default();
    let archive = match st.archive {
        Some(a) => a,
        None => *st
            .archive
            .insert(recover(member, dir_topic, topic, p, offset)),
    };
    let next = member.with_offsets(|o| o.get(topic, p).and_then(|t| t.next()));
    if next.is_some_and(|n| offset < n) || archive.high.is_some_and(|h| offset <= h) {
        restart(consumer, topic, p, st, offset);
    }
    // The wall clock is read only for retry-topic messages.
    let retry_at: Option<i64> = retry_of
        .and(header(RETRY_AT))
        .and_then(|v| String::from_utf8(v).ok()?.parse().ok());
    let wait = match retry_at {
        Some(_) => retry_wait(retry_at, now_ms(), shared.config.retry_delay),
        None => None,
    };
    if let Some(wait) = wait {
        // Not yet: wait here without blocking the other partitions.
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, p);
        let _ = consumer.pause(&tpl);
        let _ = consumer.seek(topic, p, Offset::Offset(offset), Duration::from_secs(5));
        st.delayed_until = Some(now + wait);
        return;
    }
    shared.metrics.consumed.inc();
    if st.diverted_until.is_some_and(|d| d > now) {
        let lease = member.with_offsets(|o| o.polled(topic, p, offset));
        shared.to_retry(m, &role.done_tx, lease);
        return;
    }
    st.diverted_until = None;
    // A retry-topic message is filed with the topic its retry topic serves
    // (never a name read from a header), at the coordinates it was first
    // read at when its header says so.
    let first_read = retry_of.and_then(|t| {
        let v = header(RETRY_SOURCE)?;
        parse_source(std::str::from_utf8(&v).ok()?, t)
    });
    let line = match shared.config.format {
        Format::Raw => raw_line(m.payload()),
        Format::Envelope => {
            let (partition, offset) = first_read.unwrap_or((p, offset));
            Cow::Owned(envelope_line(
                &Coordinates {
                    topic: dir_topic,
                    partition,
                    offset,
                    key: m.key(),
                    timestamp: m.timestamp().to_millis(),
                },
                m.payload(),
            ))
        }
    };
    if st.file.is_none() {
        let date = date_of(
            m.timestamp()
                .to_millis()
                .filter(|t| *t > 0)
                .unwrap_or_else(now_ms),
        );
        let era = st.archive.map_or(0, |a| a.era);
        let root = &shared.config.record_directory;
        match OpenFile::create(
            root,
            dir_topic,
            topic,
            p,
            offset,
            era,
            &date,
            shared.config.gzip,
        ) {
            Ok(f) => {
                shared.metrics.files_opened.inc();
                member.with_offsets(|o| o.polled(topic, p, offset));
                st.file = Some(f);
            }
            Err(e) => {
                shared.write_failed(topic, &e);
                divert(consumer, topic, p, st, offset);
                return;
            }
        }
    } else {
        member.with_offsets(|o| o.entry(topic, p).seen(offset));
    }
    let written = st.file.as_mut().map(|f| f.append(offset, &line, now));
    if let Some(Err(e)) = written {
        shared.write_failed(topic, &e);
        let first = st.file.take().map_or(offset, |f| {
            let first = f.first;
            f.discard();
            first
        });
        divert(consumer, topic, p, st, first);
    } else {
        shared.metrics.bytes.add(line.len() as u64 + 1);
        // Size is checked at once (age and idleness with the chores), so a
        // file ends at the first line that reaches `rotate_bytes`.
        if st
            .file
            .as_ref()
            .is_some_and(|f| f.bytes >= shared.config.rotate_bytes)
        {
            close(consumer, topic, p, st);
        }
    }
}
