//! Integration tests: real components on port 0 against a real broker
//! (Apache Kafka, started by `scripts/test`: `KBRIDGE_TEST_BROKERS`; tansu for
//! the interoperability check: `TANSU_BIN`).

mod avro;
mod bench;
mod broker_events;
mod budget;
mod cli;
mod cluster;
mod collect;
mod dashboard;
mod deliver;
mod deliver_edges;
mod deliver_tls;
mod faults;
mod filters;
mod hostile;
mod hostile_records;
mod hostile_sink;
mod ingest;
mod ingest_formats;
mod ingest_tls;
mod interop;
mod jsonschema;
mod kafka_security;
mod old_brokers;
mod ops;
mod protobuf;
mod protobuf_registry;
mod quarantine;
mod redrive;
mod registry;
mod restproxy;
mod security;
mod seed003;
mod sick_endpoint;
mod strict_http;
mod subscriptions;
mod util;
