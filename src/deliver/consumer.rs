//! deliver's group member: one consumer thread (`deliver-c<i>`) running a
//! `kafka::member` with this role. It polls, registers each offset with the
//! member's tracker, updates the aggregates and dispatches the message; it
//! never stops polling. A message that finds no room waits in a stash per
//! partition, in order: a full channel pauses every partition, a full key
//! lane only its own. Finished offsets come back on the done channel;
//! positions are committed every `commit_interval_ms`, synchronously on
//! revocation and at stop.
//!
//! Revocation gives up everything of the revoked partitions at once: their
//! leases end, so the senders, the requeue thread and the lanes give their
//! messages up instead of sending them; the callback waits only for calls
//! already under way (bounded by `shutdown_timeout_ms`), then commits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::warn;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer};

use super::config::{Commit, DeliverConfig};
use super::stash::{Part, Stash};
use super::take::take;
use super::{Done, Refused, Shared, Work};
use crate::config::KafkaConfig;
use crate::kafka::member::{self, Member, Role, RoleConsumer, Spec};

pub type DeliverMember = Member<DeliverRole>;
pub(super) type DeliverConsumer = RoleConsumer<DeliverRole>;

/// What deliver adds to a group member.
pub struct DeliverRole {
    shared: Arc<Shared>,
    stash: Mutex<Stash>,
    done_rx: Receiver<Done>,
    pub(super) done_tx: Sender<Done>,
    /// Topic names shared by this member's messages (one allocation per
    /// topic, not per message).
    topic_names: Mutex<HashMap<String, Arc<str>>>,
}

impl Role for DeliverRole {
    fn revoking(
        &self,
        member: &DeliverMember,
        _consumer: &DeliverConsumer,
        select: &dyn Fn(&str, i32) -> bool,
    ) {
        // From here on nothing of these partitions starts a call: senders,
        // lanes and the requeue thread give their messages up.
        let leases = member.with_offsets(|o| o.end(select));
        self.give_up_stash(member, select);
        for w in self.shared.lanes.drain_ended() {
            self.shared.abandon(w);
        }
        // Calls under way end within the request timeout.
        let deadline = Instant::now() + self.shared.config.shutdown_timeout;
        loop {
            self.drain_done(member, Duration::ZERO);
            let busy: usize = leases.iter().map(|l| l.busy()).sum();
            if busy == 0 {
                break;
            }
            member.heartbeat.tick();
            if Instant::now() >= deadline {
                warn!(
                    "{}: {busy} calls of revoked partitions still under way at the deadline; their messages will be redelivered",
                    member.name()
                );
                break;
            }
            self.drain_done(member, Duration::from_millis(20));
        }
        // A call that ended just before its lease was seen free reported
        // first: take that report too.
        self.drain_done(member, Duration::ZERO);
    }

    fn forget(&self, revoked: &[(String, i32)]) {
        let gone = |(t, p): &Part| revoked.iter().any(|(rt, rp)| **rt == **t && rp == p);
        if let Ok(mut st) = self.stash.lock() {
            st.forget(&gone);
        }
    }

    fn assigned(
        &self,
        member: &DeliverMember,
        consumer: &DeliverConsumer,
        tpl: &TopicPartitionList,
    ) {
        // What an earlier owner quarantined is known before its partitions'
        // messages are (their state records precede its commits).
        if let Some(h) = &self.shared.held
            && !h.catch_up(self.shared.config.shutdown_timeout)
        {
            warn!(
                "{}: the quarantine topic was not read to its end within shutdown_timeout_ms; keys quarantined by another member may be delivered",
                member.name()
            );
        }
        // librdkafka keeps a partition paused across a revoke and re-assign.
        // A newly assigned partition takes the member's state: paused while
        // the channel is full (the flush resumes the whole assignment),
        // fetching otherwise.
        let full = self.stash.lock().map(|st| st.full()).unwrap_or(false);
        let _ = if full {
            consumer.pause(tpl)
        } else {
            consumer.resume(tpl)
        };
    }
}

impl DeliverRole {
    pub(super) fn topic_name(&self, topic: &str) -> Arc<str> {
        let Ok(mut names) = self.topic_names.lock() else {
            return Arc::from(topic);
        };
        if let Some(t) = names.get(topic) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(topic);
        names.insert(topic.to_string(), t.clone());
        t
    }

    /// Applies finished offsets; waits up to `wait` for the first one.
    pub(super) fn drain_done(&self, member: &DeliverMember, wait: Duration) {
        let first = if wait.is_zero() {
            self.done_rx.try_recv().ok()
        } else {
            self.done_rx.recv_timeout(wait).ok()
        };
        let Some(first) = first else { return };
        member.with_offsets(|o| {
            for d in std::iter::once(first).chain(self.done_rx.try_iter()) {
                if d.finished {
                    o.done(&d.topic, d.partition, d.offset, &d.lease);
                } else {
                    o.abandon(&d.topic, d.partition, d.offset, &d.lease);
                }
            }
        });
    }

    pub fn stashed(&self) -> usize {
        self.stash.lock().map(|s| s.count()).unwrap_or(0)
    }

    /// Gives up the selected partitions' stashed messages (never handed
    /// out, so redelivered later): counted, and no commit passes them.
    fn give_up_stash(&self, member: &DeliverMember, select: &dyn Fn(&str, i32) -> bool) {
        let stashed = self
            .stash
            .lock()
            .map(|mut s| s.take(select))
            .unwrap_or_default();
        self.shared.metrics.abandoned.add(stashed.len() as u64);
        member.with_offsets(|o| {
            for w in &stashed {
                o.abandon(&w.msg.topic, w.msg.partition, w.msg.offset, &w.msg.lease);
            }
        });
    }

    fn stash(&self, w: Work) {
        if let Ok(mut s) = self.stash.lock() {
            s.push(w);
        }
    }

    /// See [`Stash::flush`].
    fn flush_stash(&self, consumer: &DeliverConsumer) -> bool {
        let suspended = self
            .shared
            .suspended
            .load(std::sync::atomic::Ordering::Relaxed);
        self.stash
            .lock()
            .map(|mut s| {
                if suspended {
                    // Held like a full channel: nothing fetched, nothing
                    // handed on, the group served.
                    s.hold(consumer);
                    false
                } else {
                    s.flush(&self.shared, consumer)
                }
            })
            .unwrap_or(true)
    }

    fn must_wait(&self, w: &Work) -> bool {
        self.stash.lock().is_ok_and(|s| s.must_wait(w))
    }
}

/// Creates consumer `i` and subscribes it (build before spawn).
pub fn build(
    config: &DeliverConfig,
    kafka: &KafkaConfig,
    shared: Arc<Shared>,
    i: usize,
) -> anyhow::Result<DeliverConsumer> {
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let role = DeliverRole {
        shared: shared.clone(),
        stash: Mutex::default(),
        done_rx,
        done_tx,
        topic_names: Mutex::default(),
    };
    member::build(
        Spec {
            kafka,
            properties: &config.consumer,
            group: &config.group_id,
            topics: &config.source_topics(),
            name: member_name(config, i),
            fatal: shared.fatal.clone(),
            counters: shared.metrics.group.clone(),
        },
        role,
    )
}

/// Consumer `i`'s name in logs, thread names and `client.id`: `deliver-c0`,
/// or `crm-c0` for `[subscription.crm]`.
fn member_name(config: &DeliverConfig, i: usize) -> String {
    match &config.subscription {
        None => format!("deliver-c{i}"),
        Some(name) => format!("{name}-c{i}"),
    }
}

/// Starts the poll loop of consumer `i` on its own thread.
pub fn run(consumer: DeliverConsumer, i: usize) -> std::io::Result<JoinHandle<()>> {
    let shared = consumer.context().role.shared.clone();
    let name = member_name(&shared.config, i);
    let watch = crate::panics::Watch::new(name.clone(), shared.fatal.clone());
    std::thread::Builder::new().name(name).spawn(move || {
        let _watch = watch;
        poll_loop(&consumer, &shared)
    })
}

fn poll_loop(consumer: &DeliverConsumer, shared: &Shared) {
    let member = &**consumer.context();
    let role = &member.role;
    let all = |_: &str, _: i32| true;
    let mut last_commit = Instant::now();
    let before = shared.config.commit == Commit::BeforeDelivery;
    let name = member.name().to_string();
    while !shared.stop.is_stopped() {
        member.heartbeat.tick();
        crate::liveness::debug_stall(&name, &shared.stop);
        role.drain_done(member, Duration::ZERO);
        if last_commit.elapsed() >= shared.config.commit_interval {
            member.commit(consumer, CommitMode::Async, &all);
            last_commit = Instant::now();
        }
        if !role.flush_stash(consumer) {
            // The channel is full: keep serving the group (rebalances,
            // heartbeats) without fetching; what was fetched already joins
            // the stash.
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(10))
                && let Some(w) = take(member, shared, &m)
            {
                role.stash(w);
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
                let mut batch: Vec<Work> = take(member, shared, &m).into_iter().collect();
                drop(m);
                if before {
                    // At-most-once: what is already fetched is committed
                    // (synchronously, once) before any of it is sent.
                    while batch.len() < 500 {
                        match consumer.poll(Duration::ZERO) {
                            Some(Ok(m)) => batch.extend(take(member, shared, &m)),
                            _ => break,
                        }
                    }
                    member.with_offsets(|o| {
                        for w in &batch {
                            let m = &w.msg;
                            o.done(&m.topic, m.partition, m.offset, &m.lease);
                        }
                    });
                    member.commit(consumer, CommitMode::Sync, &all);
                }
                for w in batch {
                    hand_on(consumer, shared, w, &mut last_commit);
                }
            }
        }
    }
    // Stop fetching; finish or abandon what is in flight; commit; leave.
    role.give_up_stash(member, &all);
    wait_in_flight(member, Instant::now() + shared.config.shutdown_timeout);
    member.commit(consumer, CommitMode::Sync, &all);
    crate::kafka::member::leave(consumer, Instant::now() + shared.config.shutdown_timeout);
}

/// Waits until nothing is in flight (every message finished or abandoned)
/// or `deadline`.
fn wait_in_flight(member: &DeliverMember, deadline: Instant) {
    let shared = &member.role.shared;
    loop {
        member.role.drain_done(member, Duration::ZERO);
        let open = member.with_offsets(|o| o.in_flight(&|_, _| true));
        if open == 0 {
            return;
        }
        member.heartbeat.tick();
        if Instant::now() >= deadline {
            let positions = member.with_offsets(|o| format!("{:?}", o.summary()));
            warn!(
                "{open} messages still in flight at the deadline ({positions}; channel {} busy {} requeued {}); they will be redelivered",
                shared.work_rx.len(),
                shared.metrics.busy.get(),
                shared.metrics.requeued.get()
            );
            return;
        }
        member.role.drain_done(member, Duration::from_millis(20));
    }
}

/// How long a consumer waits for room in a full channel before it stashes
/// the message and pauses fetching. Pausing makes librdkafka drop what it
/// already fetched for the partition (it is fetched again on resume), so it
/// is kept for lasting congestion: pausing at every full channel measured
/// at a quarter of the sink's rate.
const WAIT_FOR_ROOM: Duration = Duration::from_secs(1);

/// Dispatches `w`, waiting up to [`WAIT_FOR_ROOM`] for room (done reports
/// and commits keep flowing meanwhile), or stashes it behind earlier
/// stashed ones of its partition (order kept).
fn hand_on(consumer: &DeliverConsumer, shared: &Shared, w: Work, last_commit: &mut Instant) {
    let member = &**consumer.context();
    let role = &member.role;
    if role.must_wait(&w) || shared.saturated() {
        return role.stash(w);
    }
    let deadline = Instant::now() + WAIT_FOR_ROOM;
    let mut w = w;
    loop {
        match shared.dispatch_waiting(w, Duration::from_millis(20)) {
            Ok(()) => return,
            Err(Refused::Lane(back)) => return role.stash(back),
            Err(Refused::Full(back)) => w = back,
        }
        if shared.stop.is_stopped() || Instant::now() >= deadline {
            return role.stash(w);
        }
        member.heartbeat.tick();
        role.drain_done(member, Duration::ZERO);
        if last_commit.elapsed() >= shared.config.commit_interval {
            member.commit(consumer, CommitMode::Async, &|_, _| true);
            *last_commit = Instant::now();
        }
    }
}
