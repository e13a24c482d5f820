//! What one message becomes on disk (pure): exactly one line per record,
//! whatever the value holds.
//!
//! - `raw` writes the value itself when it holds no line break (any bytes,
//!   an empty value and a null value alike give an empty line); a JSON
//!   value spread over several lines is joined (line breaks between JSON
//!   tokens mean nothing); any other value with a line break is written as
//!   a JSON string: its text when it is UTF-8, else `"base64:<base64>"`.
//! - `envelope` writes `{"topic","partition","offset","key","timestamp",
//!   "value"}` with a JSON value embedded verbatim (key order, big integers
//!   and all), a null value as `null`, other UTF-8 text as a string, and
//!   bytes that are not UTF-8 as base64 with `"value_encoding":"base64"`;
//!   a key that is not UTF-8 likewise, with `"key_encoding":"base64"`.

use std::borrow::Cow;

use serde_json::value::RawValue;

use crate::kafka::record::base64;

/// Coordinates written in an envelope line.
pub struct Coordinates<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    /// The key is JSON (`key_format` decoded it): written as it is.
    pub key_json: bool,
    pub timestamp: Option<i64>,
}

/// `value` as one line of `raw` output.
pub fn raw_line(value: Option<&[u8]>) -> Cow<'_, [u8]> {
    let value = value.unwrap_or_default();
    if memchr::memchr2(b'\n', b'\r', value).is_none() {
        return Cow::Borrowed(value);
    }
    if let Some(joined) = one_line_json(value) {
        return Cow::Owned(joined);
    }
    Cow::Owned(match std::str::from_utf8(value) {
        Ok(text) => json_string(text),
        Err(_) => json_string(&format!("base64:{}", base64(value))),
    })
}

/// The envelope line of a message.
pub fn envelope_line(c: &Coordinates<'_>, value: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.map_or(0, <[u8]>::len) + 128);
    out.extend_from_slice(b"{\"topic\":");
    out.extend(json_string(c.topic));
    out.extend(
        format!(
            ",\"partition\":{},\"offset\":{},\"key\":",
            c.partition, c.offset
        )
        .bytes(),
    );
    let key_b64 = match c.key {
        None => {
            out.extend_from_slice(b"null");
            false
        }
        Some(k) if c.key_json => {
            out.extend_from_slice(k);
            false
        }
        Some(k) => text_or_base64(&mut out, k),
    };
    out.extend_from_slice(b",\"timestamp\":");
    match c.timestamp {
        Some(t) => out.extend(t.to_string().bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"value\":");
    let value_b64 = match value {
        None => {
            out.extend_from_slice(b"null");
            false
        }
        Some(v) => match one_line_json(v) {
            Some(json) => {
                out.extend(json);
                false
            }
            None => text_or_base64(&mut out, v),
        },
    };
    if key_b64 {
        out.extend_from_slice(b",\"key_encoding\":\"base64\"");
    }
    if value_b64 {
        out.extend_from_slice(b",\"value_encoding\":\"base64\"");
    }
    out.push(b'}');
    out
}

/// Writes `b` as a JSON string of its text, or of its base64 when it is not
/// UTF-8 (then returns true).
fn text_or_base64(out: &mut Vec<u8>, b: &[u8]) -> bool {
    match std::str::from_utf8(b) {
        Ok(text) => {
            out.extend(json_string(text));
            false
        }
        Err(_) => {
            out.extend(json_string(&base64(b)));
            true
        }
    }
}

/// `value` on one line when it is JSON (line breaks, which JSON allows
/// only between tokens, removed), else `None`.
fn one_line_json(value: &[u8]) -> Option<Vec<u8>> {
    // RawValue checks the syntax without building the value (nothing
    // reordered or rounded).
    serde_json::from_slice::<&RawValue>(value).ok()?;
    Some(
        value
            .trim_ascii()
            .iter()
            .copied()
            .filter(|b| *b != b'\n' && *b != b'\r')
            .collect(),
    )
}

fn json_string(s: &str) -> Vec<u8> {
    serde_json::to_vec(s).unwrap_or_else(|_| b"\"\"".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: impl Into<Vec<u8>>) -> String {
        String::from_utf8(v.into()).unwrap()
    }

    #[test]
    fn raw_lines_are_one_record_each() {
        let raw = |v: &[u8]| raw_line(Some(v)).into_owned();
        assert_eq!(s(raw(br#"{"a":1}"#)), r#"{"a":1}"#);
        assert_eq!(
            s(raw(b"{\n  \"a\": 1,\r\n  \"b\": \"x y\"\n}\n")),
            r#"{  "a": 1,  "b": "x y"}"#
        );
        assert_eq!(s(raw(b"not json\nat all")), r#""not json\nat all""#);
        assert_eq!(s(raw(b"plain text")), "plain text");
        assert_eq!(s(raw(b"\xff\n\x00")), r#""base64:/woA""#);
        assert_eq!(
            raw(b"\xff\xfe"),
            b"\xff\xfe",
            "no line break: the bytes as they are"
        );
        assert_eq!(raw_line(None).len(), 0, "a tombstone is an empty line");
        assert_eq!(raw(b"").len(), 0);
    }

    #[test]
    fn envelopes_embed_the_value_verbatim() {
        let c = Coordinates {
            key_json: false,
            topic: "t",
            partition: 2,
            offset: 7,
            key: Some(b"k\"1"),
            timestamp: Some(1_700_000_000_000),
        };
        let line = s(envelope_line(
            &c,
            Some(br#"{"z":1,"a":123456789012345678901234567890}"#),
        ));
        assert_eq!(
            line,
            r#"{"topic":"t","partition":2,"offset":7,"key":"k\"1","timestamp":1700000000000,"value":{"z":1,"a":123456789012345678901234567890}}"#
        );
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let line = envelope_line(&c, Some(deep.as_bytes()));
        assert!(serde_json::from_slice::<&RawValue>(&line).is_ok());
        let c = Coordinates {
            key: None,
            timestamp: None,
            ..c
        };
        assert!(
            s(envelope_line(&c, Some(b"text")))
                .ends_with(r#""key":null,"timestamp":null,"value":"text"}"#)
        );
        assert!(s(envelope_line(&c, None)).ends_with(r#""value":null}"#));
        assert!(s(envelope_line(&c, Some(b""))).ends_with(r#""value":""}"#));
    }

    #[test]
    fn bytes_that_are_not_text_are_base64_and_say_so() {
        let c = Coordinates {
            key_json: false,
            topic: "t",
            partition: 0,
            offset: 1,
            key: Some(b"\xff"),
            timestamp: None,
        };
        let line = envelope_line(&c, Some(b"\xfe\n\xff"));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["key"], "/w==");
        assert_eq!(v["key_encoding"], "base64");
        assert_eq!(v["value"], "/gr/");
        assert_eq!(v["value_encoding"], "base64");
        assert!(!line.contains(&b'\n'));
    }
}
