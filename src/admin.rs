//! The admin HTTP server (`[admin] listen`): `/health` (the process runs),
//! `/ready` (every role can do its work: Kafka reachable, pools running),
//! `/metrics` (Prometheus text of every role). It reads the roles through
//! [`Telemetry`] and never imports a role.

use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;

use serde_json::json;
use tiny_http::Method;

use crate::http::{self, error_reply, json_reply};
use crate::shutdown::StopToken;
use crate::stats::Telemetry;

/// Serves until `stop`; returns the thread.
pub fn spawn(
    listener: TcpListener,
    roles: Vec<Arc<dyn Telemetry>>,
    stop: StopToken,
) -> anyhow::Result<JoinHandle<()>> {
    let addr = listener.local_addr()?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| anyhow::anyhow!("cannot serve on {addr}: {e}"))?;
    log::info!("admin on http://{addr} (/health, /ready, /metrics)");
    Ok(std::thread::Builder::new()
        .name("admin-http".into())
        .spawn(move || {
            http::serve(
                &server,
                &stop,
                |req| {
                    let reply = if *req.method() != Method::Get && *req.method() != Method::Head {
                        http::with_header(error_reply(405, "use GET", json!({})), "Allow", "GET")
                    } else {
                        route(http::split_url(req.url()).0, &roles, &stop)
                    };
                    http::send(req, reply);
                },
                || {},
            );
        })?)
}

fn route(path: &str, roles: &[Arc<dyn Telemetry>], stop: &StopToken) -> http::Reply {
    match path {
        "/health" => json_reply(
            200,
            &json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }),
        ),
        "/ready" => {
            let mut reasons: Vec<String> = roles
                .iter()
                .filter_map(|r| r.readiness().err().map(|e| format!("{}: {e}", r.name())))
                .collect();
            if stop.is_stopped() {
                reasons.push("process is stopping".into());
            }
            let ready = reasons.is_empty();
            json_reply(
                if ready { 200 } else { 503 },
                &json!({ "ready": ready, "reasons": reasons }),
            )
        }
        "/metrics" => {
            let mut out = String::with_capacity(16 * 1024);
            for r in roles {
                r.prometheus(&mut out);
            }
            http::body(
                200,
                "text/plain; version=0.0.4",
                crate::metrics::group_families(&out).into_bytes(),
            )
        }
        "/" => json_reply(
            200,
            &json!({ "endpoints": ["/health", "/ready", "/metrics"] }),
        ),
        other => error_reply(
            404,
            &format!("no admin endpoint {other}; try /health, /ready or /metrics"),
            json!({}),
        ),
    }
}
