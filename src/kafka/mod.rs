//! Kafka plumbing shared by the roles: client configuration, the client
//! context (statistics intake, fatal-error escalation, the check for a
//! client librdkafka stranded), topic creation with the AdminClient, and
//! the reachability probe behind `/ready`.

pub mod member;
pub mod offsets;
pub mod probe;
pub mod protocol;
pub mod rebalance;
pub mod record;
pub mod stranded;

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use log::{error, warn};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;

use crate::config::KafkaConfig;
use crate::metrics::{Counter, Gauge, Prom};

/// Builds a client configuration: `[kafka]` first, then the role's own
/// properties (which win). Statistics are emitted each second for `/metrics`.
/// What every kbridge consumer group member starts from: offsets are
/// committed by the role, explicitly, only past finished work.
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    // What librdkafka fetches ahead, per consumer (one per thread): 1 MiB
    // instead of 64, in fetches of 256 KiB per partition instead of 1 MiB
    // (the role's pace adjusts both, see [`Pace`])
    // (a gzip batch is held decompressed, about 12× bigger), keeps the
    // role's memory bounded — a 10-thread deliver could otherwise hold
    // 640 MiB. With queues this small, the next fetch must not wait the
    // default second once they fill: 10 ms. Measured with batches of 100:
    // 386,000 against 100,000 messages/s at librdkafka's defaults, peak RSS
    // 31 against 69 MiB; and at 1 message per call, 1 MiB against 2 MiB:
    // the same rate, peak RSS 50 against 61 MiB.
    ("queued.max.messages.kbytes", "1024"),
    ("max.partition.fetch.bytes", "262144"),
    ("fetch.queue.backoff.ms", "10"),
    // `group.protocol` is chosen at start when unset (`protocol::settle`):
    // KIP-848 where the cluster offers it (Kafka 4: the broker assigns
    // incrementally, a member starts consuming as soon as it joins, no
    // group-wide stop), `classic` where it does not.
];

/// The (topic, partition) pairs of a partition list (rebalance callbacks).
pub fn partitions_of(tpl: &rdkafka::TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// The (topic, partition, offset) a successful commit stored, per partition
/// that did not fail on its own.
pub fn committed_positions(tpl: &rdkafka::TopicPartitionList) -> Vec<(String, i32, i64)> {
    tpl.elements()
        .iter()
        .filter(|e| e.error().is_ok())
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.topic().to_string(), e.partition(), o)),
            _ => None,
        })
        .collect()
}

pub fn client_config(kafka: &KafkaConfig, role_properties: &[(String, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers);
    c.set("statistics.interval.ms", "1000");
    for (k, v) in kafka.properties.iter().chain(role_properties) {
        c.set(k, v);
    }
    c
}

/// The librdkafka figures we export, refreshed from its statistics callback.
#[derive(Debug, Default)]
pub struct KafkaStats {
    /// Messages waiting in the producer queue.
    pub queued_msgs: Gauge,
    /// Messages produced to brokers (librdkafka's `txmsgs`).
    pub tx_msgs: Gauge,
    /// Payload bytes of produced messages before compression (`txmsg_bytes`).
    pub tx_msg_bytes: Gauge,
    /// Bytes sent to brokers on the wire, after compression (`tx_bytes`).
    pub tx_wire_bytes: Gauge,
    /// Brokers in state UP.
    pub brokers_up: Gauge,
    /// Request errors and retries summed over brokers.
    pub tx_errors: Gauge,
    pub tx_retries: Gauge,
    /// Mean round-trip time in microseconds over brokers that report one.
    pub rtt_avg_us: Gauge,
    pub stats_received: Counter,
}

impl KafkaStats {
    fn intake(&self, s: &Statistics) {
        self.queued_msgs.set(s.msg_cnt as i64);
        self.tx_msgs.set(s.txmsgs);
        self.tx_msg_bytes.set(s.txmsg_bytes);
        self.tx_wire_bytes.set(s.tx_bytes);
        let real = s.brokers.values().filter(|b| b.nodeid >= 0);
        let (mut up, mut errs, mut retries, mut rtt_sum, mut rtt_n) = (0, 0, 0, 0, 0);
        for b in real {
            up += i64::from(b.state == "UP");
            errs += b.txerrs as i64;
            retries += b.txretries as i64;
            if let Some(w) = &b.rtt
                && w.cnt > 0
            {
                rtt_sum += w.avg;
                rtt_n += 1;
            }
        }
        self.brokers_up.set(up);
        self.tx_errors.set(errs);
        self.tx_retries.set(retries);
        self.rtt_avg_us
            .set(if rtt_n > 0 { rtt_sum / rtt_n } else { 0 });
        self.stats_received.inc();
    }

    /// Writes the figures of several clients, one metric family each.
    pub fn render_all(p: &mut Prom<'_>, clients: &[(&str, &KafkaStats)]) {
        // Values in the metric's unit (seconds for `_seconds`).
        type Pick = fn(&KafkaStats) -> f64;
        let rows: [(&str, &str, &str, Pick); 8] = [
            (
                "kbridge_kafka_queued_messages",
                "gauge",
                "Messages in the librdkafka producer queue.",
                |s| s.queued_msgs.get() as f64,
            ),
            (
                "kbridge_kafka_tx_messages_total",
                "counter",
                "Messages produced to brokers (librdkafka txmsgs).",
                |s| s.tx_msgs.get() as f64,
            ),
            (
                "kbridge_kafka_tx_message_bytes_total",
                "counter",
                "Payload bytes produced before compression (librdkafka txmsg_bytes).",
                |s| s.tx_msg_bytes.get() as f64,
            ),
            (
                "kbridge_kafka_tx_wire_bytes_total",
                "counter",
                "Bytes sent to brokers on the wire (librdkafka tx_bytes).",
                |s| s.tx_wire_bytes.get() as f64,
            ),
            (
                "kbridge_kafka_brokers_up",
                "gauge",
                "Brokers whose connection is UP.",
                |s| s.brokers_up.get() as f64,
            ),
            (
                "kbridge_kafka_request_errors_total",
                "counter",
                "Broker request errors (librdkafka txerrs).",
                |s| s.tx_errors.get() as f64,
            ),
            (
                "kbridge_kafka_request_retries_total",
                "counter",
                "Broker request retries (librdkafka txretries).",
                |s| s.tx_retries.get() as f64,
            ),
            (
                "kbridge_kafka_rtt_avg_seconds",
                "gauge",
                "Mean broker round-trip time.",
                |s| s.rtt_avg_us.get() as f64 / 1e6,
            ),
        ];
        for (name, kind, help, pick) in rows {
            p.describe(name, kind, help);
            for (client, stats) in clients {
                p.sample(name, &[("client", client)], pick(stats));
            }
        }
    }
}

/// What a consumer of a role fetches ahead (`queued.max.messages.kbytes`,
/// `max.partition.fetch.bytes`), sized to how fast the role takes messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// deliver at one message per call (about 20,000 messages/s): 64 KiB
    /// fetches. Each fetched message costs librdkafka about 300 bytes of
    /// bookkeeping besides its decompressed batch, and a gzip fetch of
    /// 256 KiB holds some 14,000 of ours: measured with four threads, peak
    /// RSS 46 against 55 MiB at the same rate.
    PerCall,
    /// deliver in batches: 256 KiB fetches keep 350,000+ messages/s fed
    /// (64 KiB: 300,000–357,000, 128 KiB: 334,000–347,000 in the same runs).
    Batches,
    /// collect: also a 2 MiB queue. It writes whole batches to files and
    /// fsyncs once per file, so a deeper queue keeps its fetches going
    /// while a file is synced: measured in two `bench/compare` runs on one
    /// day, 515,814 against 448,337 messages/s (0.82× against 0.73× kcat
    /// consuming to a file) for a peak RSS of 48 against 39 MiB.
    Files,
}

/// [`CONSUMER_DEFAULTS`] with the prefetch of `pace`.
pub fn consumer_defaults(pace: Pace) -> Vec<(&'static str, &'static str)> {
    let mut d: Vec<(&str, &str)> = CONSUMER_DEFAULTS
        .iter()
        .map(|&(k, v)| match (pace, k) {
            (Pace::Files, "queued.max.messages.kbytes") => (k, "2048"),
            (Pace::PerCall, "max.partition.fetch.bytes") => (k, "65536"),
            _ => (k, v),
        })
        .collect();
    if pace == Pace::PerCall {
        // librdkafka prefetches until 100,000 messages or the kbytes above:
        // small messages cost it about 300 bytes each beyond their payload,
        // so count them too. 10,000 per thread is half a second at the
        // 20,000 calls/s deliver makes: measured under a 429 storm over
        // 300,000 small events, peak RSS 39 against 59 MiB.
        d.push(("queued.min.messages", "10000"));
    }
    d
}

/// Client context of every kbridge client: librdkafka logs go to `log`
/// (default), statistics to [`KafkaStats`], fatal errors to the app, which
/// stops the process with a non-zero code so systemd restarts it.
pub struct Context {
    /// The client's name in logs and metrics (`deliver-c0`, `ingest`).
    pub name: Arc<str>,
    pub stats: Arc<KafkaStats>,
    pub fatal: Sender<String>,
    /// This client's brokers, for [`stranded`] (one per client).
    stranded: Arc<stranded::Watch>,
    /// A configuration error was reported (see [`misconfigured`]).
    misconfigured: std::sync::atomic::AtomicBool,
}

impl Context {
    pub fn new(
        name: impl Into<Arc<str>>,
        stats: Arc<KafkaStats>,
        fatal: Sender<String>,
    ) -> Context {
        Context {
            name: name.into(),
            stats,
            fatal,
            stranded: Arc::default(),
            misconfigured: Default::default(),
        }
    }
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        self.stats.intake(&statistics);
        let learned = statistics
            .brokers
            .values()
            .filter(|b| b.nodeid >= 0)
            .count();
        if self.stranded.observe(learned) {
            stranded::ask_cluster(self.stranded.clone(), self.name.clone(), self.fatal.clone());
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(msg) = misconfigured(error.rdkafka_error_code(), reason) {
            // librdkafka reports it on every retry; once is enough.
            if !self
                .misconfigured
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                error!(target: "kbridge::kafka", "{}: {msg}", self.name);
                let _ = self.fatal.try_send(format!("{}: {msg}", self.name));
            }
        } else if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            error!(target: "kbridge::kafka", "{}: fatal librdkafka error: {error}: {reason}", self.name);
            let _ = self
                .fatal
                .try_send(format!("{}: fatal librdkafka error: {reason}", self.name));
        } else {
            warn!(target: "kbridge::kafka", "{}: librdkafka: {error}: {reason}", self.name);
        }
    }
}

/// Errors no retry can mend: wrong credentials, an untrusted certificate.
/// They stop the process with a message naming the `[kafka]` key to fix,
/// instead of retrying for ever.
fn misconfigured(code: Option<RDKafkaErrorCode>, reason: &str) -> Option<String> {
    match code? {
        RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => {
            Some(format!(
                "[kafka] sasl.password: authentication failed ({reason}); check sasl.mechanisms, sasl.username and sasl.password (or sasl.password.file)"
            ))
        }
        RDKafkaErrorCode::SSL if reason.contains("certificate verify failed") => Some(format!(
            "[kafka] ssl.ca.location: the broker's certificate is not trusted ({reason})"
        )),
        _ => None,
    }
}

/// Creates the topics that do not exist yet. Returns the names created;
/// "already exists" is success.
pub fn ensure_topics(
    config: &ClientConfig,
    topics: &[String],
    partitions: i32,
    replication: i32,
    configs: &[(&str, &str)],
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            configs.iter().fold(
                NewTopic::new(t, partitions, TopicReplication::Fixed(replication)),
                |n, (k, v)| n.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    // A plain executor waits for the AdminClient's one future: not a runtime.
    let results = futures_executor::block_on(admin.create_topics(&new, &opts))?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(created)
}
