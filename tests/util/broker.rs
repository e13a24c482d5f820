//! Private Apache Kafka brokers for tests that hang, kill or restart one, so
//! the shared broker of the other tests is never disturbed: one KRaft node,
//! or a 3-node cluster (replication factor 3, `min.insync.replicas` 2).
//! Started and stopped with `scripts/broker`, which installs Kafka if needed;
//! a broker that cannot start fails the test loudly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::{TempDir, wait_until};

pub struct Broker {
    dir: TempDir,
    nodes: usize,
    bootstrap: String,
}

fn script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/broker")
}

fn run_script(args: &[&str], dir: &Path) {
    if let Err(e) = try_script(args, dir) {
        panic!("{e}");
    }
}

fn try_script(args: &[&str], dir: &Path) -> Result<(), String> {
    let out = Command::new(script())
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("scripts/broker runs");
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "scripts/broker {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

impl Broker {
    /// One KRaft node on a free port.
    pub fn start() -> Broker {
        Broker::with_nodes(1)
    }

    /// A 3-node KRaft cluster on free ports.
    pub fn cluster() -> Broker {
        Broker::with_nodes(3)
    }

    /// One KRaft node with extra server properties (`key=value`).
    pub fn start_with(props: &[String]) -> Broker {
        Broker::with(1, props)
    }

    /// One KRaft node that also listens with TLS, SASL_PLAINTEXT and
    /// SASL_SSL (user `kbridge`; see `scripts/broker --secure`).
    pub fn start_secure() -> Broker {
        Broker::with_args(1, &[], &["--secure"])
    }

    /// One node of another Apache Kafka release (e.g. `3.9.1`, which offers
    /// only the classic consumer group protocol).
    pub fn start_version(version: &str) -> Broker {
        Broker::with_args(1, &[], &["--kafka", version])
    }

    fn with_nodes(nodes: usize) -> Broker {
        Broker::with(nodes, &[])
    }

    fn with(nodes: usize, props: &[String]) -> Broker {
        Broker::with_args(nodes, props, &[])
    }

    fn with_args(nodes: usize, props: &[String], extra: &[&str]) -> Broker {
        // The free ports are picked before the nodes bind them, and other
        // tests bind ports meanwhile: a start that lost that race is tried
        // once more on new ports (the first failure is shown).
        match Broker::try_with_args(nodes, props, extra) {
            Ok(b) => b,
            Err(first) => {
                eprintln!("{first}\ntrying once more on other ports");
                Broker::try_with_args(nodes, props, extra).unwrap_or_else(|e| panic!("{e}"))
            }
        }
    }

    fn try_with_args(nodes: usize, props: &[String], extra: &[&str]) -> Result<Broker, String> {
        let dir = TempDir::new("kafka");
        let nodes_arg = nodes.to_string();
        // `--kafka` goes first (see scripts/broker).
        let (version, extra): (Vec<&str>, Vec<&str>) = match extra {
            ["--kafka", v, rest @ ..] => (vec!["--kafka", v], rest.to_vec()),
            _ => (vec![], extra.to_vec()),
        };
        let mut args = vec!["start"];
        args.extend(version);
        args.extend(["--port", "0", "--nodes", &nodes_arg]);
        args.extend(extra);
        for p in props {
            args.extend(["--set", p]);
        }
        if let Err(e) = try_script(&args, &dir.0) {
            let _ = try_script(&["stop", "--now"], &dir.0);
            return Err(e);
        }
        let bootstrap = std::fs::read_to_string(dir.0.join("bootstrap"))
            .unwrap()
            .trim()
            .to_string();
        Ok(Broker {
            dir,
            nodes,
            bootstrap,
        })
    }

    /// The bootstrap servers (every node).
    pub fn addr(&self) -> String {
        self.bootstrap.clone()
    }

    /// A file `scripts/broker` wrote in the broker's directory (e.g.
    /// `ssl_bootstrap`), trimmed.
    pub fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.0.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .trim()
            .to_string()
    }

    /// The path of a file in the broker's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    fn node_dir(&self, node: usize) -> PathBuf {
        self.dir.0.join(format!("node-{node}"))
    }

    fn pid(&self, node: usize) -> u32 {
        std::fs::read_to_string(self.node_dir(node).join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn signal(&self, node: usize, sig: &str) {
        let pid = self.pid(node);
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid} (node {node}) failed");
    }

    fn alive(&self, node: usize) -> bool {
        Path::new(&format!("/proc/{}", self.pid(node))).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.pid(node)))
                .unwrap_or_default()
                .contains(") Z ")
    }

    /// SIGSTOP every node: the broker hangs with its sockets open. Returns
    /// once every thread of every node is stopped (the signal is delivered
    /// to each thread in turn; a busy one may still answer a request).
    pub fn pause(&self) {
        for n in 1..=self.nodes {
            self.signal(n, "STOP");
        }
        for n in 1..=self.nodes {
            wait_until(
                &format!("every thread of node {n} to stop"),
                Duration::from_secs(10),
                || self.stopped(n),
            );
        }
    }

    /// Every thread of node `node` is in state T (stopped).
    fn stopped(&self, node: usize) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid(node))) else {
            return false;
        };
        tasks.flatten().all(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // The state follows the command name in parentheses.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
        })
    }

    pub fn resume(&self) {
        for n in 1..=self.nodes {
            self.signal(n, "CONT");
        }
    }

    /// SIGKILL one node and wait until it is gone; its storage stays.
    pub fn kill_node(&self, node: usize) {
        if !self.alive(node) {
            return;
        }
        self.signal(node, "KILL");
        wait_until(
            &format!("node {node} to die"),
            Duration::from_secs(10),
            || !self.alive(node),
        );
    }

    /// Starts a killed node again with the same storage and ports; returns
    /// once it has started.
    pub fn start_node(&self, node: usize) {
        run_script(&["node-start", "--node", &node.to_string()], &self.dir.0);
    }

    /// SIGKILL every node.
    pub fn kill(&self) {
        for n in 1..=self.nodes {
            self.kill_node(n);
        }
    }

    /// Kills and starts again a single-node broker.
    pub fn restart(&self) {
        assert_eq!(self.nodes, 1, "restart() is for a single node");
        self.kill();
        self.start_node(1);
    }

    /// The node id (1..=nodes) leading `topic`'s `partition`.
    pub fn leader(&self, topic: &str, partition: i32) -> usize {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let t = &md.topics()[0];
        let p = t
            .partitions()
            .iter()
            .find(|p| p.id() == partition)
            .unwrap_or_else(|| panic!("{topic} has no partition {partition}"));
        assert!(p.leader() >= 1, "{topic}/{partition} has no leader");
        p.leader() as usize
    }

    /// The last lines of a node's server log (for failure messages).
    fn log_tail(&self, node: usize) -> String {
        let log =
            std::fs::read_to_string(self.node_dir(node).join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(40).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in 1..=self.nodes {
                eprintln!(
                    "--- node {n}: last lines of server.log ---\n{}",
                    self.log_tail(n)
                );
            }
        }
        // SIGKILL also ends a paused (SIGSTOPped) node; the data is dropped
        // with the directory.
        let _ = Command::new(script())
            .args(["stop", "--now", "--dir"])
            .arg(&self.dir.0)
            .output();
    }
}
