//! Which consumer group protocol a member speaks. kbridge prefers KIP-848
//! (`group.protocol = consumer`: incremental assignment, no group-wide
//! stop), which Kafka 4 offers by default; Kafka 3.x brokers (many managed
//! clusters) and tansu offer only the classic protocol, and there librdkafka
//! marks the coordinator dead at every heartbeat without a word: nothing is
//! ever consumed. So when `group.protocol` is not set, the role asks the
//! cluster first: a throwaway client with librdkafka's `feature` debug on
//! connects with the same `[kafka]` settings (TLS, SASL) and its log lists
//! the broker's ApiVersions; without `ConsumerGroupHeartbeat` (v1 or later,
//! what librdkafka needs) the member falls back to `classic`, said once at
//! INFO. A `group.protocol = consumer` set on purpose against such a
//! cluster stops start-up with an error naming the key.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{info, warn};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::producer::{BaseProducer, Producer as _};

use crate::config::KafkaConfig;

/// What the broker's ApiVersions said (from librdkafka's debug log).
#[derive(Debug, Default)]
struct Seen {
    /// An ApiVersions answer was logged.
    listed: bool,
    /// The highest `ConsumerGroupHeartbeat` version offered.
    heartbeat: Option<i16>,
}

struct Listen(Mutex<Seen>);

impl rdkafka::producer::ProducerContext for Listen {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

impl ClientContext for Listen {
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, line: &str) {
        if let Ok(mut s) = self.0.lock() {
            if line.contains("Broker API support") {
                s.listed = true;
            }
            if let Some(max) = heartbeat_versions(line) {
                s.heartbeat = Some(s.heartbeat.map_or(max, |m| m.max(max)));
            }
        }
    }
}

/// The highest version of an `ApiKey ConsumerGroupHeartbeat (68) Versions
/// a..b` line of librdkafka's `feature` debug log (pure).
fn heartbeat_versions(line: &str) -> Option<i16> {
    let rest = line.split("ApiKey ConsumerGroupHeartbeat").nth(1)?;
    let versions = rest.split("Versions").nth(1)?.trim();
    versions.split("..").nth(1)?.trim().parse().ok()
}

/// Does the cluster offer KIP-848 consumer groups? `None` when no broker
/// answered within `timeout`.
pub fn kip848(kafka: &KafkaConfig, timeout: Duration) -> Option<bool> {
    let props: Vec<(String, String)> = vec![
        ("debug".into(), "feature".into()),
        ("client.id".into(), "kbridge-protocol-check".into()),
        ("statistics.interval.ms".into(), "0".into()),
    ];
    let mut config = super::client_config(kafka, &props);
    // Debug lines reach the context only at this level (rdkafka sets it
    // from the `log` crate's, which may be lower).
    config.set_log_level(RDKafkaLogLevel::Debug);
    let client: BaseProducer<Listen> = config.create_with_context(Listen(Mutex::default())).ok()?;
    let deadline = Instant::now() + timeout;
    loop {
        let _ = client
            .client()
            .fetch_metadata(None, Duration::from_millis(500));
        // Log lines arrive as events of the main queue, served by `poll`.
        client.poll(Duration::from_millis(50));
        let seen = client.context().0.lock().ok()?;
        if seen.listed {
            return Some(seen.heartbeat.is_some_and(|v| v >= 1));
        }
        drop(seen);
        if Instant::now() >= deadline {
            return None;
        }
    }
}

/// Completes a role's consumer properties with the group protocol (see the
/// module comment); `section` names where the user sets it, e.g.
/// `[deliver.consumer]`. `shutdown_ms` is the role's drain deadline, which a
/// classic session must outlast.
pub fn settle(
    kafka: &KafkaConfig,
    props: &mut Vec<(String, String)>,
    section: &str,
    shutdown_ms: u64,
) -> anyhow::Result<()> {
    let set = kafka
        .properties
        .iter()
        .chain(props.iter())
        .rev()
        .find(|(k, _)| k == "group.protocol")
        .map(|(_, v)| v.trim().to_ascii_lowercase());
    if set.as_deref() == Some("classic") {
        return Ok(());
    }
    match (kip848(kafka, Duration::from_secs(15)), set) {
        (Some(true), _) => props.push(("group.protocol".into(), "consumer".into())),
        (Some(false), Some(_)) => anyhow::bail!(
            "{section} group.protocol: the cluster offers no KIP-848 consumer groups (its ApiVersions list no \
             ConsumerGroupHeartbeat: Kafka before 4.0, or a broker that speaks the classic protocol only); \
             set group.protocol = classic, or leave it unset to have it chosen"
        ),
        (Some(false), None) => {
            info!(
                "the cluster offers no KIP-848 consumer groups (no ConsumerGroupHeartbeat in its ApiVersions): \
                 {section} uses group.protocol = classic"
            );
            props.push(("group.protocol".into(), "classic".into()));
            if !props.iter().any(|(k, _)| k == "session.timeout.ms") {
                // The classic session must outlast the drain.
                let session = 45_000.max(shutdown_ms + 15_000);
                props.push(("session.timeout.ms".into(), session.to_string()));
            }
        }
        (None, _) => {
            warn!(
                "could not learn whether the cluster offers KIP-848 consumer groups (no broker answered); \
                 {section} uses group.protocol = consumer"
            );
            props.push(("group.protocol".into(), "consumer".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_versions_come_from_the_feature_log() {
        assert_eq!(
            heartbeat_versions(
                "[thrd:127.0.0.1:9092/bootstrap]:   ApiKey ConsumerGroupHeartbeat (68) Versions 0..1"
            ),
            Some(1)
        );
        assert_eq!(
            heartbeat_versions("  ApiKey Heartbeat (12) Versions 0..4"),
            None
        );
        assert_eq!(
            heartbeat_versions("  ApiKey ConsumerGroupHeartbeat (68) Versions junk"),
            None
        );
    }
}
