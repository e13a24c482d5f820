//! The load client and the end-to-end benchmark, as functions (no timing
//! is asserted): `kbridge-bench` documents its flags, prints progress and a
//! summary, and its JSON parses; `bench/e2e` with a small count loses
//! nothing that was acknowledged.

use std::process::Command;

use crate::util::*;

fn bench_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kbridge-bench")
}

#[test]
fn bench_help_documents_every_flag() {
    let out = Command::new(bench_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--web-service",
        "--concurrent-clients",
        "--report-interval",
        "--duration",
        "--count",
        "--kind",
        "--batch",
        "--gzip",
        "--rate",
        "--json",
        "--acked-ids",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn bench_prints_progress_and_a_summary_and_its_json_parses() {
    let topic = unique_topic("bench");
    let ing = Ingest::start(&ingest_ini(&brokers(), &topic, "", ""));
    let base = ing.url.clone();
    let dir = TempDir::new("bench");
    let ids = dir.0.join("acked");
    let out = Command::new(bench_bin())
        .args(["--web-service", &base, "--concurrent-clients", "4"])
        .args(["--report-interval", "200", "--duration", "1.5", "--gzip"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.lines().filter(|l| l.contains("events/s")).count() >= 3,
        "{progress}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["throughput", "latency     p50", "p99.9", "errors      none"] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let out = Command::new(bench_bin())
        .args(["--web-service", &base, "--concurrent-clients", "3"])
        .args([
            "--count", "250", "--batch", "10", "--kind", "mixed", "--json",
        ])
        .arg("--acked-ids")
        .arg(&ids)
        .output()
        .unwrap();
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["events_sent"], 250);
    assert_eq!(j["events_acked"], 250);
    assert!(j["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    let acked = std::fs::read_to_string(&ids).unwrap();
    assert_eq!(acked.lines().count(), 250);
    let stored = read_all(&brokers(), &topic);
    assert!(stored.len() >= 250, "every acknowledged event is in Kafka");
}

#[test]
fn end_to_end_benchmark_loses_nothing_acknowledged() {
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_kbridge"))
        .parent()
        .unwrap()
        .to_path_buf();
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/e2e"))
        .args(["--count", "2000", "--clients", "8", "--json"])
        .env("KBRIDGE_BIN_DIR", &bin_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench/e2e failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(j["events_acked"], 2000, "{j}");
    assert_eq!(j["lost"]["deliver"], 0, "{j}");
    assert_eq!(j["lost"]["collect"], 0, "{j}");
}
