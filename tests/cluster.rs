//! Failover on a real 3-node Apache Kafka cluster (replication factor 3,
//! `min.insync.replicas` 2): a broker is killed with SIGKILL under load.
//! ingest answers 200 only for what Kafka kept (read back with kafka-python);
//! deliver and collect lose nothing and never commit past unfinished work.
//! The three tests take turns: each runs a cluster of its own.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::collect::{Collect, assert_exactly, collect_ini, id_of};
use crate::util::broker::Broker;
use crate::util::sink::{Reply, Sink};
use crate::util::*;

/// One cluster at a time: three JVMs each are plenty for 2 cores.
fn one_cluster_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A report line that shows in the test log even when the test passes.
fn report(line: String) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[test]
fn ingest_answers_200_only_for_what_kafka_kept_while_the_leader_is_killed() {
    let _turn = one_cluster_at_a_time();
    let cluster = Broker::cluster();
    let b = cluster.addr();
    let topic = unique_topic("cl-ingest");
    let ing = Ingest::start(&ingest_ini(
        &b,
        &topic,
        "topic_partitions = 3\ntopic_replication_factor = 3",
        "",
    ));
    let url = ing.url.clone();
    // Each client posts one event per request and records every answer.
    let answers: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (url, answers, stop) = (url.clone(), answers.clone(), stop.clone());
            std::thread::spawn(move || {
                let a = agent();
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("c{c}-{n}");
                    let body = format!("{{\"id\":\"{id}\",\"type\":\"visit\"}}");
                    let status = try_post(&a, &url, &[JSON], body.as_bytes())
                        .map(|r| r.status)
                        .unwrap_or(0);
                    answers.lock().unwrap().push((id, status));
                }
            })
        })
        .collect();
    let acked = || {
        answers
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| *s == 200)
            .count()
    };
    wait_until("load to build up", Duration::from_secs(60), || {
        acked() >= 500
    });
    let leader = cluster.leader(&topic, 0);
    cluster.kill_node(leader);
    let at_kill = acked();
    // ingest goes on serving: the election ends the wait and answers flow.
    wait_until(
        "answers after the leader's death",
        Duration::from_secs(90),
        || acked() >= at_kill + 1000,
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    let odd: Vec<&(String, u16)> = answers
        .iter()
        .filter(|(_, s)| *s != 200 && *s != 503)
        .collect();
    assert!(odd.is_empty(), "answers other than 200 or 503: {odd:?}");
    let acked: HashSet<&str> = answers
        .iter()
        .filter(|(_, s)| *s == 200)
        .map(|(id, _)| id.as_str())
        .collect();

    // Read back with another client while the killed node is still down.
    let stored = read_with_kafka_python(&b, &topic);
    let mut count: HashMap<String, usize> = HashMap::new();
    for (r, _) in &stored {
        *count.entry(id_of(r.value_str())).or_default() += 1;
    }
    let lost: Vec<&&str> = acked
        .iter()
        .filter(|id| !count.contains_key(**id))
        .collect();
    let duplicated = count.values().filter(|n| **n > 1).count();
    report(format!(
        "ingest leader kill (node {leader}): sent {} / acknowledged {} / 503 {} / present {} / lost {} / duplicated {duplicated}",
        answers.len(),
        acked.len(),
        answers.iter().filter(|(_, s)| *s == 503).count(),
        count.len(),
        lost.len()
    ));
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(
        duplicated, 0,
        "the idempotent producer wrote an event twice"
    );
    assert!(ing.fatal.try_recv().is_err(), "no fatal error");
}

/// The group's committed offsets, or `None` while the cluster cannot say.
fn try_committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Option<Vec<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .ok()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
    (0..partitions)
        .map(|p| match got.find_partition(topic, p)?.offset() {
            Offset::Offset(o) => Some(o),
            _ => Some(0),
        })
        .collect()
}

/// id → (partition, offset) of every record of `topic`.
fn positions(brokers: &str, topic: &str, n: usize) -> HashMap<String, (i32, i64)> {
    read_topic(brokers, topic, n, Duration::from_secs(30))
        .iter()
        .map(|r| (id_of(r.value_str()), (r.partition, r.offset)))
        .collect()
}

/// Watches a group while a test runs: each round reads the committed
/// offsets, then what is finished (`finished()`, read after the offsets),
/// and records every message below a committed offset that is not finished.
struct CommitWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl CommitWatch {
    fn start(
        brokers: String,
        group: String,
        topic: String,
        pos: HashMap<String, (i32, i64)>,
        finished: impl Fn() -> HashSet<String> + Send + 'static,
    ) -> CommitWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut rounds, mut violations) = (0, Vec::new());
            while !s.load(Ordering::Relaxed) {
                if let Some(c) = try_committed(&brokers, &group, &topic, 3) {
                    let done = finished();
                    rounds += 1;
                    for (id, (p, o)) in &pos {
                        if *o < c[*p as usize] && !done.contains(id) {
                            violations.push(format!("{id} at {p}/{o} below commit {c:?}"));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (rounds, violations)
        });
        CommitWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching; fails the test on a commit past unfinished work.
    fn check(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let (rounds, violations) = self.thread.take().unwrap().join().unwrap();
        assert!(
            violations.is_empty(),
            "committed past unfinished work: {:?}",
            &violations[..violations.len().min(5)]
        );
        assert!(rounds > 0, "the watch never read a commit");
        rounds
    }
}

const N: usize = 900;

#[test]
fn deliver_loses_nothing_and_never_commits_past_unfinished_work_when_a_broker_dies() {
    let _turn = one_cluster_at_a_time();
    let cluster = Broker::cluster();
    let b = cluster.addr();
    let topic = unique_topic("cl-deliver");
    create_replicated_topic(&b, &topic, 3, 3);
    produce(&b, &topic, &events("d", N));
    let pos = positions(&b, &topic, N);
    let sink = Arc::new(Sink::start(Arc::new(|_, _| {
        Reply::status(200).delay(Duration::from_millis(10))
    })));
    let group = unique_topic("g");
    let watch = {
        let sink = sink.clone();
        CommitWatch::start(b.clone(), group.clone(), topic.clone(), pos, move || {
            sink.delivered().into_iter().collect()
        })
    };
    let mut d = Deliver::start(&deliver_ini(&b, &group, &topic, &sink.url, ""));
    wait_until("a sixth delivered", Duration::from_secs(60), || {
        sink.delivered().len() >= N / 6
    });
    let victim = cluster.leader(&topic, 0);
    cluster.kill_node(victim);
    wait_until(
        "delivery going on with a node down",
        Duration::from_secs(90),
        || sink.delivered().len() >= N / 2,
    );
    cluster.start_node(victim);
    let all: Vec<String> = (0..N).map(|i| format!("d-{i}")).collect();
    wait_delivered(&sink, &all, Duration::from_secs(120));
    wait_until("every offset committed", Duration::from_secs(60), || {
        try_committed(&b, &group, &topic, 3).is_some_and(|c| c.iter().sum::<i64>() == N as i64)
    });
    assert!(d.stop(), "deliver drained cleanly");
    let rounds = watch.check();
    let delivered = sink.delivered();
    report(format!(
        "deliver broker kill (node {victim}): messages {N} / delivered {} unique, {} calls / lost 0 / commit checks {rounds}",
        delivered.iter().collect::<HashSet<_>>().len(),
        delivered.len()
    ));
}

/// Ids in the finished (renamed, fsynced) files under `root/topic`; files
/// that vanish while being read are skipped.
fn durable_ids(root: &Path, topic: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    let Ok(dates) = std::fs::read_dir(root.join(topic)) else {
        return ids;
    };
    for d in dates.flatten() {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            if f.file_name().to_string_lossy().ends_with(".tmp") {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(f.path()) {
                ids.extend(text.lines().map(id_of));
            }
        }
    }
    ids
}

#[test]
fn collect_loses_nothing_and_never_commits_past_unwritten_files_when_a_broker_dies() {
    let _turn = one_cluster_at_a_time();
    let cluster = Broker::cluster();
    let b = cluster.addr();
    let topic = unique_topic("cl-collect");
    create_replicated_topic(&b, &topic, 3, 3);
    produce(&b, &topic, &events("f", N));
    let pos = positions(&b, &topic, N);
    let dir = TempDir::new("cl-col");
    let group = unique_topic("g");
    let watch = {
        let (root, topic) = (dir.0.clone(), topic.clone());
        CommitWatch::start(b.clone(), group.clone(), topic.clone(), pos, move || {
            durable_ids(&root, &topic)
        })
    };
    // Small files, so commits follow each other while the node is down.
    let ini = collect_ini(
        &b,
        &group,
        &topic,
        &dir.0,
        "rotate_bytes = 2000\nidle_close_s = 1",
    );
    let mut c = Collect::start(&ini);
    let victim = cluster.leader(&topic, 0);
    cluster.kill_node(victim);
    wait_until(
        "files written with a node down",
        Duration::from_secs(90),
        || durable_ids(&dir.0, &topic).len() >= N / 2,
    );
    cluster.start_node(victim);
    wait_until("every message on disk", Duration::from_secs(120), || {
        durable_ids(&dir.0, &topic).len() >= N
    });
    wait_until("every offset committed", Duration::from_secs(60), || {
        try_committed(&b, &group, &topic, 3).is_some_and(|c| c.iter().sum::<i64>() == N as i64)
    });
    let m = c.metrics();
    assert!(c.stop(), "collect drained cleanly");
    let rounds = watch.check();
    assert_exactly(&dir.0, &topic, &b, N);
    report(format!(
        "collect broker kill (node {victim}): messages {N} / on disk {N} exactly once / lost 0 / commit checks {rounds} / retry-topic produces {}",
        metric(&m, "kbridge_collect_retry_produced_total")
    ));
}
