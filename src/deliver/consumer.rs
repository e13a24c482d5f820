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
use rdkafka::message::{BorrowedMessage, Message};

use super::config::{Commit, DeliverConfig, OnInvalid, OnTombstone};
use super::filter;
use super::redrive::Claim;
use super::stash::{Part, Stash};
use super::{Done, Msg, Refused, Shared, ValueKind, Work};
use crate::aggregates;
use crate::config::KafkaConfig;
use crate::kafka::member::{self, Member, Role, RoleConsumer, Spec};
use crate::kafka::record;

pub type DeliverMember = Member<DeliverRole>;
pub(super) type DeliverConsumer = RoleConsumer<DeliverRole>;

/// What deliver adds to a group member.
pub struct DeliverRole {
    shared: Arc<Shared>,
    stash: Mutex<Stash>,
    done_rx: Receiver<Done>,
    done_tx: Sender<Done>,
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
    fn topic_name(&self, topic: &str) -> Arc<str> {
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
    fn drain_done(&self, member: &DeliverMember, wait: Duration) {
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

/// Detaches a message (through panic-free accessors), registers its offset
/// and counts it; decides what a value that is no JSON becomes (see
/// `on_tombstone`, `on_invalid_json`): `None` when it is done already.
fn take(member: &DeliverMember, shared: &Shared, m: &BorrowedMessage<'_>) -> Option<Work> {
    let role = &member.role;
    let c = &shared.config;
    let mut headers = record::headers(m);
    let origin = match &c.redrive {
        None => None,
        Some(r) => match r.claim(m.topic(), m.partition(), m.offset(), m.key(), &mut headers) {
            // Not registered: the run's commits stop before it.
            Claim::Beyond => return None,
            Claim::NotOurs => {
                let lease = member.with_offsets(|o| o.polled(m.topic(), m.partition(), m.offset()));
                member.with_offsets(|o| o.done(m.topic(), m.partition(), m.offset(), &lease));
                return None;
            }
            Claim::Ours(o) => Some(Box::new(o)),
        },
    };
    let (topic, partition, offset) = match &origin {
        Some(o) => (&*o.topic, o.partition, o.offset),
        None => (m.topic(), m.partition(), m.offset()),
    };
    // A value in another format is read as its JSON; one that cannot be
    // is parked with the reason.
    // While the schema registry cannot be reached the thread waits (still
    // heartbeating and taking done reports); stopping then leaves the
    // record unregistered, so commits stop before it.
    let who = c.group_id.as_str();
    let stopped = || shared.stop.is_stopped();
    let mut idle = || {
        member.heartbeat.tick();
        role.drain_done(member, Duration::from_millis(20));
    };
    let (decoded, mut unreadable) = match m.payload() {
        None => (None, None),
        Some(v) => match c
            .value_format
            .to_json_waiting(v, who, &stopped, &mut idle)?
        {
            Ok(json) => (json, None),
            Err(why) => (None, Some(why)),
        },
    };
    // A key in another format (`key_format`) is read as its text for
    // placeholders, filters and `X-Kafka-Key`; ordering, quarantine and
    // dead-letter copies keep its bytes.
    let key_text = match m.key() {
        Some(k) if !c.key_format.is_plain() => {
            match c.key_format.to_json_waiting(k, who, &stopped, &mut idle)? {
                Ok(json) => crate::codec::ValueFormat::key_text(json),
                Err(why) => {
                    unreadable = unreadable.or(Some(format!("key: {why}")));
                    None
                }
            }
        }
        _ => None,
    };
    let key_view = key_text.as_deref().or(m.key());
    let value = decoded.as_deref().or(m.payload());
    let (json, field) = match value {
        Some(v) => aggregates::inspect(v, &c.aggregate_field),
        None => (
            false,
            (!c.aggregate_field.is_empty()).then(|| "(none)".to_string()),
        ),
    };
    if c.aggregate_topics.iter().any(|t| t == topic) {
        shared
            .aggregates
            .record_value(topic, field, m.timestamp().to_millis());
    }
    shared.metrics.consumed.inc();
    let lease = member.with_offsets(|o| o.polled(m.topic(), m.partition(), m.offset()));
    let (kind, skip, mut park) = match (value, json) {
        (_, _) if unreadable.is_some() => (ValueKind::Other, false, unreadable),
        (_, true) => (ValueKind::Json, false, None),
        (None, _) => match c.on_tombstone {
            OnTombstone::Skip => (ValueKind::Tombstone, true, None),
            OnTombstone::Send | OnTombstone::Delete => (ValueKind::Tombstone, false, None),
            OnTombstone::DeadLetter => (
                ValueKind::Tombstone,
                false,
                Some("tombstone (no value)".into()),
            ),
        },
        (Some(_), false) => match c.on_invalid_json {
            OnInvalid::Skip => (ValueKind::Other, true, None),
            OnInvalid::Send => (ValueKind::Other, false, None),
            OnInvalid::DeadLetter => (ValueKind::Other, false, Some("value is not JSON".into())),
        },
    };
    let filtered = !skip
        && c.filter.as_ref().is_some_and(|f| {
            let json = (json && f.needs_json())
                .then(|| {
                    serde_json::from_slice::<serde_json::Value>(value.unwrap_or_default()).ok()
                })
                .flatten();
            let r = filter::Record {
                value,
                key: key_view,
                headers: &headers,
            };
            !f.matches(&r, json.as_ref())
        });
    if skip || filtered {
        member.with_offsets(|o| o.done(m.topic(), m.partition(), m.offset(), &lease));
        match kind {
            _ if filtered => shared.metrics.filtered.inc(),
            ValueKind::Tombstone => shared.metrics.skipped_tombstones.inc(),
            _ => shared.metrics.skipped_invalid.inc(),
        }
        return None;
    }
    // A URL of the message's own; one that cannot be filled parks it.
    let url = match c.url.is_static() {
        true => None,
        false => {
            let fill = super::shape::Fill {
                topic,
                partition,
                offset,
                key: key_view,
                value,
            };
            match c.url.render(&fill) {
                Ok(u) => Some(u),
                Err(why) => {
                    park = park.or(Some(why));
                    None
                }
            }
        }
    };
    let delete = kind == ValueKind::Tombstone && c.on_tombstone == OnTombstone::Delete;
    Some(Work {
        msg: Msg {
            topic: role.topic_name(m.topic()),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            key_text,
            payload: value.unwrap_or_default().to_vec(),
            kind,
            headers,
            timestamp: m.timestamp().to_millis(),
            url,
            lease,
            done: role.done_tx.clone(),
            origin,
            raw: decoded
                .is_some()
                .then(|| m.payload().unwrap_or_default().to_vec()),
        },
        attempts: 0,
        parking: park.map(|why| (why, None)),
        enrich_attempts: 0,
        // A DELETE carries no body: it goes alone.
        solo: delete,
        shrunk: 0,
        copied: false,
    })
}
