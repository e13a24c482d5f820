//! Hostile and unlucky clients at the ingest and admin ports, one test per
//! class: each gets its 4xx (or a closed connection), the process goes on
//! serving everyone else, and nothing of a refused request reaches Kafka.
//! The flood tests (slow clients, a thousand connections) run the real
//! binary and bound its threads and memory.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::util::process::ingest_bin;
use crate::util::raw::*;
use crate::util::*;

const PATH: &str = "/api/t/v1/";

/// An in-process ingest with short deadlines, and its address.
fn ingest(topic: &str, extra: &str) -> (Ingest, SocketAddr) {
    let ini = ingest_ini(
        &brokers(),
        topic,
        &format!(
            "header_timeout_ms = 1500\nbody_timeout_ms = 1500\nidle_timeout_ms = 3000\n{extra}"
        ),
        "",
    );
    let ing = Ingest::start(&ini);
    let addr = ing.handle.as_ref().unwrap().local_addr();
    (ing, addr)
}

/// Posts one normal event (it must be answered 200).
fn normal(ing: &Ingest, id: &str) {
    let r = post(&ing.url, &[JSON], format!("{{\"id\":\"{id}\"}}").as_bytes());
    assert_eq!(
        r.status, 200,
        "a normal request after the attack: {}",
        r.body
    );
}

/// The ids Kafka holds for `topic`: exactly `want`, so nothing of a refused
/// request was produced.
fn only_these_in_kafka(topic: &str, want: &[&str]) {
    let mut got: Vec<String> = read_all(&brokers(), topic)
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()["id"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    got.sort();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "what {topic} holds");
}

const W: Duration = Duration::from_secs(5);

#[test]
fn lying_and_huge_content_lengths_get_413_on_ingest_and_admin() {
    let topic = unique_topic("hx-length");
    let (ing, addr) = ingest(&topic, "");
    let lie = "POST /api/t/v1/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000000000\r\n\r\n";
    let e = exchange(addr, lie.as_bytes().to_vec(), W);
    assert_eq!(e.first(), Some(413), "{}", e.text);
    assert!(e.text.contains("[ingest] max_body_bytes"), "{}", e.text);
    assert!(e.closed, "the connection closes after a framing refusal");
    // A length it does not send: the body deadline answers.
    let short = post_bytes(PATH, "", b"{\"id\":\"x\"}");
    let cut = short[..short.len() - 3].to_vec();
    let e = exchange(addr, cut, W);
    assert_eq!(e.first(), Some(408), "{}", e.text);

    // The admin port has the same limits (its own, smaller).
    let admin_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_addr = admin_listener.local_addr().unwrap();
    let stop = kbridge::shutdown::Stopper::new();
    let (fatal, _rx) = crossbeam_channel::bounded(1);
    let admin = kbridge::admin::spawn(
        admin_listener,
        &kbridge::config::limits::HttpLimits::admin(),
        &[],
        vec![ing.telemetry()],
        kbridge::dashboard::Sources::default(),
        stop.token(),
        fatal,
    )
    .unwrap();
    let e = exchange(
        admin_addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000000\r\n\r\n".to_vec(),
        W,
    );
    assert_eq!(e.first(), Some(413), "{}", e.text);
    assert!(e.text.contains("[admin] max_body_bytes"), "{}", e.text);
    let m = get(&format!("http://{admin_addr}/metrics")).body;
    assert!(
        m.contains("kbridge_http_rejected_total{server=\"ingest\",status=\"413\"} 1"),
        "{m}"
    );
    stop.stop();
    admin.join().unwrap();

    normal(&ing, "after");
    only_these_in_kafka(&topic, &["after"]);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn gzip_members_all_decode_and_bad_bodies_are_refused_before_kafka() {
    let topic = unique_topic("hx-body");
    let (ing, addr) = ingest(&topic, "");
    // `cat a.gz b.gz`: both members' records are produced.
    let mut two = gzip(b"{\"id\":\"m1\"}\n");
    two.extend(gzip(b"{\"id\":\"m2\"}\n"));
    let ndjson_gz = [NDJSON, ("Content-Encoding", "gzip")];
    let r = post(&ing.url, &ndjson_gz, &two);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["offsets"].as_array().unwrap().len(), 2);

    let mut garbage = two.clone();
    garbage.extend_from_slice(b"trailing garbage");
    let mut truncated = gzip(b"{\"id\":\"t\",\"pad\":\"some text that compresses well\"}");
    truncated.truncate(truncated.len() - 6);
    let bomb = gzip(&vec![b' '; 64 << 20]);
    let deep = format!(
        "{{\"id\":\"d\",\"x\":{}1{}}}",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let many: String = (0..20_000).map(|_| "{}\n").collect();
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        ("trailing garbage after gzip", &ndjson_gz, garbage, 400),
        ("truncated gzip", &ndjson_gz, truncated, 400),
        ("gzip bomb", &ndjson_gz, bomb, 413),
        (
            "invalid UTF-8",
            &[JSON],
            b"{\"id\":\"\xff\xfe\"}".to_vec(),
            400,
        ),
        ("50,000-deep nesting", &[JSON], deep.into_bytes(), 400),
        ("20,000 records", &[NDJSON], many.into_bytes(), 413),
        (
            "not an object",
            &[JSON],
            b"[{\"id\":\"a\"}, 7]".to_vec(),
            400,
        ),
    ];
    for (what, headers, body, status) in cases {
        let r = post(&ing.url, headers, &body);
        assert_eq!(r.status, status, "{what}: {}", r.body);
        assert!(r.json()["error"].is_string(), "{what}: a JSON error body");
    }
    let _ = addr;
    normal(&ing, "after");
    only_these_in_kafka(&topic, &["m1", "m2", "after"]);
}

#[test]
fn header_floods_and_long_lines_are_refused_and_the_connection_closes() {
    let topic = unique_topic("hx-head");
    let (ing, addr) = ingest(&topic, "");
    let many: String = (0..10_000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let e = exchange(addr, post_bytes(PATH, &many, b"{\"id\":\"x\"}"), W);
    assert!(
        e.first() == Some(431) || (e.statuses.is_empty() && e.closed),
        "10,000 headers: {}",
        e.text
    );
    let huge = format!("X-Big: {}\r\n", "a".repeat(8 << 20));
    let e = exchange(addr, post_bytes(PATH, &huge, b"{\"id\":\"x\"}"), W);
    assert!(
        e.first() == Some(431) || (e.statuses.is_empty() && e.closed),
        "an 8 MB header line: {}",
        e.text
    );
    let long_target = format!("POST /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000));
    let e = exchange(addr, long_target.into_bytes(), W);
    assert!(e.first() == Some(414) || e.closed, "{}", e.text);
    // A head that never ends: 408 at header_timeout_ms.
    let s = TcpStream::connect(addr).unwrap();
    (&s).write_all(b"POST /api/t/v1/ HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let e = read_until_closed(&s, Duration::from_secs(10));
    assert_eq!(e.first(), Some(408), "{}", e.text);
    normal(&ing, "after");
    only_these_in_kafka(&topic, &["after"]);
}

#[test]
fn ambiguous_framing_is_refused_and_the_connection_closes() {
    let topic = unique_topic("hx-frame");
    let (ing, addr) = ingest(&topic, "");
    let body = "{\"id\":\"smuggled\"}";
    let cases = [
        (
            "Content-Length with Transfer-Encoding",
            format!(
                "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len(),
                body.len()
            ),
            400,
        ),
        (
            "two different Content-Lengths",
            format!(
                "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            400,
        ),
        (
            "a chunk size that is not hex",
            format!(
                "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{body}\r\n0\r\n\r\n"
            ),
            400,
        ),
        (
            "a chunk longer than its size",
            format!(
                "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{body}\r\n0\r\n\r\n"
            ),
            400,
        ),
        (
            "a coding other than chunked",
            format!(
                "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
            ),
            501,
        ),
    ];
    for (what, req, status) in cases {
        let e = exchange(addr, req.into_bytes(), W);
        assert_eq!(e.first(), Some(status), "{what}: {}", e.text);
        assert!(e.closed, "{what}: the connection closes");
    }
    // A correct chunked body is fine.
    let ok = format!(
        "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\n{{\"id\"\r\n8\r\n:\"chunk\"\r\n1\r\n}}\r\n0\r\n\r\n"
    );
    let e = exchange(addr, ok.into_bytes(), W);
    assert_eq!(e.first(), Some(200), "{}", e.text);
    normal(&ing, "after");
    only_these_in_kafka(&topic, &["chunk", "after"]);
}

#[test]
fn pipelined_requests_after_a_rejected_one_are_read_where_they_start() {
    let topic = unique_topic("hx-pipe");
    let (ing, addr) = ingest(&topic, "max_body_bytes = 1000\nmax_record_bytes = 1000");
    // A handler-level refusal leaves the framing intact: the next request
    // on the connection is served.
    let mut two = post_bytes(PATH, "", b"{\"id\": oops}");
    two.extend(post_bytes(
        PATH,
        "Connection: close\r\n",
        b"{\"id\":\"second\"}",
    ));
    let e = exchange(addr, two, W);
    assert_eq!(e.statuses, vec![400, 200], "{}", e.text);
    // Over max_body_bytes the body is not read: the connection closes and
    // what follows is never taken for a request.
    let mut smuggle = post_bytes(PATH, "", &vec![b' '; 2000]);
    smuggle.extend(post_bytes(PATH, "", b"{\"id\":\"hidden\"}"));
    let e = exchange(addr, smuggle, W);
    assert_eq!(e.statuses, vec![413], "{}", e.text);
    assert!(e.closed);
    normal(&ing, "after");
    only_these_in_kafka(&topic, &["second", "after"]);
}

#[test]
fn methods_paths_versions_and_reserved_headers() {
    let topic = unique_topic("hx-route");
    let (ing, addr) = ingest(&topic, "");
    let cases = [
        (
            "GET /api/t/v1/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            405,
        ),
        (
            "BREW /api/t/v1/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            405,
        ),
        (
            "POST /api/../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            404,
        ),
        (
            "POST /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            404,
        ),
        ("POST  /api/t/v1/ HTTP/1.1\r\n\r\n", 400),
        ("POST /api/t/v1/ HTTP/2.0\r\n\r\n", 505),
        ("\x16\x03\x01\x02\x00\x01\x00\x01\x7f\x03\x03\r\n\r\n", 400),
    ];
    for (req, status) in cases {
        let e = exchange(addr, req.as_bytes().to_vec(), W);
        assert_eq!(e.first(), Some(status), "{req:?}: {}", e.text);
    }
    let r = post(
        &ing.url,
        &[
            JSON,
            ("X-Kafka-Header-kbridge-retry-source", "../../pwn/0@1"),
        ],
        b"{\"id\":\"forged\"}",
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("kbridge-"), "{}", r.body);
    let r = post(
        &ing.url,
        &[JSON, ("Idempotency-Key", &"k".repeat(300))],
        b"{\"id\":\"long-key\"}",
    );
    assert_eq!(r.status, 400, "{}", r.body);
    normal(&ing, "after");
    only_these_in_kafka(&topic, &["after"]);
}

#[test]
fn open_connections_are_capped_and_the_rest_are_served_after() {
    let topic = unique_topic("hx-cap");
    let (ing, addr) = ingest(&topic, "max_connections = 20");
    let held: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
    wait_until("20 connections open", W, || {
        metric_with(
            &ing.metrics(),
            "kbridge_http_open_connections{server=\"ingest\"}",
        ) == 20.0
    });
    let e = exchange(addr, post_bytes(PATH, "", b"{\"id\":\"x\"}"), W);
    assert_eq!(e.first(), Some(503), "{}", e.text);
    assert!(e.text.contains("max_connections"), "{}", e.text);
    drop(held);
    wait_until("the held connections gone", W, || {
        metric_with(
            &ing.metrics(),
            "kbridge_http_open_connections{server=\"ingest\"}",
        ) == 0.0
    });
    normal(&ing, "after");
    assert!(
        metric_with(
            &ing.metrics(),
            "kbridge_http_refused_connections_total{server=\"ingest\"}"
        ) >= 1.0
    );
}

/// A sample of a labelled series from Prometheus text.
fn metric_with(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}

/// The real binary with ingest on a free port; returns it, the ingest
/// address and the admin URL.
#[test]
fn a_thousand_slow_clients_do_not_stop_the_others_and_cost_bounded_threads_and_memory() {
    raise_open_files_limit();
    let topic = unique_topic("hx-slowloris");
    let dir = TempDir::new("slowloris");
    let (bin, addr, admin) = ingest_bin(
        &topic,
        "header_timeout_ms = 15000\nbody_timeout_ms = 15000",
        &dir,
    );
    let pid = bin.child.id();
    let (threads_before, rss_before) = threads_and_rss(pid);
    // 1,000 connections that never finish their heads, and 20 that send a
    // body one byte at a time.
    let mut attack: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            (&s).write_all(b"POST /api/t/v1/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    for _ in 0..20 {
        let s = TcpStream::connect(addr).unwrap();
        (&s).write_all(b"POST /api/t/v1/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{")
            .unwrap();
        attack.push(s);
    }
    wait_until(
        "the attack connections open",
        Duration::from_secs(20),
        || {
            metric_with(
                &get(&format!("{admin}/metrics")).body,
                "kbridge_http_open_connections{server=\"ingest\"}",
            ) >= 1000.0
        },
    );
    let (threads, rss) = threads_and_rss(pid);
    // Meanwhile everyone else is served: all of it while the attack still
    // holds its connections (before their deadline).
    let url = format!("http://{addr}{PATH}");
    for i in 0..20 {
        let r = post(&url, &[JSON], format!("{{\"id\":\"n{i}\"}}").as_bytes());
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let still_open = metric_with(
        &get(&format!("{admin}/metrics")).body,
        "kbridge_http_open_connections{server=\"ingest\"}",
    );
    assert!(
        still_open >= 1000.0,
        "served during the attack ({still_open} open)"
    );
    let _ = writeln!(
        std::io::stderr(),
        "slowloris: 1,020 slow connections; threads {threads_before} → {threads}, RSS {} → {} MiB",
        rss_before >> 20,
        rss >> 20
    );
    assert!(threads < 1020 + 120, "threads: {threads}");
    // About 45 KB a connection in a debug build (its thread's touched
    // stack pages and its 8 KiB read buffer): a page more of stack per
    // thread moves this by 4 MiB. What the connections cost is the growth;
    // the debug binary's own pages come on top (25 MiB at rest since the
    // schema crates came in; a release build measures 12 → 47 MiB in all).
    assert!(
        rss.saturating_sub(rss_before) < 52 << 20,
        "RSS {} → {} MiB",
        rss_before >> 20,
        rss >> 20
    );
    assert!(rss < 80 << 20, "RSS {} MiB", rss >> 20);
    // Past header_timeout_ms / body_timeout_ms each slow connection gets
    // its 408 and is closed.
    let cut = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for chunk in attack.chunks(100) {
            let cut = &cut;
            s.spawn(move || {
                for c in chunk {
                    let e = read_until_closed(c, Duration::from_secs(30));
                    if e.first() == Some(408) && e.closed {
                        cut.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(
        cut.into_inner(),
        1020,
        "every slow connection answered 408 and closed"
    );
    let mut bin = bin;
    assert!(bin.child.try_wait().unwrap().is_none(), "the process lives");
    bin.sigterm();
    assert_eq!(bin.wait_exit(Duration::from_secs(20)).code(), Some(0));
    let want: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    only_these_in_kafka(&topic, &want);
}
