//! Protobuf schemas as the registry holds them: `.proto` text, with the
//! files it imports given as references (other subjects' versions),
//! compiled in memory with `protox` (no `protoc`, nothing read from disk;
//! `google/protobuf/*.proto` come with it). A record's message is named by
//! the wire format's message indexes: the first is a message of the file,
//! each next one a message nested in the one before.

use std::collections::HashMap;
use std::sync::Arc;

use prost_reflect::{FileDescriptor, MessageDescriptor};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

use super::protobuf;

/// The name the schema's own file is compiled under.
const ROOT: &str = "kbridge-schema.proto";

/// How many files (the schema and its references) one schema may bring.
pub const MAX_FILES: usize = 64;

/// How deep braces and brackets may nest in one file.
pub const MAX_NESTING: usize = 64;

/// The deepest nesting of `{`, `[`, `(` and `<` in `text` (strings and
/// comments counted too: an overestimate is safe).
fn nesting(text: &str) -> usize {
    let (mut depth, mut most) = (0usize, 0usize);
    for b in text.bytes() {
        match b {
            b'{' | b'[' | b'(' | b'<' => {
                depth += 1;
                most = most.max(depth);
            }
            b'}' | b']' | b')' | b'>' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    most
}

#[derive(Debug)]
pub struct ProtoFile {
    file: FileDescriptor,
    text: String,
}

/// Two files are the same when their texts are.
impl PartialEq for ProtoFile {
    fn eq(&self, o: &ProtoFile) -> bool {
        self.text == o.text
    }
}
impl Eq for ProtoFile {}

struct Memory(HashMap<String, String>);

impl FileResolver for Memory {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.get(name) {
            Some(source) => File::from_source(name, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

impl ProtoFile {
    /// Compiles `text`, whose imports are in `imports` (name → text), on
    /// a stack of its own; files that nest deeper than [`MAX_NESTING`] are
    /// refused before the compiler sees them.
    pub fn compile(text: &str, imports: HashMap<String, String>) -> Result<ProtoFile, String> {
        for t in imports.values().chain(std::iter::once(&text.to_string())) {
            if nesting(t) > MAX_NESTING {
                return Err(format!(
                    "not taken: a Protobuf schema nested deeper than {MAX_NESTING}"
                ));
            }
        }
        let text = text.to_string();
        super::on_big_stack(move || ProtoFile::compile_here(text, imports))
    }

    fn compile_here(text: String, imports: HashMap<String, String>) -> Result<ProtoFile, String> {
        let mut files = imports;
        files.insert(ROOT.to_string(), text.clone());
        let mut chain = ChainFileResolver::new();
        chain.add(Memory(files));
        chain.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(chain);
        compiler.include_imports(true);
        compiler
            .open_file(ROOT)
            .map_err(|e| format!("not a Protobuf schema: {e}"))?;
        let file = compiler
            .descriptor_pool()
            .get_file_by_name(ROOT)
            .ok_or_else(|| "not a Protobuf schema: no file".to_string())?;
        if file.messages().next().is_none() {
            return Err("not a Protobuf schema: it defines no message".into());
        }
        Ok(ProtoFile { file, text })
    }

    /// The schema's text as given (what is registered).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The message the wire format's `indexes` name.
    pub fn message(&self, indexes: &[i64]) -> Result<Arc<protobuf::Schema>, String> {
        let mut at: Option<MessageDescriptor> = None;
        for &i in indexes {
            let i = usize::try_from(i).map_err(|_| format!("message index {i}"))?;
            let next = match &at {
                None => self.file.messages().nth(i),
                Some(m) => m.child_messages().nth(i),
            };
            at = Some(next.ok_or_else(|| format!("no message at index path {indexes:?}"))?);
        }
        at.map(|m| Arc::new(protobuf::Schema::of(m)))
            .ok_or_else(|| "an empty message index path".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_named_by_index_paths_and_imports_resolve() {
        let common = "syntax = \"proto3\"; package c; message Money { int64 cents = 1; }";
        let text = r#"syntax = "proto3"; package shop;
            import "common.proto"; import "google/protobuf/timestamp.proto";
            message Customer { string name = 1; message Address { string city = 1; } }
            message Order { string id = 1; c.Money total = 2; google.protobuf.Timestamp at = 3; }"#;
        let imports = HashMap::from([("common.proto".to_string(), common.to_string())]);
        let f = ProtoFile::compile(text, imports).unwrap();
        assert_eq!(f.message(&[1]).unwrap().name(), "shop.Order");
        assert_eq!(f.message(&[0, 0]).unwrap().name(), "shop.Customer.Address");
        assert!(f.message(&[2]).is_err());
        assert!(f.message(&[0, 5]).is_err());
        assert!(f.message(&[-1]).is_err());
        let order = f.message(&[1]).unwrap();
        let bytes = order
            .from_json(br#"{"id":"o","total":{"cents":"5"}}"#)
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&order.to_json(&bytes).unwrap()).unwrap(),
            serde_json::json!({"id": "o", "total": {"cents": "5"}})
        );
        assert!(ProtoFile::compile("message {", HashMap::new()).is_err());
        assert!(ProtoFile::compile("import \"missing.proto\";", HashMap::new()).is_err());
        assert!(ProtoFile::compile("syntax = \"proto3\";", HashMap::new()).is_err());
        let deep = format!("{}{}", "message M { ".repeat(100_000), "}".repeat(100_000));
        let e = ProtoFile::compile(&deep, HashMap::new()).unwrap_err();
        assert!(e.contains("nested deeper"), "{e}");
        let fine = format!(
            "syntax = \"proto3\"; {} {}",
            "message M { ".repeat(60),
            "}".repeat(60)
        );
        assert!(ProtoFile::compile(&fine, HashMap::new()).is_ok());
    }
}
