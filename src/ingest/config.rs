//! `[ingest]`, `[ingest.routes]` and `[ingest.producer]`: validated into
//! [`IngestConfig`] with every problem collected.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::limits::HttpLimits;
use crate::config::{ConfigErrors, Document, librdkafka_section, valid_topic};

/// When a POST is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// 200 after the broker acknowledged every record (acks=all).
    Kafka,
    /// 202 once the request is in the channel; lost if the process is killed.
    Queued,
}

/// One `POST /api/<stream>/v1/` route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub stream: String,
    pub topic: String,
    /// What it takes and writes (`[ingest.formats]`).
    pub format: super::raw::RouteFormat,
    /// `protobuf:<message>`, `avro[:<file>]`: how its JSON records are encoded.
    pub writer: Option<std::sync::Arc<crate::codec::writer::Writer>>,
}

/// Seed 004's producer settings and our defaults for them; any other
/// librdkafka producer property may be added in `[ingest.producer]`.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("acks", "all"),
    ("enable.idempotence", "true"),
    ("compression.codec", "gzip"),
    // gzip's fastest level: measured on 100-event batches, 27 % more events
    // per second than the default level 6 for 9 % more bytes on the wire
    // (12.2× against 13.4× smaller than the JSON).
    ("compression.level", "1"),
    ("linger.ms", "1"),
    ("batch.size", "1000000"),
    ("retries", "2147483647"),
    ("delivery.timeout.ms", "30000"),
    ("max.in.flight.requests.per.connection", "5"),
    // Java-client-compatible key hashing; keyless records spread randomly.
    ("partitioner", "murmur2_random"),
];

/// The listener's certificate chain (PEM, leaf first) and private key.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: crate::secret::Secret,
}

impl ListenerTls {
    /// Both files or neither; the key only its owner may read.
    fn read(r: &mut crate::config::SectionReader<'_>) -> Option<ListenerTls> {
        let cert = r.string("tls_cert_file", "");
        let key = r.string("tls_key_file", "");
        if cert.is_empty() && key.is_empty() {
            return None;
        }
        if cert.is_empty() || key.is_empty() {
            let missing = if cert.is_empty() {
                "tls_cert_file"
            } else {
                "tls_key_file"
            };
            r.error(missing, "tls_cert_file and tls_key_file go together".into());
            return None;
        }
        let cert_pem = match std::fs::read(&cert) {
            Ok(c) if c.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => c,
            Ok(_) => {
                r.error("tls_cert_file", format!("{cert}: no PEM certificate in it"));
                return None;
            }
            Err(e) => {
                r.error("tls_cert_file", format!("{cert}: cannot read it: {e}"));
                return None;
            }
        };
        match crate::secret::read_private(std::path::Path::new(&key)) {
            Ok(k) if k.contains("PRIVATE KEY-----") => Some(ListenerTls {
                cert_pem,
                key_pem: crate::secret::Secret::new(k),
            }),
            Ok(_) => {
                r.error("tls_key_file", format!("{key}: no PEM private key in it"));
                None
            }
            Err(e) => {
                r.error("tls_key_file", e);
                None
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub listen: SocketAddr,
    /// `[schema_registry]`: the REST Proxy API's avro envelopes use it.
    pub registry: Option<std::sync::Arc<crate::codec::registry::Registry>>,
    /// Producer worker threads taking from the channel.
    pub workers: usize,
    /// No longer used (requests are handled on their connection's thread);
    /// accepted so that existing files still load, with a warning.
    pub http_threads: Option<usize>,
    pub ack: AckMode,
    /// Capacity of the request channel, in requests.
    pub channel_capacity: usize,
    pub enqueue_timeout: Duration,
    /// The listener's limits; `max_body_bytes` holds on the wire and after
    /// gzip.
    pub limits: HttpLimits,
    pub max_record_bytes: usize,
    /// Records in one request (array elements or NDJSON lines).
    pub max_records: usize,
    /// Nesting of a record's JSON (objects and arrays); at most 128 so that
    /// every role can parse what ingest accepted (serde_json's own limit).
    pub max_json_depth: usize,
    /// JSON field whose value keys the record when no `X-Kafka-Key` is sent.
    pub key_field: Option<String>,
    /// `rest_proxy_topics`: the topics the REST Proxy v2 produce API may
    /// write (empty: the API is off).
    pub rest_proxy_topics: Vec<String>,
    /// 0 disables idempotency keys.
    pub idempotency_window: Duration,
    pub idempotency_max_keys: usize,
    /// Bytes of remembered keys and answers, at most.
    pub idempotency_max_bytes: usize,
    pub create_topics: bool,
    pub topic_partitions: i32,
    pub topic_replication_factor: i32,
    pub shutdown_timeout: Duration,
    /// Bearer tokens a request must carry (`None`: no authentication).
    pub auth_tokens_file: Option<PathBuf>,
    /// HTTPS on the listener (`tls_cert_file`, `tls_key_file`).
    pub tls: Option<ListenerTls>,
    pub routes: Vec<Route>,
    /// librdkafka producer properties (defaults merged with the file's).
    pub producer: Vec<(String, String)>,
}

impl IngestConfig {
    /// `None` when the file has no `[ingest]` section.
    pub fn from_document(
        doc: &Document,
        errors: &mut ConfigErrors,
        registry: Option<&std::sync::Arc<crate::codec::registry::Registry>>,
    ) -> Option<IngestConfig> {
        if !doc.reader("ingest", errors).exists() {
            // Sub-sections without their parent are reported as unknown by app.
            return None;
        }
        let mut rr = doc.reader("ingest.routes", errors);
        let mut routes: Vec<Route> = rr
            .all()
            .into_iter()
            .map(|e| Route {
                stream: e.key.clone(),
                topic: e.value.clone(),
                format: super::raw::RouteFormat::Json,
                writer: None,
            })
            .collect();
        for route in &routes {
            if route.stream.is_empty()
                || !route
                    .stream
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                rr.error(
                    &route.stream,
                    "stream names use letters, digits, - and _ only".into(),
                );
            }
            if !valid_topic(&route.topic) {
                rr.error(
                    &route.stream,
                    format!("expected a Kafka topic name (letters, digits, . _ -; at most 249), got {:?}", route.topic),
                );
            }
        }
        if !rr.exists() {
            routes = vec![
                Route {
                    stream: "visit".into(),
                    topic: "visits".into(),
                    format: super::raw::RouteFormat::Json,
                    writer: None,
                },
                Route {
                    stream: "activity".into(),
                    topic: "activities".into(),
                    format: super::raw::RouteFormat::Json,
                    writer: None,
                },
            ];
        }
        rr.finish();

        let mut r = doc.reader("ingest", errors);
        let listen = r.socket_addr("listen", "0.0.0.0:8080");
        let workers = r.int("workers", 8usize, 1..=256);
        let http_threads = r
            .opt_str("http_threads")
            .map(|_| r.int("http_threads", 8usize, 1..=256));
        let ack = r.choice(
            "ack",
            AckMode::Kafka,
            &[("kafka", AckMode::Kafka), ("queued", AckMode::Queued)],
        );
        let channel_capacity = r.int("channel_capacity", 1024usize, 1..=1_000_000);
        let enqueue_timeout_ms = r.int("enqueue_timeout_ms", 500u64, 0..=600_000);
        let limits = HttpLimits::read(&mut r, HttpLimits::ingest());
        let max_body_bytes = limits.max_body_bytes;
        let max_record_bytes = r.int("max_record_bytes", 1_000_000usize, 1..=1 << 30);
        let max_records = r.int("max_records", 10_000usize, 1..=10_000_000);
        let max_json_depth = r.int("max_json_depth", 64usize, 1..=128);
        let key_field = r.string("key_field", "");
        let rest_proxy_topics = crate::config::ini::comma_list(&r.string("rest_proxy_topics", ""));
        if let Some(bad) = rest_proxy_topics.iter().find(|t| !valid_topic(t)) {
            r.error(
                "rest_proxy_topics",
                format!("expected comma-separated Kafka topic names, got {bad:?}"),
            );
        }
        let idempotency_window_s = r.int("idempotency_window_s", 300u64, 0..=86_400);
        let idempotency_max_keys = r.int("idempotency_max_keys", 100_000usize, 1..=10_000_000);
        let idempotency_max_bytes = r.int("idempotency_max_bytes", 64usize << 20, 1024..=1 << 40);
        let create_topics = r.bool("create_topics", true);
        let topic_partitions = r.int("topic_partitions", 4i32, 1..=10_000);
        let topic_replication_factor = r.int("topic_replication_factor", 1i32, 1..=32);
        let shutdown_timeout_ms = r.int("shutdown_timeout_ms", 10_000u64, 100..=3_600_000);
        let tls = ListenerTls::read(&mut r);
        let descriptor_file = r.string("protobuf_descriptor_file", "");
        let auth_tokens_file = r.string("auth_tokens_file", "");
        let auth_tokens_file =
            (!auth_tokens_file.is_empty()).then(|| PathBuf::from(auth_tokens_file));
        if let Some(path) = &auth_tokens_file {
            let streams = stream_names(&routes, &rest_proxy_topics);
            if let Err(e) = super::auth::parse_file(path, &streams) {
                r.error("auth_tokens_file", e);
            }
        }
        if max_record_bytes > max_body_bytes {
            r.error(
                "max_record_bytes",
                format!(
                    "must not exceed max_body_bytes ({max_body_bytes}), got {max_record_bytes}"
                ),
            );
        }
        r.finish();
        super::raw::read_formats(doc, errors, &mut routes, &descriptor_file, registry);

        let mut pr = doc.reader("ingest.producer", errors);
        let producer = librdkafka_section(&mut pr, PRODUCER_DEFAULTS);
        // librdkafka checks these only when the producer is created; say it now.
        let get = |k: &str| {
            producer
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let all = matches!(get("acks").map(str::trim), Some("all" | "-1"));
        if ack == AckMode::Kafka && !all {
            // 200 promises every in-sync replica has the record.
            pr.error(
                "acks",
                format!(
                    "must be all (or -1) with [ingest] ack = kafka, whose 200 means every in-sync replica has \
                     the record; got {:?} (ack = queued answers 202 before Kafka has it)",
                    get("acks").unwrap_or("")
                ),
            );
        } else if get("enable.idempotence") == Some("true") {
            if !all {
                pr.error(
                    "acks",
                    format!(
                        "must be all when enable.idempotence = true, got {:?}",
                        get("acks").unwrap_or("")
                    ),
                );
            }
            if get("max.in.flight.requests.per.connection")
                .and_then(|v| v.parse::<u32>().ok())
                .is_some_and(|n| n > 5)
            {
                pr.error(
                    "max.in.flight.requests.per.connection",
                    "must be at most 5 when enable.idempotence = true".into(),
                );
            }
        }
        pr.finish();
        // librdkafka's own queue can hold no more than the budget lets in
        // (`ingest::cost`), unless set on purpose.
        let mut producer = producer;
        let budget = limits.max_buffered_body_bytes;
        for (key, value) in [
            ("queue.buffering.max.kbytes", (budget / 1024).max(1)),
            (
                "queue.buffering.max.messages",
                (budget / super::cost::PER_RECORD).max(1),
            ),
        ] {
            if !producer.iter().any(|(k, _)| k == key) {
                producer.push((key.into(), value.min(i32::MAX as usize).to_string()));
            }
        }

        Some(IngestConfig {
            listen,
            registry: registry.cloned(),
            workers,
            http_threads,
            ack,
            channel_capacity,
            enqueue_timeout: Duration::from_millis(enqueue_timeout_ms),
            limits,
            max_records,
            max_json_depth,
            max_record_bytes,
            key_field: (!key_field.is_empty()).then_some(key_field),
            rest_proxy_topics,
            idempotency_window: Duration::from_secs(idempotency_window_s),
            idempotency_max_keys,
            idempotency_max_bytes,
            create_topics,
            topic_partitions,
            topic_replication_factor,
            shutdown_timeout: Duration::from_millis(shutdown_timeout_ms),
            auth_tokens_file,
            tls,
            routes,
            producer,
        })
    }

    /// The route names tokens are scoped to: each stream, then
    /// `topics/<topic>` for each REST Proxy topic.
    pub fn streams(&self) -> Vec<String> {
        stream_names(&self.routes, &self.rest_proxy_topics)
    }

    pub fn topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.routes.iter().map(|r| r.topic.clone()).collect();
        t.extend(self.rest_proxy_topics.iter().cloned());
        t.sort();
        t.dedup();
        t
    }
}

fn stream_names(routes: &[Route], rest_proxy_topics: &[String]) -> Vec<String> {
    let native = routes.iter().map(|r| r.stream.clone());
    native
        .chain(rest_proxy_topics.iter().map(|t| format!("topics/{t}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> (Option<IngestConfig>, ConfigErrors) {
        let mut errors = ConfigErrors::default();
        let doc = Document::parse("i.ini", text, &mut errors);
        let c = IngestConfig::from_document(&doc, &mut errors, None);
        (c, errors)
    }

    #[test]
    fn defaults_give_two_routes_and_seed_producer_settings() {
        let (c, errors) = load("[ingest]\n");
        assert!(errors.0.is_empty(), "{errors}");
        let c = c.unwrap();
        assert_eq!(c.workers, 8);
        assert_eq!(c.ack, AckMode::Kafka);
        assert_eq!(
            c.topics(),
            vec!["activities".to_string(), "visits".to_string()]
        );
        assert!(
            c.producer
                .contains(&("compression.codec".into(), "gzip".into()))
        );
        assert!(c.producer.contains(&("acks".into(), "all".into())));
    }

    #[test]
    fn absent_section_means_role_not_configured() {
        assert!(load("[log]\n").0.is_none());
    }

    #[test]
    fn librdkafkas_queue_follows_the_budget_unless_set() {
        let get = |p: &[(String, String)], k: &str| {
            p.iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let (c, _) = load("[ingest]\nmax_buffered_body_bytes = 33554432\n");
        let p = c.unwrap().producer;
        assert_eq!(
            get(&p, "queue.buffering.max.kbytes").as_deref(),
            Some("32768")
        );
        let per = (32usize << 20) / super::super::cost::PER_RECORD;
        assert_eq!(
            get(&p, "queue.buffering.max.messages"),
            Some(per.to_string())
        );
        let (c, _) = load("[ingest]\n[ingest.producer]\nqueue.buffering.max.kbytes = 1000\n");
        let p = c.unwrap().producer;
        assert_eq!(
            get(&p, "queue.buffering.max.kbytes").as_deref(),
            Some("1000")
        );
        assert_eq!(
            p.iter()
                .filter(|(k, _)| k == "queue.buffering.max.kbytes")
                .count(),
            1
        );
    }

    #[test]
    fn producer_overrides_replace_defaults_and_pass_through() {
        let (c, errors) = load(
            "[ingest]\n[ingest.producer]\nlinger.ms = 20\nqueue.buffering.max.messages = 5000\n",
        );
        assert!(errors.0.is_empty(), "{errors}");
        let p = c.unwrap().producer;
        assert!(p.contains(&("linger.ms".into(), "20".into())));
        assert!(!p.contains(&("linger.ms".into(), "1".into())));
        assert!(p.contains(&("queue.buffering.max.messages".into(), "5000".into())));
    }

    #[test]
    fn every_bad_value_is_reported_with_its_line() {
        let (_, errors) = load(
            "[ingest]\nworkers = 0\nack = sometimes\nlisten = :x\nmax_body_bytes = 10\nmax_record_bytes = 20\nbogus = 1\n\
             [ingest.routes]\nvisit = bad topic!\n[ingest.producer]\nacks = maybe\n",
        );
        let t = errors.to_string();
        for want in [
            "i.ini:2 [ingest] workers: expected an integer in 1..=256, got \"0\"",
            "i.ini:3 [ingest] ack: expected one of kafka | queued, got \"sometimes\"",
            "i.ini:4 [ingest] listen: expected host:port",
            "i.ini:6 [ingest] max_record_bytes: must not exceed max_body_bytes (10), got 20",
            "i.ini:7 [ingest] bogus: unknown key",
            "i.ini:9 [ingest.routes] visit: expected a Kafka topic name",
            "i.ini:11 [ingest.producer] acks: librdkafka rejects \"maybe\"",
        ] {
            assert!(t.contains(want), "missing {want:?} in:\n{t}");
        }
    }

    #[test]
    fn conflicting_producer_settings_are_rejected_together() {
        let (_, errors) = load("[ingest]\nack = queued\n[ingest.producer]\nacks = 1\n");
        assert!(
            errors.to_string().contains("i.ini:4 [ingest.producer] acks: must be all when enable.idempotence = true, got \"1\""),
            "{errors}"
        );
    }

    #[test]
    fn acks_below_all_void_the_200_of_ack_kafka() {
        for acks in ["0", "1"] {
            let (_, errors) = load(&format!(
                "[ingest]\n[ingest.producer]\nacks = {acks}\nenable.idempotence = false\n"
            ));
            assert!(
                errors.to_string().contains(&format!(
                    "i.ini:3 [ingest.producer] acks: must be all (or -1) with [ingest] ack = kafka, whose 200 means every in-sync replica has the record; got \"{acks}\""
                )),
                "{errors}"
            );
        }
        let (_, errors) = load(
            "[ingest]\nack = queued\n[ingest.producer]\nacks = 1\nenable.idempotence = false\n",
        );
        assert!(
            errors.0.is_empty(),
            "queued promises nothing of Kafka: {errors}"
        );
    }
}
