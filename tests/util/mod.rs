//! Test helpers: the broker under test (from `scripts/test`), unique topics,
//! in-process roles on port 0, an HTTP client, readers of what Kafka holds
//! (librdkafka and, independently, kafka-python), and private brokers for
//! tests that stop or restart one.

pub mod admin;
pub mod broker;
pub mod collect;
pub mod config;
pub mod kafka_proxy;
pub mod murmur2;
pub mod process;
pub mod python;
pub mod raw;
pub mod records;
pub mod relay;
pub mod roles;
pub mod sink;
pub mod tls;

pub use config::{check_config, load_config, try_load_config};
pub use roles::{Deliver, Ingest, deliver_ini, ingest_ini, init_test_log, wait_delivered};

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The broker every test uses; set by `scripts/test`. Missing = loud failure.
pub fn brokers() -> String {
    std::env::var("KBRIDGE_TEST_BROKERS").unwrap_or_else(|_| {
        panic!("KBRIDGE_TEST_BROKERS is not set: run the tests with scripts/test, which starts a real broker")
    })
}

/// A topic name no other test (or earlier run) uses.
pub fn unique_topic(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 1_000_000_000;
    format!(
        "{prefix}-{}-{t}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique_topic(prefix));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sets the permission bits of `path` (secret files must be owner-only).
pub fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes `text` to `dir/name` with permission bits `mode`; returns the path.
pub fn write_mode(dir: &TempDir, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.0.join(name);
    std::fs::write(&path, text).unwrap();
    chmod(&path, mode);
    path
}

/// Reads one unlabelled sample from Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("metric {name} missing"))
        .trim()
        .parse()
        .unwrap()
}

/// HTTP answers as the tests see them.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// POSTs `body` with headers; panics on transport errors.
pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    try_post(&agent(), url, headers, body).unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

pub fn try_post(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp, ureq::Error> {
    let mut req = agent.post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut r = req.send(body)?;
    Ok(to_resp(&mut r))
}

pub fn get(url: &str) -> Resp {
    let mut r = agent()
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    to_resp(&mut r)
}

fn to_resp(r: &mut ureq::http::Response<ureq::Body>) -> Resp {
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_lowercase(),
                v.to_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let mut body = String::new();
    r.body_mut().as_reader().read_to_string(&mut body).unwrap();
    Resp {
        status,
        headers,
        body,
    }
}

pub const JSON: (&str, &str) = ("Content-Type", "application/json");
pub const NDJSON: (&str, &str) = ("Content-Type", "application/x-ndjson");

/// A record as read back from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Rec {
    pub fn value_str(&self) -> &str {
        std::str::from_utf8(&self.value).unwrap()
    }

    /// The value of header `name` as text (empty when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }
}

/// Reads every record of `topic` with librdkafka (no consumer group), until
/// `n` were read or `timeout` passed; sorted by (partition, offset).
pub fn read_topic(brokers: &str, topic: &str, n: usize, timeout: Duration) -> Vec<Rec> {
    read_topic_then(brokers, topic, n, timeout, Duration::ZERO)
}

/// As [`read_topic`], then goes on reading for `linger` to catch extras.
fn read_topic_then(
    brokers: &str,
    topic: &str,
    n: usize,
    timeout: Duration,
    linger: Duration,
) -> Vec<Rec> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_topic("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let deadline = Instant::now() + timeout;
    let partitions = loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5));
        if let Ok(md) = md
            && let Some(t) = md.topics().first()
            && !t.partitions().is_empty()
        {
            break t.partitions().len() as i32;
        }
        assert!(Instant::now() < deadline, "topic {topic} never appeared");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut stop_at = deadline;
    while Instant::now() < stop_at {
        if out.len() >= n && stop_at == deadline {
            stop_at = Instant::now() + linger;
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(Rec {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

/// Reads every record `topic` holds now: up to each partition's high
/// watermark as of the call (however many that is).
pub fn read_all(brokers: &str, topic: &str) -> Vec<Rec> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let total: i64 = md.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (low, high) = c
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .unwrap();
            high - low
        })
        .sum();
    let recs = read_topic(brokers, topic, total as usize, Duration::from_secs(60));
    assert_eq!(recs.len() as i64, total, "{topic}: read all it holds");
    recs
}

/// Reads `n` records, then reads 2 s longer to show there are no more.
pub fn read_exactly(brokers: &str, topic: &str, n: usize) -> Vec<Rec> {
    let recs = read_topic_then(
        brokers,
        topic,
        n,
        Duration::from_secs(20),
        Duration::from_secs(2),
    );
    assert_eq!(
        recs.len(),
        n,
        "expected exactly {n} records in {topic}, got {}: {recs:#?}",
        recs.len()
    );
    recs
}

/// Reads the topic with kafka-python (`scripts/kafka-read.py`): records and
/// the compression codec of the batch each came in.
pub fn read_with_kafka_python(brokers: &str, topic: &str) -> Vec<(Rec, i64)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka-read.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(brokers)
        .arg(topic)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kafka-read.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = |v: &serde_json::Value| -> Option<Vec<u8>> {
        let s = v.as_str()?;
        Some(
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect(),
        )
    };
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let rec = Rec {
                partition: v["partition"].as_i64().unwrap() as i32,
                offset: v["offset"].as_i64().unwrap(),
                key: hex(&v["key_hex"]),
                value: hex(&v["value_hex"]).unwrap_or_default(),
                headers: v["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| {
                        (
                            h[0].as_str().unwrap().to_string(),
                            hex(&h[1]).unwrap_or_default(),
                        )
                    })
                    .collect(),
            };
            (rec, v["codec"].as_i64().unwrap())
        })
        .collect()
}

/// Polls `cond` until true or `timeout`; the condition is the
/// synchronisation, the pause between polls only spaces the checks.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The built `kbridge` binary (`KBRIDGE_TEST_BIN` names another build, e.g.
/// `target/release/kbridge`, to run the process tests against it).
pub fn kbridge_bin() -> PathBuf {
    std::env::var_os("KBRIDGE_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kbridge")))
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Partitions the cluster lists for `topic` (0 when it does not exist).
pub fn partition_count(brokers: &str, topic: &str) -> usize {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    c.fetch_metadata(Some(topic), Duration::from_secs(10))
        .ok()
        .and_then(|md| {
            md.topics()
                .first()
                .filter(|t| t.error().is_none())
                .map(|t| t.partitions().len())
        })
        .unwrap_or(0)
}

/// Creates `topic` with `partitions` partitions.
pub fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    create_replicated_topic(brokers, topic, partitions, 1);
}

/// Creates `topic` with `partitions` partitions of `replicas` replicas.
pub fn create_replicated_topic(brokers: &str, topic: &str, partitions: i32, replicas: i32) {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    kbridge::kafka::ensure_topics(
        &c,
        &[topic.to_string()],
        partitions,
        replicas,
        &[],
        Duration::from_secs(20),
    )
    .unwrap();
}

/// Produces `(key, value)` records and waits for every acknowledgement.
pub fn produce(brokers: &str, topic: &str, records: &[(Option<String>, String)]) {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for (k, v) in records {
        let mut r: BaseRecord<'_, str, str> = BaseRecord::to(topic).payload(v.as_str());
        if let Some(k) = k {
            r = r.key(k.as_str());
        }
        // A full queue (100,000 records) is waited out.
        loop {
            match p.send(r) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    r = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => panic!("producing to {topic}: {e}"),
            }
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// `n` JSON records `{"id":"<prefix>-<i>", ...}` without keys.
pub fn events(prefix: &str, n: usize) -> Vec<(Option<String>, String)> {
    (0..n)
        .map(|i| {
            (
                None,
                format!("{{\"id\":\"{prefix}-{i}\",\"type\":\"visit\",\"n\":{i}}}"),
            )
        })
        .collect()
}

/// The group's committed offset per partition of `topic` (0: none yet).
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            // No commit yet: the consumer starts at the beginning, and every
            // test topic begins at offset 0. (Summing -1s for partitions
            // that never got a message once read as "commits lost".)
            _ => 0,
        })
        .collect()
}
