//! The retry topics' bookkeeping headers (pure): when a retried message is
//! due and where it came from. They are kbridge's own (ingest refuses
//! clients' `kbridge-*` headers) and trusted only on a retry topic, and
//! even there only as far as they can be checked: a message is filed under
//! the topic its retry topic serves, whatever its header says, and never
//! waits longer than `retry_delay_ms`.

use std::time::Duration;

/// Due time of a retried message, in ms since the epoch.
pub const RETRY_AT: &str = "kbridge-retry-at";
/// `topic/partition@offset` where a retried message was first read.
pub const RETRY_SOURCE: &str = "kbridge-retry-source";

/// The topic whose retry topic `topic` is, if it is one of ours.
pub fn source_topic<'a>(topic: &'a str, suffix: &str, sources: &[String]) -> Option<&'a str> {
    let source = topic.strip_suffix(suffix)?;
    sources.iter().any(|s| s == source).then_some(source)
}

/// Partition and offset of a `RETRY_SOURCE` value naming `expected_topic`.
pub fn parse_source(value: &str, expected_topic: &str) -> Option<(i32, i64)> {
    let (t, rest) = value.rsplit_once('/')?;
    let (p, o) = rest.split_once('@')?;
    let (p, o): (i32, i64) = (p.parse().ok()?, o.parse().ok()?);
    (t == expected_topic && p >= 0 && o >= 0).then_some((p, o))
}

pub fn retry_due(now_ms: i64, delay: Duration) -> i64 {
    now_ms.saturating_add(delay.as_millis() as i64)
}

/// Clock difference tolerated between the collector that wrote a due time
/// and the one reading it.
const SKEW_MS: i64 = 60_000;

/// How long a retry-topic message still waits (`None`: due now, or no
/// header: written at once). A due time further ahead than `max` (the
/// retry delay) plus a minute of clock skew was not written by a
/// collector: it is due at once, so no header can pause a partition.
pub fn retry_wait(retry_at: Option<i64>, now_ms: i64, max: Duration) -> Option<Duration> {
    let at = retry_at?;
    let left = at.saturating_sub(now_ms);
    let max_ms = i64::try_from(max.as_millis()).unwrap_or(i64::MAX);
    (left > 0 && left <= max_ms.saturating_add(SKEW_MS)).then(|| Duration::from_millis(left as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(10);

    #[test]
    fn retries_wait_the_fixed_delay_then_are_due() {
        let t0 = 1_700_000_000_000;
        let due = retry_due(t0, Duration::from_secs(10));
        assert_eq!(due, t0 + 10_000);
        assert_eq!(
            retry_wait(Some(due), t0, MAX),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            retry_wait(Some(due), t0 + 9_750, MAX),
            Some(Duration::from_millis(250))
        );
        assert_eq!(retry_wait(Some(due), due, MAX), None, "due at its time");
        assert_eq!(retry_wait(Some(due), due + 1, MAX), None);
        assert_eq!(
            retry_wait(None, t0, MAX),
            None,
            "a message without the header"
        );
        assert_eq!(retry_due(t0, Duration::ZERO), t0, "retry_delay_ms = 0");
    }

    #[test]
    fn a_due_time_beyond_the_delay_is_due_at_once() {
        let t0 = 1_700_000_000_000;
        assert_eq!(retry_wait(Some(i64::MAX), t0, MAX), None);
        assert_eq!(retry_wait(Some(t0 + 10_000 + 61_000), t0, MAX), None);
        // A collector whose clock runs a little ahead is believed.
        assert_eq!(
            retry_wait(Some(t0 + 10_000 + 30_000), t0, MAX),
            Some(Duration::from_secs(40))
        );
        assert_eq!(retry_wait(Some(i64::MIN), t0, MAX), None);
    }

    #[test]
    fn only_our_retry_topics_and_their_own_sources_count() {
        let sources = vec!["visits".to_string()];
        assert_eq!(
            source_topic("visits.retry", ".retry", &sources),
            Some("visits")
        );
        assert_eq!(source_topic("other.retry", ".retry", &sources), None);
        assert_eq!(source_topic("visits", ".retry", &sources), None);
        assert_eq!(parse_source("visits/3@42", "visits"), Some((3, 42)));
        for forged in [
            "../../pwn/0@1",
            "visits/x@1",
            "visits/-1@1",
            "visits/1",
            "other/0@1",
        ] {
            assert_eq!(parse_source(forged, "visits"), None, "{forged}");
        }
    }
}
