//! One collector thread = one group member. It writes each message to the
//! open file of its partition and commits a partition only up to the first
//! offset not yet durable (in a closed, fsynced, renamed file, or
//! acknowledged in the retry topic). A write error discards the open file,
//! seeks back to its first offset and diverts the partition to
//! `<topic>.retry` for `retry_delay_ms`; retry-topic messages are written
//! (with the topic they came from) once their delay has passed.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use log::{info, warn};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::Producer as _;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use super::config::Format;
use super::files::{OpenFile, date_of, remove_leftovers, should_close};
use super::lines::{Coordinates, envelope_line, raw_line};
use super::retry::{parse_source, retry_wait};
use super::{RETRY_AT, RETRY_SOURCE, Shared};
use crate::kafka::{Context, KafkaStats, committed_positions, partitions_of};

/// (topic, partition, offset, acknowledged) of a retry-topic produce.
pub type RetryDone = (String, i32, i64, bool);

#[derive(Default)]
pub struct PartState {
    /// One past the last offset taken.
    next: Option<i64>,
    file: Option<OpenFile>,
    /// Offsets produced to the retry topic, not yet acknowledged.
    retrying: BTreeSet<i64>,
    diverted_until: Option<Instant>,
    /// A paused retry-topic partition resumes then.
    delayed_until: Option<Instant>,
    committed: Option<i64>,
}

impl PartState {
    /// Everything below is durable.
    fn position(&self) -> Option<i64> {
        [
            self.file.as_ref().map(|f| f.first),
            self.retrying.first().copied(),
            self.next,
        ]
        .into_iter()
        .flatten()
        .min()
    }
    pub fn file_open(&self) -> bool {
        self.file.is_some()
    }
    pub fn delayed(&self) -> bool {
        self.delayed_until.is_some()
    }
}

pub type Parts = Arc<Mutex<HashMap<(String, i32), PartState>>>;

pub struct CollectCtx {
    base: Context,
    /// Known from the settings (see `kafka::rebalance`).
    protocol: rdkafka::consumer::RebalanceProtocol,
    shared: Arc<Shared>,
    pub parts: Parts,
    pub done_tx: Sender<RetryDone>,
    done_rx: Receiver<RetryDone>,
    /// The group has answered this member once (an assignment, maybe empty).
    joined: std::sync::atomic::AtomicBool,
    /// Turns with the poll loop.
    pub heartbeat: Arc<crate::liveness::Heartbeat>,
    /// This client's librdkafka figures (`client="collect-c<i>"`).
    pub stats: Arc<KafkaStats>,
}

impl ClientContext for CollectCtx {
    fn stats(&self, s: Statistics) {
        self.shared.metrics.record_lag(&s);
        self.base.stats(s);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.base.error(error, reason);
    }
}

impl ConsumerContext for CollectCtx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        crate::kafka::rebalance::apply(self, consumer, &self.protocol, err, tpl);
    }

    /// An asynchronous commit is known committed only here, when the
    /// coordinator answered; a failed one is sent again next round.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                if let Ok(mut parts) = self.parts.lock() {
                    for (t, p, o) in committed_positions(offsets) {
                        if let Some(st) = parts.get_mut(&(t, p)) {
                            st.committed = Some(st.committed.map_or(o, |c| c.max(o)));
                        }
                    }
                }
            }
            Err(e) => warn!("commit failed: {e}; sent again shortly"),
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let revoked = partitions_of(tpl);
        info!("partitions revoked: {revoked:?}; closing their files");
        self.finish(consumer, &|t, p| {
            revoked.iter().any(|(rt, rp)| rt == t && *rp == p)
        });
        if let Ok(mut parts) = self.parts.lock() {
            for k in &revoked {
                parts.remove(k);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // librdkafka keeps a partition paused across a revoke and
            // re-assign, but the delay that paused it (a retry not yet due)
            // went with the revocation: fetch again, and pause again if
            // the message is still early.
            let _ = consumer.resume(tpl);
            self.shared.metrics.assignments.inc();
            if !self.joined.swap(true, std::sync::atomic::Ordering::Relaxed) {
                self.shared.metrics.members_joined.inc();
            }
        }
    }
}

impl CollectCtx {
    /// Closes the selected partitions' files, waits for their retry-topic
    /// acknowledgements, and commits synchronously.
    fn finish(&self, consumer: &BaseConsumer<Self>, select: &dyn Fn(&str, i32) -> bool) {
        if let Ok(mut parts) = self.parts.lock() {
            let selected = parts.iter_mut().filter(|((t, p), _)| select(t, *p));
            for st in selected.map(|(_, st)| st) {
                if let Some(f) = st.file.take() {
                    let first = f.first;
                    if self.shared.close_file(f).is_err() {
                        // Not durable: not committed, so re-read by the next owner.
                        st.next = Some(first);
                    }
                }
            }
        }
        let _ = self.shared.retry.flush(self.shared.config.shutdown_timeout);
        self.apply_done(consumer);
        self.commit(consumer, CommitMode::Sync, select);
    }

    fn apply_done(&self, consumer: &BaseConsumer<Self>) {
        let Ok(mut parts) = self.parts.lock() else {
            return;
        };
        for (t, p, o, ok) in self.done_rx.try_iter() {
            let Some(st) = parts.get_mut(&(t.clone(), p)) else {
                continue;
            };
            st.retrying.remove(&o);
            if !ok {
                // The retry topic refused it: read it again from there.
                let back = st.position().map_or(o, |pos| pos.min(o));
                if let Some(f) = st.file.take() {
                    f.discard();
                }
                st.retrying.retain(|x| *x < back);
                st.next = Some(back);
                let _ = consumer.seek(&t, p, Offset::Offset(back), Duration::from_secs(5));
            }
        }
    }

    fn commit(
        &self,
        consumer: &BaseConsumer<Self>,
        mode: CommitMode,
        select: &dyn Fn(&str, i32) -> bool,
    ) {
        let Ok(mut parts) = self.parts.lock() else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        let mut moved = Vec::new();
        for ((t, p), st) in parts.iter().filter(|((t, p), _)| select(t, *p)) {
            if let Some(pos) = st.position()
                && (matches!(mode, CommitMode::Sync) || st.committed.is_none_or(|c| pos > c))
                && tpl.add_partition_offset(t, *p, Offset::Offset(pos)).is_ok()
            {
                moved.push(((t.clone(), *p), pos));
            }
        }
        if moved.is_empty() {
            return;
        }
        // A synchronous commit (revocation, stop) is retried: while members
        // leave, the broker may refuse it for a moment (rebalance in progress).
        let mut result = consumer.commit(&tpl, mode);
        for _ in 0..10 {
            if result.is_ok() || !matches!(mode, CommitMode::Sync) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            result = consumer.commit(&tpl, mode);
        }
        match result {
            // An async commit is known committed when its answer arrives
            // (`commit_callback`).
            Ok(()) if matches!(mode, CommitMode::Sync) => {
                for (k, pos) in moved {
                    if let Some(st) = parts.get_mut(&k) {
                        st.committed = Some(pos);
                    }
                }
            }
            Ok(()) => {}
            Err(e) => warn!("commit failed: {e}"),
        }
    }
}

pub fn build(
    shared: Arc<Shared>,
    kafka: &crate::config::KafkaConfig,
    group: &str,
    topics: &[String],
    i: usize,
) -> anyhow::Result<BaseConsumer<CollectCtx>> {
    let mut props = shared.config.consumer.clone();
    props.push(("group.id".into(), group.to_string()));
    props.push(("client.id".into(), format!("kbridge-collect-{i}")));
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let stats = Arc::new(KafkaStats::default());
    let ctx = CollectCtx {
        protocol: crate::kafka::rebalance::protocol_of(
            &[kafka.properties.clone(), props.clone()].concat(),
        ),
        base: Context::new("collect", stats.clone(), shared.fatal.clone()),
        stats,
        parts: Arc::default(),
        shared,
        done_tx,
        done_rx,
        joined: Default::default(),
        heartbeat: Arc::default(),
    };
    let consumer: BaseConsumer<CollectCtx> =
        crate::kafka::client_config(kafka, &props).create_with_context(ctx)?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    Ok(consumer)
}

pub fn run(consumer: BaseConsumer<CollectCtx>, i: usize) -> std::io::Result<JoinHandle<()>> {
    let watch = crate::panics::Watch::new(
        format!("collect-c{i}"),
        consumer.context().shared.fatal.clone(),
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

fn poll_loop(consumer: &BaseConsumer<CollectCtx>) {
    let ctx = consumer.context();
    let shared = &ctx.shared;
    let all = |_: &str, _: i32| true;
    let mut last_commit = Instant::now();
    let mut last_chores: Option<Instant> = None;
    let name = std::thread::current().name().unwrap_or("").to_string();
    while !shared.stop.is_stopped() {
        let now = Instant::now();
        if last_chores.is_none_or(|t| now.duration_since(t) >= CHORES_EVERY) {
            last_chores = Some(now);
            ctx.heartbeat.tick();
            crate::liveness::debug_stall(&name, &shared.stop);
            ctx.apply_done(consumer);
            housekeeping(consumer, ctx, now);
            if now.duration_since(last_commit) >= Duration::from_millis(200) {
                ctx.commit(consumer, CommitMode::Async, &all);
                last_commit = now;
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => last_chores = None,
            Some(Err(e)) => warn!("consume error: {e}"),
            Some(Ok(m)) => take(consumer, ctx, &m, now),
        }
    }
    ctx.finish(consumer, &all);
    consumer.unsubscribe();
}

/// Rotation, idle close, end of diversions, resumption of delayed retries.
fn housekeeping(consumer: &BaseConsumer<CollectCtx>, ctx: &CollectCtx, now: Instant) {
    let c = &ctx.shared.config;
    let Ok(mut parts) = ctx.parts.lock() else {
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
            close(consumer, ctx, t, *p, st);
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
fn close(
    consumer: &BaseConsumer<CollectCtx>,
    ctx: &CollectCtx,
    topic: &str,
    p: i32,
    st: &mut PartState,
) {
    if let Some(f) = st.file.take() {
        let first = f.first;
        if let Err(e) = ctx.shared.close_file(f) {
            ctx.shared.write_failed(topic, &e);
            divert(consumer, ctx, topic, p, st, first);
        }
    }
}

/// Sends this partition to the retry topic for a while, from `from` on.
fn divert(
    consumer: &BaseConsumer<CollectCtx>,
    ctx: &CollectCtx,
    topic: &str,
    p: i32,
    st: &mut PartState,
    from: i64,
) {
    st.diverted_until = Some(Instant::now() + ctx.shared.config.retry_delay);
    st.next = Some(from);
    let _ = consumer.seek(topic, p, Offset::Offset(from), Duration::from_secs(5));
}

/// Files one message; `now` is the time its poll began.
fn take(
    consumer: &BaseConsumer<CollectCtx>,
    ctx: &CollectCtx,
    m: &BorrowedMessage<'_>,
    now: Instant,
) {
    let shared = &ctx.shared;
    let (topic, p, offset) = (m.topic(), m.partition(), m.offset());
    let header = |name: &str| {
        m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value.map(<[u8]>::to_vec))
        })
    };
    // The retry headers count only on this role's retry topics.
    let retry_of = shared.retry_source(topic);
    let retry_at: Option<i64> = retry_of
        .and(header(RETRY_AT))
        .and_then(|v| String::from_utf8(v).ok()?.parse().ok());
    let Ok(mut parts) = ctx.parts.lock() else {
        return;
    };
    let st = parts.entry((topic.to_string(), p)).or_default();
    if st.next.is_some_and(|n| offset < n) {
        return; // fetched before a seek back; it comes again
    }
    // The wall clock is read only for retry-topic messages.
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
    st.next = Some(offset + 1);
    shared.metrics.consumed.inc();
    if st.diverted_until.is_some_and(|d| d > now) {
        st.retrying.insert(offset);
        shared.to_retry(m, &ctx.done_tx);
        return;
    }
    st.diverted_until = None;
    // A retry-topic message is filed with the topic its retry topic serves
    // (never a name read from a header), at the coordinates it was first
    // read at when its header says so.
    let dir_topic = retry_of.unwrap_or(topic);
    let first_read = retry_of.and_then(|t| {
        let v = header(RETRY_SOURCE)?;
        parse_source(std::str::from_utf8(&v).ok()?, t)
    });
    let value = m.payload().unwrap_or_default();
    let line = match shared.config.format {
        Format::Raw => raw_line(value),
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
        let root = &shared.config.record_directory;
        let opened = remove_leftovers(root, dir_topic, topic, p, offset).and_then(|_| {
            OpenFile::create(root, dir_topic, topic, p, offset, &date, shared.config.gzip)
        });
        match opened {
            Ok(f) => {
                shared.metrics.files_opened.inc();
                st.file = Some(f);
            }
            Err(e) => {
                shared.write_failed(topic, &e);
                divert(consumer, ctx, topic, p, st, offset);
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
        divert(consumer, ctx, topic, p, st, first);
    } else {
        shared.metrics.bytes.add(line.len() as u64 + 1);
        // Size is checked at once (age and idleness with the chores), so a
        // file ends at the first line that reaches `rotate_bytes`.
        if st
            .file
            .as_ref()
            .is_some_and(|f| f.bytes >= shared.config.rotate_bytes)
        {
            close(consumer, ctx, topic, p, st);
        }
    }
}
