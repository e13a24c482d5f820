//! A raw producer for hostile records: any key, any value (or none), any
//! header names and values as bytes — what any Kafka client can write.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// One record as bytes.
#[derive(Debug, Clone, Default)]
pub struct Raw {
    pub key: Option<Vec<u8>>,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<kbridge::kafka::record::Header>,
}

impl Raw {
    pub fn value(v: impl Into<Vec<u8>>) -> Raw {
        Raw {
            value: Some(v.into()),
            ..Raw::default()
        }
    }
    pub fn tombstone() -> Raw {
        Raw::default()
    }
    pub fn key(mut self, k: impl Into<Vec<u8>>) -> Raw {
        self.key = Some(k.into());
        self
    }
    pub fn header(mut self, name: impl Into<Vec<u8>>, value: Option<&[u8]>) -> Raw {
        self.headers.push((name.into(), value.map(<[u8]>::to_vec)));
        self
    }
}

/// Produces `recs` in order (one partition keeps them in order) and waits
/// for every acknowledgement; `props` are extra producer settings.
pub fn produce_raw(
    brokers: &str,
    topic: &str,
    partition: Option<i32>,
    recs: &[Raw],
    props: &[(&str, &str)],
) {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "5");
    for (k, v) in props {
        c.set(*k, *v);
    }
    let p: ThreadedProducer<DefaultProducerContext> = c.create().unwrap();
    for r in recs {
        let mut rec: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).headers(kbridge::kafka::record::owned(&r.headers, 0));
        if let Some(v) = &r.value {
            rec = rec.payload(v);
        }
        if let Some(k) = &r.key {
            rec = rec.key(k);
        }
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        p.send(rec).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(60)).unwrap();
}
