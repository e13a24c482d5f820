//! The deliver role against the real broker and a scripted fake endpoint.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::sink::{Reply, Sink};
use crate::util::*;

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[test]
fn delivers_every_message_once_with_kafka_headers_and_commits_past_them() {
    let b = brokers();
    let topic = unique_topic("dlv-all");
    create_topic(&b, &topic, 4);
    let mut recs = events("a", 200);
    recs[0].0 = Some("key-0".into());
    let sink = Sink::always(200);
    let group = unique_topic("g");
    let mut d = Deliver::start(&deliver_ini(&b, &group, &topic, &sink.url, ""));
    d.wait_settled(4);
    produce(&b, &topic, &recs);
    wait_delivered(&sink, &ids("a", 200), Duration::from_secs(60));
    let calls = sink.calls();
    assert_eq!(
        calls.len(),
        200,
        "one call per message, no duplicates without failures"
    );
    let c0 = calls.iter().find(|c| c.ids() == ["a-0"]).unwrap();
    assert_eq!(c0.header("x-kafka-topic"), Some(topic.as_str()));
    assert_eq!(c0.header("x-kafka-key"), Some("key-0"));
    let (p, o) = (
        c0.header("x-kafka-partition").unwrap(),
        c0.header("x-kafka-offset").unwrap(),
    );
    assert_eq!(
        c0.header("idempotency-key"),
        Some(format!("{topic}-{p}-{o}").as_str())
    );
    assert_eq!(
        c0.body,
        recs[0].1.as_bytes(),
        "payload delivered byte for byte"
    );
    // The sink has seen each call before its sender counts it delivered
    // (after reading the answer): wait for the count.
    wait_until("200 counted delivered", Duration::from_secs(10), || {
        metric(&d.metrics(), "kbridge_deliver_delivered_total") >= 200.0
    });
    assert_eq!(
        metric(&d.metrics(), "kbridge_deliver_delivered_total"),
        200.0
    );
    assert!(d.fatal.try_recv().is_err(), "no fatal error");
    assert!(d.stop(), "clean stop");
    let committed: i64 = committed(&b, &group, &topic, 4).iter().sum();
    assert_eq!(
        committed, 200,
        "offsets committed exactly past the delivered messages"
    );
}

#[test]
fn retries_dead_letters_and_timeouts_follow_the_rules() {
    let b = brokers();
    let topic = unique_topic("dlv-retry");
    create_topic(&b, &topic, 2);
    let names = ["fail2", "throttle", "bad", "hang", "ok1", "ok2"];
    let recs: Vec<(Option<String>, String)> = names
        .iter()
        .map(|n| (Some(n.to_string()), format!("{{\"id\":\"{n}\"}}")))
        .collect();
    let sink = Sink::start(Arc::new(|call, n| match (call.ids()[0].as_str(), n) {
        ("fail2", 0 | 1) => Reply::status(500),
        ("throttle", 0) => Reply::status(429).header("Retry-After", "1"),
        ("bad", _) => Reply::status(400),
        ("hang", 0) => Reply::status(200).delay(Duration::from_secs(3)),
        _ => Reply::status(200),
    }));
    let group = unique_topic("g");
    let d = Deliver::start(&deliver_ini(
        &b,
        &group,
        &topic,
        &sink.url,
        "request_timeout_ms = 1000\nmax_retries = 3",
    ));
    d.wait_settled(2);
    produce(&b, &topic, &recs);
    let good = ["fail2", "throttle", "hang", "ok1", "ok2"].map(String::from);
    wait_delivered(&sink, &good, Duration::from_secs(60));
    let calls = sink.calls();
    let of = |id: &str| {
        calls
            .iter()
            .filter(|c| c.ids()[0] == id)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of("fail2").iter().map(|c| c.status).collect::<Vec<_>>(),
        vec![500, 500, 200]
    );
    let t = of("throttle");
    assert_eq!(t.len(), 2);
    assert!(
        t[1].at - t[0].at >= Duration::from_secs(1),
        "Retry-After: 1 honoured: {:?}",
        t[1].at - t[0].at
    );
    // The sink logs the hanging call (answered 200 too late) at once; the
    // retry after the 1 s client timeout is the second call.
    wait_until(
        "the hanging call to be retried",
        Duration::from_secs(30),
        || sink.calls().iter().filter(|c| c.ids()[0] == "hang").count() >= 2,
    );
    assert_eq!(of("bad").len(), 1, "400 is not retried");
    // The 400 is parked with its reason, status and attempts.
    let dlq = read_exactly(&b, &format!("{topic}.dlq"), 1);
    assert_eq!(dlq[0].value_str(), "{\"id\":\"bad\"}");
    assert_eq!(dlq[0].key.as_deref(), Some(&b"bad"[..]));
    let h: HashMap<&str, &[u8]> = dlq[0]
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    assert_eq!(h["kbridge-dlq-reason"], b"HTTP 400");
    assert_eq!(h["kbridge-dlq-status"], b"400");
    assert_eq!(h["kbridge-dlq-attempts"], b"1");
    let m = d.metrics();
    assert_eq!(metric(&m, "kbridge_deliver_dead_letters_total"), 1.0);
    assert!(metric(&m, "kbridge_deliver_retries_total") >= 4.0);
    wait_until(
        "offsets committed past the parked message",
        Duration::from_secs(10),
        || committed(&b, &group, &topic, 2).iter().sum::<i64>() == 6,
    );

    // Replay moves the parked message back; now it is accepted.
    drop(d);
    let out = std::process::Command::new(kbridge_bin())
        .args(["replay", "--config"])
        .arg(write_ini(&format!("[kafka]\nbrokers = {b}\n")))
        .args(["--from", &format!("{topic}.dlq"), "--to", &topic])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed 1 messages"));
    let back = read_exactly(&b, &topic, 7);
    let replayed = back
        .iter()
        .find(|r| r.headers.iter().any(|(k, _)| k == "kbridge-replayed-from"))
        .unwrap();
    assert_eq!(replayed.value_str(), "{\"id\":\"bad\"}");
    assert!(
        replayed
            .headers
            .iter()
            .all(|(k, _)| !k.starts_with("kbridge-dlq-"))
    );
    let sink2 = Sink::always(200);
    let _d2 = Deliver::start(&deliver_ini(&b, &group, &topic, &sink2.url, ""));
    wait_delivered(&sink2, &["bad".to_string()], Duration::from_secs(30));
    // A second replay finds nothing new.
    let out = std::process::Command::new(kbridge_bin())
        .args(["replay", "--config"])
        .arg(write_ini(&format!("[kafka]\nbrokers = {b}\n")))
        .args(["--from", &format!("{topic}.dlq"), "--to", &topic])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("replayed 0 messages"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn concurrent_calls_never_exceed_max_in_flight() {
    let b = brokers();
    let topic = unique_topic("dlv-sem");
    create_topic(&b, &topic, 4);
    produce(&b, &topic, &events("s", 60));
    // The first 3 calls hold their permits until the test has seen the
    // small channel stay full longer than a consumer waits for room (1 s),
    // so that fetching paused; then every call takes 40 ms.
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let held = release.clone();
    let sink = Sink::start(Arc::new(move |_, _| {
        let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n < 3 {
            let end = Instant::now() + Duration::from_secs(20);
            while !held.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Reply::status(200).delay(Duration::from_millis(40))
    }));
    let _d = Deliver::of(
        &b,
        &topic,
        &sink.url,
        "senders = 8\nmax_in_flight = 3\nchannel_capacity = 4",
    );
    wait_until(
        "the small channel filled and fetching paused (polling went on)",
        Duration::from_secs(15),
        || metric(&_d.metrics(), "kbridge_deliver_pauses_total") > 0.0,
    );
    release.store(true, std::sync::atomic::Ordering::SeqCst);
    wait_delivered(&sink, &ids("s", 60), Duration::from_secs(60));
    let m = sink.max_concurrent();
    assert!(
        m <= 3,
        "observed {m} concurrent calls with max_in_flight = 3"
    );
}

#[test]
fn ordering_by_key_keeps_each_keys_offset_order_while_keys_run_in_parallel() {
    let b = brokers();
    let topic = unique_topic("dlv-order");
    create_topic(&b, &topic, 2);
    let recs: Vec<(Option<String>, String)> = (0..80)
        .map(|i| {
            (
                Some(format!("k{}", i % 4)),
                format!("{{\"id\":\"o-{i}\",\"key\":\"k{}\",\"seq\":{i}}}", i % 4),
            )
        })
        .collect();
    produce(&b, &topic, &recs);
    // Latencies that would reorder calls: 0-25 ms depending on the id.
    let sink = Sink::start(Arc::new(|call, _| {
        let n: u64 = call.ids()[0].trim_start_matches("o-").parse().unwrap_or(0);
        Reply::status(200).delay(Duration::from_millis((n * 7) % 26))
    }));
    let _d = Deliver::of(&b, &topic, &sink.url, "ordering = key\nsenders = 8");
    wait_delivered(&sink, &ids("o", 80), Duration::from_secs(60));
    let mut last: HashMap<String, i64> = HashMap::new();
    for c in sink.calls() {
        let v: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
        let (key, seq) = (
            v["key"].as_str().unwrap().to_string(),
            v["seq"].as_i64().unwrap(),
        );
        let prev = last.insert(key.clone(), seq);
        assert!(
            prev.is_none_or(|p| p < seq),
            "key {key}: {seq} arrived after {prev:?}"
        );
    }
    assert!(sink.max_concurrent() > 1, "different keys run in parallel");
}

#[test]
fn batch_mode_sends_ndjson_json_arrays_and_bulk_lines() {
    let b = brokers();
    for (format, check) in [
        ("ndjson", "application/x-ndjson"),
        ("json_array", "application/json"),
        ("es_bulk", "application/x-ndjson"),
    ] {
        let topic = unique_topic(&format!("dlv-batch-{}", format.replace('_', "")));
        create_topic(&b, &topic, 2);
        produce(&b, &topic, &events("b", 50));
        // Elasticsearch answers `_bulk` with a JSON body; an answer without
        // one delivers nothing (unit-tested in deliver::batch).
        let sink = Sink::start(Arc::new(|_, _| {
            Reply::status(200).body(r#"{"took":1,"errors":false,"items":[]}"#)
        }));
        let _d = Deliver::of(
            &b,
            &topic,
            &sink.url,
            &format!("batch_size = 10\nbatch_format = {format}\nbatch_linger_ms = 50"),
        );
        wait_delivered(&sink, &ids("b", 50), Duration::from_secs(60));
        let calls = sink.calls();
        assert!(
            calls.len() < 50,
            "{format}: messages were batched ({} calls)",
            calls.len()
        );
        assert!(
            calls
                .iter()
                .all(|c| c.header("content-type") == Some(check)),
            "{format}"
        );
        let all: Vec<String> = calls.iter().flat_map(|c| c.ids()).collect();
        assert_eq!(all.len(), 50, "{format}: each message exactly once");
        if format == "es_bulk" {
            let body = String::from_utf8(calls[0].body.clone()).unwrap();
            let first: serde_json::Value =
                serde_json::from_str(body.lines().next().unwrap()).unwrap();
            assert_eq!(first["index"]["_index"], topic.as_str());
            assert_eq!(body.lines().count() % 2, 0, "action and document lines");
        }
    }
}

#[test]
fn enrichment_merges_lookups_for_enriched_routes_only() {
    let b = brokers();
    let topic = unique_topic("dlv-enrich");
    create_topic(&b, &topic, 2);
    let recs: Vec<(Option<String>, String)> = vec![
        (None, r#"{"id":"t1","type":"tweet","ip":"1.1.1.1"}"#.into()),
        (None, r#"{"id":"t2","type":"tweet","ip":"2.2.2.2"}"#.into()),
        (None, r#"{"id":"t3","type":"tweet","ip":"1.1.1.1"}"#.into()),
        (None, r#"{"id":"u1","type":"user","ip":"3.3.3.3"}"#.into()),
        (None, r#"{"id":"t4","type":"tweet","ip":"bad"}"#.into()),
    ];
    produce(&b, &topic, &recs);
    let geo = tiny_geo();
    let sink = Sink::always(200);
    let extra = format!(
        "enrich_url = {}/geo/{{ip}}\nenrich_into = geo\nroute_field = type\nenrich_routes = tweet\nenrich_on_error = deliver\nenrichers = 1",
        geo.0
    );
    let _d = Deliver::of(&b, &topic, &sink.url, &extra);
    wait_delivered(
        &sink,
        &["t1", "t2", "t3", "u1", "t4"].map(String::from),
        Duration::from_secs(60),
    );
    let by_id: HashMap<String, serde_json::Value> = sink
        .calls()
        .iter()
        .map(|c| (c.ids()[0].clone(), serde_json::from_slice(&c.body).unwrap()))
        .collect();
    assert_eq!(by_id["t1"]["geo"]["country"], "C-1.1.1.1");
    assert_eq!(by_id["t2"]["geo"]["country"], "C-2.2.2.2");
    assert!(by_id["u1"].get("geo").is_none(), "users bypass enrichment");
    assert!(
        by_id["t4"].get("geo").is_none(),
        "a failed lookup delivers unenriched (policy deliver)"
    );
    let asked = geo.1.lock().unwrap().clone();
    assert_eq!(
        asked
            .iter()
            .filter(|p| p.as_str() == "/geo/1.1.1.1")
            .count(),
        1,
        "second lookup served from the cache: {asked:?}"
    );
    assert!(!asked.iter().any(|p| p.contains("3.3.3.3")));
}

#[test]
fn enrichment_retry_policy_retries_lookups_then_parks() {
    let b = brokers();
    let topic = unique_topic("dlv-enrich-retry");
    create_topic(&b, &topic, 1);
    let recs: Vec<(Option<String>, String)> = vec![
        (None, r#"{"id":"f1","ip":"flaky"}"#.into()),
        (None, r#"{"id":"b1","ip":"bad"}"#.into()),
    ];
    produce(&b, &topic, &recs);
    let geo = tiny_geo();
    let sink = Sink::always(200);
    let extra = format!(
        "enrich_url = {}/geo/{{ip}}\nenrich_into = geo\nenrich_on_error = retry\nmax_retries = 3\nenrichers = 1",
        geo.0
    );
    let _d = Deliver::of(&b, &topic, &sink.url, &extra);
    wait_delivered(&sink, &["f1".to_string()], Duration::from_secs(60));
    let f1: serde_json::Value = serde_json::from_slice(&sink.calls()[0].body).unwrap();
    assert_eq!(
        f1["geo"]["country"], "C-flaky",
        "delivered enriched after the lookup recovered"
    );
    let dlq = read_exactly(&b, &format!("{topic}.dlq"), 1);
    assert_eq!(dlq[0].value_str(), r#"{"id":"b1","ip":"bad"}"#);
    let reason = dlq[0].header("kbridge-dlq-reason");
    assert!(
        reason.starts_with("enrichment failed after 4 attempts"),
        "{reason}"
    );
    assert!(!sink.delivered().contains(&"b1".to_string()));
}

/// A lookup endpoint: `/geo/<ip>` → `{"country":"C-<ip>"}`; `/geo/bad` → 500;
/// `/geo/flaky` → 500 twice, then an answer.
fn tiny_geo() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    let asked: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let log = asked.clone();
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let path = req.url().to_string();
            log.lock().unwrap().push(path.clone());
            let ip = path.trim_start_matches("/geo/").to_string();
            let flaky_failures = log
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.as_str() == "/geo/flaky")
                .count()
                <= 2;
            let r = if ip == "bad" || (ip == "flaky" && flaky_failures) {
                tiny_http::Response::from_string("{}").with_status_code(500)
            } else {
                tiny_http::Response::from_string(format!("{{\"country\":\"C-{ip}\"}}"))
            };
            let _ = req.respond(r);
        }
    });
    (url, asked)
}

#[test]
fn before_delivery_commits_before_the_call() {
    let b = brokers();
    let topic = unique_topic("dlv-before");
    create_topic(&b, &topic, 1);
    produce(&b, &topic, &events("x", 1));
    let sink = Sink::start(Arc::new(|_, _| {
        Reply::status(200).delay(Duration::from_secs(4))
    }));
    let group = unique_topic("g");
    let _d = Deliver::start(&deliver_ini(
        &b,
        &group,
        &topic,
        &sink.url,
        "commit = before_delivery\nrequest_timeout_ms = 8000",
    ));
    wait_until("the call to start", Duration::from_secs(30), || {
        !sink.calls().is_empty()
    });
    // The endpoint has not answered yet, and the offset is already committed.
    assert_eq!(committed(&b, &group, &topic, 1), vec![1]);
    assert!(sink.delivered().len() <= 1);
}

#[test]
fn two_instances_split_the_partitions_and_one_takes_over() {
    let b = brokers();
    let topic = unique_topic("dlv-two");
    create_topic(&b, &topic, 4);
    let sink = Sink::always(200);
    let group = unique_topic("g");
    let ini = deliver_ini(&b, &group, &topic, &sink.url, "max_threads = 2");
    let mut a = Deliver::start(&ini);
    let bb = Deliver::start(&ini);
    // Both members need a share before the first batch is produced.
    wait_until("both instances assigned", Duration::from_secs(30), || {
        produce(&b, &topic, &events(&format!("w{}", fastrand::u32(..)), 8));
        metric(&a.metrics(), "kbridge_deliver_consumed_total") > 0.0
            && metric(&bb.metrics(), "kbridge_deliver_consumed_total") > 0.0
    });
    produce(&b, &topic, &events("p1", 40));
    wait_delivered(&sink, &ids("p1", 40), Duration::from_secs(60));
    assert!(a.stop(), "first instance stops cleanly");
    produce(&b, &topic, &events("p2", 40));
    wait_delivered(&sink, &ids("p2", 40), Duration::from_secs(60));
    let delivered: HashSet<String> = sink.delivered().into_iter().collect();
    assert!(
        ids("p1", 40)
            .iter()
            .chain(ids("p2", 40).iter())
            .all(|i| delivered.contains(i))
    );
}

/// Writes an INI text to a temp file that lives for the test run.
fn write_ini(text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique_topic("ini"));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("config.ini");
    std::fs::write(&p, text).unwrap();
    p
}
