//! The deliver role: Kafka → REST (the seeds' "consumer"; seed 003's
//! pipeline as configuration).
//!
//! Threads and channels, upstream to downstream:
//! - `deliver-c` (min(`max_threads`, partitions)): each its own group
//!   member; polls, updates the aggregates, registers the offset and
//!   dispatches the message — into the enrich channel, the work channel, or
//!   a key lane (`ordering = key`). A full channel stashes the message and
//!   pauses fetching; polling goes on.
//! - `deliver-e` (`enrichers`, optional): lookups merged into the message.
//! - `deliver-s` (`senders`): POST to `target_url` under the `max_in_flight`
//!   semaphore; classify; done, retry (via the requeue thread), or park in
//!   `<topic>.dlq` (done when the broker acknowledged it).
//! - `deliver-requeue`: retries whose backoff ended and the next message of
//!   a key lane go back into their channel.
//!
//! Each finished message is reported on its consumer thread's done channel;
//! the consumer commits per partition only below the lowest unfinished offset.
//!
//! Stop order: consumers stop fetching and wait (bounded) for their
//! in-flight messages, commit synchronously and leave the group → senders
//! drain → requeue thread → dead-letter producer flush.

mod backoff;
mod batch;
pub mod config;
mod consumer;
mod dlq;
mod enrich;
mod enrich_config;
pub mod filter;
pub mod geoip;
mod lanes;
mod msg;
pub mod outbound;
mod prometheus;
pub mod quarantine;
pub mod redrive;
pub mod release;
pub mod replay;
pub mod retry;
mod sender;
pub mod shape;
pub mod signing;
mod stash;
pub mod subscriptions;
mod take;
mod telemetry;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crossbeam_channel::{Receiver, Sender};
use log::{error, info, warn};
use rdkafka::consumer::{BaseConsumer, Consumer};

pub use config::DeliverConfig;
pub use msg::{Done, Msg, Refused, Stage, ValueKind, Work};

use crate::aggregates::Aggregates;
use crate::config::KafkaConfig;
use crate::kafka::probe::{self, Probe, Replication, TopicPlan};
use crate::kafka::{KafkaStats, client_config};
use crate::pool::WorkerPool;
use crate::shutdown::{StopToken, Stopper};
use crate::stats::Telemetry;

/// What every stage shares: channels, lanes, counters, and how a message is
/// finished.
pub(crate) struct Shared {
    pub config: DeliverConfig,
    pub work_tx: Sender<Work>,
    pub work_rx: Receiver<Work>,
    pub enrich_tx: Option<Sender<Work>>,
    pub requeue_tx: Sender<(Instant, Stage, Work)>,
    pub lanes: lanes::Lanes,
    pub metrics: telemetry::DeliverMetrics,
    pub aggregates: Arc<Aggregates>,
    pub stop: StopToken,
    /// A thread of this role that dies stops the process through this.
    pub fatal: Sender<String>,
    /// Turns with the requeue thread's loop.
    pub requeue_beat: crate::liveness::Heartbeat,
    /// Suspended over the admin API: the assignment is paused, offsets
    /// and the group membership kept.
    pub suspended: std::sync::atomic::AtomicBool,
    /// The quarantined keys (`on_park = quarantine_key`; in memory only
    /// for a redrive run).
    pub held: Option<Arc<quarantine::Held>>,
}

impl Shared {
    /// The first channel a message enters (enrichment when configured and
    /// the message's route asks for it).
    fn first_stage(&self, w: &Work) -> &Sender<Work> {
        match (&self.enrich_tx, &self.config.enrich) {
            (Some(tx), Some(e)) if enrich::wanted(e, &w.msg.payload) => tx,
            _ => &self.work_tx,
        }
    }

    /// Hands a freshly polled message on without blocking; `Err` gives it
    /// back when the next channel is full or its key's lane is.
    // The message comes back by value to its owner's stash: no allocation.
    #[allow(clippy::result_large_err)]
    pub fn dispatch(&self, w: Work) -> Result<(), Refused> {
        let tx = self.first_stage(&w);
        match self.config.ordering {
            config::Ordering::Key if w.msg.key.is_some() => {
                self.lanes.admit(w, self.lane_capacity(), |w| {
                    tx.try_send(w).map_err(|e| e.into_inner())
                })
            }
            _ => tx.try_send(w).map_err(|e| Refused::Full(e.into_inner())),
        }
    }

    /// As [`Shared::dispatch`], waiting up to `wait` for room in a full
    /// channel. A keyed message under `ordering = key` is not waited for
    /// inside the lanes (their lock would stall the senders that release
    /// them): it is tried, and on a full channel the caller waits a moment.
    #[allow(clippy::result_large_err)]
    pub fn dispatch_waiting(&self, w: Work, wait: Duration) -> Result<(), Refused> {
        if self.config.ordering == config::Ordering::Key && w.msg.key.is_some() {
            return self.dispatch(w).inspect_err(|r| {
                if matches!(r, Refused::Full(_)) {
                    std::thread::sleep(Duration::from_millis(1))
                }
            });
        }
        self.first_stage(&w)
            .send_timeout(w, wait)
            .map_err(|e| Refused::Full(e.into_inner()))
    }

    /// Messages one key's lane may hold before its partition waits: a
    /// sixteenth of the channel, so a hot key whose head is retrying holds
    /// back its own partition only.
    pub fn lane_capacity(&self) -> usize {
        (self.config.channel_capacity / 16).max(1)
    }

    /// True when consumers should stop handing out messages: what waits for
    /// a retry or behind a key holds as much as the channel.
    pub fn saturated(&self) -> bool {
        let waiting = self.lanes.parked() + self.metrics.requeued.get().max(0) as usize;
        waiting >= self.config.channel_capacity
    }

    /// Marks `w` for parking unsent when its key is quarantined; called
    /// where a message would start its call (after the lane let it go).
    pub fn hold(&self, w: &mut Work) {
        if w.parking.is_some() {
            return;
        }
        if let (Some(h), Some(key)) = (&self.held, &w.msg.key) {
            let (t, p, o) = w.msg.source();
            if let Some(why) = h.reason(t, p, o, key) {
                w.parking = Some((why, None));
            }
        }
    }

    /// The message is finished: free its key lane and report its offset.
    pub fn finish(&self, w: Work) {
        self.release_lane(&w);
        w.msg.report(true);
    }

    /// Gives `w` up (stop, revocation): counted, its key lane moves on, and
    /// its owner stops waiting for it (the offset is redelivered).
    pub fn abandon(&self, w: Work) {
        self.metrics.abandoned.inc();
        self.release_lane(&w);
        w.msg.report(false);
    }

    /// `w` no longer holds its key's lane: the next message of the key goes
    /// on (`requeue` gives it up in turn when its lease ended).
    fn release_lane(&self, w: &Work) {
        if self.config.ordering != config::Ordering::Key {
            return;
        }
        if let Some(k) = &w.msg.key
            && let Some(next) = self.lanes.release(k)
        {
            let stage = if self.first_stage(&next).same_channel(&self.work_tx) {
                Stage::Send
            } else {
                Stage::Enrich
            };
            self.requeue(Instant::now(), stage, next);
        }
    }

    /// Puts `w` back into `stage` at `at` (counted as in motion until then);
    /// a message whose partition was revoked is given up instead.
    pub fn requeue(&self, at: Instant, stage: Stage, w: Work) {
        if w.msg.lease.ended() {
            return self.abandon(w);
        }
        self.metrics.requeued.add(1);
        if let Err(e) = self.requeue_tx.send((at, stage, w)) {
            // The requeue thread is gone: stopping.
            self.metrics.requeued.add(-1);
            self.abandon(e.into_inner().2);
        }
    }
}

/// A running deliver role.
pub struct Handle {
    stopper: Stopper,
    consumers: Vec<JoinHandle<()>>,
    senders: WorkerPool,
    enrichers: Option<WorkerPool>,
    requeue: JoinHandle<()>,
    probe_thread: JoinHandle<()>,
    quarantine_tail: Option<JoinHandle<()>>,
    dlq: Arc<dlq::DeadLetters>,
    telemetry: Arc<telemetry::DeliverTelemetry>,
    shutdown_timeout: Duration,
}

/// Starts the deliver role; blocks until the topics' partition counts are known.
pub fn spawn(
    config: DeliverConfig,
    kafka: &KafkaConfig,
    aggregates: Arc<Aggregates>,
    fatal: Sender<String>,
) -> anyhow::Result<Handle> {
    let stopper = Stopper::new();
    let admin_config = client_config(kafka, &[]);
    let partitions = count_partitions(&admin_config, &config.source_topics())?;
    let mut config = config;
    crate::kafka::protocol::settle(
        kafka,
        &mut config.consumer,
        "[deliver.consumer]",
        config.shutdown_timeout.as_millis() as u64,
    )?;
    let threads = config.max_threads.min(partitions.max(1));
    let (work_tx, work_rx) = crossbeam_channel::bounded(config.channel_capacity);
    let (enrich_tx, enrich_rx) = match config.enrich {
        Some(_) => {
            let (tx, rx) = crossbeam_channel::bounded(config.channel_capacity);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let (requeue_tx, requeue_rx) = crossbeam_channel::unbounded();
    // The quarantine's state is read to its end before any message is.
    let (held, quarantine_tail) = match (&config.quarantine, &config.redrive) {
        (Some(_), Some(_)) => (Some(quarantine::Held::memory()), None),
        (Some(topic), None) => {
            let (h, t) = quarantine::start(kafka, topic, stopper.token(), fatal.clone())?;
            (Some(h), Some(t))
        }
        (None, _) => (None, None),
    };
    let shared = Arc::new(Shared {
        metrics: telemetry::DeliverMetrics::new(config.max_in_flight),
        lanes: lanes::Lanes::default(),
        work_tx,
        work_rx: work_rx.clone(),
        enrich_tx,
        requeue_tx,
        aggregates,
        stop: stopper.token(),
        fatal: fatal.clone(),
        requeue_beat: Default::default(),
        suspended: Default::default(),
        held,
        config: config.clone(),
    });
    let kafka_stats = Arc::new(KafkaStats::default());
    let dlq = Arc::new(dlq::DeadLetters::new(
        kafka,
        shared.clone(),
        kafka_stats.clone(),
        fatal.clone(),
    )?);
    let probe = Arc::new(Probe::default());
    let plan = TopicPlan {
        topics: config.dlq_topics(),
        create: true,
        partitions: partitions_per_topic(partitions, &config),
        replication: Replication::LikeSources(config.topics.clone()),
    };
    probe.check(dlq.client(), &admin_config, &plan, Duration::from_secs(5));

    let mut consumers = Vec::with_capacity(threads);
    let mut members = Vec::with_capacity(threads);
    for i in 0..threads {
        let c = consumer::build(&config, kafka, shared.clone(), i)?;
        members.push(c.context().clone());
        consumers.push(c);
    }
    let mut urls = vec![shared.config.target_url.as_str()];
    urls.extend(shared.config.enrich.as_ref().map(|e| e.url.as_str()));
    shared.config.outbound.warn_if_unverified(&urls);
    let senders = sender::spawn_pool(shared.clone(), dlq.clone(), work_rx)?;
    let enrichers = match (enrich_rx, &config.enrich) {
        (Some(rx), Some(e)) => Some(enrich::spawn_pool(shared.clone(), e.clone(), rx)?),
        _ => None,
    };
    let requeue = lanes::spawn_requeue(shared.clone(), requeue_rx)?;
    let consumers = consumers
        .into_iter()
        .enumerate()
        .map(|(i, c)| consumer::run(c, i))
        .collect::<Result<Vec<_>, _>>()?;
    let probe_thread = {
        let (dlq, probe) = (dlq.clone(), probe.clone());
        probe::every_second("deliver-probe", stopper.token(), fatal.clone(), move || {
            probe.check(dlq.client(), &admin_config, &plan, Duration::from_secs(2))
        })?
    };
    let mut pools = vec![senders.view()];
    pools.extend(enrichers.as_ref().map(WorkerPool::view));
    let telemetry = Arc::new(telemetry::DeliverTelemetry::new(
        shared,
        kafka_stats,
        pools,
        members,
        probe,
        threads,
    ));
    info!(
        "delivering {:?} (group {}) to {} with {threads} consumer threads, {} senders, at most {} calls in flight",
        config.topics, config.group_id, config.target_url, config.senders, config.max_in_flight
    );
    Ok(Handle {
        stopper,
        consumers,
        senders,
        enrichers,
        requeue,
        probe_thread,
        quarantine_tail,
        dlq,
        telemetry,
        shutdown_timeout: config.shutdown_timeout,
    })
}

fn partitions_per_topic(total: usize, c: &DeliverConfig) -> i32 {
    (total / c.topics.len().max(1)).max(1) as i32
}

/// Total partitions of `topics`, waiting up to 30 s for them to exist.
fn count_partitions(
    admin_config: &rdkafka::ClientConfig,
    topics: &[String],
) -> anyhow::Result<usize> {
    let probe: BaseConsumer = admin_config
        .create()
        .context("cannot create a Kafka client")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = probe.fetch_metadata(None, Duration::from_secs(5));
        let mut missing = Vec::new();
        let mut total = 0;
        if let Ok(md) = &md {
            for t in topics {
                match md
                    .topics()
                    .iter()
                    .find(|m| m.name() == t && !m.partitions().is_empty())
                {
                    Some(m) => total += m.partitions().len(),
                    None => missing.push(t.clone()),
                }
            }
            if missing.is_empty() {
                return Ok(total);
            }
        }
        if Instant::now() > deadline {
            match md {
                Err(e) => anyhow::bail!("cannot read the cluster's metadata: {e}"),
                Ok(_) => anyhow::bail!("[deliver] topics: {missing:?} do not exist"),
            }
        }
        warn!(
            "waiting for topics {missing:?} (metadata: {})",
            md.err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "ok".into())
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// What became of the messages so far.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub delivered: u64,
    pub dead_lettered: u64,
    /// Done without a call (filter, `on_tombstone`/`on_invalid_json = skip`).
    pub skipped: u64,
}

impl Handle {
    pub fn telemetry(&self) -> Arc<dyn Telemetry> {
        self.telemetry.clone()
    }

    pub fn counts(&self) -> Counts {
        let m = self.telemetry.metrics();
        Counts {
            delivered: m.delivered.get(),
            dead_lettered: m.dead_lettered.get(),
            skipped: m.filtered.get() + m.skipped_tombstones.get() + m.skipped_invalid.get(),
        }
    }

    pub fn begin_stop(&self) {
        self.stopper.stop();
    }

    /// Drains within `shutdown_timeout_ms`; true when everything finished.
    pub fn stop(mut self) -> bool {
        let deadline = Instant::now() + self.shutdown_timeout;
        info!("Stopping.");
        self.stopper.stop();
        let mut clean = true;
        for c in self.consumers.drain(..) {
            clean &= c.join().is_ok();
        }
        clean &= self.senders.join_until(deadline + Duration::from_secs(1));
        if let Some(e) = self.enrichers.as_mut() {
            clean &= e.join_until(deadline + Duration::from_secs(1));
        }
        clean &= self.requeue.join().is_ok();
        clean &= self.probe_thread.join().is_ok();
        if let Some(t) = self.quarantine_tail.take() {
            clean &= t.join().is_ok();
        }
        if let Err(e) = self.dlq.flush(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1)),
        ) {
            warn!("dead-letter producer flush: {e}");
            clean = false;
        }
        if !clean {
            error!(
                "deliver did not drain cleanly within {} ms; unfinished messages are redelivered",
                self.shutdown_timeout.as_millis()
            );
        }
        info!("Stopped.");
        clean
    }
}
