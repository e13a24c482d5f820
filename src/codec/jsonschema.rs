//! JSON Schema: records stay JSON, checked against a schema with the
//! `jsonschema` crate (built without its HTTP and file retrievers, so a
//! `$ref` to anything outside the schema fails at load, never fetches). A
//! record that does not fit names the field path of the first violation
//! (`customer.name`, `tags[1]`) and what it broke.

use serde_json::Value;

use super::Misfit;

pub struct Schema {
    validator: jsonschema::Validator,
    text: String,
    title: String,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("title", &self.title)
            .finish()
    }
}

impl PartialEq for Schema {
    fn eq(&self, o: &Schema) -> bool {
        self.text == o.text
    }
}
impl Eq for Schema {}

impl Schema {
    /// A schema from its JSON text, compiled on a stack of its own.
    pub fn parse(text: &str) -> Result<Schema, String> {
        let text = text.to_string();
        super::on_big_stack(move || Schema::parse_here(&text))
    }

    fn parse_here(text: &str) -> Result<Schema, String> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("not a JSON Schema (not JSON: {e})"))?;
        let validator =
            jsonschema::validator_for(&v).map_err(|e| format!("not a JSON Schema: {e}"))?;
        let title = v["title"].as_str().map_or_else(
            || "the JSON Schema".to_string(),
            |t| format!("JSON Schema {t:?}"),
        );
        Ok(Schema {
            validator,
            text: text.to_string(),
            title,
        })
    }

    /// A schema from a file.
    pub fn open(file: &std::path::Path) -> Result<Schema, String> {
        super::open_schema(file, Schema::parse)
    }

    /// The schema's text as given (what is registered).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Its title, for errors.
    pub fn name(&self) -> String {
        self.title.clone()
    }

    /// Whether a JSON record fits.
    pub fn check(&self, json: &[u8]) -> Result<(), Misfit> {
        let value = super::json::value(json)?;
        match self.validator.validate(&value) {
            Ok(()) => Ok(()),
            Err(e) => Err(Misfit {
                path: show_path(&value, e.instance_path().as_str()),
                message: e.to_string(),
            }),
        }
    }
}

/// A JSON pointer into `value` as a field path: `/a/tags/1` → `a.tags[1]`
/// (a segment is an index where the value there is an array).
fn show_path(value: &Value, pointer: &str) -> String {
    let mut out = String::new();
    let mut at = Some(value);
    for raw in pointer.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        match at {
            Some(Value::Array(items)) => {
                out.push_str(&format!("[{seg}]"));
                at = seg.parse::<usize>().ok().and_then(|i| items.get(i));
            }
            other => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&seg);
                at = other.and_then(|v| v.get(&seg));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"title":"Order","type":"object","required":["id"],
      "properties":{"id":{"type":"string"},"tags":{"type":"array","items":{"type":"string"}},
      "customer":{"type":"object","properties":{"name":{"type":"string","minLength":1}}}},
      "additionalProperties":false}"#;

    #[test]
    fn misfits_name_their_path_and_what_they_broke() {
        let s = Schema::parse(SCHEMA).unwrap();
        assert_eq!(s.check(br#"{"id":"a","tags":["x"]}"#), Ok(()));
        let m = s.check(br#"{"id":"a","tags":["x",5]}"#).unwrap_err();
        assert_eq!(m.path, "tags[1]", "{m:?}");
        let m = s
            .check(br#"{"id":"a","customer":{"name":""}}"#)
            .unwrap_err();
        assert_eq!(m.path, "customer.name", "{m:?}");
        let m = s.check(br#"{"tags":[]}"#).unwrap_err();
        assert_eq!(m.path, "");
        assert!(m.message.contains("id"), "{m:?}");
        assert!(s.check(b"{").unwrap_err().message.starts_with("not JSON"));
        assert_eq!(s.name(), "JSON Schema \"Order\"");
    }

    #[test]
    fn schemas_that_are_none_or_reach_outside_are_refused() {
        assert!(Schema::parse("{").is_err());
        assert!(Schema::parse(r#"{"type":"nope"}"#).is_err());
        let remote = r#"{"$ref":"http://127.0.0.1:9/x.json"}"#;
        assert!(Schema::parse(remote).is_err(), "no fetching");
    }
}
