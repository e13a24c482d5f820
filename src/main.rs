//! The `kbridge` command: parses arguments, loads the configuration, starts
//! logging, runs the roles and turns errors into exit codes (2: invalid
//! configuration or usage; 1: runtime failure).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kbridge::app::{self, LoadError, Role};

#[derive(Parser)]
#[command(
    name = "kbridge",
    version,
    about = "Moves events between HTTP and Apache Kafka on plain OS threads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run roles (default: every role with a section in the file).
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Role to run; repeat for several.
        #[arg(long, value_enum)]
        role: Vec<Role>,
        /// Overrides [log] level.
        #[arg(long, value_name = "LEVEL")]
        log_level: Option<String>,
    },
    /// Re-queue messages parked in a dead-letter topic into a topic
    /// (--from/--to), or redeliver one subscription's parked messages to its
    /// endpoint (--subscription) (exit 0 done, 1 failed).
    Replay {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The dead-letter topic, e.g. visits.dlq.
        #[arg(
            long,
            value_name = "TOPIC",
            requires = "to",
            required_unless_present = "subscription"
        )]
        from: Option<String>,
        /// The topic to produce to, e.g. visits.
        #[arg(long, value_name = "TOPIC", requires = "from")]
        to: Option<String>,
        /// The subscription ([subscription.NAME]; `deliver` for [deliver])
        /// whose parked messages go to its endpoint again, under its rules.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["from", "to"])]
        subscription: Option<String>,
        /// With --subscription: only this quarantined key's parked messages
        /// (on_park = quarantine_key), in offset order; then release the key.
        #[arg(
            long,
            value_name = "KEY",
            requires = "subscription",
            conflicts_with = "max"
        )]
        key: Option<String>,
        /// Replay at most this many messages.
        #[arg(long, value_name = "N")]
        max: Option<u64>,
    },
    /// Validate a configuration file without starting (exit 0 valid, 2 invalid).
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn load(path: &std::path::Path) -> Result<app::AppConfig, ExitCode> {
    app::load(path).map_err(|e| {
        match &e {
            LoadError::Read(_) => eprintln!("kbridge: {e}"),
            LoadError::Invalid(errors) => {
                eprintln!(
                    "kbridge: {} has {} error(s):",
                    path.display(),
                    errors.0.len()
                );
                eprintln!("{e}");
            }
        }
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    // glibc gives each thread that allocates an arena of its own (up to 8
    // per core); with dozens of threads the arenas' free lists fragment and
    // hold memory. Four arenas measured 10 % less peak RSS for deliver at
    // full speed, with no change in throughput.
    // A fixed mmap threshold (glibc raises it after each large free, up to
    // 32 MiB): request bodies and their records of 256 KiB and more are
    // mapped, grown by remapping instead of copying, and given back to the
    // system when freed, so resident memory follows what requests hold
    // (`ingest::cost`) instead of the largest bodies ever seen.
    // SAFETY: called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 4);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
    let cli = Cli::parse();
    kbridge::panics::install_hook();
    match cli.command {
        Command::CheckConfig { config } => match load(&config) {
            Ok(c) => {
                let roles: Vec<String> = app::select_roles(&c, &[])
                    .map(|r| r.iter().map(|r| format!("{r:?}").to_lowercase()).collect())
                    .unwrap_or_default();
                println!("{}: valid (roles: {})", config.display(), roles.join(", "));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Replay {
            config,
            from,
            to,
            subscription,
            key,
            max,
        } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let _ = kbridge::logging::init(&c.common.log.level, None);
            let kafka = &c.common.kafka;
            let all = c.deliver_configs().collect::<Vec<_>>();
            let done = match (subscription, from, to) {
                (Some(name), _, _) if key.is_some() => {
                    let key = key.unwrap_or_default();
                    kbridge::deliver::release::replay_key(kafka, &all, &name, key.as_bytes()).and_then(|r| {
                        let o = r.outcome;
                        if r.released {
                            Ok(format!(
                                "released key {key:?} of subscription {name}: {} parked messages delivered in offset order ({} skipped by its rules) in {} round(s)",
                                o.delivered, o.skipped, r.rounds
                            ))
                        } else {
                            Err(anyhow::anyhow!(
                                "key {key:?} stays quarantined: {} delivered, {} failed again and were parked again (in order) after {} round(s); run replay --key again",
                                o.delivered, o.parked_again, r.rounds
                            ))
                        }
                    })
                }
                (Some(name), _, _) => {
                    kbridge::deliver::redrive::redrive(kafka, &all, &name, max).map(|o| {
                        format!(
                            "redrove {} parked records to subscription {name}: {} delivered, {} parked again, {} skipped by its rules, {} of other subscriptions passed over, {} of quarantined keys left for replay --key",
                            o.read, o.delivered, o.parked_again, o.skipped, o.passed_over, o.held_back
                        )
                    })
                }
                (None, Some(from), Some(to)) => kbridge::deliver::replay::replay(kafka, &from, &to, max)
                    .map(|n| format!("replayed {n} messages from {from} to {to}")),
                // clap requires --subscription or both --from and --to.
                _ => Err(anyhow::anyhow!("give --subscription NAME or --from TOPIC --to TOPIC")),
            };
            match done {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("kbridge: replay failed: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Run {
            config,
            role,
            log_level,
        } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let roles = match app::select_roles(&c, &role) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("kbridge: {e:#}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = kbridge::logging::init(
                log_level.as_deref().unwrap_or(&c.common.log.level),
                c.common.log.file.as_deref(),
            ) {
                eprintln!("kbridge: {e:#}");
                return ExitCode::from(2);
            }
            match app::run(c, &roles) {
                Ok(code) => ExitCode::from(code as u8),
                Err(e) => {
                    // One line, through the logger (stderr and the file).
                    log::error!("cannot start: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
