//! Integration tests: real components on port 0 against a real broker
//! (started by `scripts/test`; `KBRIDGE_TEST_BROKERS`, `TANSU_BIN`).

mod cli;
mod collect;
mod deliver;
mod faults;
mod ingest;
mod util;
