//! The REST Proxy v2 request body, read strictly: a JSON object of
//! `records`, `key_schema`, `value_schema`, `key_schema_id` and
//! `value_schema_id`, each record an object of `key`, `value` and
//! `partition`. Unknown and repeated names are refused, and so are arrays
//! in place of either object (serde's derived readers would take a struct
//! from the array of its fields in order, which no REST Proxy client sends
//! and the REST Proxy refuses). Records are read one by one, refused (413)
//! past `max_records`, so a body of many tiny records never holds more.

use serde::Deserialize;
use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::restproxy::Refusal;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope<'a> {
    /// Read after the rest (see [`records`]).
    #[serde(borrow)]
    pub records: &'a RawValue,
    #[serde(default, borrow)]
    pub key_schema: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub value_schema: Option<&'a RawValue>,
    #[serde(default)]
    pub key_schema_id: Option<serde_json::Value>,
    #[serde(default)]
    pub value_schema_id: Option<serde_json::Value>,
}

/// One record of `records`.
pub struct Record<'a> {
    pub key: Option<&'a RawValue>,
    pub value: &'a RawValue,
    pub partition: Option<i32>,
}

fn bad(m: String) -> Refusal {
    Refusal::new(422, 42205, m)
}

/// The envelope of a request body (its records still unread).
pub fn parse(text: &str) -> Result<Envelope<'_>, Refusal> {
    if !text.trim_start().starts_with('{') {
        return Err(bad(
            "the request body must be a JSON object with \"records\"".into(),
        ));
    }
    // serde_json's message ends with the line and column.
    serde_json::from_str(text).map_err(|e| bad(format!("invalid request body: {e}")))
}

const TOO_MANY: &str = "kbridge: too many records";

/// The records of the `records` array, at most `max` of them.
pub fn records(array: &str, max: usize) -> Result<Vec<Record<'_>>, Refusal> {
    let mut de = serde_json::Deserializer::from_str(array);
    Records(max)
        .deserialize(&mut de)
        .map_err(|e| match e.to_string().starts_with(TOO_MANY) {
            true => Refusal::new(
                413,
                413,
                format!("more than max_records ({max}) records in one request"),
            ),
            false => bad(format!("records: {e}")),
        })
}

struct Records(usize);

impl<'de> Visitor<'de> for Records {
    type Value = Vec<Record<'de>>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(r) = seq.next_element_seed(OneRecord)? {
            if out.len() == self.0 {
                return Err(A::Error::custom(TOO_MANY));
            }
            out.push(r);
        }
        Ok(out)
    }
}

impl<'de> DeserializeSeed<'de> for Records {
    type Value = Vec<Record<'de>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

/// A record's names (unknown ones are refused by name).
#[derive(Deserialize, Clone, Copy)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    Key,
    Value,
    Partition,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Key => "key",
            Field::Value => "value",
            Field::Partition => "partition",
        }
    }
}

/// One record, from an object only.
struct OneRecord;

impl<'de> Visitor<'de> for OneRecord {
    type Value = Record<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a record: an object with \"value\" and maybe \"key\" and \"partition\"")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut key, mut value, mut partition) = (None, None, None);
        while let Some(field) = map.next_key::<Field>()? {
            let twice = match field {
                Field::Key => key
                    .replace(map.next_value::<Option<&'de RawValue>>()?)
                    .is_some(),
                Field::Value => value.replace(map.next_value::<&'de RawValue>()?).is_some(),
                Field::Partition => partition
                    .replace(map.next_value::<Option<i32>>()?)
                    .is_some(),
            };
            if twice {
                return Err(A::Error::custom(format_args!(
                    "duplicate field `{}`",
                    field.name()
                )));
            }
        }
        Ok(Record {
            key: key.flatten(),
            value: value.ok_or_else(|| A::Error::missing_field("value"))?,
            partition: partition.flatten(),
        })
    }
}

impl<'de> DeserializeSeed<'de> for OneRecord {
    type Value = Record<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}
