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

/// Runs `round` once a second on thread `name` until `token` stops.
pub fn every_second(
    name: &str,
    token: StopToken,
    mut round: impl FnMut() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while !token.wait(Duration::from_secs(1)) {
                round();
            }
        })
}

/// What the last probe saw.
#[derive(Debug, Default)]
pub struct Probe {
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
    pub replication: i32,
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
        let result = client.fetch_metadata(None, timeout).map(|md| {
            md.topics()
                .iter()
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .map(|t| (t.name().to_string(), t.partitions().len() as i32))
                .collect::<HashMap<_, _>>()
        });
        let was = self.reachable();
        match result {
            Ok(seen) => {
                let missing: Vec<String> = plan
                    .topics
                    .iter()
                    .filter(|t| !seen.contains_key(*t))
                    .cloned()
                    .collect();
                let mut seen = seen;
                let mut problem = None;
                if !missing.is_empty() && plan.create {
                    match ensure_topics(
                        admin_config,
                        &missing,
                        plan.partitions,
                        plan.replication,
                        timeout,
                    ) {
                        Ok(created) => {
                            if !created.is_empty() {
                                info!(
                                    "created topics {created:?} with {} partitions",
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
