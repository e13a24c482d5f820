//! The one consumer group member both consumer roles use. A member owns
//! what every kbridge consumer needs, written once: the client context
//! (statistics, lag rows, fatal-error escalation), the rebalance applied
//! without asking librdkafka for its protocol (`kafka::rebalance`), the
//! offset tracker (`kafka::offsets`) with its commit builder and commit
//! callback, the joined flag and the assignment count, and a heartbeat for
//! the watchdog. A role plugs in its differences as a [`Role`]: what to
//! finish or give up before partitions are revoked, what to forget after,
//! what to do on an assignment, and what a confirmed commit means to it
//! (collect makes its files visible then).
//!
//! Threads: a member belongs to its role's poll thread; every callback runs
//! on that thread inside `poll`. Telemetry reads it through its `Arc`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{debug, info, warn};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use super::offsets::Offsets;
use super::{Context, KafkaStats, client_config, committed_positions, partitions_of};
use crate::config::KafkaConfig;
use crate::liveness::Heartbeat;
use crate::metrics::Counter;

/// (topic, partition, lag, committed offset) rows from librdkafka statistics.
pub type LagRows = Mutex<Vec<(String, i32, i64, i64)>>;

/// A consumer whose context is a member of role `R`.
pub type RoleConsumer<R> = BaseConsumer<Member<R>>;

/// Counters the members of one role share.
#[derive(Debug, Default)]
pub struct GroupCounters {
    pub commits: Counter,
    pub commit_errors: Counter,
    /// Members that have received their first assignment (maybe empty);
    /// a role is ready once one has.
    pub members_joined: Counter,
    /// Assignments received (rebalances).
    pub assignments: Counter,
}

/// What a role adds to a member.
pub trait Role: Send + Sync + Sized + 'static {
    /// Partitions chosen by `select` are about to be revoked: finish or give
    /// up their work so that the tracker's positions are final. Runs inside
    /// the rebalance callback: bounded, and short.
    fn revoking(
        &self,
        member: &Member<Self>,
        consumer: &RoleConsumer<Self>,
        select: &dyn Fn(&str, i32) -> bool,
    );

    /// The revoked partitions were committed and their tracking ended:
    /// forget their state.
    fn forget(&self, _revoked: &[(String, i32)]) {}

    /// An assignment was applied (incrementally or whole).
    fn assigned(
        &self,
        member: &Member<Self>,
        consumer: &RoleConsumer<Self>,
        tpl: &TopicPartitionList,
    );

    /// The group coordinator confirmed these positions.
    fn committed(&self, _positions: &[(String, i32, i64)]) {}
}

/// The member: the consumer's context.
pub struct Member<R: Role> {
    base: Context,
    /// Known from the settings (see `kafka::rebalance`).
    protocol: RebalanceProtocol,
    /// Where every taken offset of this member's partitions stands.
    pub offsets: Mutex<Offsets>,
    pub lag: LagRows,
    /// Turns with the poll loop (and while it waits for work in flight).
    pub heartbeat: Heartbeat,
    /// This client's librdkafka figures.
    pub stats: Arc<KafkaStats>,
    counters: Arc<GroupCounters>,
    joined: AtomicBool,
    assigned: AtomicUsize,
    pub role: R,
}

/// What a member is built from.
pub struct Spec<'a> {
    pub kafka: &'a KafkaConfig,
    /// The role's consumer properties (defaults merged with its section).
    pub properties: &'a [(String, String)],
    pub group: &'a str,
    pub topics: &'a [String],
    /// `client.id` and the name in logs and metrics (`deliver-c0`).
    pub name: String,
    pub fatal: Sender<String>,
    pub counters: Arc<GroupCounters>,
}

/// Creates a member of `role` and subscribes it (build before spawn).
pub fn build<R: Role>(spec: Spec<'_>, role: R) -> anyhow::Result<RoleConsumer<R>> {
    let mut props = spec.properties.to_vec();
    props.push(("group.id".into(), spec.group.to_string()));
    props.push(("client.id".into(), format!("kbridge-{}", spec.name)));
    let stats = Arc::new(KafkaStats::default());
    let member = Member {
        protocol: super::rebalance::protocol_of(
            &[spec.kafka.properties.clone(), props.clone()].concat(),
        ),
        base: Context::new(spec.name, stats.clone(), spec.fatal),
        offsets: Mutex::default(),
        lag: Mutex::default(),
        heartbeat: Heartbeat::default(),
        stats,
        counters: spec.counters,
        joined: AtomicBool::new(false),
        assigned: AtomicUsize::new(0),
        role,
    };
    let consumer: RoleConsumer<R> =
        client_config(spec.kafka, &props).create_with_context(member)?;
    let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

impl<R: Role> Member<R> {
    pub fn name(&self) -> &str {
        &self.base.name
    }

    /// Partitions the group assigns to this member now.
    pub fn assigned(&self) -> usize {
        self.assigned.load(Ordering::Relaxed)
    }

    /// `f` on the tracker (a poisoned lock is taken as it is: the tracker
    /// is plain data).
    pub fn with_offsets<T>(&self, f: impl FnOnce(&mut Offsets) -> T) -> T {
        let mut o = self.offsets.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut o)
    }

    /// Commits the positions of the selected partitions: those that moved
    /// (`Async`; confirmed in `commit_callback`) or all of them (`Sync`,
    /// retried for up to 2 s: while members leave, the coordinator may
    /// refuse for a moment). No lock is held while the broker answers.
    pub fn commit(
        &self,
        consumer: &RoleConsumer<R>,
        mode: CommitMode,
        select: &dyn Fn(&str, i32) -> bool,
    ) {
        let sync = matches!(mode, CommitMode::Sync);
        let moved = self.with_offsets(|o| o.positions(sync, select));
        if moved.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in &moved {
            if tpl.add_partition_offset(t, *p, Offset::Offset(*o)).is_err() {
                return;
            }
        }
        let mut result = if sync {
            consumer.commit(&tpl, mode)
        } else {
            commit_async(consumer, &tpl)
        };
        for _ in 0..10 {
            if result.is_ok() || !sync {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            result = consumer.commit(&tpl, mode);
        }
        match result {
            Ok(()) => {
                self.counters.commits.inc();
                if sync {
                    self.confirmed(&moved);
                }
                debug!("{}: committed {moved:?}", self.name());
            }
            Err(e) => {
                self.counters.commit_errors.inc();
                warn!(
                    "{}: commit of {moved:?} failed: {e}; sent again later",
                    self.name()
                );
            }
        }
    }

    fn confirmed(&self, positions: &[(String, i32, i64)]) {
        self.with_offsets(|o| {
            for (t, p, pos) in positions {
                o.committed(t, *p, *pos);
            }
        });
        self.role.committed(positions);
    }
}

/// Leaves the group, then lets the consumer be closed: unsubscribes and
/// polls (discarding what was still fetched: none of it is tracked, so no
/// commit passes it) until the revocation has run and nothing is assigned,
/// or `deadline`. Closing straight after `unsubscribe` races an assignment
/// the group sends meanwhile, and librdkafka aborts the process on it
/// (`rd_kafka_cgrp_terminated: assert: !rd_kafka_assignment_in_progress`,
/// seen when SIGTERM came during a rebalance); a member that has left has
/// nothing to race with.
pub fn leave<R: Role>(consumer: &RoleConsumer<R>, deadline: Instant) {
    let member = consumer.context();
    consumer.unsubscribe();
    while member.assigned() > 0 {
        if Instant::now() >= deadline {
            warn!(
                "{}: still {} partitions assigned at the stop deadline; closing anyway",
                member.name(),
                member.assigned()
            );
            return;
        }
        member.heartbeat.tick();
        drop(consumer.poll(Duration::from_millis(50)));
    }
    // One more turn serves what the revocation set in motion (the leave
    // and its commit) before the close.
    drop(consumer.poll(Duration::from_millis(10)));
}

/// Sends an asynchronous commit whose answer comes back as an event on the
/// consumer's own queue, so that `commit_callback` sees it when the poll
/// loop polls. (rdkafka's `commit(.., Async)` asks for no answer at all:
/// librdkafka's `rd_kafka_commit` sets no reply queue, and without an
/// `offset_commit_cb` no event is made.)
fn commit_async<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: &TopicPartitionList,
) -> KafkaResult<()> {
    use rdkafka::error::IsError as _;
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` and `tpl` are live for the call; librdkafka copies the
    // list, and the commit keeps its own reference to the queue, so ours
    // is given back at once.
    let err = unsafe {
        let queue = rdkafka::bindings::rd_kafka_queue_get_consumer(rk);
        if queue.is_null() {
            return consumer.commit(tpl, CommitMode::Async);
        }
        let err = rdkafka::bindings::rd_kafka_commit_queue(
            rk,
            tpl.ptr(),
            queue,
            None,
            std::ptr::null_mut(),
        );
        rdkafka::bindings::rd_kafka_queue_destroy(queue);
        err
    };
    if err.is_error() {
        Err(KafkaError::ConsumerCommit(err.into()))
    } else {
        Ok(())
    }
}

impl<R: Role> ClientContext for Member<R> {
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

impl<R: Role> ConsumerContext for Member<R> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        super::rebalance::apply(self, consumer, &self.protocol, err, tpl);
    }

    /// An asynchronous commit is known committed only here, when the
    /// coordinator answered; a failed one is sent again next time.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => self.confirmed(&committed_positions(offsets)),
            Err(e) => {
                self.counters.commit_errors.inc();
                warn!("{}: commit failed: {e}; sent again later", self.name());
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            if let Rebalance::Error(e) = rebalance {
                warn!("{}: rebalance error: {e}", self.name());
            }
            return;
        };
        let revoked = partitions_of(tpl);
        info!("{}: partitions revoked: {revoked:?}", self.name());
        let select = |t: &str, p: i32| revoked.iter().any(|(rt, rp)| rt == t && *rp == p);
        self.role.revoking(self, consumer, &select);
        self.commit(consumer, CommitMode::Sync, &select);
        if let Ok(mut lag) = self.lag.lock() {
            lag.retain(|(t, p, _, _)| !select(t, *p));
        }
        self.with_offsets(|o| {
            for (t, p) in &revoked {
                o.remove(t, *p);
            }
        });
        let _ = self
            .assigned
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(revoked.len()))
            });
        self.role.forget(&revoked);
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        let parts: Vec<String> = tpl
            .elements()
            .iter()
            .map(|e| format!("{}/{}", e.topic(), e.partition()))
            .collect();
        info!("{}: partitions assigned: {parts:?}", self.name());
        self.role.assigned(self, consumer, tpl);
        self.assigned.fetch_add(parts.len(), Ordering::Relaxed);
        self.counters.assignments.inc();
        if !self.joined.swap(true, Ordering::Relaxed) {
            self.counters.members_joined.inc();
        }
    }
}
