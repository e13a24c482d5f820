//! What one message becomes on disk (pure): exactly one line per record,
//! whatever the value holds. `raw` writes the value itself; `envelope`
//! writes `{"topic","partition","offset","key","timestamp","value"}` with
//! the value embedded verbatim (key order, big integers and all). A JSON
//! value spread over several lines is joined (line breaks between JSON
//! tokens mean nothing); a value that is not JSON and holds a line break is
//! written as a JSON string, so no record ever spans two lines.

use std::borrow::Cow;

use serde_json::value::RawValue;

/// Coordinates written in an envelope line.
pub struct Coordinates<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub timestamp: Option<i64>,
}

/// `value` as one line of `raw` output.
pub fn raw_line(value: &[u8]) -> Cow<'_, [u8]> {
    if !value.contains(&b'\n') && !value.contains(&b'\r') {
        return Cow::Borrowed(value);
    }
    Cow::Owned(json_value(value))
}

/// The envelope line of a message.
pub fn envelope_line(c: &Coordinates<'_>, value: &[u8]) -> Vec<u8> {
    let key = c.key.map(|k| String::from_utf8_lossy(k).into_owned());
    let mut out = Vec::with_capacity(value.len() + 128);
    out.extend_from_slice(b"{\"topic\":");
    out.extend(json_string(c.topic));
    out.extend(
        format!(
            ",\"partition\":{},\"offset\":{},\"key\":",
            c.partition, c.offset
        )
        .bytes(),
    );
    match key {
        Some(k) => out.extend(json_string(&k)),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"timestamp\":");
    match c.timestamp {
        Some(t) => out.extend(t.to_string().bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"value\":");
    out.extend(json_value(value));
    out.push(b'}');
    out
}

/// `value` as a JSON value on one line: itself when it is JSON (with line
/// breaks, which JSON allows only between tokens, removed), else a string.
fn json_value(value: &[u8]) -> Vec<u8> {
    // RawValue checks the syntax without building the value (no depth
    // limit, nothing reordered or rounded).
    if serde_json::from_slice::<&RawValue>(value).is_ok() {
        let v = value.trim_ascii();
        return v
            .iter()
            .copied()
            .filter(|b| *b != b'\n' && *b != b'\r')
            .collect();
    }
    json_string(&String::from_utf8_lossy(value))
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
        assert_eq!(s(raw_line(br#"{"a":1}"#)), r#"{"a":1}"#);
        assert_eq!(
            s(raw_line(b"{\n  \"a\": 1,\r\n  \"b\": \"x y\"\n}\n")),
            r#"{  "a": 1,  "b": "x y"}"#
        );
        assert_eq!(s(raw_line(b"not json\nat all")), r#""not json\nat all""#);
        assert_eq!(s(raw_line(b"plain text")), "plain text");
    }

    #[test]
    fn envelopes_embed_the_value_verbatim() {
        let c = Coordinates {
            topic: "t",
            partition: 2,
            offset: 7,
            key: Some(b"k\"1"),
            timestamp: Some(1_700_000_000_000),
        };
        let line = s(envelope_line(
            &c,
            br#"{"z":1,"a":123456789012345678901234567890}"#,
        ));
        assert_eq!(
            line,
            r#"{"topic":"t","partition":2,"offset":7,"key":"k\"1","timestamp":1700000000000,"value":{"z":1,"a":123456789012345678901234567890}}"#
        );
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let line = envelope_line(&c, deep.as_bytes());
        assert!(serde_json::from_slice::<&RawValue>(&line).is_ok());
        let c = Coordinates {
            key: None,
            timestamp: None,
            ..c
        };
        assert!(
            s(envelope_line(&c, b"text"))
                .ends_with(r#""key":null,"timestamp":null,"value":"text"}"#)
        );
    }
}
