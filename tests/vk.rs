//! VK: the corpus through the real daemon by Callback API and by Bots Long
//! Poll against a fake VK API (tests/support/vk.rs), on SQLite and
//! PostgreSQL; product routing; `failed` 1/2/3; SIGKILL mid long poll;
//! the store down; API errors 5, 6 and 10; the users.get rate limit.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::corpus;
use support::daemon::{Daemon, TEAM, TestConfig};
use support::db::Db;
use support::pg;
use support::vk::{self, FakeVk, GROUP_ID};

/// Leads about the CNC machine go to Pavel: product routing applies to VK
/// product cards.
const ROUTING: &str = r#"
default = "role:sales"
[[rules]]
name = "cnc"
when.product = "Станок ЧПУ 6090"
assign = "user:pavel"
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Callback,
    LongPoll,
}

fn channel_toml(fake: &FakeVk, way: Way, extra: &str) -> String {
    let mode = match way {
        Way::Callback => {
            "mode = \"callback\"\nconfirmation = \"a1b2c3d4\"\nsecret = \"vk_test_secret\"\n"
        }
        Way::LongPoll if extra.contains("wait =") => "mode = \"long_poll\"\n",
        Way::LongPoll => "mode = \"long_poll\"\nwait = \"5s\"\n",
    };
    format!(
        "kind = \"vk\"\nresponsible = \"role:sales\"\n[vk]\ngroup_id = {GROUP_ID}\n{mode}token_file = \"vk.token\"\napi_url = \"{}\"\n{extra}",
        fake.api_url()
    )
}

fn config(db_url: Option<String>, channels: &[(&str, String)], routing: &str) -> TestConfig {
    let list: Vec<(&str, &str)> = channels.iter().map(|(n, b)| (*n, b.as_str())).collect();
    let cfg = TestConfig::new(db_url, &list, TEAM, routing);
    cfg.write("vk.token", &format!("{}\n", vk::TOKEN));
    cfg
}

struct Reply {
    status: u16,
    body: String,
}

async fn post(cfg: &TestConfig, channel: &str, body: Vec<u8>) -> Reply {
    let r = reqwest::Client::new()
        .post(format!("{}/vk/{channel}", cfg.base_url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the daemon answers");
    Reply {
        status: r.status().as_u16(),
        body: r.text().await.unwrap_or_default(),
    }
}

fn raw_sample(file: &str) -> Vec<u8> {
    let path = corpus::dir().join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn count(db: &Db, sql: &str) -> i64 {
    db.int(sql, None).await
}

async fn wait_for(db: &Db, sql: &str, want: i64, within: Duration, daemon: &Daemon) {
    let deadline = Instant::now() + within;
    loop {
        let n = count(db, sql).await;
        if n >= want {
            assert_eq!(n, want, "{sql}: more than expected");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {n}, expected {want} within {within:?}\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

type Row = BTreeMap<String, Option<String>>;

async fn last_inbound(db: &Db) -> Row {
    db.row(
        "SELECT source_ref, disposition, reason, sender_name FROM inbound_messages \
         WHERE id = (SELECT MAX(id) FROM inbound_messages) AND id > $1",
        0i64,
    )
    .await
    .expect("an inbound row")
}

async fn lead_of(db: &Db, source_ref: &str) -> Row {
    db.row(
        "SELECT name, messenger, product, utm_source, utm_campaign, assignee_user, \
         CAST(fields AS TEXT) AS fields FROM leads WHERE source_ref = $1",
        source_ref,
    )
    .await
    .unwrap_or_else(|| panic!("no lead for {source_ref}"))
}

/// The manifest's dispositions in this schema's words: an event type that
/// is no lead source on the channel is recorded `not_lead`.
fn disposition(expected: &str) -> &str {
    match expected {
        "event_not_lead_source" => "not_lead",
        other => other,
    }
}

/// Every corpus event by one way; each gives its manifest expectation.
async fn replay(way: Way, db_url: Option<String>) {
    // 011's events get ts 1841 and 1842, so its answer's next ts is 1843.
    let fake = FakeVk::start(1841).await;
    let cfg = config(db_url, &[("vk", channel_toml(&fake, way, ""))], ROUTING);
    let daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    let (mut leads, mut inbound) = (0, 0);
    if way == Way::LongPoll {
        fake.wait_for_polls(1, Duration::from_secs(20)).await;
        let batch = corpus::sample("vk/011_longpoll_updates.json");
        fake.push(batch["updates"].as_array().unwrap().iter().cloned());
        (leads, inbound) = (2, 2);
        wait_for(
            &db,
            "SELECT COUNT(*) FROM inbound_messages",
            2,
            Duration::from_secs(10),
            &daemon,
        )
        .await;
        assert_eq!(count(&db, "SELECT COUNT(*) FROM leads").await, 2);
        let ts = db
            .row(
                "SELECT value FROM channel_state WHERE channel_id = 'vk' AND cursor_key = $1",
                "ts",
            )
            .await
            .expect("the ts is stored with the events");
        assert_eq!(ts["value"].as_deref(), Some("1843"), "011's next_ts");
        let product = lead_of(&db, "msg:700000011:202").await;
        assert_eq!(product["assignee_user"].as_deref(), Some("pavel"));
    }
    for entry in corpus::entries("vk") {
        let file = entry["file"].as_str().unwrap();
        let kind = entry["kind"].as_str().unwrap_or("");
        let exp = &entry["expect"];
        // Long-poll protocol samples and API answers have their own tests.
        if matches!(
            kind,
            "longpoll_batch" | "longpoll_failed" | "api_response" | "api_error"
        ) {
            continue;
        }
        let raw = raw_sample(file);
        let stored_now;
        match way {
            Way::Callback => {
                let reply = post(&cfg, "vk", raw).await;
                let ctx = format!("{file}: HTTP {} {}", reply.status, reply.body);
                if let Some(not) = exp["http_status_not"].as_u64() {
                    assert_ne!(u64::from(reply.status), not, "{ctx}");
                    assert!(reply.status >= 400, "{ctx}");
                } else if kind == "malformed" && exp["error"] == "truncated JSON" {
                    assert_eq!(reply.status, 400, "{ctx}");
                } else {
                    assert_eq!(reply.status, 200, "{ctx}");
                }
                if let Some(want) = exp["response_body"].as_str() {
                    assert_eq!(reply.body, want, "{ctx}");
                }
                if let Some(err) = exp["error"].as_str()
                    && reply.status != 200
                {
                    assert!(reply.body.contains(err), "{ctx}: expected {err:?}");
                }
                stored_now = reply.status == 200 && kind != "confirmation";
            }
            Way::LongPoll => {
                // No confirmation, secret or HTTP framing in long poll; a
                // truncated answer is a peer error, tested below.
                if matches!(kind, "confirmation" | "bad_secret") || exp["error"] == "truncated JSON"
                {
                    continue;
                }
                let sample: Value = serde_json::from_slice(&raw).unwrap();
                fake.push([vk::as_update(&sample)]);
                stored_now = true;
            }
        }
        if stored_now {
            inbound += 1;
        }
        if exp["lead"] == true {
            leads += 1;
        }
        wait_for(
            &db,
            "SELECT COUNT(*) FROM inbound_messages",
            inbound,
            Duration::from_secs(10),
            &daemon,
        )
        .await;
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM leads").await,
            leads,
            "{file}: leads"
        );
        if !stored_now {
            continue;
        }
        let row = last_inbound(&db).await;
        let want = if exp["lead"] == true {
            "lead_created"
        } else if kind == "malformed" {
            "invalid"
        } else {
            disposition(exp["disposition"].as_str().unwrap_or("?"))
        };
        assert_eq!(row["disposition"].as_deref(), Some(want), "{file}: {row:?}");
        if let Some(err) = exp["error"].as_str() {
            let reason = row["reason"].clone().unwrap_or_default();
            assert!(
                reason.contains(err),
                "{file}: reason {reason:?}, expected {err:?}"
            );
        }
        if exp["lead"] != true {
            continue;
        }
        let source_ref = row["source_ref"].clone().unwrap();
        let lead = lead_of(&db, &source_ref).await;
        let fields: Value =
            serde_json::from_str(lead["fields"].as_deref().unwrap_or("{}")).unwrap();
        if let Some(user) = exp["vk_user_id"].as_u64() {
            assert_eq!(
                lead["messenger"].as_deref(),
                Some(format!("vk:{user}").as_str()),
                "{file}"
            );
            assert_eq!(
                fields["vk_profile"],
                format!("https://vk.com/id{user}"),
                "{file}"
            );
        }
        if let Some(product) = exp["product"].as_str() {
            assert_eq!(lead["product"].as_deref(), Some(product), "{file}");
            assert_eq!(
                lead["assignee_user"].as_deref(),
                Some("pavel"),
                "{file}: product routing"
            );
            for key in ["product_id", "price", "currency"] {
                assert_eq!(fields[key], exp[key], "{file}: {key}");
            }
        }
        for key in ["utm_source", "utm_campaign"] {
            if let Some(want) = exp[key].as_str() {
                assert_eq!(lead[key].as_deref(), Some(want), "{file}: {key}");
            }
        }
    }
    // 015: users.get names the sender of 002.
    let fedor = lead_of(&db, "msg:700000001:101").await;
    assert_eq!(fedor["name"].as_deref(), Some("Фёдор Белов"));
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM activities").await,
        1,
        "010 joined 002's lead"
    );

    // A redelivery (VK retries what was not answered `ok`) is one item.
    let before = count(&db, "SELECT COUNT(*) FROM inbound_messages").await;
    match way {
        Way::Callback => {
            for _ in 0..3 {
                let reply = post(&cfg, "vk", raw_sample("vk/002_message_new.json")).await;
                assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
            }
        }
        Way::LongPoll => {
            let again = corpus::sample("vk/002_message_new.json");
            fake.push([vk::as_update(&again), vk::as_update(&again)]);
            let after = fake.head();
            // Wait until the daemon polled past the repeats.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !fake.polls().iter().any(|p| p.ts >= after) {
                assert!(Instant::now() < deadline, "no poll past ts {after}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM inbound_messages").await,
        before
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM leads").await, leads);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn callback_corpus_on_sqlite() {
    replay(Way::Callback, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn callback_corpus_on_postgres() {
    let Some(pg) = pg::server() else { return };
    replay(Way::Callback, Some(pg.create_database())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn long_poll_corpus_on_sqlite() {
    replay(Way::LongPoll, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn long_poll_corpus_on_postgres() {
    let Some(pg) = pg::server() else { return };
    replay(Way::LongPoll, Some(pg.create_database())).await;
}

async fn lp_daemon(fake: &FakeVk, db_url: Option<String>, extra: &str) -> (TestConfig, Daemon, Db) {
    let cfg = config(
        db_url,
        &[("vk", channel_toml(fake, Way::LongPoll, extra))],
        ROUTING,
    );
    let daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    fake.wait_for_polls(1, Duration::from_secs(20)).await;
    (cfg, daemon, db)
}

async fn stored_ts(db: &Db, channel: &str) -> Option<String> {
    db.row(
        &format!(
            "SELECT value FROM channel_state WHERE channel_id = '{channel}' AND cursor_key = $1"
        ),
        "ts",
    )
    .await
    .and_then(|r| r["value"].clone())
}

/// failed 1: go on with the answer's ts; 2: new key, same ts (the events
/// already waiting are fetched); 3: new key and ts.
#[tokio::test(flavor = "multi_thread")]
async fn long_poll_failed_answers_follow_the_protocol() {
    let fake = FakeVk::start(100).await;
    let (_cfg, daemon, db) = lp_daemon(&fake, None, "").await;
    let rows = "SELECT COUNT(*) FROM inbound_messages";

    fake.push([vk::message_new(800_000_001, 1, "first")]);
    wait_for(&db, rows, 1, Duration::from_secs(10), &daemon).await;
    assert_eq!(stored_ts(&db, "vk").await.as_deref(), Some("101"));

    // 2: the key expires while an event waits; it must still arrive.
    let servers = fake.calls("groups.getLongPollServer");
    let key = fake.key();
    fake.push_then_fail([vk::message_new(800_000_002, 1, "during key change")], 2);
    wait_for(&db, rows, 2, Duration::from_secs(10), &daemon).await;
    assert_eq!(fake.calls("groups.getLongPollServer"), servers + 1);
    let after: Vec<_> = fake.polls().into_iter().filter(|p| p.key != key).collect();
    assert_eq!(
        after.first().map(|p| p.ts),
        Some(101),
        "kept its ts: {after:?}"
    );
    assert_eq!(stored_ts(&db, "vk").await.as_deref(), Some("102"));

    // 1: history outdated; continue with the ts in the answer.
    fake.forget_before(150);
    fake.push((0..60).map(|i| vk::message_new(800_000_100 + i, 1, "lost")));
    fake.fail_next_poll(1);
    let head = fake.head();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fake.polls().iter().any(|p| p.ts == head) {
        assert!(
            Instant::now() < deadline,
            "no poll with the new ts {head}: {:?}",
            fake.polls()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fake.push([vk::message_new(800_000_003, 1, "after failed 1")]);
    wait_for(
        &db,
        "SELECT COUNT(*) FROM inbound_messages WHERE text = 'after failed 1'",
        1,
        Duration::from_secs(10),
        &daemon,
    )
    .await;

    // 3: key and history lost; a new key and ts from getLongPollServer.
    let servers = fake.calls("groups.getLongPollServer");
    fake.fail_next_poll(3);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.calls("groups.getLongPollServer") == servers {
        assert!(
            Instant::now() < deadline,
            "failed 3 did not fetch a new key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new_key = fake.key();
    let head = fake.head();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fake
        .polls()
        .iter()
        .any(|p| p.key == new_key && p.ts == head)
    {
        assert!(
            Instant::now() < deadline,
            "no poll with the new key and ts: {:?}",
            fake.polls()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fake.push([vk::message_new(800_000_004, 1, "after failed 3")]);
    wait_for(
        &db,
        "SELECT COUNT(*) FROM inbound_messages WHERE text = 'after failed 3'",
        1,
        Duration::from_secs(10),
        &daemon,
    )
    .await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM inbound_messages WHERE text = 'lost'"
        )
        .await,
        0,
        "events VK no longer has are not invented"
    );
    assert_eq!(stored_ts(&db, "vk").await, Some(fake.head().to_string()));
    db.close().await;
}

/// SIGKILL while events keep arriving: after restarts every event is
/// stored exactly once (the ts only moves with the events it covers).
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_long_poll_then_restart_stores_every_event_once() {
    const EVENTS: i64 = 120;
    const USERS: i64 = 9;
    let fake = FakeVk::start(5000).await;
    let (_cfg, mut daemon, db) = lp_daemon(&fake, None, "wait = \"2s\"\n").await;
    let feeder = {
        let fake = fake.clone();
        tokio::spawn(async move {
            for i in 0..EVENTS {
                let user = 810_000_000 + i % USERS;
                fake.push([vk::message_new(user, i / USERS + 1, &format!("event {i}"))]);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    for pause in [250, 400, 300] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        daemon.restart();
    }
    feeder.await.unwrap();
    wait_for(
        &db,
        "SELECT COUNT(*) FROM inbound_messages",
        EVENTS,
        Duration::from_secs(30),
        &daemon,
    )
    .await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(DISTINCT source_ref) FROM inbound_messages"
        )
        .await,
        EVENTS
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM leads").await,
        USERS,
        "one lead per person"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM activities").await,
        EVENTS - USERS,
        "every later message is one activity"
    );
    assert_eq!(
        stored_ts(&db, "vk").await,
        Some((5000 + EVENTS).to_string())
    );
    // Each start resumed from the committed ts: no poll went back before it
    // except to re-fetch what was not committed yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM inbound_messages").await,
        EVENTS
    );
    db.close().await;
}

/// One message seen by long poll and then, after the channel switched to
/// Callback, delivered again by VK: one item, one lead.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_by_long_poll_and_by_callback_is_one_item() {
    let fake = FakeVk::start(10).await;
    let (cfg, daemon, db) = lp_daemon(&fake, None, "").await;
    let card = corpus::sample("vk/003_message_market_product.json");
    fake.push([vk::as_update(&card)]);
    wait_for(
        &db,
        "SELECT COUNT(*) FROM leads",
        1,
        Duration::from_secs(10),
        &daemon,
    )
    .await;

    cfg.write(
        "channels.d/vk.toml",
        &channel_toml(&fake, Way::Callback, ""),
    );
    daemon.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = post(&cfg, "vk", raw_sample("vk/003_message_market_product.json")).await;
        if reply.status == 200 {
            assert_eq!(reply.body, "ok");
            break;
        }
        assert_eq!(reply.status, 409, "{}", reply.body);
        assert!(
            Instant::now() < deadline,
            "the reload did not switch the channel to callback"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(&db, "SELECT COUNT(*) FROM inbound_messages").await, 1);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM leads").await, 1);
    db.close().await;
}

/// users.get answering 6 and 10 is retried after a pause: the lead gets its
/// name. A revoked token (5) stops the long-poll channel, with the reason
/// in its status, and only that channel: a Callback channel goes on storing
/// (without names).
#[tokio::test(flavor = "multi_thread")]
async fn api_errors_back_off_or_stop_the_channel() {
    let fake = FakeVk::start(1).await;
    let cfg = config(
        None,
        &[
            ("lp", channel_toml(&fake, Way::LongPoll, "")),
            ("cb", channel_toml(&fake, Way::Callback, "")),
        ],
        ROUTING,
    );
    let daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    fake.wait_for_polls(1, Duration::from_secs(20)).await;

    let names = fake.calls("users.get");
    fake.set_name(820_000_001, "Ирина", "Соколова");
    fake.fail_next_calls(&[6, 10]);
    fake.push([vk::message_new(820_000_001, 1, "Нужна консультация")]);
    wait_for(
        &db,
        "SELECT COUNT(*) FROM leads",
        1,
        Duration::from_secs(15),
        &daemon,
    )
    .await;
    let lead = lead_of(&db, "msg:820000001:1").await;
    assert_eq!(
        lead["name"].as_deref(),
        Some("Ирина Соколова"),
        "retried after 6 and 10"
    );
    assert_eq!(fake.calls("users.get"), names + 3);

    fake.revoke_token();
    fake.fail_next_poll(2);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let row = db
            .row(
                "SELECT value FROM channel_state WHERE channel_id = 'lp' AND cursor_key = $1",
                "last_error",
            )
            .await;
        if let Some(value) = row.and_then(|r| r["value"].clone()) {
            break value;
        }
        assert!(
            Instant::now() < deadline,
            "no channel error recorded\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.contains("authentication failed") && status.contains("error 5"),
        "{status}"
    );
    let polls = fake.polls().len();
    let servers = fake.calls("groups.getLongPollServer");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fake.polls().len(),
        polls,
        "a refused token is not retried at once"
    );
    assert_eq!(fake.calls("groups.getLongPollServer"), servers);
    assert!(daemon.log_text().contains("fix the channel's settings"));

    let mut message = corpus::sample("vk/002_message_new.json");
    message["object"]["message"]["from_id"] = serde_json::json!(820_000_002);
    message["object"]["message"]["peer_id"] = serde_json::json!(820_000_002);
    let reply = post(&cfg, "cb", message.to_string().into_bytes()).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
    let lead = lead_of(&db, "msg:820000002:101").await;
    assert_eq!(
        lead["name"], None,
        "stored without the name the API refused"
    );
    db.close().await;
}

/// A burst of Callback messages from many people: names are looked up in
/// few users.get calls, never above the configured rate (the fake answers
/// error 6 beyond 3 calls a second, as VK does).
#[tokio::test(flavor = "multi_thread")]
async fn users_get_stays_under_the_rate_limit() {
    const PEOPLE: i64 = 40;
    let fake = FakeVk::start(1).await;
    fake.set_rate_limit(3);
    let cfg = config(
        None,
        &[(
            "cb",
            channel_toml(&fake, Way::Callback, "api_requests_per_second = 3\n"),
        )],
        ROUTING,
    );
    let _daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    let mut posts = Vec::new();
    for i in 0..PEOPLE {
        let mut message = corpus::sample("vk/002_message_new.json");
        message["object"]["message"]["from_id"] = serde_json::json!(830_000_000 + i);
        message["object"]["message"]["peer_id"] = serde_json::json!(830_000_000 + i);
        let cfg_url = cfg.base_url();
        posts.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{cfg_url}/vk/cb"))
                .body(message.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for p in posts {
        assert_eq!(p.await.unwrap(), 200);
    }
    assert_eq!(count(&db, "SELECT COUNT(*) FROM leads").await, PEOPLE);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM leads WHERE name LIKE 'Клиент%'").await,
        PEOPLE,
        "every lead named"
    );
    assert_eq!(fake.rate_errors(), 0, "never above VK's limit");
    assert!(
        fake.calls("users.get") < 10,
        "batched: {} calls",
        fake.calls("users.get")
    );
    // Cached: the same people again cost no call.
    let calls = fake.calls("users.get");
    let mut again = corpus::sample("vk/002_message_new.json");
    again["object"]["message"]["from_id"] = serde_json::json!(830_000_000);
    again["object"]["message"]["peer_id"] = serde_json::json!(830_000_000);
    again["object"]["message"]["conversation_message_id"] = serde_json::json!(555);
    assert_eq!(
        post(&cfg, "cb", again.to_string().into_bytes())
            .await
            .status,
        200
    );
    assert_eq!(fake.calls("users.get"), calls);
    db.close().await;
}

/// The store down: Callback answers 503 (VK redelivers), the long poll
/// pauses without moving its ts; when the database is back everything
/// arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_down_callback_refuses_long_poll_pauses_nothing_lost() {
    let Some(pg) = pg::server() else { return };
    let fake = FakeVk::start(300).await;
    let cfg = config(
        Some(pg.create_database()),
        &[
            ("lp", channel_toml(&fake, Way::LongPoll, "wait = \"2s\"\n")),
            ("cb", channel_toml(&fake, Way::Callback, "")),
        ],
        ROUTING,
    );
    let daemon = Daemon::start(&cfg);
    fake.wait_for_polls(1, Duration::from_secs(20)).await;
    fake.push([vk::message_new(840_000_001, 1, "before the outage")]);
    let db = Db::open(&cfg.db_url).await;
    wait_for(
        &db,
        "SELECT COUNT(*) FROM inbound_messages",
        1,
        Duration::from_secs(10),
        &daemon,
    )
    .await;
    db.close().await;

    pg.stop();
    let reply = post(&cfg, "cb", raw_sample("vk/003_message_market_product.json")).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    fake.push((2..=6).map(|i| vk::message_new(840_000_000 + i, 1, "during the outage")));
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.start_again();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = post(&cfg, "cb", raw_sample("vk/003_message_market_product.json")).await;
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!(
            Instant::now() < deadline,
            "still 503 after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let db = Db::open(&cfg.db_url).await;
    wait_for(
        &db,
        "SELECT COUNT(*) FROM inbound_messages",
        7,
        Duration::from_secs(40),
        &daemon,
    )
    .await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM leads").await, 7);
    assert_eq!(stored_ts(&db, "lp").await, Some(fake.head().to_string()));
    db.close().await;
}
