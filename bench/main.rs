//! `kbridge-bench`: the load client of seed 001. It POSTs events to a
//! kbridge ingest (or anything that answers like one) from
//! `--concurrent-clients` threads, prints a progress line every
//! `--report-interval` ms and a summary at the end: events/s, MB/s, latency
//! percentiles from an HDR histogram, errors by status. `--json` prints the
//! summary as JSON; `--acked-ids` writes the id of every acknowledged event,
//! so a run can prove that nothing was lost or duplicated. SIGINT or
//! SIGTERM ends a run early, with its summary.

mod event;
mod load;
mod report;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "kbridge-bench",
    version,
    about = "Load client for kbridge ingest: POSTs JSON events and reports throughput, latency and errors"
)]
struct Cli {
    /// Base URL of the ingest (http://host:port); events go to
    /// /api/visit/v1/ and /api/activity/v1/. A URL with a path is used as is.
    #[arg(long, value_name = "URL")]
    web_service: String,
    /// Client threads, each with one keep-alive connection.
    #[arg(long, value_name = "N", default_value_t = 8)]
    concurrent_clients: usize,
    /// Milliseconds between progress lines (on stderr).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    report_interval: u64,
    /// Run this many seconds (default 10 when no --count).
    #[arg(long, value_name = "SECS", conflicts_with = "count")]
    duration: Option<f64>,
    /// Send exactly this many events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Which events: visit, activity, or mixed (alternating).
    #[arg(long, value_enum, default_value = "visit")]
    kind: event::Kind,
    /// Events per POST (> 1: NDJSON).
    #[arg(long, value_name = "N", default_value_t = 1)]
    batch: usize,
    /// Gzip the request bodies (Content-Encoding: gzip).
    #[arg(long)]
    gzip: bool,
    /// Open loop at this many events per second (latency counts from each
    /// request's due time); default: closed loop, as fast as answered.
    #[arg(long, value_name = "EVENTS_PER_S")]
    rate: Option<f64>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Write the id of every acknowledged event to FILE, one per line.
    #[arg(long, value_name = "FILE")]
    acked_ids: Option<PathBuf>,
}

fn urls(base: &str) -> (String, String) {
    let base = base.trim_end_matches('/');
    let has_path = base
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    if has_path {
        (base.to_string(), base.to_string())
    } else {
        (
            format!("{base}/api/visit/v1/"),
            format!("{base}/api/activity/v1/"),
        )
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.concurrent_clients == 0 || cli.batch == 0 || cli.rate.is_some_and(|r| r <= 0.0) {
        eprintln!("kbridge-bench: --concurrent-clients, --batch and --rate must be positive");
        return ExitCode::from(2);
    }
    let (visit_url, activity_url) = urls(&cli.web_service);
    let duration = match (cli.duration, cli.count) {
        (Some(d), _) => Some(Duration::from_secs_f64(d)),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let run = format!("{:06x}", fastrand::u32(..) & 0xff_ffff);
    let settings = json!({
        "web_service": cli.web_service, "concurrent_clients": cli.concurrent_clients,
        "batch": cli.batch, "gzip": cli.gzip, "kind": format!("{:?}", cli.kind).to_lowercase(),
        "rate": cli.rate, "count": cli.count, "duration_s": duration.map(|d| d.as_secs_f64()),
        "run": run,
    });
    let load = load::Load::new(load::Plan {
        visit_url,
        activity_url,
        clients: cli.concurrent_clients,
        batch: cli.batch,
        gzip: cli.gzip,
        kind: cli.kind,
        count: cli.count,
        duration,
        rate: cli.rate,
        keep_ids: cli.acked_ids.is_some(),
        run,
    });
    let stats: Vec<Mutex<report::ThreadStats>> =
        (0..load.plan.clients).map(|_| Mutex::default()).collect();
    let interval = Duration::from_millis(cli.report_interval.max(10));
    // SIGINT or SIGTERM ends the run early: requests under way finish, and
    // the summary (and --acked-ids) covers what was sent.
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, interrupted.clone());
    }
    let elapsed = std::thread::scope(|s| {
        let handles: Vec<_> = (0..load.plan.clients)
            .map(|i| {
                let (load, stats) = (&load, &stats[i]);
                std::thread::Builder::new()
                    .name(format!("bench-c{i}"))
                    .spawn_scoped(s, move || load::client(load, i, stats))
                    .expect("a client thread starts")
            })
            .collect();
        let mut acked = 0;
        let mut next = Instant::now() + interval;
        while handles.iter().any(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
            if interrupted.load(Ordering::Relaxed) {
                load.stop.store(true, Ordering::Relaxed);
            }
            if Instant::now() >= next {
                let (line, a) = report::progress(&stats, load.start.elapsed(), acked, interval);
                eprintln!("{line}");
                acked = a;
                next += interval;
            }
        }
        load.start.elapsed()
    });
    let totals = report::totals(&stats);
    let summary = report::summary_json(&totals, elapsed, settings);
    if cli.json {
        println!("{summary}");
    } else {
        print!("{}", report::summary_text(&summary));
    }
    if let Some(path) = &cli.acked_ids {
        let write = || -> std::io::Result<()> {
            let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
            for s in &stats {
                if let Ok(s) = s.lock() {
                    for id in &s.acked_ids {
                        writeln!(f, "{id}")?;
                    }
                }
            }
            f.flush()
        };
        if let Err(e) = write() {
            eprintln!("kbridge-bench: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_get_the_routes_and_full_urls_stay() {
        assert_eq!(
            urls("http://h:8080/"),
            (
                "http://h:8080/api/visit/v1/".into(),
                "http://h:8080/api/activity/v1/".into()
            )
        );
        assert_eq!(urls("http://h/x/y").0, "http://h/x/y");
    }
}
