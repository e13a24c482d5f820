//! Configuration shared by every role: `[kafka]`, `[admin]`, `[log]`, and the
//! INI reader the roles use to validate their own sections.
//!
//! Roles own their sections (`ingest::IngestConfig::from_document`); `app`
//! assembles the whole file and reports unknown sections. Every error of the
//! file is collected before start-up stops.

pub mod ini;
pub mod limits;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rdkafka::ClientConfig;

pub use ini::{ConfigError, ConfigErrors, Document, Entry, Section, SectionReader};

/// `[kafka]`: the bootstrap servers plus any librdkafka property, passed to
/// every client of every role.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    /// librdkafka properties in file order (`brokers` excluded).
    pub properties: Vec<(String, String)>,
}

/// `[admin]`: the HTTP server for `/health`, `/ready`, `/metrics`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// A non-loopback `listen` was asked for explicitly.
    pub allow_remote: bool,
    /// Host names the admin server answers to besides IP addresses and
    /// `localhost` (`[admin] allowed_hosts`).
    pub allowed_hosts: Vec<String>,
    pub limits: limits::HttpLimits,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A level, or levels per component (`info,kbridge::deliver=debug`).
    pub level: String,
    /// Empty in the file means stderr only.
    pub file: Option<PathBuf>,
}

/// The sections every role shares.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub path: PathBuf,
    pub kafka: KafkaConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
}

/// Reads a file into a document; syntax errors land in `errors`.
pub fn read_document(path: &Path, errors: &mut ConfigErrors) -> anyhow::Result<Document> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    Ok(Document::parse(&path.display().to_string(), &text, errors))
}

impl CommonConfig {
    pub fn from_document(path: &Path, doc: &Document, errors: &mut ConfigErrors) -> CommonConfig {
        let mut k = doc.reader("kafka", errors);
        if !k.exists() {
            k.error("brokers", "section [kafka] is required".into());
        }
        let brokers = k.required("brokers");
        let mut properties = Vec::new();
        for e in k.all() {
            if e.key == "brokers" {
                continue;
            }
            if e.key == SASL_PASSWORD_FILE {
                match crate::secret::read_line(Path::new(&e.value)) {
                    Ok(pw) => properties.push(("sasl.password".into(), pw.expose().to_string())),
                    Err(err) => k.error(&e.key, err),
                }
                continue;
            }
            if let Some(problem) = librdkafka_rejects(&e.key, &e.value) {
                k.error(&e.key, problem);
            }
            properties.push((e.key.clone(), e.value.clone()));
        }
        k.finish();

        let mut a = doc.reader("admin", errors);
        let admin = AdminConfig {
            listen: a.socket_addr("listen", "127.0.0.1:8081"),
            allow_remote: a.bool("allow_remote", false),
            allowed_hosts: ini::comma_list(&a.string("allowed_hosts", "")),
            limits: limits::HttpLimits::read(&mut a, limits::HttpLimits::admin()),
        };
        if !admin.allow_remote && !admin.listen.ip().is_loopback() {
            a.error(
                "listen",
                format!(
                    "{} is not a loopback address: the admin server (metrics, dashboard, log level changes) has no authentication; \
                     keep it on 127.0.0.1, or set [admin] allow_remote = true to expose it anyway",
                    admin.listen
                ),
            );
        }
        a.finish();

        let mut l = doc.reader("log", errors);
        let level = l.string("level", "info");
        if let Err(e) = crate::logging::Spec::parse(&level) {
            l.error(
                "level",
                format!("{e}; expected a level or level,component=level,… (e.g. info,kbridge::deliver=debug)"),
            );
        }
        let file = l.string("file", "");
        l.finish();

        CommonConfig {
            path: path.to_path_buf(),
            kafka: KafkaConfig {
                brokers,
                properties,
            },
            admin,
            log: LogConfig {
                level,
                file: (!file.is_empty()).then(|| PathBuf::from(file)),
            },
        }
    }
}

/// Kafka's own rule for topic names.
pub fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Asks librdkafka whether it accepts `key = value`, without creating a
/// client (so no connection is made). `None` when accepted.
pub fn librdkafka_rejects(key: &str, value: &str) -> Option<String> {
    let mut c = ClientConfig::new();
    c.set(key, value);
    let e = c.create_native_config().err()?;
    // librdkafka's message may quote the value: not for a secret.
    Some(if is_secret(key) {
        "librdkafka rejects the value (not shown: a secret)".to_string()
    } else {
        format!("librdkafka rejects {value:?}: {e}")
    })
}

/// Properties whose values are never shown (passwords, keys, secrets).
fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "ssl.key.pem", "sasl.jaas", "token"]
        .iter()
        .any(|s| k.contains(s))
}

/// `[kafka] sasl.password.file`: kbridge's key for a password kept in a
/// file only its owner may read, passed to librdkafka as `sasl.password`.
const SASL_PASSWORD_FILE: &str = "sasl.password.file";

/// Validates a librdkafka property section (such as `[ingest.producer]`)
/// whose entries override `defaults`; returns the merged list.
pub fn librdkafka_section(
    reader: &mut SectionReader<'_>,
    defaults: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut merged: Vec<(String, String)> = defaults
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for e in reader.all() {
        if let Some(problem) = librdkafka_rejects(&e.key, &e.value) {
            reader.error(&e.key, problem);
        }
        match merged.iter_mut().find(|(k, _)| *k == e.key) {
            Some(slot) => slot.1 = e.value.clone(),
            None => merged.push((e.key.clone(), e.value.clone())),
        }
    }
    merged
}

/// Keys of the classic group protocol that the KIP-848 `consumer` protocol
/// takes from the broker (`group.consumer.*`) instead; librdkafka refuses them.
const CLASSIC_ONLY: &[&str] = &[
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "partition.assignment.strategy",
    "group.protocol.type",
];

/// Validates a consumer section (`[deliver.consumer]`, `[collect.consumer]`)
/// over [`crate::kafka::consumer_defaults`] for `pace`. With the classic group protocol
/// the session must outlast the role's drain (`shutdown_timeout_ms` of
/// `[role]`), or the member is evicted mid-drain; with the `consumer`
/// protocol (the default) classic-only keys are refused, naming the cure.
pub fn consumer_section(
    c: &mut SectionReader<'_>,
    role: &str,
    pace: crate::kafka::Pace,
    shutdown_timeout_ms: u64,
) -> Vec<(String, String)> {
    let merged = librdkafka_section(c, &crate::kafka::consumer_defaults(pace));
    // The role commits its offsets itself, only past finished work: with
    // either of these librdkafka would commit past what is not done.
    for key in ["enable.auto.commit", "enable.auto.offset.store"] {
        if let Some((_, v)) = merged.iter().rev().find(|(k, _)| k == key)
            && v.trim() != "false"
        {
            c.error(
                key,
                format!(
                    "must stay false: {role} commits offsets itself, only past messages that are {}; \
                     librdkafka would commit past messages not yet done; got {v:?}",
                    if role == "collect" { "on disk" } else { "delivered or parked" }
                ),
            );
        }
    }
    let get = |key: &str| merged.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v);
    let classic = get("group.protocol").is_some_and(|v| v.eq_ignore_ascii_case("classic"));
    if classic {
        let session_ms = get("session.timeout.ms")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(45_000);
        if shutdown_timeout_ms >= session_ms {
            c.error(
                "session.timeout.ms",
                format!(
                    "must exceed [{role}] shutdown_timeout_ms ({shutdown_timeout_ms}), got {session_ms}"
                ),
            );
        }
    } else {
        for key in CLASSIC_ONLY {
            if merged.iter().any(|(k, _)| k == key) {
                c.error(
                    key,
                    "not used by group.protocol = consumer (the default, KIP-848: the broker's \
                     group.consumer.* settings apply); set group.protocol = classic to use it"
                        .into(),
                );
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(text: &str) -> (CommonConfig, ConfigErrors) {
        let mut errors = ConfigErrors::default();
        let doc = Document::parse("c.ini", text, &mut errors);
        let c = CommonConfig::from_document(Path::new("c.ini"), &doc, &mut errors);
        (c, errors)
    }

    #[test]
    fn kafka_section_passes_librdkafka_properties_through() {
        let (c, errors) = common("[kafka]\nbrokers = h:1\nsocket.timeout.ms = 5000\n");
        assert!(errors.0.is_empty(), "{errors}");
        assert_eq!(c.kafka.brokers, "h:1");
        assert_eq!(
            c.kafka.properties,
            vec![("socket.timeout.ms".to_string(), "5000".to_string())]
        );
    }

    #[test]
    fn unknown_librdkafka_property_and_bad_value_name_the_key() {
        let (_, errors) = common(
            "[kafka]\nbrokers = h:1\nno.such.property = 1\nsocket.timeout.ms = soon\n[log]\nlevel = loud\n",
        );
        let text = errors.to_string();
        assert_eq!(errors.0.len(), 3, "{text}");
        assert!(
            text.contains("c.ini:3 [kafka] no.such.property: librdkafka rejects"),
            "{text}"
        );
        assert!(
            text.contains("c.ini:4 [kafka] socket.timeout.ms: librdkafka rejects"),
            "{text}"
        );
        assert!(
            text.contains("c.ini:6 [log] level: \"loud\" is not a level (off, error, warn, info, debug, trace)"),
            "{text}"
        );
    }

    #[test]
    fn missing_kafka_section_is_an_error() {
        let (_, errors) = common("[log]\nlevel = info\n");
        assert!(
            errors
                .to_string()
                .contains("[kafka] brokers: section [kafka] is required")
        );
    }

    #[test]
    fn admin_stays_on_loopback_unless_remote_is_allowed() {
        for listen in ["0.0.0.0:8081", "10.1.2.3:8081", "[::]:8081"] {
            let (_, errors) = common(&format!(
                "[kafka]\nbrokers=h:1\n[admin]\nlisten = {listen}\n"
            ));
            assert!(
                errors.to_string().contains(&format!(
                    "c.ini:4 [admin] listen: {} is not a loopback address",
                    listen.parse::<SocketAddr>().unwrap()
                )),
                "{errors}"
            );
        }
        for text in [
            "[admin]\nlisten = 127.0.0.1:9\n",
            "[admin]\nlisten = [::1]:9\n",
            "[admin]\nlisten = 0.0.0.0:9\nallow_remote = true\n",
        ] {
            let (c, errors) = common(&format!("[kafka]\nbrokers=h:1\n{text}"));
            assert!(errors.0.is_empty(), "{text}: {errors}");
            assert_eq!(c.admin.allow_remote, text.contains("allow_remote"));
        }
    }

    #[test]
    fn bad_admin_listen_is_an_error() {
        let (_, errors) = common("[kafka]\nbrokers=h:1\n[admin]\nlisten = nowhere\n");
        assert!(errors.to_string().contains(
            "c.ini:4 [admin] listen: expected host:port like 127.0.0.1:8081, got \"nowhere\""
        ));
    }
}
