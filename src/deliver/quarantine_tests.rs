//! The quarantine's pure rules: what holds a key, what releases it, and
//! that a release naming less than was parked does not hold.

use super::*;

fn persistent() -> Held {
    Held::new(Some("q".into()))
}

fn held(first: i64, last: i64) -> Vec<u8> {
    serde_json::to_vec(&Change::Held(Entry {
        topic: "t".into(),
        partition: 2,
        first,
        last,
        reason: "HTTP 422".into(),
    }))
    .unwrap()
}

fn released(through: i64) -> Vec<u8> {
    serde_json::to_vec(&Change::Released {
        topic: "t".into(),
        released_through: through,
    })
    .unwrap()
}

#[test]
fn a_parked_message_holds_its_key_from_its_offset_on() {
    let h = persistent();
    assert_eq!(h.reason("t", 2, 10, b"k"), None);
    let (k, v) = h.note("t", 2, 10, b"k", "HTTP 422").unwrap();
    assert_eq!(k, b"t\0k");
    let Ok(Change::Held(e)) = serde_json::from_slice::<Change>(&v) else {
        panic!("{v:?}")
    };
    assert_eq!((e.first, e.last), (10, 10));
    let why = Some("quarantined after t/2@10".to_string());
    assert_eq!(
        h.reason("t", 2, 10, b"k"),
        why,
        "the first itself, read again"
    );
    assert_eq!(h.reason("t", 2, 11, b"k"), why);
    assert_eq!(h.reason("t", 2, 9, b"k"), None, "earlier ones go on");
    assert_eq!(h.reason("t", 2, 11, b"other"), None);
    assert_eq!(h.reason("u", 2, 11, b"k"), None, "a key per topic");
    // Later parks move `last`, not `first`.
    let (_, v) = h.note("t", 2, 14, b"k", "quarantined").unwrap();
    let Ok(Change::Held(e)) = serde_json::from_slice::<Change>(&v) else {
        panic!()
    };
    assert_eq!((e.first, e.last), (10, 14));
    assert_eq!(h.count(), 1);
}

#[test]
fn in_memory_only_nothing_is_written() {
    let h = Held::memory();
    assert_eq!(h.note("t", 0, 5, b"k", "x"), None);
    assert!(h.reason("t", 0, 6, b"k").is_some());
    assert!(h.catch_up(Duration::ZERO));
}

#[test]
fn a_release_through_the_last_parked_offset_frees_the_key() {
    let h = persistent();
    assert_eq!(h.apply(b"t\0k", Some(&held(10, 12))), None);
    assert_eq!(h.entries_of(b"k").len(), 1);
    assert_eq!(h.apply(b"t\0k", Some(&released(12))), None);
    assert_eq!(h.count(), 0);
    assert_eq!(h.reason("t", 2, 13, b"k"), None);
    assert!(h.entries_of(b"k").is_empty());
}

#[test]
fn a_release_that_misses_a_later_park_does_not_hold_and_is_overwritten() {
    let h = persistent();
    h.apply(b"t\0k", Some(&held(10, 12)));
    // Parked at 15 while the replay delivered through 12.
    h.apply(b"t\0k", Some(&held(10, 15)));
    let again = h
        .apply(b"t\0k", Some(&released(12)))
        .expect("written again");
    let Ok(Change::Held(e)) = serde_json::from_slice::<Change>(&again) else {
        panic!()
    };
    assert_eq!((e.first, e.last), (10, 15));
    assert!(h.reason("t", 2, 16, b"k").is_some());
    assert_eq!(h.stale().len(), 1, "its latest record is the release");
    // The Held record written after it settles the log.
    h.apply(b"t\0k", Some(&again));
    assert!(h.stale().is_empty());
    // So does a park noted in memory before its record is read.
    h.note("t", 2, 20, b"k", "quarantined");
    assert!(h.apply(b"t\0k", Some(&released(15))).is_some());
}

#[test]
fn records_kbridge_did_not_write_change_nothing() {
    let h = persistent();
    for v in [&b"garbage"[..], b"{}", b"[1]", b"{\"topic\":1}"] {
        assert_eq!(h.apply(b"t\0k", Some(v)), None);
    }
    assert_eq!(h.apply(b"t\0k", None), None);
    assert_eq!(h.apply(b"t\0k", Some(&released(3))), None);
    assert_eq!(h.count(), 0);
}

#[test]
fn binary_keys_round_trip_through_the_state_key() {
    let k = state_key("t", &[0, 0xff, 0]);
    assert_eq!(message_key(&k), Some(&[0, 0xff, 0][..]));
    let h = persistent();
    h.note("t", 0, 1, &[0, 0xff, 0], "x");
    assert_eq!(h.entries_of(&[0, 0xff, 0]).len(), 1);
    assert!(h.entries_of(&[0xff, 0]).is_empty());
}
