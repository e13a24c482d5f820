//! The admin HTTP server (`[admin] listen`): `/health` (the process runs),
//! `/ready` (every role can do its work: Kafka reachable, pools running),
//! `/metrics` (Prometheus text of every role), `/log-level`, and the
//! dashboard (`/`, `/assets/…`, `/api/…`, see [`crate::dashboard`]). It
//! reads the roles through [`Telemetry`] and never imports a role.
//!
//! It answers only requests whose `Host` is an IP address, `localhost`, or
//! a name of `[admin] allowed_hosts`: a web page of another name that the
//! attacker makes resolve to this machine (DNS rebinding) is same-origin
//! for the browser, but its requests carry its own name and get 421. The
//! one request that changes state, `PUT /log-level`, is a method no page
//! can send to another origin without a preflight, and no CORS header is
//! ever sent.

use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;

use serde_json::json;
use tiny_http::Method;

use crate::config::limits::HttpLimits;
use crate::dashboard::{self, Sources, summary::Summary};
use crate::http::{self, ServerStats, error_reply, json_reply};
use crate::shutdown::StopToken;
use crate::stats::Telemetry;

/// Serves until `stop`; returns the thread.
pub fn spawn(
    listener: TcpListener,
    limits: &HttpLimits,
    allowed_hosts: &[String],
    roles: Vec<Arc<dyn Telemetry>>,
    sources: Sources,
    stop: StopToken,
    fatal: crossbeam_channel::Sender<String>,
) -> anyhow::Result<JoinHandle<()>> {
    let summary = Arc::new(Summary::default());
    dashboard::summary::spawn_sampler(summary.clone(), roles.clone(), stop.clone(), fatal.clone())?;
    let watch = crate::panics::Watch::new("admin-http", fatal);
    let addr = listener.local_addr()?;
    let stats = Arc::new(ServerStats::default());
    let allowed_hosts = allowed_hosts.to_vec();
    // Every request is answered on its connection's own thread: a slow
    // query holds its own connection only, never `/health` or `/ready`,
    // which are served even at the connection cap (reserved connections).
    let handler: tiny_http::InlineHandler = {
        let (stats, stop) = (stats.clone(), stop.clone());
        let panicked = Arc::new(crate::metrics::Counter::default());
        Arc::new(move |req| {
            let run = std::panic::AssertUnwindSafe(|| {
                handle(
                    req,
                    &allowed_hosts,
                    &roles,
                    &sources,
                    &summary,
                    &stats,
                    &stop,
                )
            });
            if std::panic::catch_unwind(run).is_err() {
                panicked.inc();
                log::error!("admin request handler panicked; answered 500");
            }
        })
    };
    let hooks = crate::http::Hooks {
        inline: Some(handler),
        reserved_paths: vec!["/health".into(), "/ready".into()],
        ..Default::default()
    };
    // Said before the first request can be answered.
    if !addr.ip().is_loopback() {
        log::warn!(
            "admin on the non-loopback address {addr} ([admin] allow_remote = true): anyone who reaches it reads the metrics and can change the log level"
        );
    }
    let server = stats.start("admin", listener, limits, hooks, None)?;
    log::info!("admin on http://{addr} (dashboard at /; /health, /ready, /metrics)");
    Ok(std::thread::Builder::new()
        .name("admin-http".into())
        .spawn(move || {
            let _watch = watch;
            while !stop.wait(std::time::Duration::from_millis(500)) {}
            // Connections still open finish the request they read.
            drop(server);
        })?)
}

/// Answers one admin request.
fn handle(
    mut req: tiny_http::Request,
    allowed_hosts: &[String],
    roles: &[Arc<dyn Telemetry>],
    sources: &Sources,
    summary: &Summary,
    stats: &ServerStats,
    stop: &StopToken,
) {
    let host = http::header_value(&req, "Host");
    if !host_allowed(host, allowed_hosts) {
        let msg = format!(
            "Host {:?} is not a name of this admin server: use its IP address or localhost, \
             or add the name to [admin] allowed_hosts",
            host.unwrap_or_default()
        );
        return http::send(req, error_reply(421, &msg, json!({})));
    }
    let (path, query) = http::split_url(req.url());
    let (path, query) = (path.to_string(), query.to_string());
    let reply = match (req.method(), path.as_str()) {
        (Method::Put, "/log-level") => put_log_level(&mut req),
        (Method::Put, p) if p.starts_with("/subscriptions/") => put_subscription(&req, p, roles),
        (Method::Get | Method::Head, "/subscriptions") => {
            let subs: Vec<serde_json::Value> = roles
                .iter()
                .filter_map(|r| r.subscription())
                .map(|(name, suspended)| json!({ "name": name, "suspended": suspended }))
                .collect();
            json_reply(200, &json!({ "subscriptions": subs }))
        }
        (Method::Get | Method::Head, "/log-level") => {
            json_reply(200, &json!({ "level": crate::logging::current() }))
        }
        (Method::Get | Method::Head, _) => dashboard::route(&path, &query, sources, summary)
            .unwrap_or_else(|| route(&path, roles, stats, stop)),
        _ => http::with_header(
            error_reply(
                405,
                "use GET (or PUT /log-level, PUT /subscriptions/<name>/suspend|resume)",
                json!({}),
            ),
            "Allow",
            "GET, PUT",
        ),
    };
    http::send(req, reply);
}

/// Is `host` (a `Host` header, maybe with a port) a name this server
/// answers to: an IP address, `localhost`, or one of `allowed` (pure)?
/// Without a header (HTTP/1.0) the request came from no browser page.
pub fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    let Some(host) = host.map(str::trim) else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(&name))
}

/// `PUT /subscriptions/<name>/suspend` or `…/resume` (`deliver` names
/// `[deliver]`): from the machine itself only, like `PUT /log-level`.
fn put_subscription(
    req: &tiny_http::Request,
    path: &str,
    roles: &[Arc<dyn Telemetry>],
) -> http::Reply {
    if !req.remote_addr().is_none_or(|a| a.ip().is_loopback()) {
        return error_reply(
            403,
            "PUT /subscriptions/… is accepted from loopback only",
            json!({}),
        );
    }
    let rest = path.trim_start_matches("/subscriptions/");
    let (name, suspend) = match rest.rsplit_once('/') {
        Some((n, "suspend")) => (n, true),
        Some((n, "resume")) => (n, false),
        _ => {
            let msg = format!("PUT /subscriptions/<name>/suspend or /resume, got {path}");
            return error_reply(404, &msg, json!({}));
        }
    };
    match roles
        .iter()
        .find(|r| r.subscription().is_some_and(|(n, _)| n == name))
    {
        Some(r) if r.set_suspended(suspend) => {
            json_reply(200, &json!({ "subscription": name, "suspended": suspend }))
        }
        _ => {
            let known: Vec<&str> = roles
                .iter()
                .filter_map(|r| r.subscription().map(|s| s.0))
                .collect();
            let msg = format!(
                "no subscription {name:?}; subscriptions: {}",
                known.join(", ")
            );
            error_reply(404, &msg, json!({}))
        }
    }
}

/// `PUT /log-level` with a body such as `debug` or
/// `info,kbridge::deliver=debug`: from the machine itself only, whatever
/// address the admin server listens on.
fn put_log_level(req: &mut tiny_http::Request) -> http::Reply {
    let local = req.remote_addr().is_none_or(|a| a.ip().is_loopback());
    if !local {
        let msg = "PUT /log-level is accepted from loopback only";
        return error_reply(403, msg, json!({}));
    }
    let mut body = String::new();
    if std::io::Read::read_to_string(req.as_reader(), &mut body).is_err() {
        return error_reply(400, "the body must be UTF-8 text such as debug", json!({}));
    }
    let who = format!(
        "PUT /log-level from {}",
        req.remote_addr()
            .map_or("a local socket".into(), |a| a.to_string())
    );
    match crate::logging::set(body.trim(), &who) {
        Ok(level) => json_reply(200, &json!({ "level": level })),
        Err(e) => error_reply(400, &format!("log level {:?}: {e}", body.trim()), json!({})),
    }
}

fn route(
    path: &str,
    roles: &[Arc<dyn Telemetry>],
    stats: &ServerStats,
    stop: &StopToken,
) -> http::Reply {
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
            let mut p = crate::metrics::Prom::new(&mut out);
            stats.render(&mut p, "admin");
            p.single(
                "kbridge_panics_total",
                "counter",
                "Panics since start, caught or not (each logged as ERROR; a dead thread stops the process).",
                &[],
                crate::panics::count(),
            );
            http::body(
                200,
                "text/plain; version=0.0.4",
                crate::metrics::group_families(&out).into_bytes(),
            )
        }
        other => error_reply(
            404,
            &format!(
                "no admin endpoint {other}; try / (the dashboard), /health, /ready, /metrics, /log-level, /api/summary or /api/aggregates"
            ),
            json!({}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_localhost_and_allowed_names_are_answered() {
        let allowed = vec!["kbridge.internal".to_string()];
        for ok in [
            "127.0.0.1:8081",
            "127.0.0.1",
            "[::1]:8081",
            "10.1.2.3:8081",
            "localhost:8081",
            "LOCALHOST",
            "app.localhost",
            "kbridge.internal:8081",
            "kbridge.internal.",
        ] {
            assert!(host_allowed(Some(ok), &allowed), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:8081",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "",
        ] {
            assert!(!host_allowed(Some(bad), &allowed), "{bad}");
        }
        assert!(host_allowed(None, &[]));
    }
}
