//! What moves between deliver's threads: a consumed message detached from
//! librdkafka ([`Msg`]), the work item around it ([`Work`]) and the done
//! report that lets its consumer thread commit past it ([`Done`]).

use std::sync::Arc;

use crossbeam_channel::Sender;

use super::redrive;
use crate::kafka::offsets::Lease;

/// A consumed message, detached from librdkafka.
pub struct Msg {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// The key's text when `key_format` decoded it (`X-Kafka-Key`).
    pub key_text: Option<Vec<u8>>,
    /// The value (empty for a tombstone: see `kind`).
    pub payload: Vec<u8>,
    pub kind: ValueKind,
    /// Record headers as bytes (any producer can write any bytes).
    pub headers: Vec<crate::kafka::record::Header>,
    /// The record's timestamp (ms since the epoch), when it has one.
    pub timestamp: Option<i64>,
    /// The URL of this message's calls when `target_url` has placeholders.
    pub url: Option<String>,
    /// The partition tenure this message was taken under: once it ended
    /// (revocation), the message is given up, never sent.
    pub lease: Lease,
    /// The done channel of the consumer thread that owns the offset.
    pub done: Sender<Done>,
    /// Where a message redriven from a dead-letter topic was first read
    /// (`redrive`): its calls, dead-letter copy and idempotency key name
    /// that record, never the dead-letter one.
    pub origin: Option<Box<redrive::Origin>>,
    /// The value as read, when `value_format` decoded it into `payload`:
    /// what a dead-letter copy carries (byte for byte, as for any record).
    pub raw: Option<Vec<u8>>,
}

/// What a record's value is, as far as the call is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// One JSON value (maybe over several lines).
    Json,
    /// No value at all.
    Tombstone,
    /// Anything else: sent only with `on_invalid_json = send`.
    Other,
}

/// An offset is finished (delivered, parked or dropped; `finished`) or
/// abandoned (stop, revocation: it is redelivered, never committed past).
pub struct Done {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub finished: bool,
    pub lease: Lease,
}

impl Msg {
    /// The record this message stands for: its origin when redriven, else
    /// itself.
    pub fn source(&self) -> (&str, i32, i64) {
        match &self.origin {
            Some(o) => (&o.topic, o.partition, o.offset),
            None => (&self.topic, self.partition, self.offset),
        }
    }

    /// Tells the owning consumer thread this offset is finished or given up.
    pub(super) fn report(self, finished: bool) {
        let _ = self.done.send(Done {
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
            finished,
            lease: self.lease,
        });
    }
}

/// A message on its way, with its attempts so far.
pub struct Work {
    pub msg: Msg,
    pub attempts: u32,
    /// Set once the message is to be parked in the dead-letter topic:
    /// (reason, HTTP status).
    pub parking: Option<(String, Option<u16>)>,
    /// Failed enrichment lookups so far.
    pub enrich_attempts: u32,
    /// Sent alone, never in a batch (its batch was too large for the
    /// endpoint: 413).
    pub solo: bool,
    /// How far its dead-letter copy was shrunk to fit the broker (see `dlq`).
    pub shrunk: u8,
    /// Its dead-letter copy is acknowledged; the key quarantine's state
    /// record is what is left to write (see `quarantine`).
    pub copied: bool,
}

/// Why a message could not be handed on (it comes back to its owner).
pub enum Refused {
    /// The next channel is full, or what waits is: every partition waits.
    Full(Work),
    /// Its key's lane is full: only its partition waits.
    Lane(Work),
}

/// Which channel a requeued message goes back into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Enrich,
    Send,
}
