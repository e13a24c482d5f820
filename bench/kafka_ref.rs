//! `kbridge-kafka-ref`: the benchmarks' direct librdkafka producer, with
//! ingest's producer settings (gzip, acks=all, idempotence, linger 1 ms).
//! `--clients N`: N threads, each producing one event (or `--batch` events)
//! and waiting for its acknowledgement before the next — what ingest does
//! per request, without HTTP: the reference for ingest's rate. `--fill N`:
//! produces N events as fast as librdkafka takes them (to load a topic for
//! the deliver and collect runs). Prints a JSON summary.

// Shared with kbridge-bench, which also uses the event kinds.
#[path = "event.rs"]
#[allow(dead_code)]
mod event;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use crossbeam_channel::Sender;
use hdrhistogram::Histogram;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "kbridge-kafka-ref",
    about = "Direct librdkafka producer reference for the benchmarks"
)]
struct Cli {
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// Threads producing and waiting, one request at a time each.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Events per request (each thread waits for all of them).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Instead: produce this many events as fast as possible.
    #[arg(long, value_name = "N")]
    fill: Option<u64>,
    /// Extra librdkafka properties, key=value.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

struct Ctx;

impl rdkafka::ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<Sender<bool>>;
    fn delivery(&self, r: &DeliveryResult<'_>, o: Self::DeliveryOpaque) {
        let _ = o.send(r.is_ok());
    }
}

fn main() {
    let cli = Cli::parse();
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &cli.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.codec", "gzip")
        .set("linger.ms", "1")
        .set("batch.size", "1000000");
    for kv in &cli.set {
        if let Some((k, v)) = kv.split_once('=') {
            cfg.set(k, v);
        }
    }
    let producer: Arc<ThreadedProducer<Ctx>> =
        Arc::new(cfg.create_with_context(Ctx).expect("producer"));
    if let Some(n) = cli.fill {
        fill(&producer, &cli.topic, n);
        return;
    }
    let stop_at = Instant::now() + Duration::from_secs_f64(cli.duration);
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let hists: Vec<Histogram<u64>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..cli.clients)
            .map(|c| {
                let (producer, acked, failed, topic) =
                    (producer.clone(), acked.clone(), failed.clone(), &cli.topic);
                let batch = cli.batch;
                s.spawn(move || {
                    let mut h =
                        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
                    let (tx, rx) = crossbeam_channel::bounded(batch);
                    let mut payload = Vec::with_capacity(256);
                    let mut seq = 0u64;
                    while Instant::now() < stop_at {
                        let t0 = Instant::now();
                        for _ in 0..batch {
                            payload.clear();
                            event::write_event(
                                &mut payload,
                                &format!("ref-{c}-{seq}"),
                                true,
                                seq,
                                event::now_us(),
                            );
                            seq += 1;
                            let mut r: BaseRecord<'_, [u8], [u8], _> =
                                BaseRecord::with_opaque_to(topic, Box::new(tx.clone()))
                                    .payload(&payload[..]);
                            while let Err((_, back)) = producer.send(r) {
                                r = back;
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        }
                        for _ in 0..batch {
                            match rx.recv() {
                                Ok(true) => acked.fetch_add(1, Ordering::Relaxed),
                                _ => failed.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                        h.saturating_record((t0.elapsed().as_micros() as u64).max(1));
                    }
                    h
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let mut all = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    for h in &hists {
        let _ = all.add(h);
    }
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        json!({
            "events_per_s": acked.load(Ordering::Relaxed) as f64 / secs,
            "events_acked": acked.load(Ordering::Relaxed),
            "failed": failed.load(Ordering::Relaxed),
            "latency_ms": { "p50": ms(0.5), "p99": ms(0.99), "max": all.max() as f64 / 1000.0 },
        })
    );
}

fn fill(producer: &ThreadedProducer<Ctx>, topic: &str, n: u64) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let start = Instant::now();
    let mut payload = Vec::with_capacity(256);
    for seq in 0..n {
        payload.clear();
        event::write_event(
            &mut payload,
            &format!("fill-{seq}"),
            seq.is_multiple_of(2),
            seq,
            event::now_us(),
        );
        let mut r: BaseRecord<'_, [u8], [u8], _> =
            BaseRecord::with_opaque_to(topic, Box::new(tx.clone())).payload(&payload[..]);
        while let Err((_, back)) = producer.send(r) {
            r = back;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let _ = producer.flush(Duration::from_secs(120));
    drop(tx);
    let ok = rx.iter().filter(|ok| *ok).count();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({ "events_acked": ok, "events_per_s": ok as f64 / secs, "bytes_per_event": payload.len() })
    );
}
