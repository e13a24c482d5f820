//! A raw HTTP/1.1 client for hostile requests: writes exactly the bytes it
//! is given (from a thread, so a server that stops reading cannot block the
//! test), then reads what comes back until the server closes or a timeout.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What came back on one connection.
#[derive(Debug)]
pub struct Exchange {
    /// Every response status, in order (pipelined requests give several).
    pub statuses: Vec<u16>,
    /// Everything read.
    pub text: String,
    /// The server closed (or reset) the connection within the timeout.
    pub closed: bool,
}

impl Exchange {
    pub fn first(&self) -> Option<u16> {
        self.statuses.first().copied()
    }
}

/// Sends `bytes` on a new connection and reads for up to `wait`.
pub fn exchange(addr: SocketAddr, bytes: Vec<u8>, wait: Duration) -> Exchange {
    let s = TcpStream::connect(addr).expect("connect");
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        // The server may refuse and close before all is sent.
        let _ = w.write_all(&bytes);
    });
    let out = read_until_closed(&s, wait);
    let _ = s.shutdown(Shutdown::Both);
    let _ = writer.join();
    out
}

/// Reads from `s` until it closes or `wait` passes.
pub fn read_until_closed(mut s: &TcpStream, wait: Duration) -> Exchange {
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut closed = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let statuses = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect();
    Exchange {
        statuses,
        text,
        closed,
    }
}

/// A POST of `body` to `path` with `Content-Type: application/json`,
/// `extra` header lines (each ending in CRLF) and a correct length.
pub fn post_bytes(path: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Threads and resident memory (bytes) of process `pid`, from /proc.
pub fn threads_and_rss(pid: u32) -> (usize, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("Threads:") as usize, field("VmRSS:") * 1024)
}

/// The most resident memory process `pid` has held (bytes, VmHWM).
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Raises this process's open-files soft limit to its hard limit (the
/// attack tests hold a thousand sockets).
pub fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
