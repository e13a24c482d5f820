//! The dashboard of the admin server: the page at `/` and its assets (all
//! embedded in the binary, so it works with no internet), the query API over
//! the deliver role's aggregates (`/api/aggregates`, [`query`]) and the
//! 15-minute summary of every role's figures (`/api/summary`, [`summary`]).
//!
//! Charts are drawn by uPlot 1.6.32 (MIT, vendored from npm with its
//! licence): ~50 KB, made for time series, no dependencies, no build step.

pub mod query;
pub mod summary;

use std::sync::Arc;

use serde_json::json;

use crate::aggregates::Aggregates;
use crate::http::{self, Reply, error_reply, json_reply};

/// What the dashboard reads besides the roles' telemetry.
#[derive(Clone, Default)]
pub struct Sources {
    /// The deliver role's aggregates, when it runs in this process.
    pub aggregates: Option<Arc<Aggregates>>,
    /// The JSON field the aggregates count values of (`[deliver] aggregate_field`).
    pub field: String,
    /// The roles that run, for the page's title.
    pub roles: Vec<&'static str>,
}

const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    ),
    (
        "/assets/dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/dashboard.js"),
    ),
    (
        "/assets/dashboard.css",
        "text/css; charset=utf-8",
        include_str!("assets/dashboard.css"),
    ),
    (
        "/assets/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/uPlot.iife.min.js"),
    ),
    (
        "/assets/uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("assets/uPlot.min.css"),
    ),
    (
        "/assets/uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_str!("assets/uPlot.LICENSE"),
    ),
];

/// The reply for `path` when the dashboard owns it.
pub fn route(
    path: &str,
    query: &str,
    sources: &Sources,
    summary: &summary::Summary,
) -> Option<Reply> {
    if let Some((_, kind, text)) = ASSETS.iter().find(|(p, _, _)| *p == path) {
        let reply = http::body(200, kind, text.as_bytes().to_vec());
        // The assets change only with the binary; the page itself is small.
        let cache = if path == "/" {
            "no-cache"
        } else {
            "max-age=300"
        };
        return Some(http::with_header(reply, "Cache-Control", cache));
    }
    match path {
        "/api/aggregates" => Some(aggregates(query, sources)),
        "/api/summary" => Some(match summary::parse_since(query) {
            Ok(since) => json_reply(200, &summary.to_json(since, &sources.roles)),
            Err(e) => error_reply(400, &e, json!({ "where": "query" })),
        }),
        _ => None,
    }
}

fn aggregates(query: &str, sources: &Sources) -> Reply {
    let Some(aggs) = &sources.aggregates else {
        return error_reply(
            404,
            "aggregates are kept by the deliver role, which does not run in this process",
            json!({}),
        );
    };
    let now = crate::aggregates::now_ms();
    match query::answer(aggs, &sources.field, query, now) {
        Ok(v) => json_reply(200, &v),
        Err(e) => error_reply(e.status, &e.message, json!({ "where": e.at })),
    }
}
