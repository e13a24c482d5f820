//! Who may write: ingest's bearer tokens (good, wrong, missing, limited to
//! another route, a file others can read, rotation by SIGHUP) and the admin
//! server kept off non-loopback addresses. No token appears in any log,
//! answer or metric.

use std::time::Duration;

use crate::util::process::*;
use crate::util::*;

const ALICE: &str = "alice-0f3a9c1d5e7b2468ace";
const BOB: &str = "bob-7d1e4b9a2c6f8035bd1";
const CAROL: &str = "carol-93be02d7f4a1c65e8b";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn ingest_writes_only_for_a_valid_token_on_its_routes() {
    let dir = TempDir::new("auth");
    let (t, u) = (unique_topic("auth-t"), unique_topic("auth-u"));
    let tokens = write_mode(
        &dir,
        "tokens",
        &format!("alice {ALICE}\nbob {BOB} u\n"),
        0o600,
    );
    let ini = format!(
        "[kafka]\nbrokers = {}\n[ingest]\nlisten = 127.0.0.1:0\nauth_tokens_file = {}\n\
         [ingest.routes]\nt = {t}\nu = {u}\n",
        brokers(),
        tokens.display()
    );
    let ing = Ingest::start(&ini);
    let u_url = ing.url.replace("/api/t/", "/api/u/");
    let send = |url: &str, auth: Option<&str>, id: &str| {
        let body = format!("{{\"id\":\"{id}\"}}");
        match auth {
            Some(a) => post(url, &[JSON, ("Authorization", a)], body.as_bytes()),
            None => post(url, &[JSON], body.as_bytes()),
        }
    };

    assert_eq!(send(&ing.url, Some(&bearer(ALICE)), "alice-t").status, 200);
    assert_eq!(send(&u_url, Some(&bearer(ALICE)), "alice-u").status, 200);
    assert_eq!(send(&u_url, Some(&bearer(BOB)), "bob-u").status, 200);

    // Every way of not holding a valid token gets the same 401.
    let refused: Vec<Resp> = [
        None,
        Some(bearer(CAROL)),
        Some(bearer(&ALICE[..ALICE.len() - 1])),
        Some(format!("Basic {ALICE}")),
        Some(ALICE.to_string()),
        Some("Bearer".to_string()),
    ]
    .iter()
    .map(|a| send(&ing.url, a.as_deref(), "refused"))
    .collect();
    for r in &refused {
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(
            r.headers.get("www-authenticate").map(String::as_str),
            Some("Bearer realm=\"kbridge\"")
        );
        assert_eq!(r.body, refused[0].body);
        assert!(!r.body.contains(ALICE), "{}", r.body);
    }
    // Unknown paths too: no route list for strangers.
    let stranger = post(&ing.url.replace("/api/t/", "/api/nope/"), &[JSON], b"{}");
    assert_eq!(stranger.status, 401, "{}", stranger.body);
    let known = post(
        &ing.url.replace("/api/t/", "/api/nope/"),
        &[JSON, ("Authorization", &bearer(ALICE))],
        b"{}",
    );
    assert_eq!(known.status, 404, "{}", known.body);

    // Bob's token is for route u only.
    let r = send(&ing.url, Some(&bearer(BOB)), "bob-t");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("token bob may not write to /api/t/v1/"),
        "{}",
        r.body
    );

    // Idempotency keys are per token: bob cannot read alice's answer.
    let key = ("Idempotency-Key", "order-1");
    let a = post(
        &ing.url,
        &[JSON, key, ("Authorization", &bearer(ALICE))],
        b"{\"id\":\"k\"}",
    );
    let b = post(
        &u_url,
        &[JSON, key, ("Authorization", &bearer(BOB))],
        b"{\"id\":\"k\"}",
    );
    assert_eq!((a.status, b.status), (200, 200), "{} {}", a.body, b.body);
    assert!(!b.headers.contains_key("idempotent-replayed"), "{}", b.body);

    let in_t: Vec<String> = read_topic(&brokers(), &t, 2, Duration::from_secs(20))
        .iter()
        .map(|r| r.value_str().to_string())
        .collect();
    assert_eq!(in_t.len(), 2, "{in_t:?}");
    assert!(
        in_t.contains(&"{\"id\":\"alice-t\"}".to_string()),
        "{in_t:?}"
    );
    assert!(in_t.contains(&"{\"id\":\"k\"}".to_string()), "{in_t:?}");
    assert!(
        !in_t
            .iter()
            .any(|v| v.contains("refused") || v.contains("bob")),
        "{in_t:?}"
    );

    let m = ing.metrics();
    for want in [
        "kbridge_ingest_auth_requests_total{name=\"alice\",result=\"accepted\"} 4",
        "kbridge_ingest_auth_requests_total{name=\"bob\",result=\"accepted\"} 2",
        "kbridge_ingest_auth_requests_total{name=\"bob\",result=\"forbidden\"} 1",
        "kbridge_ingest_auth_rejected_total 7",
        "kbridge_ingest_responses_total{route=\"t\",status=\"401\"} 6",
        "kbridge_ingest_responses_total{route=\"t\",status=\"403\"} 1",
    ] {
        assert!(m.contains(want), "{want} not in:\n{m}");
    }
    for secret in [ALICE, BOB, CAROL] {
        assert!(!m.contains(secret));
    }
}

fn run_ini(tokens: &std::path::Path, port: u16, log: &std::path::Path) -> String {
    format!(
        "[kafka]\nbrokers = {}\n[admin]\nlisten = 127.0.0.1:0\n[log]\nlevel = debug\nfile = {}\n\
         [ingest]\nlisten = 127.0.0.1:{port}\nauth_tokens_file = {}\n[ingest.routes]\nt = {}\n",
        brokers(),
        log.display(),
        tokens.display(),
        unique_topic("auth-rotate")
    )
}

#[test]
fn a_token_file_others_can_read_is_refused_and_sighup_rotates_tokens() {
    let dir = TempDir::new("rotate");
    let log = dir.0.join("kbridge.log");
    let tokens = write_mode(&dir, "tokens", &format!("alice {ALICE}\n"), 0o644);
    let port = free_port();
    let ini = run_ini(&tokens, port, &log);

    // Refused by check-config (exit 2) and at start (exit 1), naming the key.
    let (code, text) = check_config(&ini);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("[ingest] auth_tokens_file:")
            && text.contains("readable or writable by group or others (mode 644); `chmod 600` it"),
        "{text}"
    );
    let mut refused = spawn_bin(&ini, &dir);
    assert_ne!(refused.wait_exit(Duration::from_secs(30)).code(), Some(0));
    assert!(
        refused.log().contains("auth_tokens_file"),
        "{}",
        refused.log()
    );

    chmod(&tokens, 0o600);
    let bin = spawn_bin(&ini, &dir);
    let url = format!("http://127.0.0.1:{port}/api/t/v1/");
    let with = |token: &str| {
        let a = agent();
        try_post(&a, &url, &[JSON, ("Authorization", &bearer(token))], b"{}")
            .map(|r| r.status)
            .ok()
    };
    wait_until("ingest to serve alice", Duration::from_secs(30), || {
        with(ALICE) == Some(200)
    });
    assert_eq!(with(BOB), Some(401));

    // Rotation: the file is rewritten, SIGHUP makes it count.
    std::fs::write(&tokens, format!("bob {BOB}\n")).unwrap();
    bin.signal("HUP");
    wait_until("the new token in force", Duration::from_secs(10), || {
        with(BOB) == Some(200)
    });
    assert_eq!(with(ALICE), Some(401));

    // A broken file on SIGHUP keeps the tokens in force, and says so.
    chmod(&tokens, 0o640);
    bin.signal("HUP");
    wait_until("the refusal logged", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("the tokens read before stay in force"))
    });
    assert_eq!(with(BOB), Some(200));

    // The token names reach the (debug) request log; the tokens never.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("kbridge::ingest::access: bob: POST /api/t/v1/"),
        "{text}"
    );
    for secret in [ALICE, BOB] {
        assert!(!text.contains(secret), "a token in the log:\n{text}");
    }
}

#[test]
fn the_admin_server_refuses_a_non_loopback_address_unless_allowed() {
    let dir = TempDir::new("admin-remote");
    let port = free_port();
    let ini = |extra: &str| {
        format!(
            "[kafka]\nbrokers = {}\n[admin]\nlisten = 0.0.0.0:{port}\n{extra}\n[ingest]\nlisten = 127.0.0.1:0\n",
            brokers()
        )
    };
    let mut refused = spawn_bin(&ini(""), &dir);
    assert_eq!(refused.wait_exit(Duration::from_secs(30)).code(), Some(2));
    assert!(
        refused.log().contains("[admin] listen: 0.0.0.0:")
            && refused.log().contains("is not a loopback address"),
        "{}",
        refused.log()
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());

    let allowed = spawn_bin(&ini("allow_remote = true"), &dir);
    wait_until(
        "the admin server on 0.0.0.0",
        Duration::from_secs(30),
        || {
            agent()
                .get(&format!("http://127.0.0.1:{port}/health"))
                .call()
                .is_ok_and(|r| r.status() == 200)
        },
    );
    assert!(
        allowed
            .log()
            .contains("admin on the non-loopback address 0.0.0.0:"),
        "{}",
        allowed.log()
    );
}

#[test]
fn one_token_holders_fresh_keys_evict_only_its_own() {
    let dir = TempDir::new("idem-share");
    let t = unique_topic("idem-share");
    let tokens = write_mode(
        &dir,
        "tokens",
        &format!("alice {ALICE}\nbob {BOB}\n"),
        0o600,
    );
    // 20 keys in all: 10 each.
    let ini = format!(
        "[kafka]\nbrokers = {}\n[ingest]\nlisten = 127.0.0.1:0\nauth_tokens_file = {}\nidempotency_max_keys = 20\n\
         [ingest.routes]\nt = {t}\n",
        brokers(),
        tokens.display()
    );
    let ing = Ingest::start(&ini);
    let send = |token: &str, key: &str, id: &str| {
        post(
            &ing.url,
            &[
                JSON,
                ("Idempotency-Key", key),
                ("Authorization", &bearer(token)),
            ],
            format!("{{\"id\":\"{id}\"}}").as_bytes(),
        )
    };
    assert_eq!(send(ALICE, "a-1", "alice-1").status, 200);
    // Bob sends 100 fresh keys: his share holds 10 of them.
    for i in 0..100 {
        assert_eq!(
            send(BOB, &format!("b-{i}"), &format!("bob-{i}")).status,
            200
        );
    }
    // Alice's retry is still recognised: answered again, not stored again.
    let again = send(ALICE, "a-1", "alice-1");
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(
        again.headers.get("idempotent-replayed").map(String::as_str),
        Some("true"),
        "{}",
        again.body
    );
    // Bob's oldest keys went, his own share being full.
    let old = send(BOB, "b-0", "bob-0");
    assert!(!old.headers.contains_key("idempotent-replayed"));
    let stored = read_exactly(&brokers(), &t, 102);
    assert_eq!(
        stored
            .iter()
            .filter(|r| r.value_str().contains("alice-1"))
            .count(),
        1
    );
}
