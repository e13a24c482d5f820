//! The project's Python helpers (`scripts/*-io.py`: other clients' readers
//! and writers) run from tests: lines in on stdin, a JSON value per line out.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Runs `python3 scripts/<script> <args>` with `lines` on its stdin; a JSON
/// value per line of what it prints. A failing script fails the test.
pub fn json_lines<S: AsRef<std::ffi::OsStr>>(
    script: &str,
    args: &[S],
    lines: &[String],
) -> Vec<serde_json::Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    let mut child = Command::new("python3")
        .arg(&path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    assert!(out.status.success(), "{script} {shown:?} failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
