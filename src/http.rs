//! Small tiny_http helpers shared by the ingest server and the admin server:
//! JSON responses, error bodies that say what and where, header lookup, and
//! the accept loop that drains queued requests on stop and answers every
//! request even when its handler panics.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use log::{error, warn};
use serde_json::json;
use tiny_http::{Header, Request, Response};

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
