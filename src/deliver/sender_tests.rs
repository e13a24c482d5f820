//! Unit tests of `deliver::sender`: redirect targets and the rate limit.

use super::*;

#[test]
fn redirect_targets_resolve_against_the_target_url() {
    let b = "http://h:1/a/b?x=1";
    assert_eq!(resolve(b, "https://o/p").as_deref(), Some("https://o/p"));
    assert_eq!(resolve(b, "/moved").as_deref(), Some("http://h:1/moved"));
    assert_eq!(resolve(b, "c").as_deref(), Some("http://h:1/a/c"));
    assert_eq!(resolve("http://h", "c").as_deref(), Some("http://h/c"));
    assert_eq!(resolve(b, "//o/p").as_deref(), Some("http://o/p"));
}

#[test]
fn rate_limit_spaces_calls() {
    let r = RateLimit::new(100);
    let start = Instant::now();
    for _ in 0..11 {
        r.take(1);
    }
    assert!(
        start.elapsed() >= Duration::from_millis(95),
        "{:?}",
        start.elapsed()
    );
}
