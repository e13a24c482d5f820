//! Several `[subscription.<name>]` sections in one process, on one topic:
//! each its own group, filter and endpoint; a dead endpoint holds back
//! only its own subscription; metrics, `/ready` and the stats line name
//! each subscription; mistakes name the subscription's section.

use std::time::Duration;

use crate::util::process::{spawn_bin, wait_ready};
use crate::util::sink::Sink;
use crate::util::*;

#[test]
fn each_subscription_delivers_on_its_own_and_a_dead_endpoint_holds_back_only_itself() {
    let b = brokers();
    let topic = unique_topic("subs");
    create_topic(&b, &topic, 2);
    let (clicks, all, dead) = (Sink::always(200), Sink::always(200), Sink::always(503));
    let dir = TempDir::new("subs");
    let admin = free_port();
    let tag = unique_topic("s");
    let ini = format!(
        "[kafka]\nbrokers = {b}\n[admin]\nlisten = 127.0.0.1:{admin}\n\
         [subscription.clicks]\ngroup_id = {tag}-clicks\ntopics = {topic}\ntarget_url = {}\n\
         filter = {{\"field\": \"/type\", \"equals\": \"click\"}}\ncommit_interval_ms = 200\n\
         [subscription.all]\ngroup_id = {tag}-all\ntopics = {topic}\ntarget_url = {}\ncommit_interval_ms = 200\n\
         [subscription.dead]\ngroup_id = {tag}-dead\ntopics = {topic}\ntarget_url = {}\n\
         backoff_initial_ms = 50\nmax_retries = 1000\n",
        clicks.url, all.url, dead.url
    );
    let mut bin = spawn_bin(&ini, &dir);
    let admin = format!("http://127.0.0.1:{admin}");
    wait_ready(&admin);
    let recs: Vec<(Option<String>, String)> = (0..30)
        .map(|i| {
            let ty = if i % 2 == 0 { "click" } else { "view" };
            (None, format!("{{\"id\":\"m-{i}\",\"type\":\"{ty}\"}}"))
        })
        .collect();
    produce(&b, &topic, &recs);
    let every: Vec<String> = (0..30).map(|i| format!("m-{i}")).collect();
    let even: Vec<String> = (0..30).step_by(2).map(|i| format!("m-{i}")).collect();
    // While `dead` fails every call, the others deliver everything.
    wait_delivered(&all, &every, Duration::from_secs(60));
    wait_delivered(&clicks, &even, Duration::from_secs(60));
    let mut got = clicks.delivered();
    got.sort();
    let mut want = even.clone();
    want.sort();
    assert_eq!(got, want, "clicks got only the clicks");
    wait_until(
        "the live groups committed everything",
        Duration::from_secs(30),
        || {
            committed(&b, &format!("{tag}-all"), &topic, 2)
                .iter()
                .sum::<i64>()
                == 30
                && committed(&b, &format!("{tag}-clicks"), &topic, 2)
                    .iter()
                    .sum::<i64>()
                    == 30
        },
    );
    assert!(!dead.calls().is_empty(), "dead was called");
    assert_eq!(
        committed(&b, &format!("{tag}-dead"), &topic, 2)
            .iter()
            .sum::<i64>(),
        0,
        "dead's group committed nothing it did not deliver"
    );
    let m = get(&format!("{admin}/metrics")).body;
    for (sub, n) in [("all", 30.0), ("clicks", 15.0), ("dead", 0.0)] {
        let name = format!("kbridge_deliver_delivered_total{{subscription=\"{sub}\"}}");
        assert_eq!(metric(&m, &name), n, "{name}");
    }
    assert_eq!(
        metric(
            &m,
            "kbridge_deliver_skipped_total{subscription=\"clicks\",reason=\"filtered\"}"
        ),
        15.0
    );
    assert_eq!(
        m.matches("# TYPE kbridge_deliver_delivered_total ").count(),
        1,
        "one family for every subscription"
    );
    assert_eq!(get(&format!("{admin}/ready")).status, 200);
    let (threads, rss) = crate::util::raw::threads_and_rss(bin.child.id());
    eprintln!(
        "three subscriptions: {threads} threads, RSS {} MiB",
        rss >> 20
    );
    wait_until(
        "a stats line per subscription",
        Duration::from_secs(10),
        || {
            let log = bin.log();
            ["clicks", "all", "dead"]
                .iter()
                .all(|s| log.contains(&format!("deliver subscription={s} pool=deliver-c")))
        },
    );
    bin.sigterm();
    assert_eq!(bin.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn subscription_mistakes_name_their_section() {
    let dir = TempDir::new("subs-bad");
    let path = dir.0.join("bad.ini");
    std::fs::write(
        &path,
        "[kafka]\nbrokers = 127.0.0.1:9\n\
         [subscription.crm]\ntopics = t\ntarget_url = http://h/{key}\nbatch_size = 5\n\
         [subscription.x.consumer]\nfetch.min.bytes = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(kbridge_bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("[subscription.crm] target_url: placeholders fill one message's URL"),
        "{text}"
    );
    assert!(
        text.contains("[subscription.x.consumer]: needs a [subscription.x] section"),
        "{text}"
    );
}

#[test]
fn a_suspended_subscription_takes_nothing_until_resumed_and_keeps_its_offsets() {
    let b = brokers();
    let topic = unique_topic("suspend");
    create_topic(&b, &topic, 2);
    let sink = Sink::always(200);
    let dir = TempDir::new("suspend");
    let admin = free_port();
    let group = unique_topic("g");
    let ini = format!(
        "[kafka]\nbrokers = {b}\n[admin]\nlisten = 127.0.0.1:{admin}\n\
         [subscription.crm]\ngroup_id = {group}\ntopics = {topic}\ntarget_url = {}\ncommit_interval_ms = 200\n",
        sink.url
    );
    let mut bin = spawn_bin(&ini, &dir);
    let admin = format!("http://127.0.0.1:{admin}");
    wait_ready(&admin);
    let put = |path: &str| {
        agent()
            .put(&format!("{admin}{path}"))
            .send("")
            .map(|mut r| {
                (
                    r.status().as_u16(),
                    r.body_mut().read_to_string().unwrap_or_default(),
                )
            })
            .unwrap_or_else(|e| (0, e.to_string()))
    };
    produce(&b, &topic, &events("a", 10));
    let first: Vec<String> = (0..10).map(|i| format!("a-{i}")).collect();
    wait_delivered(&sink, &first, Duration::from_secs(60));
    assert_eq!(put("/subscriptions/crm/suspend").0, 200);
    let listed = get(&format!("{admin}/subscriptions")).json();
    assert_eq!(listed["subscriptions"][0]["name"], "crm");
    assert_eq!(listed["subscriptions"][0]["suspended"], true);
    let m = get(&format!("{admin}/metrics")).body;
    assert_eq!(
        metric(&m, "kbridge_deliver_suspended{subscription=\"crm\"}"),
        1.0
    );
    wait_until("the first ten committed", Duration::from_secs(30), || {
        committed(&b, &group, &topic, 2).iter().sum::<i64>() == 10
    });
    produce(&b, &topic, &events("b", 10));
    // Suspended: for a while nothing more is called or committed (an
    // observation window, the only way to see that nothing happens).
    let calls = sink.calls().len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.calls().len(), calls, "nothing sent while suspended");
    assert_eq!(committed(&b, &group, &topic, 2).iter().sum::<i64>(), 10);
    assert_eq!(
        get(&format!("{admin}/ready")).status,
        200,
        "suspended is not unready"
    );
    assert_eq!(put("/subscriptions/nope/suspend").0, 404);
    assert_eq!(put("/subscriptions/crm/pause").0, 404);
    assert_eq!(put("/subscriptions/crm/resume").0, 200);
    let second: Vec<String> = (0..10).map(|i| format!("b-{i}")).collect();
    wait_delivered(&sink, &second, Duration::from_secs(60));
    wait_until("everything committed", Duration::from_secs(30), || {
        committed(&b, &group, &topic, 2).iter().sum::<i64>() == 20
    });
    assert_eq!(sink.calls().len(), 20, "each message once");
    let m = get(&format!("{admin}/metrics")).body;
    assert_eq!(
        metric(&m, "kbridge_deliver_suspended{subscription=\"crm\"}"),
        0.0
    );
    bin.sigterm();
    assert_eq!(bin.wait_exit(Duration::from_secs(30)).code(), Some(0));
}
