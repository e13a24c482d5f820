//! The Avro decoder behind [`avro::Schema::to_json`](super::avro::Schema::to_json):
//! a datum read off its bytes straight into Avro's JSON encoding, bounded
//! in depth ([`MAX_DEPTH`]) and in output (`cap`, which also bounds arrays
//! and maps of zero-byte items that claim billions of entries); lengths
//! are checked against what is left before anything is allocated, strings
//! must be UTF-8, and a datum with bytes left over is refused.

use std::collections::HashMap;
use std::io::Write;

use apache_avro::schema::{Name, Schema as Avro};

use super::avro::{MAX_DEPTH, branch_name, underlying};

/// Reads a datum off `input`, writing its JSON to `out`.
pub(super) struct Decoder<'a> {
    pub names: &'a HashMap<Name, Avro>,
    pub input: &'a [u8],
    pub out: &'a mut Vec<u8>,
    /// The most JSON one datum may become (bounds zero-byte items).
    pub cap: usize,
}

impl Decoder<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if n > self.input.len() {
            return Err("the datum is cut short".into());
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    fn long(&mut self) -> Result<i64, String> {
        let mut z: u64 = 0;
        for i in 0..10 {
            let b = *self.take(1)?.first().unwrap_or(&0);
            z |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err("a varint longer than 10 bytes".into())
    }

    fn len(&mut self) -> Result<usize, String> {
        let n = self.long()?;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.input.len())
            .ok_or_else(|| format!("a length of {n} with {} bytes left", self.input.len()))
    }

    fn string(&mut self, bytes: &[u8]) {
        let _ = serde_json::to_writer(&mut *self.out, &String::from_utf8_lossy(bytes));
    }

    fn latin1(&mut self, n: usize) -> Result<(), String> {
        let s: String = self.take(n)?.iter().map(|&b| char::from(b)).collect();
        let _ = serde_json::to_writer(&mut *self.out, &s);
        Ok(())
    }

    fn float(&mut self, f: f64) {
        match f {
            f if f.is_nan() => self.out.extend_from_slice(b"\"NaN\""),
            f if f.is_infinite() && f > 0.0 => self.out.extend_from_slice(b"\"Infinity\""),
            f if f.is_infinite() => self.out.extend_from_slice(b"\"-Infinity\""),
            f => {
                let _ = serde_json::to_writer(&mut *self.out, &f);
            }
        }
    }

    /// The items of an array or map: blocks of a count (negative: followed
    /// by the block's size in bytes), ended by a count of 0.
    fn blocks(
        &mut self,
        depth: usize,
        mut item: impl FnMut(&mut Self, usize, usize) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut index = 0;
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                self.long()?;
            }
            for _ in 0..count.unsigned_abs() {
                if self.out.len() > self.cap {
                    return Err("the datum decodes to more JSON than allowed".into());
                }
                item(self, index, depth + 1)?;
                index += 1;
            }
        }
    }

    pub fn value(&mut self, s: &Avro, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH}"));
        }
        let names = self.names;
        match underlying(s) {
            Avro::Ref { name } => {
                let s = names
                    .get(name)
                    .ok_or_else(|| format!("unknown type {}", name.fullname(None)))?;
                self.value(s, depth + 1)
            }
            Avro::Null => {
                self.out.extend_from_slice(b"null");
                Ok(())
            }
            Avro::Boolean => {
                let text: &[u8] = match self.take(1)?[0] {
                    0 => b"false",
                    1 => b"true",
                    b => return Err(format!("boolean byte {b}")),
                };
                self.out.extend_from_slice(text);
                Ok(())
            }
            Avro::Int => {
                let v = self.long()?;
                i32::try_from(v).map_err(|_| format!("int {v} out of range"))?;
                let _ = write!(self.out, "{v}");
                Ok(())
            }
            Avro::Long => {
                let v = self.long()?;
                let _ = write!(self.out, "{v}");
                Ok(())
            }
            Avro::Float => {
                let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| "float")?;
                self.float(f64::from(f32::from_le_bytes(b)));
                Ok(())
            }
            Avro::Double => {
                let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| "double")?;
                self.float(f64::from_le_bytes(b));
                Ok(())
            }
            Avro::String => {
                let n = self.len()?;
                let input = self.input;
                let bytes = &input[..n];
                std::str::from_utf8(bytes)
                    .map_err(|e| format!("a string that is not UTF-8: {e}"))?;
                self.input = &input[n..];
                self.string(bytes);
                Ok(())
            }
            Avro::Bytes => {
                let n = self.len()?;
                self.latin1(n)
            }
            Avro::Fixed(f) => self.latin1(f.size),
            Avro::Duration => self.latin1(12),
            Avro::Enum(e) => {
                let i = self.long()?;
                let sym = usize::try_from(i)
                    .ok()
                    .and_then(|i| e.symbols.get(i))
                    .ok_or_else(|| format!("enum index {i} of {}", e.name))?;
                let _ = serde_json::to_writer(&mut *self.out, sym);
                Ok(())
            }
            Avro::Array(a) => {
                self.out.push(b'[');
                self.blocks(depth, |d, i, depth| {
                    if i > 0 {
                        d.out.push(b',');
                    }
                    d.value(&a.items, depth)
                })?;
                self.out.push(b']');
                Ok(())
            }
            Avro::Map(m) => {
                self.out.push(b'{');
                self.blocks(depth, |d, i, depth| {
                    if i > 0 {
                        d.out.push(b',');
                    }
                    d.value(&Avro::String, depth)?;
                    d.out.push(b':');
                    d.value(&m.types, depth)
                })?;
                self.out.push(b'}');
                Ok(())
            }
            Avro::Union(u) => {
                let i = self.long()?;
                let b = usize::try_from(i)
                    .ok()
                    .and_then(|i| u.variants().get(i))
                    .ok_or_else(|| format!("union branch {i} of {}", u.variants().len()))?;
                if matches!(b, Avro::Null) {
                    return self.value(b, depth + 1);
                }
                self.out.push(b'{');
                let _ = serde_json::to_writer(&mut *self.out, &branch_name(b));
                self.out.push(b':');
                self.value(b, depth + 1)?;
                self.out.push(b'}');
                Ok(())
            }
            Avro::Record(r) => {
                self.out.push(b'{');
                for (i, f) in r.fields.iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    let _ = serde_json::to_writer(&mut *self.out, &f.name);
                    self.out.push(b':');
                    self.value(&f.schema, depth + 1)?;
                }
                self.out.push(b'}');
                Ok(())
            }
            // Logical types were mapped to their underlying type above.
            _ => Err("unresolved type".into()),
        }
    }
}
