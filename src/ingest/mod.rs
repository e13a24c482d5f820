//! The ingest role: HTTP POST → Kafka (the seeds' "producer" / "web service").
//!
//! Threads and channels, upstream to downstream:
//! - `ingest-conn` (one per connection, at most `max_connections`): the
//!   vendored tiny_http reads a whole request within its limits, then the
//!   same thread validates the body and `send_timeout`s a
//!   [`produce::Job`] into the bounded job channel (full for
//!   `enqueue_timeout_ms` → 503 + Retry-After) — one thread hop less than a
//!   separate pool of HTTP threads (measured: +5–10 % requests/s);
//! - `ingest-w` (`workers`, default 8): take jobs, hand records to the
//!   librdkafka producer (gzip, acks=all, idempotence);
//! - librdkafka's poll thread: delivery callbacks settle records; the one
//!   that settles a request's last record answers it (200, 207 or 503 with
//!   offsets) — the answer goes to the connection's own thread.
//! - `ingest-probe`: Kafka reachability and partition counts for `/ready`,
//!   creating missing topics.
//!
//! Stop order: the server stops accepting and reading (requests already
//! read are handled; connections close after their answer, dropping the job
//! senders) → workers drain the channel → producer flush → probe → producer
//! dropped (unsettled records answered 503 by their callbacks).

pub mod auth;
pub mod body;
pub mod config;
mod cost;
mod envelope;
pub mod idempotency;
pub mod produce;
pub mod raw;
mod request;
pub mod restproxy;
mod scan;
mod server;
mod telemetry;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crossbeam_channel::Sender;
use log::{error, info, warn};
use rdkafka::producer::Producer as _;

pub use config::{AckMode, IngestConfig};
use idempotency::Shares;
use produce::{IngestContext, Pending, Producer};
use telemetry::IngestMetrics;

use crate::config::KafkaConfig;
use crate::http::with_retry_after;
use crate::kafka::probe::{self, Probe, Replication, TopicPlan};
use crate::kafka::{Context, KafkaStats, client_config};
use crate::pool::WorkerPool;
use crate::shutdown::Stopper;
use crate::stats::Telemetry;

/// How long a probe round waits for the cluster's metadata.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One route as the server sees it.
pub(crate) struct RouteState {
    pub stream: String,
    pub topic: Arc<str>,
    pub format: raw::RouteFormat,
    /// `POST /topics/<topic>` of the REST Proxy v2 API (`rest_proxy_topics`).
    pub rest_proxy: bool,
    /// How its JSON records are encoded (`protobuf:<message>`, `avro`).
    pub writer: Option<Arc<crate::codec::writer::Writer>>,
}

/// Schema routes ask the registry for their schemas at start, on a thread
/// of their own (start does not wait for the registry), so that the first
/// requests find them; a route still without one answers 503.
fn warm_schemas(routes: &[RouteState]) {
    let writers: Vec<_> = routes.iter().filter_map(|r| r.writer.clone()).collect();
    if writers.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("ingest-schemas".into())
        .spawn(move || {
            for w in writers {
                let _ = w.encoder();
            }
        });
    if let Err(e) = spawned {
        log::warn!("schemas are asked for at the first requests: {e}");
    }
}

/// State the HTTP threads and the delivery callbacks share (read-mostly).
pub(crate) struct Shared {
    pub config: IngestConfig,
    pub routes: Vec<RouteState>,
    /// `/api/<stream>/v1/` and `/api/<stream>/v1` → route index.
    pub paths: HashMap<String, usize>,
    /// `Idempotency-Key` windows, one per token name.
    pub idempotency: Shares<tiny_http::Request>,
    pub probe: Arc<Probe>,
    pub metrics: IngestMetrics,
    /// The listener's own figures (refusals, connections).
    pub server_stats: Arc<crate::http::ServerStats>,
    /// Request bodies held in memory (`max_buffered_body_bytes`).
    pub budget: Arc<tiny_http::Budget>,
    /// Bearer tokens (`auth_tokens_file`); `None`: every request may write.
    pub auth: Option<Arc<auth::Auth>>,
}

/// A running ingest role.
pub struct Handle {
    addr: SocketAddr,
    stopper: Stopper,
    /// Dropped first at stop: no new request is read.
    server: Option<Arc<tiny_http::Server>>,
    server_stats: Arc<crate::http::ServerStats>,
    workers: WorkerPool,
    probe_thread: JoinHandle<()>,
    producer: Arc<Producer>,
    telemetry: Arc<telemetry::IngestTelemetry>,
    shutdown_timeout: Duration,
}

/// Builds the producer, checks Kafka and creates topics, then starts the
/// threads. `listener` is already bound (tests bind port 0).
pub fn spawn(
    config: IngestConfig,
    kafka: &KafkaConfig,
    listener: TcpListener,
    fatal: Sender<String>,
) -> anyhow::Result<Handle> {
    let auth = match &config.auth_tokens_file {
        None => None,
        Some(path) => {
            let auth = auth::Auth::open(path, &config.streams())
                .map_err(|e| anyhow::anyhow!("[ingest] auth_tokens_file: {e}"))?;
            Some(Arc::new(auth))
        }
    };
    if let Some(a) = &auth {
        let a = a.clone();
        crate::shutdown::on_reload(Box::new(move || a.reload()));
    }
    let kafka_stats = Arc::new(KafkaStats::default());
    let context = IngestContext {
        base: Context::new("ingest", kafka_stats.clone(), fatal.clone()),
        shared: std::sync::OnceLock::new(),
    };
    let producer: Arc<Producer> = Arc::new(
        client_config(kafka, &config.producer)
            .create_with_context(context)
            .context("cannot create the Kafka producer")?,
    );
    let admin_config = client_config(kafka, &[]);
    let plan = TopicPlan {
        topics: config.topics(),
        create: config.create_topics,
        partitions: config.topic_partitions,
        replication: Replication::Fixed(config.topic_replication_factor),
    };
    let probe = Arc::new(Probe::default());
    probe.check(
        producer.client(),
        &admin_config,
        &plan,
        Duration::from_secs(5),
    );
    if !probe.reachable() {
        warn!(
            "Kafka not reachable at start ({}); requests wait for it",
            kafka.brokers
        );
    }

    if config.http_threads.is_some() {
        warn!(
            "[ingest] http_threads is no longer used: each request is read and validated on its connection's own thread (see max_connections)"
        );
    }
    let addr = listener.local_addr()?;
    let server_stats = Arc::new(crate::http::ServerStats::default());
    // Requests are handled on the thread of the connection that read them;
    // the handler's state is set once built (below).
    let slot: Arc<std::sync::OnceLock<(Arc<Shared>, Sender<produce::Job>)>> = Arc::default();
    let http_gauges = Arc::new(crate::pool::PoolGauges {
        name: "ingest-http".into(),
        size: config.limits.max_connections,
        ..Default::default()
    });
    let inline: tiny_http::InlineHandler = {
        let (slot, gauges) = (slot.clone(), http_gauges.clone());
        Arc::new(move |req| {
            let Some((shared, jobs)) = slot.get() else {
                let r = crate::http::error_reply(503, "ingest is starting", serde_json::json!({}));
                return crate::http::send(req, r);
            };
            let _t = gauges.task();
            // A panic answers this request 500 (its Request drops) and is
            // counted; the connection's thread and everyone else go on.
            let run = std::panic::AssertUnwindSafe(|| server::handle(shared, jobs, req));
            if std::panic::catch_unwind(run).is_err() {
                shared.metrics.panics.inc();
            }
        })
    };
    let mut paths = HashMap::new();
    let mut routes: Vec<RouteState> = config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            paths.insert(format!("/api/{}/v1/", r.stream), i);
            paths.insert(format!("/api/{}/v1", r.stream), i);
            RouteState {
                stream: r.stream.clone(),
                topic: Arc::from(r.topic.as_str()),
                format: r.format,
                rest_proxy: false,
                writer: r.writer.clone(),
            }
        })
        .collect();
    // The REST Proxy topics are routes too (tokens, metrics, budgets).
    for t in &config.rest_proxy_topics {
        paths.insert(format!("/topics/{t}"), routes.len());
        routes.push(RouteState {
            stream: format!("topics/{t}"),
            topic: Arc::from(t.as_str()),
            format: raw::RouteFormat::Json,
            rest_proxy: true,
            writer: None,
        });
    }
    let head_check = auth.as_ref().map(|a| {
        let slot = slot.clone();
        server::head_check(a.clone(), paths.clone(), move |route, status| {
            if let Some((shared, _)) = slot.get() {
                shared.metrics.count_response(route, status);
            }
        })
    });
    let tls = config.tls.as_ref().map(|t| tiny_http::SslConfig {
        certificate: t.cert_pem.clone(),
        private_key: t.key_pem.expose().as_bytes().to_vec(),
    });
    let hooks = crate::http::Hooks {
        inline: Some(inline),
        head_check,
        reserved_paths: Vec::new(),
    };
    let server = server_stats.start("ingest", listener, &config.limits, hooks, tls)?;
    let (jobs_tx, jobs_rx) = crossbeam_channel::bounded::<produce::Job>(config.channel_capacity);

    let shared = Arc::new(Shared {
        metrics: IngestMetrics::new(routes.len()),
        idempotency: Shares::new(
            config.idempotency_window,
            config.idempotency_max_keys,
            config.idempotency_max_bytes,
        ),
        routes,
        paths,
        probe: probe.clone(),
        budget: server.budget(),
        server_stats: server_stats.clone(),
        auth,
        config: config.clone(),
    });
    warm_schemas(&shared.routes);
    let _ = producer.context().shared.set(shared.clone());
    let _ = slot.set((shared.clone(), jobs_tx.clone()));
    let stopper = Stopper::new();

    let workers = {
        let (shared, producer, jobs_rx) = (shared.clone(), producer.clone(), jobs_rx.clone());
        let queue_wait = delivery_timeout(&config.producer);
        WorkerPool::spawn("ingest-w", config.workers, &fatal, move |_, g| {
            while let Ok(job) = jobs_rx.recv() {
                let _t = g.task();
                produce::produce(&producer, job, queue_wait, || {
                    shared.metrics.producer_queue_full.inc()
                });
            }
        })
    };
    let probe_thread = {
        let (producer, probe) = (producer.clone(), probe.clone());
        probe::every_second("ingest-probe", stopper.token(), fatal.clone(), move || {
            probe.check(producer.client(), &admin_config, &plan, PROBE_TIMEOUT)
        })?
    };
    let panics = {
        let s = shared.clone();
        Arc::new(move || s.metrics.panics.get() as usize)
    };
    let telemetry = Arc::new(telemetry::IngestTelemetry::new(
        shared,
        kafka_stats,
        vec![
            crate::pool::PoolView::elastic(
                http_gauges,
                {
                    let s = server_stats.clone();
                    Arc::new(move || s.open_connections())
                },
                panics,
            ),
            workers.view(),
        ],
        jobs_rx,
        stopper.token(),
    ));
    info!(
        "listening on {}://{addr} (routes: {}){}",
        if config.tls.is_some() {
            "https"
        } else {
            "http"
        },
        config
            .routes
            .iter()
            .map(|r| format!("{}→{}", r.stream, r.topic))
            .collect::<Vec<_>>()
            .join(", "),
        if config.auth_tokens_file.is_some() {
            ", bearer tokens required"
        } else {
            ""
        }
    );
    Ok(Handle {
        addr,
        stopper,
        server: Some(server),
        server_stats,
        workers,
        probe_thread,
        producer,
        telemetry,
        shutdown_timeout: config.shutdown_timeout,
    })
}

/// librdkafka's delivery timeout from the producer settings: a full local
/// queue is waited out no longer than a record may take in all.
fn delivery_timeout(producer: &[(String, String)]) -> Duration {
    let ms = producer
        .iter()
        .rev()
        .find(|(k, _)| k == "delivery.timeout.ms" || k == "message.timeout.ms")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .unwrap_or(300_000);
    Duration::from_millis(ms)
}

impl Shared {
    /// Answers a request whose records are all settled.
    pub(crate) fn respond(&self, p: &Pending) {
        let outcomes = p.outcomes();
        let acked = outcomes
            .iter()
            .filter(|o| matches!(o, produce::Outcome::Acked { .. }))
            .count();
        let failed = outcomes.len() - acked;
        self.metrics.records_acked.add(acked as u64);
        self.metrics.records_failed.add(failed as u64);
        let reply = p.reply.lock().ok().and_then(|mut r| r.take());
        let Some(req) = reply else {
            if failed > 0 {
                // Queued mode: the client was told 202; this is real loss.
                self.metrics.lost_queued.add(failed as u64);
                self.metrics.log_loss(failed, &p.topic);
            }
            return;
        };
        let (status, body, content_type) = match self.routes[p.route].rest_proxy {
            true => {
                let (status, body) = restproxy::answer(&outcomes, p.schema_ids);
                (status, body, restproxy::CONTENT_TYPE)
            }
            false => {
                let (status, body) = produce::answer(&p.topic, &outcomes);
                (status, body, "application/json")
            }
        };
        self.finish_idempotent(p.idempotency.as_ref(), status, &body);
        let mut reply = crate::http::body(status, content_type, body.into_bytes());
        if status == 503 {
            reply = with_retry_after(reply, 1);
        }
        self.reply(req, Some(p.route), p.started, reply);
    }
}

impl Handle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn telemetry(&self) -> Arc<dyn Telemetry> {
        self.telemetry.clone()
    }

    /// Starts the drain without waiting (the admin server reports not ready).
    pub fn begin_stop(&self) {
        self.stopper.stop();
    }

    /// Drains in order within `shutdown_timeout_ms`; true when every thread
    /// ended and every record was settled in time.
    pub fn stop(mut self) -> bool {
        let deadline = Instant::now() + self.shutdown_timeout;
        info!("Stopping.");
        self.stopper.stop();
        // No new request is read; those read are answered, then their
        // connections close (and with them the job senders).
        drop(self.server.take());
        let mut clean = true;
        while self.server_stats.open_connections() > 0 {
            if Instant::now() >= deadline {
                clean = false;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        clean &= self.workers.join_until(deadline);
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = self.producer.flush(left) {
            warn!(
                "producer flush did not finish within the shutdown timeout ({e}); unsettled records are answered 503"
            );
            clean = false;
        }
        if self.probe_thread.join().is_err() {
            error!("probe thread panicked");
        }
        // Last owner: dropping purges what is left, whose callbacks settle
        // (and answer) the remaining requests.
        drop(self.producer);
        if !clean {
            error!(
                "ingest did not drain within {} ms",
                self.shutdown_timeout.as_millis()
            );
        }
        info!("Stopped.");
        clean
    }
}
