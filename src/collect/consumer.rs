//! collect's group member: one collector thread (`collect-c<i>`) running a
//! `kafka::member` with collect's role (`role`). It writes each message to the open file
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
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::archive;
use super::config::Format;
use super::files::{OpenFile, date_of, promote_all, should_close};
use super::lines::{Coordinates, envelope_line, raw_line};
use super::retry::{parse_source, retry_wait};
use super::role::{Archive, CollectConsumer, CollectMember, CollectRole, PartState};
use super::{RETRY_AT, RETRY_SOURCE, Shared};
use crate::kafka::member::{self, Spec};
use crate::kafka::record;

pub fn build(
    shared: Arc<Shared>,
    kafka: &crate::config::KafkaConfig,
    group: &str,
    topics: &[String],
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
            counters: shared.metrics.group.clone(),
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
    crate::kafka::member::leave(consumer, Instant::now() + shared.config.shutdown_timeout);
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
    st.next = Some(from);
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
    st.next = None;
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
    if st.next.is_some_and(|n| offset < n) || archive.high.is_some_and(|h| offset <= h) {
        restart(consumer, topic, p, st, offset);
    }
    // The wall clock (and the headers) are read only for retry-topic messages.
    let retry_at: Option<i64> = retry_of
        .and_then(|_| header(RETRY_AT))
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
    st.next = Some(offset + 1);
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
    // A value in another format is filed as its JSON; one it cannot read,
    // as it is (counted). While the schema registry cannot be reached the
    // thread waits; stopping then leaves the record unfiled (and so not
    // committed).
    let stopped = || shared.stop.is_stopped();
    let mut idle = || {
        member.heartbeat.tick();
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let decoded = match m.payload() {
        None => None,
        Some(v) => {
            match shared
                .config
                .value_format
                .to_json_waiting(v, "collect", &stopped, &mut idle)
            {
                None => return,
                Some(Ok(json)) => json,
                Some(Err(_)) => {
                    shared.metrics.undecodable.inc();
                    None
                }
            }
        }
    };
    // A key in another format is filed as its JSON in the envelope; one it
    // cannot read, as it is (counted).
    let key_json = match m.key() {
        Some(k) if !shared.config.key_format.is_plain() => {
            let key_format = &shared.config.key_format;
            match key_format.to_json_waiting(k, "collect", &stopped, &mut idle) {
                None => return,
                Some(Ok(Some(json))) => Some(json),
                Some(Ok(None)) => crate::codec::is_json(k).then(|| k.to_vec()),
                Some(Err(_)) => {
                    shared.metrics.undecodable.inc();
                    None
                }
            }
        }
        _ => None,
    };
    let value = decoded.as_deref().or(m.payload());
    let line = match shared.config.format {
        Format::Raw => raw_line(value),
        Format::Envelope => {
            let (partition, offset) = first_read.unwrap_or((p, offset));
            Cow::Owned(envelope_line(
                &Coordinates {
                    topic: dir_topic,
                    partition,
                    offset,
                    key: key_json.as_deref().or(m.key()),
                    key_json: key_json.is_some(),
                    timestamp: m.timestamp().to_millis(),
                },
                value,
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
