//! One consumed record into deliver's [`Work`]: read through panic-free
//! accessors, its value and key decoded by `value_format` / `key_format`,
//! its offset registered, counted in the aggregates, and decided upon —
//! skipped, filtered out, parked with a reason, or sent (with its own URL
//! when `target_url` has placeholders).

use std::time::Duration;

use rdkafka::message::{BorrowedMessage, Message};

use super::config::{OnInvalid, OnTombstone};
use super::consumer::DeliverMember;
use super::filter;
use super::redrive::Claim;
use super::{Msg, Shared, ValueKind, Work};
use crate::aggregates;
use crate::kafka::record;

/// Detaches a message (through panic-free accessors), registers its offset
/// and counts it; decides what a value that is no JSON becomes (see
/// `on_tombstone`, `on_invalid_json`): `None` when it is done already.
pub(super) fn take(
    member: &DeliverMember,
    shared: &Shared,
    m: &BorrowedMessage<'_>,
) -> Option<Work> {
    let role = &member.role;
    let c = &shared.config;
    let mut headers = record::headers(m);
    let origin = match &c.redrive {
        None => None,
        Some(r) => match r.claim(m.topic(), m.partition(), m.offset(), m.key(), &mut headers) {
            // Not registered: the run's commits stop before it.
            Claim::Beyond => return None,
            Claim::NotOurs => {
                let lease = member.with_offsets(|o| o.polled(m.topic(), m.partition(), m.offset()));
                member.with_offsets(|o| o.done(m.topic(), m.partition(), m.offset(), &lease));
                return None;
            }
            Claim::Ours(o) => Some(Box::new(o)),
        },
    };
    let (topic, partition, offset) = match &origin {
        Some(o) => (&*o.topic, o.partition, o.offset),
        None => (m.topic(), m.partition(), m.offset()),
    };
    // A value in another format is read as its JSON; one that cannot be
    // is parked with the reason.
    // While the schema registry cannot be reached the thread waits (still
    // heartbeating and taking done reports); stopping then leaves the
    // record unregistered, so commits stop before it.
    let who = c.group_id.as_str();
    let stopped = || shared.stop.is_stopped();
    let mut idle = || {
        member.heartbeat.tick();
        role.drain_done(member, Duration::from_millis(20));
    };
    let (decoded, mut unreadable) = match m.payload() {
        None => (None, None),
        Some(v) => match c
            .value_format
            .to_json_waiting(v, who, &stopped, &mut idle)?
        {
            Ok(json) => (json, None),
            Err(why) => (None, Some(why)),
        },
    };
    // A key in another format (`key_format`) is read as its text for
    // placeholders, filters and `X-Kafka-Key`; ordering, quarantine and
    // dead-letter copies keep its bytes.
    let key_text = match m.key() {
        Some(k) if !c.key_format.is_plain() => {
            match c.key_format.to_json_waiting(k, who, &stopped, &mut idle)? {
                Ok(json) => crate::codec::ValueFormat::key_text(json),
                Err(why) => {
                    unreadable = unreadable.or(Some(format!("key: {why}")));
                    None
                }
            }
        }
        _ => None,
    };
    let key_view = key_text.as_deref().or(m.key());
    let value = decoded.as_deref().or(m.payload());
    let (json, field) = match value {
        Some(v) => aggregates::inspect(v, &c.aggregate_field),
        None => (
            false,
            (!c.aggregate_field.is_empty()).then(|| "(none)".to_string()),
        ),
    };
    if c.aggregate_topics.iter().any(|t| t == topic) {
        shared
            .aggregates
            .record_value(topic, field, m.timestamp().to_millis());
    }
    shared.metrics.consumed.inc();
    let lease = member.with_offsets(|o| o.polled(m.topic(), m.partition(), m.offset()));
    let (kind, skip, mut park) = match (value, json) {
        (_, _) if unreadable.is_some() => (ValueKind::Other, false, unreadable),
        (_, true) => (ValueKind::Json, false, None),
        (None, _) => match c.on_tombstone {
            OnTombstone::Skip => (ValueKind::Tombstone, true, None),
            OnTombstone::Send | OnTombstone::Delete => (ValueKind::Tombstone, false, None),
            OnTombstone::DeadLetter => (
                ValueKind::Tombstone,
                false,
                Some("tombstone (no value)".into()),
            ),
        },
        (Some(_), false) => match c.on_invalid_json {
            OnInvalid::Skip => (ValueKind::Other, true, None),
            OnInvalid::Send => (ValueKind::Other, false, None),
            OnInvalid::DeadLetter => (ValueKind::Other, false, Some("value is not JSON".into())),
        },
    };
    let filtered = !skip
        && c.filter.as_ref().is_some_and(|f| {
            let json = (json && f.needs_json())
                .then(|| {
                    serde_json::from_slice::<serde_json::Value>(value.unwrap_or_default()).ok()
                })
                .flatten();
            let r = filter::Record {
                value,
                key: key_view,
                headers: &headers,
            };
            !f.matches(&r, json.as_ref())
        });
    if skip || filtered {
        member.with_offsets(|o| o.done(m.topic(), m.partition(), m.offset(), &lease));
        match kind {
            _ if filtered => shared.metrics.filtered.inc(),
            ValueKind::Tombstone => shared.metrics.skipped_tombstones.inc(),
            _ => shared.metrics.skipped_invalid.inc(),
        }
        return None;
    }
    // A URL of the message's own; one that cannot be filled parks it.
    let url = match c.url.is_static() {
        true => None,
        false => {
            let fill = super::shape::Fill {
                topic,
                partition,
                offset,
                key: key_view,
                value,
            };
            match c.url.render(&fill) {
                Ok(u) => Some(u),
                Err(why) => {
                    park = park.or(Some(why));
                    None
                }
            }
        }
    };
    let delete = kind == ValueKind::Tombstone && c.on_tombstone == OnTombstone::Delete;
    Some(Work {
        msg: Msg {
            topic: role.topic_name(m.topic()),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            key_text,
            payload: value.unwrap_or_default().to_vec(),
            kind,
            headers,
            timestamp: m.timestamp().to_millis(),
            url,
            lease,
            done: role.done_tx.clone(),
            origin,
            raw: decoded
                .is_some()
                .then(|| m.payload().unwrap_or_default().to_vec()),
        },
        attempts: 0,
        parking: park.map(|why| (why, None)),
        enrich_attempts: 0,
        // A DELETE carries no body: it goes alone.
        solo: delete,
        shrunk: 0,
        copied: false,
    })
}
