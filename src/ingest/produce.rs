//! The producing half of ingest: the job a request becomes, the worker loop
//! that hands its records to librdkafka, the delivery callback that records
//! each broker acknowledgement, and the answer built once every record of a
//! request is settled.
//!
//! Channel ends: workers hold the job `Receiver` (the HTTP threads hold the
//! senders). A request is answered from the delivery callback that settles
//! its last record, on librdkafka's poll thread: building the answer is
//! cheap and handing it to the connection never blocks, so a thread hop per
//! request is saved.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::statistics::Statistics;
use serde_json::json;

use super::body::Span;
use crate::kafka::Context;

/// How one record ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Waiting,
    Acked {
        partition: i32,
        offset: i64,
    },
    Failed {
        code: String,
        message: String,
        retriable: bool,
        /// librdkafka cannot tell whether the broker stored it (a timeout
        /// after the request was sent: `POSSIBLY_PERSISTED`).
        possibly_stored: bool,
    },
}

/// A request whose records are in flight; answered when `remaining` hits 0.
pub struct Pending {
    pub route: usize,
    pub topic: Arc<str>,
    /// The request to answer; `None` in `queued` mode (already answered).
    pub reply: Mutex<Option<tiny_http::Request>>,
    /// The idempotency key this request holds, if any.
    pub(crate) idempotency: Option<super::server::Ticket>,
    pub started: Instant,
    /// The key and value schema ids a REST Proxy answer names.
    pub schema_ids: [Option<u32>; 2],
    remaining: AtomicUsize,
    outcomes: Mutex<Vec<Outcome>>,
    /// What the request holds of the server's byte budget (`ingest::cost`),
    /// given back when the last reference goes: every record settled.
    _charge: tiny_http::Reservation,
}

impl Pending {
    pub(crate) fn new(
        route: usize,
        topic: Arc<str>,
        records: usize,
        reply: Option<tiny_http::Request>,
        idempotency: Option<super::server::Ticket>,
        charge: tiny_http::Reservation,
    ) -> Pending {
        Pending {
            route,
            topic,
            reply: Mutex::new(reply),
            idempotency,
            started: Instant::now(),
            schema_ids: [None, None],
            remaining: AtomicUsize::new(records),
            outcomes: Mutex::new(vec![Outcome::Waiting; records]),
            _charge: charge,
        }
    }

    /// Settles record `index`; true for the call that settled the last one.
    pub fn settle(&self, index: usize, outcome: Outcome) -> bool {
        if let Ok(mut o) = self.outcomes.lock()
            && let Some(slot) = o.get_mut(index)
        {
            *slot = outcome;
        }
        self.remaining.fetch_sub(1, Ordering::AcqRel) == 1
    }

    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

/// One request's records, as taken by a worker.
pub struct Job {
    pub pending: Arc<Pending>,
    /// The decoded body; spans index into it.
    pub body: Vec<u8>,
    pub spans: Vec<Span>,
    pub partition: Option<i32>,
    /// From `X-Kafka-Key`; wins over the key of `key_field`.
    pub key: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// The ingest producer's context: the shared client context plus the
/// delivery callback, which answers a request once all its records settled.
pub struct IngestContext {
    pub base: Context,
    /// Set right after the producer is built (the role's state needs the
    /// server, which needs nothing of the producer).
    pub(crate) shared: std::sync::OnceLock<Arc<super::Shared>>,
}

impl IngestContext {
    /// Every record of `pending` is settled: answer it.
    pub(crate) fn settled(&self, pending: Arc<Pending>) {
        if let Some(s) = self.shared.get() {
            s.respond(&pending);
        }
    }
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: Statistics) {
        self.base.stats(statistics);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.base.error(error, reason);
    }
}

impl ProducerContext for IngestContext {
    type DeliveryOpaque = Box<(Arc<Pending>, usize)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (pending, index) = *opaque;
        let outcome = match result {
            Ok(m) => Outcome::Acked {
                partition: m.partition(),
                offset: m.offset(),
            },
            Err((e, m)) => {
                // SAFETY: `m` is the live message of this delivery report.
                let status = unsafe { rdkafka::bindings::rd_kafka_message_status(m.ptr()) };
                use rdkafka::bindings::rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_NOT_PERSISTED;
                failed(e, status != RD_KAFKA_MSG_STATUS_NOT_PERSISTED)
            }
        };
        if pending.settle(index, outcome) {
            self.settled(pending);
        }
    }
}

pub type Producer = ThreadedProducer<IngestContext>;

/// A failed record; `possibly_stored`: it was sent, and no answer says
/// whether the broker kept it.
fn failed(e: &KafkaError, possibly_stored: bool) -> Outcome {
    let code = e.rdkafka_error_code();
    use RDKafkaErrorCode as C;
    let retriable = !matches!(
        code,
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessage
                | C::InvalidMessageSize
                | C::TopicAuthorizationFailed
                | C::UnknownPartition
                | C::InvalidRecord
        )
    );
    Outcome::Failed {
        code: code
            .map(|c| format!("{c:?}"))
            .unwrap_or_else(|| "Unknown".into()),
        message: e.to_string(),
        retriable,
        possibly_stored,
    }
}

/// Hands every record of `job` to librdkafka. A full producer queue is
/// waited out (the poll thread drains it) up to `queue_wait`; other refusals
/// settle the record as failed at once.
pub fn produce(producer: &Producer, job: Job, queue_wait: Duration, on_queue_full: impl Fn()) {
    let headers = (!job.headers.is_empty()).then(|| {
        job.headers.iter().fold(
            OwnedHeaders::new_with_capacity(job.headers.len()),
            |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v),
                })
            },
        )
    });
    let topic = job.pending.topic.clone();
    let topic: &str = &topic;
    for (i, span) in job.spans.iter().enumerate() {
        let payload = &job.body[span.range.clone()];
        let mut record: BaseRecord<'_, [u8], [u8], _> =
            BaseRecord::with_opaque_to(topic, Box::new((job.pending.clone(), i))).payload(payload);
        if let Some(k) = job
            .key
            .as_deref()
            .map(str::as_bytes)
            .or(span.key.as_deref())
        {
            record = record.key(k);
        }
        if let Some(p) = span.partition.or(job.partition) {
            record = record.partition(p);
        }
        if let Some(h) = &headers {
            record = record.headers(h.clone());
        }
        let deadline = Instant::now() + queue_wait;
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    on_queue_full();
                    record = back;
                    // Back off while the poll thread makes room; this is a
                    // retry pause, not synchronisation.
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, back)) => {
                    let (pending, index) = *back.delivery_opaque;
                    // Refused before sending: nothing can be stored.
                    if pending.settle(index, failed(&e, false)) {
                        producer.context().settled(pending);
                    }
                    break;
                }
            }
        }
    }
}

/// Status and JSON body for a settled request, in the shape of the
/// Confluent REST Proxy: one entry per record, in request order. The common
/// answer (every record acknowledged) is written directly: building a
/// `serde_json::Value` per record showed in profiles of 100-record batches.
pub fn answer(topic: &str, outcomes: &[Outcome]) -> (u16, String) {
    use std::fmt::Write as _;
    if outcomes.iter().all(|o| matches!(o, Outcome::Acked { .. })) {
        let mut s = String::with_capacity(32 + topic.len() + outcomes.len() * 44);
        let _ = write!(s, "{{\"topic\":{},\"offsets\":[", json!(topic));
        for (i, o) in outcomes.iter().enumerate() {
            if let Outcome::Acked { partition, offset } = o {
                let sep = if i > 0 { "," } else { "" };
                let _ = write!(
                    s,
                    "{sep}{{\"partition\":{partition},\"offset\":{offset},\"status\":200}}"
                );
            }
        }
        s.push_str("]}");
        return (200, s);
    }
    let (status, body) = answer_value(topic, outcomes);
    (status, body.to_string())
}

/// The answer of a request with failed records, as a JSON value. A record
/// Kafka may have stored without saying so (a timeout after sending) is
/// 504 "possibly stored", never "nothing stored": the idempotency entry of
/// such an answer is kept, so a retry with the same key gets the same
/// answer instead of storing the record a second time.
fn answer_value(topic: &str, outcomes: &[Outcome]) -> (u16, serde_json::Value) {
    let mut ok = 0usize;
    let mut any_permanent = false;
    let mut any_unknown = false;
    let offsets: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Acked { partition, offset } => {
                ok += 1;
                json!({ "partition": partition, "offset": offset, "status": 200 })
            }
            Outcome::Failed {
                code,
                message,
                retriable,
                possibly_stored,
            } => {
                any_permanent |= !retriable;
                any_unknown |= *possibly_stored;
                let status = match (*possibly_stored, *retriable) {
                    (true, _) => 504,
                    (false, true) => 503,
                    (false, false) => 500,
                };
                let mut v = json!({ "status": status, "error_code": code, "error": message });
                if *possibly_stored {
                    v["possibly_stored"] = json!(true);
                }
                v
            }
            Outcome::Waiting => {
                json!({ "status": 500, "error_code": "Unsettled", "error": "record not settled" })
            }
        })
        .collect();
    let status = match (ok, outcomes.len()) {
        (o, n) if o == n => 200,
        (0, _) if any_unknown => 504,
        (0, _) if any_permanent => 500,
        (0, _) => 503,
        _ => 207,
    };
    let mut body = json!({ "topic": topic, "offsets": offsets });
    if status >= 500 {
        body["status"] = json!(status);
        body["error"] = if any_unknown {
            json!(
                "Kafka did not confirm the records in time: they may be stored; a retry with the same \
                 Idempotency-Key gets this answer again, a retry without one may store them twice"
            )
        } else {
            json!("Kafka did not acknowledge the records; nothing of this request is stored")
        };
    }
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(retriable: bool) -> Outcome {
        Outcome::Failed {
            code: "MessageTimedOut".into(),
            message: "timed out".into(),
            retriable,
            possibly_stored: false,
        }
    }

    fn answer(topic: &str, outcomes: &[Outcome]) -> (u16, serde_json::Value) {
        let (s, b) = super::answer(topic, outcomes);
        (s, serde_json::from_str(&b).expect("answers are JSON"))
    }

    #[test]
    fn all_acked_is_200_with_offsets_in_order() {
        let (s, b) = answer(
            "t",
            &[
                Outcome::Acked {
                    partition: 1,
                    offset: 7,
                },
                Outcome::Acked {
                    partition: 0,
                    offset: 3,
                },
            ],
        );
        assert_eq!(s, 200);
        assert_eq!(b["topic"], "t");
        assert_eq!(b["offsets"][0]["partition"], 1);
        assert_eq!(b["offsets"][1]["offset"], 3);
        assert_eq!(b["offsets"][1]["status"], 200);
    }

    #[test]
    fn partial_failure_is_207_never_200() {
        let (s, b) = answer(
            "t",
            &[
                Outcome::Acked {
                    partition: 1,
                    offset: 7,
                },
                fail(true),
            ],
        );
        assert_eq!(s, 207);
        assert_eq!(b["offsets"][1]["status"], 503);
        assert_eq!(b["offsets"][1]["error_code"], "MessageTimedOut");
    }

    #[test]
    fn total_failure_is_503_when_retriable_else_500() {
        assert_eq!(answer("t", &[fail(true), fail(true)]).0, 503);
        assert_eq!(answer("t", &[fail(true), fail(false)]).0, 500);
    }

    #[test]
    fn records_that_may_be_stored_are_504_never_nothing_stored() {
        let unknown = Outcome::Failed {
            code: "MessageTimedOut".into(),
            message: "timed out".into(),
            retriable: true,
            possibly_stored: true,
        };
        let (s, b) = answer("t", &[unknown.clone(), fail(true)]);
        assert_eq!(s, 504);
        assert_eq!(b["offsets"][0]["status"], 504);
        assert_eq!(b["offsets"][0]["possibly_stored"], true);
        assert_eq!(b["offsets"][1]["status"], 503);
        assert!(b["error"].as_str().unwrap().contains("may be stored"));
        let ok = Outcome::Acked {
            partition: 0,
            offset: 1,
        };
        assert_eq!(answer("t", &[ok, unknown]).0, 207);
    }

    #[test]
    fn settle_reports_the_last_record_once() {
        let p = Pending::new(
            0,
            Arc::from("t"),
            2,
            None,
            None,
            tiny_http::Budget::new(1).reserve(0).unwrap(),
        );
        assert!(!p.settle(1, fail(true)));
        assert!(p.settle(
            0,
            Outcome::Acked {
                partition: 0,
                offset: 1
            }
        ));
        assert_eq!(p.outcomes()[1], fail(true));
    }
}
