//! A sick endpoint gets fewer calls, not more: 45 s of `429 Retry-After: 30`
//! over a 300,000-event backlog cost a handful of calls while the real
//! deliver process stays within 64 MiB and stops fetching; then the
//! endpoint recovers and every event is delivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::util::process::spawn_bin;
use crate::util::raw::threads_and_rss;
use crate::util::*;

/// Answers 429 with `Retry-After: 30` until `until`, then 200; counts.
struct Storm {
    url: String,
    storm_calls: Arc<AtomicU64>,
    ok_calls: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Storm {
    fn start(until: Instant) -> Storm {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}/in", server.server_addr().to_ip().unwrap());
        let (storm_calls, ok_calls) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        for _ in 0..16 {
            let (server, storm_calls, ok_calls, stop) = (
                server.clone(),
                storm_calls.clone(),
                ok_calls.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Some(mut req)) = server.recv_timeout(Duration::from_millis(50)) else {
                        continue;
                    };
                    let mut body = Vec::new();
                    let _ = req.as_reader().read_to_end(&mut body);
                    let r = if Instant::now() < until {
                        storm_calls.fetch_add(1, Ordering::SeqCst);
                        tiny_http::Response::from_string("slow down")
                            .with_status_code(429)
                            .with_header(
                                tiny_http::Header::from_bytes("Retry-After", "30").unwrap(),
                            )
                    } else {
                        ok_calls.fetch_add(1, Ordering::SeqCst);
                        tiny_http::Response::from_string("").with_status_code(200)
                    };
                    let _ = req.respond(r);
                }
            });
        }
        Storm {
            url,
            storm_calls,
            ok_calls,
            stop,
        }
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_429_storm_costs_a_handful_of_calls_and_bounded_memory_then_everything_is_delivered() {
    const N: usize = 300_000;
    let b = brokers();
    let topic = unique_topic("storm");
    create_topic(&b, &topic, 4);
    produce(&b, &topic, &events("s", N));

    let storm_end = Instant::now() + Duration::from_secs(45);
    let sink = Storm::start(storm_end);
    let dir = TempDir::new("storm");
    let admin = free_port();
    let group = unique_topic("g");
    let ini = format!(
        "[kafka]\nbrokers = {b}\n[admin]\nlisten = 127.0.0.1:{admin}\n[deliver]\ngroup_id = {group}\n\
         topics = {topic}\ntarget_url = {}\ncommit_interval_ms = 200\n",
        sink.url
    );
    let mut bin = spawn_bin(&ini, &dir);
    let mut peak = 0u64;
    while Instant::now() < storm_end {
        peak = peak.max(threads_and_rss(bin.child.id()).1);
        std::thread::sleep(Duration::from_millis(250));
    }
    let calls = sink.storm_calls.load(Ordering::SeqCst);
    let m = get(&format!("http://127.0.0.1:{admin}/metrics")).body;
    let consumed = metric(&m, "kbridge_deliver_consumed_total");
    eprintln!(
        "storm: {calls} calls, peak RSS {} MiB, {consumed} consumed",
        peak >> 20
    );
    assert!(calls >= 1, "the endpoint was called");
    assert!(calls <= 36, "{calls} calls in 45 s of 429 Retry-After: 30");
    assert!(peak <= 64 << 20, "peak RSS {} MiB", peak >> 20);
    assert!(
        consumed < 100_000.0,
        "fetching stopped: {consumed} of {N} taken"
    );
    assert!(metric(&m, "kbridge_deliver_endpoint_backoffs_total") >= 1.0);

    wait_until(
        "every event delivered and committed",
        Duration::from_secs(240),
        || committed(&b, &group, &topic, 4).iter().sum::<i64>() == N as i64,
    );
    assert!(sink.ok_calls.load(Ordering::SeqCst) >= N as u64);
    bin.sigterm();
    assert_eq!(bin.wait_exit(Duration::from_secs(20)).code(), Some(0));
}
