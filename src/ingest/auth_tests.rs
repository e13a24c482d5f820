//! Unit tests of the token file and the checks.

use std::os::unix::fs::PermissionsExt;

use super::*;

fn file(text: &str, mode: u32) -> (tempfile_dir::Dir, PathBuf) {
    let dir = tempfile_dir::Dir::new();
    let path = dir.0.join("tokens");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    (dir, path)
}

mod tempfile_dir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("kbridge-auth-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn streams() -> Vec<String> {
    vec!["visit".into(), "activity".into()]
}

const A: &str = "alice-token-0123456789";
const B: &str = "bob-token-abcdefghijkl";

#[test]
fn tokens_are_checked_per_route_and_counted_by_name() {
    let (_d, p) = file(
        &format!("# comment\n\nalice {A}\nbob {B} activity\n"),
        0o600,
    );
    let auth = Auth::open(&p, &streams()).unwrap();
    let bearer = |t: &str| format!("Bearer {t}");
    assert_eq!(auth.check(Some(&bearer(A)), Some(0)), Ok("alice".into()));
    assert_eq!(
        auth.check(Some(&format!("bearer  {A} ")), Some(1)),
        Ok("alice".into())
    );
    assert_eq!(auth.check(Some(&bearer(B)), Some(1)), Ok("bob".into()));
    assert_eq!(
        auth.check(Some(&bearer(B)), Some(0)),
        Err(Denied::Forbidden("bob".into()))
    );
    // A path that is no route: the 404 is answered to a known token.
    assert_eq!(auth.check(Some(&bearer(B)), None), Ok("bob".into()));
    for bad in [
        None,
        Some(""),
        Some("Bearer"),
        Some("Bearer "),
        Some("Basic YWxpY2U6eA=="),
        Some(A),
        Some("Bearer alice-token-012345678"),
        Some("Bearer alice-token-0123456789x"),
    ] {
        assert_eq!(
            auth.check(bad, Some(0)),
            Err(Denied::Unauthorized),
            "{bad:?}"
        );
    }
    assert_eq!(auth.rejected.get(), 8);
    let mut out = String::new();
    auth.render(&mut Prom::new(&mut out));
    assert!(
        out.contains("kbridge_ingest_auth_requests_total{name=\"alice\",result=\"accepted\"} 2"),
        "{out}"
    );
    assert!(
        out.contains("kbridge_ingest_auth_requests_total{name=\"bob\",result=\"forbidden\"} 1"),
        "{out}"
    );
    assert!(
        out.contains("kbridge_ingest_auth_rejected_total 8"),
        "{out}"
    );
    assert!(!out.contains(A) && !out.contains(B), "{out}");
}

#[test]
fn a_bad_file_is_refused_with_its_line_and_never_shows_a_token() {
    let cases = [
        (
            format!("alice {A}\n"),
            0o644,
            "readable or writable by group or others (mode 644)",
        ),
        (format!("alice {A}\n"), 0o604, "(mode 604)"),
        (
            "alice short\n".to_string(),
            0o600,
            "tokens:1: the token of alice must be at least 16",
        ),
        (
            format!("alice {A} visit extra\n"),
            0o600,
            "tokens:1: expected `name token`",
        ),
        (format!("a/b {A}\n"), 0o600, "tokens:1: name \"a/b\""),
        (
            format!("alice {A}\nalice {B}\n"),
            0o600,
            "tokens:2: name alice appears twice",
        ),
        (
            format!("alice {A}\nbob {A}\n"),
            0o600,
            "tokens:2: the token of bob is also another name's",
        ),
        (
            format!("alice {A} visit,orders\n"),
            0o600,
            "tokens:1: alice: no route \"orders\"",
        ),
        ("# nobody\n".to_string(), 0o600, "holds no token"),
    ];
    for (text, mode, want) in cases {
        let (_d, p) = file(&text, mode);
        let e = Auth::open(&p, &streams()).err().unwrap_or_default();
        assert!(e.contains(want), "{want:?} not in {e:?}");
        assert!(!e.contains(A) && !e.contains(B), "{e}");
    }
    let e = Auth::open(Path::new("/nonexistent/tokens"), &streams())
        .err()
        .unwrap();
    assert!(e.contains("/nonexistent/tokens: cannot read it"), "{e}");
}

#[test]
fn a_reload_swaps_the_tokens_and_a_bad_one_keeps_the_old() {
    let (_d, p) = file(&format!("alice {A}\n"), 0o600);
    let auth = Auth::open(&p, &streams()).unwrap();
    std::fs::write(&p, format!("bob {B}\n")).unwrap();
    auth.reload();
    assert_eq!(
        auth.check(Some(&format!("Bearer {A}")), Some(0)),
        Err(Denied::Unauthorized)
    );
    assert_eq!(
        auth.check(Some(&format!("Bearer {B}")), Some(0)),
        Ok("bob".into())
    );
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&p, format!("alice {A}\n")).unwrap();
    auth.reload();
    assert_eq!(
        auth.check(Some(&format!("Bearer {B}")), Some(0)),
        Ok("bob".into())
    );
}
