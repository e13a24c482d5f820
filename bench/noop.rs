//! `kbridge-noop`: the benchmarks' no-op HTTP endpoint, on the same
//! (patched) tiny_http as kbridge. Two uses: the reference for ingest's HTTP
//! path (the same load client against a server that does nothing), and the
//! sink deliver posts to, which can also count events, write their ids and
//! measure POST → sink latency from each event's `ts`. On SIGTERM or SIGINT
//! it prints a JSON summary and exits.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "kbridge-noop",
    about = "A no-op HTTP endpoint for the benchmarks"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// Handler threads.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Read the events of each body (JSON object, array or NDJSON): count
    /// them, measure latency from their `ts` (µs since the epoch).
    #[arg(long)]
    events: bool,
    /// With --events: write each event's id to FILE, one per line.
    #[arg(long, value_name = "FILE")]
    ids: Option<PathBuf>,
    /// Answer `_bulk`-style JSON (`{"errors":false,"items":[]}`).
    #[arg(long)]
    bulk: bool,
}

#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    events: AtomicU64,
    bytes: AtomicU64,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// (id, ts) of each event in a body.
fn events_of(body: &[u8]) -> Vec<(String, u64)> {
    let one = |v: &serde_json::Value| {
        Some((v["id"].as_str()?.to_string(), v["ts"].as_u64().unwrap_or(0)))
    };
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        return match &v {
            serde_json::Value::Array(a) => a.iter().filter_map(one).collect(),
            v => one(v).into_iter().collect(),
        };
    }
    body.split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .filter_map(|v| one(&v))
        .collect()
}

fn main() {
    let cli = Cli::parse();
    let server = Arc::new(
        tiny_http::Server::from_listener_with_limits(
            std::net::TcpListener::bind(&cli.listen).expect("listen address"),
            None,
            tiny_http::Limits {
                max_connections: 8192,
                max_body_bytes: 256 << 20,
                max_buffered_body_bytes: 1 << 30,
                thread_name: "noop-conn".into(),
                ..Default::default()
            },
        )
        .expect("server"),
    );
    let seen = Arc::new(Seen::default());
    let latency = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
    ));
    let ids = cli.ids.as_ref().map(|p| {
        Arc::new(Mutex::new(BufWriter::new(
            std::fs::File::create(p).expect("ids file"),
        )))
    });
    let stop = Arc::new(AtomicBool::new(false));
    let answer: &'static str = if cli.bulk {
        r#"{"took":1,"errors":false,"items":[]}"#
    } else {
        "{}"
    };
    let handlers: Vec<_> = (0..cli.threads)
        .map(|_| {
            let (server, seen, latency, ids, stop) = (
                server.clone(),
                seen.clone(),
                latency.clone(),
                ids.clone(),
                stop.clone(),
            );
            let events = cli.events;
            std::thread::spawn(move || {
                let mut body = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Some(mut req)) = server.recv_timeout(Duration::from_millis(100)) else {
                        continue;
                    };
                    body.clear();
                    let _ = req.as_reader().read_to_end(&mut body);
                    seen.requests.fetch_add(1, Ordering::Relaxed);
                    seen.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                    let now = Instant::now();
                    seen.first.lock().unwrap().get_or_insert(now);
                    *seen.last.lock().unwrap() = Some(now);
                    if events {
                        let evs = events_of(&body);
                        seen.events.fetch_add(evs.len() as u64, Ordering::Relaxed);
                        let t = now_us();
                        if let Ok(mut h) = latency.lock() {
                            for (_, ts) in &evs {
                                if *ts > 0 {
                                    h.saturating_record(t.saturating_sub(*ts).max(1));
                                }
                            }
                        }
                        if let Some(ids) = &ids
                            && let Ok(mut f) = ids.lock()
                        {
                            for (id, _) in &evs {
                                let _ = writeln!(f, "{id}");
                            }
                            // Readable while the run goes on (bench/e2e polls it).
                            let _ = f.flush();
                        }
                    }
                    let _ =
                        req.respond(tiny_http::Response::from_string(answer).with_status_code(200));
                }
            })
        })
        .collect();
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]);
    if let Ok(mut s) = signals {
        let _ = s.forever().next();
    }
    stop.store(true, Ordering::Relaxed);
    for h in handlers {
        let _ = h.join();
    }
    if let Some(ids) = &ids {
        let _ = ids.lock().map(|mut f| f.flush());
    }
    let h = latency.lock().unwrap();
    let first = *seen.first.lock().unwrap();
    let last = *seen.last.lock().unwrap();
    let span = match (first, last) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        json!({
            "requests": seen.requests.load(Ordering::Relaxed),
            "events": seen.events.load(Ordering::Relaxed),
            "bytes": seen.bytes.load(Ordering::Relaxed),
            "first_to_last_s": span,
            "latency_ms": { "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": h.max() as f64 / 1000.0 },
        })
    );
}
