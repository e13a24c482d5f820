//! The optional enrichment stage (seed 003's geoIP fetchers): `enrichers`
//! threads between the enrich channel and the sender channel look up
//! `enrich_url` with its `{field}` filled from the message, merge the JSON
//! answer under `enrich_into`, and cache answers for `enrich_cache_ttl_s`.
//! Messages whose `route_field` is not in `enrich_routes` bypass the stage.
//! With `geoip_database` the stage looks addresses up in process first
//! (see `geoip`); `enrich_url` may then be left out.
//! A failed lookup either lets the message go on unenriched, or retries it
//! with backoff and parks it in the dead-letter topic after `max_retries`.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::Value;
use serde_json::value::RawValue;

use super::config::{EnrichConfig, EnrichFailure};
use super::retry::backoff;
use super::{Shared, Stage, Work};
use crate::aggregates::field_value;
use crate::pool::WorkerPool;

/// Does this message take the enrichment stage?
pub fn wanted(e: &EnrichConfig, payload: &[u8]) -> bool {
    e.routes.is_empty()
        || field_value(payload, &e.route_field).is_some_and(|v| e.routes.contains(&v))
}

/// Cached lookup answers: key → (when, answer, bytes held), and the total
/// bytes held (keys and answers), capped by `enrich_cache_max_bytes`.
#[derive(Default)]
struct Entries {
    map: HashMap<String, (Instant, Value, usize)>,
    bytes: usize,
}

type Cache = Mutex<Entries>;

pub fn spawn_pool(
    shared: Arc<Shared>,
    e: EnrichConfig,
    rx: Receiver<Work>,
) -> anyhow::Result<WorkerPool> {
    let agent: ureq::Agent = crate::http_client::agent(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(shared.config.request_timeout))
            .timeout_connect(Some(shared.config.connect_timeout))
            .max_idle_connections_per_host(e.threads.max(4))
            .tls_config(shared.config.outbound.tls())
            .build(),
    );
    let cache: Arc<Cache> = Arc::default();
    Ok(WorkerPool::spawn(
        "deliver-e",
        e.threads,
        &shared.fatal.clone(),
        move |_, g| {
            loop {
                let mut w = match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(w) => w,
                    Err(RecvTimeoutError::Disconnected) => return,
                    Err(RecvTimeoutError::Timeout) if shared.stop.is_stopped() => return,
                    Err(RecvTimeoutError::Timeout) => continue,
                };
                // Already to be parked (not JSON, say): nothing to look up.
                if w.parking.is_some() {
                    forward(&shared, w);
                    continue;
                }
                let _t = g.task();
                shared.metrics.busy.add(1);
                if let Some(geo) = &e.geoip {
                    let found = field_value(&w.msg.payload, &e.geoip_field)
                        .and_then(|address| geo.lookup(&address));
                    match found.and_then(|r| merge(&w.msg.payload, &e.geoip_into, r)) {
                        Some(merged) => {
                            w.msg.payload = merged;
                            shared.metrics.enriched.inc();
                        }
                        None => shared.metrics.geoip_misses.inc(),
                    }
                }
                if e.url.is_empty() {
                    forward(&shared, w);
                    shared.metrics.busy.add(-1);
                    continue;
                }
                let auth = shared.config.outbound.enrich_authorization.as_ref();
                match lookup(&agent, auth, &cache, &e, &w.msg.payload) {
                    Ok(Some(answer)) => {
                        if let Some(merged) = merge(&w.msg.payload, &e.into, answer) {
                            w.msg.payload = merged;
                            shared.metrics.enriched.inc();
                        }
                        forward(&shared, w);
                    }
                    Ok(None) => forward(&shared, w),
                    Err(why) => {
                        shared.metrics.enrich_errors.inc();
                        let c = &shared.config;
                        match e.on_error {
                            EnrichFailure::Deliver => forward(&shared, w),
                            EnrichFailure::Retry if w.enrich_attempts < c.max_retries => {
                                w.enrich_attempts += 1;
                                let wait = backoff(
                                    w.enrich_attempts,
                                    c.backoff_initial,
                                    c.backoff_max,
                                    fastrand::f64(),
                                );
                                shared.requeue(Instant::now() + wait, Stage::Enrich, w);
                            }
                            EnrichFailure::Retry => {
                                w.parking = Some((
                                    format!(
                                        "enrichment failed after {} attempts: {why}",
                                        w.enrich_attempts + 1
                                    ),
                                    None,
                                ));
                                forward(&shared, w);
                            }
                        }
                    }
                }
                shared.metrics.busy.add(-1);
            }
        },
    ))
}

/// Moves a message on to the senders, waiting for room.
fn forward(shared: &Shared, mut w: Work) {
    loop {
        match shared.work_tx.send_timeout(w, Duration::from_millis(100)) {
            Ok(()) => return,
            Err(e) if !shared.stop.is_stopped() => w = e.into_inner(),
            Err(e) => {
                shared.abandon(e.into_inner());
                return;
            }
        }
    }
}

/// The lookup answer for this message: `Ok(None)` when the message has no
/// value for the placeholder's field.
fn lookup(
    agent: &ureq::Agent,
    authorization: Option<&crate::secret::Secret>,
    cache: &Cache,
    e: &EnrichConfig,
    payload: &[u8],
) -> Result<Option<Value>, String> {
    let Some(key) = field_value(payload, &e.field) else {
        return Ok(None);
    };
    if key.len() > e.key_max_bytes {
        return Err(format!(
            "the lookup key is {} bytes, more than enrich_key_max_bytes ({})",
            key.len(),
            e.key_max_bytes
        ));
    }
    if let Ok(c) = cache.lock()
        && let Some((at, v, _)) = c.map.get(&key)
        && at.elapsed() < e.cache_ttl
    {
        return Ok(Some(v.clone()));
    }
    let url = e.url.replace(&format!("{{{}}}", e.field), &encode(&key));
    let mut req = agent.get(&url);
    if let Some(a) = authorization {
        req = req.header("Authorization", a.expose());
    }
    let mut resp = req.call().map_err(|err| err.to_string())?;
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    let _ = resp
        .body_mut()
        .as_reader()
        .take(1 << 20)
        .read_to_end(&mut body);
    if !(200..300).contains(&status) {
        return Err(format!("lookup answered HTTP {status}"));
    }
    let v: Value =
        serde_json::from_slice(&body).map_err(|err| format!("lookup answer is not JSON: {err}"))?;
    remember(cache, e, key, &v, body.len());
    Ok(Some(v))
}

/// Caches `v` for `key` within `enrich_cache_max` entries and
/// `enrich_cache_max_bytes` (an answer costs about its size as read, a
/// parsed value holds a few times that: counted twice): expired entries go
/// first, then everything.
fn remember(cache: &Cache, e: &EnrichConfig, key: String, v: &Value, answer_bytes: usize) {
    let cost = key.len() + 2 * answer_bytes + 64;
    if e.cache_max == 0 || cost > e.cache_max_bytes {
        return;
    }
    let Ok(mut c) = cache.lock() else { return };
    let c = &mut *c;
    if c.map.len() >= e.cache_max || c.bytes + cost > e.cache_max_bytes {
        c.map.retain(|_, (at, _, _)| at.elapsed() < e.cache_ttl);
        c.bytes = c.map.values().map(|(_, _, n)| n).sum();
        if c.map.len() >= e.cache_max || c.bytes + cost > e.cache_max_bytes {
            c.map.clear();
            c.bytes = 0;
        }
    }
    if let Some((_, _, old)) = c.map.insert(key, (Instant::now(), v.clone(), cost)) {
        c.bytes -= old;
    }
    c.bytes += cost;
}

/// The message with `answer` under `into`; `None` when it is not an object.
/// The message's own bytes are kept (key order, number spelling, any
/// depth): the answer is added before the closing brace, or replaces the
/// value of an existing `into` field.
fn merge(payload: &[u8], into: &str, answer: Value) -> Option<Vec<u8>> {
    let fields = object_fields(payload)?;
    let answer = serde_json::to_vec(&answer).ok()?;
    let name = serde_json::to_vec(into).ok()?;
    let mut out = Vec::with_capacity(payload.len() + answer.len() + name.len() + 2);
    if fields.iter().any(|(k, _)| k == into) {
        out.push(b'{');
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend(serde_json::to_vec(k).ok()?);
            out.push(b':');
            if k == into {
                out.extend_from_slice(&answer);
            } else {
                out.extend_from_slice(v.get().as_bytes());
            }
        }
    } else {
        let body = payload.trim_ascii_end();
        out.extend_from_slice(body.strip_suffix(b"}")?);
        if !fields.is_empty() {
            out.push(b',');
        }
        out.extend(name);
        out.push(b':');
        out.extend(answer);
    }
    out.push(b'}');
    Some(out)
}

/// The top-level fields of a JSON object, in order, values verbatim.
fn object_fields(payload: &[u8]) -> Option<Vec<(String, &RawValue)>> {
    struct Fields;
    impl<'de> serde::de::Visitor<'de> for Fields {
        type Value = Vec<(String, &'de RawValue)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(k) = m.next_key::<String>()? {
                out.push((k, m.next_value::<&RawValue>()?));
            }
            Ok(out)
        }
    }
    let text = std::str::from_utf8(payload).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let fields = serde::Deserializer::deserialize_map(&mut de, Fields).ok()?;
    de.end().ok()?;
    Some(fields)
}

/// Percent-encodes all but unreserved URL characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(routes: &[&str]) -> EnrichConfig {
        EnrichConfig {
            url: "http://h/{ip}".into(),
            field: "ip".into(),
            threads: 1,
            into: "geo".into(),
            cache_ttl: Duration::from_secs(1),
            cache_max: 10,
            cache_max_bytes: 4096,
            key_max_bytes: 16,
            on_error: EnrichFailure::Deliver,
            route_field: "type".into(),
            routes: routes.iter().map(|s| s.to_string()).collect(),
            geoip: None,
            geoip_field: String::new(),
            geoip_into: "geo".into(),
        }
    }

    #[test]
    fn routes_select_which_messages_are_enriched() {
        assert!(wanted(&cfg(&[]), br#"{"type":"user"}"#));
        assert!(wanted(&cfg(&["tweet"]), br#"{"type":"tweet"}"#));
        assert!(!wanted(&cfg(&["tweet"]), br#"{"type":"user"}"#));
        assert!(!wanted(&cfg(&["tweet"]), br#"{}"#));
    }

    #[test]
    fn merge_puts_the_answer_under_its_name() {
        let m = merge(
            br#"{"ip":"1.2.3.4"}"#,
            "geo",
            serde_json::json!({"country":"NL"}),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(v["geo"]["country"], "NL");
        assert_eq!(v["ip"], "1.2.3.4");
        assert!(merge(b"[1]", "geo", Value::Null).is_none());
    }

    #[test]
    fn merge_keeps_the_message_bytes() {
        let big = br#"{"z":1,"n":123456789012345678901234567890}"#;
        assert_eq!(
            merge(big, "geo", serde_json::json!({"c":"NL"})).unwrap(),
            br#"{"z":1,"n":123456789012345678901234567890,"geo":{"c":"NL"}}"#
        );
        assert_eq!(
            merge(b"{ }", "geo", Value::Null).unwrap(),
            br#"{ "geo":null}"#
        );
        assert_eq!(
            merge(br#"{"geo":1,"a":2}"#, "geo", serde_json::json!(3)).unwrap(),
            br#"{"geo":3,"a":2}"#
        );
        let deep = format!("{{\"d\":{}{}}}", "[".repeat(500), "]".repeat(500));
        assert!(merge(deep.as_bytes(), "geo", Value::Null).is_some());
    }

    #[test]
    fn the_cache_is_bounded_in_entries_and_bytes_and_keys_in_length() {
        let e = cfg(&[]);
        let cache = Cache::default();
        let v = serde_json::json!({"c": "NL"});
        for i in 0..25 {
            remember(&cache, &e, format!("k{i}"), &v, 100);
            let c = cache.lock().unwrap();
            assert!(c.map.len() <= e.cache_max, "{} entries", c.map.len());
            assert!(c.bytes <= e.cache_max_bytes, "{} bytes", c.bytes);
            assert_eq!(c.bytes, c.map.values().map(|x| x.2).sum::<usize>());
        }
        remember(&cache, &e, "huge".into(), &v, 1 << 20);
        assert!(
            !cache.lock().unwrap().map.contains_key("huge"),
            "larger than the cache"
        );
        let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
        let long = format!("{{\"ip\":\"{}\"}}", "9".repeat(17));
        let err = lookup(&agent, None, &cache, &e, long.as_bytes()).unwrap_err();
        assert!(err.contains("more than enrich_key_max_bytes (16)"), "{err}");
    }

    #[test]
    fn encodes_reserved_characters() {
        assert_eq!(encode("1.2.3.4"), "1.2.3.4");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
