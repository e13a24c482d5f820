//! Fuzzes ingest's body handling: gzip decoding, JSON / array / NDJSON
//! splitting and the record limits, checking the invariants of
//! `kbridge::ingest::body::exercise`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kbridge::ingest::body::exercise(data);
});
