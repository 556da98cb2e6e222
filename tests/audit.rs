//! `leadgate audit` on a real database: clean after replaying the form and
//! telephony corpus twice (every redelivery must be recognised), then
//! broken one invariant at a time by hand-written SQL, each named in the
//! report with the offending row and a non-zero exit.

mod support;

use sqlx::Connection;
use support::corpus;
use support::daemon::{CORPUS_CHANNELS, Daemon, TEAM, TestConfig, cli};
use support::db::Db;
use support::pg;

/// The corpus's form channels plus its two PBX channels (secrets as the
/// corpus README gives them).
fn channels() -> Vec<(&'static str, &'static str)> {
    let mut all = CORPUS_CHANNELS.to_vec();
    all.push((
        "mango",
        "kind = \"telephony\"\nresponsible = \"role:sales\"\n[telephony]\nprovider = \"mango\"\napi_key = \"test_key\"\napi_salt = \"test_salt\"\n",
    ));
    all.push((
        "zadarma",
        "kind = \"telephony\"\nresponsible = \"role:sales\"\n[telephony]\nprovider = \"zadarma\"\napi_secret = \"test_secret\"\n",
    ));
    all
}

/// Send one form or PBX sample as recorded; its HTTP status.
async fn send(client: &reqwest::Client, cfg: &TestConfig, channel: &str, file: &str) -> u16 {
    let sample = corpus::sample(file);
    let path = sample["path"].as_str().unwrap();
    let url = if channel == "telephony" {
        let pbx = if file.contains("/mango_") {
            "mango"
        } else {
            "zadarma"
        };
        format!("{}/telephony/{pbx}{path}", cfg.base_url())
    } else {
        format!("{}{path}", cfg.base_url())
    };
    let method =
        reqwest::Method::from_bytes(sample["method"].as_str().unwrap().as_bytes()).unwrap();
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
    resp.status().as_u16()
}

/// Replay the form and telephony corpus twice, in file order.
async fn replay(cfg: &TestConfig) {
    let _daemon = Daemon::start(cfg);
    let client = reqwest::Client::new();
    let mut accepted = 0;
    for _ in 0..2 {
        for channel in ["form", "telephony"] {
            for entry in corpus::entries(channel) {
                let file = entry["file"].as_str().unwrap();
                if send(&client, cfg, channel, file).await == 200 {
                    accepted += 1;
                }
            }
        }
    }
    assert!(accepted >= 40, "only {accepted} samples were accepted");
}

/// Run `leadgate audit`: (exit code, stdout, stderr).
fn audit(cfg: &TestConfig) -> (i32, String, String) {
    cli(cfg.path(), &["audit"])
}

/// Run statements on one connection with the foreign-key checks off,
/// which is how rows the schema forbids get into a database (a manual
/// fix, a restore of some tables only).
async fn corrupt(url: &str, statements: &[&str]) {
    if url.starts_with("sqlite:") {
        let opts = url
            .parse::<sqlx::sqlite::SqliteConnectOptions>()
            .unwrap()
            .foreign_keys(false);
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        for sql in statements {
            sqlx::query(sql)
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        conn.close().await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query("SET session_replication_role = replica")
            .execute(&mut conn)
            .await
            .unwrap();
        for sql in statements {
            sqlx::query(sql)
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        conn.close().await.unwrap();
    }
}

/// The report must name the broken invariant with an offending row, and
/// the exit must be non-zero.
fn assert_broken(cfg: &TestConfig, check: &str, row_text: &str) {
    let (code, out, err) = audit(cfg);
    assert_ne!(code, 0, "audit passed a broken database:\n{out}{err}");
    let section = out
        .split("BROKEN ")
        .find(|s| s.starts_with(&format!("{check}:")))
        .unwrap_or_else(|| panic!("{check} not reported:\n{out}{err}"));
    assert!(
        section.contains(row_text),
        "{check} does not show {row_text:?}:\n{out}"
    );
    assert!(
        err.contains("invariant(s) broken"),
        "no summary on stderr: {err}"
    );
}

async fn clean_then_corrupted(db_url: Option<String>) {
    let cfg = TestConfig::new(db_url, &channels(), TEAM, "default = \"role:sales\"\n");
    replay(&cfg).await;

    let db = Db::open(&cfg.db_url).await;
    let leads = db.int("SELECT COUNT(*) FROM leads", None).await;
    let activities = db.int("SELECT COUNT(*) FROM activities", None).await;
    let calls = db
        .int("SELECT COUNT(*) FROM calls WHERE lead_id IS NOT NULL", None)
        .await;
    assert!(
        leads > 5 && activities > 0 && calls > 0,
        "the replay should leave leads ({leads}), activities ({activities}) and calls ({calls})"
    );
    db.close().await;

    let (code, out, err) = audit(&cfg);
    assert_eq!(code, 0, "a clean replay fails the audit:\n{out}{err}");
    assert!(out.contains("audit OK"), "{out}");

    corrupt(
        &cfg.db_url,
        &[
            "INSERT INTO activities (lead_id, created_at, kind, summary) \
           VALUES (999999, '2026-01-01T00:00:00Z', 'note', 'orphan')",
        ],
    )
    .await;
    assert_broken(&cfg, "activity_has_lead", "lead_id=999999");

    corrupt(
        &cfg.db_url,
        &["UPDATE calls SET lead_id = 999998 WHERE id = (SELECT MIN(id) FROM calls WHERE lead_id IS NOT NULL)"],
    )
    .await;
    assert_broken(&cfg, "call_has_lead", "lead_id=999998");

    // A second lead for the first lead's message.
    corrupt(
        &cfg.db_url,
        &[
            "INSERT INTO leads (created_at, updated_at, channel_id, channel_kind, source_ref, \
             assigned_by, last_activity_at) SELECT created_at, updated_at, channel_id, channel_kind, \
             source_ref, assigned_by, last_activity_at FROM leads WHERE id = (SELECT MIN(id) FROM leads)",
        ],
    )
    .await;
    let db = Db::open(&cfg.db_url).await;
    let source_ref = db
        .texts("SELECT source_ref FROM leads WHERE id = (SELECT MIN(id) FROM leads)")
        .await
        .remove(0)
        .unwrap();
    let copy = db
        .texts("SELECT CAST(MAX(id) AS TEXT) FROM leads")
        .await
        .remove(0)
        .unwrap();
    db.close().await;
    assert_broken(
        &cfg,
        "one_lead_per_inbound",
        &format!("source_ref={source_ref} leads=2"),
    );
    assert_broken(&cfg, "lead_has_inbound", &format!("lead_id={copy} "));

    corrupt(
        &cfg.db_url,
        &[
            "INSERT INTO channel_state (channel_id, cursor_key, value, updated_at) \
           VALUES ('ghost-mail', 'folder:INBOX', '1:42', '2026-01-01T00:00:00Z')",
        ],
    )
    .await;
    assert_broken(&cfg, "cursor_not_ahead", "channel_id=ghost-mail");

    // The unique key has to go before a duplicate fits: SQLite keeps it in
    // the table definition, so the table is rebuilt without it.
    let drop_unique: &[&str] = if cfg.db_url.starts_with("sqlite:") {
        &[
            "CREATE TABLE inbound_plain AS SELECT * FROM inbound_messages",
            "DROP TABLE inbound_messages",
            "ALTER TABLE inbound_plain RENAME TO inbound_messages",
        ]
    } else {
        &["ALTER TABLE inbound_messages DROP CONSTRAINT inbound_messages_channel_id_source_ref_key"]
    };
    corrupt(&cfg.db_url, drop_unique).await;
    corrupt(
        &cfg.db_url,
        &[
            "INSERT INTO inbound_messages (channel_id, channel_kind, source_ref, received_at, \
           stored_at, disposition, reason, fields, attachments, raw) \
           SELECT channel_id, channel_kind, source_ref, received_at, stored_at, 'duplicate', \
           'copied by hand', fields, attachments, raw FROM inbound_messages \
           WHERE id = (SELECT MIN(id) FROM inbound_messages)",
        ],
    )
    .await;
    assert_broken(&cfg, "inbound_unique", "copies=2");
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_on_sqlite() {
    clean_then_corrupted(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_on_postgres() {
    let Some(pg) = pg::server() else { return };
    clean_then_corrupted(Some(pg.create_database())).await;
}
