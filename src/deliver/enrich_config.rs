//! The enrichment stage's settings: the `enrich_*` and `geoip_*` keys of
//! `[deliver]` (or a subscription's section), validated into
//! [`EnrichConfig`].

use std::time::Duration;

use crate::config::ini::comma_list;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrichFailure {
    /// Deliver the message without the enrichment.
    Deliver,
    /// Try the lookup again later (the message waits).
    Retry,
}

/// The optional enrichment stage (seed 003's geoIP fetchers).
#[derive(Debug, Clone)]
pub struct EnrichConfig {
    /// With a `{field}` placeholder filled from the message.
    pub url: String,
    pub field: String,
    pub threads: usize,
    pub into: String,
    pub cache_ttl: Duration,
    pub cache_max: usize,
    /// Bytes the cache may hold (keys and answers).
    pub cache_max_bytes: usize,
    /// Longer lookup keys are not looked up (a lookup failure).
    pub key_max_bytes: usize,
    pub on_error: EnrichFailure,
    /// Messages whose `route_field` value is listed here are enriched;
    /// empty `routes` = every message.
    pub route_field: String,
    pub routes: Vec<String>,
    /// `geoip_database`: in-process geoIP lookups of `geoip_field`, merged
    /// under `geoip_into` (before the HTTP lookup, when both are set).
    pub geoip: Option<std::sync::Arc<super::geoip::GeoIp>>,
    pub geoip_field: String,
    pub geoip_into: String,
}

/// The `enrich_*` and `geoip_*` keys of `[deliver]`: `None` when neither
/// an enrichment URL nor a geoIP database is set.
pub(super) fn enrich_config(r: &mut crate::config::SectionReader<'_>) -> Option<EnrichConfig> {
    let url = r.string("enrich_url", "");
    let threads = r.int("enrichers", 2usize, 1..=256);
    let into = r.string("enrich_into", "enrichment");
    let ttl = r.int("enrich_cache_ttl_s", 300u64, 0..=86_400);
    let cache_max = r.int("enrich_cache_max", 10_000usize, 0..=10_000_000);
    let cache_max_bytes = r.int("enrich_cache_max_bytes", 16usize << 20, 0..=1 << 34);
    let key_max_bytes = r.int("enrich_key_max_bytes", 256usize, 1..=65_536);
    let on_error = r.choice(
        "enrich_on_error",
        EnrichFailure::Deliver,
        &[
            ("deliver", EnrichFailure::Deliver),
            ("retry", EnrichFailure::Retry),
        ],
    );
    let route_field = r.string("route_field", "type");
    let routes = comma_list(&r.string("enrich_routes", ""));
    let databases = comma_list(&r.string("geoip_database", ""));
    let geoip_field = r.string("geoip_field", "");
    let geoip_into = r.string("geoip_into", "geo");
    let geoip = match databases.is_empty() {
        true => None,
        false => match super::geoip::GeoIp::open(&databases) {
            Ok(g) => Some(std::sync::Arc::new(g)),
            Err(e) => {
                r.error("geoip_database", e);
                None
            }
        },
    };
    if !databases.is_empty() && geoip_field.is_empty() {
        r.error(
            "geoip_field",
            "required with geoip_database: the top-level field holding the address".into(),
        );
    }
    if url.is_empty() && databases.is_empty() {
        return None;
    }
    let field = match (url.find('{'), url.find('}')) {
        _ if url.is_empty() => String::new(),
        (Some(a), Some(b)) if a < b && b > a + 1 => url[a + 1..b].to_string(),
        _ => {
            r.error(
                "enrich_url",
                format!("expected a URL with a {{field}} placeholder, got {url:?}"),
            );
            String::new()
        }
    };
    Some(EnrichConfig {
        url,
        field,
        threads,
        into,
        cache_ttl: Duration::from_secs(ttl),
        cache_max,
        cache_max_bytes,
        key_max_bytes,
        on_error,
        route_field,
        routes,
        geoip,
        geoip_field,
        geoip_into,
    })
}
