//! The real kbridge binary as a child process: start it on a config, signal
//! it, wait for its exit with a deadline. A `Bin` is killed when dropped, and
//! a failing test prints the tail of its log.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{TempDir, kbridge_bin};

pub struct Bin {
    pub child: Child,
    log: PathBuf,
}

/// Starts `kbridge run` on `ini`; `dir` keeps the config and `stderr.log`.
pub fn spawn_bin(ini: &str, dir: &TempDir) -> Bin {
    let cfg = dir.0.join("config.ini");
    std::fs::write(&cfg, ini).unwrap();
    let log = dir.0.join("stderr.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let child = Command::new(kbridge_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap();
    Bin { child, log }
}

impl Bin {
    /// A child started by the test itself, whose log is at `log`.
    pub fn from_child(child: Child, log: PathBuf) -> Bin {
        Bin { child, log }
    }

    /// What the process wrote to its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then waits for the exit.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.wait_exit(Duration::from_secs(10));
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends signal `sig` (`TERM`, `HUP`, …).
    pub fn signal(&self, sig: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{sig} {}", self.child.id());
    }

    /// Waits for the exit; fails the test after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(start.elapsed() < timeout, "no exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Bin {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!(
                "--- last lines of {} ---\n{}",
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// `kbridge run` with ingest on route `t` → `topic` (`extra` lines in
/// `[ingest]`) and an admin server, once ready: the process, ingest's
/// address and the admin's base URL.
pub fn ingest_bin(topic: &str, extra: &str, dir: &TempDir) -> (Bin, std::net::SocketAddr, String) {
    use super::{brokers, free_port};
    let (port, admin) = (free_port(), free_port());
    let ini = format!(
        "[kafka]\nbrokers = {}\n[admin]\nlisten = 127.0.0.1:{admin}\n[ingest]\nlisten = 127.0.0.1:{port}\n{extra}\n[ingest.routes]\nt = {topic}\n",
        brokers()
    );
    let bin = spawn_bin(&ini, dir);
    let admin_url = format!("http://127.0.0.1:{admin}");
    wait_ready(&admin_url);
    (bin, format!("127.0.0.1:{port}").parse().unwrap(), admin_url)
}

/// Waits (30 s at most) until the admin server at `admin_url` says ready.
pub fn wait_ready(admin_url: &str) {
    super::wait_until("kbridge ready", Duration::from_secs(30), || {
        super::agent()
            .get(&format!("{admin_url}/ready"))
            .call()
            .is_ok_and(|r| r.status() == 200)
    });
}

/// Runs `kbridge replay --config <ini> --subscription <name> [more]`;
/// (exit code, stdout + stderr).
pub fn replay_subscription(
    ini: &std::path::Path,
    name: &str,
    more: &[&str],
) -> (Option<i32>, String) {
    let out = Command::new(kbridge_bin())
        .args(["replay", "--config"])
        .arg(ini)
        .args(["--subscription", name])
        .args(more)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}
