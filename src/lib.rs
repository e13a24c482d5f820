//! kbridge moves events between HTTP and Apache Kafka on plain OS threads.
//!
//! Architecture (imports point one way: `app → roles → kafka → config/metrics`):
//! - `app`: role dispatch, build-then-spawn, the signal loop, ordered stop;
//! - `ingest`: HTTP POST → bounded job channel → producer workers → Kafka;
//! - `deliver`: consumer threads → bounded channel → senders → REST, with
//!   retries, a dead-letter topic and offsets committed past finished work;
//! - `collect`: consumer threads → files, fsynced before offsets are
//!   committed, a retry topic for write errors;
//! - `aggregates`: counts the deliver role keeps for the dashboard;
//! - `codec`: payload formats below every role (Protobuf by a descriptor
//!   set, the Confluent wire framing), pure;
//! - `kafka`: client configuration, statistics, topic creation, the probe;
//!   the one consumer group member both consumer roles run (`member`: context,
//!   rebalance, commits, with the role's differences as a `Role`), its offset
//!   tracker with leases (`offsets`), panic-free record access (`record`),
//!   and the choice of group protocol (`protocol`);
//! - `admin`, `stats`: `/health`, `/ready`, `/metrics` and the 1 s stats
//!   log, reading roles only through `stats::Telemetry`;
//! - `config`, `metrics`, `pool`, `shutdown`, `systemd`, `http`, `logging`:
//!   shared plumbing.
//!
//! Stop order: sources first (HTTP accept), then workers drain their
//! channels, then Kafka clients flush, then telemetry.

pub mod admin;
pub mod aggregates;
pub mod app;
pub mod codec;
pub mod collect;
pub mod config;
pub mod dashboard;
pub mod deliver;
pub mod http;
pub mod http_client;
pub mod ingest;
pub mod kafka;
pub mod liveness;
pub mod logging;
pub mod metrics;
pub mod panics;
pub mod pool;
pub mod secret;
pub mod shutdown;
pub mod stats;
pub mod systemd;
