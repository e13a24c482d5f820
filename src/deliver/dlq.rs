//! The dead-letter producer: a message that cannot be delivered is parked
//! in `<topic>.dlq` with its key, value and headers (byte for byte) plus
//! the reason, the HTTP status and the attempt count as record headers. It
//! is finished (its offset may be committed) only when the broker
//! acknowledged the parked copy. Parking always ends:
//!
//! - a transient produce error (broker away, timeout) is retried with
//!   backoff, as long as it takes;
//! - a copy too large for the broker (`MSG_SIZE_TOO_LARGE`, including
//!   librdkafka's own `message.max.bytes` check) is parked again smaller:
//!   first with the value cut to its first 64 KiB, then with no value, the
//!   key cut to 1 KiB and none of the record's own headers; the header
//!   `kbridge-dlq-truncated` says what was cut;
//! - any other permanent error (not authorised, invalid topic or record,
//!   policy), or a copy still too large, drops the message with an ERROR
//!   and `kbridge_deliver_dead_letter_dropped_total`: its offset is
//!   committed, the message is lost, and the log says which.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{error, warn};
use rdkafka::client::{Client, ClientContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
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
/// The subscription that parked it (`deliver` for `[deliver]`): what
/// `kbridge replay --subscription` redrives.
pub const SUBSCRIPTION: &str = "kbridge-dlq-subscription";
/// What was cut from a copy too large for the broker (`value=<bytes>`,
/// `key=<bytes>`, `headers=<count>`: the original sizes).
pub const TRUNCATED: &str = "kbridge-dlq-truncated";

/// The value a copy keeps at the first shrink.
const KEEP_VALUE: usize = 64 << 10;
/// The key a copy keeps at the second shrink.
const KEEP_KEY: usize = 1 << 10;

/// What a failed produce of a parked copy means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Try again later, as it is.
    Transient,
    /// Too large for the broker or the client: try again smaller.
    TooLarge,
    /// No retry can mend it.
    Permanent,
}

/// Classifies a produce error (pure).
pub fn classify(e: &KafkaError) -> Failure {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidMessageSize) => {
            Failure::TooLarge
        }
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::InvalidTopic
            | C::InvalidRecord
            | C::InvalidMessage
            | C::PolicyViolation
            | C::InvalidArgument,
        ) => Failure::Permanent,
        _ => Failure::Transient,
    }
}

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
        let mut w = *w;
        let shared = &self.shared;
        let state_topic = shared.held.as_ref().and_then(|h| h.topic());
        match result {
            // The copy is in: the key quarantine's state record is next.
            Ok(m) if state_topic.is_some_and(|t| t != m.topic()) && w.msg.key.is_some() => {
                w.copied = true;
                shared.requeue(Instant::now(), Stage::Send, w);
            }
            Ok(_) => {
                shared.metrics.dead_lettered.inc();
                shared.finish(w);
            }
            Err((e, m)) if state_topic == Some(m.topic()) => state_failed(shared, w, e),
            Err((e, _)) => park_failed(shared, w, e),
        }
    }
}

/// Writing a parked message's quarantine state failed: tried again when
/// it may succeed later; otherwise the key stays held in this process only.
fn state_failed(shared: &Shared, w: Work, e: &KafkaError) {
    let at = format!("{}/{}@{}", w.msg.topic, w.msg.partition, w.msg.offset);
    if classify(e) == Failure::Transient {
        warn!("writing the quarantine state of {at} failed: {e}; retrying");
        let c = &shared.config;
        let wait = backoff(3, c.backoff_initial, c.backoff_max, fastrand::f64());
        return shared.requeue(Instant::now() + wait, Stage::Send, w);
    }
    error!(
        "the quarantine state of {at} cannot be written ({e}): its key is held by this process only, until it stops"
    );
    shared.metrics.dead_lettered.inc();
    shared.finish(w);
}

fn park_failed(shared: &Shared, mut w: Work, e: &KafkaError) {
    let m = &shared.metrics;
    m.dlq_errors.inc();
    let at = format!("{}/{}@{}", w.msg.topic, w.msg.partition, w.msg.offset);
    match classify(e) {
        Failure::TooLarge if w.shrunk < 2 => {
            w.shrunk += 1;
            warn!("parking {at} in the dead-letter topic failed: {e}; parking a smaller copy");
            shared.requeue(Instant::now(), Stage::Send, w);
        }
        Failure::TooLarge | Failure::Permanent => {
            m.dlq_dropped.inc();
            if let Some(n) = m.dlq_drop_log.hit() {
                error!(
                    "{n} message(s) LOST: could not be delivered nor parked (latest {at}: {e}; reason {:?}); their offsets are committed",
                    w.parking.as_ref().map(|p| p.0.as_str()).unwrap_or("")
                );
            }
            shared.finish(w);
        }
        Failure::Transient => {
            warn!("parking {at} in the dead-letter topic failed: {e}; retrying");
            let c = &shared.config;
            let wait = backoff(3, c.backoff_initial, c.backoff_max, fastrand::f64());
            shared.requeue(Instant::now() + wait, Stage::Send, w);
        }
    }
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

    /// Parks `w` (its `parking` says why); finishing happens on the ack. A
    /// message whose partition was revoked is given up instead (its next
    /// owner reads it again).
    pub fn park(&self, w: Work) {
        let shared = &self.producer.context().shared;
        if w.msg.lease.ended() {
            return shared.abandon(w);
        }
        let (reason, status) = w
            .parking
            .clone()
            .unwrap_or_else(|| ("unknown".into(), None));
        let m = &w.msg;
        let (origin_topic, origin_partition, origin_offset) = m.source();
        // The key is held from now on (`quarantine`); once the copy is in,
        // the state record follows it.
        if let (Some(h), Some(key)) = (&shared.held, &m.key) {
            let record = h.note(origin_topic, origin_partition, origin_offset, key, &reason);
            if w.copied {
                return match (h.topic(), record) {
                    (Some(topic), Some((k, v))) => self.write_state(topic, &k, &v, w),
                    _ => {
                        shared.metrics.dead_lettered.inc();
                        shared.finish(w)
                    }
                };
            }
        }
        let topic = format!("{origin_topic}{}", shared.config.dlq_suffix);
        // The value as it was read (before `value_format` decoded it).
        let original = m.raw.as_deref().unwrap_or(&m.payload);
        let (value, key, own_headers) = match w.shrunk {
            0 => (original, m.key.as_deref(), &m.headers[..]),
            1 => (
                &original[..original.len().min(KEEP_VALUE)],
                m.key.as_deref(),
                &m.headers[..],
            ),
            _ => (
                &[][..],
                m.key.as_deref().map(|k| &k[..k.len().min(KEEP_KEY)]),
                &[][..],
            ),
        };
        let mut cut = Vec::new();
        if value.len() < original.len() {
            cut.push(format!("value={}", original.len()));
        }
        if let (Some(k), Some(kept)) = (&m.key, key)
            && kept.len() < k.len()
        {
            cut.push(format!("key={}", k.len()));
        }
        if own_headers.len() < m.headers.len() {
            cut.push(format!("headers={}", m.headers.len()));
        }
        // The record's own headers byte for byte, whatever their bytes.
        let mut headers: OwnedHeaders = record::owned(own_headers, 6);
        let status = status.map(|s| s.to_string()).unwrap_or_default();
        let attempts = w.attempts.to_string();
        let source = format!("{origin_topic}/{origin_partition}@{origin_offset}");
        let subscription = shared.config.subscription.as_deref().unwrap_or("deliver");
        let cut = cut.join(",");
        for (k, v) in [
            (REASON, reason.as_str()),
            (STATUS, status.as_str()),
            (ATTEMPTS, attempts.as_str()),
            (SOURCE, source.as_str()),
            (SUBSCRIPTION, subscription),
            (TRUNCATED, cut.as_str()),
        ] {
            if k != TRUNCATED || !v.is_empty() {
                headers = record::with_header(headers, k.as_bytes(), Some(v.as_bytes()));
            }
        }
        let value = value.to_vec();
        let key = key.map(<[u8]>::to_vec);
        let tombstone = m.kind == super::ValueKind::Tombstone;
        let mut record: BaseRecord<'_, [u8], [u8], Box<Work>> =
            BaseRecord::with_opaque_to(&topic, Box::new(w)).headers(headers);
        if !tombstone {
            record = record.payload(&value[..]);
        }
        if let Some(k) = &key {
            record = record.key(&k[..]);
        }
        if let Err((e, record)) = self.producer.send(record) {
            park_failed(shared, *record.delivery_opaque, &e);
        }
    }

    /// The quarantine's state record of `w`'s key; `w` is finished on its
    /// acknowledgement.
    fn write_state(&self, topic: &str, key: &[u8], value: &[u8], w: Work) {
        let record: BaseRecord<'_, [u8], [u8], Box<Work>> =
            BaseRecord::with_opaque_to(topic, Box::new(w))
                .key(key)
                .payload(value);
        if let Err((e, record)) = self.producer.send(record) {
            state_failed(&self.producer.context().shared, *record.delivery_opaque, &e);
        }
    }

    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.flush(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_errors_are_transient_too_large_or_permanent() {
        let e = |c| KafkaError::MessageProduction(c);
        assert_eq!(
            classify(&e(RDKafkaErrorCode::MessageSizeTooLarge)),
            Failure::TooLarge
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::MessageBatchTooLarge)),
            Failure::TooLarge
        );
        for c in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::InvalidTopic,
            RDKafkaErrorCode::InvalidRecord,
            RDKafkaErrorCode::PolicyViolation,
        ] {
            assert_eq!(classify(&e(c)), Failure::Permanent, "{c:?}");
        }
        for c in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::AllBrokersDown,
        ] {
            assert_eq!(classify(&e(c)), Failure::Transient, "{c:?}");
        }
    }
}
