//! The command line: `check-config` exit codes and messages, `--version`,
//! and refusing to run a role without its section.

use std::process::Command;

use crate::util::*;

#[test]
fn shipped_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.ini");
    let out = Command::new(kbridge_bin())
        .args(["check-config", "--config", path])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (roles: ingest, deliver)"));
}

#[test]
fn check_config_reports_every_error_with_file_line_section_key_and_exits_2() {
    let (code, err) = check_config(
        "[kafka]\nbrokers =\nno.such.prop = 1\n[ingest]\nworkers = many\nack = later\n[ingest.routes]\nvisit = bad/topic\n[oops]\n[log]\nlevel = chatty\n",
    );
    assert_eq!(code, Some(2));
    for want in [
        ":2 [kafka] brokers: required key is missing or empty",
        ":3 [kafka] no.such.prop: librdkafka rejects",
        ":5 [ingest] workers: expected an integer in 1..=256, got \"many\"",
        ":6 [ingest] ack: expected one of kafka | queued, got \"later\"",
        ":8 [ingest.routes] visit: expected a Kafka topic name",
        ":9 [oops]: unknown section",
        ":11 [log] level: \"chatty\" is not a level",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(err.contains("has 7 error(s)"), "{err}");
}

#[test]
fn missing_file_is_exit_2_with_a_message() {
    let out = Command::new(kbridge_bin())
        .args(["check-config", "--config", "/nonexistent/k.ini"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read config file /nonexistent/k.ini")
    );
}

#[test]
fn run_refuses_a_role_without_its_section() {
    let dir = TempDir::new("cli-role");
    let path = dir.0.join("config.ini");
    std::fs::write(&path, "[kafka]\nbrokers = 127.0.0.1:1\n[ingest]\n").unwrap();
    let out = Command::new(kbridge_bin())
        .args(["run", "--role", "deliver", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a [deliver] section"));
}

#[test]
fn version_and_help() {
    let out = Command::new(kbridge_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("kbridge {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(kbridge_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("run") && help.contains("check-config"),
        "{help}"
    );
}
