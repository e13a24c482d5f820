//! JSON records read for a schema: one `serde_json::Value` per record,
//! with a name repeated in one object refused. serde_json keeps the last
//! of repeated names, other readers the first: a record checked against a
//! JSON Schema and stored as sent, or encoded as Avro or Protobuf, must
//! mean one thing to every reader, so such a record is a misfit naming the
//! object and the name.

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Value};

use super::Misfit;

/// `json` as a JSON value, or why not (the path of the object that repeats
/// a name, or of the place the JSON stops being JSON).
pub fn value(json: &[u8]) -> Result<Value, Misfit> {
    // Read once without tracking the path (which copies every name); a
    // record that fails is read again to say where.
    let mut de = serde_json::Deserializer::from_slice(json);
    match Unique
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
    {
        Ok(v) => Ok(v),
        Err(_) => Err(misfit(json)),
    }
}

/// Why `json` (known not to read) does not, and where.
fn misfit(json: &[u8]) -> Misfit {
    let mut de = serde_json::Deserializer::from_slice(json);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(&mut de, &mut track);
    let e = match Unique.deserialize(tracked).and_then(|_| de.end()) {
        Err(e) => e,
        Ok(()) => serde_json::Error::custom("unreadable"),
    };
    let path = track.path().to_string();
    // A repeated name is the only data error of a `Value`: the path says
    // where, not the line and column serde_json appends.
    let message = match e.is_data() {
        true => {
            let full = e.to_string();
            let at = format!(" at line {} column {}", e.line(), e.column());
            full.strip_suffix(&at).unwrap_or(&full).to_string()
        }
        false => format!("not JSON: {e}"),
    };
    Misfit {
        path: if path == "." { String::new() } else { path },
        message,
    }
}

/// A JSON value whose objects repeat no name.
struct Unique;

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element_seed(Unique)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let v = map.next_value_seed(Unique)?;
            match out.entry(name) {
                Entry::Vacant(e) => {
                    e.insert(v);
                }
                Entry::Occupied(e) => {
                    return Err(A::Error::custom(format!(
                        "the name {} appears twice in one object",
                        Value::String(e.key().clone())
                    )));
                }
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_serde_json_reads_them_and_repeated_names_are_refused() {
        let text = r#"{"a":[1,-2,3.5,"x",null,true,{"b":{}}],"c":18446744073709551615}"#;
        let want: Value = serde_json::from_str(text).unwrap();
        assert_eq!(value(text.as_bytes()), Ok(want));
        let m = value(br#"{"a":1,"b":{"c":[{"d":1,"d":2}]}}"#).unwrap_err();
        assert_eq!(m.path, "b.c[0]");
        assert_eq!(m.message, "the name \"d\" appears twice in one object");
        let m = value(br#"{"a":1,"a":1}"#).unwrap_err();
        assert_eq!(m.path, "");
        // Names compare as decoded: an escape does not make one new.
        assert!(value(br#"{"a":1,"\u0061":2}"#).is_err());
        let m = value(br#"{"a":1} x"#).unwrap_err();
        assert!(
            m.message.starts_with("not JSON: trailing characters"),
            "{m:?}"
        );
        let m = value(b"{\"a\":").unwrap_err();
        assert!(m.message.starts_with("not JSON: EOF"), "{m:?}");
    }
}
