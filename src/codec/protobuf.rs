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

use super::wire;

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

/// Why a JSON record does not fit the message: where (a JSON path such as
/// `customer.name` or `tags[2]`; empty for the record itself) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misfit {
    pub path: String,
    pub message: String,
}

impl Schema {
    /// The message `name` of the descriptor set in `file`; the error names
    /// the key at fault and says why.
    pub fn open(file: &Path, name: &str) -> Result<Schema, (&'static str, String)> {
        let bytes = std::fs::read(file).map_err(|e| {
            (
                "protobuf_descriptor_file",
                format!("cannot read {}: {e}", file.display()),
            )
        })?;
        let pool = DescriptorPool::decode(bytes.as_slice()).map_err(|e| {
            (
                "protobuf_descriptor_file",
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
                "protobuf_message",
                format!(
                    "no message {name:?} in {} (it has {known:?})",
                    file.display()
                ),
            )
        })?;
        Ok(Schema { message })
    }

    /// The message's full name.
    pub fn name(&self) -> &str {
        self.message.full_name()
    }

    /// The message encoded from a JSON record.
    pub fn from_json(&self, json: &[u8]) -> Result<Vec<u8>, Misfit> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let mut track = serde_path_to_error::Track::new();
        let tracked = serde_path_to_error::Deserializer::new(&mut de, &mut track);
        let msg = DynamicMessage::deserialize(self.message.clone(), tracked).map_err(|e| {
            let path = track.path().to_string();
            Misfit {
                path: if path == "." { String::new() } else { path },
                message: e.to_string(),
            }
        })?;
        Ok(prost::Message::encode_to_vec(&msg))
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
        let msg = DynamicMessage::decode(self.message.clone(), payload)
            .map_err(|e| format!("value is not a valid {}: {e}", self.name()))?;
        serde_json::to_vec(&msg)
            .map_err(|e| format!("value of {} has no JSON form: {e}", self.name()))
    }
}
