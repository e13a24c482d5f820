//! Protobuf by a local descriptor set (`protoc --include_imports
//! --descriptor_set_out`) and one message type: records decoded to the
//! message's canonical JSON (proto3 JSON mapping: field json names, int64 as
//! strings, enums by name, bytes as base64) with `prost-reflect`. A record
//! in the Confluent wire format (magic byte 0; a Protobuf message never
//! starts with byte 0, its first tag would be field 0) has its frame
//! skipped; without a registry the configured type is the schema. The
//! other way, a JSON record (the same mapping; unknown fields refused) is
//! encoded as a plain message, and what does not fit names its field path.

use std::path::Path;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

use super::{Misfit, wire};

#[derive(Debug)]
pub struct Schema {
    message: MessageDescriptor,
}

/// Two schemas are the same when they name the same message.
impl PartialEq for Schema {
    fn eq(&self, o: &Schema) -> bool {
        self.name() == o.name()
    }
}
impl Eq for Schema {}

/// Which of the two settings naming a message is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The descriptor set: unreadable, or no descriptor set.
    File,
    /// The message name: not in the set.
    Message,
}

impl Schema {
    /// The message `name` of the descriptor set in `file`; the error says
    /// which setting is at fault and why.
    pub fn open(file: &Path, name: &str) -> Result<Schema, (Fault, String)> {
        let bytes = std::fs::read(file)
            .map_err(|e| (Fault::File, format!("cannot read {}: {e}", file.display())))?;
        let pool = DescriptorPool::decode(bytes.as_slice()).map_err(|e| {
            (
                Fault::File,
                format!("{} is not a descriptor set: {e}", file.display()),
            )
        })?;
        let message = pool.get_message_by_name(name).ok_or_else(|| {
            let known: Vec<String> = pool
                .all_messages()
                .map(|m| m.full_name().to_string())
                .take(20)
                .collect();
            (
                Fault::Message,
                format!(
                    "no message {name:?} in {} (it has {known:?})",
                    file.display()
                ),
            )
        })?;
        Ok(Schema { message })
    }

    /// One message of a compiled pool (a registry's schema).
    pub fn of(message: MessageDescriptor) -> Schema {
        Schema { message }
    }

    /// The message's full name.
    pub fn name(&self) -> &str {
        self.message.full_name()
    }

    /// The message encoded from a JSON record.
    pub fn from_json(&self, json: &[u8]) -> Result<Vec<u8>, Misfit> {
        let value = super::json::value(json)?;
        let mut track = serde_path_to_error::Track::new();
        let tracked = serde_path_to_error::Deserializer::new(&value, &mut track);
        let msg = DynamicMessage::deserialize(self.message.clone(), tracked).map_err(|e| {
            let path = track.path().to_string();
            Misfit {
                path: if path == "." { String::new() } else { path },
                message: e.to_string(),
            }
        })?;
        Ok(prost::Message::encode_to_vec(&msg))
    }

    /// A plain message (no frame) as its canonical JSON.
    pub fn decode(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        let msg = DynamicMessage::decode(self.message.clone(), payload)
            .map_err(|e| format!("value is not a valid {}: {e}", self.name()))?;
        serde_json::to_vec(&msg)
            .map_err(|e| format!("value of {} has no JSON form: {e}", self.name()))
    }

    /// The record as its message's canonical JSON.
    pub fn to_json(&self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let payload = match bytes.first() {
            Some(0) => {
                wire::protobuf_frame(bytes)
                    .ok_or_else(|| "a Confluent wire-format frame cut short".to_string())?
                    .payload
            }
            _ => bytes,
        };
        self.decode(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use prost_reflect::prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
        field_descriptor_proto::{Label, Type},
    };

    /// `t.Node { string name = 1; repeated t.Node kids = 2; int64 n = 3; }`
    /// (recursive, so hostile bytes can nest it).
    fn schema() -> Schema {
        let field = |name: &str, number, ty: Type, label: Label, type_name: Option<&str>| {
            FieldDescriptorProto {
                name: Some(name.into()),
                number: Some(number),
                r#type: Some(ty as i32),
                label: Some(label as i32),
                type_name: type_name.map(str::to_string),
                json_name: Some(name.into()),
                ..Default::default()
            }
        };
        let set = FileDescriptorSet {
            file: vec![FileDescriptorProto {
                name: Some("t.proto".into()),
                package: Some("t".into()),
                syntax: Some("proto3".into()),
                message_type: vec![DescriptorProto {
                    name: Some("Node".into()),
                    field: vec![
                        field("name", 1, Type::String, Label::Optional, None),
                        field("kids", 2, Type::Message, Label::Repeated, Some(".t.Node")),
                        field("n", 3, Type::Int64, Label::Optional, None),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("kbridge-pb-{}-{n}.desc", std::process::id()));
        std::fs::write(&path, set.encode_to_vec()).unwrap();
        let s = Schema::open(&path, "t.Node").unwrap();
        std::fs::remove_file(&path).unwrap();
        s
    }

    #[test]
    fn json_and_bytes_round_trip_and_names_are_checked() {
        let s = schema();
        let bytes = s.from_json(br#"{"name":"a","kids":[{"n":"5"}]}"#).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&s.to_json(&bytes).unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"name": "a", "kids": [{"n": "5"}]}));
        // In the Confluent wire format the frame is skipped.
        let framed: Vec<u8> = [&[0, 0, 0, 0, 9, 0][..], &bytes].concat();
        assert_eq!(s.to_json(&framed), s.to_json(&bytes));
        let m = s.from_json(br#"{"kids":[{"n":"x"}]}"#).unwrap_err();
        assert_eq!(m.path, "kids[0].n", "{m:?}");
        let m = s.from_json(br#"{"kids":[{"n":"1","n":"2"}]}"#).unwrap_err();
        assert_eq!(m.path, "kids[0]", "{m:?}");
        assert!(s.to_json(&[0, 0, 0]).unwrap_err().contains("cut short"));
    }

    #[test]
    fn hostile_bytes_and_json_are_refused_never_a_panic() {
        let s = schema();
        let mut rng = fastrand::Rng::with_seed(5);
        let good = s
            .from_json(br#"{"name":"x","kids":[{"name":"y","kids":[{"n":"1"}]}]}"#)
            .unwrap();
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..rng.usize(1..5) {
                let at = rng.usize(..b.len());
                b[at] = rng.u8(..);
            }
            let _ = s.to_json(&b);
        }
        // Nesting far deeper than the decoder's limit: an error, not a crash.
        let mut deep = Vec::new();
        for _ in 0..10_000 {
            let mut outer = vec![0x12];
            prost::encoding::encode_varint(deep.len() as u64, &mut outer);
            outer.extend_from_slice(&deep);
            deep = outer;
        }
        assert!(s.to_json(&deep).is_err());
        for j in [
            &b"{"[..],
            b"[]",
            b"{\"kids\":{}}",
            b"{\"n\":1e999}",
            b"{\"name\":1}",
        ] {
            assert!(s.from_json(j).is_err(), "{:?}", String::from_utf8_lossy(j));
        }
    }
}
