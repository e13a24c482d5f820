//! Private tansu brokers for tests that hang, kill or restart one, so the
//! shared broker of the other tests is never disturbed. The binary comes from
//! `TANSU_BIN` (set by `scripts/test`); a missing one fails the test loudly.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{TempDir, free_port, wait_until};

pub struct Broker {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

fn tansu_bin() -> PathBuf {
    PathBuf::from(std::env::var("TANSU_BIN").unwrap_or_else(|_| {
        panic!("TANSU_BIN is not set: run the tests with scripts/test, which installs tansu")
    }))
}

impl Broker {
    /// Starts a broker with SQLite storage on a free port.
    pub fn start() -> Broker {
        let mut b = Broker {
            port: free_port(),
            dir: TempDir::new("tansu"),
            child: None,
        };
        b.spawn();
        b
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("tansu.log"))
            .unwrap();
        let child = Command::new(tansu_bin())
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .arg("--storage-engine")
            // tansu reads the path relative to its working directory.
            .arg("sqlite://tansu.db")
            .current_dir(&self.dir.0)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_until("private broker to listen", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("broker running").id();
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid} failed");
    }

    /// SIGSTOP: the broker hangs with its sockets open.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// SIGKILL and wait; the storage stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port with the same storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // SIGKILL ends a paused (SIGSTOPped) broker too.
        self.kill();
    }
}
