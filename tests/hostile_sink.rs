//! deliver against hostile endpoints: a raw TCP server that redirects,
//! hangs, closes without answering, breaks an answer off, streams an
//! endless body or a 200 MB one. No message counts as delivered unless the
//! endpoint answered 2xx to the POST that carried it; every message is
//! delivered or parked; threads and memory stay bounded.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::process::spawn_bin;
use crate::util::raw::threads_and_rss;
use crate::util::*;

/// What the hostile endpoint saw: per path, the ids of POSTs it answered
/// with a 2xx status line (the body of each such POST included).
#[derive(Default)]
struct Seen {
    taken: Mutex<HashMap<String, Vec<String>>>,
}

struct Hostile {
    url: String,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn start_hostile() -> Hostile {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/in", listener.local_addr().unwrap());
    let seen: Arc<Seen> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, st2) = (seen.clone(), stop.clone());
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !st2.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((c, _)) => {
                    let (seen, stop) = (s2.clone(), st2.clone());
                    std::thread::spawn(move || serve(c, &seen, &stop));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    Hostile { url, seen, stop }
}

/// One connection: requests in a row, each answered per its id's prefix.
fn serve(c: TcpStream, seen: &Seen, stop: &AtomicBool) {
    c.set_nonblocking(false).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let id = crate::util::sink::ids_of(&body)
            .into_iter()
            .next()
            .unwrap_or_default();
        let took = |seen: &Seen| {
            seen.taken
                .lock()
                .unwrap()
                .entry(path.clone())
                .or_default()
                .push(id.clone())
        };
        let kind = id.split('-').next().unwrap_or("").to_string();
        match kind.as_str() {
            "redirect" => {
                let _ = w.write_all(
                    b"HTTP/1.1 302 Found\r\nLocation: /moved\r\nContent-Length: 0\r\n\r\n",
                );
            }
            "temp" if path != "/real" => {
                let _ = w.write_all(
                    b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /real\r\nContent-Length: 0\r\n\r\n",
                );
            }
            "hang" => {
                // Never answers; waits for the client to give up.
                let mut sink = [0u8; 64];
                while !stop.load(Ordering::Relaxed) && r.read(&mut sink).unwrap_or(0) > 0 {}
                return;
            }
            "close" => return,
            "cut" => {
                // A status line, then the answer breaks off.
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
                return;
            }
            "endless" => {
                took(seen);
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                let chunk = format!("1000\r\n{}\r\n", "x".repeat(0x1000));
                while !stop.load(Ordering::Relaxed) && w.write_all(chunk.as_bytes()).is_ok() {}
                return;
            }
            "huge" => {
                took(seen);
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 209715200\r\n\r\n");
                let zeros = vec![0u8; 64 << 10];
                for _ in 0..(200 * 16) {
                    if stop.load(Ordering::Relaxed) || w.write_all(&zeros).is_err() {
                        return;
                    }
                }
            }
            _ => {
                took(seen);
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
            }
        }
    }
}

#[test]
fn hostile_endpoints_never_count_a_message_delivered_that_they_did_not_take() {
    let b = brokers();
    let topic = unique_topic("hx-sink");
    create_topic(&b, &topic, 2);
    let kinds = ["ok", "redirect", "hang", "close", "cut", "endless", "huge"];
    let mut recs = Vec::new();
    for k in kinds {
        for i in 0..3 {
            recs.push((None, format!("{{\"id\":\"{k}-{i}\"}}")));
        }
    }
    let sink = start_hostile();
    let dir = TempDir::new("hx-sink");
    let admin = free_port();
    let group = unique_topic("g");
    let ini = format!(
        "[kafka]\nbrokers = {b}\n[admin]\nlisten = 127.0.0.1:{admin}\n[deliver]\ngroup_id = {group}\ntopics = {topic}\n\
         target_url = {}\nrequest_timeout_ms = 1500\nmax_retries = 2\nbackoff_initial_ms = 50\ncommit_interval_ms = 200\n",
        sink.url
    );
    let mut bin = spawn_bin(&ini, &dir);
    // Produced once the group settled: a revocation gives up the revoked
    // partitions' unfinished messages at once, and the next owner delivers
    // again what lies above the first of them (at least once), which would
    // blur the count of deliveries this test is about.
    wait_until("the group to settle", Duration::from_secs(60), || {
        let m = agent()
            .get(&format!("http://127.0.0.1:{admin}/metrics"))
            .call()
            .ok()
            .map(|mut r| r.body_mut().read_to_string().unwrap_or_default());
        m.is_some_and(|m| {
            metric(&m, "kbridge_deliver_assigned_partitions") == 2.0
                && metric(&m, "kbridge_deliver_members_without_partitions") == 0.0
        })
    });
    produce(&b, &topic, &recs);
    // Every message delivered or parked: the group commits past all.
    wait_until("every offset committed", Duration::from_secs(120), || {
        committed(&b, &group, &topic, 2).iter().sum::<i64>() == recs.len() as i64
    });
    let (threads, rss) = threads_and_rss(bin.child.id());
    let m = get(&format!("http://127.0.0.1:{admin}/metrics")).body;
    let delivered = metric(&m, "kbridge_deliver_delivered_total");
    let parked = read_exactly(&b, &format!("{topic}.dlq"), 12);
    bin.sigterm();
    assert_eq!(bin.wait_exit(Duration::from_secs(20)).code(), Some(0));

    let taken = sink.seen.taken.lock().unwrap().clone();
    let taken_in: Vec<&String> = taken
        .get("/in")
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    for id in &taken_in {
        assert!(
            ["ok-", "endless-", "huge-"]
                .iter()
                .any(|p| id.starts_with(p)),
            "{id} taken"
        );
    }
    assert_eq!(
        delivered, 9.0,
        "delivered = the 9 messages the endpoint answered 2xx (ok, endless, huge)"
    );
    let mut parked_ids: Vec<String> = parked
        .iter()
        .map(|r| crate::collect::id_of(r.value_str()))
        .collect();
    parked_ids.sort();
    let mut want: Vec<String> = ["close", "cut", "hang", "redirect"]
        .iter()
        .flat_map(|k| (0..3).map(move |i| format!("{k}-{i}")))
        .collect();
    want.sort();
    assert_eq!(parked_ids, want, "the others are parked");
    for r in &parked {
        let reason = r.header("kbridge-dlq-reason");
        if r.value_str().contains("redirect-") {
            assert!(
                reason.contains("HTTP 302") && reason.contains("redirect to /moved"),
                "{reason}"
            );
        } else {
            assert!(reason.contains("after 3 attempts"), "{reason}");
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "hostile sink: delivered {delivered}, parked {}, threads {threads}, RSS {} MiB",
        parked.len(),
        rss >> 20
    );
    assert!(threads < 80, "threads {threads}");
    assert!(rss < 64 << 20, "RSS {} MiB", rss >> 20);
}

#[test]
fn follow_redirects_follows_307_and_308_only_with_method_and_body() {
    let b = brokers();
    let topic = unique_topic("hx-307");
    create_topic(&b, &topic, 1);
    produce(
        &b,
        &topic,
        &[
            (None, "{\"id\":\"temp-1\"}".to_string()),
            (None, "{\"id\":\"redirect-1\"}".to_string()),
        ],
    );
    let sink = start_hostile();
    let mut d = Deliver::of(&b, &topic, &sink.url, "follow_redirects = true");
    let parked = read_exactly(&b, &format!("{topic}.dlq"), 1);
    assert!(
        parked[0].value_str().contains("redirect-1"),
        "302 is not followed"
    );
    wait_until("the 307 followed", Duration::from_secs(30), || {
        sink.seen
            .taken
            .lock()
            .unwrap()
            .get("/real")
            .is_some_and(|v| v.contains(&"temp-1".to_string()))
    });
    // Seen by the sink before its sender counts it: wait for the count.
    wait_until("the 307 counted delivered", Duration::from_secs(10), || {
        metric(&d.metrics(), "kbridge_deliver_delivered_total") >= 1.0
    });
    assert_eq!(metric(&d.metrics(), "kbridge_deliver_delivered_total"), 1.0);
    assert!(d.stop());
}
