//! # Simple usage
//!
//! ## Creating the server
//!
//! The easiest way to create a server is to call `Server::http()`.
//!
//! The `http()` function returns an `IoResult<Server>` which will return an error
//! in the case where the server creation fails (for example if the listening port is already
//! occupied).
//!
//! ```no_run
//! let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! ```
//!
//! A newly-created `Server` will immediately start listening for incoming connections and HTTP
//! requests.
//!
//! ## Receiving requests
//!
//! Calling `server.recv()` will block until the next request is available.
//! This function returns an `IoResult<Request>`, so you need to handle the possible errors.
//!
//! ```no_run
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//!
//! loop {
//!     // blocks until the next request is received
//!     let request = match server.recv() {
//!         Ok(rq) => rq,
//!         Err(e) => { println!("error: {}", e); break }
//!     };
//!
//!     // do something with the request
//!     // ...
//! }
//! ```
//!
//! In a real-case scenario, you will probably want to spawn multiple worker tasks and call
//! `server.recv()` on all of them. Like this:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::thread;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! let server = Arc::new(server);
//! let mut guards = Vec::with_capacity(4);
//!
//! for _ in (0 .. 4) {
//!     let server = server.clone();
//!
//!     let guard = thread::spawn(move || {
//!         loop {
//!             let rq = server.recv().unwrap();
//!
//!             // ...
//!         }
//!     });
//!
//!     guards.push(guard);
//! }
//! ```
//!
//! If you don't want to block, you can call `server.try_recv()` instead.
//!
//! ## Handling requests
//!
//! The `Request` object returned by `server.recv()` contains informations about the client's request.
//! The most useful methods are probably `request.method()` and `request.url()` which return
//! the requested method (`GET`, `POST`, etc.) and url.
//!
//! To handle a request, you need to create a `Response` object. See the docs of this object for
//! more infos. Here is an example of creating a `Response` from a file:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! ```
//!
//! All that remains to do is call `request.respond()`:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! # let request = server.recv().unwrap();
//! # let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! let _ = request.respond(response);
//! ```

// kbridge: upstream code is kept as published; these lints fire on it under
// the newer clippy that lints this workspace member (kbridge's own patch
// files are written to pass them).
#![allow(
    clippy::doc_overindented_list_items,
    clippy::unnecessary_map_or,
    clippy::io_other_error
)]
#![allow(unused_imports, dead_code)] // kbridge: vendored as published; see vendor/README.md
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::match_like_matches_macro)]

#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use zeroize::Zeroizing;

use std::collections::HashMap;
use std::error::Error;
use std::io::Error as IoError;
use std::io::ErrorKind as IoErrorKind;
use std::io::Result as IoResult;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use connection::Connection;
use util::MessagesQueue;

pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use connection::{ConfigListenAddr, ListenAddr, Listener};
pub use request::{ReadWrite, Request};
pub use response::{Response, ResponseBox};
pub use test::TestRequest;
// kbridge patch: per-connection limits, a byte budget, server events.
pub use limits::{
    Budget, EventHook, HeadCheck, InlineHandler, Limits, Refusal, Reservation, ServerEvent,
};
// `OpenConnections` is defined below.

mod client;
mod common;
mod connection;
mod limits;
mod request;
mod response;
mod ssl;
mod test;
mod util;

/// The main class of this library.
///
/// Destroying this object will immediately close the listening socket and the reading
///  part of all the client's connections. Requests that have already been returned by
///  the `recv()` function will not close and the responses will be transferred to the client.
pub struct Server {
    // should be false as long as the server exists
    // when set to true, all the subtasks will close within a few hundreds ms
    close: Arc<AtomicBool>,

    // queue for messages received by child threads
    messages: Arc<MessagesQueue<Message>>,

    // result of TcpListener::local_addr()
    listening_addr: ListenAddr,

    // kbridge patch: open connections (shut down when the server is
    // dropped, so their threads end at once) and the body byte budget.
    connections: Arc<Mutex<HashMap<u64, Connection>>>,
    budget: Arc<Budget>,
}

// kbridge patch: a request is large and goes through the queue by value;
// errors are rare.
#[allow(clippy::large_enum_variant)]
enum Message {
    Error(IoError),
    NewRequest(Request),
}

impl From<IoError> for Message {
    fn from(e: IoError) -> Message {
        Message::Error(e)
    }
}

impl From<Request> for Message {
    fn from(rq: Request) -> Message {
        Message::NewRequest(rq)
    }
}

// this trait is to make sure that Server implements Share and Send
#[doc(hidden)]
trait MustBeShareDummy: Sync + Send {}
#[doc(hidden)]
impl MustBeShareDummy for Server {}

pub struct IncomingRequests<'a> {
    server: &'a Server,
}

/// Represents the parameters required to create a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The addresses to try to listen to.
    pub addr: ConfigListenAddr,

    /// If `Some`, then the server will use SSL to encode the communications.
    pub ssl: Option<SslConfig>,
}

/// Configuration of the server for SSL.
#[derive(Debug, Clone)]
pub struct SslConfig {
    /// Contains the public certificate to send to clients.
    pub certificate: Vec<u8>,
    /// Contains the ultra-secret private key used to decode communications.
    pub private_key: Vec<u8>,
}

impl Server {
    /// Shortcut for a simple server on a specific address.
    #[inline]
    pub fn http<A>(addr: A) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: None,
        })
    }

    /// Shortcut for an HTTPS server on a specific address.
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    #[inline]
    pub fn https<A>(
        addr: A,
        config: SslConfig,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: Some(config),
        })
    }

    #[cfg(unix)]
    #[inline]
    /// Shortcut for a UNIX socket server at a specific path
    pub fn http_unix(
        path: &std::path::Path,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::unix_from_path(path),
            ssl: None,
        })
    }

    /// Builds a new server that listens on the specified address.
    pub fn new(config: ServerConfig) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = config.addr.bind()?;
        Self::from_listener(listener, config.ssl)
    }

    /// Builds a new server using the specified TCP listener, with the
    /// default [`Limits`].
    ///
    /// This is useful if you've constructed TcpListener using some less usual method
    /// such as from systemd. For other cases, you probably want the `new()` function.
    pub fn from_listener<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Self::from_listener_with_limits(listener, ssl_config, Limits::default())
    }

    /// kbridge patch: a server whose connections obey `limits`.
    ///
    /// One accept thread; each connection is served by a thread of its own
    /// (see `client.rs`), at most `max_connections` at once: beyond, a new
    /// connection is answered 503 and closed. An accept error is reported
    /// and survived; accepting ends only when the server is dropped.
    pub fn from_listener_with_limits<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
        limits: Limits,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = listener.into();
        // building the "close" variable
        let close_trigger = Arc::new(AtomicBool::new(false));

        // building the TcpListener
        let (server, local_addr) = {
            let local_addr = listener.local_addr()?;
            log::debug!("Server listening on {}", local_addr);
            (listener, local_addr)
        };

        // building the SSL capabilities
        #[cfg(all(feature = "ssl-openssl", feature = "ssl-rustls"))]
        compile_error!(
            "Features 'ssl-openssl' and 'ssl-rustls' must not be enabled at the same time"
        );
        #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
        type SslContext = ();
        #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
        type SslContext = crate::ssl::SslContextImpl;
        let ssl: Option<Arc<SslContext>> = {
            match ssl_config {
                #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
                Some(config) => Some(Arc::new(SslContext::from_pem(
                    config.certificate,
                    Zeroizing::new(config.private_key),
                )?)),
                #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
                Some(_) => return Err(
                    "Building a server with SSL requires enabling the `ssl` feature in tiny-http"
                        .into(),
                ),
                None => None,
            }
        };

        let messages = MessagesQueue::with_capacity(8);
        let limits = Arc::new(limits);
        let budget = Budget::new(limits.max_buffered_body_bytes);
        let connections: Arc<Mutex<HashMap<u64, Connection>>> = Arc::default();
        let ctx = Arc::new(client::Ctx {
            limits: limits.clone(),
            budget: budget.clone(),
            closing: close_trigger.clone(),
        });

        let inside_close_trigger = close_trigger.clone();
        let waiting: Waiting = Arc::default();
        let reserved_paths = !limits.reserved_paths.is_empty();
        let inside_messages = messages.clone();
        let inside_connections = connections.clone();
        thread::Builder::new()
            .name(format!(
                "{}-accept",
                limits.thread_name.trim_end_matches("-conn")
            ))
            .spawn(move || {
                // a tasks pool is used to dispatch the connections into threads
                let tasks_pool = util::TaskPool::with_name(&limits.thread_name);
                let next_id = AtomicU64::new(0);

                log::debug!("Running accept thread");
                while !inside_close_trigger.load(Relaxed) {
                    let sock = match server.accept() {
                        Ok((sock, _)) => sock,
                        Err(e) => {
                            if inside_close_trigger.load(Relaxed) {
                                break;
                            }
                            // Out of descriptors (or a connection reset
                            // before accept): report, pause, go on.
                            limits.event(ServerEvent::AcceptFailed(e));
                            thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    };
                    if inside_close_trigger.load(Relaxed) {
                        break;
                    }
                    let open = inside_connections.lock().map(|c| c.len()).unwrap_or(0);
                    // Beyond the cap, a few more for the reserved paths; when
                    // those are taken too, the oldest of them still waiting
                    // for its head makes room (a probe sends its head at
                    // once: idle sockets cannot hold the reserve).
                    let reserved = open >= limits.max_connections;
                    let full = open >= limits.max_connections + limits.reserved_connections;
                    if full && (!reserved_paths || !evict_oldest_waiting(&waiting)) {
                        refuse_connection(&sock, &limits);
                        limits.event(ServerEvent::Refused);
                        continue;
                    }
                    let _ = sock.set_nodelay();
                    let id = next_id.fetch_add(1, Relaxed);
                    if let (Ok(mut c), Ok(clone)) = (inside_connections.lock(), sock.try_clone()) {
                        c.insert(id, clone);
                    }
                    let (messages, connections, ctx, ssl) = (
                        inside_messages.clone(),
                        inside_connections.clone(),
                        ctx.clone(),
                        ssl.clone(),
                    );
                    // A reserved connection is evictable until its head is in.
                    let head_in = reserved.then(|| {
                        let flag = Arc::new(AtomicBool::new(false));
                        if let (Ok(mut w), Ok(clone)) = (waiting.lock(), sock.try_clone()) {
                            w.retain(|(done, _)| !done.load(Relaxed));
                            w.push_back((flag.clone(), clone));
                        }
                        flag
                    });
                    let mut sock = Some(sock);
                    tasks_pool.spawn(Box::new(move || {
                        let Some(sock) = sock.take() else { return };
                        let _ = &ssl;
                        use util::RefinedTcpStream;
                        let streams = match ssl {
                            None => Some(RefinedTcpStream::new(sock)),
                            // The handshake runs here, on the connection's
                            // own thread, never in the accept loop.
                            // kbridge patch: a client that never finishes its
                            // handshake is cut after header_timeout, as one that
                            // never finishes its request head.
                            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
                            Some(ref ssl) => {
                                let _ = sock.set_read_timeout(Some(ctx.limits.header_timeout));
                                let _ = sock.set_write_timeout(Some(ctx.limits.write_timeout));
                                match ssl.accept(sock) {
                                    Ok(s) => Some(RefinedTcpStream::new(s)),
                                    Err(e) => {
                                        ctx.limits.event(ServerEvent::TlsFailed(e.to_string()));
                                        None
                                    }
                                }
                            }
                            #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
                            Some(_) => None,
                        };
                        if let Some((read, write)) = streams {
                            match ctx.limits.inline.clone() {
                                Some(handle) => client::serve(
                                    read,
                                    write,
                                    &ctx,
                                    head_in.as_ref(),
                                    &|rq: Request| handle(rq),
                                ),
                                None => client::serve(
                                    read,
                                    write,
                                    &ctx,
                                    head_in.as_ref(),
                                    &|rq: Request| messages.push(rq.into()),
                                ),
                            }
                        }
                        if let Some(gone) = &head_in {
                            // Gone is as good as served: nothing to evict.
                            gone.store(true, Relaxed);
                        }
                        if let Ok(mut c) = connections.lock() {
                            c.remove(&id);
                        }
                    }));
                }
                log::debug!("Terminating accept thread");
            })?;

        // result
        Ok(Server {
            messages,
            close: close_trigger,
            listening_addr: local_addr,
            connections,
            budget,
        })
    }

    /// Returns an iterator for all the incoming requests.
    ///
    /// The iterator will return `None` if the server socket is shutdown.
    #[inline]
    pub fn incoming_requests(&self) -> IncomingRequests<'_> {
        IncomingRequests { server: self }
    }

    /// Returns the address the server is listening to.
    #[inline]
    pub fn server_addr(&self) -> ListenAddr {
        self.listening_addr.clone()
    }

    /// Returns the number of clients currently connected to the server.
    pub fn num_connections(&self) -> usize {
        self.connections.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// kbridge patch: a count of open connections that outlives the server
    /// (connections still answering after it was dropped count).
    pub fn open_connections(&self) -> OpenConnections {
        OpenConnections(self.connections.clone())
    }

    /// kbridge patch: the budget of request body bytes held in memory;
    /// handlers may reserve from it what they hold beyond the wire body.
    pub fn budget(&self) -> Arc<Budget> {
        self.budget.clone()
    }

    /// Blocks until an HTTP request has been submitted and returns it.
    pub fn recv(&self) -> IoResult<Request> {
        match self.messages.pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(rq),
            None => Err(IoError::new(IoErrorKind::Other, "thread unblocked")),
        }
    }

    /// Same as `recv()` but doesn't block longer than timeout
    pub fn recv_timeout(&self, timeout: Duration) -> IoResult<Option<Request>> {
        match self.messages.pop_timeout(timeout) {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Same as `recv()` but doesn't block.
    pub fn try_recv(&self) -> IoResult<Option<Request>> {
        match self.messages.try_pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Unblock thread stuck in recv() or incoming_requests().
    /// If there are several such threads, only one is unblocked.
    /// This method allows graceful shutdown of server.
    pub fn unblock(&self) {
        self.messages.unblock();
    }
}

impl Iterator for IncomingRequests<'_> {
    type Item = Request;
    fn next(&mut self) -> Option<Request> {
        self.server.recv().ok()
    }
}

/// kbridge patch: the open connections of a server (see
/// [`Server::open_connections`]).
#[derive(Clone)]
pub struct OpenConnections(Arc<Mutex<HashMap<u64, Connection>>>);

impl OpenConnections {
    pub fn count(&self) -> usize {
        self.0.lock().map(|c| c.len()).unwrap_or(0)
    }
}

/// Reserved connections in arrival order: head read, the socket.
type Waiting = Arc<Mutex<std::collections::VecDeque<(Arc<AtomicBool>, Connection)>>>;

/// Closes the oldest reserved connection whose head is not in yet; false
/// when there is none.
fn evict_oldest_waiting(waiting: &Waiting) -> bool {
    let Ok(mut w) = waiting.lock() else {
        return false;
    };
    while let Some((done, sock)) = w.pop_front() {
        if !done.load(Relaxed) {
            let _ = sock.shutdown(Shutdown::Both);
            return true;
        }
    }
    false
}

/// Why a full server refuses.
pub(crate) fn full(limits: &Limits) -> String {
    format!(
        "{} open connections, the most this server takes ([{}] max_connections); retry shortly",
        limits.max_connections, limits.section
    )
}

/// Answers a connection over `max_connections` without blocking, and closes it.
fn refuse_connection(sock: &Connection, limits: &Limits) {
    use std::io::Write;
    let body = format!("{{\"status\":503,\"error\":\"{}\"}}", full(limits));
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if sock.set_nonblocking().is_ok() {
        if let Ok(mut s) = sock.try_clone() {
            let _ = s.write_all(msg.as_bytes());
        }
    }
    let _ = sock.shutdown(Shutdown::Both);
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close.store(true, Relaxed);
        // kbridge patch: end the connections' reads, so their threads stop
        // now instead of at their idle timeout.
        if let Ok(c) = self.connections.lock() {
            for conn in c.values() {
                let _ = conn.shutdown(Shutdown::Read);
            }
        }
        // Connect briefly to ourselves to unblock the accept thread
        let maybe_stream = match &self.listening_addr {
            ListenAddr::IP(addr) => TcpStream::connect(addr).map(Connection::from),
            #[cfg(unix)]
            ListenAddr::Unix(addr) => {
                // TODO: use connect_addr when its stabilized.
                let path = addr.as_pathname().unwrap();
                std::os::unix::net::UnixStream::connect(path).map(Connection::from)
            }
        };
        if let Ok(stream) = maybe_stream {
            let _ = stream.shutdown(Shutdown::Both);
        }

        #[cfg(unix)]
        if let ListenAddr::Unix(addr) = &self.listening_addr {
            if let Some(path) = addr.as_pathname() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
