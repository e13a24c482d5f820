//! The limits of every HTTP server kbridge opens (`[ingest]` and `[admin]`
//! read the same keys, with defaults of their own): open connections, request
//! line, headers, body, and the deadlines of each read and write. The
//! vendored tiny_http enforces them (`vendor/README.md`).

use std::time::Duration;

use super::SectionReader;

/// One server's limits, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub max_request_line_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// One request body, on the wire and (ingest) after gzip.
    pub max_body_bytes: usize,
    /// Request bodies held in memory at once, from arrival to answer.
    pub max_buffered_body_bytes: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
}

impl HttpLimits {
    /// Defaults of the ingest listener.
    pub fn ingest() -> HttpLimits {
        HttpLimits {
            max_connections: 4096,
            max_request_line_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
            max_buffered_body_bytes: 64 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
        }
    }

    /// Defaults of the admin listener (loopback, operators and scrapers).
    pub fn admin() -> HttpLimits {
        HttpLimits {
            max_connections: 64,
            max_body_bytes: 64 * 1024,
            max_buffered_body_bytes: 1024 * 1024,
            ..HttpLimits::ingest()
        }
    }

    /// Reads the limit keys of a section over `defaults`.
    pub fn read(r: &mut SectionReader<'_>, defaults: HttpLimits) -> HttpLimits {
        let d = defaults;
        let ms = |d: Duration| d.as_millis() as u64;
        let l = HttpLimits {
            max_connections: r.int("max_connections", d.max_connections, 1..=1_000_000),
            max_request_line_bytes: r.int(
                "max_request_line_bytes",
                d.max_request_line_bytes,
                64..=1 << 20,
            ),
            max_header_bytes: r.int("max_header_bytes", d.max_header_bytes, 256..=1 << 24),
            max_headers: r.int("max_headers", d.max_headers, 1..=10_000),
            max_body_bytes: r.int("max_body_bytes", d.max_body_bytes, 1..=1 << 30),
            max_buffered_body_bytes: r.int(
                "max_buffered_body_bytes",
                d.max_buffered_body_bytes,
                1..=1 << 40,
            ),
            header_timeout: Duration::from_millis(r.int(
                "header_timeout_ms",
                ms(d.header_timeout),
                1..=3_600_000,
            )),
            body_timeout: Duration::from_millis(r.int(
                "body_timeout_ms",
                ms(d.body_timeout),
                1..=3_600_000,
            )),
            idle_timeout: Duration::from_millis(r.int(
                "idle_timeout_ms",
                ms(d.idle_timeout),
                1..=3_600_000,
            )),
            write_timeout: Duration::from_millis(r.int(
                "write_timeout_ms",
                ms(d.write_timeout),
                1..=3_600_000,
            )),
        };
        if l.max_buffered_body_bytes < l.max_body_bytes {
            r.error(
                "max_buffered_body_bytes",
                format!(
                    "must be at least max_body_bytes ({}), got {}",
                    l.max_body_bytes, l.max_buffered_body_bytes
                ),
            );
        }
        l
    }

    /// The vendored tiny_http's form; `section` names where the keys live
    /// (its refusals say which key to raise), `threads` names the
    /// connection threads.
    pub fn to_server(
        &self,
        section: &str,
        threads: &str,
        on_event: std::sync::Arc<dyn Fn(&tiny_http::ServerEvent) + Send + Sync>,
    ) -> tiny_http::Limits {
        tiny_http::Limits {
            section: section.into(),
            max_connections: self.max_connections,
            max_request_line_bytes: self.max_request_line_bytes,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            max_body_bytes: self.max_body_bytes,
            max_buffered_body_bytes: self.max_buffered_body_bytes,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            idle_timeout: self.idle_timeout,
            write_timeout: self.write_timeout,
            thread_name: threads.into(),
            on_event: Some(on_event),
            inline: None,
            head_check: None,
            reserved_connections: 0,
            reserved_paths: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigErrors, Document};

    #[test]
    fn keys_override_defaults_and_errors_name_the_key() {
        let mut errors = ConfigErrors::default();
        let doc = Document::parse(
            "l.ini",
            "[admin]\nmax_connections = 10\nheader_timeout_ms = 500\nmax_body_bytes = 100\nmax_buffered_body_bytes = 50\nmax_headers = 0\n",
            &mut errors,
        );
        let mut r = doc.reader("admin", &mut errors);
        let l = HttpLimits::read(&mut r, HttpLimits::admin());
        r.finish();
        assert_eq!(l.max_connections, 10);
        assert_eq!(l.header_timeout, Duration::from_millis(500));
        assert_eq!(l.idle_timeout, HttpLimits::admin().idle_timeout);
        let t = errors.to_string();
        assert!(
            t.contains("l.ini:5 [admin] max_buffered_body_bytes: must be at least max_body_bytes (100), got 50"),
            "{t}"
        );
        assert!(t.contains("l.ini:6 [admin] max_headers"), "{t}");
    }
}
