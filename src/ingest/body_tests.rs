//! Unit tests of `ingest::body`: decoding, splitting, the fuzz corpus.
use super::*;
use std::io::Write;

const LIMITS: RecordLimits = RecordLimits {
    max_bytes: 1 << 20,
    max_records: 10_000,
    max_depth: 64,
};

fn limits(max_bytes: usize) -> RecordLimits {
    RecordLimits {
        max_bytes,
        ..LIMITS
    }
}

fn values(body: &str, format: Format) -> Vec<String> {
    let (text, spans) = split(body.as_bytes(), format, None, LIMITS).unwrap();
    spans
        .iter()
        .map(|s| text[s.range.clone()].to_string())
        .collect()
}

#[test]
fn single_object_keeps_its_bytes() {
    assert_eq!(
        values("  {\"a\": 1,  \"b\":[1, 2]}\n", Format::Json),
        vec!["{\"a\": 1,  \"b\":[1, 2]}"]
    );
}

#[test]
fn array_yields_each_object_verbatim() {
    assert_eq!(
        values("[{\"id\":\"1\"}, {\"id\": \"2\" }]", Format::Json),
        vec!["{\"id\":\"1\"}", "{\"id\": \"2\" }"]
    );
}

#[test]
fn ndjson_skips_blank_lines_and_crlf() {
    assert_eq!(
        values("{\"a\":1}\r\n\n{\"b\":2}\n", Format::Ndjson),
        vec!["{\"a\":1}", "{\"b\":2}"]
    );
}

#[test]
fn malformed_json_names_line_and_column() {
    let e = split(b"[{\"a\":1},\n {\"b\":}]", Format::Json, None, LIMITS).unwrap_err();
    assert_eq!(e.position(), Some((2, 7)), "{e}");
    assert_eq!(e.status(), 400);
    assert!(
        e.to_string()
            .starts_with("invalid JSON at line 2 column 7: expected value"),
        "{e}"
    );
}

#[test]
fn malformed_ndjson_names_its_line() {
    let e = split(
        b"{\"a\":1}\n{\"a\":1}\n{oops}\n",
        Format::Ndjson,
        None,
        LIMITS,
    )
    .unwrap_err();
    assert_eq!(e.position().map(|p| p.0), Some(3), "{e}");
}

#[test]
fn non_objects_empty_bodies_and_empty_batches_are_rejected() {
    let e = split(b"[{\"a\":1}, 5]", Format::Json, None, limits(100)).unwrap_err();
    assert_eq!(
        e,
        BodyError::NotObject {
            index: 1,
            line: 1,
            found: "a number"
        }
    );
    assert_eq!(
        split(b"  \n", Format::Json, None, limits(100)).unwrap_err(),
        BodyError::Empty
    );
    assert_eq!(
        split(b"[]", Format::Json, None, limits(100)).unwrap_err(),
        BodyError::EmptyBatch
    );
    assert_eq!(
        split(b"\"x\"", Format::Json, None, limits(100))
            .unwrap_err()
            .record(),
        Some(0)
    );
}

#[test]
fn invalid_utf8_names_its_position() {
    let e = split(b"{\"a\":\n\"\xff\"}", Format::Json, None, limits(100)).unwrap_err();
    assert_eq!(e, BodyError::Utf8 { line: 2, column: 2 });
}

#[test]
fn record_larger_than_limit_is_413() {
    let e = split(b"{\"a\":\"0123456789\"}", Format::Json, None, limits(10)).unwrap_err();
    assert_eq!(e.status(), 413);
    assert_eq!(e.record(), Some(0));
}

#[test]
fn key_field_reads_strings_and_numbers_only() {
    let body = b"{\"user\":\"u1\"}\n{\"user\":42}\n{\"user\":null}\n{\"other\":1}\n";
    let (_, spans) = split(body, Format::Ndjson, Some("user"), limits(100)).unwrap();
    let keys: Vec<Option<&[u8]>> = spans.iter().map(|s| s.key.as_deref()).collect();
    assert_eq!(keys, vec![Some(&b"u1"[..]), Some(b"42"), None, None]);
}

#[test]
fn content_types() {
    assert_eq!(
        format_of(Some("application/json; charset=utf-8")),
        Ok(Format::Json)
    );
    assert_eq!(format_of(Some("application/x-ndjson")), Ok(Format::Ndjson));
    assert_eq!(format_of(Some("text/plain")).unwrap_err().status(), 415);
    assert_eq!(format_of(None).unwrap_err().status(), 415);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn gzip_round_trips_and_bombs_stop_at_the_limit() {
    assert_eq!(
        decode(Some("gzip"), gzip(b"{\"a\":1}"), 100).unwrap(),
        b"{\"a\":1}"
    );
    let bomb = gzip(&vec![b' '; 10 * 1024 * 1024]);
    assert!(bomb.len() < 20_000);
    assert_eq!(
        decode(Some("gzip"), bomb, 1024 * 1024),
        Err(BodyError::InflatesTooLarge { max: 1024 * 1024 })
    );
}

#[test]
fn truncated_gzip_and_unknown_encodings_are_rejected() {
    let mut g = gzip(b"{\"a\":\"some text that compresses\"}");
    g.truncate(g.len() - 6);
    assert!(matches!(
        decode(Some("gzip"), g, 100),
        Err(BodyError::Gzip(_))
    ));
    assert_eq!(decode(Some("br"), vec![], 100).unwrap_err().status(), 415);
    assert_eq!(decode(None, b"x".to_vec(), 100).unwrap(), b"x");
}

/// The fuzzer's corpus (and the crashes it found, once fixed) replayed.
#[test]
fn fuzz_corpus_keeps_the_invariants() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/body");
    let mut n = 0;
    for f in std::fs::read_dir(dir).expect("fuzz/corpus/body exists") {
        let f = f.unwrap().path();
        exercise(&std::fs::read(&f).unwrap());
        n += 1;
    }
    assert!(n >= 10, "the corpus has {n} inputs");
}

#[test]
fn multi_member_gzip_decodes_whole_and_trailing_garbage_is_refused() {
    let mut two = gzip(b"{\"a\":1}\n");
    two.extend(gzip(b"{\"b\":2}\n"));
    assert_eq!(
        decode(Some("gzip"), two.clone(), 100).unwrap(),
        b"{\"a\":1}\n{\"b\":2}\n"
    );
    two.extend(b"garbage");
    assert!(matches!(
        decode(Some("gzip"), two, 100),
        Err(BodyError::Gzip(_))
    ));
}

#[test]
fn record_count_and_depth_are_capped() {
    let few = RecordLimits {
        max_records: 2,
        ..LIMITS
    };
    let e = split(b"[{},{},{}]", Format::Json, None, few).unwrap_err();
    assert_eq!((e.status(), e), (413, BodyError::TooManyRecords { max: 2 }));
    let e = split(b"{}\n{}\n{}\n", Format::Ndjson, None, few).unwrap_err();
    assert_eq!(e, BodyError::TooManyRecords { max: 2 });
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(64), "]".repeat(64));
    let e = split(deep.as_bytes(), Format::Json, None, LIMITS).unwrap_err();
    assert_eq!(
        (e.status(), e),
        (
            400,
            BodyError::TooDeep {
                index: 0,
                line: 1,
                max: 64
            }
        )
    );
    let ok = format!("{{\"a\":{}1{}}}", "[".repeat(63), "]".repeat(63));
    assert!(split(ok.as_bytes(), Format::Json, None, LIMITS).is_ok());
}

#[test]
fn array_error_positions_are_per_element() {
    let e = split(b"[{},\n{},\n\n5]", Format::Json, None, LIMITS).unwrap_err();
    assert_eq!(
        e,
        BodyError::NotObject {
            index: 2,
            line: 4,
            found: "a number"
        }
    );
}
