//! Outcome classification and the backoff schedule (pure). One function
//! decides what a call's result means: delivered, retry later, park in the
//! dead-letter topic, or drop; which statuses do what is configuration.

use std::time::{Duration, SystemTime};

/// What happened to one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Timeout, refused or reset connection, DNS failure…
    Transport(String),
}

/// What to do with the message(s) of the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Delivered,
    Retry(Duration),
    DeadLetter { reason: String, status: Option<u16> },
    Drop { status: u16 },
}

/// Status ranges and what they mean (configurable; first match wins:
/// drop, then dead-letter, then retry; 2xx is always delivered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRules {
    pub retry: Vec<(u16, u16)>,
    pub dead_letter: Vec<(u16, u16)>,
    pub drop: Vec<(u16, u16)>,
}

impl Default for StatusRules {
    fn default() -> Self {
        StatusRules {
            retry: vec![(408, 408), (429, 429), (500, 599)],
            dead_letter: vec![(300, 499)],
            drop: vec![],
        }
    }
}

/// Parses `408,429,500-599` into ranges.
pub fn parse_ranges(s: &str) -> Result<Vec<(u16, u16)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (a, b) = p.split_once('-').unwrap_or((p, p));
            let a: u16 = a
                .trim()
                .parse()
                .map_err(|_| format!("{p:?} is not a status or range like 500-599"))?;
            let b: u16 = b
                .trim()
                .parse()
                .map_err(|_| format!("{p:?} is not a status or range like 500-599"))?;
            if !(100..=599).contains(&a) || !(100..=599).contains(&b) || a > b {
                return Err(format!("{p:?}: statuses are 100..=599, low-high"));
            }
            Ok((a, b))
        })
        .collect()
}

fn within(ranges: &[(u16, u16)], s: u16) -> bool {
    ranges.iter().any(|(a, b)| (*a..=*b).contains(&s))
}

/// Is a call answered `status` retried (not delivered, dropped or parked)?
pub fn is_retried(rules: &StatusRules, status: u16) -> bool {
    !(200..300).contains(&status) && !within(&rules.drop, status) && within(&rules.retry, status)
}

/// Exponential backoff with jitter: attempt 1 waits about `initial`, each
/// further attempt doubles, capped at `max`; the wait is drawn from
/// [half, full] of that so that many failing messages do not retry in step.
pub fn backoff(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let full = exp.min(max);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Decides the fate of a call made for the `attempt`-th time (1-based).
pub fn classify(
    result: &CallResult,
    attempt: u32,
    max_retries: u32,
    rules: &StatusRules,
    initial: Duration,
    max: Duration,
    jitter: f64,
) -> Action {
    let retry = |why: String, status: Option<u16>, retry_after: Option<Duration>| {
        if attempt > max_retries {
            Action::DeadLetter {
                reason: format!("{why} after {attempt} attempts"),
                status,
            }
        } else {
            // The server's Retry-After wins over our schedule, capped at max.
            Action::Retry(
                retry_after
                    .map(|r| r.min(max))
                    .unwrap_or_else(|| backoff(attempt, initial, max, jitter)),
            )
        }
    };
    match result {
        CallResult::Status { status, .. } if (200..300).contains(status) => Action::Delivered,
        CallResult::Status { status, .. } if within(&rules.drop, *status) => {
            Action::Drop { status: *status }
        }
        CallResult::Status { status, .. }
            if within(&rules.dead_letter, *status) && !within(&rules.retry, *status) =>
        {
            Action::DeadLetter {
                reason: format!("HTTP {status}"),
                status: Some(*status),
            }
        }
        CallResult::Status {
            status,
            retry_after,
        } if within(&rules.retry, *status) => {
            retry(format!("HTTP {status}"), Some(*status), *retry_after)
        }
        CallResult::Status { status, .. } => Action::DeadLetter {
            reason: format!("HTTP {status} (no rule)"),
            status: Some(*status),
        },
        CallResult::Transport(e) => retry(e.clone(), None, None),
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_millis(100);
    const M: Duration = Duration::from_secs(10);

    fn status(s: u16) -> CallResult {
        CallResult::Status {
            status: s,
            retry_after: None,
        }
    }

    fn class(r: &CallResult, attempt: u32) -> Action {
        classify(r, attempt, 3, &StatusRules::default(), I, M, 1.0)
    }

    #[test]
    fn classification_table() {
        assert_eq!(class(&status(200), 1), Action::Delivered);
        assert_eq!(class(&status(204), 1), Action::Delivered);
        for s in [408, 429, 500, 502, 503, 599] {
            assert!(matches!(class(&status(s), 1), Action::Retry(_)), "{s}");
        }
        for s in [400, 401, 404, 409, 422, 301] {
            assert_eq!(
                class(&status(s), 1),
                Action::DeadLetter {
                    reason: format!("HTTP {s}"),
                    status: Some(s)
                },
                "{s}"
            );
        }
        assert!(matches!(
            class(&CallResult::Transport("timeout".into()), 1),
            Action::Retry(_)
        ));
    }

    #[test]
    fn exhausted_retries_dead_letter_with_the_last_reason() {
        assert!(matches!(class(&status(503), 3), Action::Retry(_)));
        assert_eq!(
            class(&status(503), 4),
            Action::DeadLetter {
                reason: "HTTP 503 after 4 attempts".into(),
                status: Some(503)
            }
        );
        assert_eq!(
            class(&CallResult::Transport("connection refused".into()), 4),
            Action::DeadLetter {
                reason: "connection refused after 4 attempts".into(),
                status: None
            }
        );
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let r = CallResult::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(class(&r, 1), Action::Retry(Duration::from_secs(2)));
        let r = CallResult::Status {
            status: 503,
            retry_after: Some(Duration::from_secs(3600)),
        };
        assert_eq!(class(&r, 1), Action::Retry(M));
    }

    #[test]
    fn configurable_rules_drop_and_dead_letter() {
        let rules = StatusRules {
            retry: parse_ranges("500-599").unwrap(),
            dead_letter: parse_ranges("400-499").unwrap(),
            drop: parse_ranges("404,410").unwrap(),
        };
        assert_eq!(
            classify(&status(404), 1, 3, &rules, I, M, 0.5),
            Action::Drop { status: 404 }
        );
        assert!(matches!(
            classify(&status(429), 1, 3, &rules, I, M, 0.5),
            Action::DeadLetter { .. }
        ));
        assert!(parse_ranges("5xx").is_err());
        assert!(parse_ranges("600").is_err());
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        assert_eq!(backoff(1, I, M, 1.0), I);
        assert_eq!(backoff(2, I, M, 1.0), I * 2);
        assert_eq!(backoff(4, I, M, 1.0), I * 8);
        assert_eq!(
            backoff(4, I, M, 0.0),
            I * 4,
            "jitter draws from half to full"
        );
        assert_eq!(backoff(30, I, M, 1.0), M);
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
