//! Panic-free access to records. Any producer can write any bytes: header
//! names and values that are not UTF-8, null or empty values, huge keys.
//! rdkafka's `Headers::get`/`iter` turn a header name into `&str` with an
//! `unwrap` (a name like the byte 0xff panics the thread that reads it), so
//! kbridge reads and writes headers only here, through librdkafka's own
//! calls, as bytes. Text views for logs and one-token encodings (hex,
//! base64) live here too, so every role encodes the same way.

use std::ffi::{CStr, c_void};

use rdkafka::bindings as rdsys;
use rdkafka::error::IsError as _;
use rdkafka::message::{BorrowedMessage, OwnedHeaders};

/// A record header as bytes: name, and value (`None`: a null value).
pub type Header = (Vec<u8>, Option<Vec<u8>>);

/// Calls `f(name, value)` for each header of `m`, in order.
pub fn each_header(m: &BorrowedMessage<'_>, mut f: impl FnMut(&[u8], Option<&[u8]>)) {
    let mut hdrs: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `m.ptr()` is the live message; librdkafka keeps the headers
    // with it and only reads them here. Names are NUL-terminated by
    // librdkafka; values are (pointer, size), null for a null value.
    unsafe {
        if rdsys::rd_kafka_message_headers(m.ptr(), &mut hdrs).is_error() || hdrs.is_null() {
            return;
        }
        let n = rdsys::rd_kafka_header_cnt(hdrs);
        for i in 0..n {
            let mut name = std::ptr::null();
            let mut value: *const c_void = std::ptr::null();
            let mut size = 0usize;
            if rdsys::rd_kafka_header_get_all(hdrs, i, &mut name, &mut value, &mut size).is_error()
                || name.is_null()
            {
                continue;
            }
            let name = CStr::from_ptr(name).to_bytes();
            let value =
                (!value.is_null()).then(|| std::slice::from_raw_parts(value as *const u8, size));
            f(name, value);
        }
    }
}

/// Every header of `m`, detached.
pub fn headers(m: &BorrowedMessage<'_>) -> Vec<Header> {
    let mut out = Vec::new();
    each_header(m, |k, v| out.push((k.to_vec(), v.map(<[u8]>::to_vec))));
    out
}

/// The value of the first header of `m` named `name` (`Some(None)`: present
/// with a null value).
pub fn header(m: &BorrowedMessage<'_>, name: &str) -> Option<Option<Vec<u8>>> {
    let mut found = None;
    each_header(m, |k, v| {
        if found.is_none() && k == name.as_bytes() {
            found = Some(v.map(<[u8]>::to_vec));
        }
    });
    found
}

/// `headers` plus one header, whatever its bytes (rdkafka's `insert` takes
/// the name as `&str`).
pub fn with_header(headers: OwnedHeaders, name: &[u8], value: Option<&[u8]>) -> OwnedHeaders {
    let ptr = headers.as_borrowed() as *const _ as *mut rdsys::rd_kafka_headers_t;
    let (vp, vn) = match value {
        Some(v) => (v.as_ptr() as *const c_void, v.len() as isize),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: `ptr` is the native list `headers` owns (`as_borrowed` is a
    // cast of it); librdkafka copies name and value. Adding fails only on a
    // read-only list, which an `OwnedHeaders` never is.
    unsafe {
        rdsys::rd_kafka_header_add(ptr, name.as_ptr() as *const _, name.len() as isize, vp, vn);
    }
    headers
}

/// A copy of `headers` as an `OwnedHeaders`, plus room for `extra` more.
pub fn owned(headers: &[Header], extra: usize) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(headers.len() + extra);
    for (k, v) in headers {
        h = with_header(h, k, v.as_deref());
    }
    h
}

/// Bytes as lowercase hex (one token whatever they hold).
pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 15) as usize] as char);
    }
    s
}

/// Bytes as standard base64 with padding (RFC 4648 §4).
pub fn base64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn headers_of_any_bytes_are_written_and_read_without_panics() {
        let h = with_header(OwnedHeaders::new(), b"\xff", Some(b"\xfe\x00v"));
        let h = with_header(h, b"null", None);
        let h = with_header(h, b"ok", Some(b""));
        assert_eq!(h.count(), 3);
        // Read back through the same native calls `each_header` makes.
        let ptr = h.as_borrowed() as *const _ as *const rdsys::rd_kafka_headers_t;
        let mut seen = Vec::new();
        for i in 0..3 {
            let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
            unsafe {
                assert!(
                    !rdsys::rd_kafka_header_get_all(ptr, i, &mut name, &mut value, &mut size)
                        .is_error()
                );
                let v = (!value.is_null())
                    .then(|| std::slice::from_raw_parts(value as *const u8, size).to_vec());
                seen.push((CStr::from_ptr(name).to_bytes().to_vec(), v));
            }
        }
        assert_eq!(
            seen,
            vec![
                (b"\xff".to_vec(), Some(b"\xfe\x00v".to_vec())),
                (b"null".to_vec(), None),
                (b"ok".to_vec(), Some(Vec::new())),
            ]
        );
        let copy = owned(&seen, 1);
        assert_eq!(copy.count(), 3);
    }

    #[test]
    fn encodings_are_one_token() {
        assert_eq!(hex(b"\x00\xffA"), "00ff41");
        for (raw, b64) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"\xff\xfe\n", "//4K"),
        ] {
            assert_eq!(base64(raw), b64);
        }
    }
}
