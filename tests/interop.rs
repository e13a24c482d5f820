//! Interoperability: the whole round trip — ingest → Kafka → deliver and
//! collect — against tansu, a Kafka-compatible broker written in Rust (the
//! memory-only build from PyPI; `TANSU_BIN`, installed by `scripts/tansu`).
//! tansu speaks the classic consumer group protocol only, so both consumer
//! roles are configured with `group.protocol = classic`.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::collect::{Collect, assert_exactly, collect_ini};
use crate::util::sink::Sink;
use crate::util::*;

pub(crate) struct Tansu {
    pub(crate) port: u16,
    child: Child,
}

impl Tansu {
    pub(crate) fn start() -> Tansu {
        let bin = std::env::var("TANSU_BIN").unwrap_or_else(|_| {
            panic!("TANSU_BIN is not set: run the tests with scripts/test, which installs tansu")
        });
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        wait_until("tansu to listen", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Tansu { port, child }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn round_trip_through_tansu_ingest_deliver_and_collect() {
    let tansu = Tansu::start();
    let b = format!("127.0.0.1:{}", tansu.port);
    let topic = unique_topic("interop");
    let ing = Ingest::start(&ingest_ini(&b, &topic, "topic_partitions = 2", ""));
    let mut ids = Vec::new();
    for i in 0..10 {
        let batch: Vec<String> = (0..5)
            .map(|j| {
                let id = format!("i-{}", i * 5 + j);
                ids.push(id.clone());
                format!("{{\"id\":\"{id}\",\"type\":\"visit\"}}")
            })
            .collect();
        let r = post(&ing.url, &[NDJSON], batch.join("\n").as_bytes());
        assert_eq!(r.status, 200, "{}", r.body);
    }

    let sink = Arc::new(Sink::always(200));
    let group = unique_topic("g");
    let classic = "[deliver.consumer]\ngroup.protocol = classic\nsession.timeout.ms = 10000\n";
    let ini =
        deliver_ini(&b, &group, &topic, &sink.url, "").replace("[deliver.consumer]\n", classic);
    let _d = Deliver::start(&ini);
    wait_delivered(&sink, &ids, Duration::from_secs(60));

    let dir = TempDir::new("interop");
    let ini = collect_ini(&b, &unique_topic("g"), &topic, &dir.0, "idle_close_s = 1")
        + "[collect.consumer]\ngroup.protocol = classic\nsession.timeout.ms = 10000\n";
    let mut c = Collect::start(&ini);
    wait_until("every event on disk", Duration::from_secs(60), || {
        let m = c.metrics();
        metric(&m, "kbridge_collect_rotations_total") >= 1.0
            && crate::collect::stored(&dir.0, &topic)
                .0
                .iter()
                .map(|f| f.lines.len())
                .sum::<usize>()
                >= ids.len()
    });
    assert!(c.stop());
    assert_exactly(&dir.0, &topic, &b, ids.len());
}
