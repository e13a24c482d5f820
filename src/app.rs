//! The process: loads the whole configuration (reporting unknown sections),
//! builds and starts the selected roles, the stats thread and the admin
//! server, then waits for a signal or a fatal error and stops everything in
//! reverse order of start. A second signal exits at once.

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use crossbeam_channel::select;
use log::{error, info, warn};

use crate::aggregates::Aggregates;
use crate::collect::{self, CollectConfig};
use crate::config::{CommonConfig, ConfigError, ConfigErrors, read_document};
use crate::deliver::{self, DeliverConfig};
use crate::ingest::{self, IngestConfig};
use crate::shutdown::{self, Stopper};
use crate::stats::{self, Telemetry};
use crate::systemd;

/// Sections this build knows; anything else is an error.
const KNOWN_SECTIONS: &[&str] = &[
    "kafka",
    "admin",
    "log",
    "ingest",
    "ingest.routes",
    "ingest.formats",
    "ingest.subjects",
    "ingest.producer",
    "deliver",
    "deliver.consumer",
    "collect",
    "collect.consumer",
    "schema_registry",
];

/// The roles of the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Ingest,
    Deliver,
    Collect,
}

/// The whole validated file.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub common: CommonConfig,
    pub ingest: Option<IngestConfig>,
    pub deliver: Option<DeliverConfig>,
    /// `[subscription.<name>]` sections: more deliver subscriptions.
    pub subscriptions: Vec<deliver::subscriptions::Subscription>,
    pub collect: Option<CollectConfig>,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0:#}")]
    Read(anyhow::Error),
    #[error("{0}")]
    Invalid(ConfigErrors),
}

/// Reads and validates `path`, collecting every error of the file.
pub fn load(path: &Path) -> Result<AppConfig, LoadError> {
    let mut errors = ConfigErrors::default();
    let doc = read_document(path, &mut errors).map_err(LoadError::Read)?;
    for (name, section) in &doc.sections {
        if !KNOWN_SECTIONS.contains(&name.as_str())
            && !deliver::subscriptions::is_subscription_section(name)
        {
            errors.0.push(ConfigError {
                origin: doc.origin.clone(),
                line: Some(section.line),
                section: name.clone(),
                key: None,
                message: format!(
                    "unknown section; known sections: {}, subscription.<name>, subscription.<name>.consumer",
                    KNOWN_SECTIONS.join(", ")
                ),
            });
        }
    }
    let common = CommonConfig::from_document(path, &doc, &mut errors);
    let registry = crate::codec::registry::Registry::read(&doc, &mut errors);
    let registry = registry.as_ref();
    let ingest = IngestConfig::from_document(&doc, &mut errors, registry);
    let deliver = DeliverConfig::from_document(&doc, &mut errors, registry);
    let subscriptions = deliver::subscriptions::from_document(&doc, &mut errors, registry);
    let collect = CollectConfig::from_document(&doc, &mut errors, registry);
    for (sub, parent) in [
        ("ingest.routes", ingest.is_some()),
        ("ingest.formats", ingest.is_some()),
        ("ingest.subjects", ingest.is_some()),
        ("ingest.producer", ingest.is_some()),
        ("deliver.consumer", deliver.is_some()),
        ("collect.consumer", collect.is_some()),
    ] {
        if !parent && doc.sections.contains_key(sub) {
            let line = doc.sections.get(sub).map(|s| s.line);
            errors.0.push(ConfigError {
                origin: doc.origin.clone(),
                line,
                section: sub.into(),
                key: None,
                message: format!(
                    "needs a [{}] section",
                    sub.split('.').next().unwrap_or_default()
                ),
            });
        }
    }
    errors.0.sort_by_key(|e| e.line.unwrap_or(0));
    if errors.0.is_empty() {
        Ok(AppConfig {
            common,
            ingest,
            deliver,
            subscriptions,
            collect,
        })
    } else {
        Err(LoadError::Invalid(errors))
    }
}

impl AppConfig {
    /// `[deliver]` (when present), then every `[subscription.<name>]`.
    pub fn deliver_configs(&self) -> impl Iterator<Item = &DeliverConfig> {
        self.deliver
            .iter()
            .chain(self.subscriptions.iter().map(|s| &s.config))
    }
}

/// Which roles run: those asked for, or every role with a section.
pub fn select_roles(config: &AppConfig, asked: &[Role]) -> anyhow::Result<Vec<Role>> {
    let configured = |r: Role| match r {
        Role::Ingest => config.ingest.is_some(),
        Role::Deliver => config.deliver.is_some() || !config.subscriptions.is_empty(),
        Role::Collect => config.collect.is_some(),
    };
    if asked.is_empty() {
        let all: Vec<Role> = [Role::Ingest, Role::Deliver, Role::Collect]
            .into_iter()
            .filter(|r| configured(*r))
            .collect();
        anyhow::ensure!(
            !all.is_empty(),
            "{}: no role configured (add an [ingest], [deliver] or [collect] section)",
            config.common.path.display()
        );
        return Ok(all);
    }
    for r in asked {
        anyhow::ensure!(
            configured(*r),
            "--role {r:?} needs a [{}] section in {}",
            format!("{r:?}").to_lowercase(),
            config.common.path.display()
        );
    }
    Ok(asked.to_vec())
}

/// Raises the soft limit of open files to the hard one (each client
/// connection is a descriptor; systemd's `LimitNOFILE` sets the hard one)
/// and warns when it is below what the listeners may hold.
fn raise_open_files_limit(config: &AppConfig) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    let wanted = config.common.admin.limits.max_connections as u64
        + config
            .ingest
            .as_ref()
            .map_or(0, |i| i.limits.max_connections as u64)
        + 256;
    if lim.rlim_cur < wanted {
        warn!(
            "open files limit {} is below what the listeners may use ({wanted}: max_connections + 256); raise LimitNOFILE or lower max_connections",
            lim.rlim_cur
        );
    }
}

/// Logs every 5 s which roles still drain; past `limit`, says so as ERROR
/// and exits with code 1 (systemd's TimeoutStopSec is longer still).
fn watch_the_drain(
    running: Arc<std::sync::Mutex<Vec<&'static str>>>,
    limit: Duration,
) -> std::io::Result<()> {
    let start = std::time::Instant::now();
    std::thread::Builder::new()
        .name("drain-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5).min(limit));
                let left = running.lock().map(|r| r.clone()).unwrap_or_default();
                if left.is_empty() {
                    return;
                }
                if start.elapsed() >= limit {
                    error!(
                        "still draining after {} s: {}; exiting now",
                        start.elapsed().as_secs(),
                        left.join(", ")
                    );
                    std::process::exit(1);
                }
                info!(
                    "draining for {} s: {} still running",
                    start.elapsed().as_secs(),
                    left.join(", ")
                );
            }
        })
        .map(|_| ())
}

/// Runs until stopped; returns the process exit code.
pub fn run(config: AppConfig, roles: &[Role]) -> anyhow::Result<i32> {
    raise_open_files_limit(&config);
    crate::kafka::stranded::set_cluster_config(crate::kafka::client_config(
        &config.common.kafka,
        &[],
    ));
    let (fatal_tx, fatal_rx) = crossbeam_channel::bounded::<String>(16);
    let signals = shutdown::signals()?;
    let process = Stopper::new();

    // Build everything first: the listeners are bound and the record
    // directory checked before any role starts a thread, so a port taken or
    // a directory that cannot be written fails the start cleanly.
    let admin_listener = TcpListener::bind(config.common.admin.listen)
        .with_context(|| format!("[admin] listen: cannot bind {}", config.common.admin.listen))?;
    let ingest_listener = match (&config.ingest, roles.contains(&Role::Ingest)) {
        (Some(ic), true) => Some(
            TcpListener::bind(ic.listen)
                .with_context(|| format!("[ingest] listen: cannot bind {}", ic.listen))?,
        ),
        _ => None,
    };
    if let (Some(cc), true) = (&config.collect, roles.contains(&Role::Collect)) {
        collect::check_directory(&cc.record_directory)?;
    }

    let mut ingest_handle = None;
    let mut telemetry: Vec<Arc<dyn Telemetry>> = Vec::new();
    if let (Some(ic), Some(listener)) = (&config.ingest, ingest_listener) {
        let h = ingest::spawn(ic.clone(), &config.common.kafka, listener, fatal_tx.clone())?;
        telemetry.push(h.telemetry());
        ingest_handle = Some(h);
    }
    let aggregates = Arc::new(Aggregates::default());
    // `[deliver]` and every `[subscription.<name>]`: one deliver each.
    let mut deliver_handles = Vec::new();
    if roles.contains(&Role::Deliver) {
        let mut counted: Vec<String> = Vec::new();
        for dc in config.deliver_configs() {
            let mut dc = dc.clone();
            dc.aggregate_topics.retain(|t| !counted.contains(t));
            counted.extend(dc.aggregate_topics.iter().cloned());
            let h = deliver::spawn(
                dc,
                &config.common.kafka,
                aggregates.clone(),
                fatal_tx.clone(),
            )?;
            telemetry.push(h.telemetry());
            deliver_handles.push(h);
        }
    }
    let mut collect_handle = None;
    if roles.contains(&Role::Collect)
        && let Some(cc) = &config.collect
    {
        let h = collect::spawn(cc.clone(), &config.common.kafka, fatal_tx.clone())?;
        telemetry.push(h.telemetry());
        collect_handle = Some(h);
    }
    let admin = crate::admin::spawn(
        admin_listener,
        &config.common.admin.limits,
        &config.common.admin.allowed_hosts,
        telemetry.clone(),
        crate::dashboard::Sources {
            aggregates: (!deliver_handles.is_empty()).then(|| aggregates.clone()),
            field: config
                .deliver_configs()
                .next()
                .map(|d| d.aggregate_field.clone())
                .unwrap_or_default(),
            roles: {
                let mut r: Vec<&'static str> = telemetry.iter().map(|t| t.name()).collect();
                r.dedup();
                r
            },
        },
        process.token(),
        fatal_tx.clone(),
    )?;
    let stats = stats::spawn(
        telemetry,
        Duration::from_secs(1),
        process.token(),
        fatal_tx.clone(),
    )?;

    systemd::ready();
    info!(
        "Started. kbridge {} config {} roles {:?}",
        env!("CARGO_PKG_VERSION"),
        config.common.path.display(),
        roles
    );

    let mut code = 0;
    select! {
        recv(signals) -> s => info!("signal {} received", s.unwrap_or(0)),
        recv(fatal_rx) -> why => {
            error!("fatal: {}; stopping", why.unwrap_or_default());
            code = 1;
        }
    }
    systemd::stopping();
    info!("Stopping.");
    std::thread::Builder::new()
        .name("second-signal".into())
        .spawn(move || {
            if signals.recv().is_ok() {
                warn!("second signal: exiting now without draining");
                std::process::exit(130);
            }
        })?;
    // Every role starts draining at once, under one deadline; they are
    // joined in reverse order of start, then stats and admin go. A line
    // every 5 s names what still runs.
    let drain = [
        config.ingest.as_ref().map(|c| c.shutdown_timeout),
        config.deliver_configs().map(|c| c.shutdown_timeout).max(),
        config.collect.as_ref().map(|c| c.shutdown_timeout),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or_default();
    let running: Arc<std::sync::Mutex<Vec<&'static str>>> = Arc::default();
    if let Some(h) = &ingest_handle {
        h.begin_stop();
        running.lock().map(|mut r| r.push("ingest")).ok();
    }
    for h in &deliver_handles {
        h.begin_stop();
    }
    if !deliver_handles.is_empty() {
        running.lock().map(|mut r| r.push("deliver")).ok();
    }
    if let Some(h) = &collect_handle {
        h.begin_stop();
        running.lock().map(|mut r| r.push("collect")).ok();
    }
    watch_the_drain(running.clone(), drain + Duration::from_secs(5))?;
    let done = |name: &str| {
        if let Ok(mut r) = running.lock() {
            r.retain(|n| *n != name);
        }
    };
    if let Some(h) = collect_handle {
        code = code.max(i32::from(!h.stop()));
        done("collect");
    }
    if !deliver_handles.is_empty() {
        // Each began draining above: joined one after the other, they all
        // drain at once.
        for h in deliver_handles {
            code = code.max(i32::from(!h.stop()));
        }
        done("deliver");
    }
    if let Some(h) = ingest_handle {
        code = code.max(i32::from(!h.stop()));
        done("ingest");
    }
    process.stop();
    let _ = stats.join();
    let _ = admin.join();
    info!("Stopped.");
    Ok(code)
}
