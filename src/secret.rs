//! Secrets read from files (tokens, passwords, `Authorization` values): a
//! file that group or others may read is refused, a path may name a systemd
//! credential (`$CREDENTIALS_DIRECTORY/name`), and a [`Secret`] never shows
//! its value in `Debug`, logs or errors.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A value that is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A path that starts with `$CREDENTIALS_DIRECTORY/` (systemd's
/// `LoadCredential=`) is read from that directory.
pub fn resolve(path: &Path) -> Result<PathBuf, String> {
    const VAR: &str = "$CREDENTIALS_DIRECTORY/";
    match path.to_str().and_then(|p| p.strip_prefix(VAR)) {
        None => Ok(path.to_path_buf()),
        Some(name) => std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|d| Path::new(&d).join(name))
            .ok_or_else(|| {
                format!(
                    "{}: CREDENTIALS_DIRECTORY is not set (LoadCredential= in the unit)",
                    path.display()
                )
            }),
    }
}

/// The text of `path`, a regular file only its owner may read. The error
/// names the file, never its content.
pub fn read_private(path: &Path) -> Result<String, String> {
    let path = &resolve(path)?;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: cannot read it: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown}: not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown}: readable or writable by group or others (mode {mode:o}); `chmod 600` it"
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read it: {e}"))
}

/// A one-line secret file (e.g. `Bearer abc…`), trimmed; empty is an error.
pub fn read_line(path: &Path) -> Result<Secret, String> {
    let text = read_private(path)?;
    let value = text.trim();
    if value.is_empty() {
        return Err(format!("{}: empty", path.display()));
    }
    if value.contains(['\n', '\r']) || !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(format!(
            "{}: expected one line of printable ASCII",
            path.display()
        ));
    }
    Ok(Secret(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_hide_in_debug_and_files_others_read_are_refused() {
        let s = Secret::new("Bearer hunter2hunter2".into());
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let dir = std::env::temp_dir().join(format!("kbridge-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s");
        std::fs::write(&p, "Bearer hunter2hunter2\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_line(&p).unwrap_err();
        assert!(e.contains("(mode 640)") && !e.contains("hunter2"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_line(&p).unwrap().expose(), "Bearer hunter2hunter2");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, "a\nb\n").unwrap();
        assert!(read_line(&p).unwrap_err().contains("one line"));
        std::fs::write(&p, "  \n").unwrap();
        assert!(read_line(&p).unwrap_err().contains("empty"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_credential_path_reads_from_systemds_directory() {
        let p = Path::new("$CREDENTIALS_DIRECTORY/ingest-tokens");
        // SAFETY: no other test reads or writes this variable.
        unsafe { std::env::remove_var("CREDENTIALS_DIRECTORY") };
        assert!(
            resolve(p)
                .unwrap_err()
                .contains("CREDENTIALS_DIRECTORY is not set")
        );
        unsafe { std::env::set_var("CREDENTIALS_DIRECTORY", "/run/credentials/k.service") };
        assert_eq!(
            resolve(p).unwrap(),
            Path::new("/run/credentials/k.service/ingest-tokens")
        );
        assert_eq!(resolve(Path::new("/etc/x")).unwrap(), Path::new("/etc/x"));
    }
}
