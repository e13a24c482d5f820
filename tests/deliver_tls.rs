//! deliver to an HTTPS endpoint: with the CA given in `tls_ca_file` every
//! message arrives, carrying the `Authorization` value of
//! `auth_header_file`; without it the certificate is refused and the
//! messages follow the retry rules to the dead-letter topic, none sent in
//! the clear. Certificates are made on the fly with openssl.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::tls::certificates;
use crate::util::*;

const AUTH: &str = "Bearer deliver-s3cr3t-7c41a09e5b";
const LOOKUP_AUTH: &str = "Basic bG9va3VwOnMzY3IzdC1lbnJpY2g=";

struct HttpsSink {
    child: Child,
    port: u16,
}

impl HttpsSink {
    fn start(dir: &Path) -> HttpsSink {
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/util/https_sink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .args(["server.pem", "server.key", AUTH, "received", LOOKUP_AUTH])
            .current_dir(dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the HTTPS sink did not start");
        HttpsSink { child, port }
    }
}

impl Drop for HttpsSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn received(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("received"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn deliver_over_https_trusts_only_the_given_ca_and_sends_the_authorization() {
    let dir = TempDir::new("https");
    certificates(&dir.0);
    let sink = HttpsSink::start(&dir.0);
    let auth_file = write_mode(&dir, "authorization", &format!("{AUTH}\n"), 0o600);
    let b = brokers();
    let target = format!("https://127.0.0.1:{}/in", sink.port);
    let start = |topic: &str, to: &str, extra: &str| Deliver::of(&b, topic, to, extra);
    // A fresh topic holding `n` events.
    let filled = |name: &str, partitions: i32, n: usize| {
        let topic = unique_topic(name);
        create_topic(&b, &topic, partitions);
        produce(&b, &topic, &events(name, n));
        topic
    };

    // With the CA: everything arrives, with the credentials, enriched by
    // lookups over HTTPS that carry their own.
    let lookup_file = write_mode(
        &dir,
        "lookup-authorization",
        &format!("{LOOKUP_AUTH}\n"),
        0o600,
    );
    let topic = filled("https-ok", 2, 20);
    let extra = format!(
        "tls_ca_file = {}\nauth_header_file = {}\nenrich_url = https://127.0.0.1:{}/geo/{{id}}\n\
         enrich_auth_header_file = {}\nenrich_on_error = retry\n",
        dir.0.join("ca.pem").display(),
        auth_file.display(),
        sink.port,
        lookup_file.display()
    );
    let d = start(&topic, &target, &extra);
    wait_until("20 messages over HTTPS", Duration::from_secs(30), || {
        received(&dir.0).len() >= 20
    });
    let got = received(&dir.0);
    assert_eq!(got.len(), 20, "{got:?}");
    for body in &got {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["enrichment"]["country"], "NL", "{body}");
    }
    let m = d.metrics();
    assert!(!m.contains("s3cr3t"), "{m}");
    drop(d);

    // Without it: the bundled roots do not know this CA; nothing is sent,
    // and after the retries the messages are dead-lettered.
    let topic = filled("https-unknown-ca", 1, 3);
    let extra = format!(
        "max_retries = 1\nbackoff_max_ms = 100\nauth_header_file = {}\n",
        auth_file.display()
    );
    let d = start(&topic, &target, &extra);
    let dlq = read_exactly(&b, &format!("{topic}.dlq"), 3);
    for r in &dlq {
        let reason = r.header("kbridge-dlq-reason");
        assert!(
            reason.contains("certificate") || reason.contains("UnknownIssuer"),
            "{reason}"
        );
        assert!(!reason.contains("s3cr3t"), "{reason}");
    }
    assert_eq!(received(&dir.0).len(), 20, "nothing more arrived");
    assert_eq!(metric(&d.metrics(), "kbridge_deliver_delivered_total"), 0.0);
    drop(d);

    // A 307 from https to plain http is not followed, even when redirects
    // are: the message is judged by the 307 (dead-lettered), never sent in
    // the clear.
    let plain = sink::Sink::always(200);
    let topic = filled("https-downgrade", 1, 2);
    let extra = format!(
        "follow_redirects = true\ntls_ca_file = {}\nauth_header_file = {}\n",
        dir.0.join("ca.pem").display(),
        auth_file.display()
    );
    let to = format!("https://127.0.0.1:{}/redirect?to={}", sink.port, plain.url);
    let _d = start(&topic, &to, &extra);
    let dlq = read_exactly(&b, &format!("{topic}.dlq"), 2);
    assert!(
        dlq.iter().all(|r| r.header("kbridge-dlq-status") == "307"),
        "{dlq:?}"
    );
    assert!(plain.calls().is_empty(), "a call went out in the clear");

    // A followed 307 to another origin (localhost, not 127.0.0.1) goes
    // without the Authorization value: the sink answers it 401.
    let topic = filled("https-other-origin", 1, 2);
    let to = format!(
        "https://127.0.0.1:{0}/redirect?to=https://localhost:{0}/in",
        sink.port
    );
    let before = received(&dir.0).len();
    let _d = start(&topic, &to, &extra);
    let dlq = read_exactly(&b, &format!("{topic}.dlq"), 2);
    assert!(
        dlq.iter().all(|r| r.header("kbridge-dlq-status") == "401"),
        "{dlq:?}"
    );
    assert_eq!(
        received(&dir.0).len(),
        before,
        "accepted without credentials"
    );

    // Verification turned off by name: the unknown CA is accepted.
    let topic = filled("https-skip-verify", 1, 2);
    let extra = format!(
        "tls_skip_verify = true\nauth_header_file = {}\n",
        auth_file.display()
    );
    let before = received(&dir.0).len();
    let _d = start(&topic, &target, &extra);
    wait_until(
        "2 messages without verification",
        Duration::from_secs(30),
        || received(&dir.0).len() >= before + 2,
    );
}

#[test]
fn an_unreadable_or_shared_secret_file_and_a_ca_file_without_certificates_are_config_errors() {
    let dir = TempDir::new("tls-cfg");
    let shared = write_mode(&dir, "authorization", &format!("{AUTH}\n"), 0o644);
    let not_pem = dir.0.join("ca.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let ini = format!(
        "[kafka]\nbrokers = {}\n[deliver]\ngroup_id = g\ntopics = t\ntarget_url = https://h/\n\
         tls_ca_file = {}\nauth_header_file = {}\nenrich_auth_header_file = /nonexistent/a\n",
        brokers(),
        not_pem.display(),
        shared.display()
    );
    let (code, text) = check_config(&ini);
    assert_eq!(code, Some(2), "{text}");
    for want in [
        "[deliver] tls_ca_file: ",
        "ca.pem: no PEM certificate in it",
        "[deliver] auth_header_file: ",
        "(mode 644); `chmod 600` it",
        "[deliver] enrich_auth_header_file: /nonexistent/a: cannot read it",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    assert!(!text.contains("s3cr3t"), "{text}");
}
