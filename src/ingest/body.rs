//! Request bodies → records, as pure functions: content type and encoding
//! checks, bounded gzip decoding (every member of a multi-member stream),
//! and JSON / JSON-array / NDJSON splitting that keeps each record's bytes
//! exactly as sent, within caps on record size, record count and nesting
//! depth. Every problem is a [`BodyError`] that says what and where, and
//! maps to one HTTP status; the work is linear in the body's size.

use std::io::Read;
use std::ops::Range;

use serde_json::value::RawValue;

use super::scan::{self, ArrayError};

/// What one request's records may be.
#[derive(Debug, Clone, Copy)]
pub struct RecordLimits {
    /// Bytes of one record.
    pub max_bytes: usize,
    /// Records in one request.
    pub max_records: usize,
    /// Nesting of objects and arrays in one record.
    pub max_depth: usize,
}

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One object, or an array of objects.
    Json,
    /// One object per line.
    Ndjson,
}

/// One record: its byte range in the body and the key taken from the
/// configured `key_field`, if any (or its own key and partition, from a
/// REST Proxy envelope).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Span {
    pub range: Range<usize>,
    pub key: Option<Vec<u8>>,
    pub partition: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("unsupported Content-Type {0:?}: expected application/json or application/x-ndjson")]
    ContentType(String),
    #[error(
        "unsupported Content-Type {0:?}: a text route takes text/plain (UTF-8) or application/x-ndjson (a record per line)"
    )]
    TextContentType(String),
    #[error("empty body: this route takes the body as its record")]
    EmptyRecord,
    #[error("unsupported Content-Encoding {0:?}: expected gzip or identity")]
    ContentEncoding(String),
    #[error("body exceeds max_body_bytes ({max} bytes)")]
    TooLarge { max: usize },
    #[error("body decompresses past max_body_bytes ({max} bytes)")]
    InflatesTooLarge { max: usize },
    #[error("invalid gzip body: {0}")]
    Gzip(String),
    #[error(
        "ingest holds all it may of request bodies and their records ([ingest] max_buffered_body_bytes); retry shortly"
    )]
    Busy,
    #[error("empty body: expected a JSON object, an array of objects or NDJSON lines")]
    Empty,
    #[error("invalid UTF-8 at line {line} column {column}")]
    Utf8 { line: usize, column: usize },
    #[error("invalid JSON at line {line} column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("record {index} (line {line}) is {found}, expected a JSON object")]
    NotObject {
        index: usize,
        line: usize,
        found: &'static str,
    },
    #[error("empty JSON array: expected at least one object")]
    EmptyBatch,
    #[error("record {index} has {size} bytes, more than max_record_bytes ({max})")]
    RecordTooLarge {
        index: usize,
        size: usize,
        max: usize,
    },
    #[error("record {index} is no {message}: {}", at_path(.path, .why))]
    Misfit {
        index: usize,
        message: String,
        path: String,
        why: String,
    },
    #[error("more than max_records ({max}) records in one request")]
    TooManyRecords { max: usize },
    #[error(
        "record {index} (line {line}) nests objects and arrays deeper than max_json_depth ({max})"
    )]
    TooDeep {
        index: usize,
        line: usize,
        max: usize,
    },
}

impl BodyError {
    pub fn status(&self) -> u16 {
        match self {
            BodyError::ContentType(_)
            | BodyError::TextContentType(_)
            | BodyError::ContentEncoding(_) => 415,
            BodyError::TooLarge { .. }
            | BodyError::InflatesTooLarge { .. }
            | BodyError::RecordTooLarge { .. }
            | BodyError::TooManyRecords { .. } => 413,
            BodyError::Busy => 503,
            _ => 400,
        }
    }

    /// (line, column) of the problem in the (decompressed) body, when known.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            BodyError::Utf8 { line, column } | BodyError::Json { line, column, .. } => {
                Some((*line, *column))
            }
            BodyError::NotObject { line, .. } | BodyError::TooDeep { line, .. } => Some((*line, 1)),
            _ => None,
        }
    }

    /// Index of the offending record, when known.
    pub fn record(&self) -> Option<usize> {
        match self {
            BodyError::NotObject { index, .. }
            | BodyError::Misfit { index, .. }
            | BodyError::RecordTooLarge { index, .. }
            | BodyError::TooDeep { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// `why`, after the path it happened at (none for the record itself).
fn at_path(path: &str, why: &str) -> String {
    match path {
        "" => why.to_string(),
        _ => format!("at {path:?}: {why}"),
    }
}

/// The media type of a `Content-Type`, lower case, without parameters.
pub fn mime(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Picks the framing from `Content-Type` (parameters such as charset ignored).
pub fn format_of(content_type: Option<&str>) -> Result<Format, BodyError> {
    let raw = content_type.unwrap_or("");
    let mime = mime(raw);
    match mime.as_str() {
        "application/json" => Ok(Format::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines" => Ok(Format::Ndjson),
        _ => Err(BodyError::ContentType(raw.to_string())),
    }
}

/// Decodes the body per `Content-Encoding`, refusing more than `max` bytes
/// after decompression (gzip bombs stop at `max + 1` bytes of output).
/// Every gzip member is decoded (`cat a.gz b.gz`, streaming compressors);
/// bytes after the last member that are not another member are an error.
pub fn decode(encoding: Option<&str>, wire: Vec<u8>, max: usize) -> Result<Vec<u8>, BodyError> {
    decode_charged(encoding, wire, max, &mut |_| true)
}

/// [`decode`], with every piece the decoded form grows by first passed to
/// `charge` (the server's byte budget); a refused charge stops decoding:
/// [`BodyError::Busy`].
pub fn decode_charged(
    encoding: Option<&str>,
    wire: Vec<u8>,
    max: usize,
    charge: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<u8>, BodyError> {
    match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("identity") => return Ok(wire),
        Some("gzip") | Some("x-gzip") => {}
        Some(_) => {
            return Err(BodyError::ContentEncoding(
                encoding.unwrap_or("").to_string(),
            ));
        }
    }
    let mut out = Vec::new();
    let mut dec = flate2::read::MultiGzDecoder::new(&wire[..]);
    let mut piece = [0u8; 16 * 1024];
    loop {
        let n = dec
            .read(&mut piece)
            .map_err(|e| BodyError::Gzip(e.to_string()))?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > max {
            return Err(BodyError::InflatesTooLarge { max });
        }
        if !charge(n) {
            return Err(BodyError::Busy);
        }
        out.extend_from_slice(&piece[..n]);
    }
}

/// Checks UTF-8 and splits the body into records. Nothing is returned unless
/// every record is valid, so a rejected request produces nothing.
pub fn split<'a>(
    body: &'a [u8],
    format: Format,
    key_field: Option<&str>,
    limits: RecordLimits,
) -> Result<(&'a str, Vec<Span>), BodyError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        let (line, column) = line_col(body, e.valid_up_to());
        BodyError::Utf8 { line, column }
    })?;
    if text.trim().is_empty() {
        return Err(BodyError::Empty);
    }
    let raws: Vec<(&RawValue, usize)> = match format {
        Format::Json => json_records(text, limits.max_records)?,
        Format::Ndjson => ndjson_records(text, limits.max_records)?,
    };
    let mut spans = Vec::with_capacity(raws.len());
    for (index, (raw, line)) in raws.into_iter().enumerate() {
        let s = raw.get();
        if !s.starts_with('{') {
            return Err(BodyError::NotObject {
                index,
                line,
                found: kind_of(s),
            });
        }
        if s.len() > limits.max_bytes {
            return Err(BodyError::RecordTooLarge {
                index,
                size: s.len(),
                max: limits.max_bytes,
            });
        }
        if scan::check_depth(s.as_bytes(), limits.max_depth).is_err() {
            return Err(BodyError::TooDeep {
                index,
                line,
                max: limits.max_depth,
            });
        }
        // The raw value borrows from `text`, so its offset is its address
        // minus the start of the body.
        let start = s.as_ptr() as usize - text.as_ptr() as usize;
        let key = match key_field {
            Some(field) => key_of(s, field).map(String::into_bytes),
            None => None,
        };
        spans.push(Span {
            range: start..start + s.len(),
            key,
            partition: None,
        });
    }
    Ok((text, spans))
}

fn json_records(text: &str, max_records: usize) -> Result<Vec<(&RawValue, usize)>, BodyError> {
    let json_err = |e: serde_json::Error| BodyError::Json {
        line: e.line(),
        column: e.column(),
        message: strip_position(&e),
    };
    if text.trim_start().starts_with('[') {
        let items = scan::bounded_array(text, max_records).map_err(|e| match e {
            ArrayError::Json(e) => json_err(e),
            ArrayError::TooMany(max) => BodyError::TooManyRecords { max },
        })?;
        if items.is_empty() {
            return Err(BodyError::EmptyBatch);
        }
        let offsets: Vec<usize> = items
            .iter()
            .map(|r| r.get().as_ptr() as usize - text.as_ptr() as usize)
            .collect();
        let lines = scan::lines_of(text.as_bytes(), &offsets);
        Ok(items.into_iter().zip(lines).collect())
    } else {
        let one: &RawValue = serde_json::from_str(text).map_err(json_err)?;
        let offset = one.get().as_ptr() as usize - text.as_ptr() as usize;
        Ok(vec![(one, line_col(text.as_bytes(), offset).0)])
    }
}

fn ndjson_records(text: &str, max_records: usize) -> Result<Vec<(&RawValue, usize)>, BodyError> {
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let trimmed = line.trim_end_matches('\r');
        if trimmed.trim().is_empty() {
            continue;
        }
        if out.len() == max_records {
            return Err(BodyError::TooManyRecords { max: max_records });
        }
        let raw: &RawValue = serde_json::from_str(trimmed).map_err(|e| BodyError::Json {
            line: i + 1,
            column: e.column(),
            message: strip_position(&e),
        })?;
        out.push((raw, i + 1));
    }
    Ok(out)
}

/// The key of a record from `field`: strings as they are, numbers and
/// booleans as their JSON text; absent, null, arrays and objects give none.
fn key_of(object: &str, field: &str) -> Option<String> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(object).ok()?;
    match map.get(field)? {
        serde_json::Value::String(s) => Some(s.clone()),
        v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => Some(v.to_string()),
        _ => None,
    }
}

fn kind_of(s: &str) -> &'static str {
    match s.as_bytes().first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        _ => "a number",
    }
}

/// serde_json's message without its trailing " at line L column C".
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// One fuzzing input through decoding and splitting, with the invariants
/// every outcome must keep (`fuzz/fuzz_targets/body.rs`; the corpus in
/// `fuzz/corpus/body` is replayed by the unit tests). The first byte picks
/// the framing and encoding; a violation panics.
pub fn exercise(input: &[u8]) {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let format = if mode & 1 == 0 {
        Format::Json
    } else {
        Format::Ndjson
    };
    let encoding = (mode & 2 != 0).then_some("gzip");
    let limits = RecordLimits {
        max_bytes: 1 << 16,
        max_records: 256,
        max_depth: 16,
    };
    let max = 1 << 20;
    let Ok(decoded) = decode(encoding, data.to_vec(), max) else {
        return;
    };
    assert!(decoded.len() <= max, "decoded past the limit");
    match split(&decoded, format, Some("k"), limits) {
        Ok((text, spans)) => {
            assert!(!spans.is_empty() && spans.len() <= limits.max_records);
            for s in &spans {
                let rec = &text[s.range.clone()];
                assert!(rec.len() <= limits.max_bytes);
                assert!(scan::check_depth(rec.as_bytes(), limits.max_depth).is_ok());
                // Syntax only: records are kept as written (numbers however
                // large, escapes however odd), so nothing is decoded here.
                assert!(rec.starts_with('{'), "every record is a JSON object");
                serde_json::from_str::<serde::de::IgnoredAny>(rec).expect("valid JSON");
            }
        }
        Err(e) => {
            // Every refusal is a client error with a message.
            assert!((400..500).contains(&e.status()));
            assert!(!e.to_string().is_empty());
        }
    }
}

/// 1-based line and column (in bytes) of `offset`.
pub(super) fn line_col(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = offset
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, column)
}

#[cfg(test)]
#[path = "body_tests.rs"]
mod tests;
