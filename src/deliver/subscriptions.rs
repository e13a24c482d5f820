//! `[subscription.<name>]` sections: more deliver subscriptions in one
//! process. Each takes every `[deliver]` key (and `[subscription.<name>.consumer]`
//! every `[deliver.consumer]` property); a key it does not set comes from
//! `[deliver]` when there is one, except `group_id`, which defaults to
//! `kbridge-<name>`: each subscription is a consumer group of its own, with
//! its own offsets, senders, gate, retries and dead-letter topic, so one
//! slow or dead endpoint never holds back another. Errors name the
//! subscription's section (`[subscription.crm] target_url: …`).

use std::collections::BTreeMap;

use crate::config::{ConfigError, ConfigErrors, Document, Entry, Section};

use super::config::DeliverConfig;

/// One `[subscription.<name>]`.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub name: String,
    pub config: DeliverConfig,
}

/// A subscription name: letters, digits, `_` and `-`, at most 64.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `section` is a subscription's (or its consumer's).
pub fn is_subscription_section(section: &str) -> bool {
    section.starts_with("subscription.")
}

/// Every `[subscription.<name>]` of `doc`, in name order.
pub fn from_document(
    doc: &Document,
    errors: &mut ConfigErrors,
    registry: Option<&std::sync::Arc<crate::codec::registry::Registry>>,
) -> Vec<Subscription> {
    let mut out = Vec::new();
    for (section, s) in &doc.sections {
        let Some(rest) = section.strip_prefix("subscription.") else {
            continue;
        };
        let (name, consumer) = match rest.strip_suffix(".consumer") {
            Some(n) => (n, true),
            None => (rest, false),
        };
        let problem = if !valid_name(name) {
            Some(format!(
                "a subscription name is 1 to 64 letters, digits, _ or -, got {name:?}"
            ))
        } else if consumer && !doc.sections.contains_key(&format!("subscription.{name}")) {
            Some(format!("needs a [subscription.{name}] section"))
        } else {
            None
        };
        if let Some(message) = problem {
            errors.0.push(ConfigError {
                origin: doc.origin.clone(),
                line: Some(s.line),
                section: section.clone(),
                key: None,
                message,
            });
            continue;
        }
        if consumer {
            continue;
        }
        if let Some(mut config) = one(doc, name, s, errors, registry) {
            config.subscription = Some(name.to_string());
            out.push(Subscription {
                name: name.to_string(),
                config,
            });
        }
    }
    out
}

/// `[deliver]` under `own` (own keys win), as a document of its own.
fn one(
    doc: &Document,
    name: &str,
    own: &Section,
    errors: &mut ConfigErrors,
    registry: Option<&std::sync::Arc<crate::codec::registry::Registry>>,
) -> Option<DeliverConfig> {
    let merged = |base: Option<&Section>, own: Option<&Section>, skip: &[&str]| {
        let mut entries: Vec<Entry> = base
            .map(|b| {
                b.entries
                    .iter()
                    .filter(|e| !skip.contains(&e.key.as_str()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for e in own.map(|o| o.entries.as_slice()).unwrap_or_default() {
            entries.retain(|x| x.key != e.key);
            entries.push(e.clone());
        }
        entries
    };
    let mut main = merged(doc.sections.get("deliver"), Some(own), &["group_id"]);
    if !main.iter().any(|e| e.key == "group_id") {
        main.push(Entry {
            key: "group_id".into(),
            value: format!("kbridge-{name}"),
            line: own.line,
        });
    }
    let consumer_own = doc.sections.get(&format!("subscription.{name}.consumer"));
    let consumer = merged(doc.sections.get("deliver.consumer"), consumer_own, &[]);
    let mut sections = BTreeMap::new();
    sections.insert(
        "deliver".to_string(),
        Section {
            name: "deliver".into(),
            line: own.line,
            entries: main,
        },
    );
    sections.insert(
        "deliver.consumer".to_string(),
        Section {
            name: "deliver.consumer".into(),
            line: consumer_own.map_or(own.line, |c| c.line),
            entries: consumer,
        },
    );
    let derived = Document {
        origin: doc.origin.clone(),
        sections,
    };
    let mut own_errors = ConfigErrors::default();
    let config = DeliverConfig::from_document(&derived, &mut own_errors, registry);
    for mut e in own_errors.0 {
        e.section = e
            .section
            .replacen("deliver", &format!("subscription.{name}"), 1);
        errors.0.push(e);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> (Vec<Subscription>, String) {
        let mut errors = ConfigErrors::default();
        let doc = Document::parse("s.ini", text, &mut errors);
        let subs = from_document(&doc, &mut errors, None);
        (subs, errors.to_string())
    }

    #[test]
    fn subscriptions_take_the_deliver_keys_they_do_not_set_but_not_its_group() {
        let (subs, e) = load(
            "[deliver]\ngroup_id = main\ntopics = a\ntarget_url = http://h/main\nmax_retries = 3\n\
             [deliver.consumer]\nfetch.wait.max.ms = 200\n\
             [subscription.crm]\ntarget_url = http://crm/in\nfilter = {\"field\":\"/t\",\"exists\":true}\n\
             [subscription.crm.consumer]\nfetch.min.bytes = 10\n\
             [subscription.audit]\ngroup_id = audit-g\ntopics = b\ntarget_url = http://audit/x\nmax_retries = 9\n",
        );
        assert!(e.is_empty(), "{e}");
        let names: Vec<&str> = subs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["audit", "crm"]);
        let (audit, crm) = (&subs[0].config, &subs[1].config);
        assert_eq!(
            (crm.group_id.as_str(), crm.topics.as_slice()),
            ("kbridge-crm", &["a".to_string()][..])
        );
        assert_eq!(
            (crm.target_url.as_str(), crm.max_retries),
            ("http://crm/in", 3)
        );
        assert!(crm.filter.is_some());
        let prop = |c: &DeliverConfig, k: &str| {
            c.consumer
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(prop(crm, "fetch.wait.max.ms").as_deref(), Some("200"));
        assert_eq!(prop(crm, "fetch.min.bytes").as_deref(), Some("10"));
        assert_eq!((audit.group_id.as_str(), audit.max_retries), ("audit-g", 9));
        assert!(audit.filter.is_none());
    }

    #[test]
    fn mistakes_name_the_subscription_section() {
        let (_, e) = load(
            "[subscription.a]\ntopics = t\n\
             [subscription.b]\ntopics = t\ntarget_url = ftp://x\n\
             [subscription.bad name]\ntopics = t\n\
             [subscription.c.consumer]\nfetch.min.bytes = 1\n",
        );
        assert!(e.contains("[subscription.a] target_url"), "{e}");
        assert!(
            e.contains("[subscription.b] target_url: expected an http"),
            "{e}"
        );
        assert!(
            e.contains("[subscription.bad name]: a subscription name is"),
            "{e}"
        );
        assert!(
            e.contains("[subscription.c.consumer]: needs a [subscription.c] section"),
            "{e}"
        );
    }
}
