//! Unit tests of `deliver::filter`: parsing (and where its errors point)
//! and matching on values, headers and keys.

use super::*;

fn rec<'a>(
    value: &'a str,
    key: Option<&'a str>,
    headers: &'a [(Vec<u8>, Option<Vec<u8>>)],
) -> Record<'a> {
    Record {
        value: Some(value.as_bytes()),
        key: key.map(str::as_bytes),
        headers,
    }
}

fn check(filter: &str, value: &str, key: Option<&str>, headers: &[(&str, &[u8])]) -> bool {
    let f = Filter::parse(filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
    let headers: Vec<(Vec<u8>, Option<Vec<u8>>)> = headers
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), Some(v.to_vec())))
        .collect();
    let r = rec(value, key, &headers);
    let json: Option<Value> = serde_json::from_str(value).ok();
    f.matches(&r, json.as_ref())
}

#[test]
fn field_tests_follow_json_pointers_and_types() {
    let v = r#"{"type":"click","n":5,"user":{"id":"u-7","a/b":1,"m~n":2},"tags":["x"],"z":null}"#;
    assert!(check(r#"{"field":"/type","equals":"click"}"#, v, None, &[]));
    assert!(!check(r#"{"field":"/type","equals":"view"}"#, v, None, &[]));
    assert!(check(r#"{"field":"/n","equals":5.0}"#, v, None, &[]));
    assert!(check(
        r#"{"field":"/type","one_of":["view","click"]}"#,
        v,
        None,
        &[]
    ));
    assert!(check(r#"{"field":"/user/id","prefix":"u-"}"#, v, None, &[]));
    assert!(check(
        r#"{"field":"/user/id","regex":"^u-[0-9]+$"}"#,
        v,
        None,
        &[]
    ));
    assert!(check(r#"{"field":"/user/a~1b","equals":1}"#, v, None, &[]));
    assert!(check(r#"{"field":"/user/m~0n","gte":2}"#, v, None, &[]));
    assert!(check(r#"{"field":"/tags/0","equals":"x"}"#, v, None, &[]));
    assert!(check(r#"{"field":"/z","exists":true}"#, v, None, &[]));
    assert!(check(r#"{"field":"/nope","absent":true}"#, v, None, &[]));
    assert!(check(r#"{"field":"/n","gt":4}"#, v, None, &[]));
    assert!(!check(r#"{"field":"/n","lt":5}"#, v, None, &[]));
    assert!(check(r#"{"field":"/n","lte":5}"#, v, None, &[]));
    // Another type fails the test, never errs.
    assert!(!check(r#"{"field":"/type","gt":1}"#, v, None, &[]));
    assert!(!check(r#"{"field":"/n","prefix":"5"}"#, v, None, &[]));
    // A value that is no JSON: every field test fails but absent.
    assert!(!check(
        r#"{"field":"/type","exists":true}"#,
        "not json",
        None,
        &[]
    ));
    assert!(check(
        r#"{"field":"/type","absent":true}"#,
        "not json",
        None,
        &[]
    ));
}

#[test]
fn headers_and_keys_compare_as_text_and_combinators_combine() {
    let h: &[(&str, &[u8])] = &[("source", b"web-eu"), ("bin", b"\xff\x00"), ("n", b" 12 ")];
    assert!(check(
        r#"{"header":"source","prefix":"web-"}"#,
        "{}",
        None,
        h
    ));
    assert!(check(
        r#"{"header":"source","one_of":["app","web-eu"]}"#,
        "{}",
        None,
        h
    ));
    assert!(check(
        r#"{"header":"bin","regex":"(?-u)^\\xff"}"#,
        "{}",
        None,
        h
    ));
    assert!(check(r#"{"header":"n","gt":11}"#, "{}", None, h));
    assert!(check(r#"{"header":"other","absent":true}"#, "{}", None, h));
    assert!(
        !check(r#"{"header":"Source","exists":true}"#, "{}", None, h),
        "names are exact"
    );
    assert!(check(
        r#"{"key":true,"equals":"k1"}"#,
        "{}",
        Some("k1"),
        &[]
    ));
    assert!(!check(r#"{"key":true,"exists":true}"#, "{}", None, &[]));
    assert!(check(r#"{"key":true,"absent":true}"#, "{}", None, &[]));
    let f = r#"{"all":[{"key":true,"prefix":"u"},{"any":[{"field":"/a","equals":1},{"not":{"field":"/b","exists":true}}]}]}"#;
    assert!(check(f, r#"{"a":1,"b":2}"#, Some("u1"), &[]));
    assert!(check(f, r#"{"a":2}"#, Some("u1"), &[]));
    assert!(!check(f, r#"{"a":2,"b":0}"#, Some("u1"), &[]));
    assert!(!check(f, r#"{"a":1}"#, Some("x"), &[]));
}

#[test]
fn mistakes_name_where_they_are() {
    let err = |f: &str| Filter::parse(f).unwrap_err();
    assert!(err("type = click").contains("not a JSON filter object"));
    assert!(err("[]").contains("filter: expected an object"));
    assert!(err(r#"{"all":[]}"#).contains("all: expected a non-empty array"));
    assert!(
        err(r#"{"all":[{"field":"/a","equals":1},{"field":"/b","eq":1}]}"#)
            .contains("all[1]: unknown \"eq\"")
    );
    assert!(
        err(r#"{"not":{"field":"a","equals":1}}"#).contains("not.field: expected a JSON Pointer")
    );
    assert!(err(r#"{"field":"/a~2","equals":1}"#).contains("field: expected a JSON Pointer"));
    assert!(err(r#"{"field":"/a"}"#).contains("exactly one test"));
    assert!(err(r#"{"field":"/a","equals":1,"prefix":"x"}"#).contains("got equals, prefix"));
    assert!(
        err(r#"{"field":"/a","header":"h","equals":1}"#)
            .contains("exactly one of field, header, key")
    );
    assert!(
        err(r#"{"header":"h","equals":1}"#).contains("equals: headers and the key compare as text")
    );
    assert!(err(r#"{"key":true,"one_of":["a",2]}"#).contains("one_of[1]: headers and the key"));
    assert!(err(r#"{"field":"/a","regex":"("}"#).contains("regex: regex parse error"));
    assert!(err(r#"{"field":"/a","regex":"a{1000}{1000}"}"#).contains("regex:"));
    assert!(err(r#"{"field":"/a","gt":"5"}"#).contains("gt: expected a number"));
    assert!(err(r#"{"field":"/a","exists":false}"#).contains("exists: expected true"));
    assert!(err(r#"{"all":[{"field":"/a","exists":true}],"any":[]}"#).contains("all stands alone"));
    let deep = format!(
        "{}{}{}",
        r#"{"not":"#.repeat(20),
        r#"{"key":true,"exists":true}"#,
        "}".repeat(20)
    );
    assert!(err(&deep).contains("nest deeper"));
    assert!(
        Filter::parse(r#"{"field":"","exists":true}"#).is_ok(),
        "the whole value"
    );
}

#[test]
fn only_field_conditions_need_the_value_parsed() {
    let f = Filter::parse(
        r#"{"any":[{"key":true,"exists":true},{"not":{"header":"h","exists":true}}]}"#,
    )
    .unwrap();
    assert!(!f.needs_json());
    let f = Filter::parse(
        r#"{"any":[{"key":true,"exists":true},{"not":{"field":"/h","exists":true}}]}"#,
    )
    .unwrap();
    assert!(f.needs_json());
}
