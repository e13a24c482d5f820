//! Kafka over TLS and SASL, for real: a private Apache Kafka node listening
//! with SSL, SASL_PLAINTEXT and SASL_SSL (`scripts/broker --secure`: its
//! certificate made with openssl, the SCRAM user made by Kafka's storage
//! tool). Ingest, deliver and collect go through each; a wrong password or
//! an untrusted certificate stops kbridge at start with the key to fix; the
//! password shows in no log line, `check-config` output or `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use crate::collect::{Collect, assert_exactly, collect_ini};
use crate::util::broker::Broker;
use crate::util::process::*;
use crate::util::sink::Sink;
use crate::util::*;

/// `[kafka]` lines (after `brokers`) for one listener of the node.
fn kafka_lines(broker: &Broker, listener: &str, dir: &TempDir) -> (String, String) {
    let ca = broker.path("tls/ca.pem");
    let pw = broker.file("sasl.password");
    let lines = match listener {
        "ssl" => format!(
            "security.protocol = ssl\nssl.ca.location = {}\n",
            ca.display()
        ),
        // The password from a file only its owner can read.
        "sasl_plaintext" => {
            let file = write_mode(dir, "kafka.password", &format!("{pw}\n"), 0o600);
            format!(
                "security.protocol = sasl_plaintext\nsasl.mechanisms = SCRAM-SHA-256\n\
                 sasl.username = kbridge\nsasl.password.file = {}\n",
                file.display()
            )
        }
        "sasl_ssl" => format!(
            "security.protocol = sasl_ssl\nssl.ca.location = {}\nsasl.mechanisms = SCRAM-SHA-512\n\
             sasl.username = kbridge\nsasl.password = {pw}\n",
            ca.display()
        ),
        _ => unreachable!(),
    };
    (broker.file(&format!("{listener}_bootstrap")), lines)
}

fn with_kafka_lines(ini: String, lines: &str) -> String {
    ini.replacen("[kafka]\n", &format!("[kafka]\n{lines}"), 1)
}

#[test]
fn ingest_deliver_and_collect_work_over_tls_and_sasl_scram() {
    let broker = Broker::start_secure();
    let pw = broker.file("sasl.password");
    for listener in ["ssl", "sasl_plaintext", "sasl_ssl"] {
        let dir = TempDir::new(listener);
        let (b, lines) = kafka_lines(&broker, listener, &dir);
        let topic = unique_topic(&format!("sec-{listener}"));
        let ing = Ingest::start(&with_kafka_lines(
            ingest_ini(&b, &topic, "topic_partitions = 2", ""),
            &lines,
        ));
        let ids: Vec<String> = (0..20).map(|i| format!("{listener}-{i}")).collect();
        for id in &ids {
            let r = post(&ing.url, &[JSON], format!("{{\"id\":\"{id}\"}}").as_bytes());
            assert_eq!(r.status, 200, "{listener}: {}", r.body);
        }

        let sink = Arc::new(Sink::always(200));
        let d = Deliver::start(&with_kafka_lines(
            deliver_ini(&b, &unique_topic("g"), &topic, &sink.url, ""),
            &lines,
        ));
        wait_delivered(&sink, &ids, Duration::from_secs(60));

        let out = TempDir::new("sec-collect");
        let mut c = Collect::start(&with_kafka_lines(
            collect_ini(&b, &unique_topic("g"), &topic, &out.0, "idle_close_s = 1"),
            &lines,
        ));
        wait_until(
            &format!("{listener}: every event on disk"),
            Duration::from_secs(60),
            || {
                crate::collect::stored(&out.0, &topic)
                    .0
                    .iter()
                    .map(|f| f.lines.len())
                    .sum::<usize>()
                    >= ids.len()
                    && metric(&c.metrics(), "kbridge_collect_rotations_total") >= 1.0
            },
        );
        for m in [ing.metrics(), d.metrics(), c.metrics()] {
            assert!(!m.contains(&pw), "{listener}: the password in /metrics");
        }
        assert!(c.stop());
        // Read back through the plaintext listener, with another client.
        assert_exactly(&out.0, &topic, &broker.addr(), ids.len());
        assert!(ing.fatal.try_recv().is_err() && d.fatal.try_recv().is_err());
    }

    // SASL/PLAIN too (the broker's JAAS user), ingest to a reader.
    let topic = unique_topic("sec-plain");
    let lines = format!(
        "security.protocol = sasl_plaintext\nsasl.mechanisms = PLAIN\nsasl.username = kbridge\nsasl.password = {pw}\n"
    );
    let ing = Ingest::start(&with_kafka_lines(
        ingest_ini(&broker.file("sasl_plaintext_bootstrap"), &topic, "", ""),
        &lines,
    ));
    let r = post(&ing.url, &[JSON], b"{\"id\":\"plain\"}");
    assert_eq!(r.status, 200, "{}", r.body);
    let got = read_exactly(&broker.addr(), &topic, 1);
    assert_eq!(got[0].value_str(), "{\"id\":\"plain\"}");
}

/// `kbridge run` on `[kafka]` `lines` and one ingest route; returns the exit
/// code and what it logged.
fn run_to_exit(b: &str, lines: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("sec-fail");
    let ini = format!(
        "[kafka]\nbrokers = {b}\n{lines}[admin]\nlisten = 127.0.0.1:0\n[ingest]\nlisten = 127.0.0.1:0\n\
         [ingest.routes]\nt = {}\n",
        unique_topic("sec-fail")
    );
    let mut bin = spawn_bin(&ini, &dir);
    let code = bin.wait_exit(Duration::from_secs(30)).code();
    (code, bin.log())
}

#[test]
fn a_wrong_password_or_an_untrusted_certificate_stops_start_naming_the_key() {
    let broker = Broker::start_secure();
    let pw = broker.file("sasl.password");
    let wrong = "not-the-password-1f9e";

    let (code, log) = run_to_exit(
        &broker.file("sasl_plaintext_bootstrap"),
        &format!(
            "security.protocol = sasl_plaintext\nsasl.mechanisms = SCRAM-SHA-256\nsasl.username = kbridge\nsasl.password = {wrong}\n"
        ),
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("[kafka] sasl.password: authentication failed"),
        "{log}"
    );
    assert!(
        !log.contains(wrong) && !log.contains(&pw),
        "a password in the log:\n{log}"
    );

    // TLS without the CA: the bundled roots do not know it.
    let (code, log) = run_to_exit(&broker.file("ssl_bootstrap"), "security.protocol = ssl\n");
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("[kafka] ssl.ca.location: the broker's certificate is not trusted"),
        "{log}"
    );

    // check-config shows neither a password nor a rejected secret value.
    let (code, text) = check_config(&format!(
        "[kafka]\nbrokers = h:1\nsasl.password = {wrong}\nssl.key.password = {wrong}\n\
         sasl.password.file = /nonexistent/pw\n[ingest]\n"
    ));
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("[kafka] sasl.password.file: /nonexistent/pw: cannot read it"),
        "{text}"
    );
    assert!(!text.contains(wrong), "{text}");
}
