//! Unit tests of [`ValueFormat`](super::ValueFormat): reading the format
//! keys and turning values and keys into JSON.

use super::*;
use crate::config::{ConfigErrors, Document};

fn format(text: &str) -> Result<(ValueFormat, ValueFormat), String> {
    let mut errors = ConfigErrors::default();
    let doc = Document::parse("f.ini", &format!("[s]\n{text}"), &mut errors);
    let mut r = doc.reader("s", &mut errors);
    let v = ValueFormat::read(&mut r, None);
    let k = ValueFormat::read_key(&mut r, None);
    r.finish();
    match errors.0.is_empty() {
        true => Ok((v, k)),
        false => Err(errors.to_string()),
    }
}

fn json(f: &ValueFormat, b: &[u8]) -> Result<Option<String>, Failure> {
    f.to_json(b)
        .map(|o| o.map(|v| String::from_utf8(v).unwrap()))
}

#[test]
fn text_binary_and_auto_values_become_json_strings_or_stay_json() {
    let (text, _) = format("value_format = text").unwrap();
    assert_eq!(
        json(&text, "a \"b\"\n".as_bytes()),
        Ok(Some(r#""a \"b\"\n""#.into()))
    );
    assert!(matches!(json(&text, b"\xff"), Err(Failure::Unreadable(_))));
    let (binary, _) = format("value_format = binary").unwrap();
    assert_eq!(json(&binary, b"\x00\xff"), Ok(Some(r#""AP8=""#.into())));
    let (auto, _) = format("value_format = auto").unwrap();
    assert_eq!(json(&auto, br#"{"a":1}"#), Ok(None));
    assert_eq!(json(&auto, b"plain"), Ok(Some(r#""plain""#.into())));
    assert_eq!(
        json(&auto, b"\x00\x00\x00\x00\x01\xff"),
        Ok(Some(r#""AAAAAAH/""#.into()))
    );
    let (plain, key) = format("").unwrap();
    assert_eq!(json(&plain, b"anything"), Ok(None));
    assert!(key.is_plain());
}

#[test]
fn keys_read_as_their_text_and_schema_formats_need_a_registry_or_a_file() {
    assert_eq!(
        ValueFormat::key_text(Some(br#""c-1""#.to_vec())),
        Some(b"c-1".to_vec())
    );
    assert_eq!(
        ValueFormat::key_text(Some(br#"{"a":1}"#.to_vec())),
        Some(br#"{"a":1}"#.to_vec())
    );
    assert_eq!(ValueFormat::key_text(None), None);
    let (_, key) = format("key_format = binary").unwrap();
    assert!(!key.is_plain());
    for (text, says) in [
        (
            "value_format = avro",
            "[s] value_format: avro needs [schema_registry] url",
        ),
        (
            "value_format = jsonschema",
            "jsonschema needs [schema_registry] url",
        ),
        (
            "key_format = avro",
            "[s] key_format: avro needs [schema_registry] url (records in the Confluent wire format) or key_avro_schema_file",
        ),
        (
            "key_format = protobuf",
            "[s] key_protobuf_descriptor_file: required with key_format = protobuf",
        ),
        (
            "key_format = protobuf\nkey_protobuf_descriptor_file = /nonexistent.desc",
            "[s] key_protobuf_message: required with key_format = protobuf",
        ),
        (
            "key_format = protobuf\nkey_protobuf_descriptor_file = /nonexistent.desc\nkey_protobuf_message = a.B",
            "[s] key_protobuf_descriptor_file: cannot read /nonexistent.desc",
        ),
        (
            "key_format = jsonschema\nkey_jsonschema_file = /nonexistent.json",
            "[s] key_jsonschema_file: cannot read",
        ),
        (
            "value_format = avro\navro_schema_file = /nonexistent.avsc",
            "[s] avro_schema_file: cannot read",
        ),
        ("value_format = xml", "[s] value_format"),
    ] {
        let e = format(text).unwrap_err();
        assert!(e.contains(says), "{text}: {e}");
    }
}

#[test]
fn keys_and_values_read_by_their_own_local_schemas() {
    let dir = std::env::temp_dir().join(format!("kbridge-codec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (long, order) = (dir.join("long.avsc"), dir.join("v.avsc"));
    std::fs::write(&long, r#""long""#).unwrap();
    std::fs::write(
        &order,
        r#"{"type":"record","name":"V","fields":[{"name":"s","type":"string"}]}"#,
    )
    .unwrap();
    let (value, key) = format(&format!(
        "value_format = avro\navro_schema_file = {}\nkey_format = avro\nkey_avro_schema_file = {}",
        order.display(),
        long.display()
    ))
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    // Zig-zag 5 is 10; the record is a string of 2 bytes.
    assert_eq!(json(&key, &[10]), Ok(Some("5".into())));
    assert_eq!(
        json(&value, &[4, b'h', b'i']),
        Ok(Some(r#"{"s":"hi"}"#.into()))
    );
    assert!(matches!(json(&key, &[10, 0]), Err(Failure::Unreadable(_))));
    assert!(!key.is_plain());
}
