//! Telephony: the corpus's Mango and Zadarma webhooks against the real
//! daemon, then the call model under shuffled, repeated and lost events.

mod support;

use std::collections::HashMap;

use rand::seq::SliceRandom;
use serde_json::{Value, json};
use support::corpus;
use support::daemon::{Daemon, TEAM, TestConfig};
use support::db::Db;
use support::pg;

/// The channels the corpus expectations assume (see its README).
const CHANNELS: &[(&str, &str)] = &[
    (
        "mango",
        "kind = \"telephony\"\nresponsible = \"role:sales\"\n[telephony]\nprovider = \"mango\"\napi_key = \"test_key\"\napi_salt = \"test_salt\"\n",
    ),
    (
        "zadarma",
        "kind = \"telephony\"\nresponsible = \"role:sales\"\n[telephony]\nprovider = \"zadarma\"\napi_secret = \"test_secret\"\n",
    ),
];

fn channel_of(file: &str) -> &'static str {
    if file.contains("/mango_") {
        "mango"
    } else {
        "zadarma"
    }
}

struct Reply {
    status: u16,
    body: String,
}

async fn send(cfg: &TestConfig, file: &str) -> Reply {
    let sample = corpus::sample(file);
    let channel = channel_of(file);
    let path = sample["path"].as_str().unwrap();
    let url = format!("{}/telephony/{channel}{path}", cfg.base_url());
    let method =
        reqwest::Method::from_bytes(sample["method"].as_str().unwrap().as_bytes()).unwrap();
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(headers) = sample["headers"].as_object() {
        for (k, v) in headers {
            req = req.header(k, v.as_str().unwrap());
        }
    }
    if let Some(ct) = sample["content_type"].as_str().filter(|c| !c.is_empty()) {
        req = req.header("content-type", ct);
    }
    let resp = req.body(corpus::body(&sample)).send().await.unwrap();
    Reply {
        status: resp.status().as_u16(),
        body: resp.text().await.unwrap(),
    }
}

/// Booleans read back as text: PostgreSQL says true/false, SQLite 1/0.
fn truthy(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "1" | "t"))
}

const CALL_COLUMNS: &str = "SELECT CAST(c.lead_id AS TEXT) AS lead_id, CAST(c.missed AS TEXT) AS missed, \
     CAST(c.talk_seconds AS TEXT) AS talk_seconds, CAST(c.wait_seconds AS TEXT) AS wait_seconds, c.recording, \
     CAST(l.missed AS TEXT) AS lead_missed, l.phone, l.called_line \
     FROM calls c LEFT JOIN leads l ON l.id = c.lead_id WHERE c.call_id = $1";

async fn replay(db_url: Option<String>) {
    let cfg = TestConfig::new(db_url, CHANNELS, TEAM, "default = \"role:sales\"\n");
    let _daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    let mut leads = 0;
    let mut inbound = 0;
    let mut lead_of_call: HashMap<String, String> = HashMap::new();
    for entry in corpus::entries("telephony") {
        let file = entry["file"].as_str().unwrap();
        let exp = &entry["expect"];
        let reply = send(&cfg, file).await;
        let ctx = format!("{file}: HTTP {} {}", reply.status, reply.body);
        match (
            exp["http_status"].as_u64(),
            exp["http_status_in"].as_array(),
        ) {
            (Some(want), _) => assert_eq!(u64::from(reply.status), want, "{ctx}"),
            (None, Some(list)) => assert!(list.contains(&json!(reply.status)), "{ctx}"),
            (None, None) => assert_eq!(reply.status, 200, "{ctx}"),
        }
        if let Some(err) = exp["error"].as_str() {
            let body: Value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
            let message = body["message"]
                .as_str()
                .unwrap_or(&reply.body)
                .to_lowercase();
            assert!(
                message.contains(&err.to_lowercase()),
                "{ctx}: expected {err:?}"
            );
        }
        if let Some(echo) = exp["response_body"].as_str() {
            assert_eq!(reply.body, echo, "{ctx}");
        }
        let stored = reply.status == 200 && exp["response_body"].is_null();
        if stored {
            inbound += 1;
        }
        if exp["lead"] == true {
            leads += 1;
        }
        assert_eq!(
            db.int("SELECT COUNT(*) FROM leads", None).await,
            leads,
            "{ctx}: leads"
        );
        assert_eq!(
            db.int("SELECT COUNT(*) FROM inbound_messages", None).await,
            inbound,
            "{ctx}: inbound rows"
        );
        if !stored {
            continue;
        }
        let last = db
            .row(
                "SELECT disposition, sender_phone FROM inbound_messages WHERE id = (SELECT MAX(id) FROM inbound_messages) AND id > $1",
                0i64,
            )
            .await
            .unwrap();
        let want_disposition = if exp["lead"] == true {
            "lead_created"
        } else {
            exp["disposition"].as_str().unwrap_or("?")
        };
        assert_eq!(
            last["disposition"].as_deref(),
            Some(want_disposition),
            "{ctx}"
        );
        if let Some(phone) = exp["phone"].as_str() {
            assert_eq!(
                last["sender_phone"].as_deref(),
                Some(phone),
                "{ctx}: caller"
            );
        }
        let Some(call_id) = exp["call_id"].as_str() else {
            continue;
        };
        let call = db
            .row(CALL_COLUMNS, call_id)
            .await
            .unwrap_or_else(|| panic!("{ctx}: no call {call_id}"));
        let lead = call["lead_id"].clone().expect("the call belongs to a lead");
        let first = lead_of_call
            .entry(call_id.to_owned())
            .or_insert_with(|| lead.clone());
        assert_eq!(
            *first, lead,
            "{ctx}: every event of a call stays on its lead"
        );
        if let Some(missed) = exp["missed"].as_bool() {
            assert_eq!(truthy(&call["missed"]), missed, "{ctx}: call missed");
            assert_eq!(
                truthy(&call["lead_missed"]),
                missed,
                "{ctx}: lead missed flag"
            );
        }
        for key in ["talk_seconds", "wait_seconds"] {
            if let Some(want) = exp[key].as_u64() {
                assert_eq!(
                    call[key].as_deref(),
                    Some(want.to_string().as_str()),
                    "{ctx}: {key}"
                );
            }
        }
        if exp["recording"] == true {
            assert!(call["recording"].is_some(), "{ctx}: recording");
        }
        if exp["lead"] == true {
            if let Some(line) = exp["called_line"].as_str() {
                assert_eq!(
                    call["called_line"].as_deref(),
                    Some(line),
                    "{ctx}: called line"
                );
            }
            assert_eq!(
                call["phone"].as_deref(),
                exp["phone"].as_str(),
                "{ctx}: lead phone"
            );
        }
    }
    // The callback (zadarma_007) settled the missed call of zadarma_004/005.
    let callback = db.row(CALL_COLUMNS, "in_9z8y7x6w5v").await.unwrap();
    assert!(
        !truthy(&callback["lead_missed"]),
        "a callback clears the missed flag: {callback:?}"
    );
    assert!(
        truthy(&callback["missed"]),
        "the call itself stays a missed call"
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn telephony_corpus_on_sqlite() {
    replay(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn telephony_corpus_on_postgres() {
    let Some(pg) = pg::server() else { return };
    replay(Some(pg.create_database())).await;
}

/// Shuffled and doubled deliveries of one call end in the same state as the
/// ordered ones: one lead, the same missed flag and durations.
#[tokio::test(flavor = "multi_thread")]
async fn shuffled_and_repeated_events_give_the_same_call() {
    let answered = [
        "telephony/mango_001_incoming_appeared.json",
        "telephony/mango_002_incoming_connected.json",
        "telephony/mango_003_incoming_disconnected.json",
        "telephony/mango_004_summary_answered.json",
    ];
    let missed = [
        "telephony/mango_005_missed_appeared.json",
        "telephony/mango_006_missed_disconnected.json",
        "telephony/mango_007_missed_summary.json",
    ];
    let mut rng = rand::rng();
    for round in 0..4 {
        let cfg = TestConfig::new(None, CHANNELS, TEAM, "default = \"role:sales\"\n");
        let _daemon = Daemon::start(&cfg);
        let mut events: Vec<&str> = answered.iter().chain(missed.iter()).copied().collect();
        if round > 0 {
            events.extend_from_slice(&answered[..2]);
            events.shuffle(&mut rng);
        }
        for file in &events {
            assert_eq!(send(&cfg, file).await.status, 200, "{file}");
        }
        let db = Db::open(&cfg.db_url).await;
        assert_eq!(
            db.int("SELECT COUNT(*) FROM leads", None).await,
            2,
            "order {events:?}"
        );
        assert_eq!(db.int("SELECT COUNT(*) FROM calls", None).await, 2);
        let a = db
            .row(CALL_COLUMNS, "MToxMDE0MzIwNzoxMDE6NzM2NTY0ODU2")
            .await
            .unwrap();
        assert!(
            !truthy(&a["missed"]) && !truthy(&a["lead_missed"]),
            "order {events:?}: {a:?}"
        );
        assert_eq!(
            a["talk_seconds"].as_deref(),
            Some("120"),
            "order {events:?}"
        );
        let m = db
            .row(CALL_COLUMNS, "MToxMDE0MzIwNzoxMDI6ODg4ODg4ODg4")
            .await
            .unwrap();
        assert!(
            truthy(&m["missed"]) && truthy(&m["lead_missed"]),
            "order {events:?}: {m:?}"
        );
        assert_eq!(m["wait_seconds"].as_deref(), Some("40"), "order {events:?}");
        let dupes = db
            .int(
                "SELECT COUNT(*) FROM inbound_messages WHERE disposition = 'duplicate'",
                None,
            )
            .await;
        assert_eq!(
            dupes, 0,
            "exact redeliveries are recognised by their key, not stored again"
        );
        assert_eq!(
            db.int("SELECT COUNT(*) FROM inbound_messages", None).await,
            7,
            "one row per distinct event"
        );
        db.close().await;
    }
}
