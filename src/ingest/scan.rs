//! Linear-time checks over JSON text for body splitting (pure): nesting
//! depth, an array read with a cap on its elements, and line numbers of
//! many offsets in one pass — so no request costs more than its size.

use std::cell::Cell;

use serde::Deserializer as _;
use serde::de::{Error as _, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Checks that objects and arrays in `json` nest at most `max` deep;
/// `Err(offset)` of the first opening bracket past it. Brackets inside
/// strings do not count.
pub fn check_depth(json: &[u8], max: usize) -> Result<(), usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in json.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(i);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Why an array could not be read.
pub enum ArrayError {
    Json(serde_json::Error),
    /// More than this many elements.
    TooMany(usize),
}

/// The elements of the JSON array `text`, stopping with
/// [`ArrayError::TooMany`] at element `max + 1` (memory stays bounded by
/// the cap, not by what the client sent).
pub fn bounded_array(text: &str, max: usize) -> Result<Vec<&RawValue>, ArrayError> {
    struct Elems<'c> {
        max: usize,
        over: &'c Cell<bool>,
    }
    impl<'de> Visitor<'de> for Elems<'_> {
        type Value = Vec<&'de RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(e) = seq.next_element::<&RawValue>()? {
                if out.len() == self.max {
                    self.over.set(true);
                    return Err(A::Error::custom("too many records"));
                }
                out.push(e);
            }
            Ok(out)
        }
    }
    let over = Cell::new(false);
    let mut de = serde_json::Deserializer::from_str(text);
    let items = de
        .deserialize_seq(Elems { max, over: &over })
        .and_then(|v| de.end().map(|()| v));
    match items {
        Ok(v) => Ok(v),
        Err(_) if over.get() => Err(ArrayError::TooMany(max)),
        Err(e) => Err(ArrayError::Json(e)),
    }
}

/// 1-based line numbers of ascending `offsets` in `bytes`, in one pass.
pub fn lines_of(bytes: &[u8], offsets: &[usize]) -> Vec<usize> {
    let (mut line, mut at) = (1, 0);
    offsets
        .iter()
        .map(|&o| {
            let o = o.clamp(at, bytes.len());
            line += bytes[at..o].iter().filter(|&&b| b == b'\n').count();
            at = o;
            line
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        assert_eq!(check_depth(br#"{"a":[{"b":1}]}"#, 3), Ok(()));
        assert_eq!(check_depth(br#"{"a":[{"b":1}]}"#, 2), Err(6));
        assert_eq!(check_depth(br#"{"a":"[[[{{{\"[["}"#, 1), Ok(()));
        let deep = "[".repeat(50_000) + &"]".repeat(50_000);
        assert_eq!(check_depth(deep.as_bytes(), 128), Err(128));
    }

    #[test]
    fn arrays_stop_at_the_cap() {
        assert_eq!(bounded_array("[{},{}]", 2).ok().map(|v| v.len()), Some(2));
        assert!(matches!(
            bounded_array("[{},{},{}]", 2),
            Err(ArrayError::TooMany(2))
        ));
        assert!(matches!(bounded_array("[{},", 5), Err(ArrayError::Json(_))));
        assert!(matches!(
            bounded_array("[{}] x", 5),
            Err(ArrayError::Json(_))
        ));
    }

    #[test]
    fn lines_of_many_offsets_in_one_pass() {
        assert_eq!(
            lines_of(b"a\nb\n\nc", &[0, 2, 5, 5, 99]),
            vec![1, 2, 4, 4, 4]
        );
    }
}
