//! Applying a rebalance without asking librdkafka for its protocol.
//!
//! rdkafka's default `ConsumerContext::rebalance` asks librdkafka for the
//! group's rebalance protocol on every assignment and revocation
//! (`rd_kafka_rebalance_protocol`, a request to the group's queue waited
//! for without a timeout). When the revocation comes while the consumer is
//! being closed, the group no longer serves that queue and the call never
//! returns: seen here as a deliver stop that hung for good in
//! `BaseConsumer::drop` (over TLS, where the close takes longer). The
//! protocol follows from the consumer's settings, so kbridge works it out
//! once and applies the assignment itself.

use rdkafka::TopicPartitionList;
use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;

/// The protocol of a consumer with these librdkafka properties (later
/// entries win): KIP-848 (`group.protocol = consumer`, kbridge's default)
/// and the classic protocol with only `cooperative-sticky` assign
/// incrementally; the classic eager assignors replace the assignment.
pub fn protocol_of(props: &[(String, String)]) -> RebalanceProtocol {
    let get = |k: &str| {
        props
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.trim().to_ascii_lowercase())
    };
    if get("group.protocol").is_none_or(|p| p == "consumer") {
        return RebalanceProtocol::Cooperative;
    }
    let strategy =
        get("partition.assignment.strategy").unwrap_or_else(|| "range,roundrobin".into());
    if strategy
        .split(',')
        .all(|s| s.trim() == "cooperative-sticky")
    {
        RebalanceProtocol::Cooperative
    } else {
        RebalanceProtocol::Eager
    }
}

/// What rdkafka's default `rebalance` does, with `protocol` known: the
/// context's `pre_rebalance`, the (incremental) assign or unassign, then
/// its `post_rebalance`.
pub fn apply<C: ConsumerContext>(
    ctx: &C,
    consumer: &BaseConsumer<C>,
    protocol: &RebalanceProtocol,
    err: RDKafkaRespErr,
    tpl: &mut TopicPartitionList,
) {
    let cooperative = matches!(protocol, RebalanceProtocol::Cooperative);
    let rebalance = match err {
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(tpl),
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(tpl),
        _ => Rebalance::Error(KafkaError::Rebalance(RDKafkaErrorCode::from(err))),
    };
    ctx.pre_rebalance(consumer, &rebalance);
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` and `tpl` are live for the call; these are the calls
    // rdkafka's default implementation makes, on the same thread.
    unsafe {
        match (err, cooperative) {
            (RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, true) => {
                rdsys::rd_kafka_incremental_assign(rk, tpl.ptr());
            }
            (RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, false) => {
                rdsys::rd_kafka_assign(rk, tpl.ptr());
            }
            (_, true) => {
                rdsys::rd_kafka_incremental_unassign(rk, tpl.ptr());
            }
            (_, false) => {
                rdsys::rd_kafka_assign(rk, std::ptr::null());
            }
        }
    }
    ctx.post_rebalance(consumer, &rebalance);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_protocol_follows_from_the_settings() {
        let coop = |props: &[(&str, &str)]| {
            matches!(protocol_of(&p(props)), RebalanceProtocol::Cooperative)
        };
        assert!(coop(&[]));
        assert!(coop(&[("group.protocol", "consumer")]));
        assert!(!coop(&[("group.protocol", "classic")]));
        assert!(!coop(&[
            ("group.protocol", "classic"),
            ("partition.assignment.strategy", "range")
        ]));
        assert!(coop(&[
            ("group.protocol", "classic"),
            ("partition.assignment.strategy", "cooperative-sticky")
        ]));
        assert!(!coop(&[
            ("group.protocol", "consumer"),
            ("group.protocol", "CLASSIC")
        ]));
    }
}
