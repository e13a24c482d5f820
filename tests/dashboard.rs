//! The dashboard in real headless Chromium (`tests/browser/dashboard.mjs`,
//! playwright-core driving Debian's chromium; both installed by
//! `scripts/test`): kbridge runs all three roles, kbridge-bench sends
//! traffic and a sink refuses some calls, the page must draw real data in
//! every chart while traffic flows, and once the traffic stopped and the
//! figures settled, every number it shows must equal the query API's.
//! Screenshots land in `target/tmp/dashboard/`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::process::{Bin, spawn_bin};
use crate::util::sink::{Reply, Sink};
use crate::util::*;

/// A child process killed when the test ends, also when it fails.
struct Killed(Option<std::process::Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn browser_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn api(admin: u16, path: &str) -> Value {
    let r = get(&format!("http://127.0.0.1:{admin}{path}"));
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    r.json()
}

/// Sum of the last value of every series of `metric` in `/api/summary`.
fn last(summary: &Value, metric: &str) -> f64 {
    summary["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["metric"] == metric)
        .map(|s| s["last"].as_f64().unwrap_or(0.0))
        .sum()
}

/// The figures the page shows as totals, as the API has them now.
fn settled_figures(admin: u16) -> Vec<f64> {
    let s = api(admin, "/api/summary");
    let a = api(admin, "/api/aggregates");
    let mut v: Vec<f64> = TILES.iter().map(|m| last(&s, m)).collect();
    v.extend(
        a["topics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["consumed"].as_f64().unwrap()),
    );
    v
}

const VISITS_ASSIGNED: &str = "kbridge_deliver_assigned_partitions{subscription=\"visits\"}";
const VISITS_IDLE_MEMBERS: &str =
    "kbridge_deliver_members_without_partitions{subscription=\"visits\"}";

const TILES: [&str; 9] = [
    "kbridge_ingest_records_acked_total",
    "kbridge_ingest_records_failed_total",
    "kbridge_deliver_consumed_total",
    "kbridge_deliver_delivered_total",
    "kbridge_deliver_retries_total",
    "kbridge_deliver_dead_letters_total",
    "kbridge_collect_consumed_total",
    "kbridge_collect_written_bytes_total",
    "kbridge_collect_files_open",
];

/// `1234567` → `1,234,567`, as the page writes whole numbers.
fn grouped(n: f64) -> String {
    let digits = format!("{}", n.round() as u64);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn the_dashboard_draws_live_data_in_chromium_and_shows_what_the_api_holds() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "Chromium not found at {chromium}: scripts/test installs the Debian package chromium"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: scripts/test runs npm ci in tests/browser"
    );
    let (visits, activities) = (unique_topic("dash-v"), unique_topic("dash-a"));
    // 1 call in 25 is refused once with 503 (retried), 1 in 60 with 422
    // (dead-lettered), by the call's first id.
    let sink = Sink::start(Arc::new(|call, n| {
        let id = call.ids().into_iter().next().unwrap_or_default();
        let h = {
            use std::hash::{Hash, Hasher};
            let mut s = std::collections::hash_map::DefaultHasher::new();
            id.hash(&mut s);
            s.finish()
        };
        match (h % 60, h % 25, n) {
            (0, _, _) => Reply::status(422),
            (_, 0, 0) => Reply::status(503),
            _ => Reply::status(200),
        }
    }));
    let dir = TempDir::new("dash");
    let (admin, port) = (free_port(), free_port());
    let ini = format!(
        "[kafka]\nbrokers = {b}\n[admin]\nlisten = 127.0.0.1:{admin}\n\
         [ingest]\nlisten = 127.0.0.1:{port}\ntopic_partitions = 3\n\
         [ingest.routes]\nvisit = {visits}\nactivity = {activities}\n\
         [deliver]\ngroup_id = {g}\ntopics = {visits},{activities}\ntarget_url = {url}\n\
         backoff_initial_ms = 50\ncommit_interval_ms = 200\n\
         [subscription.visits]\ngroup_id = {g3}\ntopics = {visits},{activities}\ntarget_url = {url}\n\
         filter = {{\"field\": \"/type\", \"equals\": \"visit\"}}\ncommit_interval_ms = 200\n\
         [collect]\ngroups = {g2}:{visits},{activities}\nrecord_directory = {d}\nidle_close_s = 2\n",
        b = brokers(),
        g = unique_topic("g"),
        g2 = unique_topic("g"),
        g3 = unique_topic("g"),
        url = sink.url,
        d = dir.0.join("records").display()
    );
    let mut bin: Bin = spawn_bin(&ini, &dir);
    wait_until("kbridge ready", Duration::from_secs(60), || {
        agent()
            .get(&format!("http://127.0.0.1:{admin}/ready"))
            .call()
            .is_ok_and(|r| r.status() == 200)
    });
    // Traffic starts once the groups settled, so no rebalance redelivers
    // and the aggregates count each event once.
    wait_until("the groups to settle", Duration::from_secs(60), || {
        let m = get(&format!("http://127.0.0.1:{admin}/metrics")).body;
        metric(&m, "kbridge_deliver_assigned_partitions") == 6.0
            && metric(&m, "kbridge_deliver_members_without_partitions") == 0.0
            && metric(&m, VISITS_ASSIGNED) == 6.0
            && metric(&m, VISITS_IDLE_MEMBERS) == 0.0
            && metric(&m, "kbridge_collect_members_joined") > 0.0
    });

    let acked_ids = dir.0.join("acked");
    let load = Command::new(env!("CARGO_BIN_EXE_kbridge-bench"))
        .args(["--web-service", &format!("http://127.0.0.1:{port}")])
        .args([
            "--kind",
            "mixed",
            "--rate",
            "200",
            "--concurrent-clients",
            "4",
        ])
        .args(["--duration", "600", "--json", "--acked-ids"])
        .arg(&acked_ids)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut load = Killed(Some(load));

    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&out).unwrap();
    let node = Command::new("node")
        .arg(browser_dir().join("dashboard.mjs"))
        .arg(format!("http://127.0.0.1:{admin}/"))
        .arg(&out)
        .env("CHROMIUM", &chromium)
        .env("SUSPEND", "visits")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (Node.js is on the machine)");
    let mut node = Killed(Some(node));
    let node_stdout = node.0.as_mut().unwrap().stdout.take().unwrap();
    let stderr = node.0.as_mut().unwrap().stderr.take().unwrap();
    let mut lines = BufReader::new(node_stdout).lines();
    let errors: Arc<std::sync::Mutex<String>> = Arc::default();
    let said = errors.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            said.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let fail = |node: Killed, what: &str| -> ! {
        drop(node);
        std::thread::sleep(Duration::from_millis(200)); // the last stderr lines
        panic!("{what}; the browser side said: {}", errors.lock().unwrap());
    };
    let ready = match lines.next() {
        Some(Ok(l)) if l.starts_with("{\"ready\"") => l,
        other => fail(node, &format!("no ready line from the browser: {other:?}")),
    };
    let load_child = load.0.as_mut().unwrap();
    assert!(
        load_child.try_wait().unwrap().is_none(),
        "the charts must draw while traffic flows"
    );
    eprintln!("dashboard drew: {ready}");

    // A value of the aggregated field that is markup and script.
    let hostile = r#"<img src=x onerror="window.__injected=1">"#;
    let r = post(
        &format!("http://127.0.0.1:{port}/api/activity/v1/"),
        &[("Content-Type", "application/json")],
        serde_json::json!({ "id": "hostile-1", "type": hostile })
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let sent_too = 1.0;

    // Stop the traffic; wait until every figure the page shows holds still.
    Command::new("kill")
        .args(["-INT", &load_child.id().to_string()])
        .status()
        .unwrap();
    let summary = load.0.take().unwrap().wait_with_output().unwrap();
    assert!(summary.status.success());
    let bench: Value = serde_json::from_slice(&summary.stdout).unwrap();
    let sent = std::fs::read_to_string(&acked_ids).unwrap().lines().count() as f64 + sent_too;
    assert!(sent > 0.0, "{bench}");
    let mut before = settled_figures(admin);
    let mut since = Instant::now();
    wait_until("the figures to settle", Duration::from_secs(60), || {
        let now = settled_figures(admin);
        if now != before {
            (before, since) = (now, Instant::now());
        }
        since.elapsed() > Duration::from_secs(3)
    });

    let browser = node.0.as_mut().unwrap();
    browser
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"compare\n")
        .unwrap();
    let shown: Value = match lines.next() {
        Some(Ok(l)) => serde_json::from_str(&l).unwrap(),
        other => fail(node, &format!("no figures from the browser: {other:?}")),
    };
    let status = node.0.take().unwrap().wait().unwrap();
    assert!(status.success(), "{}", errors.lock().unwrap());

    // Every tile equals the API's figure, written as the page writes it.
    let s = api(admin, "/api/summary");
    for metric in TILES {
        let tile = &shown["tiles"][metric];
        let want = last(&s, metric);
        assert_eq!(tile["value"].as_f64(), Some(want), "tile {metric}: {shown}");
        assert_eq!(tile["text"], grouped(want), "tile {metric}");
    }
    // And the API's figures are the truth: what the load client had acked.
    assert_eq!(last(&s, "kbridge_ingest_records_acked_total"), sent);
    for m in [
        "kbridge_deliver_retries_total",
        "kbridge_deliver_dead_letters_total",
        "kbridge_collect_written_bytes_total",
    ] {
        assert!(
            last(&s, m) > 0.0,
            "{m} is 0: the sink's refusals and the files must show"
        );
    }
    // Top values and the events per topic, as the query API answers them.
    let topic = shown["topic"].as_str().unwrap();
    let values = api(
        admin,
        &format!("/api/aggregates?topic={topic}&by=value&limit=10"),
    );
    let want: Vec<Value> = values["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let c = v["count"].as_u64().unwrap();
            serde_json::json!([v["value"], c, grouped(c as f64), v["value"]])
        })
        .collect();
    assert_eq!(shown["values"].as_array().unwrap(), &want);
    assert!(
        want.iter().any(|v| v[0] == hostile),
        "the hostile value is among the top values: {shown}"
    );
    assert_eq!(
        (&shown["injected"], &shown["images"]),
        (&Value::Null, &Value::from(0))
    );
    let topics = api(admin, "/api/aggregates");
    let mut consumed = 0.0;
    for t in topics["topics"].as_array().unwrap() {
        let name = t["topic"].as_str().unwrap();
        assert_eq!(shown["topics"][name], t["consumed"], "topic {name}");
        consumed += t["consumed"].as_f64().unwrap();
    }
    assert_eq!(
        consumed, sent,
        "the aggregates counted every acked event once"
    );
    // A row per subscription with its own figures, as the summary has them.
    let subs = &shown["subscriptions"];
    for (name, label) in [("deliver", None), ("visits", Some("visits"))] {
        let mine = |metric: &str, reason: Option<&str>| -> f64 {
            s["series"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["metric"] == metric)
                .filter(|x| x["labels"]["subscription"].as_str() == label)
                .filter(|x| reason.is_none_or(|r| x["labels"]["reason"] == r))
                .map(|x| x["last"].as_f64().unwrap_or(0.0))
                .sum()
        };
        let row = &subs[name];
        assert_eq!(row["text"]["state"], "active", "{name}: {shown}");
        for (column, metric, reason) in [
            ("delivered", "kbridge_deliver_delivered_total", None),
            (
                "filtered",
                "kbridge_deliver_skipped_total",
                Some("filtered"),
            ),
            ("dead-lettered", "kbridge_deliver_dead_letters_total", None),
        ] {
            let want = mine(metric, reason);
            assert_eq!(
                row["value"][column].as_f64(),
                Some(want),
                "{name} {column}: {shown}"
            );
            assert_eq!(row["text"][column], grouped(want), "{name} {column}");
        }
    }
    let (all, visits) = (
        subs["deliver"]["value"]["delivered"].as_f64().unwrap(),
        subs["visits"]["value"]["delivered"].as_f64().unwrap(),
    );
    assert!(
        0.0 < visits && visits < all,
        "visits got only the visits: {visits} of {all}"
    );
    assert!(subs["visits"]["value"]["filtered"].as_f64().unwrap() > 0.0);
    // The row's suspend button suspended the subscription.
    assert_eq!(shown["suspended_by_button"], "visits");
    let listed = api(admin, "/subscriptions");
    assert!(
        listed["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "visits" && x["suspended"] == true),
        "{listed}"
    );
    assert_eq!(shown["hidden"], 0, "every role's cards show");
    assert!(
        shown["phone_overflow_px"].as_i64().unwrap() <= 1,
        "the page fits a phone's width: {shown}"
    );
    for png in ["dashboard.png", "dashboard-phone.png"] {
        let bytes = std::fs::read(out.join(png)).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
            "{png}"
        );
    }
    eprintln!("screenshots in {}", out.display());
    // Over HTTP, a bad query is a 400 that names the parameter.
    let r = get(&format!(
        "http://127.0.0.1:{admin}/api/aggregates?topic={topic}&by=hour"
    ));
    assert_eq!(
        (r.status, &r.json()["where"]),
        (400, &Value::from("by")),
        "{}",
        r.body
    );
    bin.sigterm();
    assert_eq!(bin.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn the_admin_server_serves_the_page_its_assets_and_a_summary_without_deliver() {
    let topic = unique_topic("dash-i");
    let ing = Ingest::start(&ingest_ini(&brokers(), &topic, "", ""));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = kbridge::shutdown::Stopper::new();
    let (fatal, _rx) = crossbeam_channel::bounded(1);
    let sources = kbridge::dashboard::Sources {
        roles: vec!["ingest"],
        ..Default::default()
    };
    let admin = kbridge::admin::spawn(
        listener,
        &kbridge::config::limits::HttpLimits::admin(),
        &[],
        vec![ing.telemetry()],
        sources,
        stop.token(),
        fatal,
    )
    .unwrap();
    let base = format!("http://{addr}");
    let page = get(&format!("{base}/"));
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("/assets/uPlot.iife.min.js"),
        "{}",
        page.body
    );
    for (path, kind, min) in [
        ("/assets/dashboard.js", "text/javascript", 5_000),
        ("/assets/dashboard.css", "text/css", 1_000),
        ("/assets/uPlot.iife.min.js", "text/javascript", 40_000),
        ("/assets/uPlot.min.css", "text/css", 1_000),
        ("/assets/uPlot.LICENSE", "text/plain", 500),
    ] {
        let r = get(&format!("{base}{path}"));
        assert_eq!(r.status, 200, "{path}");
        assert!(r.headers["content-type"].starts_with(kind), "{path}");
        assert!(r.body.len() >= min, "{path}: {} bytes", r.body.len());
    }
    post(
        &ing.url,
        &[("Content-Type", "application/json")],
        b"{\"id\":\"a\"}",
    );
    wait_until("a sample with the request", Duration::from_secs(10), || {
        let s: Value = get(&format!("{base}/api/summary")).json();
        last(&s, "kbridge_ingest_records_acked_total") == 1.0
    });
    let s: Value = get(&format!("{base}/api/summary")).json();
    assert_eq!(s["roles"], serde_json::json!(["ingest"]));
    let t = s["t"].as_array().unwrap();
    let newest = t.last().unwrap().as_i64().unwrap();
    let later: Value = get(&format!("{base}/api/summary?since={newest}")).json();
    assert!(
        later["t"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x.as_i64().unwrap() > newest)
    );
    let bad = |path: &str, status: u16| {
        let r = get(&format!("{base}{path}"));
        assert_eq!(r.status, status, "{path}");
        r.body
    };
    assert!(bad("/api/summary?since=yesterday", 400).contains("Unix milliseconds"));
    assert!(bad("/api/aggregates", 404).contains("deliver role"));
    assert!(bad("/favicon.ico", 404).contains("dashboard"));
    stop.stop();
    admin.join().unwrap();
}
