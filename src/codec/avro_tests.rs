//! The Avro codec against the `apache-avro` crate's own reader and writer,
//! Avro's JSON encoding, misfit paths, and hostile bytes.

use super::*;
use apache_avro::types::Value as A;
use serde_json::json;

const ORDER: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
  {"name":"id","type":"long"},
  {"name":"customer","type":{"type":"record","name":"Customer","fields":[
     {"name":"name","type":"string"},{"name":"vip","type":"boolean","default":false}]}},
  {"name":"tags","type":{"type":"array","items":"string"}},
  {"name":"attrs","type":{"type":"map","values":"int"}},
  {"name":"note","type":["null","string"],"default":null},
  {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["BUY","SELL"]}},
  {"name":"price","type":"double"},
  {"name":"ratio","type":"float"},
  {"name":"raw","type":"bytes"},
  {"name":"code","type":{"type":"fixed","name":"Code","size":2}},
  {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}}
]}"#;

fn order() -> Schema {
    Schema::parse(ORDER).unwrap()
}

fn enc(s: &Schema, j: &serde_json::Value) -> Result<Vec<u8>, Misfit> {
    let mut out = Vec::new();
    s.from_json(j.to_string().as_bytes(), &mut out)
        .map(|()| out)
}

fn full() -> serde_json::Value {
    json!({"id": 7, "customer": {"name": "Zoë", "vip": true}, "tags": ["a", "b"],
           "attrs": {"x": 1}, "note": {"string": "hi"}, "kind": "SELL", "price": 1.5,
           "ratio": 0.25, "raw": "\u{0}\u{ff}", "code": "ab", "at": 1700000000000i64})
}

#[test]
fn json_round_trips_in_avros_json_encoding() {
    let s = order();
    let bytes = enc(&s, &full()).unwrap();
    let back: serde_json::Value = serde_json::from_slice(&s.to_json(&bytes).unwrap()).unwrap();
    assert_eq!(back, full());
    // Bare union values and defaults are taken; the JSON shows the branch.
    let mut bare = full();
    bare["note"] = json!("hi");
    bare["customer"] = json!({"name": "Zoë"});
    let back: serde_json::Value =
        serde_json::from_slice(&s.to_json(&enc(&s, &bare).unwrap()).unwrap()).unwrap();
    assert_eq!(back["note"], json!({"string": "hi"}));
    assert_eq!(back["customer"]["vip"], json!(false));
    let mut none = full();
    none.as_object_mut().unwrap().remove("note");
    let back: serde_json::Value =
        serde_json::from_slice(&s.to_json(&enc(&s, &none).unwrap()).unwrap()).unwrap();
    assert_eq!(back["note"], json!(null));
}

#[test]
fn the_crates_reader_reads_what_this_writes_and_the_other_way() {
    let s = order();
    let bytes = enc(&s, &full()).unwrap();
    let v = apache_avro::from_avro_datum(&s.root, &mut bytes.as_slice(), None).unwrap();
    let A::Record(fields) = &v else {
        panic!("{v:?}")
    };
    assert_eq!(fields[0], ("id".into(), A::Long(7)));
    assert_eq!(
        fields[4],
        ("note".into(), A::Union(1, Box::new(A::String("hi".into()))))
    );
    assert_eq!(fields[8], ("raw".into(), A::Bytes(vec![0, 0xff])));
    // The crate's writer, read back here.
    let again = apache_avro::to_avro_datum(&s.root, v).unwrap();
    assert_eq!(again, bytes);
    let back: serde_json::Value = serde_json::from_slice(&s.to_json(&again).unwrap()).unwrap();
    assert_eq!(back, full());
}

#[test]
fn what_does_not_fit_names_its_path() {
    let s = order();
    let cases = [
        (
            json!({"customer": {"name": 5}}),
            "customer.name",
            "expected a string",
        ),
        (json!({"tags": ["a", 1]}), "tags[1]", "expected a string"),
        (json!({"attrs": {"k": 1.5}}), "attrs.k", "expected an int"),
        (json!({"kind": "HOLD"}), "kind", "not a symbol"),
        (json!({"code": "abc"}), "code", "2 bytes"),
        (json!({"extra": 1}), "extra", "not a field of shop.Order"),
        (json!({"note": 5}), "note", "fits none"),
        (json!({"id": 1u64 << 63}), "id", "expected a long"),
    ];
    for (patch, path, what) in cases {
        let mut j = full();
        for (k, v) in patch.as_object().unwrap() {
            j[k] = v.clone();
        }
        let m = enc(&s, &j).unwrap_err();
        assert_eq!(m.path, path, "{m:?}");
        assert!(m.message.contains(what), "{m:?}");
    }
    let mut j = full();
    j.as_object_mut().unwrap().remove("id");
    let m = enc(&s, &j).unwrap_err();
    assert_eq!(
        (m.path.as_str(), m.message.contains("no default")),
        ("id", true)
    );
    assert_eq!(enc(&s, &json!([1])).unwrap_err().path, "");
    // A name repeated in one object (readers differ on which one counts).
    let text = full()
        .to_string()
        .replacen("{\"name\":", "{\"name\":\"x\",\"name\":", 1);
    let m = s.from_json(text.as_bytes(), &mut Vec::new()).unwrap_err();
    assert_eq!(m.path, "customer", "{m:?}");
    assert!(m.message.contains("\"name\" appears twice"), "{m:?}");
}

#[test]
fn hostile_bytes_are_errors_never_a_panic_or_a_flood() {
    let s = order();
    let good = enc(&s, &full()).unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    for _ in 0..20_000 {
        let mut b = good.clone();
        for _ in 0..rng.usize(1..5) {
            let at = rng.usize(..b.len());
            b[at] = rng.u8(..);
        }
        b.truncate(rng.usize(0..=b.len()));
        if let Ok(j) = s.to_json(&b) {
            serde_json::from_slice::<serde_json::Value>(&j).unwrap();
        }
    }
    // Trailing bytes and a cut datum are refused.
    assert!(
        s.to_json(&[good.as_slice(), &[0]].concat())
            .unwrap_err()
            .contains("left over")
    );
    assert!(
        s.to_json(&good[..good.len() - 1])
            .unwrap_err()
            .contains("cut short")
    );
    // An array of nulls claiming 2^62 items stops at the output cap.
    let nulls = Schema::parse(r#"{"type":"array","items":"null"}"#).unwrap();
    let mut b = Vec::new();
    put_long(&mut b, 1 << 62);
    assert!(nulls.to_json(&b).unwrap_err().contains("more JSON"));
    // A recursive schema nested a million deep stops at the depth limit.
    let list = Schema::parse(
        r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]}]}"#,
    )
    .unwrap();
    let deep = vec![2u8; 1_000_000];
    assert!(list.to_json(&deep).unwrap_err().contains("nested deeper"));
    let mut shallow = vec![2u8; 10];
    shallow.push(0);
    assert!(list.to_json(&shallow).is_ok());
}

#[test]
fn floats_without_json_numbers_are_strings_both_ways() {
    let s = Schema::parse(r#"{"type":"array","items":"double"}"#).unwrap();
    let b = enc(&s, &json!(["NaN", "Infinity", "-Infinity", 2.5])).unwrap();
    assert_eq!(
        s.to_json(&b).unwrap(),
        br#"["NaN","Infinity","-Infinity",2.5]"#.to_vec()
    );
}
