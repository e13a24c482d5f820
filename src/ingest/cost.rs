//! What a request costs ingest in memory, charged to one byte budget
//! (`[ingest] max_buffered_body_bytes`, the listener's [`tiny_http::Budget`])
//! from its first body byte until Kafka has every record of it:
//! - the body as it arrives (the server charges each piece it reads), then
//!   its decoded form as gzip inflates (the wire form is given back once
//!   decoded);
//! - the split's scratch, bounded from the body before splitting;
//! - per record: the payload, key and headers as librdkafka copies them
//!   (the payload twice: its message and the batch being sent; a request's
//!   `X-Kafka-Key` and `X-Kafka-Header-*` once per record), and a fixed
//!   [`PER_RECORD`] for the bookkeeping around it.
//!
//! The charge travels with the request's [`Pending`](super::produce::Pending)
//! and is given back when the last delivery report is in, with `ack = queued`
//! as well (long after the 202). A request that could never fit is 413; one
//! that does not fit now is 503 with `Retry-After`.

use tiny_http::Reservation;

use super::body::Span;

/// Bookkeeping per record, beyond its bytes: librdkafka's message
/// (`rd_kafka_msg_t` and its allocation, ~200 B), the delivery opaque, the
/// outcome slot and the span.
pub const PER_RECORD: usize = 320;
/// Per record header in librdkafka, beyond its name and value.
pub const PER_HEADER: usize = 48;
/// Scratch per record while a body is split (positions, lines, spans).
pub const SPLIT_SCRATCH: usize = 96;

/// Records a body can hold at most: each is an object, so each has a `{`.
pub fn records_bound(body: &[u8], max_records: usize) -> usize {
    memchr::memchr_iter(b'{', body).count().min(max_records)
}

/// What librdkafka holds for these records, and kbridge beside them.
pub fn of_records(spans: &[Span], key: Option<&str>, headers: &[(String, Vec<u8>)]) -> usize {
    let per_header: usize = headers
        .iter()
        .map(|(k, v)| k.len() + v.len() + PER_HEADER)
        .sum();
    let fixed = key.map_or(0, str::len) + per_header + PER_RECORD;
    spans
        .iter()
        .map(|s| {
            // A key of the record's own is held twice: ours and librdkafka's.
            let own = s.key.as_ref().map_or(0, |k| 2 * k.len());
            // The payload twice: librdkafka's message, and the batch it is
            // copied into while sent (payloads up to its
            // `message.copy.max.bytes`, 64 KiB, are copied).
            2 * s.range.len() + own + fixed
        })
        .fold(0usize, usize::saturating_add)
}

/// Why a charge was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// More than the whole budget: this request can never be taken.
    Never { needed: usize, max: usize },
    /// The budget is taken by others for now.
    Busy,
}

/// Adds `n` bytes to `charge`, within `max` (the budget's size).
pub fn grow(charge: &mut Reservation, n: usize, max: usize) -> Result<(), Refused> {
    let needed = charge.bytes().saturating_add(n);
    if needed > max {
        return Err(Refused::Never { needed, max });
    }
    if charge.grow(n) {
        Ok(())
    } else {
        Err(Refused::Busy)
    }
}

impl Refused {
    /// Status and message of the answer.
    pub fn reply(&self) -> (u16, String) {
        match self {
            Refused::Never { needed, max } => (
                413,
                format!(
                    "this request would hold {needed} bytes while Kafka takes its records (body, records, and key and headers once per record), above [ingest] max_buffered_body_bytes ({max}); send fewer records per request or fewer and smaller X-Kafka-Key / X-Kafka-Header-* values"
                ),
            ),
            Refused::Busy => (503, super::body::BodyError::Busy.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(len: usize, key: Option<&str>) -> Span {
        Span {
            range: 0..len,
            key: key.map(|k| k.as_bytes().to_vec()),
            partition: None,
        }
    }

    #[test]
    fn key_and_headers_count_once_per_record() {
        let spans = vec![span(2, None); 10];
        let headers = vec![("h".to_string(), vec![0u8; 99])];
        let one = 2 * 2 + 8 + (1 + 99 + PER_HEADER) + PER_RECORD;
        assert_eq!(of_records(&spans, Some("kkkkkkkk"), &headers), 10 * one);
        assert_eq!(
            of_records(&[span(5, Some("abc"))], None, &[]),
            2 * 5 + 6 + PER_RECORD
        );
    }

    #[test]
    fn the_bound_counts_objects_up_to_max_records() {
        assert_eq!(records_bound(b"{},{},{\"a\":{}}", 100), 4);
        assert_eq!(records_bound(b"{}{}{}", 2), 2);
        assert_eq!(records_bound(b"[]", 2), 0);
    }

    #[test]
    fn a_charge_beyond_the_budget_is_never_and_beyond_what_is_free_busy() {
        let budget = tiny_http::Budget::new(100);
        let mut a = budget.reserve(0).unwrap();
        assert_eq!(grow(&mut a, 60, 100), Ok(()));
        let mut b = budget.reserve(0).unwrap();
        assert_eq!(grow(&mut b, 50, 100), Err(Refused::Busy));
        assert_eq!(
            grow(&mut b, 101, 100),
            Err(Refused::Never {
                needed: 101,
                max: 100
            })
        );
        drop(a);
        assert_eq!(grow(&mut b, 50, 100), Ok(()));
        assert_eq!(Refused::Busy.reply().0, 503);
        assert_eq!(Refused::Never { needed: 2, max: 1 }.reply().0, 413);
    }
}
