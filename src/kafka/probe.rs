//! The reachability probe behind `/ready`: one thread per role fetches the
//! cluster metadata every second with a short timeout, records whether Kafka
//! answered and each topic's partition count, and creates topics that are
//! missing (so a broker that lost them, or started empty, heals by itself).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use log::{info, warn};
use rdkafka::ClientConfig;
use rdkafka::client::{Client, ClientContext};

use super::ensure_topics;
use crate::shutdown::StopToken;

/// Runs `round` once a second on thread `name` until `token` stops; a
/// panic in it is fatal to the process.
pub fn every_second(
    name: &str,
    token: StopToken,
    fatal: crossbeam_channel::Sender<String>,
    mut round: impl FnMut() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let watch = crate::panics::Watch::new(name, fatal);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _watch = watch;
            while !token.wait(Duration::from_secs(1)) {
                round();
            }
        })
}

/// What the last probe saw.
#[derive(Debug, Default)]
pub struct Probe {
    /// Turns with every round (the role's housekeeping goes on).
    pub heartbeat: crate::liveness::Heartbeat,
    reachable: AtomicBool,
    partitions: RwLock<HashMap<String, i32>>,
    last_error: Mutex<Option<String>>,
}

/// Topics a role needs and how to create them.
#[derive(Debug, Clone)]
pub struct TopicPlan {
    pub topics: Vec<String>,
    pub create: bool,
    pub partitions: i32,
    pub replication: Replication,
}

/// The replication factor of topics a role creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    Fixed(i32),
    /// As durable as the topics they derive from (a dead-letter or retry
    /// topic of a topic with 3 replicas and `min.insync.replicas` 2 could
    /// never be written with 1): the highest factor among these topics, or
    /// the broker's `default.replication.factor` while none exists.
    LikeSources(Vec<String>),
}

impl Replication {
    /// The factor to create with, given (topic → replicas) as seen.
    fn resolve(&self, replicas: &HashMap<String, i32>) -> i32 {
        match self {
            Replication::Fixed(n) => *n,
            Replication::LikeSources(sources) => sources
                .iter()
                .filter_map(|t| replicas.get(t).copied())
                .max()
                .unwrap_or(-1),
        }
    }
}

impl Probe {
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Partition count of `topic` as last seen; `None` when unknown.
    pub fn partitions(&self, topic: &str) -> Option<i32> {
        self.partitions.read().ok()?.get(topic).copied()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok()?.clone()
    }

    /// One probe round: metadata with `timeout`, then creation of missing
    /// topics. Logs only changes of state, not every failed round.
    pub fn check<C: ClientContext>(
        &self,
        client: &Client<C>,
        admin_config: &ClientConfig,
        plan: &TopicPlan,
        timeout: Duration,
    ) {
        self.heartbeat.tick();
        let result = client.fetch_metadata(None, timeout).map(|md| {
            let topics = md
                .topics()
                .iter()
                .filter(|t| t.error().is_none() && !t.partitions().is_empty());
            let partitions: HashMap<String, i32> = topics
                .clone()
                .map(|t| (t.name().to_string(), t.partitions().len() as i32))
                .collect();
            let replicas: HashMap<String, i32> = topics
                .map(|t| {
                    (
                        t.name().to_string(),
                        t.partitions()[0].replicas().len() as i32,
                    )
                })
                .collect();
            (partitions, replicas)
        });
        let was = self.reachable();
        match result {
            Ok((seen, replicas)) => {
                let missing: Vec<String> = plan
                    .topics
                    .iter()
                    .filter(|t| !seen.contains_key(*t))
                    .cloned()
                    .collect();
                let mut seen = seen;
                let mut problem = None;
                if !missing.is_empty() && plan.create {
                    let replication = plan.replication.resolve(&replicas);
                    match ensure_topics(
                        admin_config,
                        &missing,
                        plan.partitions,
                        replication,
                        &[],
                        timeout,
                    ) {
                        Ok(created) => {
                            if !created.is_empty() {
                                let rf = if replication < 0 {
                                    "the broker's default".to_string()
                                } else {
                                    replication.to_string()
                                };
                                info!(
                                    "created topics {created:?} with {} partitions, replication factor {rf}",
                                    plan.partitions
                                );
                            }
                            // Known now, without waiting for the next round.
                            seen.extend(created.into_iter().map(|t| (t, plan.partitions)));
                        }
                        Err(e) => problem = Some(format!("{e:#}")),
                    }
                } else if !missing.is_empty() {
                    problem = Some(format!("topics missing and creation disabled: {missing:?}"));
                }
                if let Ok(mut p) = self.partitions.write() {
                    *p = seen;
                }
                self.set(true, problem, was);
            }
            Err(e) => self.set(false, Some(format!("metadata request failed: {e}")), was),
        }
    }

    fn set(&self, reachable: bool, problem: Option<String>, was: bool) {
        if reachable != was {
            if reachable {
                info!("Kafka reachable");
            } else {
                warn!("Kafka unreachable: {}", problem.as_deref().unwrap_or("?"));
            }
        }
        if let Some(p) = &problem
            && reachable
        {
            warn!("{p}");
        }
        self.reachable.store(reachable, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = problem;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_topics_take_the_highest_replication_of_their_sources() {
        let seen: HashMap<String, i32> = [("a".to_string(), 1), ("b".to_string(), 3)].into();
        let like = |s: &[&str]| Replication::LikeSources(s.iter().map(|t| t.to_string()).collect());
        assert_eq!(like(&["a", "b"]).resolve(&seen), 3);
        assert_eq!(like(&["a"]).resolve(&seen), 1);
        // No source exists yet: the broker's default.replication.factor.
        assert_eq!(like(&["c"]).resolve(&seen), -1);
        assert_eq!(Replication::Fixed(2).resolve(&seen), 2);
    }
}
