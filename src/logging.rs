//! Logging: `log` + `simplelog` to stderr (journald) and, when `[log] file`
//! is set, appended to that file. Each line carries the time, level, thread
//! and target (the component's module path, e.g. `kbridge::ingest`).

use std::fs::OpenOptions;
use std::path::Path;

use anyhow::Context as _;
use log::LevelFilter;
use simplelog::{CombinedLogger, ConfigBuilder, SharedLogger, ThreadLogMode, WriteLogger};

pub fn init(level: LevelFilter, file: Option<&Path>) -> anyhow::Result<()> {
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(LevelFilter::Error)
        .set_thread_mode(ThreadLogMode::Names)
        .set_target_level(LevelFilter::Error)
        .set_location_level(LevelFilter::Off)
        .build();
    let mut loggers: Vec<Box<dyn SharedLogger>> =
        vec![WriteLogger::new(level, config.clone(), std::io::stderr())];
    if let Some(path) = file {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create log directory {}", dir.display()))?;
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open log file {}", path.display()))?;
        loggers.push(WriteLogger::new(level, config, f));
    }
    CombinedLogger::init(loggers).context("logger already initialised")?;
    Ok(())
}
