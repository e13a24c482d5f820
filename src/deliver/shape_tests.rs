//! Unit tests of `deliver::shape`: URL templates, their encoding and
//! refusals, and the header settings.

use super::*;

fn fill<'a>(key: Option<&'a str>, value: &'a str) -> Fill<'a> {
    Fill {
        topic: "orders.eu",
        partition: 3,
        offset: 42,
        key: key.map(str::as_bytes),
        value: Some(value.as_bytes()),
    }
}

#[test]
fn placeholders_are_filled_and_percent_encoded() {
    let t =
        Template::parse("https://h:8443/t/{topic}/{partition}/{offset}/{key}?u={/user/id}&n={/n}")
            .unwrap();
    assert!(!t.is_static());
    let url = t
        .render(&fill(Some("a b/c?d"), r#"{"user":{"id":"x&y=z#"},"n":7}"#))
        .unwrap();
    assert_eq!(
        url,
        "https://h:8443/t/orders.eu/3/42/a%20b%2Fc%3Fd?u=x%26y%3Dz%23&n=7"
    );
    let t = Template::parse("http://h/plain").unwrap();
    assert!(t.is_static());
    assert_eq!(t.render(&fill(None, "{}")).unwrap(), "http://h/plain");
}

#[test]
fn a_message_that_cannot_fill_a_placeholder_says_why() {
    let t = Template::parse("http://h/{key}").unwrap();
    assert!(t.render(&fill(None, "{}")).unwrap_err().contains("{key}"));
    let t = Template::parse("http://h/{/id}").unwrap();
    for v in [
        r#"{"x":1}"#,
        r#"{"id":null}"#,
        r#"{"id":{"a":1}}"#,
        r#"{"id":""}"#,
        "not json",
    ] {
        assert!(
            t.render(&fill(None, v)).unwrap_err().contains("{/id}"),
            "{v}"
        );
    }
}

#[test]
fn templates_that_would_let_a_record_pick_the_host_or_do_not_parse_are_refused() {
    for (url, why) in [
        ("http://{key}.evil/x", "before the path"),
        ("http://h{topic}/x", "before the path"),
        ("http://h/{nope}", "unknown placeholder {nope}"),
        ("http://h/{id}", "unknown placeholder {id}"),
        ("http://h/{/a~2}", "unknown placeholder"),
        ("http://h/{key", "not closed"),
        ("http://h/key}", "without its {"),
    ] {
        let e = Template::parse(url).unwrap_err();
        assert!(e.contains(why), "{url}: {e}");
    }
}

#[test]
fn header_settings_refuse_what_kbridge_sets_and_what_could_split_a_head() {
    assert_eq!(
        static_headers(r#"{"X-Source":"kbridge","X-Env":"prod 1"}"#).unwrap(),
        [
            ("X-Env".into(), "prod 1".into()),
            ("X-Source".into(), "kbridge".into())
        ]
    );
    assert!(static_headers("").unwrap().is_empty());
    for (text, why) in [
        (r#"{"Authorization":"x"}"#, "set by kbridge"),
        (r#"{"X-Kafka-Topic":"x"}"#, "set by kbridge"),
        (r#"{"webhook-id":"x"}"#, "set by kbridge"),
        (r#"{"Bad Name":"x"}"#, "not a header name"),
        (r#"{"X-A":"line\r\nInjected: 1"}"#, "printable text"),
        (r#"{"X-A":1}"#, "printable text"),
        ("X-A: b", "JSON object"),
    ] {
        let e = static_headers(text).unwrap_err();
        assert!(e.contains(why), "{text}: {e}");
    }
    assert_eq!(
        forwarded(" trace-id, tenant ,").unwrap(),
        ["trace-id", "tenant"]
    );
    assert!(
        forwarded("content-type")
            .unwrap_err()
            .contains("set by kbridge")
    );
    assert!(field_value(b"abc def\t1") && !field_value(b"a\nb") && !field_value(b"\xff"));
}
