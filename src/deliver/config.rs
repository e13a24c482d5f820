//! `[deliver]` and `[deliver.consumer]`: validated into [`DeliverConfig`]
//! with every problem collected.

use std::time::Duration;

use super::retry::{StatusRules, parse_ranges};
use crate::config::ini::comma_list;
use crate::config::{ConfigErrors, Document, consumer_section, valid_topic};
use crate::kafka::Pace;

use super::enrich_config::enrich_config;
pub use super::enrich_config::{EnrichConfig, EnrichFailure};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// At-least-once: offsets move only past delivered or parked messages.
    AfterDelivery,
    /// At-most-once: offsets are committed before the messages are sent.
    BeforeDelivery,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    None,
    /// One message per key at a time, in offset order.
    Key,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchFormat {
    Ndjson,
    JsonArray,
    EsBulk,
}

/// What a record without a value (a tombstone) becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTombstone {
    /// Done at once, counted (`kbridge_deliver_skipped_total`).
    Skip,
    /// Sent: an empty body alone, `null` in a batch.
    Send,
    DeadLetter,
    /// A DELETE to the (templated) URL, without a body, alone.
    Delete,
}

/// What a value that is not JSON (an empty one included) becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInvalid {
    /// Parked in the dead-letter topic, reason "value is not JSON".
    DeadLetter,
    /// Done at once, counted (`kbridge_deliver_skipped_total`).
    Skip,
    /// Sent: its bytes alone (`application/octet-stream`); in a batch a
    /// JSON string of its text, or `"base64:<base64>"` when it is not UTF-8.
    Send,
}

/// The method of the calls (`method`; tombstones with `on_tombstone =
/// delete` go as DELETE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    Put,
    Patch,
}

#[derive(Debug, Clone)]
pub struct DeliverConfig {
    /// The `[subscription.<name>]` this is (`None`: `[deliver]`).
    pub subscription: Option<String>,
    pub group_id: String,
    pub topics: Vec<String>,
    pub target_url: String,
    /// `target_url` as a template (placeholders filled per message).
    pub url: super::shape::Template,
    pub method: Method,
    /// `headers`: static header fields of every call.
    pub extra_headers: Vec<(String, String)>,
    /// `forward_headers`: record headers sent on (single-message calls).
    pub forward_headers: Vec<String>,
    /// `signing_secret_file`: Standard Webhooks signatures on every call.
    pub signer: Option<super::signing::Signer>,
    pub senders: usize,
    pub max_in_flight: usize,
    pub max_threads: usize,
    pub channel_capacity: usize,
    pub batch_size: usize,
    pub batch_format: BatchFormat,
    /// `batch_answer = items`: a batch's 2xx answer gives each message's
    /// own status (`{"items":[{"status":200},…]}`, in request order).
    pub per_item_answers: bool,
    pub batch_linger: Duration,
    /// Index of `_bulk` action lines (empty: the message's topic).
    pub es_index: String,
    pub max_retries: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub rules: StatusRules,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Follow 307/308 (method and body kept); other redirects are judged
    /// by the status rules (dead letter by default).
    pub follow_redirects: bool,
    /// 0 = unlimited.
    pub rate_limit_per_s: u32,
    pub commit: Commit,
    pub commit_interval: Duration,
    pub ordering: Ordering,
    /// `on_park = quarantine_key`: the state topic of the key quarantine.
    pub quarantine: Option<String>,
    pub aggregate_field: String,
    /// The topics whose events this pipeline counts in the dashboard's
    /// aggregates: all of `topics`, less those an earlier subscription of
    /// the process counts already (each event is counted once).
    pub aggregate_topics: Vec<String>,
    pub on_tombstone: OnTombstone,
    pub on_invalid_json: OnInvalid,
    /// `value_format`: how values are read (JSON, or Protobuf decoded to
    /// JSON; one that cannot be read is dead-lettered with the reason).
    pub value_format: crate::codec::ValueFormat,
    /// `key_format`: how keys are read for placeholders, filters and
    /// `X-Kafka-Key` (as they are, or decoded to their text).
    pub key_format: crate::codec::ValueFormat,
    /// Which messages are sent (`filter`); others are done uncalled.
    pub filter: Option<super::filter::Filter>,
    pub dlq_suffix: String,
    pub shutdown_timeout: Duration,
    pub enrich: Option<EnrichConfig>,
    /// TLS trust and `Authorization` values of the calls.
    pub outbound: super::outbound::Outbound,
    /// librdkafka consumer properties (defaults merged with the file's).
    pub consumer: Vec<(String, String)>,
    /// Set by `kbridge replay --subscription`: the pipeline reads the
    /// dead-letter topics instead (see `redrive`).
    pub redrive: Option<std::sync::Arc<super::redrive::Redrive>>,
}

impl DeliverConfig {
    pub fn from_document(
        doc: &Document,
        errors: &mut ConfigErrors,
        registry: Option<&std::sync::Arc<crate::codec::registry::Registry>>,
    ) -> Option<DeliverConfig> {
        let mut r = doc.reader("deliver", errors);
        if !r.exists() {
            return None;
        }
        let group_id = r.required("group_id");
        let topics = comma_list(&r.required("topics"));
        let aggregate_topics = topics.clone();
        if let Some(bad) = topics.iter().find(|t| !valid_topic(t)) {
            r.error(
                "topics",
                format!("expected comma-separated Kafka topic names, got {bad:?}"),
            );
        }
        let target_url = r.required("target_url");
        if !(target_url.is_empty()
            || target_url.starts_with("http://")
            || target_url.starts_with("https://"))
        {
            r.error(
                "target_url",
                format!("expected an http:// or https:// URL, got {target_url:?}"),
            );
        }
        let senders = r.int("senders", 8usize, 1..=1024);
        let max_in_flight = r.int("max_in_flight", senders, 1..=1024);
        let max_threads = r.int("max_threads", 10usize, 1..=256);
        let channel_capacity = r.int("channel_capacity", 1024usize, 1..=1_000_000);
        let batch_size = r.int("batch_size", 1usize, 1..=100_000);
        let per_item_answers =
            r.choice("batch_answer", false, &[("status", false), ("items", true)]);
        let batch_format = r.choice(
            "batch_format",
            BatchFormat::Ndjson,
            &[
                ("ndjson", BatchFormat::Ndjson),
                ("json_array", BatchFormat::JsonArray),
                ("es_bulk", BatchFormat::EsBulk),
            ],
        );
        let batch_linger_ms = r.int("batch_linger_ms", 5u64, 0..=60_000);
        let es_index = r.string("es_index", "");
        let max_retries = r.int("max_retries", 5u32, 0..=1000);
        let backoff_initial_ms = r.int("backoff_initial_ms", 100u64, 1..=3_600_000);
        let backoff_max_ms = r.int("backoff_max_ms", 30_000u64, 1..=3_600_000);
        let mut rules = StatusRules::default();
        for (key, slot) in [
            ("retry_statuses", &mut rules.retry),
            ("dead_letter_statuses", &mut rules.dead_letter),
            ("drop_statuses", &mut rules.drop),
        ] {
            if let Some(v) = r.opt_str(key) {
                match parse_ranges(&v) {
                    Ok(ranges) => *slot = ranges,
                    Err(e) => r.error(key, e),
                }
            }
        }
        let request_timeout_ms = r.int("request_timeout_ms", 10_000u64, 1..=3_600_000);
        let follow_redirects = r.bool("follow_redirects", false);
        let connect_timeout_ms = r.int("connect_timeout_ms", 2_000u64, 1..=3_600_000);
        let rate_limit_per_s = r.int("rate_limit_per_s", 0u32, 0..=10_000_000);
        let commit = r.choice(
            "commit",
            Commit::AfterDelivery,
            &[
                ("after_delivery", Commit::AfterDelivery),
                ("before_delivery", Commit::BeforeDelivery),
            ],
        );
        let commit_interval_ms = r.int("commit_interval_ms", 1000u64, 10..=600_000);
        let ordering = r.choice(
            "ordering",
            Ordering::None,
            &[("none", Ordering::None), ("key", Ordering::Key)],
        );
        let quarantine = quarantine_config(&mut r, &group_id, ordering);
        let aggregate_field = r.string("aggregate_field", "type");
        let on_tombstone = r.choice(
            "on_tombstone",
            OnTombstone::Skip,
            &[
                ("skip", OnTombstone::Skip),
                ("send", OnTombstone::Send),
                ("dead_letter", OnTombstone::DeadLetter),
                ("delete", OnTombstone::Delete),
            ],
        );
        let value_format = crate::codec::ValueFormat::read(&mut r, registry);
        let key_format = crate::codec::ValueFormat::read_key(&mut r, registry);
        let on_invalid_json = r.choice(
            "on_invalid_json",
            OnInvalid::DeadLetter,
            &[
                ("dead_letter", OnInvalid::DeadLetter),
                ("skip", OnInvalid::Skip),
                ("send", OnInvalid::Send),
            ],
        );
        let filter_text = r.string("filter", "");
        let filter = match filter_text.trim() {
            "" => None,
            text => match super::filter::Filter::parse(text) {
                Ok(f) => Some(f),
                Err(e) => {
                    r.error("filter", e);
                    None
                }
            },
        };
        if per_item_answers && batch_format == BatchFormat::EsBulk {
            r.error(
                "batch_answer",
                "items is for json_array and ndjson batches: es_bulk answers per item already"
                    .into(),
            );
        }
        let url = match super::shape::Template::parse(&target_url) {
            Ok(t) => t,
            Err(e) => {
                r.error("target_url", e);
                super::shape::Template::fixed(&target_url)
            }
        };
        if !url.is_static() && batch_size > 1 {
            r.error(
                "target_url",
                format!("placeholders fill one message's URL: they need batch_size = 1, got {batch_size}"),
            );
        }
        let method = r.choice(
            "method",
            Method::Post,
            &[
                ("POST", Method::Post),
                ("PUT", Method::Put),
                ("PATCH", Method::Patch),
            ],
        );
        let extra_headers = match super::shape::static_headers(&r.string("headers", "")) {
            Ok(h) => h,
            Err(e) => {
                r.error("headers", e);
                Vec::new()
            }
        };
        let forward_headers = match super::shape::forwarded(&r.string("forward_headers", "")) {
            Ok(h) => h,
            Err(e) => {
                r.error("forward_headers", e);
                Vec::new()
            }
        };
        let signer = match r.string("signing_secret_file", "").as_str() {
            "" => None,
            path => match super::signing::Signer::open(std::path::Path::new(path)) {
                Ok(s) => Some(s),
                Err(e) => {
                    r.error("signing_secret_file", e);
                    None
                }
            },
        };
        let dlq_suffix = r.string("dlq_suffix", ".dlq");
        let shutdown_timeout_ms = r.int("shutdown_timeout_ms", 10_000u64, 100..=3_600_000);
        if backoff_initial_ms > backoff_max_ms {
            r.error(
                "backoff_initial_ms",
                format!(
                    "must not exceed backoff_max_ms ({backoff_max_ms}), got {backoff_initial_ms}"
                ),
            );
        }
        let enrich = enrich_config(&mut r);
        let outbound = super::outbound::Outbound::read(&mut r);
        r.finish();

        let mut c = doc.reader("deliver.consumer", errors);
        let pace = if batch_size > 1 {
            Pace::Batches
        } else {
            Pace::PerCall
        };
        let consumer = consumer_section(&mut c, "deliver", pace, shutdown_timeout_ms);
        c.finish();

        Some(DeliverConfig {
            subscription: None,
            group_id,
            topics,
            target_url,
            url,
            method,
            extra_headers,
            forward_headers,
            signer,
            senders,
            max_in_flight,
            max_threads,
            channel_capacity,
            batch_size,
            batch_format,
            per_item_answers,
            batch_linger: Duration::from_millis(batch_linger_ms),
            es_index,
            max_retries,
            backoff_initial: Duration::from_millis(backoff_initial_ms),
            backoff_max: Duration::from_millis(backoff_max_ms),
            rules,
            request_timeout: Duration::from_millis(request_timeout_ms),
            follow_redirects,
            connect_timeout: Duration::from_millis(connect_timeout_ms),
            rate_limit_per_s,
            commit,
            commit_interval: Duration::from_millis(commit_interval_ms),
            ordering,
            quarantine,
            aggregate_field,
            aggregate_topics,
            on_tombstone,
            on_invalid_json,
            value_format,
            key_format,
            filter,
            dlq_suffix,
            shutdown_timeout: Duration::from_millis(shutdown_timeout_ms),
            enrich,
            outbound,
            consumer,
            redrive: None,
        })
    }

    /// The topics the pipeline reads: `topics`, or their dead-letter
    /// topics when redriving.
    pub fn source_topics(&self) -> Vec<String> {
        match self.redrive {
            Some(_) => self.dlq_topics(),
            None => self.topics.clone(),
        }
    }

    pub fn dlq_topics(&self) -> Vec<String> {
        self.topics
            .iter()
            .map(|t| format!("{t}{}", self.dlq_suffix))
            .collect()
    }
}

/// `on_park` and `quarantine_topic` (default `<group_id>.quarantine`, with
/// characters a topic name cannot hold as `_`).
fn quarantine_config(
    r: &mut crate::config::SectionReader<'_>,
    group_id: &str,
    ordering: Ordering,
) -> Option<String> {
    let on = r.choice(
        "on_park",
        false,
        &[("park", false), ("quarantine_key", true)],
    );
    let default: String = format!("{group_id}.quarantine")
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '_',
        })
        .take(249)
        .collect();
    let topic = r.string("quarantine_topic", &default);
    if !valid_topic(&topic) {
        r.error(
            "quarantine_topic",
            format!("expected a Kafka topic name, got {topic:?}"),
        );
    }
    if on && ordering != Ordering::Key {
        r.error(
            "on_park",
            "quarantine_key keeps a key's order, so it needs ordering = key".to_string(),
        );
    }
    on.then_some(topic)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
