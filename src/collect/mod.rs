//! The collect role: Kafka → files (the seeds' "data collector").
//!
//! Threads: per `groups` entry, `concurrent_count` consumer threads
//! (`collect-c<i>`), each a member of that group, each writing its own
//! partitions' files under `record_directory/<topic>/<yyyy-mm-dd>/`
//! (see `files`). Offsets are committed only past messages that are on disk
//! (file fsynced and renamed, directory fsynced) or acknowledged in the
//! retry topic. The retry producer is shared; its delivery callbacks report
//! to the consumer thread that produced.
//!
//! Stop: each thread closes (makes durable) its open files, waits for its
//! retry acknowledgements, commits synchronously, and leaves the group.

pub mod archive;
pub mod config;
mod consumer;
pub mod files;
pub mod lines;
pub mod retry;
mod role;
mod telemetry;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use log::{error, info};
use rdkafka::client::ClientContext;
use rdkafka::consumer::Consumer as _;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::statistics::Statistics;

pub use config::CollectConfig;
use role::RetryDone;
pub use telemetry::CollectTelemetry;

use crate::config::KafkaConfig;
use crate::kafka::member::GroupCounters;
use crate::kafka::offsets::Lease;
use crate::kafka::probe::{self, Probe, Replication, TopicPlan};
use crate::kafka::{Context, KafkaStats, client_config, record};
use crate::metrics::{Counter, Latency};
use crate::shutdown::{StopToken, Stopper};
use crate::stats::Telemetry;

pub use retry::{RETRY_AT, RETRY_SOURCE};

#[derive(Default)]
pub struct CollectMetrics {
    pub consumed: Counter,
    pub bytes: Counter,
    pub files_opened: Counter,
    pub files_closed: Counter,
    pub write_errors: Counter,
    pub retry_produced: Counter,
    pub retry_failed: Counter,
    /// Offsets that went back (a new era of file names began).
    pub regressions: Counter,
    /// Values `value_format` could not read (filed as they are).
    pub undecodable: Counter,
    /// Commits, joins and assignments of the consumer threads.
    pub group: Arc<GroupCounters>,
    pub fsync: Latency,
    error_log: crate::logging::Every,
}

pub struct RetryCtx {
    base: Context,
    metrics: Arc<CollectMetrics>,
}

impl ClientContext for RetryCtx {
    fn stats(&self, s: Statistics) {
        self.base.stats(s);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.base.error(error, reason);
    }
}

impl ProducerContext for RetryCtx {
    type DeliveryOpaque = Box<(Sender<RetryDone>, String, i32, i64, Lease)>;
    fn delivery(&self, r: &DeliveryResult<'_>, o: Self::DeliveryOpaque) {
        let (tx, topic, p, offset, lease) = *o;
        if r.is_err() {
            self.metrics.retry_failed.inc();
        }
        let _ = tx.send((topic, p, offset, r.is_ok(), lease));
    }
}

pub(crate) struct Shared {
    pub config: CollectConfig,
    pub retry: ThreadedProducer<RetryCtx>,
    pub metrics: Arc<CollectMetrics>,
    /// The retry producer's librdkafka figures (`client="collect-retry"`).
    pub retry_stats: Arc<KafkaStats>,
    pub fatal: Sender<String>,
    pub stop: StopToken,
    /// Every topic the groups read (not their retry topics).
    pub sources: Vec<String>,
}

impl Shared {
    /// The source topic when `topic` is one of this role's retry topics:
    /// only there are the retry headers read.
    fn retry_source<'a>(&self, topic: &'a str) -> Option<&'a str> {
        retry::source_topic(topic, &self.config.retry_suffix, &self.sources)
    }

    /// Counts a write error; logs once per 10 s with the count since.
    fn write_failed(&self, topic: &str, e: &std::io::Error) {
        self.metrics.write_errors.inc();
        if let Some(n) = self.metrics.error_log.hit() {
            error!(
                "{n} write errors (latest for topic {topic}: {e}); messages go to the retry topic"
            );
        }
    }

    /// Produces `m` to its retry topic; the acknowledgement goes to `done`.
    /// Its headers are copied as bytes, whatever they hold.
    fn to_retry(&self, m: &BorrowedMessage<'_>, done: &Sender<RetryDone>, lease: Lease) {
        let suffix = &self.config.retry_suffix;
        let from_retry = self.retry_source(m.topic());
        let topic = match from_retry {
            Some(_) => m.topic().to_string(),
            None => format!("{}{suffix}", m.topic()),
        };
        let at = retry::retry_due(consumer::now_ms(), self.config.retry_delay).to_string();
        let mut source = format!("{}/{}@{}", m.topic(), m.partition(), m.offset());
        let mut headers = OwnedHeaders::new();
        record::each_header(m, |k, v| {
            if k == RETRY_SOURCE.as_bytes() {
                // Kept only when a retry topic's own bookkeeping says where
                // the message was first read; anything else named so is
                // dropped.
                let value = String::from_utf8_lossy(v.unwrap_or_default());
                if let Some(t) = from_retry
                    && retry::parse_source(&value, t).is_some()
                {
                    source = value.into_owned();
                }
            } else if k != RETRY_AT.as_bytes() {
                headers = record::with_header(std::mem::take(&mut headers), k, v);
            }
        });
        headers = record::with_header(headers, RETRY_AT.as_bytes(), Some(at.as_bytes()));
        headers = record::with_header(headers, RETRY_SOURCE.as_bytes(), Some(source.as_bytes()));
        let opaque = Box::new((
            done.clone(),
            m.topic().to_string(),
            m.partition(),
            m.offset(),
            lease,
        ));
        let mut r: BaseRecord<'_, [u8], [u8], _> =
            BaseRecord::with_opaque_to(&topic, opaque).headers(headers);
        if let Some(v) = m.payload() {
            r = r.payload(v);
        }
        if let Some(k) = m.key() {
            r = r.key(k);
        }
        self.metrics.retry_produced.inc();
        if let Err((_, r)) = self.retry.send(r) {
            let (tx, t, p, o, lease) = *r.delivery_opaque;
            let _ = tx.send((t, p, o, false, lease));
        }
    }
}

pub struct Handle {
    stopper: Stopper,
    threads: Vec<JoinHandle<()>>,
    probe_thread: JoinHandle<()>,
    telemetry: Arc<CollectTelemetry>,
}

/// Creates the record directory if needed and proves it writable (a file
/// created, fsynced and removed), naming the key on failure.
pub fn check_directory(dir: &std::path::Path) -> anyhow::Result<()> {
    let fail = |what: &str, e: std::io::Error| {
        anyhow::anyhow!(
            "[collect] record_directory {}: cannot {what}: {e}",
            dir.display()
        )
    };
    std::fs::create_dir_all(dir).map_err(|e| fail("create it", e))?;
    let probe = dir.join(format!(".kbridge-write-check-{}", std::process::id()));
    std::fs::File::create(&probe)
        .and_then(|f| f.sync_all())
        .map_err(|e| fail("write in it", e))?;
    std::fs::remove_file(&probe).map_err(|e| fail("remove a file in it", e))?;
    Ok(())
}

pub fn spawn(
    config: CollectConfig,
    kafka: &KafkaConfig,
    fatal: Sender<String>,
) -> anyhow::Result<Handle> {
    check_directory(&config.record_directory)?;
    let mut config = config;
    crate::kafka::protocol::settle(
        kafka,
        &mut config.consumer,
        "[collect.consumer]",
        config.shutdown_timeout.as_millis() as u64,
    )?;
    let stopper = Stopper::new();
    let metrics = Arc::new(CollectMetrics::default());
    let retry_stats = Arc::new(KafkaStats::default());
    let props: Vec<(String, String)> = [
        ("acks", "all"),
        ("enable.idempotence", "true"),
        ("linger.ms", "5"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let retry: ThreadedProducer<RetryCtx> =
        client_config(kafka, &props).create_with_context(RetryCtx {
            base: Context::new("collect-retry", retry_stats.clone(), fatal.clone()),
            metrics: metrics.clone(),
        })?;
    let retry_topics: Vec<String> = config
        .groups
        .iter()
        .flat_map(|g| {
            g.topics
                .iter()
                .map(|t| format!("{t}{}", config.retry_suffix))
        })
        .collect();
    let probe = Arc::new(Probe::default());
    let plan = TopicPlan {
        topics: retry_topics,
        create: true,
        partitions: 4,
        replication: Replication::LikeSources(
            config
                .groups
                .iter()
                .flat_map(|g| g.topics.clone())
                .collect(),
        ),
    };
    let admin_config = client_config(kafka, &[]);
    // The consumers subscribe to the retry topics too: they must exist
    // first, or librdkafka would see them only at its next metadata refresh.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        probe.check(retry.client(), &admin_config, &plan, Duration::from_secs(5));
        let missing: Vec<&String> = plan
            .topics
            .iter()
            .filter(|t| probe.partitions(t).is_none())
            .collect();
        if missing.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "retry topics {missing:?} do not exist and cannot be created: {}",
                probe.last_error().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let shared = Arc::new(Shared {
        config: config.clone(),
        retry,
        metrics,
        retry_stats,
        fatal,
        stop: stopper.token(),
        sources: config
            .groups
            .iter()
            .flat_map(|g| g.topics.clone())
            .collect(),
    });

    let mut consumers = Vec::new();
    for g in &config.groups {
        let mut topics = g.topics.clone();
        topics.extend(
            g.topics
                .iter()
                .map(|t| format!("{t}{}", config.retry_suffix)),
        );
        for _ in 0..config.concurrent_count {
            let i = consumers.len();
            consumers.push(consumer::build(
                shared.clone(),
                kafka,
                &g.group_id,
                &topics,
                i,
            )?);
        }
    }
    let members: Vec<Arc<role::CollectMember>> =
        consumers.iter().map(|c| c.context().clone()).collect();
    let threads = consumers
        .into_iter()
        .enumerate()
        .map(|(i, c)| consumer::run(c, i))
        .collect::<Result<Vec<_>, _>>()?;
    let probe_thread = {
        let (shared, probe) = (shared.clone(), probe.clone());
        probe::every_second(
            "collect-probe",
            stopper.token(),
            shared.fatal.clone(),
            move || {
                probe.check(
                    shared.retry.client(),
                    &admin_config,
                    &plan,
                    Duration::from_secs(2),
                )
            },
        )?
    };
    info!(
        "collecting {:?} into {} with {} threads",
        config.groups,
        config.record_directory.display(),
        threads.len()
    );
    let telemetry = Arc::new(CollectTelemetry {
        shared,
        last_counts: members.iter().map(|_| Default::default()).collect(),
        members,
        probe,
        threads: threads.len(),
        rates: Default::default(),
    });
    Ok(Handle {
        stopper,
        threads,
        probe_thread,
        telemetry,
    })
}

impl Handle {
    pub fn telemetry(&self) -> Arc<dyn Telemetry> {
        self.telemetry.clone()
    }
    pub fn begin_stop(&self) {
        self.stopper.stop();
    }
    /// Closes and commits every open file; true when every thread ended.
    pub fn stop(self) -> bool {
        info!("Stopping.");
        self.stopper.stop();
        let mut clean = true;
        for t in self.threads {
            clean &= t.join().is_ok();
        }
        clean &= self.probe_thread.join().is_ok();
        info!("Stopped.");
        clean
    }
}
