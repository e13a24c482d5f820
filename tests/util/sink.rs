//! A scripted fake REST endpoint (tiny_http on port 0): records every call
//! (headers, body, answer, time) and answers from a script, many calls at
//! once, tracking the highest number of calls in flight together.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    /// Path and query as the request line had them.
    pub url: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub status: u16,
    pub at: Instant,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_lowercase()).map(String::as_str)
    }
    /// The `id` field of each JSON line / array element / single object.
    pub fn ids(&self) -> Vec<String> {
        ids_of(&self.body)
    }
}

/// Ids in a body: a JSON object, a JSON array, or lines of JSON (NDJSON or
/// `_bulk`, whose action lines carry no `id`).
pub fn ids_of(body: &[u8]) -> Vec<String> {
    let id = |v: &serde_json::Value| v.get("id").and_then(|i| i.as_str()).map(str::to_string);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        return match v {
            serde_json::Value::Array(a) => a.iter().filter_map(id).collect(),
            v => id(&v).into_iter().collect(),
        };
    }
    body.split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .filter_map(|v| id(&v))
        .collect()
}

/// What the endpoint answers.
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            delay: Duration::ZERO,
            headers: vec![],
            body: String::new(),
        }
    }
    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn body(mut self, b: &str) -> Reply {
        self.body = b.into();
        self
    }
}

/// `(call, how many earlier calls carried the same first id)` → reply.
pub type Script = Arc<dyn Fn(&Call, usize) -> Reply + Send + Sync>;

pub struct Sink {
    pub url: String,
    calls: Arc<Mutex<Vec<Call>>>,
    max_concurrent: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Sink {
    pub fn always(status: u16) -> Sink {
        Sink::start(Arc::new(move |_, _| Reply::status(status)))
    }

    pub fn start(script: Script) -> Sink {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}/ingest", server.server_addr().to_ip().unwrap());
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (current, max_concurrent, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let threads = (0..48)
            .map(|_| {
                let (server, calls, seen, script) =
                    (server.clone(), calls.clone(), seen.clone(), script.clone());
                let (current, max_concurrent, stop) =
                    (current.clone(), max_concurrent.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(Some(mut req)) = server.recv_timeout(Duration::from_millis(50))
                        else {
                            continue;
                        };
                        let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                        max_concurrent.fetch_max(now, Ordering::SeqCst);
                        let mut body = Vec::new();
                        req.as_reader().read_to_end(&mut body).unwrap();
                        let headers = req
                            .headers()
                            .iter()
                            .map(|h| {
                                (
                                    h.field.as_str().as_str().to_lowercase(),
                                    h.value.as_str().to_string(),
                                )
                            })
                            .collect();
                        let mut call = Call {
                            method: req.method().to_string(),
                            url: req.url().to_string(),
                            headers,
                            body,
                            status: 0,
                            at: Instant::now(),
                        };
                        let first = call.ids().into_iter().next().unwrap_or_default();
                        let n = {
                            let mut s = seen.lock().unwrap();
                            let e = s.entry(first).or_default();
                            *e += 1;
                            *e - 1
                        };
                        let reply = script(&call, n);
                        call.status = reply.status;
                        calls.lock().unwrap().push(call);
                        // The endpoint's own latency, part of the script.
                        std::thread::sleep(reply.delay);
                        let mut r = tiny_http::Response::from_string(reply.body)
                            .with_status_code(reply.status);
                        for (k, v) in &reply.headers {
                            r.add_header(
                                tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap(),
                            );
                        }
                        current.fetch_sub(1, Ordering::SeqCst);
                        let _ = req.respond(r);
                    }
                })
            })
            .collect();
        Sink {
            url,
            calls,
            max_concurrent,
            stop,
            threads,
        }
    }

    /// Each call's body as JSON, in arrival order.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.calls()
            .iter()
            .map(|c| serde_json::from_slice(&c.body).unwrap())
            .collect()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Ids answered 2xx, with repeats.
    pub fn delivered(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter(|c| (200..300).contains(&c.status))
            .flat_map(Call::ids)
            .collect()
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent.load(Ordering::SeqCst)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
