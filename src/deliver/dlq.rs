//! The dead-letter producer: a message that cannot be delivered is parked
//! in `<topic>.dlq` with its key, value and headers plus the reason, the HTTP
//! status and the attempt count as record headers. It is finished (its
//! offset may be committed) only when the broker acknowledged the parked
//! copy; a failed park is retried.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::warn;
use rdkafka::client::{Client, ClientContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Header;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;

use super::retry::backoff;
use super::{Shared, Stage, Work};
use crate::config::KafkaConfig;
use crate::kafka::{Context, KafkaStats, client_config, record};

pub const REASON: &str = "kbridge-dlq-reason";
pub const STATUS: &str = "kbridge-dlq-status";
pub const ATTEMPTS: &str = "kbridge-dlq-attempts";
pub const SOURCE: &str = "kbridge-dlq-source";

pub struct DlqCtx {
    base: Context,
    shared: Arc<Shared>,
}

impl ClientContext for DlqCtx {
    fn stats(&self, s: Statistics) {
        self.base.stats(s);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.base.error(error, reason);
    }
}

impl ProducerContext for DlqCtx {
    type DeliveryOpaque = Box<Work>;

    fn delivery(&self, result: &DeliveryResult<'_>, w: Box<Work>) {
        let w = *w;
        match result {
            Ok(_) => {
                self.shared.metrics.dead_lettered.inc();
                self.shared.finish(w);
            }
            Err((e, _)) => park_failed(&self.shared, w, e),
        }
    }
}

fn park_failed(shared: &Shared, w: Work, e: &KafkaError) {
    shared.metrics.dlq_errors.inc();
    warn!(
        "parking {}/{}@{} in the dead-letter topic failed: {e}; retrying",
        w.msg.topic, w.msg.partition, w.msg.offset
    );
    let c = &shared.config;
    let wait = backoff(3, c.backoff_initial, c.backoff_max, fastrand::f64());
    shared.requeue(Instant::now() + wait, Stage::Send, w);
}

pub struct DeadLetters {
    producer: ThreadedProducer<DlqCtx>,
}

impl DeadLetters {
    pub fn new(
        kafka: &KafkaConfig,
        shared: Arc<Shared>,
        stats: Arc<KafkaStats>,
        fatal: Sender<String>,
    ) -> anyhow::Result<Self> {
        let props: Vec<(String, String)> = [
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("compression.codec", "gzip"),
            ("linger.ms", "5"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let ctx = DlqCtx {
            base: Context::new("deliver-dlq", stats, fatal),
            shared,
        };
        Ok(DeadLetters {
            producer: client_config(kafka, &props).create_with_context(ctx)?,
        })
    }

    pub fn client(&self) -> &Client<DlqCtx> {
        self.producer.client()
    }

    /// Parks `w` (its `parking` says why); finishing happens on the ack.
    pub fn park(&self, w: Work) {
        let (reason, status) = w
            .parking
            .clone()
            .unwrap_or_else(|| ("unknown".into(), None));
        let topic = format!(
            "{}{}",
            w.msg.topic,
            self.producer.context().shared.config.dlq_suffix
        );
        let payload = w.msg.payload.clone();
        let key = w.msg.key.clone();
        // The record's own headers byte for byte, whatever their bytes.
        let mut headers = record::owned(&w.msg.headers, 4);
        let status = status.map(|s| s.to_string()).unwrap_or_default();
        let attempts = w.attempts.to_string();
        let source = format!("{}/{}@{}", w.msg.topic, w.msg.partition, w.msg.offset);
        for (k, v) in [
            (REASON, reason.as_str()),
            (STATUS, status.as_str()),
            (ATTEMPTS, attempts.as_str()),
            (SOURCE, source.as_str()),
        ] {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8], Box<Work>> =
            BaseRecord::with_opaque_to(&topic, Box::new(w))
                .payload(&payload[..])
                .headers(headers);
        if let Some(k) = &key {
            record = record.key(&k[..]);
        }
        if let Err((e, record)) = self.producer.send(record) {
            park_failed(&self.producer.context().shared, *record.delivery_opaque, &e);
        }
    }

    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.flush(timeout)
    }
}
