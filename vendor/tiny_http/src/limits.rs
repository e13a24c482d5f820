//! kbridge patch: what one connection may cost the server. Every read has a
//! deadline and a cap, bodies are read into memory by the connection's own
//! thread (so request handlers never block on a slow client) within a
//! server-wide byte budget, and the number of open connections is capped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Told of what a server did on its own.
pub type EventHook = Arc<dyn Fn(&ServerEvent) + Send + Sync>;

/// Limits of one server. `section` names where they are configured, so a
/// refusal can say which key to raise (`[ingest] max_header_bytes`).
#[derive(Clone)]
pub struct Limits {
    pub section: String,
    /// Open connections; beyond, a new connection gets 503 and is closed.
    pub max_connections: usize,
    /// Bytes of the request line (method, target, version); beyond: 414.
    pub max_request_line_bytes: usize,
    /// Bytes of all header lines together; beyond: 431.
    pub max_header_bytes: usize,
    /// Header lines; beyond: 431.
    pub max_headers: usize,
    /// Bytes of one request body on the wire; beyond: 413.
    pub max_body_bytes: usize,
    /// Bytes of request bodies held by the server at once, from arrival
    /// until the response is written; beyond: 503 + `Retry-After`.
    pub max_buffered_body_bytes: usize,
    /// From a connection's first byte (or the end of the previous
    /// response) to the end of the request head; beyond: 408.
    pub header_timeout: Duration,
    /// From the end of the head to the end of the body; beyond: 408.
    pub body_timeout: Duration,
    /// Wait for the next request on a kept-alive connection; beyond: closed.
    pub idle_timeout: Duration,
    /// One response write; beyond: the connection is closed.
    pub write_timeout: Duration,
    /// Name of the connection threads (15 characters at most on Linux).
    pub thread_name: String,
    /// Told of refusals, closed connections and accept errors.
    pub on_event: Option<EventHook>,
    /// When set, each request is handed to this on its connection's own
    /// thread instead of the queue behind `recv` (one thread hop less).
    pub inline: Option<InlineHandler>,
    /// When set, every request head passes this before any body byte is
    /// read or any budget reserved (authentication): a refusal is written
    /// and the connection closed; `Ok(Some(name))` is the request's
    /// [`principal`](crate::Request::principal).
    pub head_check: Option<HeadCheck>,
    /// Connections taken beyond `max_connections` for these paths only
    /// (`/health`): one request each, its head within at most 2 s; other
    /// paths on them get the 503 of a full server.
    pub reserved_connections: usize,
    pub reserved_paths: Vec<String>,
}

/// Judges a request head: method, target (path and query), header fields.
pub type HeadCheck = Arc<
    dyn Fn(&crate::Method, &str, &[crate::Header]) -> Result<Option<String>, Refusal> + Send + Sync,
>;

/// The server's own answer to a head it refuses.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
    /// Extra header fields (`WWW-Authenticate`).
    pub headers: Vec<(String, String)>,
}

/// Handles a request on the thread that read it.
pub type InlineHandler = Arc<dyn Fn(crate::Request) + Send + Sync>;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            section: "http".into(),
            max_connections: 1024,
            max_request_line_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
            max_buffered_body_bytes: 64 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            thread_name: "http-conn".into(),
            on_event: None,
            inline: None,
            head_check: None,
            reserved_connections: 0,
            reserved_paths: Vec::new(),
        }
    }
}

/// What the server did on its own, without a handler.
#[derive(Debug)]
pub enum ServerEvent {
    /// A request answered by the server itself (malformed, over a limit,
    /// too slow); the connection was closed after it.
    Rejected { status: u16, reason: String },
    /// A connection over `max_connections`, answered 503 and closed.
    Refused,
    /// `accept` failed (descriptors exhausted, …); accepting goes on.
    AcceptFailed(std::io::Error),
    /// A TLS handshake failed or timed out (kbridge patch); the
    /// connection was closed.
    TlsFailed(String),
}

impl Limits {
    pub(crate) fn event(&self, e: ServerEvent) {
        if let Some(f) = &self.on_event {
            f(&e);
        }
    }
}

/// A server-wide budget of bytes (request bodies held in memory).
#[derive(Debug)]
pub struct Budget {
    max: usize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(max: usize) -> Arc<Budget> {
        Arc::new(Budget {
            max,
            used: AtomicUsize::new(0),
        })
    }

    /// Reserves `n` bytes, or `None` when they would exceed the budget.
    pub fn reserve(self: &Arc<Self>, n: usize) -> Option<Reservation> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let next = used.checked_add(n).filter(|u| *u <= self.max)?;
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Some(Reservation {
                        budget: self.clone(),
                        bytes: n,
                    })
                }
                Err(u) => used = u,
            }
        }
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// Bytes held from a [`Budget`] until dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Reservation {
    /// Holds `n` more bytes, or leaves the reservation as it was.
    pub fn grow(&mut self, n: usize) -> bool {
        match self.budget.reserve(n) {
            Some(mut more) => {
                self.bytes += more.bytes;
                more.bytes = 0;
                true
            }
            None => false,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives back `n` of the held bytes (all when it holds fewer).
    pub fn shrink(&mut self, n: usize) {
        let n = n.min(self.bytes);
        self.budget.used.fetch_sub(n, Ordering::AcqRel);
        self.bytes -= n;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_refuses_beyond_its_max_and_frees_on_drop() {
        let b = Budget::new(100);
        let mut r = b.reserve(60).unwrap();
        assert!(b.reserve(50).is_none());
        assert!(r.grow(40));
        assert!(!r.grow(1));
        assert_eq!(b.used(), 100);
        r.shrink(30);
        assert_eq!((b.used(), r.bytes()), (70, 70));
        r.shrink(usize::MAX);
        assert_eq!((b.used(), r.bytes()), (0, 0));
        assert!(r.grow(100));
        drop(r);
        assert_eq!(b.used(), 0);
        assert!(b.reserve(usize::MAX).is_none());
    }
}
