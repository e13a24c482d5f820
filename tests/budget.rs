//! What a request may make kbridge hold: strangers nothing (the token is
//! checked from the head), silent sockets nothing (bodies are charged as
//! they arrive), and everyone together no more than
//! `max_buffered_body_bytes` plus a constant, whatever the mix: record
//! floods, keys and headers multiplied over records, big bodies. A normal
//! client is served throughout; a refused one reads a 503, not a reset.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::util::process::{Bin, ingest_bin, spawn_bin};
use crate::util::raw::{peak_rss, raise_open_files_limit, read_until_closed};
use crate::util::*;

const TOKEN: &str = "ops-5c1f9e2a7b3d4068e1f";
/// The constant beside the budget that docs/guarantees.md promises.
const CONSTANT: u64 = 64 << 20;
const BUDGET: u64 = 64 << 20;

struct Running {
    bin: Bin,
    /// The process's RSS once ready, before any load.
    rest: u64,
    addr: SocketAddr,
    admin: String,
    url: String,
}

fn start(topic: &str, extra: &str, dir: &TempDir) -> Running {
    let (bin, addr, admin) = ingest_bin(topic, extra, dir);
    let rest = peak_rss(bin.child.id());
    Running {
        bin,
        rest,
        addr,
        admin,
        url: format!("http://{addr}/api/t/v1/"),
    }
}

/// `n` clients POST `body` (NDJSON) at once while `during` runs; each
/// reads an answer (never a reset), and a 503 says when to come back.
fn at_once(a: &ureq::Agent, url: &str, body: &[u8], n: usize, during: impl FnOnce()) -> Vec<u16> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    let r = try_post(a, url, &[("Content-Type", "application/x-ndjson")], body)
                        .unwrap_or_else(|e| panic!("a readable answer, not {e}"));
                    if r.status == 503 {
                        assert!(r.headers.contains_key("retry-after"), "{}", r.body);
                    }
                    r.status
                })
            })
            .collect();
        during();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn buffered(admin: &str, server: &str) -> f64 {
    let m = get(&format!("{admin}/metrics")).body;
    metric(
        &m,
        &format!("kbridge_http_buffered_body_bytes{{server=\"{server}\"}}"),
    )
}

/// The budget's bound on what the load made the process hold: its peak
/// RSS above its resting RSS (the resting process is the debug build's own
/// pages, 25 MiB, where a release build rests at 12 MiB).
fn within_budget(run: &Running, what: &str) {
    let peak = peak_rss(run.bin.child.id());
    let grown = peak.saturating_sub(run.rest);
    let _ = writeln!(
        std::io::stderr(),
        "{what}: peak RSS {} MiB ({} MiB at rest)",
        peak >> 20,
        run.rest >> 20
    );
    assert!(
        grown <= BUDGET + CONSTANT,
        "{what}: peak RSS {} MiB, {} MiB above rest: more than the budget + {} MiB",
        peak >> 20,
        grown >> 20,
        CONSTANT >> 20
    );
}

/// A head announcing `len` body bytes, then silence.
fn silent_head(
    addr: SocketAddr,
    path: &str,
    method: &str,
    auth: Option<&str>,
    len: usize,
) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    );
    (&s).write_all(head.as_bytes()).unwrap();
    s
}

#[test]
fn strangers_and_silent_sockets_hold_nothing_of_the_budget() {
    raise_open_files_limit();
    let dir = TempDir::new("budget-auth");
    let topic = unique_topic("budget-auth");
    let tokens = write_mode(&dir, "tokens", &format!("ops {TOKEN}\n"), 0o600);
    let run = start(
        &topic,
        &format!("auth_tokens_file = {}", tokens.display()),
        &dir,
    );
    let admin_addr: SocketAddr = run.admin.trim_start_matches("http://").parse().unwrap();

    // Strangers announce 6 × 10 MiB + 4 MiB: each is refused from its head,
    // before a body byte, and the connection closes.
    for len in [
        10 << 20,
        10 << 20,
        10 << 20,
        10 << 20,
        10 << 20,
        10 << 20,
        4 << 20,
    ] {
        let s = silent_head(run.addr, "/api/t/v1/", "POST", None, len);
        let e = read_until_closed(&s, Duration::from_secs(5));
        assert_eq!(e.first(), Some(401), "{}", e.text);
        assert!(e.text.contains("WWW-Authenticate: Bearer"), "{}", e.text);
        assert!(e.closed, "the connection closes after the 401");
    }
    // Token holders that go silent after their heads, on ingest and on
    // the admin port (16 PUT /log-level heads of 64 KiB): nothing held.
    let held: Vec<TcpStream> = (0..7)
        .map(|i| {
            silent_head(
                run.addr,
                "/api/t/v1/",
                "POST",
                Some(TOKEN),
                if i < 6 { 10 << 20 } else { 4 << 20 },
            )
        })
        .chain((0..16).map(|_| silent_head(admin_addr, "/log-level", "PUT", None, 64 << 10)))
        .collect();
    wait_until("the silent heads are read", Duration::from_secs(10), || {
        let m = get(&format!("{}/metrics", run.admin)).body;
        metric(&m, "kbridge_http_open_connections{server=\"ingest\"}") >= 7.0
    });
    assert_eq!(buffered(&run.admin, "ingest"), 0.0);
    // Everyone else is served meanwhile.
    let auth = format!("Bearer {TOKEN}");
    for i in 0..5 {
        let r = post(
            &run.url,
            &[JSON, ("Authorization", &auth)],
            format!("{{\"i\":{i}}}").as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = agent()
        .put(&format!("{}/log-level", run.admin))
        .send("info")
        .map(|mut r| {
            (
                r.status().as_u16(),
                r.body_mut().read_to_string().unwrap_or_default(),
            )
        });
    assert_eq!(r.as_ref().map(|r| r.0).ok(), Some(200), "{r:?}");
    drop(held);
    assert_eq!(read_exactly(&brokers(), &topic, 5).len(), 5);
    within_budget(&run, "strangers and silent sockets");
}

/// `n` records `{}` with an 8 KB key and 68 headers of 330 bytes: a 62 KB
/// request that librdkafka would hold 300 MB of.
fn multiplied(agent: &ureq::Agent, url: &str) -> Resp {
    let body = vec!["{}"; 10_000].join("\n");
    let key = "k".repeat(8 * 1024);
    let value = "v".repeat(330);
    let names: Vec<String> = (0..68).map(|i| format!("X-Kafka-Header-h{i}")).collect();
    let mut req = agent
        .post(url)
        .header("Content-Type", "application/x-ndjson")
        .header("X-Kafka-Key", &key);
    for n in &names {
        req = req.header(n, &value);
    }
    let mut r = req.send(body.as_bytes()).expect("a readable answer");
    Resp {
        status: r.status().as_u16(),
        headers: Default::default(),
        body: r.body_mut().read_to_string().unwrap_or_default(),
    }
}

#[test]
fn keys_and_headers_count_once_per_record_and_floods_stay_within_the_budget() {
    let dir = TempDir::new("budget-flood");
    let topic = unique_topic("budget-flood");
    let run = start(&topic, "max_header_bytes = 65536", &dir);
    let a = agent();
    // Four at once of the request that could never fit: 413, saying why.
    let answers: Vec<Resp> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| multiplied(&a, &run.url)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &answers {
        assert_eq!(r.status, 413, "{}", r.body);
        assert!(r.body.contains("max_buffered_body_bytes"), "{}", r.body);
    }
    // 200 clients at once, each 10,000 records `{}`: each is taken or told
    // to retry (503, Retry-After), and a one-record client is served.
    let flood = vec!["{}"; 10_000].join("\n");
    let statuses = at_once(&a, &run.url, flood.as_bytes(), 200, || {
        assert_eq!(retry_until_taken(&a, &run.url, b"{\"one\":1}"), 200);
    });
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    let taken = statuses.iter().filter(|s| **s == 200).count();
    assert!(taken > 0, "{statuses:?}");
    wait_until("the budget is given back", Duration::from_secs(60), || {
        buffered(&run.admin, "ingest") == 0.0
    });
    assert_eq!(read_all(&brokers(), &topic).len(), taken * 10_000 + 1);
    within_budget(&run, "record floods and multiplied headers");
}

/// Posts until the answer is not 503 (the budget may be full for a moment).
fn retry_until_taken(a: &ureq::Agent, url: &str, body: &[u8]) -> u16 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = try_post(a, url, &[JSON], body).expect("a readable answer");
        if r.status != 503 || std::time::Instant::now() > deadline {
            return r.status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn big_bodies_are_taken_or_refused_readably_within_the_budget() {
    let dir = TempDir::new("budget-big");
    let topic = unique_topic("budget-big");
    let run = start(&topic, "", &dir);
    // 20 clients at once, twice, each a 10 MB body (1,000 records of 10 KB).
    let record = format!("{{\"pad\":\"{}\"}}", "x".repeat(10_000));
    let body = vec![record.as_str(); 1000].join("\n");
    assert!(body.len() <= 10 << 20);
    let a = agent();
    let mut taken = 0;
    for _ in 0..2 {
        let statuses = at_once(&a, &run.url, body.as_bytes(), 20, || {
            assert_eq!(retry_until_taken(&a, &run.url, b"{\"small\":1}"), 200);
        });
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 503),
            "{statuses:?}"
        );
        taken += statuses.iter().filter(|s| **s == 200).count();
    }
    assert!(taken > 0);
    wait_until("the budget is given back", Duration::from_secs(60), || {
        buffered(&run.admin, "ingest") == 0.0
    });
    assert_eq!(read_all(&brokers(), &topic).len(), taken * 1000 + 2);
    within_budget(&run, "big bodies");
}

#[test]
fn health_and_ready_answer_while_the_admin_is_at_its_connection_cap() {
    let dir = TempDir::new("budget-admin");
    let topic = unique_topic("budget-admin");
    let run = start(&topic, "", &dir);
    let admin_addr: SocketAddr = run.admin.trim_start_matches("http://").parse().unwrap();
    // 64 idle sockets: the admin's max_connections.
    let idle: Vec<TcpStream> = (0..64)
        .map(|_| {
            let s = TcpStream::connect(admin_addr).unwrap();
            (&s).write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    wait_until("the admin is full", Duration::from_secs(10), || {
        let s = TcpStream::connect(admin_addr).unwrap();
        (&s).write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        read_until_closed(&s, Duration::from_secs(3)).first() == Some(503)
    });
    // And 8 more idle ones, as many as the reserve for the probes: each
    // new probe connection makes room by closing the oldest idle of them.
    let reserve_idle: Vec<TcpStream> = (0..8)
        .map(|_| {
            let s = TcpStream::connect(admin_addr).unwrap();
            (&s).write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    for path in ["/health", "/ready", "/health", "/ready"] {
        let s = TcpStream::connect(admin_addr).unwrap();
        (&s).write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .unwrap();
        let e = read_until_closed(&s, Duration::from_secs(3));
        assert_eq!(e.first(), Some(200), "{path}: {}", e.text);
    }
    // The first probe at least made room by closing an idle reserve socket
    // (closed without an answer: a deadline's 408 would be an answer).
    let evicted = reserve_idle
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 256];
            match (&**s).read(&mut b) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        })
        .count();
    assert!(
        evicted >= 1,
        "no idle reserve socket was closed for the probes"
    );
    drop((idle, reserve_idle));
    let mut s = TcpStream::connect(admin_addr).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[test]
fn huge_aggregated_values_are_cut_and_health_answers_while_queries_run() {
    use crate::util::sink::Sink;
    let b = brokers();
    let topic = unique_topic("budget-agg");
    create_topic(&b, &topic, 2);
    let dir = TempDir::new("budget-agg");
    let sink = Sink::always(200);
    let admin = free_port();
    let ini = format!(
        "[admin]\nlisten = 127.0.0.1:{admin}\n{}",
        deliver_ini(
            &b,
            &unique_topic("g"),
            &topic,
            &sink.url,
            "aggregate_field = type"
        )
    );
    let bin = spawn_bin(&ini, &dir);
    let admin = format!("http://127.0.0.1:{admin}");
    // 100 events whose `type` is 900 KB each, every one different.
    let recs: Vec<(Option<String>, String)> = (0..100)
        .map(|i| {
            let v = format!("{i:03}{}", "t".repeat(900_000));
            (None, format!("{{\"id\":\"agg-{i}\",\"type\":\"{v}\"}}"))
        })
        .collect();
    produce(&b, &topic, &recs);
    let ids: Vec<String> = (0..100).map(|i| format!("agg-{i}")).collect();
    let query = format!("{admin}/api/aggregates?topic={topic}&by=value&limit=1000");
    // The topic has aggregates once its first record is consumed (a busy
    // broker can take a while to hand the partitions out).
    wait_until(
        "the topic's first aggregates",
        Duration::from_secs(60),
        || get(&query).status == 200,
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    let biggest = std::thread::scope(|s| {
        // The dashboard polling hard, from four clients at once.
        let pollers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut biggest = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let r = get(&query);
                        assert_eq!(r.status, 200, "{}", r.body);
                        biggest = biggest.max(r.body.len());
                    }
                    biggest
                })
            })
            .collect();
        // Meanwhile the probes answer, each on its own connection.
        for _ in 0..20 {
            assert_eq!(get(&format!("{admin}/health")).status, 200);
        }
        wait_delivered(&sink, &ids, Duration::from_secs(120));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        pollers
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    });
    let v = get(&query).json();
    let values = v["values"].as_array().unwrap();
    assert_eq!(values.len(), 100, "{v}");
    for value in values {
        let s = value["value"].as_str().unwrap();
        assert!(
            s.len() <= 256 && s.ends_with("…(truncated)"),
            "{} bytes",
            s.len()
        );
    }
    // 100 values of at most 256 bytes: the answer is a few tens of KB
    // whatever the events held (90 MB of values).
    assert!(biggest < 64 << 10, "an answer of {biggest} bytes");
    // The messages in flight dominate (900 KB each, ~115 MiB measured);
    // keeping the values whole would add their 90 MB on top.
    let peak = peak_rss(bin.child.id());
    let _ = writeln!(std::io::stderr(), "aggregates: peak RSS {} MiB", peak >> 20);
    assert!(peak < 192 << 20, "peak RSS {} MiB", peak >> 20);
}

#[test]
fn with_ack_queued_the_charge_lasts_until_kafka_has_the_records() {
    let dir = TempDir::new("budget-queued");
    let topic = unique_topic("budget-queued");
    // Records wait 2 s in librdkafka before they are sent.
    let run = start(
        &topic,
        "ack = queued\n[ingest.producer]\nlinger.ms = 2000",
        &dir,
    );
    let r = post(&run.url, &[JSON], b"{\"q\":1}");
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        buffered(&run.admin, "ingest") > 0.0,
        "answered 202 and still charged while librdkafka holds the record"
    );
    wait_until(
        "the charge ends with the delivery",
        Duration::from_secs(30),
        || buffered(&run.admin, "ingest") == 0.0,
    );
    assert_eq!(read_exactly(&brokers(), &topic, 1).len(), 1);
    // A flood of 202s cannot queue more than the budget.
    let flood = vec!["{}"; 10_000].join("\n");
    let a = agent();
    let statuses = at_once(&a, &run.url, flood.as_bytes(), 100, || {});
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 503),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&503),
        "the budget held the flood back: {statuses:?}"
    );
    let taken = statuses.iter().filter(|s| **s == 202).count();
    wait_until("the budget is given back", Duration::from_secs(60), || {
        buffered(&run.admin, "ingest") == 0.0
    });
    assert_eq!(read_all(&brokers(), &topic).len(), taken * 10_000 + 1);
    within_budget(&run, "ack = queued flood");
}
