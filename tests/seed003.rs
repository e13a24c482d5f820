//! Seed 003 end to end, from its documented configuration
//! (`docs/seed-003.ini`, its brokers, URLs, topics and paths replaced):
//! one process, two subscriptions — tweets enriched in process from the
//! GeoLite2 City database by their `RemoteAddress`, users as they are —
//! written with `_bulk` to a real OpenSearch 2.19.6 node (started by
//! `scripts/test`: `KBRIDGE_TEST_OPENSEARCH`, the databases in
//! `KBRIDGE_TEST_GEOIP`), read back with `_count` and `_search`. Per-item
//! rejections (a field of the wrong type) follow the status rules: parked
//! with their status, the rest indexed and everything committed.

use std::time::Duration;

use serde_json::{Value, json};

use crate::util::process::{spawn_bin, wait_ready};
use crate::util::*;

fn opensearch() -> String {
    std::env::var("KBRIDGE_TEST_OPENSEARCH")
        .expect("KBRIDGE_TEST_OPENSEARCH: the OpenSearch node scripts/test starts")
}

/// PUT or POST of a JSON body; the answer's JSON (a failure panics).
fn send(method: &str, url: &str, body: &Value) -> Value {
    let a = agent();
    let req = match method {
        "PUT" => a.put(url),
        _ => a.post(url),
    };
    let mut r = req
        .header("Content-Type", "application/json")
        .send(serde_json::to_vec(body).unwrap())
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let text = r.body_mut().read_to_string().unwrap();
    let status = r.status().as_u16();
    assert!(status < 300, "{method} {url}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

/// The example config with each `key = value` of `section` replaced.
fn rewrite(ini: &str, changes: &[(&str, &str, String)]) -> String {
    let mut section = String::new();
    let mut out = String::new();
    for line in ini.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.trim_matches(|c| c == '[' || c == ']').to_string();
        }
        let key = t.split(" = ").next().unwrap_or("");
        match changes.iter().find(|(s, k, _)| *s == section && *k == key) {
            Some((_, k, v)) => out.push_str(&format!("{k} = {v}\n")),
            None => out.push_str(&format!("{line}\n")),
        }
    }
    out
}

/// Documents in `index` (0 while the first `_bulk` has not created it).
fn count(os: &str, index: &str) -> u64 {
    let exists = agent()
        .get(&format!("{os}/{index}"))
        .call()
        .map(|r| r.status().as_u16());
    if exists.ok() != Some(200) {
        return 0;
    }
    send("POST", &format!("{os}/{index}/_refresh"), &json!({}));
    send("POST", &format!("{os}/{index}/_count"), &json!({}))["count"]
        .as_u64()
        .unwrap()
}

#[test]
fn seed_003_tweets_get_geoip_and_users_go_as_they_are_into_opensearch() {
    let (b, os) = (brokers(), opensearch());
    let geoip =
        std::env::var("KBRIDGE_TEST_GEOIP").expect("KBRIDGE_TEST_GEOIP: scripts/opensearch geoip");
    let tag = unique_topic("s3");
    let (tweets, users) = (format!("{tag}-tweets"), format!("{tag}-users"));
    create_topic(&b, &tweets, 2);
    create_topic(&b, &users, 2);
    // geo.point as a geo_point, so a distance query proves the shape.
    send(
        "PUT",
        &format!("{os}/{tweets}"),
        &json!({"mappings": {"properties": {
            "geo": {"properties": {"point": {"type": "geo_point"}}},
            "Retweets": {"type": "integer"}
        }}}),
    );
    let admin = free_port();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/seed-003.ini")).unwrap();
    let bulk = format!("{os}/_bulk");
    let ini = rewrite(
        &example,
        &[
            ("kafka", "brokers", b.clone()),
            ("admin", "listen", format!("127.0.0.1:{admin}")),
            ("subscription.tweets", "group_id", format!("{tag}-gt")),
            ("subscription.tweets", "topics", tweets.clone()),
            ("subscription.tweets", "target_url", bulk.clone()),
            ("subscription.tweets", "es_index", tweets.clone()),
            ("subscription.tweets", "geoip_database", geoip.clone()),
            ("subscription.users", "group_id", format!("{tag}-gu")),
            ("subscription.users", "topics", users.clone()),
            ("subscription.users", "target_url", bulk),
            ("subscription.users", "es_index", users.clone()),
        ],
    );
    assert!(ini.contains(&geoip) && ini.contains(&tweets), "{ini}");
    let dir = TempDir::new("seed003");
    let mut bin = spawn_bin(&ini, &dir);
    wait_ready(&format!("http://127.0.0.1:{admin}"));

    // 30 tweets from Bracknell (GB), Falkenstein (DE), Frankfurt (DE, over
    // IPv6), a private address and no address at all; two whose Retweets
    // is no integer (rejected per item) and one that is no JSON.
    let from = [
        "81.2.69.160:5123",
        "195.201.10.10",
        "[2a00:1450:4001:82a::200e]:443",
        "10.0.0.1",
        "",
    ];
    let mut recs: Vec<(Option<String>, String)> = (0..30)
        .map(|i| {
            let t = json!({"Message": format!("tweet {i}"), "User": {"Name": "Ann", "Id": format!("u{}", i % 10)},
                "Tags": ["kafka", "rust"], "RemoteAddress": from[i % 5], "Retweets": i});
            (Some(format!("u{}", i % 10)), t.to_string())
        })
        .collect();
    recs.push((
        None,
        r#"{"Message":"bad","RemoteAddress":"81.2.69.160","Retweets":"many"}"#.into(),
    ));
    recs.push((None, r#"{"Message":"bad too","Retweets":{"n":1}}"#.into()));
    recs.push((None, "not json".into()));
    produce(&b, &tweets, &recs);
    let people: Vec<(Option<String>, String)> = (0..10)
        .map(|i| {
            (
                Some(format!("u{i}")),
                json!({"Name": format!("user {i}"), "Id": format!("u{i}")}).to_string(),
            )
        })
        .collect();
    produce(&b, &users, &people);

    wait_until(
        "30 tweets and 10 users indexed",
        Duration::from_secs(60),
        || count(&os, &tweets) == 30 && count(&os, &users) == 10,
    );
    // Parked once each — or twice, when a partition moved between the two
    // consumer threads after the copy but before the commit (at least
    // once): one per source record counts.
    let dlq = format!("{tweets}.dlq");
    let mut parked: std::collections::BTreeMap<String, String> = Default::default();
    // Read three records, one more each round while a copy parked twice
    // hides a source (read_topic returns what it has at its deadline).
    let mut n = 3;
    wait_until("3 sources parked", Duration::from_secs(60), || {
        for r in read_topic(&b, &dlq, n, Duration::from_secs(5)) {
            parked.insert(
                r.header("kbridge-dlq-source"),
                r.header("kbridge-dlq-status"),
            );
        }
        n += 1;
        parked.len() >= 3
    });
    let mut statuses: Vec<String> = parked.values().cloned().collect();
    statuses.sort();
    assert_eq!(
        statuses,
        ["", "400", "400"],
        "two rejected by OpenSearch, one not JSON"
    );
    wait_until("both groups committed all", Duration::from_secs(30), || {
        committed(&b, &format!("{tag}-gt"), &tweets, 2)
            .iter()
            .sum::<i64>()
            == 33
            && committed(&b, &format!("{tag}-gu"), &users, 2)
                .iter()
                .sum::<i64>()
                == 10
    });

    let search = |index: &str, query: Value| -> Vec<Value> {
        let r = send(
            "POST",
            &format!("{os}/{index}/_search"),
            &json!({"size": 100, "query": query}),
        );
        r["hits"]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["_source"].clone())
            .collect()
    };
    let gb = search(&tweets, json!({"term": {"geo.country_code.keyword": "GB"}}));
    assert_eq!(gb.len(), 6, "{gb:?}");
    for t in &gb {
        assert_eq!(t["geo"]["city"], "Bracknell", "{t}");
        assert!(
            t["geo"]["point"]["lat"]
                .as_f64()
                .is_some_and(|l| (51.0..52.0).contains(&l)),
            "{t}"
        );
        assert_eq!(
            t["Tags"],
            json!(["kafka", "rust"]),
            "the tweet's own fields kept"
        );
    }
    let near_london = search(
        &tweets,
        json!({"geo_distance": {"distance": "100km", "geo.point": {"lat": 51.5074, "lon": -0.1278}}}),
    );
    assert_eq!(near_london.len(), 6, "geo.point is a geo_point");
    let de = search(&tweets, json!({"term": {"geo.country_code.keyword": "DE"}}));
    assert_eq!(
        de.len(),
        12,
        "Falkenstein over IPv4 and Frankfurt over IPv6"
    );
    assert!(de.iter().any(|t| t["geo"]["city"] == "Frankfurt am Main"));
    let plain = search(
        &tweets,
        json!({"bool": {"must_not": {"exists": {"field": "geo"}}}}),
    );
    assert_eq!(
        plain.len(),
        12,
        "a private address and none: indexed as they are"
    );
    let people = search(&users, json!({"match_all": {}}));
    assert_eq!(people.len(), 10);
    assert!(
        people
            .iter()
            .all(|u| u.get("geo").is_none() && u["Id"].is_string())
    );
    // 12 tweets without a known address and one rejected one have no geo:
    // 13 misses, more when a partition moved between the consumer threads
    // and some records were read twice (at least once).
    let m = get(&format!("http://127.0.0.1:{admin}/metrics")).body;
    let misses = metric(
        &m,
        "kbridge_deliver_geoip_misses_total{subscription=\"tweets\"}",
    );
    assert!((13.0..33.0).contains(&misses), "{misses}: {m}");
    bin.sigterm();
    assert_eq!(bin.wait_exit(Duration::from_secs(20)).code(), Some(0));
}
