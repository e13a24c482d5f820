//! Worker pools: N long-running loops hosted on a `threadpool::ThreadPool`,
//! with the seed's gauges (`active-count`, `pool-size`, `task-count`,
//! `completed-task-count`) and a deadline-bounded join.
//!
//! A loop marks each unit of work with [`PoolGauges::task`]; the pool itself
//! knows how many loops are still alive (for `/ready`) and when all ended.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::metrics::{Counter, Gauge, Prom};

/// The seed's four gauges for one pool.
#[derive(Debug, Default)]
pub struct PoolGauges {
    pub name: String,
    pub size: usize,
    /// Loops currently inside a task.
    pub active: Gauge,
    /// Tasks started since start-up.
    pub tasks: Counter,
    /// Tasks finished since start-up.
    pub completed: Counter,
}

/// Held while a task runs; dropping it marks the task completed.
pub struct TaskGuard<'a>(&'a PoolGauges);

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        self.0.active.add(-1);
        self.0.completed.inc();
    }
}

impl PoolGauges {
    pub fn task(&self) -> TaskGuard<'_> {
        self.tasks.inc();
        self.active.add(1);
        TaskGuard(self)
    }
}

/// Sends on drop, so a loop that returns or panics is seen as ended.
struct ExitSignal(Sender<()>);

impl Drop for ExitSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

pub struct WorkerPool {
    pool: threadpool::ThreadPool,
    pub gauges: Arc<PoolGauges>,
    exited: Receiver<()>,
    exited_count: usize,
}

impl WorkerPool {
    /// Starts `size` loops `body(index, gauges)` on threads named `name`.
    /// A loop that dies of a panic is fatal to the process (`fatal`).
    pub fn spawn<F>(name: &str, size: usize, fatal: &Sender<String>, body: F) -> WorkerPool
    where
        F: Fn(usize, &PoolGauges) + Send + Sync + 'static,
    {
        let pool = threadpool::Builder::new()
            .num_threads(size)
            .thread_name(name.to_string())
            .build();
        let gauges = Arc::new(PoolGauges {
            name: name.to_string(),
            size,
            ..Default::default()
        });
        let (tx, exited) = crossbeam_channel::bounded(size);
        let body = Arc::new(body);
        for i in 0..size {
            let body = body.clone();
            let gauges = gauges.clone();
            let signal = ExitSignal(tx.clone());
            let watch = crate::panics::Watch::new(format!("{name}-{i}"), fatal.clone());
            pool.execute(move || {
                // Locals drop in reverse order: the loop's captures (which
                // may own clients) go before the exit is signalled.
                let _signal = signal;
                let _watch = watch;
                let (body, gauges) = (body, gauges);
                body(i, &gauges);
            });
        }
        WorkerPool {
            pool,
            gauges,
            exited,
            exited_count: 0,
        }
    }

    /// A cheap read-only view for telemetry and readiness.
    pub fn view(&self) -> PoolView {
        let (a, p) = (self.pool.clone(), self.pool.clone());
        PoolView {
            alive: Arc::new(move || a.active_count()),
            panicked: Arc::new(move || p.panic_count()),
            fixed: true,
            gauges: self.gauges.clone(),
        }
    }

    /// Waits until every loop ended or `deadline` passed; true when all ended.
    pub fn join_until(&mut self, deadline: Instant) -> bool {
        while self.exited_count < self.gauges.size {
            match self.exited.recv_deadline(deadline) {
                Ok(()) => self.exited_count += 1,
                Err(_) => return false,
            }
        }
        true
    }
}

/// Counts a pool's threads (alive, or died of a panic).
pub type Count = Arc<dyn Fn() -> usize + Send + Sync>;

/// Gauges plus liveness of one pool, shared with the stats thread and `/ready`.
#[derive(Clone)]
pub struct PoolView {
    alive: Count,
    panicked: Count,
    /// A fixed pool must have all its threads; an elastic one (a thread per
    /// connection) has as many as it needs.
    fixed: bool,
    pub gauges: Arc<PoolGauges>,
}

impl PoolView {
    /// A pool whose threads come and go, such as one per connection.
    pub fn elastic(gauges: Arc<PoolGauges>, alive: Count, panicked: Count) -> PoolView {
        PoolView {
            alive,
            panicked,
            fixed: false,
            gauges,
        }
    }

    /// Threads running now (a loop that panicked or returned is not).
    pub fn alive(&self) -> usize {
        (self.alive)()
    }

    pub fn panicked(&self) -> usize {
        (self.panicked)()
    }

    /// `Err` naming the pool when a loop of a fixed pool died.
    pub fn check_running(&self) -> Result<(), String> {
        let (alive, size) = (self.alive(), self.gauges.size);
        if !self.fixed || alive == size {
            Ok(())
        } else {
            Err(format!(
                "pool {}: {alive} of {size} threads running",
                self.gauges.name
            ))
        }
    }

    pub fn stats_line(&self) -> String {
        let g = &self.gauges;
        format!(
            "pool={} active-count={} pool-size={} task-count={} completed-task-count={}",
            g.name,
            g.active.get(),
            self.alive(),
            g.tasks.get(),
            g.completed.get()
        )
    }
}

/// Writes the pool gauges of several pools, one metric name each.
pub fn render_pools(p: &mut Prom<'_>, pools: &[&PoolView]) {
    type Pick = fn(&PoolView) -> u64;
    let metrics: [(&str, &str, &str, Pick); 5] = [
        (
            "kbridge_pool_active_count",
            "gauge",
            "Threads of the pool inside a task (seed: active-count).",
            |w| w.gauges.active.get().max(0) as u64,
        ),
        (
            "kbridge_pool_size",
            "gauge",
            "Threads of the pool alive (seed: pool-size).",
            |w| w.alive() as u64,
        ),
        (
            "kbridge_pool_task_count",
            "counter",
            "Tasks started (seed: task-count).",
            |w| w.gauges.tasks.get(),
        ),
        (
            "kbridge_pool_completed_task_count",
            "counter",
            "Tasks finished (seed: completed-task-count).",
            |w| w.gauges.completed.get(),
        ),
        (
            "kbridge_pool_panics_total",
            "counter",
            "Pool threads that died of a panic.",
            |w| w.panicked() as u64,
        ),
    ];
    for (name, kind, help, pick) in metrics {
        p.describe(name, kind, help);
        for w in pools {
            p.sample(name, &[("pool", &w.gauges.name)], pick(w));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_tasks_and_joins_when_loops_end() {
        let (tx, rx) = crossbeam_channel::bounded::<u32>(16);
        let (fatal, _) = crossbeam_channel::bounded(1);
        let mut pool = WorkerPool::spawn("test-pool", 3, &fatal, move |_, g| {
            while let Ok(_n) = rx.recv() {
                let _t = g.task();
            }
        });
        for n in 0..10 {
            tx.send(n).unwrap();
        }
        drop(tx);
        assert!(pool.join_until(Instant::now() + Duration::from_secs(10)));
        assert_eq!(pool.gauges.tasks.get(), 10);
        assert_eq!(pool.gauges.completed.get(), 10);
        assert_eq!(pool.gauges.active.get(), 0);
        assert!(
            pool.view()
                .stats_line()
                .contains("task-count=10 completed-task-count=10")
        );
    }

    #[test]
    fn join_times_out_while_a_loop_runs() {
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        let (fatal, _) = crossbeam_channel::bounded(1);
        let mut pool = WorkerPool::spawn("test-block", 1, &fatal, move |_, _| {
            let _ = rx.recv();
        });
        assert!(!pool.join_until(Instant::now() + Duration::from_millis(50)));
        drop(tx);
        assert!(pool.join_until(Instant::now() + Duration::from_secs(10)));
    }
}
