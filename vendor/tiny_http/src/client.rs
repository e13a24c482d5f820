//! kbridge patch: one client connection, served by one thread from first
//! byte to close. The thread reads a request head within its limits and
//! deadline, checks the framing (`Content-Length`, `Transfer-Encoding`),
//! reads the whole body into memory within the body limits, the server's
//! byte budget and a deadline, hands the request to the handlers, waits for
//! the response and writes it in one go, then reads the next request.
//! Handlers never touch the socket, so no client, however slow, can hold a
//! handler thread; a request the server refuses gets its 4xx/5xx and the
//! connection closes, so no unread byte is ever taken for a request.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ascii::AsciiString;

use crate::common::{HTTPVersion, Header, Method};
use crate::limits::{Budget, Limits, Reservation, ServerEvent};
use crate::request::ResponseSink;
use crate::util::RefinedTcpStream;
use crate::Request;

/// What a request may pass on to the next stage.
pub(crate) struct Ctx {
    pub limits: Arc<Limits>,
    pub budget: Arc<Budget>,
    /// Set when the server is dropped: no new request is read.
    pub closing: Arc<AtomicBool>,
}

/// Reads from the socket, failing with `TimedOut` once the deadline passed;
/// the socket's own timeout is kept near the time left, so no single read
/// waits much beyond it.
struct DeadlineReader {
    inner: RefinedTcpStream,
    deadline: Instant,
    /// The socket read timeout last set.
    set: Option<Duration>,
}

impl DeadlineReader {
    fn until(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        // Re-arm when the socket would wait well past the deadline or cut
        // well before it: a few system calls per phase, not one per read.
        let slack = Duration::from_millis(20).max(left / 8);
        if self
            .set
            .is_none_or(|s| s > left + slack || s + slack < left)
        {
            self.inner.set_read_timeout(Some(left))?;
            self.set = Some(left);
        }
        match self.inner.read(buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => Err(ErrorKind::TimedOut.into()),
            r => r,
        }
    }
}

/// Why no request could be taken from the connection.
enum Fail {
    /// The client left or went quiet between requests: close silently.
    Gone,
    /// Answer `status` with `reason`, then close.
    Refuse(u16, String),
    /// The head check's refusal (with its own header fields), then close.
    Denied(crate::Refusal),
}

fn io_fail(e: std::io::Error, what: &str) -> Fail {
    match e.kind() {
        ErrorKind::TimedOut => Fail::Refuse(408, format!("{what} not received in time")),
        ErrorKind::InvalidData => Fail::Refuse(400, format!("{what}: {e}")),
        _ => Fail::Gone,
    }
}

/// How the body of a request is delimited.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
}

struct Head {
    method: Method,
    path: String,
    version: HTTPVersion,
    headers: Vec<Header>,
}

/// Serves one connection until it closes.
pub(crate) fn serve(
    read: RefinedTcpStream,
    mut write: RefinedTcpStream,
    ctx: &Ctx,
    head_in: Option<&Arc<AtomicBool>>,
    push: &dyn Fn(Request),
) {
    let limits = &ctx.limits;
    let reserved = head_in.is_some();
    let header_timeout = if reserved {
        limits.header_timeout.min(Duration::from_secs(2))
    } else {
        limits.header_timeout
    };
    let _ = write.set_write_timeout(Some(limits.write_timeout));
    let mut read = read;
    let remote_addr = read.peer_addr().ok().flatten();
    let secure = read.secure();
    let mut reader = BufReader::with_capacity(
        8 * 1024,
        DeadlineReader {
            inner: read,
            deadline: Instant::now() + header_timeout,
            set: None,
        },
    );
    let mut first = true;
    loop {
        if ctx.closing.load(Ordering::Relaxed) {
            return;
        }
        let outcome = next_request(&mut reader, ctx, first, secure, remote_addr, &mut write)
            .and_then(|next| {
                // A connection beyond the cap serves a reserved path, once.
                if let Some(flag) = head_in {
                    flag.store(true, Ordering::Relaxed);
                }
                let (path, _) = next.0.url().split_once('?').unwrap_or((next.0.url(), ""));
                match reserved {
                    false => Ok(next),
                    true if limits.reserved_paths.iter().any(|p| p == path) => {
                        next.2.store(true, Ordering::Relaxed);
                        Ok(next)
                    }
                    true => Err(Fail::Refuse(503, crate::full(limits))),
                }
            });
        let (request, reply_rx, close_flag, keep_alive) = match outcome {
            Ok(r) => r,
            Err(Fail::Gone) => return,
            Err(Fail::Refuse(status, reason)) => {
                let r = crate::Refusal {
                    status,
                    reason,
                    headers: Vec::new(),
                };
                return refuse_and_close(&mut write, &mut reader, limits, r);
            }
            Err(Fail::Denied(r)) => return refuse_and_close(&mut write, &mut reader, limits, r),
        };
        push(request);
        let Ok(bytes) = reply_rx.recv() else { return };
        if write.write_all(&bytes).and_then(|_| write.flush()).is_err() {
            return;
        }
        if !keep_alive || close_flag.load(Ordering::Relaxed) {
            linger(&mut reader);
            return;
        }
        first = false;
    }
}

/// The server's own answer, then the connection closes.
fn refuse_and_close(
    write: &mut RefinedTcpStream,
    reader: &mut BufReader<DeadlineReader>,
    limits: &Limits,
    r: crate::Refusal,
) {
    refuse(write, r.status, &r.reason, &limits.section, &r.headers);
    limits.event(ServerEvent::Rejected {
        status: r.status,
        reason: r.reason,
    });
    linger(reader);
}

type Next = (Request, mpsc::Receiver<Vec<u8>>, Arc<AtomicBool>, bool);

fn next_request(
    reader: &mut BufReader<DeadlineReader>,
    ctx: &Ctx,
    first: bool,
    secure: bool,
    remote_addr: Option<SocketAddr>,
    write: &mut RefinedTcpStream,
) -> Result<Next, Fail> {
    let limits = &ctx.limits;
    // A new connection must send its head within header_timeout; a kept
    // alive one may stay quiet for idle_timeout before its next request.
    if !first {
        reader.get_mut().until(Instant::now() + limits.idle_timeout);
    }
    match reader.fill_buf() {
        Ok([]) | Err(_) => return Err(Fail::Gone),
        Ok(_) => {}
    }
    if !first {
        reader
            .get_mut()
            .until(Instant::now() + limits.header_timeout);
    }
    let head = read_head(reader, limits)?;
    host_once(&head)?;
    // Before any body byte is read or any budget reserved: a stranger gets
    // nothing but the refusal.
    let principal = match &limits.head_check {
        Some(check) => check(&head.method, &head.path, &head.headers).map_err(Fail::Denied)?,
        None => None,
    };
    let framing = framing(&head, limits)?;
    let keep_alive = keep_alive(&head);
    if framing != Framing::None {
        match header(&head.headers, "Expect") {
            None => {}
            Some(v) if v.eq_ignore_ascii_case("100-continue") => {
                let _ = write.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            Some(v) => {
                return Err(Fail::Refuse(
                    417,
                    format!("Expect: {v} is not supported (only 100-continue)"),
                ))
            }
        }
    }
    reader.get_mut().until(Instant::now() + limits.body_timeout);
    let (body, reservation) = read_body(reader, &framing, ctx)?;
    // The next head's deadline runs from the end of this request.
    reader
        .get_mut()
        .until(Instant::now() + limits.header_timeout);

    let (tx, rx) = mpsc::sync_channel(1);
    let close_flag = Arc::new(AtomicBool::new(false));
    let request = crate::request::buffered_request(
        secure,
        head.method,
        head.path,
        head.version,
        head.headers,
        remote_addr,
        body,
        ResponseSink::new(tx),
        close_flag.clone(),
        keep_alive,
        reservation,
        principal,
    );
    Ok((request, rx, close_flag, keep_alive))
}

/// Reads one line ending in CRLF, of at most `max` bytes without the CRLF.
/// `Ok(None)`: the line was longer.
fn read_line(
    reader: &mut BufReader<DeadlineReader>,
    max: usize,
    line: &mut Vec<u8>,
) -> Result<Option<()>, std::io::Error> {
    line.clear();
    reader
        .by_ref()
        .take(max as u64 + 2)
        .read_until(b'\n', line)?;
    if !line.ends_with(b"\n") {
        if line.len() >= max + 2 {
            return Ok(None);
        }
        return Err(ErrorKind::UnexpectedEof.into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "line not ended by CRLF",
        ));
    }
    line.truncate(line.len() - 2);
    Ok(Some(()))
}

/// `tchar` of RFC 9110: what method and header names are made of.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
}

fn read_head(reader: &mut BufReader<DeadlineReader>, limits: &Limits) -> Result<Head, Fail> {
    let mut line = Vec::with_capacity(256);
    // Empty lines before a request line are skipped (RFC 9112 2.2).
    let mut empty = 0;
    loop {
        match read_line(reader, limits.max_request_line_bytes, &mut line) {
            Ok(Some(())) if line.is_empty() && empty < 4 => empty += 1,
            Ok(Some(())) => break,
            Ok(None) => {
                return Err(Fail::Refuse(
                    414,
                    format!(
                        "request line above {} bytes (max_request_line_bytes)",
                        limits.max_request_line_bytes
                    ),
                ))
            }
            Err(e) => return Err(io_fail(e, "request line")),
        }
    }
    let (method, path, version) = request_line(&line)?;

    let mut headers = Vec::new();
    let mut left = limits.max_header_bytes;
    loop {
        let too_big = || {
            Fail::Refuse(
                431,
                format!(
                    "request headers above {} bytes (max_header_bytes)",
                    limits.max_header_bytes
                ),
            )
        };
        match read_line(reader, left, &mut line) {
            Ok(Some(())) => {}
            Ok(None) => return Err(too_big()),
            Err(e) => return Err(io_fail(e, "request headers")),
        }
        if line.is_empty() {
            break;
        }
        left = left.checked_sub(line.len() + 2).ok_or_else(too_big)?;
        if headers.len() == limits.max_headers {
            return Err(Fail::Refuse(
                431,
                format!(
                    "more than {} request headers (max_headers)",
                    limits.max_headers
                ),
            ));
        }
        headers.push(header_line(&line)?);
    }
    Ok(Head {
        method,
        path,
        version,
        headers,
    })
}

fn request_line(line: &[u8]) -> Result<(Method, String, HTTPVersion), Fail> {
    let bad = |why: &str| Fail::Refuse(400, format!("malformed request line: {why}"));
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(
            "expected METHOD TARGET HTTP/1.1 separated by single spaces",
        ));
    };
    if !is_token(method) {
        return Err(bad("the method is not a token"));
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..0x7f).contains(b)) {
        return Err(bad("the target must be visible ASCII without spaces"));
    }
    let version = match version {
        b"HTTP/1.1" => HTTPVersion(1, 1),
        b"HTTP/1.0" => HTTPVersion(1, 0),
        v if v.starts_with(b"HTTP/") => {
            return Err(Fail::Refuse(
                505,
                "only HTTP/1.0 and HTTP/1.1 are supported".into(),
            ))
        }
        _ => return Err(bad("unknown protocol version")),
    };
    // Both checked as ASCII above.
    let method: Method = std::str::from_utf8(method)
        .ok()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| bad("the method is not ASCII"))?;
    let path = String::from_utf8_lossy(target).into_owned();
    Ok((method, path, version))
}

fn header_line(line: &[u8]) -> Result<Header, Fail> {
    let bad = |why: &str| Fail::Refuse(400, format!("malformed header line: {why}"));
    let colon = line
        .iter()
        .position(|b| *b == b':')
        .ok_or_else(|| bad("no colon"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if !is_token(name) {
        // Also a space before the colon, or a folded line (RFC 9112 5).
        return Err(bad("the name is not a token"));
    }
    let value = value
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .map_or(&[][..], |s| &value[s..]);
    let end = value
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(0, |e| e + 1);
    let value = &value[..end];
    if !value
        .iter()
        .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
    {
        return Err(bad(&format!(
            "the value of {} holds a control or non-ASCII byte",
            String::from_utf8_lossy(name)
        )));
    }
    let name = AsciiString::from_ascii(name.to_vec()).map_err(|_| bad("not ASCII"))?;
    let value = AsciiString::from_ascii(value.to_vec()).map_err(|_| bad("not ASCII"))?;
    Ok(Header {
        field: name.as_str().parse().map_err(|_| bad("bad name"))?,
        value,
    })
}

fn header<'a>(headers: &'a [Header], name: &'static str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

/// Tokens of every `Connection` header, lower case.
fn connection_has(head: &Head, token: &str) -> bool {
    head.headers
        .iter()
        .filter(|h| h.field.equiv("Connection"))
        .flat_map(|h| h.value.as_str().split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn keep_alive(head: &Head) -> bool {
    if connection_has(head, "close") {
        return false;
    }
    head.version >= HTTPVersion(1, 1) || connection_has(head, "keep-alive")
}

/// HTTP/1.1 requests carry exactly one `Host` (RFC 9112 §3.2): none, or two
/// that a proxy and this server could read differently, is refused.
fn host_once(head: &Head) -> Result<(), Fail> {
    if head.version < HTTPVersion(1, 1) {
        return Ok(());
    }
    match head
        .headers
        .iter()
        .filter(|h| h.field.equiv("Host"))
        .count()
    {
        1 => Ok(()),
        0 => Err(Fail::Refuse(
            400,
            "an HTTP/1.1 request needs a Host header".into(),
        )),
        _ => Err(Fail::Refuse(400, "more than one Host header".into())),
    }
}

/// The size of a chunk-size line: 1 to 16 hex digits (RFC 9112 §7.1: no
/// sign, no space before it), then optional space and extensions.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let (size, rest) = match line.iter().position(|b| !b.is_ascii_hexdigit()) {
        Some(i) => line.split_at(i),
        None => (line, &[][..]),
    };
    let rest_ok = rest
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t'))
        .is_none_or(|b| *b == b';');
    if size.is_empty() || size.len() > 16 || !rest_ok {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()
}

/// The body's framing, refusing what a proxy in front could read otherwise
/// (request smuggling): both `Content-Length` and `Transfer-Encoding`,
/// differing or malformed lengths, codings other than `chunked`.
fn framing(head: &Head, limits: &Limits) -> Result<Framing, Fail> {
    let te: Vec<&str> = head
        .headers
        .iter()
        .filter(|h| h.field.equiv("Transfer-Encoding"))
        .map(|h| h.value.as_str())
        .collect();
    let cl: Vec<&str> = head
        .headers
        .iter()
        .filter(|h| h.field.equiv("Content-Length"))
        .map(|h| h.value.as_str())
        .collect();
    if !te.is_empty() {
        if !cl.is_empty() {
            return Err(Fail::Refuse(
                400,
                "both Content-Length and Transfer-Encoding sent".into(),
            ));
        }
        if head.version < HTTPVersion(1, 1) {
            return Err(Fail::Refuse(
                400,
                "Transfer-Encoding in an HTTP/1.0 request".into(),
            ));
        }
        let joined = te.join(",");
        if !joined.trim().eq_ignore_ascii_case("chunked") {
            return Err(Fail::Refuse(
                501,
                format!("Transfer-Encoding {joined:?} is not supported (only chunked)"),
            ));
        }
        return Ok(Framing::Chunked);
    }
    let Some(first) = cl.first() else {
        return Ok(Framing::None);
    };
    let valid = |v: &str| !v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit());
    if !cl.iter().all(|v| valid(v)) || cl.iter().any(|v| v != first) {
        return Err(Fail::Refuse(
            400,
            format!("invalid Content-Length {:?}", cl.join(", ")),
        ));
    }
    let n: u64 = first
        .parse()
        .map_err(|_| Fail::Refuse(400, format!("invalid Content-Length {first:?}")))?;
    if n > limits.max_body_bytes as u64 {
        return Err(too_large(limits));
    }
    Ok(match n {
        0 => Framing::None,
        n => Framing::Length(n as usize),
    })
}

fn too_large(limits: &Limits) -> Fail {
    Fail::Refuse(
        413,
        format!(
            "request body above {} bytes (max_body_bytes)",
            limits.max_body_bytes
        ),
    )
}

fn busy(budget: &Budget) -> Fail {
    Fail::Refuse(
        503,
        format!(
            "the server holds {} of its {} bytes of request bodies (max_buffered_body_bytes); retry shortly",
            budget.used(),
            budget.max()
        ),
    )
}

fn read_body(
    reader: &mut BufReader<DeadlineReader>,
    framing: &Framing,
    ctx: &Ctx,
) -> Result<(Vec<u8>, Option<Reservation>), Fail> {
    let limits = &ctx.limits;
    // Charged as the bytes arrive, never as announced: a silent socket
    // holds nothing. `None` once over the budget: the rest is read and
    // dropped, then 503.
    let mut reservation = ctx.budget.reserve(0);
    let mut body = Vec::new();
    match *framing {
        Framing::None => return Ok((body, None)),
        Framing::Length(n) => {
            // Room for the whole body once its first byte is in (pages are
            // resident only as they are written): no copy as it grows.
            if n > 0
                && !reader
                    .fill_buf()
                    .map_err(|e| io_fail(e, "request body"))?
                    .is_empty()
            {
                body.reserve_exact(n);
            }
            take_charged(reader, n, &mut body, &mut reservation)?;
        }
        Framing::Chunked => {
            let mut line = Vec::new();
            let mut seen = 0usize;
            loop {
                let bad = |why: &str| Fail::Refuse(400, format!("malformed chunked body: {why}"));
                match read_line(reader, 1024, &mut line) {
                    Ok(Some(())) => {}
                    Ok(None) => return Err(bad("chunk size line above 1024 bytes")),
                    Err(e) => return Err(io_fail(e, "request body")),
                }
                let size = chunk_size(&line).ok_or_else(|| bad("invalid chunk size"))?;
                // Checked before any arithmetic: a size near u64::MAX is a
                // body too large, not an overflow.
                let size = <usize as std::convert::TryFrom<u64>>::try_from(size)
                    .ok()
                    .filter(|n| seen.saturating_add(*n) <= limits.max_body_bytes)
                    .ok_or_else(|| too_large(limits))?;
                if size == 0 {
                    // Trailer fields are read and dropped, within the
                    // header limits.
                    let mut left = limits.max_header_bytes;
                    loop {
                        match read_line(reader, left, &mut line) {
                            Ok(Some(())) if line.is_empty() => break,
                            Ok(Some(())) => left = left.saturating_sub(line.len() + 2),
                            Ok(None) => return Err(bad("trailer above max_header_bytes")),
                            Err(e) => return Err(io_fail(e, "request body")),
                        }
                    }
                    break;
                }
                seen += size;
                take_charged(reader, size, &mut body, &mut reservation)?;
                match read_line(reader, 0, &mut line) {
                    Ok(Some(())) => {}
                    Ok(None) => return Err(bad("chunk data longer than its size")),
                    Err(e) => return Err(io_fail(e, "request body")),
                }
            }
        }
    }
    match reservation {
        Some(r) => Ok((body, Some(r))),
        None => Err(busy(&ctx.budget)),
    }
}

/// Appends the next `n` body bytes to `body`, each piece charged to
/// `reservation` as it arrives (pieces are what one read brought, at most
/// the reader's buffer). Once the budget is full the body is dropped and
/// the rest read past, so a client still sending within the limits reads
/// the 503 instead of a reset.
fn take_charged(
    reader: &mut BufReader<DeadlineReader>,
    mut n: usize,
    body: &mut Vec<u8>,
    reservation: &mut Option<Reservation>,
) -> Result<(), Fail> {
    while n > 0 {
        let buf = reader.fill_buf().map_err(|e| io_fail(e, "request body"))?;
        if buf.is_empty() {
            return Err(Fail::Gone);
        }
        let k = buf.len().min(n);
        if reservation.as_mut().is_some_and(|r| r.grow(k)) {
            body.extend_from_slice(&buf[..k]);
        } else {
            *reservation = None;
            *body = Vec::new();
        }
        reader.consume(k);
        n -= k;
    }
    Ok(())
}

/// Writes the server's own refusal: JSON saying what and where, then the
/// connection is closed.
fn refuse(
    write: &mut RefinedTcpStream,
    status: u16,
    reason: &str,
    section: &str,
    headers: &[(String, String)],
) {
    let phrase = crate::common::StatusCode(status).default_reason_phrase();
    let reason = if reason.ends_with(')') {
        // "... (max_body_bytes)" names the key: say where it is set.
        match reason.rfind('(') {
            Some(i) => format!("{}([{section}] {}", &reason[..i], &reason[i + 1..]),
            None => reason.to_string(),
        }
    } else {
        reason.to_string()
    };
    let body = format!("{{\"status\":{status},\"error\":{}}}", json_string(&reason));
    let mut extra = String::new();
    if status == 503 {
        extra.push_str("Retry-After: 1\r\n");
    }
    for (k, v) in headers {
        // Only what cannot split the head.
        if !k.contains(['\r', '\n', ':']) && !v.contains(['\r', '\n']) {
            extra.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    let msg = format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = write.write_all(msg.as_bytes());
    let _ = write.flush();
}

/// `s` as a JSON string: quotes, backslashes and every control character
/// escaped, so a refusal that quotes a client's bytes is still JSON.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Before closing after an answer, reads (and drops) what the client still
/// sends for a moment, so its unread bytes do not reset the connection
/// before it has read the answer.
fn linger(reader: &mut BufReader<DeadlineReader>) {
    let _ = reader.get_mut().inner.shutdown_write();
    reader
        .get_mut()
        .until(Instant::now() + Duration::from_millis(500));
    let mut sink = [0u8; 4096];
    let mut total = 0;
    while total < 256 * 1024 {
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(lines: &[&str]) -> Head {
        Head {
            method: Method::Post,
            path: "/".into(),
            version: HTTPVersion(1, 1),
            headers: lines
                .iter()
                .map(|l| header_line(l.as_bytes()).ok().unwrap())
                .collect(),
        }
    }

    fn status(r: Result<Framing, Fail>) -> u16 {
        match r {
            Err(Fail::Refuse(s, _)) => s,
            Err(Fail::Gone) => 0,
            Err(Fail::Denied(r)) => r.status,
            Ok(_) => 200,
        }
    }

    #[test]
    fn http_1_1_needs_exactly_one_host() {
        let with = |lines: &[&str]| match host_once(&head(lines)) {
            Ok(()) => 200,
            Err(Fail::Refuse(s, _)) => s,
            Err(Fail::Gone) => 0,
            Err(Fail::Denied(r)) => r.status,
        };
        assert_eq!(with(&["Host: a"]), 200);
        assert_eq!(with(&[]), 400);
        assert_eq!(with(&["Host: a", "Host: b"]), 400);
        assert_eq!(with(&["Host: a", "host: a"]), 400);
        let mut old = head(&[]);
        old.version = HTTPVersion(1, 0);
        assert!(host_once(&old).is_ok(), "HTTP/1.0 may omit it");
    }

    #[test]
    fn chunk_sizes_are_hex_digits_only() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"5;ext=1"), Some(5));
        assert_eq!(chunk_size(b"5 ; ext"), Some(5));
        assert_eq!(chunk_size(b"5  "), Some(5));
        assert_eq!(chunk_size(b"ffffffffffffffff"), Some(u64::MAX));
        for bad in [
            &b"+5"[..],
            b" 5",
            b"\t5",
            b"-1",
            b"",
            b"5x",
            b"0x5",
            b"5 x",
            b"11111111111111111",
        ] {
            assert_eq!(chunk_size(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn refusals_are_json_whatever_they_quote() {
        let s = json_string("Expect: a\tb\u{1}\"c\\");
        assert_eq!(s, r#""Expect: a\u0009b\u0001\"c\\""#);
    }

    #[test]
    fn framing_refuses_what_a_proxy_could_read_otherwise() {
        let l = Limits::default();
        assert_eq!(
            framing(&head(&["Content-Length: 5"]), &l).ok(),
            Some(Framing::Length(5))
        );
        assert_eq!(
            framing(&head(&["Transfer-Encoding: chunked"]), &l).ok(),
            Some(Framing::Chunked)
        );
        assert_eq!(framing(&head(&[]), &l).ok(), Some(Framing::None));
        assert_eq!(
            status(framing(
                &head(&["Content-Length: 5", "Transfer-Encoding: chunked"]),
                &l
            )),
            400
        );
        assert_eq!(
            status(framing(
                &head(&["Content-Length: 5", "Content-Length: 6"]),
                &l
            )),
            400
        );
        assert_eq!(status(framing(&head(&["Content-Length: -1"]), &l)), 400);
        assert_eq!(status(framing(&head(&["Content-Length: 1e3"]), &l)), 400);
        assert_eq!(
            status(framing(
                &head(&["Content-Length: 99999999999999999999"]),
                &l
            )),
            400
        );
        assert_eq!(
            status(framing(&head(&["Content-Length: 1000000000000000"]), &l)),
            413
        );
        assert_eq!(
            status(framing(&head(&["Transfer-Encoding: gzip, chunked"]), &l)),
            501
        );
        assert_eq!(
            framing(&head(&["Content-Length: 7", "Content-Length: 7"]), &l).ok(),
            Some(Framing::Length(7))
        );
    }

    #[test]
    fn header_lines_are_strict() {
        assert!(header_line(b"X-A:  v v \t").is_ok());
        assert_eq!(
            header_line(b"X-A:  v v \t").ok().unwrap().value.as_str(),
            "v v"
        );
        for bad in [
            &b"X-A : v"[..],
            b" folded",
            b"no colon",
            b"X-A: \x01",
            b"X-A: \xc3\xa9",
            b": v",
        ] {
            assert!(
                header_line(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn request_lines_are_strict() {
        assert!(request_line(b"POST /api/x/v1/?partition=1 HTTP/1.1").is_ok());
        for bad in [
            &b"POST  /x HTTP/1.1"[..],
            b"POST /x",
            b"PO ST /x HTTP/1.1",
            b"POST /x HTTP/1.1 x",
            b"POST /\x7f HTTP/1.1",
        ] {
            assert!(
                request_line(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            request_line(b"GET / HTTP/2.0"),
            Err(Fail::Refuse(505, _))
        ));
    }
}
