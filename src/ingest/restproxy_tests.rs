//! The REST Proxy v2 envelopes and answers, without a server.

use super::*;

const LIMITS: RecordLimits = RecordLimits {
    max_bytes: 64,
    max_records: 3,
    max_depth: 4,
};

/// A record's value, key and partition.
type Part = (Vec<u8>, Option<Vec<u8>>, Option<i32>);

/// Schemas as a registry would give them: a text is registered as id 5;
/// id 9 is a record {"n": long}; others are unknown (40403).
fn fake_registry(_part: &'static str, r: SchemaRef) -> Result<Arc<Encoder>, Refusal> {
    let (text, id) = match r {
        SchemaRef::Text(t) => (t, 5),
        SchemaRef::Id(9) => (
            r#"{"type":"record","name":"N","fields":[{"name":"n","type":"long"}]}"#.into(),
            9,
        ),
        SchemaRef::Id(n) => return Err(Refusal::new(404, 40403, format!("schema {n} not found"))),
    };
    let schema =
        crate::codec::avro::Schema::parse(&text).map_err(|e| Refusal::new(422, 42201, e))?;
    Ok(Arc::new(Encoder::Avro {
        schema: Arc::new(schema),
        id: Some(id),
    }))
}

fn produced(body: &[u8], e: Embedded, p: Option<i32>) -> Result<Produced, Refusal> {
    records(body, e, p, LIMITS, &mut fake_registry)
}

fn parts(body: &str, e: Embedded) -> Result<Vec<Part>, Refusal> {
    let Produced { values, spans, .. } = produced(body.as_bytes(), e, Some(7))?;
    Ok(spans
        .into_iter()
        .map(|s| (values[s.range].to_vec(), s.key, s.partition))
        .collect())
}

#[test]
fn paths_name_a_topic_and_maybe_a_partition() {
    assert_eq!(topic_path("/topics/visits"), Some(("visits", None)));
    assert_eq!(topic_path("/topics/visits/"), Some(("visits", None)));
    assert_eq!(
        topic_path("/topics/visits/partitions/2"),
        Some(("visits", Some("2")))
    );
    for bad in [
        "/topics/",
        "/topics",
        "/topics/a/b",
        "/topics//partitions/1",
        "/api/x/v1",
        "/topics/a/partitions/1/x",
    ] {
        assert_eq!(topic_path(bad), None, "{bad}");
    }
}

#[test]
fn content_types_pick_the_embedded_format() {
    assert_eq!(
        embedded(Some("application/vnd.kafka.json.v2+json")),
        Ok(Embedded::Json)
    );
    assert_eq!(
        embedded(Some("application/vnd.kafka.binary.v2+json; charset=utf-8")),
        Ok(Embedded::Binary)
    );
    assert_eq!(
        embedded(Some("application/vnd.kafka.avro.v2+json")),
        Ok(Embedded::Avro)
    );
    assert_eq!(
        embedded(Some("application/vnd.kafka.protobuf.v2+json")),
        Ok(Embedded::Protobuf)
    );
    assert_eq!(
        embedded(Some("application/vnd.kafka.jsonschema.v2+json")),
        Ok(Embedded::JsonSchema)
    );
    for (ct, says) in [
        (
            "application/vnd.kafka.xml.v2+json",
            "unsupported Content-Type",
        ),
        ("application/json", "unsupported Content-Type"),
    ] {
        let e = embedded(Some(ct)).unwrap_err();
        assert_eq!((e.status, e.code), (415, 415));
        assert!(e.message.contains(says), "{}", e.message);
    }
}

#[test]
fn json_records_keep_their_bytes_and_binary_ones_are_decoded() {
    let got = parts(
        r#"{"records":[{"key":"k","value":{"a": 1}},{"value":[1,2],"partition":0}]}"#,
        Embedded::Json,
    );
    assert_eq!(
        got,
        Ok(vec![
            (br#"{"a": 1}"#.to_vec(), Some(br#""k""#.to_vec()), Some(7)),
            (b"[1,2]".to_vec(), None, Some(0)),
        ])
    );
    let got = parts(
        r#"{"records":[{"key":"AP8=","value":"aGk="},{"key":null,"value":""}]}"#,
        Embedded::Binary,
    );
    assert_eq!(
        got,
        Ok(vec![
            (b"hi".to_vec(), Some(vec![0, 0xff]), Some(7)),
            (vec![], None, Some(7))
        ])
    );
}

#[test]
fn bad_envelopes_are_refused_naming_the_record_and_field() {
    let refused = |body: &str, e| parts(body, e).unwrap_err();
    let r = refused(r#"{"records":[{"value":"!!"}]}"#, Embedded::Binary);
    assert_eq!((r.status, r.code), (422, 42205));
    assert!(
        r.message.starts_with("records[0].value: invalid base64"),
        "{}",
        r.message
    );
    let r = refused(
        r#"{"records":[{"value":1},{"value":{"a":1}}]}"#,
        Embedded::Binary,
    );
    assert!(
        r.message
            .starts_with("records[0].value: expected a base64 string"),
        "{}",
        r.message
    );
    let r = refused(
        r#"{"records":[{"value":1},{"value":null}]}"#,
        Embedded::Json,
    );
    assert!(
        r.message.contains("records[1].value: null values"),
        "{}",
        r.message
    );
    let r = refused(r#"{"records":[{"value":[[[[[1]]]]]}]}"#, Embedded::Json);
    assert!(
        r.message.contains("records[0].value: nests deeper"),
        "{}",
        r.message
    );
    let r = refused(
        r#"{"records":[{"value":1,"partition":-1}]}"#,
        Embedded::Json,
    );
    assert_eq!(r.code, 42202);
    let r = refused(
        &format!(r#"{{"records":[{{"value":"{}"}}]}}"#, "x".repeat(70)),
        Embedded::Json,
    );
    assert_eq!((r.status, r.code), (422, 42201));
    let r = refused(
        r#"{"records":[{"value":1},{"value":2},{"value":3},{"value":4}]}"#,
        Embedded::Json,
    );
    assert_eq!(r.status, 413);
    let r = refused(r#"{"records":[],"value_schema":"{}"}"#, Embedded::Json);
    assert_eq!(r.code, 42201, "{}", r.message);
    for body in [
        r#"{"records":[]}"#,
        r#"{"records":[{"value":1,"extra":2}]}"#,
        "[1]",
        "{",
        "\u{0}",
        // Arrays in place of the objects (serde's derive would take a
        // struct from its fields in order).
        r#"[[{"value":1}],null,null,null,null]"#,
        r#"{"records":[[null,{"a":1},0]]}"#,
        r#"{"records":[{"value":1,"value":2}]}"#,
        r#"{"records":[{"key":1}]}"#,
        r#"{"records":[{"value":1}],"records":[{"value":2}]}"#,
    ] {
        let r = refused(body, Embedded::Json);
        assert_eq!((r.status, r.code), (422, 42205), "{body}: {}", r.message);
    }
    for (body, says) in [
        (
            r#"{"records":[{"value":1,"value":2}]}"#,
            "duplicate field `value`",
        ),
        ("  [1]", "must be a JSON object"),
        (r#"{"records":[[1]]}"#, "expected a record: an object"),
    ] {
        let r = refused(body, Embedded::Json);
        assert!(r.message.contains(says), "{body}: {}", r.message);
    }
    // Null keys and partitions are as good as none.
    let p = parts(
        r#"{"records":[{"key":null,"value":1,"partition":null}]}"#,
        Embedded::Json,
    )
    .unwrap();
    assert_eq!(p.len(), 1);
    assert!(p[0].1.is_none());
    assert_eq!(p[0].2, Some(7), "the path's partition");
}

#[test]
fn answers_give_an_entry_per_record_in_order() {
    let (status, body) = answer(
        &[
            Outcome::Acked {
                partition: 1,
                offset: 40,
            },
            Outcome::Failed {
                code: "MsgSizeTooLarge".into(),
                message: "too large".into(),
                retriable: false,
                possibly_stored: false,
            },
        ],
        [None, None],
    );
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        json!({"offsets": [
            {"partition": 1, "offset": 40, "error_code": null, "error": null},
            {"partition": null, "offset": null, "error_code": 2, "error": "too large"}
        ], "key_schema_id": null, "value_schema_id": null})
    );
    let (status, _) = answer(
        &[Outcome::Failed {
            code: "x".into(),
            message: "down".into(),
            retriable: true,
            possibly_stored: false,
        }],
        [None, None],
    );
    assert_eq!(status, 503, "nothing stored, retriable");
}

#[test]
fn hostile_bodies_are_refused_or_taken_never_a_panic() {
    let good = br#"{"records":[{"key":"AP8=","value":"aGk=","partition":0},{"value":{"a":[1,{"b":null}]}}]}"#;
    let mut rng = fastrand::Rng::with_seed(11);
    for i in 0..20_000 {
        let mut b = good.to_vec();
        for _ in 0..rng.usize(1..6) {
            let at = rng.usize(..b.len());
            match rng.u8(..3) {
                0 => b[at] = rng.u8(..),
                1 => {
                    b.remove(at);
                }
                _ => b.insert(at, *b"{}[]\",:\\0".get(rng.usize(..10)).unwrap_or(&b'x')),
            }
        }
        let e = match i % 3 {
            0 => Embedded::Json,
            1 => Embedded::Binary,
            _ => Embedded::Avro,
        };
        if e == Embedded::Avro {
            b = br#"{"value_schema_id":9,"key_schema_id":9,"records":[{"key":{"n":1},"value":{"n":-7}}]}"#.to_vec();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..b.len());
                b[at] = rng.u8(..);
            }
        }
        if let Ok(p) = produced(&b, e, None) {
            assert!(p.spans.iter().all(|s| s.range.end <= p.values.len()));
        }
    }
}

#[test]
fn avro_envelopes_are_encoded_in_the_wire_format_by_their_schemas() {
    let schema =
        r#"{\"type\":\"record\",\"name\":\"V\",\"fields\":[{\"name\":\"s\",\"type\":\"string\"}]}"#;
    let body = format!(
        r#"{{"value_schema":"{schema}","key_schema_id":9,"records":[{{"key":{{"n":1}},"value":{{"s":"hi"}}}},{{"value":{{"s":""}}}}]}}"#
    );
    let p = produced(body.as_bytes(), Embedded::Avro, None).unwrap();
    assert_eq!(p.schema_ids, [Some(9), Some(5)]);
    let v0 = &p.values[p.spans[0].range.clone()];
    assert_eq!(v0, &[0, 0, 0, 0, 5, 4, b'h', b'i'][..]);
    assert_eq!(p.spans[0].key.as_deref(), Some(&[0, 0, 0, 0, 9, 2][..]));
    assert_eq!(p.spans[1].key, None);
    let (_, answer) = answer(
        &[Outcome::Acked {
            partition: 0,
            offset: 1,
        }],
        p.schema_ids,
    );
    let a: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        (a["key_schema_id"].clone(), a["value_schema_id"].clone()),
        (json!(9), json!(5))
    );

    let refused = |body: String| produced(body.as_bytes(), Embedded::Avro, None).unwrap_err();
    let r = refused(format!(
        r#"{{"value_schema":"{schema}","records":[{{"value":{{"s":1}}}}]}}"#
    ));
    assert_eq!((r.status, r.code), (422, 42205), "{}", r.message);
    assert!(
        r.message.starts_with("records[0].value.s: does not fit V"),
        "{}",
        r.message
    );
    let r = refused(r#"{"records":[{"value":{"s":"x"}}]}"#.into());
    assert_eq!((r.status, r.code), (422, 42201), "{}", r.message);
    let r = refused(format!(
        r#"{{"value_schema":"{schema}","records":[{{"key":1,"value":{{"s":"x"}}}}]}}"#
    ));
    assert_eq!((r.status, r.code), (422, 42201), "{}", r.message);
    let r = refused(r#"{"value_schema_id":77,"records":[{"value":{}}]}"#.into());
    assert_eq!((r.status, r.code), (404, 40403), "{}", r.message);
    let r = refused(r#"{"value_schema":"{\"type\":\"nope\"}","records":[{"value":1}]}"#.into());
    assert_eq!((r.status, r.code), (422, 42201), "{}", r.message);
    let r = refused(r#"{"value_schema":"{}","value_schema_id":9,"records":[{"value":1}]}"#.into());
    assert_eq!((r.status, r.code), (422, 42201), "{}", r.message);
    // Schemas with json or binary are refused as before.
    let r = produced(
        br#"{"value_schema_id":9,"records":[{"value":1}]}"#,
        Embedded::Json,
        None,
    )
    .unwrap_err();
    assert_eq!((r.status, r.code), (422, 42201));
}
