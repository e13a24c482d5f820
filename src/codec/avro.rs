//! Avro datums by one schema, both ways, in Avro's JSON encoding (unions
//! as `null` or `{"<branch>": value}`, bytes and fixed as strings of code
//! points U+0000–U+00FF, logical types as their underlying type, NaN and
//! the infinities as strings). `apache-avro` parses the schema and names
//! its types; the datum codec is kbridge's own, for two reasons measured
//! against the crate's: its decoder recurses without a bound (a recursive
//! schema lets a hostile record of a few kilobytes nest a million deep and
//! overflow the stack) and it builds a value tree where kbridge writes JSON
//! straight out. Here decoding is bounded in depth and output, and every
//! fault is an error, never a panic. JSON records are taken in the same
//! encoding and, for unions, also bare (the first branch that fits);
//! missing fields take their defaults, unknown fields are refused, and a
//! misfit names its field path.

use std::collections::HashMap;

use apache_avro::schema::{Name, ResolvedSchema, Schema as Avro};
use serde_json::Value;

use super::Misfit;

/// How deep a decoded datum may nest (records, arrays, maps, unions).
pub const MAX_DEPTH: usize = 128;

#[derive(Debug)]
pub struct Schema {
    root: Avro,
    names: HashMap<Name, Avro>,
    /// The schema's text as given (what is registered).
    text: String,
}

impl PartialEq for Schema {
    fn eq(&self, o: &Schema) -> bool {
        self.root.canonical_form() == o.root.canonical_form()
    }
}
impl Eq for Schema {}

impl Schema {
    /// A schema from its JSON text, parsed on a stack of its own.
    pub fn parse(text: &str) -> Result<Schema, String> {
        let text = text.to_string();
        super::on_big_stack(move || Schema::parse_here(&text))
    }

    fn parse_here(text: &str) -> Result<Schema, String> {
        let root = Avro::parse_str(text).map_err(|e| format!("not an Avro schema: {e}"))?;
        let names = ResolvedSchema::try_from(&root)
            .map_err(|e| format!("not an Avro schema: {e}"))?
            .get_names()
            .iter()
            .map(|(n, s)| (n.clone(), (*s).clone()))
            .collect();
        Ok(Schema {
            root,
            names,
            text: text.to_string(),
        })
    }

    /// A schema from a `.avsc` file.
    pub fn open(file: &std::path::Path) -> Result<Schema, String> {
        super::open_schema(file, Schema::parse)
    }

    /// The schema's text as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The top type's name (a record's full name, or the primitive's).
    pub fn name(&self) -> String {
        branch_name(&self.root)
    }

    /// A JSON record encoded as a datum, appended to `out`.
    pub fn from_json(&self, json: &[u8], out: &mut Vec<u8>) -> Result<(), Misfit> {
        let value = super::json::value(json)?;
        let mut path = Vec::new();
        self.encode(&self.root, &value, out, &mut path)
            .map_err(|message| Misfit {
                path: show_path(&path),
                message,
            })
    }

    /// A datum (the whole of `bytes`) as JSON.
    pub fn to_json(&self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(bytes.len() * 2 + 16);
        let cap = (1 << 24) + bytes.len() * 32;
        let mut d = super::avro_decode::Decoder {
            names: &self.names,
            input: bytes,
            out: &mut out,
            cap,
        };
        d.value(&self.root, 0)?;
        if !d.input.is_empty() {
            return Err(format!("{} bytes left over after the datum", d.input.len()));
        }
        Ok(out)
    }

    fn resolve<'a>(&'a self, s: &'a Avro) -> Result<&'a Avro, String> {
        match s {
            Avro::Ref { name } => self
                .names
                .get(name)
                .ok_or_else(|| format!("unknown type {}", name.fullname(None))),
            s => Ok(s),
        }
    }

    fn encode(
        &self,
        s: &Avro,
        v: &Value,
        out: &mut Vec<u8>,
        path: &mut Vec<Seg>,
    ) -> Result<(), String> {
        let s = underlying(self.resolve(s)?);
        let want = |what: &str| format!("expected {what}, got {}", kind(v));
        match s {
            Avro::Null => v.is_null().then_some(()).ok_or_else(|| want("null")),
            Avro::Boolean => {
                let b = v.as_bool().ok_or_else(|| want("a boolean"))?;
                out.push(b as u8);
                Ok(())
            }
            Avro::Int => {
                let i = v
                    .as_i64()
                    .and_then(|i| i32::try_from(i).ok())
                    .ok_or_else(|| want("an int (32 bits)"))?;
                put_long(out, i64::from(i));
                Ok(())
            }
            Avro::Long => {
                put_long(out, v.as_i64().ok_or_else(|| want("a long (64 bits)"))?);
                Ok(())
            }
            Avro::Float => {
                let f = float(v).ok_or_else(|| want("a float"))?;
                out.extend_from_slice(&(f as f32).to_le_bytes());
                Ok(())
            }
            Avro::Double => {
                let f = float(v).ok_or_else(|| want("a double"))?;
                out.extend_from_slice(&f.to_le_bytes());
                Ok(())
            }
            Avro::String => {
                let t = v.as_str().ok_or_else(|| want("a string"))?;
                put_long(out, t.len() as i64);
                out.extend_from_slice(t.as_bytes());
                Ok(())
            }
            Avro::Bytes => {
                let b = latin1(v).ok_or_else(|| want("bytes (a string of code points 0-255)"))?;
                put_long(out, b.len() as i64);
                out.extend_from_slice(&b);
                Ok(())
            }
            Avro::Fixed(f) => {
                let b = latin1(v)
                    .filter(|b| b.len() == f.size)
                    .ok_or_else(|| want(&format!("{} bytes (fixed {})", f.size, f.name)))?;
                out.extend_from_slice(&b);
                Ok(())
            }
            Avro::Duration => {
                let b = latin1(v)
                    .filter(|b| b.len() == 12)
                    .ok_or_else(|| want("12 bytes (duration)"))?;
                out.extend_from_slice(&b);
                Ok(())
            }
            Avro::Enum(e) => {
                let t = v.as_str().ok_or_else(|| want("a symbol"))?;
                let i = e.symbols.iter().position(|s| s == t).ok_or_else(|| {
                    format!("{t:?} is not a symbol of {} {:?}", e.name, e.symbols)
                })?;
                put_long(out, i as i64);
                Ok(())
            }
            Avro::Array(a) => {
                let items = v.as_array().ok_or_else(|| want("an array"))?;
                if !items.is_empty() {
                    put_long(out, items.len() as i64);
                }
                for (i, item) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    self.encode(&a.items, item, out, path)?;
                    path.pop();
                }
                out.push(0);
                Ok(())
            }
            Avro::Map(m) => {
                let entries = v.as_object().ok_or_else(|| want("an object (map)"))?;
                if !entries.is_empty() {
                    put_long(out, entries.len() as i64);
                }
                for (k, item) in entries {
                    put_long(out, k.len() as i64);
                    out.extend_from_slice(k.as_bytes());
                    path.push(Seg::Key(k.clone()));
                    self.encode(&m.types, item, out, path)?;
                    path.pop();
                }
                out.push(0);
                Ok(())
            }
            Avro::Union(u) => self.encode_union(u.variants(), v, out, path),
            Avro::Record(r) => {
                let fields = v.as_object().ok_or_else(|| want("an object"))?;
                if let Some(k) = fields.keys().find(|k| !r.lookup.contains_key(*k)) {
                    path.push(Seg::Key(k.clone()));
                    return Err(format!("not a field of {}", r.name));
                }
                for f in &r.fields {
                    path.push(Seg::Key(f.name.clone()));
                    match (fields.get(&f.name), &f.default) {
                        (Some(v), _) => self.encode(&f.schema, v, out, path)?,
                        (None, Some(d)) => self.encode_default(&f.schema, d, out, path)?,
                        (None, None) => return Err("missing, and it has no default".into()),
                    }
                    path.pop();
                }
                Ok(())
            }
            // Logical types were mapped to their underlying type above.
            _ => Err("unresolved type".into()),
        }
    }

    /// A field's default: for a union, a value of its first branch.
    fn encode_default(
        &self,
        s: &Avro,
        d: &Value,
        out: &mut Vec<u8>,
        path: &mut Vec<Seg>,
    ) -> Result<(), String> {
        match self.resolve(s)? {
            Avro::Union(u) if !u.variants().is_empty() => {
                put_long(out, 0);
                self.encode(&u.variants()[0], d, out, path)
            }
            s => self.encode(s, d, out, path),
        }
    }

    /// `null`, `{"<branch>": value}`, or a bare value of the first branch
    /// that takes it.
    fn encode_union(
        &self,
        variants: &[Avro],
        v: &Value,
        out: &mut Vec<u8>,
        path: &mut Vec<Seg>,
    ) -> Result<(), String> {
        if let Value::Object(o) = v
            && o.len() == 1
            && let Some((k, inner)) = o.iter().next()
            && let Some(i) = variants.iter().position(|b| branch_name(b) == *k)
        {
            put_long(out, i as i64);
            path.push(Seg::Key(k.clone()));
            self.encode(&variants[i], inner, out, path)?;
            path.pop();
            return Ok(());
        }
        let mut scratch = Vec::new();
        for (i, b) in variants.iter().enumerate() {
            scratch.clear();
            let mut p = Vec::new();
            if self.encode(b, v, &mut scratch, &mut p).is_ok() {
                put_long(out, i as i64);
                out.extend_from_slice(&scratch);
                return Ok(());
            }
        }
        let names: Vec<String> = variants.iter().map(branch_name).collect();
        Err(format!(
            "{} fits none of the union's types {names:?}",
            kind(v)
        ))
    }
}

/// A step of a field path.
enum Seg {
    Key(String),
    Index(usize),
}

fn show_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if s.is_empty() => s.push_str(k),
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// A string of code points 0–255 as the bytes they stand for.
fn latin1(v: &Value) -> Option<Vec<u8>> {
    v.as_str()?
        .chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect()
}

/// The name a union's branch goes by in Avro's JSON encoding.
pub(super) fn branch_name(s: &Avro) -> String {
    match underlying(s) {
        Avro::Null => "null".into(),
        Avro::Boolean => "boolean".into(),
        Avro::Int => "int".into(),
        Avro::Long => "long".into(),
        Avro::Float => "float".into(),
        Avro::Double => "double".into(),
        Avro::Bytes => "bytes".into(),
        Avro::String => "string".into(),
        Avro::Array(_) => "array".into(),
        Avro::Map(_) => "map".into(),
        Avro::Union(_) => "union".into(),
        Avro::Record(r) => r.name.fullname(None),
        Avro::Enum(e) => e.name.fullname(None),
        Avro::Fixed(f) => f.name.fullname(None),
        Avro::Ref { name } => name.fullname(None),
        _ => "fixed".into(),
    }
}

/// What a logical type is on the wire and in JSON (`date` an int,
/// timestamps longs, `uuid` a string, decimals their bytes or fixed); any
/// other type as it is.
pub(super) fn underlying(s: &Avro) -> &Avro {
    static INT: Avro = Avro::Int;
    static LONG: Avro = Avro::Long;
    static STRING: Avro = Avro::String;
    static BYTES: Avro = Avro::Bytes;
    match s {
        Avro::Date | Avro::TimeMillis => &INT,
        Avro::TimeMicros
        | Avro::TimestampMillis
        | Avro::TimestampMicros
        | Avro::TimestampNanos
        | Avro::LocalTimestampMillis
        | Avro::LocalTimestampMicros
        | Avro::LocalTimestampNanos => &LONG,
        Avro::Uuid => &STRING,
        Avro::BigDecimal => &BYTES,
        Avro::Decimal(d) => underlying(&d.inner),
        s => s,
    }
}

/// A zig-zag varint.
fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

#[cfg(test)]
#[path = "avro_tests.rs"]
mod tests;
