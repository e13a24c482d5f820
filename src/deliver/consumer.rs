//! One consumer thread = one group member. It polls, registers each offset
//! with its tracker, updates the aggregates and dispatches the message; it
//! never stops polling: a full channel stashes messages and pauses fetching.
//! Finished offsets come back on its done channel; positions are committed
//! every `commit_interval_ms`, synchronously on revocation and at stop.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, info, warn};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use super::config::{Commit, DeliverConfig};
use super::offsets::Offsets;
use super::{Done, Msg, Shared, Work};
use crate::config::KafkaConfig;
use crate::kafka::{Context, KafkaStats, client_config, committed_positions, partitions_of};

/// (topic, partition, lag, committed offset) rows from librdkafka statistics.
pub type LagRows = Arc<Mutex<Vec<(String, i32, i64, i64)>>>;

/// What the consumer thread and its rebalance callbacks share.
#[derive(Default)]
pub struct ThreadState {
    pub offsets: Offsets,
    /// Polled messages waiting for room in the next channel, in order.
    stash: VecDeque<Work>,
    paused: bool,
    /// Partitions the group currently assigns to this member.
    assigned: usize,
    /// The group has answered this member once (an assignment, maybe empty).
    joined: bool,
    /// Topic names shared by this member's messages (one allocation per
    /// topic, not per message).
    topic_names: std::collections::HashMap<String, Arc<str>>,
}

pub struct ConsumerCtx {
    base: Context,
    /// Known from the settings (see `kafka::rebalance`).
    protocol: rdkafka::consumer::RebalanceProtocol,
    shared: Arc<Shared>,
    pub state: Arc<Mutex<ThreadState>>,
    done_rx: Receiver<Done>,
    done_tx: Sender<Done>,
    /// Lag and committed offset per partition, from librdkafka statistics.
    pub lag: LagRows,
    /// Turns with the poll loop (and while it waits for room or in-flight work).
    pub heartbeat: Arc<crate::liveness::Heartbeat>,
}

/// What telemetry reads of a consumer thread.
#[derive(Clone)]
pub struct ConsumerView {
    pub state: Arc<Mutex<ThreadState>>,
    pub stats: Arc<KafkaStats>,
    pub lag: LagRows,
    pub heartbeat: Arc<crate::liveness::Heartbeat>,
}

impl ThreadState {
    fn topic_name(&mut self, topic: &str) -> Arc<str> {
        if let Some(t) = self.topic_names.get(topic) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(topic);
        self.topic_names.insert(topic.to_string(), t.clone());
        t
    }

    pub fn stashed(&self) -> usize {
        self.stash.len()
    }

    pub fn assigned(&self) -> usize {
        self.assigned
    }

    /// Drops the selected partitions' stashed messages (never handed out,
    /// so redelivered later); returns how many.
    fn abandon_stash(&mut self, select: &dyn Fn(&str, i32) -> bool) -> usize {
        let before = self.stash.len();
        let offsets = &mut self.offsets;
        self.stash.retain(|w| {
            let (t, p) = (&w.msg.topic, w.msg.partition);
            let keep = !select(t, p);
            if !keep {
                offsets.abandon(t, p, w.msg.offset);
            }
            keep
        });
        before - self.stash.len()
    }
}

impl ClientContext for ConsumerCtx {
    fn stats(&self, s: Statistics) {
        let mut rows = Vec::new();
        for (topic, t) in &s.topics {
            for p in t.partitions.values() {
                if p.partition >= 0 && p.fetch_state != "none" && p.consumer_lag >= 0 {
                    rows.push((
                        topic.clone(),
                        p.partition,
                        p.consumer_lag,
                        p.committed_offset,
                    ));
                }
            }
        }
        if let Ok(mut l) = self.lag.lock() {
            *l = rows;
        }
        self.base.stats(s);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.base.error(error, reason);
    }
}

impl ConsumerContext for ConsumerCtx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        crate::kafka::rebalance::apply(self, consumer, &self.protocol, err, tpl);
    }

    /// An asynchronous commit is known committed only here, when the
    /// coordinator answered; a failed one is sent again next interval.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                if let Ok(mut st) = self.state.lock() {
                    for (t, p, o) in committed_positions(offsets) {
                        st.offsets.committed(&t, p, o);
                    }
                }
            }
            Err(e) => {
                self.shared.metrics.commit_errors.inc();
                warn!("commit failed: {e}; sent again at the next interval");
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let revoked = partitions_of(tpl);
        info!("partitions revoked: {revoked:?}; finishing their in-flight messages");
        let is_revoked = |t: &str, p: i32| revoked.iter().any(|(rt, rp)| rt == t && *rp == p);
        // Stashed messages were never handed out: they are redelivered to
        // the next owner.
        if let Ok(mut st) = self.state.lock() {
            st.abandon_stash(&is_revoked);
        }
        self.wait_in_flight(
            Instant::now() + self.shared.config.shutdown_timeout,
            &is_revoked,
        );
        self.commit(consumer, CommitMode::Sync, &is_revoked);
        if let Ok(mut lag) = self.lag.lock() {
            lag.retain(|(t, p, _, _)| !is_revoked(t, *p));
        }
        if let Ok(mut st) = self.state.lock() {
            for (t, p) in &revoked {
                st.offsets.remove(t, *p);
            }
            st.assigned = st.assigned.saturating_sub(revoked.len());
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // librdkafka keeps a partition paused across a revoke and
            // re-assign. A newly assigned partition takes this member's
            // state: paused while its stash waits for room (flush_stash
            // resumes the whole assignment), fetching otherwise. With
            // incremental (KIP-848) assignment other partitions stay
            // assigned, and possibly paused, meanwhile.
            let parts: Vec<String> = tpl
                .elements()
                .iter()
                .map(|e| format!("{}/{}", e.topic(), e.partition()))
                .collect();
            info!("partitions assigned: {parts:?}");
            if let Ok(mut st) = self.state.lock() {
                let _ = if st.paused {
                    consumer.pause(tpl)
                } else {
                    consumer.resume(tpl)
                };
                st.assigned += parts.len();
                if !st.joined {
                    st.joined = true;
                    self.shared.metrics.members_joined.inc();
                }
            }
        }
    }
}

impl ConsumerCtx {
    /// Applies finished offsets; waits up to `wait` for the first one.
    fn drain_done(&self, wait: Duration) {
        let first = if wait.is_zero() {
            self.done_rx.try_recv().ok()
        } else {
            self.done_rx.recv_timeout(wait).ok()
        };
        let Some(first) = first else { return };
        if let Ok(mut st) = self.state.lock() {
            for (t, p, o, finished) in std::iter::once(first).chain(self.done_rx.try_iter()) {
                if finished {
                    st.offsets.done(&t, p, o);
                } else {
                    st.offsets.abandon(&t, p, o);
                }
            }
        }
    }

    /// Waits until the selected partitions have nothing in flight (every
    /// message finished or abandoned) or `deadline`.
    fn wait_in_flight(&self, deadline: Instant, select: &dyn Fn(&str, i32) -> bool) {
        loop {
            self.drain_done(Duration::ZERO);
            let open = self
                .state
                .lock()
                .map(|s| s.offsets.in_flight(select))
                .unwrap_or(0);
            if open == 0 {
                return;
            }
            self.heartbeat.tick();
            if Instant::now() >= deadline {
                let positions = self
                    .state
                    .lock()
                    .map(|s| format!("{:?}", s.offsets.positions()))
                    .unwrap_or_default();
                warn!(
                    "{open} messages still in flight at the deadline ({positions}; channel {} busy {} requeued {}); they will be redelivered",
                    self.shared.work_rx.len(),
                    self.shared.metrics.busy.get(),
                    self.shared.metrics.requeued.get()
                );
                return;
            }
            self.drain_done(Duration::from_millis(20));
        }
    }

    /// Commits every position that moved (of the selected partitions). The
    /// state lock is not held while the broker answers: telemetry and the
    /// senders' done reports never wait on a commit.
    fn commit(
        &self,
        consumer: &BaseConsumer<Self>,
        mode: CommitMode,
        select: &dyn Fn(&str, i32) -> bool,
    ) {
        let positions = {
            let Ok(st) = self.state.lock() else {
                return;
            };
            // An async commit counts as done when its answer arrives
            // (`commit_callback`); a synchronous commit (revocation, stop)
            // sends every position again.
            match mode {
                CommitMode::Sync => st
                    .offsets
                    .positions()
                    .into_iter()
                    .filter_map(|((t, p), pos, _)| pos.map(|o| (t, p, o)))
                    .collect(),
                CommitMode::Async => st.offsets.to_commit(),
            }
        };
        let moved: Vec<(String, i32, i64)> = positions
            .into_iter()
            .filter(|(t, p, _)| select(t, *p))
            .collect();
        if moved.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in &moved {
            if tpl.add_partition_offset(t, *p, Offset::Offset(*o)).is_err() {
                return;
            }
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                if matches!(mode, CommitMode::Sync)
                    && let Ok(mut st) = self.state.lock()
                {
                    for (t, p, o) in &moved {
                        st.offsets.committed(t, *p, *o);
                    }
                }
                self.shared.metrics.commits.inc();
                debug!("committed {moved:?}");
            }
            Err(e) => {
                self.shared.metrics.commit_errors.inc();
                warn!("commit of {moved:?} failed: {e}");
            }
        }
    }
}

/// Creates consumer `i` and subscribes it (build before spawn).
pub fn build(
    config: &DeliverConfig,
    kafka: &KafkaConfig,
    shared: Arc<Shared>,
    fatal: Sender<String>,
    i: usize,
) -> anyhow::Result<(BaseConsumer<ConsumerCtx>, ConsumerView)> {
    let mut props = config.consumer.clone();
    props.push(("group.id".into(), config.group_id.clone()));
    props.push(("client.id".into(), format!("kbridge-deliver-{i}")));
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let stats = Arc::new(KafkaStats::default());
    let ctx = ConsumerCtx {
        protocol: crate::kafka::rebalance::protocol_of(
            &[kafka.properties.clone(), props.clone()].concat(),
        ),
        base: Context::new("deliver", stats.clone(), fatal),
        shared,
        state: Arc::default(),
        done_rx,
        done_tx,
        lag: Arc::default(),
        heartbeat: Arc::default(),
    };
    let view = ConsumerView {
        state: ctx.state.clone(),
        stats,
        lag: ctx.lag.clone(),
        heartbeat: ctx.heartbeat.clone(),
    };
    let consumer: BaseConsumer<ConsumerCtx> =
        client_config(kafka, &props).create_with_context(ctx)?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok((consumer, view))
}

/// Starts the poll loop of consumer `i` on its own thread.
pub fn run(
    consumer: BaseConsumer<ConsumerCtx>,
    shared: Arc<Shared>,
    i: usize,
) -> std::io::Result<JoinHandle<()>> {
    let watch = crate::panics::Watch::new(format!("deliver-c{i}"), shared.fatal.clone());
    std::thread::Builder::new()
        .name(format!("deliver-c{i}"))
        .spawn(move || {
            let _watch = watch;
            poll_loop(&consumer, &shared)
        })
}

fn poll_loop(consumer: &BaseConsumer<ConsumerCtx>, shared: &Shared) {
    let ctx = consumer.context();
    let all = |_: &str, _: i32| true;
    let mut last_commit = Instant::now();
    let before = shared.config.commit == Commit::BeforeDelivery;
    let name = std::thread::current().name().unwrap_or("").to_string();
    while !shared.stop.is_stopped() {
        ctx.heartbeat.tick();
        crate::liveness::debug_stall(&name, &shared.stop);
        ctx.drain_done(Duration::ZERO);
        if last_commit.elapsed() >= shared.config.commit_interval {
            ctx.commit(consumer, CommitMode::Async, &all);
            last_commit = Instant::now();
        }
        if !flush_stash(consumer, ctx, shared) {
            // Still full: keep serving the group (rebalances, heartbeats)
            // without fetching; anything already fetched joins the stash.
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(10)) {
                let w = take(ctx, shared, &m);
                if let Ok(mut st) = ctx.state.lock() {
                    st.stash.push_back(w);
                }
            }
            continue;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => {
                shared.metrics.consume_errors.inc();
                warn!("consume error: {e}");
            }
            Some(Ok(m)) => {
                let mut batch = vec![take(ctx, shared, &m)];
                drop(m);
                if before {
                    // At-most-once: what is already fetched is committed
                    // (synchronously, once) before any of it is sent.
                    while batch.len() < 500 {
                        match consumer.poll(Duration::ZERO) {
                            Some(Ok(m)) => batch.push(take(ctx, shared, &m)),
                            _ => break,
                        }
                    }
                    if let Ok(mut st) = ctx.state.lock() {
                        for w in &batch {
                            st.offsets.done(&w.msg.topic, w.msg.partition, w.msg.offset);
                        }
                    }
                    ctx.commit(consumer, CommitMode::Sync, &all);
                }
                for w in batch {
                    hand_on(consumer, ctx, shared, w, &mut last_commit);
                }
            }
        }
    }
    // Stop fetching; finish or abandon what is in flight; commit; leave.
    if let Ok(mut st) = ctx.state.lock() {
        let n = st.abandon_stash(&all);
        shared.metrics.abandoned.add(n as u64);
    }
    ctx.wait_in_flight(Instant::now() + shared.config.shutdown_timeout, &all);
    ctx.commit(consumer, CommitMode::Sync, &all);
    consumer.unsubscribe();
}

/// How long a consumer waits for room in a full channel before it stashes
/// the message and pauses fetching. Pausing makes librdkafka drop what it
/// already fetched for the partition (it is fetched again on resume), so it
/// is kept for lasting congestion: pausing at every full channel measured
/// at a quarter of the sink's rate.
const WAIT_FOR_ROOM: Duration = Duration::from_secs(1);

/// Dispatches `w`, waiting up to [`WAIT_FOR_ROOM`] for room (done reports
/// and commits keep flowing meanwhile), or stashes it behind earlier
/// stashed ones (order kept).
fn hand_on(
    consumer: &BaseConsumer<ConsumerCtx>,
    ctx: &ConsumerCtx,
    shared: &Shared,
    w: Work,
    last_commit: &mut Instant,
) {
    let stash = |w: Work| {
        if let Ok(mut st) = ctx.state.lock() {
            st.stash.push_back(w);
        }
    };
    let queued = ctx
        .state
        .lock()
        .map(|st| !st.stash.is_empty())
        .unwrap_or(true);
    if queued || shared.saturated() {
        return stash(w);
    }
    let deadline = Instant::now() + WAIT_FOR_ROOM;
    let mut w = w;
    loop {
        match shared.dispatch_waiting(w, Duration::from_millis(20)) {
            Ok(()) => return,
            Err(back) => w = back,
        }
        if shared.stop.is_stopped() || Instant::now() >= deadline {
            return stash(w);
        }
        ctx.heartbeat.tick();
        ctx.drain_done(Duration::ZERO);
        if last_commit.elapsed() >= shared.config.commit_interval {
            ctx.commit(consumer, CommitMode::Async, &|_, _| true);
            *last_commit = Instant::now();
        }
    }
}

/// Moves stashed messages on; true when the stash is empty (fetching resumed).
fn flush_stash(consumer: &BaseConsumer<ConsumerCtx>, ctx: &ConsumerCtx, shared: &Shared) -> bool {
    let Ok(mut st) = ctx.state.lock() else {
        return true;
    };
    while let Some(w) = st.stash.pop_front() {
        match if shared.saturated() {
            Err(w)
        } else {
            shared.dispatch(w)
        } {
            Ok(()) => {}
            Err(w) => {
                st.stash.push_front(w);
                if !st.paused {
                    if let Ok(a) = consumer.assignment() {
                        let _ = consumer.pause(&a);
                    }
                    st.paused = true;
                    shared.metrics.pauses.inc();
                }
                return false;
            }
        }
    }
    if st.paused {
        if let Ok(a) = consumer.assignment() {
            let _ = consumer.resume(&a);
        }
        st.paused = false;
    }
    true
}

/// Detaches a message, registers its offset and counts it.
fn take(ctx: &ConsumerCtx, shared: &Shared, m: &rdkafka::message::BorrowedMessage<'_>) -> Work {
    let payload = m.payload().unwrap_or_default().to_vec();
    shared.aggregates.record(
        m.topic(),
        &payload,
        &shared.config.aggregate_field,
        m.timestamp().to_millis(),
    );
    shared.metrics.consumed.inc();
    let topic = match ctx.state.lock() {
        Ok(mut st) => {
            st.offsets.polled(m.topic(), m.partition(), m.offset());
            st.topic_name(m.topic())
        }
        Err(_) => Arc::from(m.topic()),
    };
    Work {
        msg: Msg {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload,
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
            done: ctx.done_tx.clone(),
        },
        attempts: 0,
        parking: None,
        enrich_attempts: 0,
    }
}
