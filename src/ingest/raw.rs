//! Text and binary routes (`[ingest.formats]`), as pure functions: a
//! binary route's body is one record, its bytes as sent, whatever the
//! `Content-Type`; a text route's body is one UTF-8 record (`text/plain`,
//! charset UTF-8 when named), or one record per line when sent as NDJSON
//! (`application/x-ndjson` and its aliases; empty lines skipped, a line's
//! trailing `\r` not part of it). The caps on record size and count hold
//! as for JSON; `key_field` does not apply (the key is `X-Kafka-Key`).
//! Also the `[ingest.formats]` section that names each route's format.

use super::body::{self, BodyError, Format, RecordLimits, Span};
use super::config::Route;
use crate::config::{ConfigErrors, Document};

/// A route's payload format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteFormat {
    /// JSON objects, byte for byte (one, an array, or NDJSON lines).
    Json,
    /// UTF-8 text: the body is one record (NDJSON-typed bodies: a record
    /// per line).
    Text,
    /// Any bytes: the body is one record as it is.
    Binary,
    /// JSON objects, as JSON routes take them, each encoded as the route's
    /// Protobuf message (`protobuf:<message>`) or Avro schema (`avro`,
    /// `avro:<file.avsc>`).
    Schema,
}

/// The records of a text or binary route's body.
pub fn records(
    body: &[u8],
    format: RouteFormat,
    content_type: Option<&str>,
    limits: RecordLimits,
) -> Result<Vec<Span>, BodyError> {
    if body.is_empty() {
        return Err(BodyError::EmptyRecord);
    }
    let lines = match format {
        RouteFormat::Binary | RouteFormat::Json | RouteFormat::Schema => false,
        RouteFormat::Text => {
            let lines = text_framing(content_type)?;
            if let Err(e) = std::str::from_utf8(body) {
                let (line, column) = body::line_col(body, e.valid_up_to());
                return Err(BodyError::Utf8 { line, column });
            }
            lines
        }
    };
    let mut spans = Vec::new();
    let mut push = |range: std::ops::Range<usize>| {
        if spans.len() == limits.max_records {
            return Err(BodyError::TooManyRecords {
                max: limits.max_records,
            });
        }
        if range.len() > limits.max_bytes {
            return Err(BodyError::RecordTooLarge {
                index: spans.len(),
                size: range.len(),
                max: limits.max_bytes,
            });
        }
        spans.push(Span {
            range,
            key: None,
            partition: None,
        });
        Ok(())
    };
    if !lines {
        push(0..body.len())?;
        return Ok(spans);
    }
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len())) {
        let mut stop = end;
        if stop > start && body[stop - 1] == b'\r' {
            stop -= 1;
        }
        if stop > start {
            push(start..stop)?;
        }
        start = end + 1;
    }
    if spans.is_empty() {
        return Err(BodyError::EmptyRecord);
    }
    Ok(spans)
}

/// Whether a text body is framed as lines (NDJSON types) or is one record
/// (`text/plain`, no type); any other type, or a charset other than UTF-8,
/// is refused.
fn text_framing(content_type: Option<&str>) -> Result<bool, BodyError> {
    let raw = content_type.unwrap_or("text/plain");
    let mime = body::mime(raw);
    let charset_ok = raw.split(';').skip(1).all(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        !k.trim().eq_ignore_ascii_case("charset") || {
            let v = v.trim().trim_matches('"');
            v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8")
        }
    });
    match mime.as_str() {
        _ if !charset_ok => Err(BodyError::TextContentType(raw.to_string())),
        "text/plain" => Ok(false),
        _ => match body::format_of(Some(&mime)) {
            Ok(Format::Ndjson) => Ok(true),
            _ => Err(BodyError::TextContentType(raw.to_string())),
        },
    }
}

/// `[ingest.formats]`: `stream = json | text | binary | protobuf[:<message>]
/// | avro[:<file.avsc>] | jsonschema[:<file.json>]` for routes of
/// `[ingest.routes]` (unset: `json`); the message is one of `[ingest]
/// protobuf_descriptor_file`; `avro`, `jsonschema` or `protobuf` alone is
/// the latest schema of the route's subject in the registry.
pub(super) fn read_formats(
    doc: &Document,
    errors: &mut ConfigErrors,
    routes: &mut [Route],
    descriptor_file: &str,
    registry: Option<&std::sync::Arc<crate::codec::registry::Registry>>,
) {
    use crate::codec::SchemaKind;
    use crate::codec::writer::{Local, Writer};
    use std::sync::Arc;
    let subjects = read_subjects(doc, errors, routes, registry.is_some());
    let mut r = doc.reader("ingest.formats", errors);
    let entries: Vec<(String, String)> = r
        .all()
        .into_iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    for (stream, value) in entries {
        let mut writer = None;
        let topic = routes
            .iter()
            .find(|rt| rt.stream == stream)
            .map(|rt| rt.topic.clone())
            .unwrap_or_default();
        let subject = subjects
            .get(&stream)
            .cloned()
            .unwrap_or_else(|| format!("{topic}-value"));
        let format = match value.as_str() {
            v @ ("avro" | "jsonschema" | "protobuf") if registry.is_none() => {
                r.error(
                    &stream,
                    format!("{v} without a file needs [schema_registry] url (the schema is the latest of <topic>-value); or name a schema file: {v}:<file>"),
                );
                continue;
            }
            v @ ("avro" | "jsonschema" | "protobuf") => {
                let kind = match v {
                    "avro" => SchemaKind::Avro,
                    "jsonschema" => SchemaKind::Json,
                    _ => SchemaKind::Protobuf,
                };
                writer = Some(Arc::new(Writer::schema(kind, None, &subject, registry)));
                RouteFormat::Schema
            }
            v if v.starts_with("avro:") || v.starts_with("jsonschema:") => {
                let (kind, file) = v.split_once(':').unwrap_or_default();
                let kind = match kind {
                    "avro" => SchemaKind::Avro,
                    _ => SchemaKind::Json,
                };
                match Local::open(kind, std::path::Path::new(file)) {
                    Ok(s) => {
                        writer = Some(Arc::new(Writer::schema(kind, Some(s), &subject, registry)))
                    }
                    Err(e) => {
                        r.error(&stream, e);
                        continue;
                    }
                }
                RouteFormat::Schema
            }
            "json" => RouteFormat::Json,
            "text" => RouteFormat::Text,
            "binary" => RouteFormat::Binary,
            v if v.starts_with("protobuf:") => {
                let name = &v["protobuf:".len()..];
                if descriptor_file.is_empty() {
                    r.error(
                        &stream,
                        "protobuf needs [ingest] protobuf_descriptor_file (protoc --include_imports --descriptor_set_out)".into(),
                    );
                    continue;
                }
                match crate::codec::protobuf::Schema::open(
                    std::path::Path::new(descriptor_file),
                    name,
                ) {
                    Ok(s) => writer = Some(Arc::new(Writer::protobuf(Arc::new(s)))),
                    Err((_, e)) => {
                        r.error(&stream, e);
                        continue;
                    }
                }
                RouteFormat::Schema
            }
            _ => {
                r.error(
                    &stream,
                    format!("expected json, text, binary, protobuf[:<message>], avro[:<file.avsc>] or jsonschema[:<file.json>], got {value:?}"),
                );
                continue;
            }
        };
        match routes.iter_mut().find(|rt| rt.stream == stream) {
            Some(route) => {
                route.format = format;
                route.writer = writer;
            }
            None => r.error(&stream, "no such stream in [ingest.routes]".to_string()),
        }
    }
    r.finish();
    let mut s = doc.reader("ingest.subjects", errors);
    for stream in subjects.keys() {
        let schema = routes.iter().any(|rt| {
            rt.stream == *stream && rt.writer.as_ref().is_some_and(|w| !w.subject().is_empty())
        });
        if !schema {
            s.error(
                stream,
                "a subject is for the avro, jsonschema and protobuf routes of [ingest.formats] that use the registry".into(),
            );
        }
    }
    s.all();
    s.finish();
}

/// `[ingest.subjects]`: `stream = subject`, the registry subject of a
/// schema route (default `<topic>-value`).
fn read_subjects(
    doc: &Document,
    errors: &mut ConfigErrors,
    routes: &[Route],
    registry: bool,
) -> std::collections::HashMap<String, String> {
    let mut r = doc.reader("ingest.subjects", errors);
    let mut out = std::collections::HashMap::new();
    let entries: Vec<(String, String)> = r
        .all()
        .into_iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    for (stream, subject) in entries {
        if !routes.iter().any(|rt| rt.stream == stream) {
            r.error(&stream, "no such stream in [ingest.routes]".into());
        } else if !registry {
            r.error(&stream, "subjects need [schema_registry] url".into());
        } else if subject.is_empty() || subject.len() > 255 {
            r.error(
                &stream,
                "expected a subject name (1 to 255 characters)".into(),
            );
        } else {
            out.insert(stream, subject);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RecordLimits = RecordLimits {
        max_bytes: 16,
        max_records: 3,
        max_depth: 4,
    };

    fn ranges<'a>(
        body: &'a [u8],
        f: RouteFormat,
        ct: Option<&str>,
    ) -> Result<Vec<&'a [u8]>, BodyError> {
        records(body, f, ct, LIMITS).map(|s| s.iter().map(|s| &body[s.range.clone()]).collect())
    }

    #[test]
    fn a_binary_body_is_one_record_byte_for_byte_whatever_its_type() {
        let bytes = [0u8, 0xff, b'\n', 0x80, b'{'];
        for ct in [
            None,
            Some("application/octet-stream"),
            Some("application/json"),
        ] {
            assert_eq!(
                ranges(&bytes, RouteFormat::Binary, ct),
                Ok(vec![&bytes[..]])
            );
        }
        assert_eq!(
            ranges(b"", RouteFormat::Binary, None),
            Err(BodyError::EmptyRecord)
        );
        assert!(matches!(
            ranges(&[1; 17], RouteFormat::Binary, None),
            Err(BodyError::RecordTooLarge { size: 17, .. })
        ));
    }

    #[test]
    fn text_is_one_utf8_record_or_a_record_per_line() {
        let t = RouteFormat::Text;
        assert_eq!(
            ranges(
                "wörld\nzwei".as_bytes(),
                t,
                Some("text/plain; charset=UTF-8")
            ),
            Ok(vec!["wörld\nzwei".as_bytes()])
        );
        assert_eq!(
            ranges(b"a\r\n\nb\n", t, Some("application/x-ndjson")),
            Ok(vec![&b"a"[..], b"b"])
        );
        assert_eq!(
            ranges(b"\n\r\n", t, Some("application/x-ndjson")),
            Err(BodyError::EmptyRecord)
        );
        assert_eq!(
            ranges(b"ok\n\xffno", t, None),
            Err(BodyError::Utf8 { line: 2, column: 1 })
        );
        assert_eq!(
            ranges(b"a\nb\nc\nd", t, Some("application/x-ndjson")),
            Err(BodyError::TooManyRecords { max: 3 })
        );
        for ct in [
            "text/plain; charset=latin1",
            "application/json",
            "text/html",
        ] {
            let e = ranges(b"x", t, Some(ct)).unwrap_err();
            assert_eq!(e, BodyError::TextContentType(ct.into()));
            assert_eq!(e.status(), 415);
        }
    }

    fn formats(text: &str) -> Result<Vec<RouteFormat>, String> {
        let mut errors = ConfigErrors::default();
        let doc = Document::parse("i.ini", text, &mut errors);
        let c = super::super::config::IngestConfig::from_document(&doc, &mut errors, None);
        match errors.0.is_empty() {
            true => Ok(c.unwrap().routes.iter().map(|r| r.format).collect()),
            false => Err(errors.to_string()),
        }
    }

    #[test]
    fn each_route_names_its_format_and_json_is_the_default() {
        let base = "[ingest]\n[ingest.routes]\nlog = logs\nblob = blobs\nvisit = visits\n";
        assert_eq!(
            formats(&format!(
                "{base}[ingest.formats]\nlog = text\nblob = binary\n"
            )),
            Ok(vec![
                RouteFormat::Text,
                RouteFormat::Binary,
                RouteFormat::Json
            ])
        );
        assert_eq!(formats(base), Ok(vec![RouteFormat::Json; 3]));
        let e = formats(&format!(
            "{base}[ingest.formats]\nlog = avro-ish\nnone = text\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("[ingest.formats] log: expected json, text, binary, protobuf[:<message>], avro[:<file.avsc>] or jsonschema[:<file.json>], got \"avro-ish\""),
            "{e}"
        );
        assert!(
            e.contains("[ingest.formats] none: no such stream in [ingest.routes]"),
            "{e}"
        );
    }

    #[test]
    fn schema_routes_write_under_their_topic_or_a_configured_subject() {
        let dir = std::env::temp_dir().join(format!("kbridge-subjects-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let avsc = dir.join("o.avsc");
        std::fs::write(&avsc, r#"{"type":"record","name":"O","fields":[]}"#).unwrap();
        let load = |extra: &str| {
            let text = format!(
                "[schema_registry]\nurl = http://127.0.0.1:9\n[ingest]\n[ingest.routes]\na = ta\nb = tb\nc = tc\nd = td\n\
                 [ingest.formats]\na = avro:{}\nb = jsonschema\nd = protobuf\n{extra}",
                avsc.display()
            );
            let mut errors = ConfigErrors::default();
            let doc = Document::parse("i.ini", &text, &mut errors);
            let registry = crate::codec::registry::Registry::read(&doc, &mut errors);
            let c = super::super::config::IngestConfig::from_document(
                &doc,
                &mut errors,
                registry.as_ref(),
            );
            match errors.0.is_empty() {
                true => Ok(c
                    .unwrap()
                    .routes
                    .iter()
                    .map(|r| r.writer.as_ref().map(|w| w.subject().to_string()))
                    .collect::<Vec<_>>()),
                false => Err(errors.to_string()),
            }
        };
        assert_eq!(
            load(""),
            Ok(vec![
                Some("ta-value".into()),
                Some("tb-value".into()),
                None,
                Some("td-value".into())
            ])
        );
        assert_eq!(
            load("[ingest.subjects]\nb = shop.Order\nd = shop.Item\n"),
            Ok(vec![
                Some("ta-value".into()),
                Some("shop.Order".into()),
                None,
                Some("shop.Item".into())
            ])
        );
        let e = load("[ingest.subjects]\nc = x\nz = y\n").unwrap_err();
        assert!(
            e.contains(
                "[ingest.subjects] c: a subject is for the avro, jsonschema and protobuf routes"
            ),
            "{e}"
        );
        assert!(e.contains("[ingest.subjects] z: no such stream"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
