//! kbridge's configuration as the tests load it: through the real loader
//! in-process, or through `kbridge check-config`.

use kbridge::app::{self, AppConfig};

use super::{TempDir, kbridge_bin};

/// Parses an INI text with the real loader.
pub fn load_config(text: &str) -> AppConfig {
    let dir = TempDir::new("cfg");
    let path = dir.0.join("config.ini");
    std::fs::write(&path, text).unwrap();
    match app::load(&path) {
        Ok(c) => c,
        Err(e) => panic!("test config invalid: {e}\n{text}"),
    }
}

/// Parses an INI text with the real loader; the errors as text.
pub fn try_load_config(text: &str) -> (Option<AppConfig>, String) {
    let dir = TempDir::new("cfg");
    let path = dir.0.join("config.ini");
    std::fs::write(&path, text).unwrap();
    match app::load(&path) {
        Ok(c) => (Some(c), String::new()),
        Err(e) => (None, e.to_string()),
    }
}

/// `kbridge check-config` on `text`: exit code, and stdout and stderr together.
pub fn check_config(text: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("check");
    let path = dir.0.join("config.ini");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(kbridge_bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}
