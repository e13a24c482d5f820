//! Unit tests of `collect::files`: file names, rotation, UTC days, write-back
//! and pending files promoted to their final names.

use super::*;

fn span(partition: i32, first: i64, last: i64, era: u32) -> Span {
    Span {
        partition,
        first,
        last,
        era,
    }
}

#[test]
fn names_round_trip_even_with_dashes_in_topics() {
    let n = final_name("web-visits", span(3, 100, 199, 0), true);
    assert_eq!(n, "web-visits-3-100-199.ndjson.gz");
    assert_eq!(parse_name(&n, "web-visits"), Some(span(3, 100, 199, 0)));
    assert_eq!(
        parse_name("web-visits-3-100-199.ndjson", "web-visits"),
        Some(span(3, 100, 199, 0))
    );
    assert_eq!(parse_name("web-visits-3-100-199.ndjson", "web"), None);
    assert_eq!(parse_name(".web-3-1.tmp", "web"), None);
    let e2 = final_name("web", span(1, 0, 9, 2), false);
    assert_eq!(e2, "web-1-0-9-e2.ndjson");
    assert_eq!(parse_name(&e2, "web"), Some(span(1, 0, 9, 2)));
    for bad in [
        "web-1-0-9-e0.ndjson",
        "web-1-0-9-x2.ndjson",
        "web-1-0-9-e2-e3.ndjson",
    ] {
        assert_eq!(parse_name(bad, "web"), None, "{bad}");
    }
    let p = pending_name(&e2);
    assert_eq!(p, ".web-1-0-9-e2.ndjson.pending");
    assert_eq!(parse_pending(&p, "web"), Some(span(1, 0, 9, 2)));
    assert_eq!(parse_name(&p, "web"), None, "a pending file is not final");
    assert!(is_temp(".web-1-12.tmp", "web", 1));
    assert!(!is_temp(".web-1-12.tmp", "web", 2));
    assert!(!is_temp(".web.retry-1-12.tmp", "web", 1));
}

#[test]
fn rotation_by_size_then_age_then_idleness() {
    let s = Duration::from_secs;
    assert_eq!(
        should_close(100, s(1), s(0), 100, s(60), s(10)),
        Some(Close::Size)
    );
    assert_eq!(
        should_close(10, s(60), s(0), 100, s(60), s(10)),
        Some(Close::Age)
    );
    assert_eq!(
        should_close(10, s(5), s(10), 100, s(60), s(10)),
        Some(Close::Idle)
    );
    assert_eq!(should_close(10, s(5), s(1), 100, s(60), s(10)), None);
}

#[test]
fn dates_are_utc_days() {
    assert_eq!(date_of(0), "1970-01-01");
    assert_eq!(date_of(951_782_400_000), "2000-02-29");
    assert_eq!(date_of(1_795_392_000_000 - 1), "2026-11-22");
}

#[test]
fn files_bigger_than_the_write_back_step_keep_every_line() {
    use std::io::Read as _;
    let root = std::env::temp_dir().join(format!("kbridge-wb-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let line = [b'x'; 127];
    let n = 3 * WRITE_BACK_EVERY / 128 + 1;
    for gzip in [false, true] {
        let mut f = OpenFile::create(&root, "t", "t", 0, 0, 0, "2026-01-01", gzip).unwrap();
        for i in 0..n {
            f.append(i as i64, &line, Instant::now()).unwrap();
        }
        assert_eq!(f.written_back, 3 * WRITE_BACK_EVERY);
        let path = f.close().unwrap().promote().unwrap();
        let mut text = Vec::new();
        let file = File::open(&path).unwrap();
        if gzip {
            flate2::read::GzDecoder::new(file)
                .read_to_end(&mut text)
                .unwrap();
        } else {
            (&file).read_to_end(&mut text).unwrap();
        }
        assert_eq!(text.len() as u64, n * 128);
        assert!(
            text.chunks(128)
                .all(|l| l[..127] == line && l[127] == b'\n')
        );
    }
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn files_are_pending_until_promoted_to_their_final_name() {
    let root = std::env::temp_dir().join(format!("kbridge-files-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let mut f = OpenFile::create(&root, "t", "t", 0, 10, 0, "2026-01-01", false).unwrap();
    f.append(10, b"{\"a\":1}", Instant::now()).unwrap();
    f.append(11, b"{\"a\":2}", Instant::now()).unwrap();
    let pending = f.close().unwrap();
    assert_eq!(
        pending.path,
        root.join("t/2026-01-01/.t-0-10-11.ndjson.pending")
    );
    assert_eq!(pending.span, span(0, 10, 11, 0));
    assert!(promote_all(vec![pending.clone()]).is_empty());
    let path = root.join("t/2026-01-01/t-0-10-11.ndjson");
    assert_eq!(fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"a\":2}\n");
    assert!(!pending.path.exists());
    let failed = promote_all(vec![pending]);
    assert_eq!(failed.len(), 1, "promoted once only");
    fs::remove_dir_all(&root).unwrap();
}
