//! Small tiny_http helpers shared by the ingest server and the admin server:
//! JSON responses, error bodies that say what and where, header lookup, the
//! accept loop that drains queued requests on stop and answers every
//! request even when its handler panics, and the figures of what a server's
//! connections did on their own (refusals over a limit, accept errors).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{error, warn};
use serde_json::json;
use tiny_http::{Header, Request, Response};

use crate::config::limits::HttpLimits;
use crate::metrics::{Counter, Prom};
use crate::shutdown::StopToken;

pub type Reply = Response<Cursor<Vec<u8>>>;

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

/// A response with a body and a content type.
pub fn body(status: u16, content_type: &str, bytes: Vec<u8>) -> Reply {
    let mut r = Response::from_data(bytes).with_status_code(status);
    if let Some(h) = header("Content-Type", content_type) {
        r.add_header(h);
    }
    r
}

pub fn json_reply(status: u16, value: &serde_json::Value) -> Reply {
    body(status, "application/json", value.to_string().into_bytes())
}

/// `{"status": 400, "error": "...", ...extra}`.
pub fn error_reply(status: u16, message: &str, extra: serde_json::Value) -> Reply {
    let mut v = json!({ "status": status, "error": message });
    if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
    json_reply(status, &v)
}

/// Adds `Retry-After: secs`.
pub fn with_retry_after(mut r: Reply, secs: u64) -> Reply {
    if let Some(h) = header("Retry-After", &secs.to_string()) {
        r.add_header(h);
    }
    r
}

pub fn with_header(mut r: Reply, name: &str, value: &str) -> Reply {
    if let Some(h) = header(name, value) {
        r.add_header(h);
    }
    r
}

/// Sends `reply`; a client that went away is not an error of ours.
pub fn send(req: Request, reply: Reply) {
    if let Err(e) = req.respond(reply) {
        log::debug!("client went away before the response: {e}");
    }
}

/// First value of a header, case-insensitive.
pub fn header_value<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// Path and query of a request URL.
pub fn split_url(url: &str) -> (&str, &str) {
    match url.split_once('?') {
        Some((p, q)) => (p, q),
        None => (url, ""),
    }
}

/// Takes requests until `stop`, then drains what is already queued, so no
/// accepted request is dropped unanswered. A panicking handler is counted by
/// `on_panic`; tiny_http answers its dropped request with 500.
pub fn serve<F, P>(server: &tiny_http::Server, stop: &StopToken, mut handle: F, on_panic: P)
where
    F: FnMut(Request),
    P: Fn(),
{
    let mut run = |req: Request| {
        if catch_unwind(AssertUnwindSafe(|| handle(req))).is_err() {
            error!("request handler panicked; answered 500");
            on_panic();
        }
    };
    while !stop.is_stopped() {
        match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(req)) => run(req),
            Ok(None) => {}
            Err(e) => warn!("accepting a request failed: {e}"),
        }
    }
    while let Ok(Some(req)) = server.try_recv() {
        run(req);
    }
}

/// What a server runs of its user's code on the connection threads.
#[derive(Default)]
pub struct Hooks {
    /// Handles each request on the thread that read it (else `recv`).
    pub inline: Option<tiny_http::InlineHandler>,
    /// Judges each head before its body is read (authentication).
    pub head_check: Option<tiny_http::HeadCheck>,
    /// Paths still served (on [`RESERVED_CONNECTIONS`] more connections)
    /// when the server is at `max_connections`: the probes.
    pub reserved_paths: Vec<String>,
}

/// Connections beyond `max_connections` for the reserved paths.
pub const RESERVED_CONNECTIONS: usize = 8;

/// What a server's connections did without a handler, for `/metrics` and
/// the log (accept errors and refused connections at most once per 10 s).
#[derive(Default)]
pub struct ServerStats {
    /// Requests the server refused by itself, by status.
    rejected: Mutex<BTreeMap<u16, u64>>,
    refused: Counter,
    accept_errors: Counter,
    tls_failures: Counter,
    /// Open connections and the body budget of the server (they outlive it:
    /// connections still answering after it stopped accepting count).
    server: OnceLock<(tiny_http::OpenConnections, Arc<tiny_http::Budget>)>,
    last_warn_s: AtomicU64,
    unlogged: AtomicU64,
}

impl ServerStats {
    /// Binds a tiny_http server on `listener` with `limits`; its events land
    /// here. `name` is the server's label and its config section.
    pub fn start(
        self: &Arc<Self>,
        name: &'static str,
        listener: std::net::TcpListener,
        limits: &HttpLimits,
        hooks: Hooks,
        tls: Option<tiny_http::SslConfig>,
    ) -> anyhow::Result<Arc<tiny_http::Server>> {
        let addr = listener.local_addr()?;
        let stats = self.clone();
        let hook = Arc::new(move |e: &tiny_http::ServerEvent| stats.event(name, e));
        let mut l = limits.to_server(name, &format!("{name}-conn"), hook);
        l.inline = hooks.inline;
        l.head_check = hooks.head_check;
        if !hooks.reserved_paths.is_empty() {
            l.reserved_connections = RESERVED_CONNECTIONS;
            l.reserved_paths = hooks.reserved_paths;
        }
        let server = tiny_http::Server::from_listener_with_limits(listener, tls, l)
            .map_err(|e| anyhow::anyhow!("cannot serve on {addr}: {e}"))?;
        let _ = self
            .server
            .set((server.open_connections(), server.budget()));
        Ok(Arc::new(server))
    }

    fn event(&self, name: &str, e: &tiny_http::ServerEvent) {
        match e {
            tiny_http::ServerEvent::Rejected { status, reason } => {
                if let Ok(mut m) = self.rejected.lock() {
                    *m.entry(*status).or_default() += 1;
                }
                log::debug!("{name}: refused a request with {status}: {reason}");
            }
            tiny_http::ServerEvent::Refused => {
                self.refused.inc();
                self.warn_now_and_then(name, "connection refused: max_connections reached");
            }
            tiny_http::ServerEvent::AcceptFailed(err) => {
                self.accept_errors.inc();
                self.warn_now_and_then(name, &format!("accepting a connection failed: {err}"));
            }
            tiny_http::ServerEvent::TlsFailed(err) => {
                self.tls_failures.inc();
                log::debug!("{name}: a TLS handshake failed: {err}");
            }
        }
    }

    fn warn_now_and_then(&self, name: &str, what: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let n = self.unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        let last = self.last_warn_s.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .last_warn_s
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.unlogged.fetch_sub(n, Ordering::Relaxed);
            warn!("{name}: {what} ({n} such events since the last report)");
        }
    }

    /// Open connections now.
    pub fn open_connections(&self) -> usize {
        self.server.get().map_or(0, |(c, _)| c.count())
    }

    /// Request body bytes held in memory now.
    pub fn buffered_bytes(&self) -> usize {
        self.server.get().map_or(0, |(_, b)| b.used())
    }

    /// Writes the figures labelled `server="<name>"`.
    pub fn render(&self, p: &mut Prom<'_>, name: &str) {
        let l = [("server", name)];
        p.describe(
            "kbridge_http_rejected_total",
            "counter",
            "Requests the server refused by itself (malformed, over a limit, too slow), by status.",
        );
        for (status, n) in self.rejected.lock().map(|m| m.clone()).unwrap_or_default() {
            p.sample(
                "kbridge_http_rejected_total",
                &[("server", name), ("status", &status.to_string())],
                n,
            );
        }
        p.single(
            "kbridge_http_refused_connections_total",
            "counter",
            "Connections refused over max_connections.",
            &l,
            self.refused.get(),
        );
        p.single(
            "kbridge_http_accept_errors_total",
            "counter",
            "Failed accepts (e.g. out of file descriptors); accepting goes on.",
            &l,
            self.accept_errors.get(),
        );
        p.single(
            "kbridge_http_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed or timed out (the connection was closed).",
            &l,
            self.tls_failures.get(),
        );
        p.single(
            "kbridge_http_open_connections",
            "gauge",
            "Client connections open now.",
            &l,
            self.open_connections(),
        );
        p.single(
            "kbridge_http_buffered_body_bytes",
            "gauge",
            "Bytes requests hold now: bodies as they arrive, their decoded form and their records until Kafka has them (max_buffered_body_bytes).",
            &l,
            self.buffered_bytes(),
        );
    }
}
