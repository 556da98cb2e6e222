//! The IMAP connector against a real Dovecot: the e-mail corpus end to end,
//! IDLE push, restarts and SIGKILL mid-backlog, UIDVALIDITY changes, a
//! server that dies under a connected daemon, a non-source mailbox, and
//! post-processing after commit.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::corpus;
use support::daemon::{Daemon, TEAM, TestConfig};
use support::db::Db;
use support::dovecot::{Dovecot, ImapClient};

const ROUTING: &str = "default = \"role:sales\"\n";
const MAIL_RULES: &str = "[imap.mail]\nown_domains = [\"ourcompany.example\"]\n";

async fn wait_for_rows(db: &Db, want: i64, within: Duration, daemon: &Daemon) {
    let deadline = Instant::now() + within;
    loop {
        let n = db.int("SELECT COUNT(*) FROM inbound_messages", None).await;
        if n >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {want} messages stored after {within:?}\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mail(i: usize) -> Vec<u8> {
    format!(
        "From: Client {i} <client{i}@example.net>\r\nTo: sales@ourcompany.example\r\nSubject: Request {i}\r\n\
         Message-ID: <backlog-{i}@example.net>\r\nDate: Mon, 16 Nov 2026 10:15:00 +0300\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nPlease call me back: 8 999 {:03} {:02} {:02}\r\n",
        i / 10_000 % 1000,
        i / 100 % 100,
        i % 100
    )
    .into_bytes()
}

fn config(dovecot: &Dovecot, extra: &str) -> TestConfig {
    let channel = dovecot.channel_toml(&format!("{extra}{MAIL_RULES}"));
    TestConfig::new(None, &[("sales", channel.as_str())], TEAM, ROUTING)
}

/// Every e-mail sample, appended to a real mailbox and read by the daemon.
#[tokio::test(flavor = "multi_thread")]
async fn email_corpus_end_to_end() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    let entries = corpus::entries("email");
    let mut imap = ImapClient::login(dovecot.port);
    for e in &entries {
        let raw = std::fs::read(corpus::dir().join(e["file"].as_str().unwrap())).unwrap();
        imap.append("INBOX", &raw);
    }
    let cfg = config(&dovecot, "");
    let daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    wait_for_rows(&db, entries.len() as i64, Duration::from_secs(60), &daemon).await;

    let mut lead_of: HashMap<&str, Option<String>> = HashMap::new();
    let mut failures = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let file = e["file"].as_str().unwrap();
        let exp = &e["expect"];
        // UIDs follow the APPEND order, and so do the inbound ids.
        let row = db
            .row(
                "SELECT disposition, reason, CAST(lead_id AS TEXT) AS lead_id, CAST(contact_id AS TEXT) AS contact_id, \
                 CAST(attachments AS TEXT) AS attachments FROM inbound_messages \
                 ORDER BY id LIMIT 1 OFFSET $1",
                i as i64,
            )
            .await
            .unwrap();
        let disposition = row["disposition"].clone().unwrap_or_default();
        lead_of.insert(file, row["lead_id"].clone());
        let mut fail = |m: String| failures.push(format!("{file}: {m} (row {row:?})"));
        if exp["lead"] == true {
            if disposition != "lead_created" {
                fail(format!("expected a lead, got {disposition}"));
                continue;
            }
            let id: i64 = row["lead_id"].as_deref().unwrap().parse().unwrap();
            let lead = db
                .row(
                    "SELECT name, email, phone, subject, product, utm_source, utm_campaign FROM leads WHERE id = $1",
                    id,
                )
                .await
                .unwrap();
            for key in [
                "name",
                "email",
                "phone",
                "subject",
                "product",
                "utm_source",
                "utm_campaign",
            ] {
                if let Some(want) = exp[key].as_str()
                    && lead[key].as_deref() != Some(want)
                {
                    fail(format!("{key}: want {want:?}, got {:?}", lead[key]));
                }
            }
            if let Some(phones) = exp["phones"].as_array() {
                let contact = row["contact_id"].clone().unwrap();
                let have = db
                    .texts(&format!(
                        "SELECT value FROM contact_identities WHERE kind = 'phone' AND contact_id = {contact}"
                    ))
                    .await;
                for p in phones {
                    if !have.iter().any(|h| h.as_deref() == p.as_str()) {
                        fail(format!("phone {p} not among the contact's {have:?}"));
                    }
                }
            }
            if let Some(want) = exp["attachments"].as_array() {
                let stored: Vec<Value> =
                    serde_json::from_str(row["attachments"].as_deref().unwrap()).unwrap();
                let names: Vec<_> = stored
                    .iter()
                    .map(|a| (a["name"].clone(), a["content_type"].clone()))
                    .collect();
                for w in want {
                    if !names.contains(&(w["name"].clone(), w["type"].clone())) {
                        fail(format!("attachment {w} missing from {names:?}"));
                    }
                }
            }
        } else {
            let want = exp["disposition"].as_str().unwrap_or("");
            let ok = match want {
                "invalid_or_no_contact" => {
                    disposition != "lead_created" && row["lead_id"].is_none()
                }
                w => disposition == w,
            };
            if !ok {
                fail(format!("expected {want}, got {disposition}"));
            }
            if let Some(of) = exp["thread_of"].as_str()
                && row["lead_id"] != lead_of[of]
            {
                fail(format!("should join the lead of {of}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} e-mail expectations failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let leads = entries
        .iter()
        .filter(|e| e["expect"]["lead"] == true)
        .count() as i64;
    assert_eq!(db.int("SELECT COUNT(*) FROM leads", None).await, leads);
    // Leadgate peeks: people still see the mail as unread.
    assert!(
        imap.flags("INBOX")
            .iter()
            .all(|(_, f)| !f.contains("\\Seen"))
    );
    db.close().await;
}

/// A message delivered while the daemon idles arrives by IDLE push, not by
/// the (here: one hour) poll interval.
#[tokio::test(flavor = "multi_thread")]
async fn idle_push_brings_new_mail_at_once() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    let cfg = config(&dovecot, "").with_poll_interval("1h");
    let daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    let mut imap = ImapClient::login(dovecot.port);
    imap.append("INBOX", &mail(1));
    wait_for_rows(&db, 1, Duration::from_secs(20), &daemon).await;
    for i in 2..=5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        imap.append("INBOX", &mail(i));
        // Generous bound: the benchmark measures the latency; this only
        // proves the push path works (the poll would take an hour).
        wait_for_rows(&db, i as i64, Duration::from_secs(5), &daemon).await;
    }
    assert_eq!(db.int("SELECT COUNT(*) FROM leads", None).await, 5);
    db.close().await;
}

/// SIGKILL mid-backlog, several times: every message stored exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_backlog_stores_every_message_once() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    const N: usize = 400;
    let mut imap = ImapClient::login(dovecot.port);
    for i in 0..N {
        imap.append("INBOX", &mail(i));
    }
    let cfg = config(&dovecot, "batch_size = 25\n");
    let mut daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    for kill in 1..=4 {
        wait_for_rows(&db, (kill * N / 6) as i64, Duration::from_secs(60), &daemon).await;
        daemon.restart();
    }
    wait_for_rows(&db, N as i64, Duration::from_secs(60), &daemon).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        db.int("SELECT COUNT(*) FROM inbound_messages", None).await,
        N as i64,
        "no message twice"
    );
    assert_eq!(db.int("SELECT COUNT(*) FROM leads", None).await, N as i64);
    let cursor = db
        .texts("SELECT value FROM channel_state WHERE cursor_key = 'folder:INBOX'")
        .await;
    assert!(
        cursor[0].as_deref().unwrap().ends_with(&format!(":{N}")),
        "{cursor:?}"
    );
    db.close().await;
}

/// The folder is recreated (new UIDVALIDITY, UIDs from 1 again): the
/// connector rescans it and recognises what it already stored.
#[tokio::test(flavor = "multi_thread")]
async fn uidvalidity_change_creates_no_duplicates() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    let mut imap = ImapClient::login(dovecot.port);
    imap.command("CREATE \"Leads\"");
    for i in 0..5 {
        imap.append("Leads", &mail(i));
    }
    let cfg = config(&dovecot, "folders = [\"Leads\"]\n");
    let mut daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    wait_for_rows(&db, 5, Duration::from_secs(30), &daemon).await;
    daemon.kill9();
    imap.command("DELETE \"Leads\"");
    imap.command("CREATE \"Leads\"");
    for i in 0..6 {
        imap.append("Leads", &mail(i));
    }
    daemon.restart();
    wait_for_rows(&db, 6, Duration::from_secs(30), &daemon).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        db.int("SELECT COUNT(*) FROM inbound_messages", None).await,
        6
    );
    assert_eq!(db.int("SELECT COUNT(*) FROM leads", None).await, 6);
    db.close().await;
}

/// The server dies under a connected daemon and comes back: the connector
/// reconnects and catches up.
#[tokio::test(flavor = "multi_thread")]
async fn reconnects_after_the_server_restarts() {
    let Some(mut dovecot) = Dovecot::start() else {
        return;
    };
    let cfg = config(&dovecot, "");
    let daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    ImapClient::login(dovecot.port).append("INBOX", &mail(1));
    wait_for_rows(&db, 1, Duration::from_secs(20), &daemon).await;
    dovecot.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    dovecot.restart();
    ImapClient::login(dovecot.port).append("INBOX", &mail(2));
    wait_for_rows(&db, 2, Duration::from_secs(30), &daemon).await;
    let log = daemon.log_text();
    assert!(log.contains("reconnecting"), "{log}");
    db.close().await;
}

/// A secretary's mailbox: everything recorded, nothing becomes a lead.
#[tokio::test(flavor = "multi_thread")]
async fn a_non_source_mailbox_records_everything_and_makes_no_lead() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    let mut imap = ImapClient::login(dovecot.port);
    for i in 0..3 {
        imap.append("INBOX", &mail(i));
    }
    let channel = dovecot.channel_toml(MAIL_RULES).replacen(
        "kind = \"imap\"\n",
        "kind = \"imap\"\nlead_source = false\n",
        1,
    );
    let cfg = TestConfig::new(None, &[("secretary", channel.as_str())], TEAM, ROUTING);
    let daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    wait_for_rows(&db, 3, Duration::from_secs(20), &daemon).await;
    let dispositions = db.texts("SELECT disposition FROM inbound_messages").await;
    assert!(
        dispositions
            .iter()
            .all(|d| d.as_deref() == Some("not_lead_source")),
        "{dispositions:?}"
    );
    assert_eq!(db.int("SELECT COUNT(*) FROM leads", None).await, 0);
    db.close().await;
}

/// `\Seen` and MOVE happen to committed messages only, after the commit.
#[tokio::test(flavor = "multi_thread")]
async fn post_processing_marks_seen_or_moves_committed_mail() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    let mut imap = ImapClient::login(dovecot.port);
    for i in 0..4 {
        imap.append("INBOX", &mail(i));
    }
    let cfg = config(&dovecot, "after_commit = \"seen\"\n");
    let daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    wait_for_rows(&db, 4, Duration::from_secs(20), &daemon).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flags = imap.flags("INBOX");
    assert_eq!(flags.len(), 4);
    assert!(flags.iter().all(|(_, f)| f.contains("\\Seen")), "{flags:?}");
    drop(daemon);
    db.close().await;

    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    let mut imap = ImapClient::login(dovecot.port);
    imap.command("CREATE \"Processed\"");
    for i in 0..4 {
        imap.append("INBOX", &mail(i));
    }
    let cfg = config(
        &dovecot,
        "after_commit = \"move\"\nmove_to = \"Processed\"\n",
    );
    let daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    wait_for_rows(&db, 4, Duration::from_secs(20), &daemon).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while imap.count("Processed") < 4 {
        assert!(Instant::now() < deadline, "messages not moved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(imap.count("INBOX"), 0);
    assert_eq!(
        db.int("SELECT COUNT(*) FROM inbound_messages", None).await,
        4,
        "moving does not re-ingest"
    );
    drop(daemon);
    db.close().await;
}

/// Implicit TLS and STARTTLS against a Dovecot whose certificate a private
/// CA issued: trusted through `ca_file`, refused without it.
#[tokio::test(flavor = "multi_thread")]
async fn tls_and_starttls_trust_a_private_ca_and_only_it() {
    let Some(dovecot) = Dovecot::start_tls() else {
        return;
    };
    let tls_port = dovecot.tls_port.expect("TLS port");
    let mut imap = ImapClient::login(dovecot.port);
    imap.append("INBOX", &mail(1));
    let base = |port: u16, security: &str, extra: &str| {
        format!(
            "kind = \"imap\"\n[imap]\nhost = \"127.0.0.1\"\nport = {port}\nsecurity = \"{security}\"\n\
             username = \"{}\"\npassword = \"{}\"\npoll_interval = \"1s\"\n{extra}{MAIL_RULES}",
            support::dovecot::USER,
            support::dovecot::PASSWORD,
        )
    };
    let tls = base(tls_port, "tls", "ca_file = \"test-ca.pem\"\n");
    let starttls = base(dovecot.port, "starttls", "ca_file = \"test-ca.pem\"\n");
    let untrusted = base(tls_port, "tls", "");
    let cfg = TestConfig::new(
        None,
        &[
            ("tls", tls.as_str()),
            ("starttls", starttls.as_str()),
            ("untrusted", untrusted.as_str()),
        ],
        TEAM,
        ROUTING,
    );
    // Relative to the configuration folder, like every *_file setting.
    std::fs::copy(dovecot.ca_file(), cfg.path().join("test-ca.pem")).unwrap();
    let daemon = Daemon::start(&cfg);
    let db = Db::open(&cfg.db_url).await;
    wait_for_rows(&db, 2, Duration::from_secs(30), &daemon).await;
    let per_channel = |channel: &'static str| {
        let db = &db;
        async move {
            db.int(
                "SELECT COUNT(*) FROM inbound_messages WHERE channel_id = $1",
                Some(channel),
            )
            .await
        }
    };
    assert_eq!(per_channel("tls").await, 1, "{}", daemon.log_text());
    assert_eq!(per_channel("starttls").await, 1, "{}", daemon.log_text());

    // The channel without the CA never gets past the handshake, and says why.
    let deadline = Instant::now() + Duration::from_secs(20);
    let error = loop {
        let error = db
            .texts("SELECT value FROM channel_state WHERE channel_id = 'untrusted' AND cursor_key = 'last_error'")
            .await;
        if let Some(Some(e)) = error.into_iter().next() {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no error recorded: {}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        error.to_lowercase().contains("certificate"),
        "the error names the certificate: {error}"
    );
    // And `leadgate status` shows it under the channel.
    let (_, status, _) = support::daemon::cli(cfg.path(), &["status"]);
    let row = status
        .lines()
        .position(|l| l.starts_with("untrusted "))
        .unwrap_or_else(|| panic!("no row for the channel in\n{status}"));
    let below = status.lines().nth(row + 1).unwrap_or_default();
    assert!(
        below.trim_start().starts_with("last error: ")
            && below.to_lowercase().contains("certificate"),
        "{status}"
    );
    assert_eq!(per_channel("untrusted").await, 0);
    db.close().await;
}

/// A `ca_file` that is missing or not PEM is a configuration error naming
/// the file, found by `leadgate check` before anything runs.
#[test]
fn a_bad_ca_file_is_a_config_error() {
    let channel = "kind = \"imap\"\n[imap]\nhost = \"127.0.0.1\"\nsecurity = \"tls\"\nusername = \"u\"\npassword = \"p\"\nca_file = \"ca.pem\"\n";
    let cfg = TestConfig::new(None, &[("sales", channel)], TEAM, ROUTING);
    let (code, _, err) = support::daemon::cli(cfg.path(), &["check"]);
    assert_ne!(code, 0);
    assert!(err.contains("ca_file") && err.contains("ca.pem"), "{err}");
    cfg.write("ca.pem", "this is not a certificate\n");
    let (code, _, err) = support::daemon::cli(cfg.path(), &["check"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no certificate") && err.contains("ca.pem"),
        "{err}"
    );
}
