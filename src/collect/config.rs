//! `[collect]` and `[collect.consumer]`: validated into [`CollectConfig`]
//! with every problem collected.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::ini::comma_list;
use crate::config::{ConfigErrors, Document, consumer_section, valid_topic};
use crate::kafka::Pace;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One line per message: the value as it is.
    Raw,
    /// One JSON object per message: topic, partition, offset, key,
    /// timestamp and the value (as JSON when it is JSON, else a string).
    Envelope,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub group_id: String,
    pub topics: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct CollectConfig {
    pub groups: Vec<Group>,
    /// Consumer threads per group.
    pub concurrent_count: usize,
    pub record_directory: PathBuf,
    pub format: Format,
    /// `value_format`: values read as JSON, or Protobuf decoded to JSON.
    pub value_format: crate::codec::ValueFormat,
    /// `key_format`: keys as they are, or decoded to JSON (envelope).
    pub key_format: crate::codec::ValueFormat,
    pub gzip: bool,
    pub rotate_bytes: u64,
    pub rotate_age: Duration,
    /// A file without new messages for this long is closed and committed.
    pub idle_close: Duration,
    pub retry_suffix: String,
    /// How long a message waits in the retry topic before it is written again.
    pub retry_delay: Duration,
    pub shutdown_timeout: Duration,
    pub consumer: Vec<(String, String)>,
}

/// Parses `group:topic[,topic];group:topic`.
pub fn parse_groups(s: &str) -> Result<Vec<Group>, String> {
    let mut out = Vec::new();
    for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (g, topics) = entry
            .split_once(':')
            .ok_or_else(|| format!("{entry:?} is not group:topic[,topic]"))?;
        let topics = comma_list(topics);
        if g.trim().is_empty() || topics.is_empty() {
            return Err(format!("{entry:?} is not group:topic[,topic]"));
        }
        if let Some(bad) = topics.iter().find(|t| !valid_topic(t)) {
            return Err(format!("{bad:?} in {entry:?} is not a Kafka topic name"));
        }
        out.push(Group {
            group_id: g.trim().to_string(),
            topics,
        });
    }
    if out.is_empty() {
        return Err("expected group:topic[,topic];… with at least one entry".into());
    }
    // A topic's files (and their clean-up after a crash) belong to one group.
    let mut owner: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for g in &out {
        for t in &g.topics {
            if let Some(other) = owner.insert(t, &g.group_id) {
                return Err(format!(
                    "topic {t:?} is in two groups ({other} and {}): each topic's files belong to one group",
                    g.group_id
                ));
            }
        }
    }
    Ok(out)
}

impl CollectConfig {
    pub fn from_document(
        doc: &Document,
        errors: &mut ConfigErrors,
        registry: Option<&std::sync::Arc<crate::codec::registry::Registry>>,
    ) -> Option<CollectConfig> {
        let mut r = doc.reader("collect", errors);
        if !r.exists() {
            return None;
        }
        let groups_raw = r.required("groups");
        let groups = match parse_groups(&groups_raw) {
            Ok(g) => g,
            Err(e) if !groups_raw.is_empty() => {
                r.error("groups", e);
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        let concurrent_count = r.int("concurrent_count", 4usize, 1..=256);
        let record_directory = PathBuf::from(r.required("record_directory"));
        let format = r.choice(
            "format",
            Format::Raw,
            &[("raw", Format::Raw), ("envelope", Format::Envelope)],
        );
        let value_format = crate::codec::ValueFormat::read(&mut r, registry);
        let key_format = crate::codec::ValueFormat::read_key(&mut r, registry);
        let gzip = r.choice("compression", false, &[("none", false), ("gzip", true)]);
        let rotate_bytes = r.int("rotate_bytes", 16u64 << 20, 1..=1 << 40);
        let rotate_age_s = r.int("rotate_age_s", 300u64, 1..=86_400);
        let idle_close_s = r.int("idle_close_s", 30u64, 1..=86_400);
        let retry_suffix = r.string("retry_suffix", ".retry");
        let retry_delay_ms = r.int("retry_delay_ms", 10_000u64, 0..=86_400_000);
        let shutdown_timeout_ms = r.int("shutdown_timeout_ms", 10_000u64, 100..=3_600_000);
        r.finish();
        let mut c = doc.reader("collect.consumer", errors);
        let consumer = consumer_section(&mut c, "collect", Pace::Files, shutdown_timeout_ms);
        c.finish();
        Some(CollectConfig {
            groups,
            concurrent_count,
            record_directory,
            format,
            value_format,
            key_format,
            gzip,
            rotate_bytes,
            rotate_age: Duration::from_secs(rotate_age_s),
            idle_close: Duration::from_secs(idle_close_s),
            retry_suffix,
            retry_delay: Duration::from_millis(retry_delay_ms),
            shutdown_timeout: Duration::from_millis(shutdown_timeout_ms),
            consumer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_parse_and_errors_name_the_entry() {
        assert!(
            parse_groups("g1:a,b; g2:b")
                .unwrap_err()
                .contains("topic \"b\" is in two groups (g1 and g2)")
        );
        let g = parse_groups("g1:a,b; g2:c").unwrap();
        assert_eq!(
            g[0],
            Group {
                group_id: "g1".into(),
                topics: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(g[1].topics, vec!["c"]);
        assert!(
            parse_groups("nogroup")
                .unwrap_err()
                .contains("\"nogroup\" is not group:topic")
        );
        assert!(
            parse_groups("g:bad topic")
                .unwrap_err()
                .contains("not a Kafka topic name")
        );
        assert!(parse_groups(" ; ").is_err());
    }

    #[test]
    fn section_defaults_and_errors() {
        let mut errors = ConfigErrors::default();
        let doc = Document::parse(
            "c.ini",
            "[collect]\ngroups = g:t\nrecord_directory = /tmp/x\n",
            &mut errors,
        );
        let c = CollectConfig::from_document(&doc, &mut errors, None).unwrap();
        assert!(errors.0.is_empty(), "{errors}");
        assert_eq!(
            (c.concurrent_count, c.format, c.gzip),
            (4, Format::Raw, false)
        );
        let doc = Document::parse(
            "c.ini",
            "[collect]\ngroups = oops\ncompression = zip\n",
            &mut errors,
        );
        CollectConfig::from_document(&doc, &mut errors, None);
        let t = errors.to_string();
        assert!(
            t.contains("c.ini:2 [collect] groups: \"oops\" is not group:topic"),
            "{t}"
        );
        assert!(
            t.contains("c.ini:3 [collect] compression: expected one of none | gzip"),
            "{t}"
        );
        assert!(
            t.contains("[collect] record_directory: required key is missing"),
            "{t}"
        );
    }
}
