//! systemd notifications: READY, STOPPING, STATUS and WATCHDOG. Each is a
//! no-op when the process was not started by systemd (no NOTIFY_SOCKET).

use std::time::Duration;

use sd_notify::NotifyState;

pub fn ready() {
    let _ = sd_notify::notify(&[NotifyState::Ready]);
}

pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

pub fn status(text: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(text)]);
}

pub fn watchdog() {
    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
}

/// The watchdog period systemd asked for (`WatchdogSec`), when it asked.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}
