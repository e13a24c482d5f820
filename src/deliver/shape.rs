//! Request shaping: what a call looks like beyond its body. `target_url`
//! may hold placeholders filled from the message — `{topic}`,
//! `{partition}`, `{offset}`, `{key}` and `{/json/pointer}` (RFC 6901 into
//! the value; a string as its text, a number or boolean as its JSON) —
//! each percent-encoded (only unreserved characters stay), and only after
//! the host: a record never chooses where a call goes, only its path and
//! query. A message whose placeholder cannot be filled is dead-lettered
//! with the reason. `method` is POST, PUT or PATCH; `headers` adds static
//! header fields (a JSON object); `forward_headers` names record headers
//! sent on as header fields of single-message calls.

use serde_json::Value;

use super::{ValueKind, Work};

/// Header fields kbridge sets itself: neither `headers` nor
/// `forward_headers` may name them.
const OWN: &[&str] = &[
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "authorization",
    "idempotency-key",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Topic,
    Partition,
    Offset,
    Key,
    Pointer(String),
}

/// `target_url` as parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What a template reads of a message.
pub struct Fill<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

impl Template {
    pub fn parse(url: &str) -> Result<Template, String> {
        let authority_end = url
            .find("://")
            .map(|i| i + 3)
            .and_then(|start| url[start..].find('/').map(|j| start + j))
            .unwrap_or(url.len());
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = url;
        let mut at = 0;
        while let Some(open) = rest.find('{') {
            text.push_str(&rest[..open]);
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("a {{ at byte {} is not closed", at + open));
            };
            let name = &rest[open + 1..open + close];
            if at + open < authority_end {
                return Err(format!(
                    "placeholder {{{name}}} before the path: the scheme and host are fixed"
                ));
            }
            let part = match name {
                "topic" => Part::Topic,
                "partition" => Part::Partition,
                "offset" => Part::Offset,
                "key" => Part::Key,
                p if p.starts_with('/') && super::filter::valid_pointer(p) => {
                    Part::Pointer(p.to_string())
                }
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}}: expected {{topic}}, {{partition}}, {{offset}}, {{key}} or a JSON Pointer such as {{/user/id}}"
                    ));
                }
            };
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(part);
            at += open + close + 1;
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err("a } without its {".into());
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { parts })
    }

    /// `url` as it is, placeholders or not.
    pub fn fixed(url: &str) -> Template {
        Template {
            parts: vec![Part::Text(url.to_string())],
        }
    }

    /// No placeholder: one URL for every call.
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// Whether rendering reads the value's JSON.
    fn needs_json(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Pointer(_)))
    }

    /// The URL for one message, or why it has none.
    pub fn render(&self, m: &Fill<'_>) -> Result<String, String> {
        let json: Option<Value> = self
            .needs_json()
            .then(|| m.value.and_then(|v| serde_json::from_slice(v).ok()))
            .flatten();
        let mut url = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => url.push_str(t),
                Part::Topic => encode(m.topic.as_bytes(), &mut url),
                Part::Partition => url.push_str(&m.partition.to_string()),
                Part::Offset => url.push_str(&m.offset.to_string()),
                Part::Key => match m.key {
                    Some(k) if !k.is_empty() => encode(k, &mut url),
                    _ => return Err("target_url needs {key}, and the record has none".into()),
                },
                Part::Pointer(ptr) => match json.as_ref().and_then(|j| j.pointer(ptr)) {
                    Some(Value::String(s)) if !s.is_empty() => encode(s.as_bytes(), &mut url),
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => {
                        encode(v.to_string().as_bytes(), &mut url)
                    }
                    _ => {
                        return Err(format!(
                            "target_url needs {{{ptr}}}, and the value has no text, number or boolean there"
                        ));
                    }
                },
            }
        }
        Ok(url)
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn encode(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// An HTTP field name (RFC 9110 token) that kbridge does not set itself.
pub fn header_name(name: &str) -> Result<(), String> {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(format!("{name:?} is not a header name"));
    }
    let lower = name.to_ascii_lowercase();
    if OWN.contains(&lower.as_str())
        || lower.starts_with("x-kafka-")
        || lower.starts_with("webhook-")
    {
        return Err(format!("{name} is set by kbridge itself"));
    }
    Ok(())
}

/// `headers`: a JSON object of header fields with text values.
pub fn static_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("expected a JSON object: {e}"))?;
    let Value::Object(o) = v else {
        return Err(format!(
            "expected a JSON object such as {{\"X-Source\": \"kbridge\"}}, got {v}"
        ));
    };
    o.into_iter()
        .map(|(k, v)| {
            header_name(&k)?;
            match v {
                Value::String(s) if field_value(s.as_bytes()) => Ok((k, s)),
                other => Err(format!("{k}: expected printable text, got {other}")),
            }
        })
        .collect()
}

/// `forward_headers`: record header names, comma-separated.
pub fn forwarded(text: &str) -> Result<Vec<String>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|n| header_name(n).map(|()| n.to_string()))
        .collect()
}

/// Bytes that may stand as a header field value (visible ASCII, spaces
/// and tabs inside; no CR, LF or NUL).
pub fn field_value(v: &[u8]) -> bool {
    v.iter().all(|b| matches!(b, b'\t' | 0x20..=0x7e))
}

/// How one call goes out beyond its body (see `shape`).
pub struct Shaped<'a> {
    pub method: &'static str,
    pub url: &'a str,
    /// `headers`, then (one message) its forwarded headers and timestamp.
    pub fields: Vec<(&'a str, String)>,
}

/// The method, URL and added header fields of the call for `batch`.
pub fn shape_of<'a>(c: &'a super::config::DeliverConfig, batch: &'a [Work]) -> Shaped<'a> {
    use super::config::{Method, OnTombstone};
    let one = (batch.len() == 1).then(|| &batch[0].msg);
    let method = match (one, c.method) {
        (Some(m), _) if m.kind == ValueKind::Tombstone && c.on_tombstone == OnTombstone::Delete => {
            "DELETE"
        }
        (_, Method::Post) => "POST",
        (_, Method::Put) => "PUT",
        (_, Method::Patch) => "PATCH",
    };
    let mut fields: Vec<(&str, String)> = c
        .extra_headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    if let Some(m) = one {
        if let Some(ts) = m.timestamp {
            fields.push(("X-Kafka-Timestamp", ts.to_string()));
        }
        for name in &c.forward_headers {
            // The first of that name; a value that could not stand in a
            // header field (bytes, line breaks) is not sent.
            if let Some((_, Some(v))) = m.headers.iter().find(|(k, _)| k == name.as_bytes())
                && field_value(v)
            {
                fields.push((name.as_str(), String::from_utf8_lossy(v).into_owned()));
            }
        }
    }
    Shaped {
        method,
        url: one.and_then(|m| m.url.as_deref()).unwrap_or(&c.target_url),
        fields,
    }
}

#[cfg(test)]
#[path = "shape_tests.rs"]
mod tests;
