//! Unit tests of `deliver::config`: defaults, prefetch, filters and
//! shaping settings, and the errors that name their keys.
use super::*;

fn load(text: &str) -> (Option<DeliverConfig>, ConfigErrors) {
    let mut errors = ConfigErrors::default();
    let doc = Document::parse("d.ini", text, &mut errors);
    let c = DeliverConfig::from_document(&doc, &mut errors, None);
    (c, errors)
}

#[test]
fn a_bad_filter_stops_start_naming_the_key_and_where_in_it() {
    let base = "[deliver]\ngroup_id = g\ntopics = a\ntarget_url = http://h/x\n";
    let (c, e) = load(&format!(
        "{base}filter = {{\"field\":\"/type\",\"equals\":\"click\"}}\n"
    ));
    assert!(e.0.is_empty(), "{e}");
    assert!(c.unwrap().filter.is_some());
    let (_, e) = load(&format!(
        "{base}filter = {{\"any\":[{{\"field\":\"type\",\"equals\":1}}]}}\n"
    ));
    let text = e.to_string();
    assert!(
        text.contains("d.ini:5 [deliver] filter: any[0].field: expected a JSON Pointer"),
        "{text}"
    );
}

#[test]
fn shaping_mistakes_stop_start_naming_their_keys() {
    let base = "[deliver]\ngroup_id = g\ntopics = a\n";
    let errors = |more: &str| load(&format!("{base}{more}")).1.to_string();
    let e = errors("target_url = http://h/{key}\nbatch_size = 10\n");
    assert!(
        e.contains("[deliver] target_url: placeholders fill one message's URL"),
        "{e}"
    );
    let e = errors("target_url = http://{key}/x\n");
    assert!(
        e.contains("[deliver] target_url: placeholder {key} before the path"),
        "{e}"
    );
    let e = errors("target_url = http://h/x\nmethod = GET\n");
    assert!(
        e.contains("[deliver] method: expected one of POST | PUT | PATCH"),
        "{e}"
    );
    let e = errors("target_url = http://h/x\nheaders = {\"Content-Type\": \"a\"}\n");
    assert!(
        e.contains("[deliver] headers: Content-Type is set by kbridge"),
        "{e}"
    );
    let e = errors("target_url = http://h/x\nforward_headers = a b\n");
    assert!(
        e.contains("[deliver] forward_headers: \"a b\" is not a header name"),
        "{e}"
    );
    let (c, e) = load(&format!(
        "{base}target_url = http://h/{{topic}}/{{key}}\nmethod = PATCH\non_tombstone = delete\n"
    ));
    assert!(e.0.is_empty(), "{e}");
    let c = c.unwrap();
    assert_eq!(
        (c.method, c.on_tombstone),
        (Method::Patch, OnTombstone::Delete)
    );
    assert!(!c.url.is_static());
}

#[test]
fn the_prefetch_follows_the_batch_size_and_yields_to_the_section() {
    let base = "[deliver]\ngroup_id = g\ntopics = a\ntarget_url = http://h/x\n";
    let fetch = |text: &str| {
        let (c, e) = load(text);
        assert!(e.0.is_empty(), "{e}");
        let c = c.unwrap();
        let v = c
            .consumer
            .iter()
            .rev()
            .find(|(k, _)| k == "max.partition.fetch.bytes");
        v.map(|(_, v)| v.clone()).unwrap()
    };
    assert_eq!(fetch(base), "65536");
    assert_eq!(fetch(&format!("{base}batch_size = 100\n")), "262144");
    let own = "[deliver.consumer]\nmax.partition.fetch.bytes = 1048576\n";
    assert_eq!(fetch(&format!("{base}{own}")), "1048576");
}

#[test]
fn minimal_section_gets_the_defaults() {
    let (c, e) = load("[deliver]\ngroup_id = g\ntopics = a, b\ntarget_url = http://h/x\n");
    assert!(e.0.is_empty(), "{e}");
    let c = c.unwrap();
    assert_eq!(c.topics, vec!["a", "b"]);
    assert_eq!(
        (c.senders, c.max_in_flight, c.max_threads, c.batch_size),
        (8, 8, 10, 1)
    );
    assert_eq!(c.commit, Commit::AfterDelivery);
    assert_eq!(c.dlq_topics(), vec!["a.dlq", "b.dlq"]);
    assert!(c.enrich.is_none());
    assert!(
        c.consumer
            .contains(&("enable.auto.offset.store".into(), "false".into()))
    );
}

#[test]
fn every_problem_is_reported() {
    let (_, e) = load(
        "[deliver]\ntopics = ok,bad topic\ntarget_url = ftp://x\nordering = random\nretry_statuses = 5xx\n\
         enrich_url = http://geo/lookup\n[deliver.consumer]\nsession.timeout.ms = 5000\n\
         heartbeat.interval.ms = 1000\n",
    );
    let t = e.to_string();
    for want in [
        "[deliver] group_id: required key is missing",
        "d.ini:2 [deliver] topics: expected comma-separated Kafka topic names, got \"bad topic\"",
        "d.ini:3 [deliver] target_url: expected an http:// or https:// URL",
        "d.ini:4 [deliver] ordering: expected one of none | key",
        "d.ini:5 [deliver] retry_statuses: \"5xx\" is not a status",
        "d.ini:6 [deliver] enrich_url: expected a URL with a {field} placeholder",
        "d.ini:8 [deliver.consumer] session.timeout.ms: not used by group.protocol = consumer",
        "d.ini:9 [deliver.consumer] heartbeat.interval.ms: not used by group.protocol = consumer",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
}

#[test]
fn classic_protocol_needs_a_session_longer_than_the_drain() {
    let base = "[deliver]\ngroup_id=g\ntopics=t\ntarget_url=http://h/\n[deliver.consumer]\ngroup.protocol = classic\n";
    let (_, e) = load(&format!("{base}session.timeout.ms = 5000\n"));
    assert!(
        e.to_string().contains("d.ini:7 [deliver.consumer] session.timeout.ms: must exceed [deliver] shutdown_timeout_ms (10000), got 5000"),
        "{e}"
    );
    let (c, e) = load(&format!(
        "{base}session.timeout.ms = 20000\nheartbeat.interval.ms = 1000\n"
    ));
    assert!(e.0.is_empty(), "{e}");
    assert!(
        c.unwrap()
            .consumer
            .contains(&("group.protocol".into(), "classic".into()))
    );
    // Unset, it is chosen at start from what the cluster offers
    // (`kafka::protocol::settle`).
    let (c, e) = load("[deliver]\ngroup_id=g\ntopics=t\ntarget_url=http://h/\n");
    assert!(e.0.is_empty(), "{e}");
    assert!(
        !c.unwrap()
            .consumer
            .iter()
            .any(|(k, _)| k == "group.protocol")
    );
}

#[test]
fn automatic_offset_commits_are_refused() {
    for key in ["enable.auto.commit", "enable.auto.offset.store"] {
        let (_, e) = load(&format!(
            "[deliver]\ngroup_id=g\ntopics=t\ntarget_url=http://h/\n[deliver.consumer]\n{key} = true\n"
        ));
        assert!(
            e.to_string().contains(&format!(
                "d.ini:6 [deliver.consumer] {key}: must stay false: deliver commits offsets itself, only past messages that are delivered or parked"
            )),
            "{e}"
        );
    }
}

#[test]
fn enrichment_reads_its_placeholder_and_routes() {
    let (c, e) = load(
        "[deliver]\ngroup_id=g\ntopics=t\ntarget_url=http://h/\nenrich_url = http://geo/ip/{ip}\nenrich_routes = tweet, retweet\n",
    );
    assert!(e.0.is_empty(), "{e}");
    let en = c.unwrap().enrich.unwrap();
    assert_eq!(en.field, "ip");
    assert_eq!(en.routes, vec!["tweet", "retweet"]);
}

#[test]
fn a_signing_secret_others_can_read_or_not_in_whsec_form_stops_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("kbridge-sign-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("s");
    let base = format!(
        "[deliver]\ngroup_id = g\ntopics = a\ntarget_url = http://h/x\nsigning_secret_file = {}\n",
        file.display()
    );
    std::fs::write(&file, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = load(&base).1.to_string();
    assert!(
        e.contains("[deliver] signing_secret_file:") && e.contains("chmod 600"),
        "{e}"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (c, e) = load(&base);
    assert!(e.0.is_empty(), "{e}");
    assert!(c.unwrap().signer.is_some());
    std::fs::write(&file, "not-a-secret\n").unwrap();
    let e = load(&base).1.to_string();
    assert!(e.contains("line 1: expected whsec_"), "{e}");
    assert!(
        !e.contains("not-a-secret"),
        "the error never shows the file's text: {e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn key_quarantine_needs_key_ordering_and_names_its_topic() {
    let base = "[deliver]\ngroup_id = team/a b\ntopics = a\ntarget_url = http://h/x\n";
    let (c, e) = load(&format!("{base}ordering = key\non_park = quarantine_key\n"));
    assert!(e.0.is_empty(), "{e}");
    assert_eq!(
        c.unwrap().quarantine.as_deref(),
        Some("team_a_b.quarantine"),
        "the default topic, from the group id"
    );
    let (c, _) = load(&format!("{base}ordering = key\n"));
    assert_eq!(
        c.unwrap().quarantine,
        None,
        "off by default (on_park = park)"
    );
    let e = load(&format!("{base}on_park = quarantine_key\n"))
        .1
        .to_string();
    assert!(
        e.contains(
            "[deliver] on_park: quarantine_key keeps a key's order, so it needs ordering = key"
        ),
        "{e}"
    );
    let e = load(&format!(
        "{base}ordering = key\non_park = quarantine_key\nquarantine_topic = a b\n"
    ))
    .1
    .to_string();
    assert!(
        e.contains("[deliver] quarantine_topic: expected a Kafka topic name"),
        "{e}"
    );
    let e = load(&format!("{base}on_park = hold\n")).1.to_string();
    assert!(e.contains("[deliver] on_park:"), "{e}");
}

#[test]
fn geoip_needs_a_database_and_the_field_holding_the_address() {
    let base = "[deliver]\ngroup_id = g\ntopics = a\ntarget_url = http://h/x\n";
    let e = load(&format!("{base}geoip_database = /nonexistent/city.mmdb\n"))
        .1
        .to_string();
    assert!(
        e.contains("[deliver] geoip_database: /nonexistent/city.mmdb: not a MaxMind database"),
        "{e}"
    );
    assert!(
        e.contains("[deliver] geoip_field: required with geoip_database"),
        "{e}"
    );
    let (c, e) = load(base);
    assert!(e.0.is_empty(), "{e}");
    assert!(
        c.unwrap().enrich.is_none(),
        "no enrichment stage by default"
    );
}
