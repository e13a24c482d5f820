//! Operations with the real binary: systemd notifications (READY, WATCHDOG
//! while every loop turns and not while one is stuck, STOPPING), fatal
//! start errors as one ERROR line and a non-zero exit, log levels changed
//! while running (PUT /log-level, SIGUSR1 / SIGUSR2), the log file reopened
//! on SIGHUP, `/metrics` read by Prometheus' own parser, and the units and
//! the installer.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::process::{Bin, spawn_bin};
use crate::util::*;

fn collect_ini(admin: u16, dir: &TempDir, log: &str) -> String {
    format!(
        "[kafka]\nbrokers = {}\n[admin]\nlisten = 127.0.0.1:{admin}\n[log]\nfile = {log}\n\
         [collect]\ngroups = {}:{}\nrecord_directory = {}\nshutdown_timeout_ms = 3000\n",
        brokers(),
        unique_topic("g"),
        {
            let t = unique_topic("ops");
            create_topic(&brokers(), &t, 2);
            t
        },
        dir.0.join("records").display()
    )
}

fn signal(bin: &Bin, sig: &str) {
    bin.signal(sig);
}

fn wait_ready(admin: u16) {
    wait_until("kbridge ready", Duration::from_secs(30), || {
        agent()
            .get(&format!("http://127.0.0.1:{admin}/ready"))
            .call()
            .is_ok_and(|r| r.status() == 200)
    });
}

#[test]
fn notifies_ready_watchdog_and_stopping_and_stops_pinging_while_a_loop_is_stuck() {
    let dir = TempDir::new("notify");
    let sock_path = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let admin = free_port();
    let log = dir.0.join("kbridge.log");
    let ini = collect_ini(admin, &dir, &log.display().to_string());
    std::fs::write(dir.0.join("config.ini"), &ini).unwrap();
    // A 2 s watchdog: pings every second; collect-c0 stops turning 6 s
    // after start (a debug-build hook), so the pings stop 2 s later.
    let child = Command::new(kbridge_bin())
        .args(["run", "--config"])
        .arg(dir.0.join("config.ini"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "2000000")
        .env("KBRIDGE_DEBUG_STALL", "collect-c0@6")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut bin = Bin::from_child(child, log.clone());
    let start = Instant::now();
    let mut got: Vec<(Duration, String)> = Vec::new();
    let mut buf = [0u8; 512];
    while start.elapsed() < Duration::from_secs(14) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push((
                start.elapsed(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    signal(&bin, "TERM");
    let stop_deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < stop_deadline && !got.iter().any(|(_, m)| m.contains("STOPPING=1")) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push((
                start.elapsed(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    let code = bin.wait_exit(Duration::from_secs(20)).code();
    let when = |what: &str| -> Vec<f64> {
        got.iter()
            .filter(|(_, m)| m.lines().any(|l| l == what))
            .map(|(t, _)| t.as_secs_f64())
            .collect()
    };
    let ready = when("READY=1");
    let pings = when("WATCHDOG=1");
    assert_eq!(ready.len(), 1, "{got:?}");
    assert!(
        pings.iter().filter(|t| **t > ready[0] && **t < 6.0).count() >= 2,
        "pings while every loop turns: {got:?}"
    );
    let stuck_at = 6.0 + 2.0 + 1.5;
    assert!(
        !pings.iter().any(|t| *t > stuck_at && *t < 14.0),
        "no ping while collect-c0 is stuck: {pings:?}"
    );
    assert_eq!(when("STOPPING=1").len(), 1, "{got:?}");
    assert_eq!(code, Some(0), "a stuck loop ends at stop: a clean drain");
    let text = bin.log();
    assert!(
        text.contains("collect: collect-c0 (no progress for")
            && text.contains("watchdog pings stop"),
        "{text}"
    );
}

/// Starts the binary on `ini`, expects it to exit 1 at once with exactly one
/// ERROR line and nothing started; returns that line.
fn start_fails(ini: &str) -> String {
    let dir = TempDir::new("fatal");
    let mut bin = spawn_bin(ini, &dir);
    let code = bin.wait_exit(Duration::from_secs(30)).code();
    let log = bin.log();
    assert_eq!(code, Some(1), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("[ERROR]")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(!log.contains("Started."), "nothing started: {log}");
    errors[0].to_string()
}

#[test]
fn fatal_start_errors_exit_non_zero_with_one_clear_error_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let error = start_fails(&format!(
        "[kafka]\nbrokers = {}\n[admin]\nlisten = 127.0.0.1:{port}\n[ingest]\nlisten = 127.0.0.1:0\n",
        brokers()
    ));
    assert!(
        error.contains(&format!("[admin] listen: cannot bind 127.0.0.1:{port}")),
        "{error}"
    );

    // Neither creatable nor writable, even for root.
    let error = start_fails(&format!(
        "[kafka]\nbrokers = {}\n[admin]\nlisten = 127.0.0.1:0\n[collect]\ngroups = g:t\nrecord_directory = /proc/kbridge/records\n",
        brokers()
    ));
    assert!(
        error.contains("[collect] record_directory /proc/kbridge/records: cannot create it"),
        "{error}"
    );
}

#[test]
fn log_levels_change_while_running_and_the_log_file_reopens_on_sighup() {
    let dir = TempDir::new("loglevel");
    let admin = free_port();
    let log = dir.0.join("kbridge.log");
    let ini = collect_ini(admin, &dir, &log.display().to_string());
    let bin = spawn_bin(&ini, &dir);
    wait_ready(admin);
    let url = format!("http://127.0.0.1:{admin}/log-level");
    let level = || get(&url).json()["level"].as_str().unwrap().to_string();
    assert_eq!(level(), "info");
    let r = agent().put(&url).send("info,kbridge::stats=debug").unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(level(), "info,kbridge::stats=debug");
    let r = agent().put(&url).send("loud").unwrap();
    assert_eq!(r.status(), 400);
    signal(&bin, "USR1");
    wait_until("SIGUSR1 applied", Duration::from_secs(10), || {
        level() == "debug,kbridge::stats=trace"
    });
    // One at a time: the kernel merges a signal sent while the same one is
    // still pending.
    signal(&bin, "USR2");
    wait_until("SIGUSR2 applied", Duration::from_secs(10), || {
        level() == "info,kbridge::stats=debug"
    });
    signal(&bin, "USR2");
    wait_until("SIGUSR2 applied twice", Duration::from_secs(10), || {
        level() == "warn,kbridge::stats=info"
    });
    let text = std::fs::read_to_string(&log).unwrap();
    for want in [
        "log level changed from info to info,kbridge::stats=debug (PUT /log-level from 127.0.0.1",
        "(SIGUSR1)",
        "(SIGUSR2)",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    // logrotate renames the file, then sends SIGHUP: lines go to a new one.
    let rotated = dir.0.join("kbridge.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    signal(&bin, "HUP");
    // The signal thread may mark the file for reopening after a PUT that
    // follows the signal: each try logs one more change until one lands in
    // the new file.
    wait_until("a new log file", Duration::from_secs(10), || {
        agent().put(&url).send("info").unwrap();
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("log level changed from"))
    });
    let mut bin = bin;
    signal(&bin, "TERM");
    assert_eq!(bin.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn metrics_of_all_roles_parse_with_prometheus_and_hold_no_duplicate_series() {
    let dir = TempDir::new("prom");
    let (admin, port) = (free_port(), free_port());
    let topic = unique_topic("prom");
    let ini = format!(
        "[kafka]\nbrokers = {b}\n[admin]\nlisten = 127.0.0.1:{admin}\n[ingest]\nlisten = 127.0.0.1:{port}\n\
         [ingest.routes]\nt = {topic}\n[deliver]\ngroup_id = {g}\ntopics = {topic}\ntarget_url = http://127.0.0.1:9/x\n\
         [collect]\ngroups = {g2}:{topic}\nrecord_directory = {d}\n",
        b = brokers(),
        g = unique_topic("g"),
        g2 = unique_topic("g"),
        d = dir.0.join("records").display()
    );
    let mut bin = spawn_bin(&ini, &dir);
    wait_ready(admin);
    post(
        &format!("http://127.0.0.1:{port}/api/t/v1/"),
        &[JSON],
        b"{\"id\":\"m\"}",
    );
    wait_until("lag rows", Duration::from_secs(20), || {
        get(&format!("http://127.0.0.1:{admin}/metrics"))
            .body
            .contains("kbridge_deliver_consumer_lag{")
    });
    let text = get(&format!("http://127.0.0.1:{admin}/metrics")).body;
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
seen, families = set(), 0
for f in text_string_to_metric_families(sys.stdin.read()):
    families += 1
    for s in f.samples:
        key = (s.name, tuple(sorted(s.labels.items())))
        if key in seen:
            sys.exit(f"duplicate series {key}")
        seen.add(key)
print(families, len(seen))
"#;
    let mut py = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    py.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts = String::from_utf8_lossy(&out.stdout);
    let families: usize = counts.split_whitespace().next().unwrap().parse().unwrap();
    assert!(families > 60, "{counts}");
    for family in [
        "kbridge_ingest_responses_total",
        "kbridge_pool_size",
        "kbridge_deliver_consumer_lag",
    ] {
        assert_eq!(
            text.matches(&format!("# TYPE {family} ")).count(),
            1,
            "one TYPE line for {family}"
        );
    }
    // The Grafana dashboard uses only metrics that exist.
    let dash =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/kbridge.json"))
            .unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash).unwrap();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("kbridge_"))
            {
                assert!(
                    text.contains(&format!("# TYPE {name} ")),
                    "the dashboard's {name} is not in /metrics"
                );
            }
        }
    }
    signal(&bin, "TERM");
    assert_eq!(bin.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn units_verify_the_sandbox_holds_and_install_is_idempotent_and_reversible() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = TempDir::new("units");
    let unit = std::fs::read_to_string(format!("{root}/systemd/kbridge@.service"))
        .unwrap()
        .replace(
            "/usr/local/bin/kbridge",
            &kbridge_bin().display().to_string(),
        );
    std::fs::write(dir.0.join("kbridge@.service"), &unit).unwrap();
    std::fs::copy(
        format!("{root}/systemd/kbridge.target"),
        dir.0.join("kbridge.target"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "./kbridge@.service", "./kbridge.target"])
        .current_dir(&dir.0)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.0.join("kbridge@ingest.service"), &unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(dir.0.join("kbridge@ingest.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("exposure level for kbridge@ingest.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{text}");

    // Twice into a scratch root: the same files, the same bytes.
    let scratch = dir.0.join("root");
    let install = |args: &[&str]| {
        let out = Command::new(format!("{root}/systemd/install.sh"))
            .args(args)
            .env("DESTDIR", &scratch)
            .env("KBRIDGE_BIN", kbridge_bin())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "install.sh {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let listing = || {
        let out = Command::new("sh")
            .arg("-c")
            .arg("find . -type f | sort | xargs -r sha256sum")
            .current_dir(&scratch)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    install(&[]);
    let first = listing();
    for want in [
        "usr/local/bin/kbridge",
        "etc/kbridge/config.ini",
        "etc/systemd/system/kbridge@.service",
        "etc/systemd/system/kbridge.target",
        "etc/logrotate.d/kbridge",
    ] {
        assert!(first.contains(want), "{want}: {first}");
    }
    // An edited config is kept.
    let conf = scratch.join("etc/kbridge/config.ini");
    let edited = std::fs::read_to_string(&conf).unwrap() + "; edited\n";
    std::fs::write(&conf, &edited).unwrap();
    install(&[]);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), edited);
    assert!(scratch.join("etc/kbridge/config.ini.new").exists());
    std::fs::remove_file(scratch.join("etc/kbridge/config.ini.new")).unwrap();
    std::fs::write(
        &conf,
        std::fs::read_to_string(&conf)
            .unwrap()
            .replace("; edited\n", ""),
    )
    .unwrap();
    assert_eq!(listing(), first, "a second install changes nothing");
    install(&["--uninstall"]);
    let left = listing();
    assert_eq!(
        left.lines().count(),
        1,
        "only the config stays after --uninstall: {left}"
    );
}
