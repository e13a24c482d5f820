//! The collect role against the real broker: files hold exactly what Kafka
//! held, each message once, after rotations, kills, SIGTERM and a full disk.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::util::process::*;
use crate::util::*;

pub(crate) use crate::util::collect::*;

#[test]
fn every_message_lands_once_in_partition_order_plain_and_gzip() {
    let b = brokers();
    for gzip in [false, true] {
        let topic = unique_topic(if gzip { "col-gz" } else { "col-plain" });
        create_topic(&b, &topic, 4);
        produce(&b, &topic, &events("c", 400));
        let dir = TempDir::new("col");
        let extra = format!(
            "rotate_bytes = 3000\ncompression = {}",
            if gzip { "gzip" } else { "none" }
        );
        let mut c = Collect::start(&collect_ini(&b, &unique_topic("g"), &topic, &dir.0, &extra));
        wait_until("all consumed", Duration::from_secs(60), || {
            metric(&c.metrics(), "kbridge_collect_consumed_total") >= 400.0
        });
        assert!(c.stop());
        assert_exactly(&dir.0, &topic, &b, 400);
        let (files, _) = stored(&dir.0, &topic);
        assert!(files.len() > 4, "rotated by size: {} files", files.len());
        assert!(
            files
                .iter()
                .all(|f| f.path.to_string_lossy().ends_with(if gzip {
                    ".ndjson.gz"
                } else {
                    ".ndjson"
                }))
        );
    }
}

#[test]
fn envelope_lines_carry_topic_partition_offset_key_timestamp_and_value() {
    let b = brokers();
    let topic = unique_topic("col-env");
    create_topic(&b, &topic, 2);
    let recs = vec![
        (
            Some("user-1".to_string()),
            r#"{"id":"e-0","n":1}"#.to_string(),
        ),
        (None, r#"{"id":"e-1","nested":{"a":[1,2]}}"#.to_string()),
        (Some("user-2".to_string()), "not json".to_string()),
    ];
    produce(&b, &topic, &recs);
    let dir = TempDir::new("col-env");
    let mut c = Collect::start(&collect_ini(
        &b,
        &unique_topic("g"),
        &topic,
        &dir.0,
        "format = envelope\nidle_close_s = 1",
    ));
    wait_until("3 stored", Duration::from_secs(60), || {
        stored(&dir.0, &topic)
            .0
            .iter()
            .map(|f| f.lines.len())
            .sum::<usize>()
            == 3
    });
    assert!(c.stop());
    let lines: Vec<serde_json::Value> = stored(&dir.0, &topic)
        .0
        .iter()
        .flat_map(|f| f.lines.iter().map(|l| serde_json::from_str(l).unwrap()))
        .collect();
    for r in read_topic(&b, &topic, 3, Duration::from_secs(30)) {
        let line = lines
            .iter()
            .find(|l| l["partition"] == r.partition && l["offset"] == r.offset)
            .unwrap_or_else(|| panic!("no line for {}/{}: {lines:?}", r.partition, r.offset));
        assert_eq!(line["topic"], topic.as_str());
        let key = r
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        assert_eq!(line["key"], serde_json::json!(key));
        assert!(line["timestamp"].as_i64().is_some_and(|t| t > 0), "{line}");
        // JSON values stay JSON; anything else is kept as a string.
        let value = serde_json::from_slice(&r.value)
            .unwrap_or_else(|_| serde_json::Value::String(r.value_str().to_string()));
        assert_eq!(line["value"], value);
    }
}

#[test]
fn rotation_by_size_and_by_age_gives_the_expected_files() {
    let b = brokers();
    let topic = unique_topic("col-rot");
    create_topic(&b, &topic, 1);
    // 10 lines of equal length; rotate after 4 lines' worth of bytes.
    let recs: Vec<(Option<String>, String)> = (0..10)
        .map(|i| (None, format!("{{\"id\":\"r-{i:02}\"}}")))
        .collect();
    let line = recs[0].1.len() as u64 + 1;
    produce(&b, &topic, &recs);
    let dir = TempDir::new("col-rot");
    let group = unique_topic("g");
    let mut c = Collect::start(&collect_ini(
        &b,
        &group,
        &topic,
        &dir.0,
        &format!("rotate_bytes = {}\nrotate_age_s = 2", line * 4),
    ));
    wait_until("10 consumed", Duration::from_secs(60), || {
        metric(&c.metrics(), "kbridge_collect_consumed_total") >= 10.0
    });
    // Size: 0-3, 4-7; then 8-9 close by age (2 s) while nothing else comes.
    wait_until("the age rotation", Duration::from_secs(20), || {
        stored(&dir.0, &topic).0.len() == 3
    });
    let names: Vec<(i64, i64)> = stored(&dir.0, &topic)
        .0
        .iter()
        .map(|f| (f.first, f.last))
        .collect();
    assert_eq!(names, vec![(0, 3), (4, 7), (8, 9)]);
    wait_until("committed", Duration::from_secs(10), || {
        committed(&b, &group, &topic, 1) == vec![10]
    });
    assert!(c.stop());
    assert_exactly(&dir.0, &topic, &b, 10);
}

#[test]
fn sigkill_mid_write_then_restart_stores_exactly_n_and_sigterm_commits() {
    let b = brokers();
    let topic = unique_topic("col-kill");
    create_topic(&b, &topic, 4);
    produce(&b, &topic, &events("k", 4000));
    let dir = TempDir::new("col-kill");
    let data = dir.0.join("data");
    let group = unique_topic("g");
    let ini = collect_ini(
        &b,
        &group,
        &topic,
        &data,
        "rotate_bytes = 20000\nidle_close_s = 2",
    );
    let mut child = spawn_bin(&ini, &dir);
    wait_until("some files written", Duration::from_secs(60), || {
        stored(&data, &topic).0.len() >= 3
    });
    child.kill();
    let mut child = spawn_bin(&ini, &dir);
    wait_until("everything committed", Duration::from_secs(90), || {
        committed(&b, &group, &topic, 4).iter().sum::<i64>() == 4000
    });
    child.sigterm();
    assert_eq!(
        child.wait_exit(Duration::from_secs(15)).code(),
        Some(0),
        "SIGTERM: exit 0"
    );
    assert_exactly(&data, &topic, &b, 4000);
}

#[test]
fn sigterm_closes_open_files_and_commits_them() {
    let b = brokers();
    let topic = unique_topic("col-term");
    create_topic(&b, &topic, 2);
    // Keyed, so both partitions get messages (unkeyed ones may all stick
    // to one partition) and both have a file open at the stop.
    let mut recs = events("t", 100);
    for (i, r) in recs.iter_mut().enumerate() {
        r.0 = Some(format!("key-{i}"));
    }
    produce(&b, &topic, &recs);
    let dir = TempDir::new("col-term");
    let data = dir.0.join("data");
    let group = unique_topic("g");
    // Files would stay open for a long time without the stop.
    let mut child = spawn_bin(
        &collect_ini(
            &b,
            &group,
            &topic,
            &data,
            "rotate_age_s = 3600\nidle_close_s = 3600",
        ),
        &dir,
    );
    let ini = std::fs::read_to_string(dir.0.join("config.ini")).unwrap();
    let admin = ini
        .lines()
        .find_map(|l| l.strip_prefix("listen = "))
        .unwrap()
        .to_string();
    wait_until(
        "everything consumed into open files",
        Duration::from_secs(60),
        || {
            let m = agent()
                .get(&format!("http://{admin}/metrics"))
                .call()
                .ok()
                .map(|mut r| r.body_mut().read_to_string().unwrap_or_default());
            let (files, temps) = stored(&data, &topic);
            m.is_some_and(|m| metric(&m, "kbridge_collect_consumed_total") >= 100.0)
                && files.is_empty()
                && temps.len() == 2
        },
    );
    child.sigterm();
    assert_eq!(child.wait_exit(Duration::from_secs(15)).code(), Some(0));
    assert_eq!(
        committed(&b, &group, &topic, 2).iter().sum::<i64>(),
        100,
        "closed files committed"
    );
    assert_exactly(&data, &topic, &b, 100);
}

#[test]
fn full_disk_sends_messages_to_the_retry_topic_then_all_land_once() {
    let b = brokers();
    let topic = unique_topic("col-full");
    create_topic(&b, &topic, 2);
    let dir = TempDir::new("col-full");
    let mnt = dir.0.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        assert!(!root, "running as root but cannot mount a tmpfs at {mnt:?}");
        eprintln!(
            "\n*** SKIPPED full_disk_sends_messages_to_the_retry_topic: cannot mount a tmpfs here (needs root) ***\n"
        );
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    // Leave ~40 KiB free; 1,000 events of ~100 B need ~100 KiB.
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![0u8; 216 * 1024]).unwrap();
    let data = mnt.join("data");
    let recs: Vec<(Option<String>, String)> = (0..1000)
        .map(|i| {
            (
                None,
                format!("{{\"id\":\"f-{i}\",\"pad\":\"{}\"}}", "z".repeat(80)),
            )
        })
        .collect();
    produce(&b, &topic, &recs);
    let c = Collect::start(&collect_ini(
        &b,
        &unique_topic("g"),
        &topic,
        &data,
        "rotate_bytes = 8000\nidle_close_s = 2",
    ));
    wait_until("write errors and retries", Duration::from_secs(60), || {
        let m = c.metrics();
        metric(&m, "kbridge_collect_write_errors_total") > 0.0
            && metric(&m, "kbridge_collect_retry_produced_total") > 0.0
    });
    std::fs::remove_file(&filler).unwrap();
    wait_until("all 1000 on disk", Duration::from_secs(90), || {
        let (files, _) = stored(&data, &topic);
        files.iter().map(|f| f.lines.len()).sum::<usize>() >= 1000
    });
    // Each librdkafka client reports under its own name: the retry
    // producer's count is not overwritten by the consumers' (which produce
    // nothing), whichever reported last.
    let retried = metric(&c.metrics(), "kbridge_collect_retry_produced_total");
    let tx = || {
        let m = c.metrics();
        metric(
            &m,
            "kbridge_kafka_tx_messages_total{client=\"collect-retry\"}",
        )
    };
    wait_until(
        "the retry producer's statistics",
        Duration::from_secs(10),
        || tx() >= retried,
    );
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        assert!(tx() >= retried, "the retry producer's count stays");
    }
    let m = c.metrics();
    assert_eq!(
        metric(&m, "kbridge_kafka_tx_messages_total{client=\"collect-c0\"}"),
        0.0
    );
    assert!(metric(&m, "kbridge_kafka_brokers_up{client=\"collect-c0\"}") >= 1.0);
    drop(c);
    let (files, temps) = stored(&data, &topic);
    assert!(temps.is_empty(), "{temps:?}");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for f in &files {
        for l in &f.lines {
            *seen.entry(id_of(l)).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 1000, "every message stored");
    assert!(seen.values().all(|c| *c == 1), "none stored twice");
    assert!(
        files.iter().any(|f| f
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .contains(".retry-")),
        "some came through the retry topic"
    );
}

/// librdkafka keeps a partition paused across revoke and re-assign: a
/// retry-topic partition paused for a message not yet due must still be
/// read once the group moved it around (here: away and back, or revoked
/// and re-assigned to the same member).
#[test]
fn a_retry_paused_through_rebalances_is_still_written_once() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let b = brokers();
    let topic = unique_topic("col-pause");
    let retry = format!("{topic}.retry");
    create_topic(&b, &topic, 1);
    create_topic(&b, &retry, 1);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    // Due well after both rebalances below.
    let due = (now_ms + 15_000).to_string();
    let source = format!("{topic}/0@0");
    let p: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &b)
        .create()
        .unwrap();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: kbridge::collect::RETRY_AT,
            value: Some(due.as_str()),
        })
        .insert(Header {
            key: kbridge::collect::RETRY_SOURCE,
            value: Some(source.as_str()),
        });
    p.send(
        BaseRecord::<str, str>::to(&retry)
            .payload(r#"{"id":"late"}"#)
            .headers(headers),
    )
    .map_err(|(e, _)| e)
    .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();

    let dir = TempDir::new("col-pause");
    let group = unique_topic("g");
    let ini = collect_ini(&b, &group, &topic, &dir.0, "idle_close_s = 1")
        .replace("concurrent_count = 2", "concurrent_count = 1");
    let a = Collect::start(&ini);
    let count = |c: &Collect, name: &str| metric(&c.metrics(), name);
    wait_until("the early retry paused", Duration::from_secs(30), || {
        count(&a, "kbridge_collect_delayed_partitions") == 1.0
    });
    let mut other = Collect::start(&ini);
    wait_until(
        "a rebalance with two members",
        Duration::from_secs(30),
        || {
            count(&a, "kbridge_collect_assignments_total") >= 2.0
                && count(&other, "kbridge_collect_assignments_total") >= 1.0
        },
    );
    assert!(other.stop());
    wait_until("the rebalance back to one", Duration::from_secs(30), || {
        count(&a, "kbridge_collect_assignments_total") >= 3.0
    });
    wait_until(
        "the retried message written",
        Duration::from_secs(60),
        || !stored(&dir.0, &topic).0.is_empty(),
    );
    drop(a);
    let lines: Vec<String> = stored(&dir.0, &topic)
        .0
        .into_iter()
        .flat_map(|f| f.lines)
        .collect();
    assert_eq!(lines, vec![r#"{"id":"late"}"#.to_string()]);
}

/// Produces one record with headers (the way a hostile producer could).
fn produce_with_headers(brokers: &str, topic: &str, value: &str, headers: &[(&str, &str)]) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let p: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let h = headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: Some(*v),
        })
    });
    p.send(
        BaseRecord::<'_, str, str>::to(topic)
            .payload(value)
            .headers(h),
    )
    .map_err(|(e, _)| e)
    .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
}

#[test]
fn forged_retry_headers_cannot_write_outside_record_directory_or_pause_a_partition() {
    let b = brokers();
    let topic = unique_topic("col-forged");
    create_topic(&b, &topic, 1);
    let dir = TempDir::new("col-forged");
    let root = dir.0.join("records");
    let forged = [
        ("kbridge-retry-source", "../../pwn/0@1"),
        ("kbridge-retry-at", "99999999999999"),
    ];
    // On the source topic the headers mean nothing; on the retry topic the
    // file goes with the topic the retry topic serves, and the due time
    // waits no longer than retry_delay_ms.
    produce_with_headers(&b, &topic, "{\"id\":\"on-source\"}", &forged);
    let c = Collect::start(&collect_ini(
        &b,
        &unique_topic("g"),
        &topic,
        &root,
        "idle_close_s = 1",
    ));
    produce_with_headers(
        &b,
        &format!("{topic}.retry"),
        "{\"id\":\"on-retry\"}",
        &forged,
    );
    let on_disk = || {
        let (files, _) = stored(&root, &topic);
        files.iter().map(|f| f.lines.len()).sum::<usize>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while on_disk() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of 2 on disk; metrics:\n{}",
            on_disk(),
            c.metrics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(c);
    assert!(
        !dir.0.join("pwn").exists() && !root.join("../../pwn").exists(),
        "nothing outside record_directory"
    );
    let walked = Command::new("find")
        .arg(&dir.0)
        .arg("-type")
        .arg("f")
        .output()
        .unwrap();
    for f in String::from_utf8_lossy(&walked.stdout).lines() {
        assert!(
            f.starts_with(&format!("{}/{topic}/", root.display())),
            "file outside the topic's directory: {f}"
        );
    }
    let (files, _) = stored(&root, &topic);
    let ids: Vec<String> = files
        .iter()
        .flat_map(|f| f.lines.iter().map(|l| id_of(l)))
        .collect();
    assert!(ids.contains(&"on-source".to_string()) && ids.contains(&"on-retry".to_string()));
}
