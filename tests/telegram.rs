//! Telegram: the corpus through the webhook and through long polling
//! against a fake Bot API server, on SQLite and PostgreSQL; crashes while
//! polling; 401/409/429; a store that is down; greetings.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::corpus;
use support::daemon::{Daemon, TEAM, TestConfig};
use support::db::Db;
use support::pg;
use support::telegram::{FakeBotApi, Injected, TOKEN};

const SECRET: &str = "tg_test_secret";
const CHANNEL: &str = "shop";

fn channel_file(api: &FakeBotApi, mode: &str, extra: &str) -> String {
    let mut file = format!(
        "kind = \"telegram\"\nresponsible = \"role:sales\"\n[telegram]\ntoken_file = \"bot.token\"\napi_url = \"{}\"\nmode = \"{mode}\"\npoll_timeout = \"2s\"\n",
        api.url()
    );
    if mode == "webhook" {
        file.push_str(&format!(
            "webhook_secret = \"{SECRET}\"\nwebhook_url = \"https://leads.example/telegram/{CHANNEL}\"\n"
        ));
    }
    file + extra
}

fn config(db_url: Option<String>, api: &FakeBotApi, mode: &str, extra: &str) -> TestConfig {
    let file = channel_file(api, mode, extra);
    let cfg = TestConfig::new(
        db_url,
        &[(CHANNEL, file.as_str())],
        TEAM,
        "default = \"role:sales\"\n",
    );
    cfg.write("bot.token", &format!("{TOKEN}\n"));
    cfg
}

/// The updates of a corpus file: one, or a getUpdates envelope's list.
fn updates_of(file: &str) -> Vec<Value> {
    // A sample that is not JSON stands for one delivery of its raw text.
    let Ok(v) = serde_json::from_str::<Value>(&raw_text(file)) else {
        return vec![Value::Null];
    };
    match v.get("result").and_then(Value::as_array) {
        Some(list) if v.get("ok").is_some() => list.clone(),
        _ => vec![v],
    }
}

fn raw_text(file: &str) -> String {
    std::fs::read_to_string(corpus::dir().join(file)).unwrap()
}

/// The `source_ref` leadgate gives a readable update.
fn source_ref_of(update: &Value) -> Option<String> {
    update["update_id"].as_i64()?;
    for key in ["message", "channel_post", "business_message"] {
        if let Some(m) = update.get(key) {
            return Some(format!("{}:{}", m["chat"]["id"], m["message_id"]));
        }
    }
    for key in [
        "edited_message",
        "edited_channel_post",
        "edited_business_message",
    ] {
        if let Some(m) = update.get(key) {
            return Some(format!(
                "{}:{}:edit:{}",
                m["chat"]["id"], m["message_id"], m["edit_date"]
            ));
        }
    }
    update
        .get("callback_query")
        .map(|q| format!("callback:{}", q["id"].as_str().unwrap_or("")))
}

const INBOUND: &str = "SELECT disposition, reason, CAST(lead_id AS TEXT) AS lead_id, sender_name, sender_phone, \
     CAST(fields AS TEXT) AS fields, CAST(attachments AS TEXT) AS attachments \
     FROM inbound_messages WHERE channel_id = 'shop' AND source_ref = $1";

const LEAD: &str = "SELECT name, phone, messenger, utm_campaign, product, CAST(contact_id AS TEXT) AS contact_id \
     FROM leads WHERE id = $1";

async fn inbound_by_ref(
    db: &Db,
    source_ref: &str,
) -> Option<std::collections::BTreeMap<String, Option<String>>> {
    db.row(INBOUND, source_ref).await
}

/// Check one readable sample's manifest expectation against what is stored.
async fn check_sample(db: &Db, file: &str, exp: &Value, update: &Value) {
    let source_ref = source_ref_of(update).unwrap_or_else(|| panic!("{file}: no source_ref"));
    let row = inbound_by_ref(db, &source_ref)
        .await
        .unwrap_or_else(|| panic!("{file}: nothing stored as {source_ref}"));
    let ctx = format!("{file} ({source_ref}): {row:?}");
    let want = if exp["lead"] == true {
        "lead_created"
    } else {
        match exp["disposition"].as_str().unwrap_or("?") {
            // The manifest's descriptive names in leadgate's vocabulary.
            "not_private_chat" | "from_bot" => "not_lead",
            other => other,
        }
    };
    // An envelope's expectation covers its batch, checked by the caller.
    if exp.get("leads").is_none() {
        assert_eq!(row["disposition"].as_deref(), Some(want), "{ctx}");
    }
    let fields: Value = serde_json::from_str(row["fields"].as_deref().unwrap_or("{}")).unwrap();
    let attachments: Value =
        serde_json::from_str(row["attachments"].as_deref().unwrap_or("[]")).unwrap();
    if let Some(product) = exp["product"].as_str() {
        assert_eq!(fields["product"].as_str(), Some(product), "{ctx}: product");
    }
    if let Some(list) = exp["attachments"].as_array() {
        let files = fields["telegram_files"].as_str().unwrap_or("");
        for want in list {
            let kind = want["type"].as_str().unwrap();
            let line = files
                .lines()
                .find(|l| l.starts_with(&format!("{kind} ")))
                .unwrap_or_else(|| panic!("{ctx}: no {kind} in telegram_files {files:?}"));
            if let Some(id) = want["file_id"].as_str() {
                assert_eq!(line, format!("{kind} {id}"), "{ctx}: file id");
            }
            if let Some(name) = want["name"].as_str() {
                assert!(
                    attachments
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|a| a["name"] == name),
                    "{ctx}: attachment {name} in {attachments}"
                );
            }
        }
    }
    if let Some(thread) = exp["thread_of"].as_str() {
        let first = &updates_of(thread)[0];
        let first_row = inbound_by_ref(db, &source_ref_of(first).unwrap())
            .await
            .unwrap();
        assert_eq!(
            row["lead_id"], first_row["lead_id"],
            "{ctx}: joins {thread}"
        );
    }
    if exp["lead"] != true {
        if let Some(phone) = exp["phone"].as_str() {
            assert_eq!(row["sender_phone"].as_deref(), Some(phone), "{ctx}: phone");
            // The shared phone now identifies the contact of the lead.
            let lead = db
                .row(
                    LEAD,
                    row["lead_id"].clone().unwrap().parse::<i64>().unwrap(),
                )
                .await
                .unwrap();
            let contact = lead["contact_id"].clone().unwrap();
            assert_eq!(
                db.int(
                    "SELECT COUNT(*) FROM contact_identities WHERE kind = 'phone' AND value = $1",
                    Some(phone)
                )
                .await,
                1,
                "{ctx}"
            );
            assert_eq!(
                db.row(
                    "SELECT CAST(contact_id AS TEXT) AS c FROM contact_identities WHERE kind = 'phone' AND value = $1",
                    phone
                )
                .await
                .unwrap()["c"]
                    .as_deref(),
                Some(contact.as_str()),
                "{ctx}: the phone joins the sender's contact"
            );
        }
        return;
    }
    let lead_id: i64 = row["lead_id"].clone().unwrap().parse().unwrap();
    let lead = db.row(LEAD, lead_id).await.unwrap();
    if let Some(name) = exp["name"].as_str() {
        assert_eq!(lead["name"].as_deref(), Some(name), "{ctx}: name");
    }
    if let Some(phone) = exp["phone"].as_str() {
        assert_eq!(lead["phone"].as_deref(), Some(phone), "{ctx}: phone");
    }
    if let Some(id) = exp["telegram_user_id"].as_i64() {
        assert_eq!(
            lead["messenger"].as_deref(),
            Some(format!("telegram:{id}").as_str()),
            "{ctx}: messenger"
        );
    }
    if let Some(username) = exp["telegram_username"].as_str() {
        assert_eq!(
            db.int(
                "SELECT COUNT(*) FROM contact_identities WHERE kind = 'telegram' AND value = $1",
                Some(username)
            )
            .await,
            1,
            "{ctx}: username"
        );
    }
    if let Some(campaign) = exp["campaign"].as_str() {
        assert_eq!(
            lead["utm_campaign"].as_deref(),
            Some(campaign),
            "{ctx}: campaign"
        );
    }
}

/// The stored invalid row whose reason names `error`.
async fn invalid_row_count(db: &Db, error: &str) -> i64 {
    db.int(
        "SELECT COUNT(*) FROM inbound_messages WHERE channel_id = 'shop' AND disposition = 'invalid' AND reason LIKE $1",
        Some(&format!("%{error}%")),
    )
    .await
}

async fn post(
    cfg: &TestConfig,
    body: impl Into<reqwest::Body>,
    secret: Option<&str>,
) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/telegram/{CHANNEL}", cfg.base_url()))
        .header("content-type", "application/json")
        .body(body);
    if let Some(s) = secret {
        req = req.header("X-Telegram-Bot-Api-Secret-Token", s);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn count(db: &Db, table: &str) -> i64 {
    db.int(&format!("SELECT COUNT(*) FROM {table}"), None).await
}

async fn webhook_replay(db_url: Option<String>) {
    let api = FakeBotApi::start().await;
    let cfg = config(db_url, &api, "webhook", "");
    let _daemon = Daemon::start(&cfg);
    api.wait_for("setWebhook", Duration::from_secs(10), |a| {
        a.webhook().is_some()
    })
    .await;
    assert_eq!(
        api.webhook(),
        Some((
            format!("https://leads.example/telegram/{CHANNEL}"),
            SECRET.to_owned()
        )),
        "the webhook is registered with its secret token"
    );
    let db = Db::open(&cfg.db_url).await;
    let mut leads = 0;
    let mut stored = 0;
    for entry in corpus::entries("telegram") {
        let file = entry["file"].as_str().unwrap();
        let exp = &entry["expect"];
        let updates = updates_of(file);
        let envelope = updates.len() > 1;
        // A webhook carries one update per request; an envelope's updates
        // arrive one by one.
        for update in &updates {
            let body = if envelope {
                update.to_string()
            } else {
                raw_text(file)
            };
            let (status, text) = post(&cfg, body, Some(SECRET)).await;
            let ctx = format!("{file}: HTTP {status} {text}");
            if let Some(error) = exp["error"].as_str()
                && serde_json::from_str::<Value>(&raw_text(file)).is_err()
            {
                // Not JSON at all: refused, nothing stored, Telegram's
                // delivery log says why.
                assert_eq!(status, 400, "{ctx}");
                assert!(
                    text.to_lowercase().contains(&error.to_lowercase()),
                    "{ctx}: {error}"
                );
                continue;
            }
            assert_eq!(status, 200, "{ctx}");
            stored += 1;
        }
        if exp["lead"] == true {
            leads += exp["leads"].as_i64().unwrap_or(1);
        }
        assert_eq!(count(&db, "leads").await, leads, "{file}: leads");
        assert_eq!(
            count(&db, "inbound_messages").await,
            stored,
            "{file}: inbound rows"
        );
        if let Some(error) = exp["error"].as_str() {
            if serde_json::from_str::<Value>(&raw_text(file)).is_ok() {
                assert_eq!(invalid_row_count(&db, error).await, 1, "{file}: {error}");
            }
            continue;
        }
        if let Some(activities) = exp["activities"].as_i64() {
            let refs: Vec<String> = updates.iter().filter_map(source_ref_of).collect();
            let mut seen = 0;
            for r in &refs {
                let row = inbound_by_ref(&db, r).await.unwrap();
                if row["disposition"].as_deref() == Some("activity_added") {
                    seen += 1;
                }
            }
            assert_eq!(seen, activities, "{file}: activities");
        }
        for update in &updates {
            check_sample(&db, file, exp, update).await;
        }
    }
    // Telegram repeats a delivery it got no 200 for: stored once.
    let (status, _) = post(
        &cfg,
        raw_text("telegram/001_text_new_user.json"),
        Some(SECRET),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        count(&db, "inbound_messages").await,
        stored,
        "a repeat is not stored again"
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_corpus_on_sqlite() {
    webhook_replay(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_corpus_on_postgres() {
    let Some(pg) = pg::server() else { return };
    webhook_replay(Some(pg.create_database())).await;
}

async fn cursor(db: &Db) -> Option<String> {
    db.row(
        "SELECT value FROM channel_state WHERE channel_id = 'shop' AND cursor_key = 'updates'",
        0i64,
    )
    .await
    .and_then(|r| r["value"].clone())
}

/// Every update below the offset being confirmed must already be stored.
fn confirm_only_committed(api: &FakeBotApi, db_url: &str) {
    let url = db_url.to_owned();
    api.check_confirmations(Arc::new(move |updates: Vec<Value>| {
        let url = url.clone();
        Box::pin(async move {
            let db = Db::open(&url).await;
            let mut missing = Vec::new();
            for u in &updates {
                if let Some(r) = source_ref_of(u)
                    && inbound_by_ref(&db, &r).await.is_none()
                {
                    missing.push(r);
                }
            }
            db.close().await;
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("confirmed before commit: {missing:?}"))
            }
        })
    }));
}

async fn polling_replay(db_url: Option<String>) {
    let api = FakeBotApi::start().await;
    let cfg = config(db_url, &api, "polling", "");
    confirm_only_committed(&api, &cfg.db_url);
    let _daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    let entries = corpus::entries("telegram");
    // The first batch ends with the envelope: its expectation names the
    // offset that confirms it.
    let split = entries
        .iter()
        .position(|e| e["expect"].get("next_offset").is_some())
        .unwrap();
    for entry in &entries[..=split] {
        for u in updates_of(entry["file"].as_str().unwrap()) {
            api.push(u);
        }
    }
    let next = entries[split]["expect"]["next_offset"].as_i64().unwrap();
    api.wait_for("the first batch confirmed", Duration::from_secs(20), |a| {
        a.highest_offset() == Some(next)
    })
    .await;
    assert_eq!(cursor(&db).await, Some((next - 1).to_string()));
    let mut skipped = Vec::new();
    for entry in &entries[split + 1..] {
        let file = entry["file"].as_str().unwrap();
        if serde_json::from_str::<Value>(&raw_text(file)).is_err() {
            // Cannot be an element of a getUpdates answer: that would be an
            // answer that is not JSON (a transport failure, retried).
            skipped.push(file);
            continue;
        }
        for u in updates_of(file) {
            api.push(u);
        }
    }
    assert_eq!(skipped, ["telegram/014_truncated.json"]);
    api.wait_for("everything confirmed", Duration::from_secs(20), |a| {
        a.pending() == 0
    })
    .await;
    for entry in &entries {
        let file = entry["file"].as_str().unwrap();
        let exp = &entry["expect"];
        if let Some(error) = exp["error"].as_str() {
            if !skipped.contains(&file) {
                assert_eq!(invalid_row_count(&db, error).await, 1, "{file}: {error}");
            }
            continue;
        }
        for update in updates_of(file) {
            check_sample(&db, file, exp, &update).await;
        }
    }
    let leads: i64 = entries
        .iter()
        .filter(|e| e["expect"]["lead"] == true)
        .map(|e| e["expect"]["leads"].as_i64().unwrap_or(1))
        .sum();
    assert_eq!(count(&db, "leads").await, leads);
    assert_eq!(cursor(&db).await.as_deref(), Some("900000016"));
    assert_eq!(api.violations(), Vec::<String>::new());
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_corpus_on_sqlite() {
    polling_replay(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_corpus_on_postgres() {
    let Some(pg) = pg::server() else { return };
    polling_replay(Some(pg.create_database())).await;
}

/// A private text message from a new person: update `910_000_000 + n`.
fn synthetic(n: i64) -> Value {
    let user = 600_000_000 + n;
    json!({"update_id": 910_000_000 + n, "message": {
        "message_id": n, "date": 1763283300,
        "from": {"id": user, "is_bot": false, "first_name": format!("Клиент {n}")},
        "chat": {"id": user, "type": "private", "first_name": format!("Клиент {n}")},
        "text": format!("Заявка номер {n}")}})
}

async fn assert_each_once(db: &Db, total: i64) {
    assert_eq!(
        count(db, "inbound_messages").await,
        total,
        "every update stored exactly once"
    );
    assert_eq!(count(db, "leads").await, total);
    let refs: HashSet<Option<String>> = db
        .texts("SELECT source_ref FROM inbound_messages")
        .await
        .into_iter()
        .collect();
    for n in 1..=total {
        let user = 600_000_000 + n;
        assert!(
            refs.contains(&Some(format!("{user}:{n}"))),
            "update {n} stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_while_polling_loses_nothing_and_stores_nothing_twice() {
    let api = FakeBotApi::start().await;
    let cfg = config(None, &api, "polling", "batch_size = 7\n");
    confirm_only_committed(&api, &cfg.db_url);
    let mut daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    let total = 240;
    let mut next = 1;
    for round in 0..6 {
        for _ in 0..40 {
            api.push(synthetic(next));
            next += 1;
        }
        // Let it commit some batches, then kill it mid-stream: between a
        // commit and the next getUpdates, or in the middle of a long poll.
        tokio::time::sleep(Duration::from_millis(40 + 30 * round)).await;
        daemon.kill9();
        daemon.restart();
    }
    api.wait_for("every update confirmed", Duration::from_secs(30), |a| {
        a.pending() == 0
    })
    .await;
    assert_each_once(&db, total).await;
    assert_eq!(cursor(&db).await, Some((910_000_000 + total).to_string()));
    assert_eq!(api.violations(), Vec::<String>::new());
    let offsets = api.offsets();
    assert!(
        offsets.windows(2).all(|w| w[0] <= w[1]),
        "the confirmed offset never goes back: {offsets:?}"
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_in_the_middle_of_a_long_poll_skips_nothing() {
    let api = FakeBotApi::start().await;
    let cfg = config(None, &api, "polling", "");
    confirm_only_committed(&api, &cfg.db_url);
    let mut daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    api.push(synthetic(1));
    api.wait_for("the first update", Duration::from_secs(10), |a| {
        a.highest_offset() == Some(910_000_002)
    })
    .await;
    // Now it waits in a long poll; stop it there, gracefully, and let
    // updates pile up while it is down.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(daemon.terminate().success());
    for n in 2..=5 {
        api.push(synthetic(n));
    }
    daemon.restart();
    api.wait_for("the rest", Duration::from_secs(10), |a| a.pending() == 0)
        .await;
    assert_each_once(&db, 5).await;
    // And once more with SIGKILL while it long-polls.
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.kill9();
    api.push(synthetic(6));
    daemon.restart();
    api.wait_for("the last", Duration::from_secs(10), |a| a.pending() == 0)
        .await;
    assert_each_once(&db, 6).await;
    assert_eq!(api.violations(), Vec::<String>::new());
    db.close().await;
}

async fn last_error(db: &Db) -> String {
    db.row(
        "SELECT value FROM channel_state WHERE channel_id = 'shop' AND cursor_key = 'last_error'",
        0i64,
    )
    .await
    .and_then(|r| r["value"].clone())
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn conflict_409_is_reported_and_not_spun_on() {
    let api = FakeBotApi::start().await;
    api.set_always_conflict(true);
    let cfg = config(None, &api, "polling", "");
    let daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    api.wait_for("a getUpdates", Duration::from_secs(10), |a| {
        !a.calls("getUpdates").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        api.calls("getUpdates").len(),
        1,
        "a conflict is not retried in a loop"
    );
    let error = last_error(&db).await;
    assert!(
        error.contains("409") && error.contains("only one"),
        "the channel's status says what is wrong: {error:?}"
    );
    assert!(!error.contains(TOKEN), "never the token: {error}");
    assert!(daemon.log_text().contains("409"), "logged too");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_deletes_a_webhook_left_from_webhook_mode() {
    let api = FakeBotApi::start().await;
    api.set_webhook("https://old.example/hook", "old");
    let cfg = config(None, &api, "polling", "");
    let _daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    api.push(synthetic(1));
    api.wait_for("the update", Duration::from_secs(10), |a| a.pending() == 0)
        .await;
    assert_eq!(api.webhook(), None);
    assert_eq!(api.calls("deleteWebhook").len(), 1);
    assert_each_once(&db, 1).await;
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_429_is_waited_out() {
    let api = FakeBotApi::start().await;
    api.inject_get_updates(Injected::RetryAfter(2));
    let cfg = config(None, &api, "polling", "");
    let _daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    api.push(synthetic(1));
    api.wait_for("the update", Duration::from_secs(15), |a| a.pending() == 0)
        .await;
    let calls = api.calls("getUpdates");
    assert!(calls.len() >= 2, "{calls:?}");
    let waited = calls[1].duration_since(calls[0]);
    assert!(
        waited >= Duration::from_millis(1900),
        "retry_after 2 is honoured (waited {waited:?})"
    );
    assert_each_once(&db, 1).await;
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_token_is_a_clear_error_and_not_hammered() {
    let api = FakeBotApi::start_with_token("1:another_bot").await;
    let cfg = config(None, &api, "polling", "");
    let daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !last_error(&db).await.contains("401") {
        assert!(Instant::now() < deadline, "no error recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(api.calls("getMe").len(), 1, "retried only slowly");
    let error = last_error(&db).await;
    assert!(error.contains("token"), "{error}");
    assert!(!error.contains(TOKEN) && !daemon.log_text().contains(TOKEN));
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_refuses_wrong_secrets_and_broken_json() {
    let api = FakeBotApi::start().await;
    let cfg = config(None, &api, "webhook", "");
    let _daemon = Daemon::start(&cfg);
    let body = raw_text("telegram/001_text_new_user.json");
    for secret in [None, Some("wrong"), Some("tg_test_secre"), Some("")] {
        let (status, text) = post(&cfg, body.clone(), secret).await;
        assert_eq!(status, 401, "{secret:?}: {text}");
        assert!(text.contains("bad_secret"), "{text}");
    }
    for broken in [
        "",
        "{",
        "[1,",
        "\u{0}",
        "{\"update_id\": 1, \"message\": {\"te",
    ] {
        let (status, text) = post(&cfg, broken, Some(SECRET)).await;
        assert_eq!(status, 400, "{broken:?}: {text}");
        assert!(text.contains("malformed_json"), "{text}");
    }
    let (status, _) = post(&cfg, vec![0xffu8, 0xfe], Some(SECRET)).await;
    assert_eq!(status, 400);
    let db = Db::open(&cfg.db_url).await;
    assert_eq!(count(&db, "inbound_messages").await, 0, "nothing stored");
    // An unknown channel.
    let resp = reqwest::get(format!("{}/telegram/nosuch", cfg.base_url()))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let (status, _) = post(&cfg, body, Some(SECRET)).await;
    assert_eq!(status, 200, "the right secret still works");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn store_down_webhook_answers_503_and_polling_pauses_without_loss() {
    let Some(pg) = pg::server() else { return };
    let db_url = pg.create_database();
    // Two channels on one database: a webhook bot and a polling bot.
    let hook_api = FakeBotApi::start().await;
    let poll_api = FakeBotApi::start().await;
    let hook_file = channel_file(&hook_api, "webhook", "");
    let poll_file = channel_file(&poll_api, "polling", "")
        .replace("mode = \"polling\"", "mode = \"polling\"\nbatch_size = 5");
    let cfg = TestConfig::new(
        Some(db_url.clone()),
        &[
            (CHANNEL, hook_file.as_str()),
            ("poller", poll_file.as_str()),
        ],
        TEAM,
        "default = \"role:sales\"\n",
    );
    cfg.write("bot.token", &format!("{TOKEN}\n"));
    let _daemon = Daemon::start(&cfg);
    poll_api.push(synthetic(1));
    poll_api
        .wait_for("the first update", Duration::from_secs(15), |a| {
            a.pending() == 0
        })
        .await;

    pg.stop();
    let (status, text) = post(
        &cfg,
        raw_text("telegram/001_text_new_user.json"),
        Some(SECRET),
    )
    .await;
    assert_eq!(status, 503, "{text}");
    for n in 2..=4 {
        poll_api.push(synthetic(n));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        poll_api.highest_offset(),
        Some(910_000_002),
        "nothing is confirmed while the store is down"
    );
    pg.start_again();
    let (status, text) = post(
        &cfg,
        raw_text("telegram/001_text_new_user.json"),
        Some(SECRET),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    poll_api
        .wait_for(
            "the updates after the outage",
            Duration::from_secs(60),
            |a| a.pending() == 0,
        )
        .await;
    let db = Db::open(&db_url).await;
    assert_eq!(
        db.int(
            "SELECT COUNT(*) FROM inbound_messages WHERE channel_id = 'poller'",
            None
        )
        .await,
        4,
        "every polled update exactly once"
    );
    assert_eq!(
        db.int(
            "SELECT COUNT(*) FROM inbound_messages WHERE channel_id = 'shop'",
            None
        )
        .await,
        1
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_lead_is_greeted_once_with_a_share_phone_button() {
    let api = FakeBotApi::start().await;
    api.inject_send_message(Injected::RetryAfter(1));
    let cfg = config(
        None,
        &api,
        "polling",
        "greeting = \"Спасибо! Менеджер скоро ответит.\"\nshare_phone_button = \"Отправить телефон\"\n",
    );
    let _daemon = Daemon::start(&cfg);
    for file in [
        "telegram/001_text_new_user.json",
        "telegram/003_contact_shared.json",
        "telegram/008_group_message.json",
        "telegram/016_from_bot_ignored.json",
    ] {
        api.push(corpus::sample(file));
    }
    api.wait_for("the updates", Duration::from_secs(10), |a| a.pending() == 0)
        .await;
    api.wait_for("the greeting", Duration::from_secs(10), |a| {
        !a.sent_messages().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent = api.sent_messages();
    assert_eq!(
        sent.len(),
        1,
        "one greeting, for the one new lead: {sent:?}"
    );
    assert_eq!(sent[0]["chat_id"], 500000001);
    assert_eq!(sent[0]["text"], "Спасибо! Менеджер скоро ответит.");
    let button = &sent[0]["reply_markup"]["keyboard"][0][0];
    assert_eq!(button["text"], "Отправить телефон");
    assert_eq!(button["request_contact"], true);
    let tries = api.calls("sendMessage");
    assert_eq!(tries.len(), 2, "the 429 was retried once");
    assert!(tries[1].duration_since(tries[0]) >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread")]
async fn check_online_names_a_refused_token() {
    let api = FakeBotApi::start().await;
    let cfg = config(None, &api, "polling", "");
    let dir = cfg.path().to_owned();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || support::daemon::cli(&dir, &["check", "--online"]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("token OK (@ourcompany_bot)"), "{out}");

    let other = FakeBotApi::start_with_token("1:another_bot").await;
    let cfg = config(None, &other, "polling", "");
    let dir = cfg.path().to_owned();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || support::daemon::cli(&dir, &["check", "--online"]))
            .await
            .unwrap();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("shop.toml: telegram:") && err.contains("401"),
        "{err}"
    );
    assert!(!err.contains(TOKEN) && !out.contains(TOKEN));
    assert!(other.calls("getUpdates").is_empty(), "only getMe is asked");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_the_file_and_field_of_a_bad_telegram_channel() {
    let api = FakeBotApi::start().await;
    let cfg = config(None, &api, "webhook", "");
    let bad = channel_file(&api, "webhook", "")
        .replace(SECRET, "not a valid secret!")
        .replace("token_file", "token = \"oops\"\n# token_file");
    cfg.write("channels.d/shop.toml", &bad);
    cfg.write(
        "channels.d/site.toml",
        "kind = \"form\"\n[telegram]\ntoken = \"1:a\"\n",
    );
    let dir = cfg.path().to_owned();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || support::daemon::cli(&dir, &["check"]))
            .await
            .unwrap();
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("shop.toml: telegram: `token`"), "{err}");
    assert!(!err.contains("oops"), "a secret is never echoed: {err}");
    assert!(
        err.contains("site.toml: telegram: a [telegram] table belongs to kind = \"telegram\""),
        "{err}"
    );
}

/// Switching a bot between modes by reload: webhook mode registers the
/// webhook; going back to polling deletes it and polls again.
#[tokio::test(flavor = "multi_thread")]
async fn reload_switches_between_polling_and_webhook() {
    let api = FakeBotApi::start().await;
    let cfg = config(None, &api, "polling", "");
    let daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    api.push(synthetic(1));
    api.wait_for("the polled update", Duration::from_secs(10), |a| {
        a.pending() == 0
    })
    .await;

    cfg.write(
        &format!("channels.d/{CHANNEL}.toml"),
        &channel_file(&api, "webhook", ""),
    );
    daemon.signal(libc::SIGHUP);
    api.wait_for("setWebhook", Duration::from_secs(10), |a| {
        a.webhook().is_some()
    })
    .await;
    let (status, text) = post(&cfg, synthetic(2).to_string(), Some(SECRET)).await;
    assert_eq!(status, 200, "{text}");

    cfg.write(
        &format!("channels.d/{CHANNEL}.toml"),
        &channel_file(&api, "polling", ""),
    );
    daemon.signal(libc::SIGHUP);
    api.wait_for("deleteWebhook", Duration::from_secs(10), |a| {
        a.webhook().is_none()
    })
    .await;
    api.push(synthetic(3));
    api.wait_for("polling again", Duration::from_secs(10), |a| {
        a.pending() == 0
    })
    .await;
    let (status, _) = post(&cfg, synthetic(4).to_string(), Some(SECRET)).await;
    assert_eq!(status, 404, "a polling bot takes no webhook deliveries");
    assert_each_once(&db, 3).await;
    db.close().await;
}

/// The Bot API unreachable at first: the poller backs off and reconnects,
/// and nothing queued meanwhile is lost.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_api_is_retried_with_backoff() {
    let port = support::free_port();
    let elsewhere = FakeBotApi::start().await;
    let cfg = config(None, &elsewhere, "polling", "");
    cfg.write(
        &format!("channels.d/{CHANNEL}.toml"),
        &channel_file(&elsewhere, "polling", "")
            .replace(&elsewhere.url(), &format!("http://127.0.0.1:{port}/")),
    );
    let daemon = Daemon::start(&cfg);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let db = Db::open(&cfg.db_url).await;
    assert!(
        last_error(&db).await.contains("network"),
        "the failure is recorded: {:?}",
        last_error(&db).await
    );
    let api = FakeBotApi::start_on(port, TOKEN).await;
    api.push(synthetic(1));
    api.wait_for(
        "the update after reconnecting",
        Duration::from_secs(20),
        |a| a.pending() == 0,
    )
    .await;
    assert_each_once(&db, 1).await;
    assert!(daemon.log_text().contains("reconnecting"));
    db.close().await;
}

/// SIGKILL after a batch is committed and before the getUpdates that
/// confirms it reaches Telegram: the restarted daemon confirms it from its
/// stored cursor and stores none of it again.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_between_commit_and_confirmation_stores_nothing_twice() {
    let api = FakeBotApi::start().await;
    // Queued before the daemon starts, so its first getUpdates takes all
    // five in one batch.
    for n in 1..=5 {
        api.push(synthetic(n));
    }
    api.stall_next_confirmation();
    let cfg = config(None, &api, "polling", "");
    let mut daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    api.wait_for("the confirming getUpdates", Duration::from_secs(10), |a| {
        a.stalled() == 1
    })
    .await;
    assert_eq!(api.pending(), 5, "nothing confirmed yet");
    assert_each_once(&db, 5).await;
    daemon.kill9();
    let before = api.offsets().len();
    daemon.restart();
    api.wait_for(
        "the confirmation after restart",
        Duration::from_secs(10),
        |a| a.pending() == 0,
    )
    .await;
    assert_eq!(
        api.offsets()[before],
        910_000_006,
        "the restarted daemon starts after its stored cursor"
    );
    assert_each_once(&db, 5).await;
    db.close().await;
}
