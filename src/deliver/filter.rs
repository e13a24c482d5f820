//! `filter`: which messages a subscription sends. A filter is one JSON
//! object in the config line: a condition on a JSON field of the value
//! (RFC 6901 JSON Pointer), on a record header or on the key, or `all` /
//! `any` / `not` of filters:
//!
//! ```text
//! filter = {"all": [{"field": "/type", "one_of": ["click", "view"]},
//!                   {"not": {"header": "source", "prefix": "test-"}}]}
//! ```
//!
//! Tests: `equals` (a JSON value; text for headers and the key), `one_of`
//! (an array of such), `prefix` (text), `regex` (the linear-time `regex`
//! crate, unanchored), `exists` / `absent` (`true`), and `gt`, `gte`, `lt`,
//! `lte` (a number; headers and the key compare as the number their text
//! reads). A field that is missing, of another type, or in a value that is
//! no JSON fails every test but `absent`. A message that does not match is
//! done (committed) and counted, never sent. Parsing is pure and every
//! mistake names where it is (`all[1].not: ...`).

use regex::bytes::{Regex, RegexBuilder};
use serde_json::{Map, Value};

/// The most a regex may compile to (bytes), and how deep filters nest.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone)]
pub enum Filter {
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
    Cond(Target, Test),
}

#[derive(Debug, Clone)]
pub enum Target {
    /// A JSON Pointer into the value.
    Field(String),
    Header(String),
    Key,
}

#[derive(Debug, Clone)]
pub enum Test {
    Equals(Value),
    OneOf(Vec<Value>),
    Prefix(String),
    Regex(Regex),
    Exists,
    Absent,
    Compare(Cmp, f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Gt,
    Gte,
    Lt,
    Lte,
}

/// What a filter reads of a message.
pub struct Record<'a> {
    pub value: Option<&'a [u8]>,
    pub key: Option<&'a [u8]>,
    pub headers: &'a [(Vec<u8>, Option<Vec<u8>>)],
}

const TESTS: &[&str] = &[
    "equals", "one_of", "prefix", "regex", "exists", "absent", "gt", "gte", "lt", "lte",
];

impl Filter {
    /// Parses a filter (the config line's text).
    pub fn parse(text: &str) -> Result<Filter, String> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("not a JSON filter object: {e}"))?;
        parse_at(&v, "", 0)
    }

    /// Whether any condition reads the value's JSON (parsed once then).
    pub fn needs_json(&self) -> bool {
        match self {
            Filter::All(fs) | Filter::Any(fs) => fs.iter().any(Filter::needs_json),
            Filter::Not(f) => f.needs_json(),
            Filter::Cond(t, _) => matches!(t, Target::Field(_)),
        }
    }

    /// Does `r` match? `json` is the value parsed, when it is JSON and
    /// [`Self::needs_json`].
    pub fn matches(&self, r: &Record<'_>, json: Option<&Value>) -> bool {
        match self {
            Filter::All(fs) => fs.iter().all(|f| f.matches(r, json)),
            Filter::Any(fs) => fs.iter().any(|f| f.matches(r, json)),
            Filter::Not(f) => !f.matches(r, json),
            Filter::Cond(Target::Field(p), test) => {
                test_json(test, json.and_then(|j| j.pointer(p)))
            }
            Filter::Cond(Target::Header(name), test) => {
                let found = r
                    .headers
                    .iter()
                    .find(|(k, _)| k.as_slice() == name.as_bytes());
                test_bytes(test, found.map(|(_, v)| v.as_deref().unwrap_or_default()))
            }
            Filter::Cond(Target::Key, test) => test_bytes(test, r.key),
        }
    }
}

fn test_json(test: &Test, v: Option<&Value>) -> bool {
    match (test, v) {
        (Test::Absent, v) => v.is_none(),
        (_, None) => false,
        (Test::Exists, Some(_)) => true,
        (Test::Equals(want), Some(v)) => same(want, v),
        (Test::OneOf(wants), Some(v)) => wants.iter().any(|w| same(w, v)),
        (Test::Prefix(p), Some(Value::String(s))) => s.starts_with(p.as_str()),
        (Test::Regex(re), Some(Value::String(s))) => re.is_match(s.as_bytes()),
        (Test::Compare(op, n), Some(Value::Number(v))) => {
            v.as_f64().is_some_and(|v| cmp(*op, v, *n))
        }
        _ => false,
    }
}

/// JSON equality, numbers by value (`1` equals `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn test_bytes(test: &Test, v: Option<&[u8]>) -> bool {
    match (test, v) {
        (Test::Absent, v) => v.is_none(),
        (_, None) => false,
        (Test::Exists, Some(_)) => true,
        (Test::Equals(Value::String(s)), Some(v)) => v == s.as_bytes(),
        (Test::OneOf(wants), Some(v)) => wants
            .iter()
            .any(|w| matches!(w, Value::String(s) if v == s.as_bytes())),
        (Test::Prefix(p), Some(v)) => v.starts_with(p.as_bytes()),
        (Test::Regex(re), Some(v)) => re.is_match(v),
        (Test::Compare(op, n), Some(v)) => std::str::from_utf8(v)
            .ok()
            .and_then(|t| t.trim().parse::<f64>().ok())
            .is_some_and(|v| cmp(*op, v, *n)),
        _ => false,
    }
}

fn cmp(op: Cmp, v: f64, n: f64) -> bool {
    match op {
        Cmp::Gt => v > n,
        Cmp::Gte => v >= n,
        Cmp::Lt => v < n,
        Cmp::Lte => v <= n,
    }
}

fn parse_at(v: &Value, at: &str, depth: usize) -> Result<Filter, String> {
    let here = if at.is_empty() { "filter" } else { at };
    if depth > MAX_DEPTH {
        return Err(format!("{here}: filters nest deeper than {MAX_DEPTH}"));
    }
    let Value::Object(o) = v else {
        return Err(format!("{here}: expected an object, got {v}"));
    };
    let join = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    for combinator in ["all", "any", "not"] {
        let Some(inner) = o.get(combinator) else {
            continue;
        };
        if o.len() > 1 {
            return Err(format!(
                "{here}: {combinator} stands alone in its object, got also {}",
                others(o, combinator)
            ));
        }
        let at = join(combinator);
        if combinator == "not" {
            return Ok(Filter::Not(Box::new(parse_at(inner, &at, depth + 1)?)));
        }
        let Some(items) = inner.as_array().filter(|a| !a.is_empty()) else {
            return Err(format!("{at}: expected a non-empty array of filters"));
        };
        let fs = items
            .iter()
            .enumerate()
            .map(|(i, f)| parse_at(f, &format!("{at}[{i}]"), depth + 1))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(if combinator == "all" {
            Filter::All(fs)
        } else {
            Filter::Any(fs)
        });
    }
    let targets: Vec<&str> = ["field", "header", "key"]
        .into_iter()
        .filter(|k| o.contains_key(*k))
        .collect();
    let tests: Vec<&str> = TESTS
        .iter()
        .copied()
        .filter(|k| o.contains_key(*k))
        .collect();
    if let Some(unknown) = o
        .keys()
        .find(|k| !TESTS.contains(&k.as_str()) && !["field", "header", "key"].contains(&k.as_str()))
    {
        return Err(format!(
            "{here}: unknown {unknown:?} (a condition has one of field, header, key and one of {}; or use all, any, not)",
            TESTS.join(", ")
        ));
    }
    let [target] = targets[..] else {
        return Err(format!(
            "{here}: a condition names exactly one of field, header, key, got {}",
            if targets.is_empty() {
                "none".into()
            } else {
                targets.join(", ")
            }
        ));
    };
    let [test] = tests[..] else {
        return Err(format!(
            "{here}: a condition has exactly one test of {}, got {}",
            TESTS.join(", "),
            if tests.is_empty() {
                "none".into()
            } else {
                tests.join(", ")
            }
        ));
    };
    let target = match (target, &o[target]) {
        ("field", Value::String(p)) if valid_pointer(p) => Target::Field(p.clone()),
        ("field", other) => {
            return Err(format!(
                "{}: expected a JSON Pointer such as \"/type\" or \"/user/id\" (RFC 6901), got {other}",
                join("field")
            ));
        }
        ("header", Value::String(h)) if !h.is_empty() => Target::Header(h.clone()),
        ("header", other) => {
            return Err(format!(
                "{}: expected a header name, got {other}",
                join("header")
            ));
        }
        (_, Value::Bool(true)) => Target::Key,
        (_, other) => return Err(format!("{}: expected true, got {other}", join("key"))),
    };
    let text_only = !matches!(target, Target::Field(_));
    let arg = &o[test];
    let at = join(test);
    let test = match test {
        "equals" => {
            text_arg(arg, text_only, &at)?;
            Test::Equals(arg.clone())
        }
        "one_of" => {
            let Some(items) = arg.as_array().filter(|a| !a.is_empty()) else {
                return Err(format!("{at}: expected a non-empty array of values"));
            };
            for (i, item) in items.iter().enumerate() {
                text_arg(item, text_only, &format!("{at}[{i}]"))?;
            }
            Test::OneOf(items.clone())
        }
        "prefix" => match arg {
            Value::String(s) => Test::Prefix(s.clone()),
            other => return Err(format!("{at}: expected a string, got {other}")),
        },
        "regex" => match arg {
            Value::String(s) => Test::Regex(
                RegexBuilder::new(s)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| format!("{at}: {e}"))?,
            ),
            other => {
                return Err(format!(
                    "{at}: expected a regular expression string, got {other}"
                ));
            }
        },
        "exists" | "absent" => match arg {
            Value::Bool(true) if test == "exists" => Test::Exists,
            Value::Bool(true) => Test::Absent,
            other => return Err(format!("{at}: expected true, got {other}")),
        },
        op => {
            let Some(n) = arg.as_f64() else {
                return Err(format!("{at}: expected a number, got {arg}"));
            };
            let op = match op {
                "gt" => Cmp::Gt,
                "gte" => Cmp::Gte,
                "lt" => Cmp::Lt,
                _ => Cmp::Lte,
            };
            Test::Compare(op, n)
        }
    };
    Ok(Filter::Cond(target, test))
}

fn text_arg(v: &Value, text_only: bool, at: &str) -> Result<(), String> {
    if text_only && !v.is_string() {
        return Err(format!(
            "{at}: headers and the key compare as text: expected a string, got {v}"
        ));
    }
    Ok(())
}

fn others(o: &Map<String, Value>, but: &str) -> String {
    o.keys()
        .filter(|k| k.as_str() != but)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ")
}

/// RFC 6901: empty, or `/`-separated tokens where `~` is followed by 0 or 1.
pub(super) fn valid_pointer(p: &str) -> bool {
    if !(p.is_empty() || p.starts_with('/')) {
        return false;
    }
    let b = p.as_bytes();
    b.iter()
        .enumerate()
        .all(|(i, c)| *c != b'~' || matches!(b.get(i + 1), Some(b'0' | b'1')))
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
