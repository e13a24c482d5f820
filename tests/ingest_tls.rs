//! HTTPS on the ingest listener (`tls_cert_file`, `tls_key_file`): a client
//! that trusts the CA writes; plain HTTP, a broken handshake and a client
//! that never starts one are cut (the last after `header_timeout_ms`)
//! while others are served; a key file others can read is refused.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ureq::tls::{Certificate, RootCerts, TlsConfig};

use crate::util::tls::certificates;
use crate::util::*;

fn https_agent(ca: &std::path::Path) -> ureq::Agent {
    let pem = std::fs::read(ca).unwrap();
    let cert = Certificate::from_pem(&pem).unwrap();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::new_with_certs(&[cert]))
                .build(),
        )
        .build()
        .into()
}

/// A directory with a CA and a server certificate; the key at `key_mode`.
fn certs(name: &str, key_mode: u32) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new(name);
    certificates(&dir.0);
    let key = dir.0.join("server.key");
    chmod(&key, key_mode);
    (dir, key)
}

#[test]
fn ingest_serves_https_and_cuts_what_is_not_tls() {
    let (dir, key) = certs("ingest-tls", 0o600);
    let topic = unique_topic("ingest-tls");
    let extra = format!(
        "tls_cert_file = {}\ntls_key_file = {}\nheader_timeout_ms = 1000",
        dir.0.join("server.pem").display(),
        key.display()
    );
    let ing = Ingest::start(&ingest_ini(&brokers(), &topic, &extra, ""));
    let https = ing.url.replace("http://", "https://");
    let addr = https
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let agent = https_agent(&dir.0.join("ca.pem"));
    let post_https = |id: &str| {
        let r = agent
            .post(&https)
            .header("Content-Type", "application/json")
            .send(format!("{{\"id\":\"{id}\"}}"))
            .unwrap();
        r.status().as_u16()
    };
    assert_eq!(post_https("first"), 200);

    // Plain HTTP gets no HTTP answer: the bytes are not a TLS handshake.
    let mut plain = TcpStream::connect(&addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"POST /api/t/v1/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(
        !buf.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );

    // A client that never starts its handshake is cut after the head's
    // timeout (1 s here); others are served meanwhile.
    let started = Instant::now();
    let mut silent = TcpStream::connect(&addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(post_https("during"), 200);
    match silent.read(&mut [0u8; 64]) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the silent connection was not closed: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    assert_eq!(post_https("after"), 200);
    let got: Vec<String> = read_topic(&brokers(), &topic, 3, Duration::from_secs(20))
        .iter()
        .map(|r| r.value_str().to_string())
        .collect();
    for id in ["first", "during", "after"] {
        assert!(
            got.contains(&format!("{{\"id\":\"{id}\"}}")),
            "{id}: {got:?}"
        );
    }
    assert!(
        metric(
            &ing.metrics(),
            "kbridge_http_tls_handshake_failures_total{server=\"ingest\"}"
        ) >= 2.0,
        "{}",
        ing.metrics()
    );
}

#[test]
fn a_key_others_can_read_or_half_a_pair_is_a_config_error() {
    let (dir, key) = certs("ingest-tls-cfg", 0o644);
    let text = format!(
        "[kafka]\nbrokers = h:1\n[ingest]\ntls_cert_file = {}\ntls_key_file = {}\n",
        dir.0.join("server.pem").display(),
        key.display()
    );
    let (_, errors) = try_load_config(&text);
    assert!(
        errors.contains("[ingest] tls_key_file: ") && errors.contains("(mode 644)"),
        "{errors}"
    );
    let (_, errors) = try_load_config(&format!(
        "[kafka]\nbrokers = h:1\n[ingest]\ntls_cert_file = {}\n",
        dir.0.join("server.pem").display()
    ));
    assert!(
        errors.contains("[ingest] tls_key_file: tls_cert_file and tls_key_file go together"),
        "{errors}"
    );
}
