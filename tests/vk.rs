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
