//! Replays ../shared/corpus/forms against the real daemon on SQLite and on
//! PostgreSQL and checks every manifest expectation in the database.

mod support;

use std::collections::HashMap;

use serde_json::{Value, json};
use support::daemon::{Daemon, TestConfig};
use support::db::Db;
use support::{corpus, pg};

const LEAD_COLUMNS: [&str; 9] = [
    "name",
    "phone",
    "email",
    "product",
    "region",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "source_ref",
];

async fn replay(cfg: TestConfig) {
    let daemon = Daemon::start(&cfg);
    let client = reqwest::Client::new();
    let db = Db::open(&cfg.db_url).await;
    let mut lead_of: HashMap<String, i64> = HashMap::new();
    let mut expected_leads = 0;
    let entries = corpus::entries("form");
    assert!(entries.len() >= 18, "the forms corpus is incomplete");
    for entry in entries {
        let file = entry["file"].as_str().unwrap();
        let exp = &entry["expect"];
        let sample = corpus::sample(file);
        let method =
            reqwest::Method::from_bytes(sample["method"].as_str().unwrap().as_bytes()).unwrap();
        let url = format!("{}{}", cfg.base_url(), sample["path"].as_str().unwrap());
        let mut req = client.request(method, url);
        if let Some(headers) = sample["headers"].as_object() {
            for (k, v) in headers {
                req = req.header(k, v.as_str().unwrap());
            }
        }
        if let Some(ct) = sample["content_type"].as_str().filter(|c| !c.is_empty()) {
            req = req.header("content-type", ct);
        }
        let resp = req.body(corpus::body(&sample)).send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let ctx = format!("{file}: HTTP {status} {text}");

        match (
            exp["http_status"].as_u64(),
            exp["http_status_in"].as_array(),
        ) {
            (Some(want), _) => assert_eq!(u64::from(status), want, "{ctx}"),
            (None, Some(list)) => assert!(list.contains(&json!(status)), "{ctx}"),
            (None, None) => assert_eq!(status, 200, "{ctx}"),
        }
        if let Some(err) = exp["error"].as_str() {
            let message = body["message"].as_str().unwrap_or_default().to_lowercase();
            assert!(
                message.contains(&err.to_lowercase()),
                "{ctx}: expected error {err:?}"
            );
            assert_eq!(body["ok"], false, "{ctx}");
        }
        if let Some(origin) = exp["allow_origin"].as_str() {
            assert_eq!(
                headers
                    .get("access-control-allow-origin")
                    .and_then(|v| v.to_str().ok()),
                Some(origin),
                "{ctx}"
            );
        }
        if exp["lead"] == true {
            expected_leads += 1;
            assert_eq!(body["disposition"], "lead_created", "{ctx}");
            let lead_id = body["lead_id"].as_i64().expect("lead id");
            lead_of.insert(file.to_owned(), lead_id);
            let lead = db
                .row(
                    &format!(
                        "SELECT {} FROM leads WHERE id = $1",
                        LEAD_COLUMNS.join(", ")
                    ),
                    lead_id,
                )
                .await
                .expect("lead row");
            for column in LEAD_COLUMNS {
                if let Some(want) = exp[column].as_str() {
                    assert_eq!(
                        lead[column].as_deref(),
                        Some(want),
                        "{ctx}: column {column}"
                    );
                }
            }
            if let Some(want) = exp["attachments"].as_array() {
                let row = db
                    .row(
                        "SELECT CAST(attachments AS TEXT) AS a FROM inbound_messages WHERE id = $1",
                        body["id"].as_i64().unwrap(),
                    )
                    .await
                    .unwrap();
                let stored: Vec<Value> =
                    serde_json::from_str(row["a"].as_deref().unwrap()).unwrap();
                assert_eq!(stored.len(), want.len(), "{ctx}: attachments {stored:?}");
                for (s, w) in stored.iter().zip(want) {
                    assert_eq!(s["name"], w["name"], "{ctx}");
                    assert_eq!(s["content_type"], w["type"], "{ctx}");
                }
            }
        } else if let Some(disposition) = exp["disposition"].as_str() {
            assert_eq!(body["disposition"], disposition, "{ctx}");
            let row = db
                .row(
                    "SELECT disposition FROM inbound_messages WHERE id = $1",
                    body["id"].as_i64().expect("inbound id"),
                )
                .await
                .expect("the inbound is recorded");
            assert!(
                row["disposition"].as_deref() == Some(disposition) || disposition == "duplicate",
                "{ctx}: stored {row:?}"
            );
            if let Some(of) = exp["thread_of"].as_str() {
                assert_eq!(
                    body["lead_id"].as_i64(),
                    Some(lead_of[of]),
                    "{ctx}: joins {of}"
                );
            }
        }
        assert_eq!(
            db.int("SELECT COUNT(*) FROM leads", None).await,
            expected_leads,
            "{ctx}: leads in the table"
        );
    }
    // Every rejected sample left no trace, every accepted one exactly one.
    let spam = db
        .int(
            "SELECT COUNT(*) FROM inbound_messages WHERE disposition = 'spam'",
            None,
        )
        .await;
    assert_eq!(spam, 1);
    drop(daemon);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forms_corpus_on_sqlite() {
    replay(TestConfig::corpus(None)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forms_corpus_on_postgres() {
    let Some(pg) = pg::server() else { return };
    replay(TestConfig::corpus(Some(pg.create_database()))).await;
}

/// Bodies shaped like those of common form builders (the shapes their
/// documentation and plugins post), through the real endpoint: each makes
/// one lead with the sender's name, normalized phone and e-mail, and the
/// builder's UTM tags and custom answers kept.
#[tokio::test(flavor = "multi_thread")]
async fn form_builder_payloads_become_leads() {
    enum Body {
        Form(&'static [(&'static str, &'static str)]),
        Json(Value),
    }
    let cases = [
        (
            // Elementor's webhook action with "advanced data"
            "Elementor",
            Body::Form(&[
                ("form[id]", "3b2f1c"),
                ("form[name]", "Кухни"),
                ("fields[name][id]", "name"),
                ("fields[name][type]", "text"),
                ("fields[name][title]", "Имя"),
                ("fields[name][value]", "Ия Петрова"),
                ("fields[name][raw_value]", "Ия Петрова"),
                ("fields[email][title]", "Email"),
                ("fields[email][value]", "Iya.Petrova@Example.RU"),
                ("fields[phone][value]", "8 (999) 321-00-11"),
                ("fields[field_7c1a2b][title]", "Кухня"),
                ("fields[field_7c1a2b][value]", "угловая"),
                ("meta[page_url][title]", "Page URL"),
                (
                    "meta[page_url][value]",
                    "https://site.example/kitchen?utm_source=vk",
                ),
            ]),
            ["Ия Петрова", "+79993210011", "iya.petrova@example.ru", "vk"],
            ("fields[field_7c1a2b][value]", "угловая"),
        ),
        (
            "Contact Form 7",
            Body::Form(&[
                ("your-name", "Oleg Sidorov"),
                ("your-email", "oleg@example.com"),
                ("tel-435", "89992223344"),
                ("menu-812", "Угловая"),
                ("your-message", "Call me"),
                ("utm_source", "google"),
            ]),
            ["Oleg Sidorov", "+79992223344", "oleg@example.com", "google"],
            ("menu-812", "Угловая"),
        ),
        (
            "names in parts",
            Body::Form(&[
                ("firstname", "Ann"),
                ("lastname", "Lee"),
                ("mobilephone", "+7 999 555-66-77"),
                ("email", "ann@lee.example"),
                ("utm[source]", "newsletter"),
                ("company", "Lee & Co"),
            ]),
            ["Ann Lee", "+79995556677", "ann@lee.example", "newsletter"],
            ("company", "Lee & Co"),
        ),
        (
            "Webflow",
            Body::Json(json!({
                "triggerType": "form_submission",
                "payload": {
                    "name": "Contact Form",
                    "siteId": "65f0c1",
                    "data": {"Name": "Вера Орлова", "Email": "vera@orlova.example",
                             "Phone": "+7 (999) 444-55-66", "Message": "Перезвоните",
                             "Kitchen": "прямая"},
                    "submittedAt": "2026-11-24T10:00:00.000Z",
                    "id": "6321a",
                    "formId": "6321b",
                    "utm_source": "yandex"
                }
            })),
            [
                "Вера Орлова",
                "+79994445566",
                "vera@orlova.example",
                "yandex",
            ],
            ("payload.data.Kitchen", "прямая"),
        ),
        (
            "Marquiz",
            Body::Json(json!({
                "answers": [{"q": "Какая кухня?", "a": "Угловая"}],
                "contacts": {"name": "Пётр", "phone": "8 999 777 88 99", "email": "petr@example.ru"},
                "quiz": {"id": "5f1", "name": "Кухни на заказ"},
                "extra": {"href": "https://kitchen.example/quiz", "utm": {"source": "vk_ads"}},
                "created": "2026-11-24T10:00:00Z"
            })),
            ["Пётр", "+79997778899", "petr@example.ru", "vk_ads"],
            ("answers", r#"[{"a":"Угловая","q":"Какая кухня?"}]"#),
        ),
    ];

    let cfg = TestConfig::corpus(None);
    let daemon = Daemon::start(&cfg);
    let client = reqwest::Client::new();
    let db = Db::open(&cfg.db_url).await;
    let url = format!("{}/forms/site", cfg.base_url());
    let count = cases.len();
    for (builder, body, [name, phone, email, utm_source], (custom, answer)) in cases {
        let request = match body {
            Body::Form(pairs) => client.post(&url).form(pairs),
            Body::Json(value) => client.post(&url).json(&value),
        };
        let resp = request.send().await.unwrap();
        let status = resp.status();
        let reply: Value = resp.json().await.unwrap();
        assert_eq!(status, 200, "{builder}: {reply}");
        assert_eq!(reply["disposition"], "lead_created", "{builder}: {reply}");
        let lead = db
            .row(
                "SELECT name, phone, email, utm_source, CAST(fields AS TEXT) AS fields \
                 FROM leads WHERE id = $1",
                reply["lead_id"].as_i64().expect("lead id"),
            )
            .await
            .expect("lead row");
        assert_eq!(lead["name"].as_deref(), Some(name), "{builder}");
        assert_eq!(lead["phone"].as_deref(), Some(phone), "{builder}");
        assert_eq!(lead["email"].as_deref(), Some(email), "{builder}");
        assert_eq!(lead["utm_source"].as_deref(), Some(utm_source), "{builder}");
        let fields: Value = serde_json::from_str(lead["fields"].as_deref().unwrap()).unwrap();
        assert_eq!(fields[custom], answer, "{builder}: {fields}");
    }
    assert_eq!(
        db.int("SELECT COUNT(*) FROM leads", None).await,
        count as i64
    );
    drop(daemon);
    db.close().await;
}
