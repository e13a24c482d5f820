//! Payload formats below every role: what a record's bytes are, and how
//! they become the JSON the roles work with. Today: JSON itself, and
//! Protobuf by a local descriptor set (seed 002's `protobuf->hash`), plain
//! or in the Confluent wire format. Pure functions, no threads or sockets.

pub mod protobuf;
pub mod wire;

use std::sync::Arc;

use crate::config::SectionReader;

/// How a record's value is read (`value_format`).
#[derive(Debug, Clone)]
pub enum ValueFormat {
    /// JSON, byte for byte.
    Json,
    /// Protobuf messages of one type, decoded to their canonical JSON.
    Protobuf(Arc<protobuf::Schema>),
}

impl ValueFormat {
    /// `value_format` (`json` | `protobuf`) and, for `protobuf`,
    /// `protobuf_descriptor_file` and `protobuf_message`; mistakes name
    /// their key.
    pub fn read(r: &mut SectionReader<'_>) -> ValueFormat {
        let protobuf = r.choice(
            "value_format",
            false,
            &[("json", false), ("protobuf", true)],
        );
        let file = r.string("protobuf_descriptor_file", "");
        let message = r.string("protobuf_message", "");
        if !protobuf {
            return ValueFormat::Json;
        }
        if file.is_empty() {
            r.error(
                "protobuf_descriptor_file",
                "required with value_format = protobuf: a descriptor set (protoc --include_imports --descriptor_set_out)".into(),
            );
            return ValueFormat::Json;
        }
        if message.is_empty() {
            r.error(
                "protobuf_message",
                "required with value_format = protobuf: the message's full name, e.g. shop.Order"
                    .into(),
            );
            return ValueFormat::Json;
        }
        match protobuf::Schema::open(std::path::Path::new(&file), &message) {
            Ok(s) => ValueFormat::Protobuf(Arc::new(s)),
            Err((key, e)) => {
                r.error(key, e);
                ValueFormat::Json
            }
        }
    }

    /// The value as JSON bytes: `Ok(None)` when it already is (JSON, kept
    /// as it is); `Err` says why it cannot be read.
    pub fn to_json(&self, value: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match self {
            ValueFormat::Json => Ok(None),
            ValueFormat::Protobuf(s) => s.to_json(value).map(Some),
        }
    }
}
