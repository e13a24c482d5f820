//! HTTP read strictly, on both ports (issue 18's smaller points): an
//! HTTP/1.1 request needs exactly one `Host`; chunk sizes are hex digits
//! only; a repeated `?partition=` or `Authorization` is refused; every
//! refusal is valid JSON, whatever it quotes; nothing of a refused request
//! is produced. The admin server answers only its own names, so a page that
//! DNS rebinding makes same-origin cannot read metrics or change the log
//! level. The vendored tiny_http serves every keep-alive connection of a
//! burst (the sink's server and ingest's).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use crate::util::raw::{exchange, post_bytes};
use crate::util::sink::{Reply, Sink};
use crate::util::*;

const W: Duration = Duration::from_secs(5);

/// The body of the first answer in `text`, as JSON.
fn body_json(text: &str) -> serde_json::Value {
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

fn refused(addr: SocketAddr, req: &[u8], status: u16) {
    let e = exchange(addr, req.to_vec(), W);
    assert_eq!(
        e.first(),
        Some(status),
        "{:?}: {}",
        String::from_utf8_lossy(req),
        e.text
    );
    assert_eq!(body_json(&e.text)["status"], status, "{}", e.text);
}

fn chunked(size_line: &str) -> Vec<u8> {
    format!(
        "POST /api/t/v1/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {size_line}\r\n{{\"id\":\"chunk\"}}\r\n0\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn ingest_refuses_what_two_readers_could_read_differently() {
    let topic = unique_topic("strict");
    let ing = Ingest::start(&ingest_ini(&brokers(), &topic, "", ""));
    let addr = ing.handle.as_ref().unwrap().local_addr();
    let body = b"{\"id\":\"refused\"}";
    let no_host = format!(
        "POST /api/t/v1/ HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    refused(addr, &[no_host.as_bytes(), body].concat(), 400);
    refused(addr, &post_bytes("/api/t/v1/", "Host: y\r\n", body), 400);
    // 14 bytes of chunk: +e, " e" and a 17-digit size are malformed; a size
    // beyond any body is too large.
    refused(addr, &chunked("+e"), 400);
    refused(addr, &chunked(" e"), 400);
    refused(addr, &chunked("0000000000000000e"), 400);
    refused(addr, &chunked("ffffffffffffffff"), 413);
    refused(
        addr,
        &post_bytes("/api/t/v1/", "Expect: 100-\tcontinue\r\n", body),
        417,
    );
    refused(
        addr,
        &post_bytes("/api/t/v1/?partition=0&partition=0", "", body),
        400,
    );
    // The same, well formed, is taken.
    let e = exchange(addr, chunked("e"), W);
    assert_eq!(e.first(), Some(200), "{}", e.text);
    let stored = read_exactly(&brokers(), &topic, 1);
    assert_eq!(stored[0].value_str(), "{\"id\":\"chunk\"}");
}

#[test]
fn two_authorization_headers_are_refused() {
    let dir = TempDir::new("strict-auth");
    let token = "alice-0f3a9c1d5e7b2468ace";
    let tokens = write_mode(&dir, "tokens", &format!("alice {token}\n"), 0o600);
    let topic = unique_topic("strict-auth");
    let ing = Ingest::start(&ingest_ini(
        &brokers(),
        &topic,
        &format!("auth_tokens_file = {}", tokens.display()),
        "",
    ));
    let addr = ing.handle.as_ref().unwrap().local_addr();
    let good = format!("Authorization: Bearer {token}\r\n");
    let twice = format!("{good}Authorization: Bearer not-the-token-at-all\r\n");
    refused(
        addr,
        &post_bytes("/api/t/v1/", &twice, b"{\"id\":\"x\"}"),
        400,
    );
    let e = exchange(addr, post_bytes("/api/t/v1/", &good, b"{\"id\":\"ok\"}"), W);
    assert_eq!(e.first(), Some(200), "{}", e.text);
    let stored = read_exactly(&brokers(), &topic, 1);
    assert_eq!(stored[0].value_str(), "{\"id\":\"ok\"}");
}

#[test]
fn the_admin_server_answers_only_its_own_names() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = kbridge::shutdown::Stopper::new();
    let (fatal, _rx) = crossbeam_channel::bounded(1);
    let _admin = kbridge::admin::spawn(
        listener,
        &kbridge::config::limits::HttpLimits::admin(),
        &["kbridge.internal".to_string()],
        vec![],
        kbridge::dashboard::Sources::default(),
        stop.token(),
        fatal,
    )
    .unwrap();
    let req = |method: &str, path: &str, host: &str, body: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let before = kbridge::logging::current();
    for host in [
        "attacker.example",
        "attacker.example:8081",
        "localhost.attacker.example",
    ] {
        refused(addr, &req("GET", "/metrics", host, ""), 421);
        refused(addr, &req("PUT", "/log-level", host, "trace"), 421);
    }
    assert_eq!(
        kbridge::logging::current(),
        before,
        "the level did not change"
    );
    for host in [
        addr.to_string(),
        "localhost".into(),
        "kbridge.internal:8081".into(),
    ] {
        let e = exchange(addr, req("GET", "/health", &host, ""), W);
        assert_eq!(e.first(), Some(200), "{host}: {}", e.text);
        assert!(
            !e.text.to_ascii_lowercase().contains("access-control-allow"),
            "no CORS"
        );
    }
    stop.stop();
}

/// tiny_http (the sink's server, and ingest's) must serve every keep-alive
/// connection of a burst; see vendor/README.md for the patch this proves.
#[test]
fn sink_serves_many_keep_alive_connections_opened_at_once() {
    use std::io::Read;
    let sink = Sink::start(Arc::new(|_, _| {
        Reply::status(200).delay(Duration::from_millis(10))
    }));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .max_idle_connections_per_host(8)
        .build()
        .into();
    let hs: Vec<_> = (0..8)
        .map(|t| {
            let a = agent.clone();
            let u = sink.url.clone();
            std::thread::spawn(move || {
                let mut errs = vec![];
                for i in 0..100 {
                    match a
                        .post(&u)
                        .header("Content-Type", "application/json")
                        .send(format!("{{\"id\":\"{t}-{i}\"}}").as_bytes())
                    {
                        Ok(mut r) => {
                            let mut b = Vec::new();
                            let _ = r.body_mut().as_reader().take(1 << 20).read_to_end(&mut b);
                        }
                        Err(e) => errs.push(e.to_string()),
                    }
                }
                errs
            })
        })
        .collect();
    let errs: Vec<String> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert!(errs.is_empty(), "{errs:?}");
}
