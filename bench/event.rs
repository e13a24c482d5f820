//! The benchmark's events: JSON objects of about 220 bytes, each with a
//! unique string `id`, a `type` (a visit, or an activity such as a click,
//! with the `ip` it came from),
//! and `ts`, the time it was sent in microseconds since the epoch, so a
//! sink can measure POST → sink latency.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// Which events a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Visit,
    Activity,
    Mixed,
}

impl Kind {
    /// Whether event `seq` of this kind is a visit.
    pub fn is_visit(self, seq: u64) -> bool {
        match self {
            Kind::Visit => true,
            Kind::Activity => false,
            Kind::Mixed => seq.is_multiple_of(2),
        }
    }
}

const ACTIONS: [&str; 4] = ["click", "scroll", "login", "purchase"];
/// Where activities come from (public addresses in four countries, and one
/// private address no geoIP database knows): the demo enriches them.
const ADDRESSES: [&str; 7] = [
    "81.2.69.160",
    "195.201.10.10",
    "8.8.8.8",
    "89.160.20.128",
    "216.160.83.56",
    "2.125.160.216",
    "10.0.0.7",
];

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Appends one event to `out`; `id` must be unique in the run.
pub fn write_event(out: &mut Vec<u8>, id: &str, visit: bool, seq: u64, ts_us: u64) {
    let user = seq.wrapping_mul(2_654_435_761) % 100_000;
    if visit {
        let _ = write!(
            out,
            r#"{{"id":"{id}","type":"visit","page":"/products/{}","user":"user-{user:05}","referrer":"https://www.example.com/search?q=shoes","ua":"Mozilla/5.0 (X11; Linux x86_64)","ts":{ts_us}}}"#,
            seq % 10_000
        );
    } else {
        let _ = write!(
            out,
            r#"{{"id":"{id}","type":"{}","user":"user-{user:05}","target":"button#buy-{}","session":"s-{:016x}","value":{}.{:02},"ip":"{}","ua":"Mozilla/5.0 (X11; Linux x86_64)","ts":{ts_us}}}"#,
            ACTIONS[(seq / 2 % 4) as usize],
            seq % 100,
            seq.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            seq % 500,
            seq % 100,
            ADDRESSES[(seq / 8 % 7) as usize]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_of_about_220_bytes() {
        for visit in [true, false] {
            let mut out = Vec::new();
            write_event(&mut out, "r1-c3-42", visit, 42, now_us());
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["id"], "r1-c3-42");
            assert!((180..=260).contains(&out.len()), "{} bytes", out.len());
        }
    }
}
