//! Notifications (issue #10): the outbox written with the assignment and
//! delivered after commit to real peers on loopback ports — the fake Bot
//! API (tests/support/telegram.rs) as the notifier bot, and a local SMTP
//! sink (tests/support/smtp.rs), plain or over TLS with a certificate from
//! a throwaway CA (tests/support/tls.rs).

mod support;

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::daemon::{Daemon, TestConfig, cli};
use support::db::Db;
use support::site::{assignee, post_lead, wait_for};
use support::smtp::SmtpSink;
use support::telegram::{FakeBotApi, TOKEN};
use support::tls::TestCertificate;

const TEAM: &str = r#"
[users.olga]
name = "Olga"
email = "olga@ourcompany.example"
telegram_chat_id = 1001
[users.ivan]
name = "Ivan"
email = "ivan@ourcompany.example"
telegram_chat_id = 1002
[users.head]
name = "Head of sales"
email = "head@ourcompany.example"
notify = ["email"]
[roles.sales]
members = ["olga", "ivan"]
"#;

/// Chat ids and addresses by user, as TEAM says.
fn chat_of(user: &str) -> i64 {
    match user {
        "olga" => 1001,
        "ivan" => 1002,
        other => panic!("no chat for {other}"),
    }
}

struct Peers {
    bot: FakeBotApi,
    smtp: SmtpSink,
}

impl Peers {
    async fn start() -> Peers {
        Peers {
            bot: FakeBotApi::start().await,
            smtp: SmtpSink::start().await,
        }
    }

    /// `[notify]` pointing at the peers; `poll_every` sets how soon rows go.
    fn notify_section(&self, poll_every: &str) -> String {
        notify_section(&self.bot.url(), self.smtp.port, poll_every)
    }
}

fn notify_section(bot_url: &str, smtp_port: u16, poll_every: &str) -> String {
    {
        format!(
            r#"
[notify]
supervisors = ["head"]
poll_every = "{poll_every}"
retry_first = "300ms"
retry_max = "2s"
[notify.telegram]
token_file = "notifier.token"
api_url = "{}"
timeout = "5s"
[notify.email]
host = "127.0.0.1"
port = {}
security = "plain"
from = "leadgate <leadgate@ourcompany.example>"
timeout = "5s"
[notify.templates]
link = "https://crm.example/leads/{{lead_id}}"
"#,
            bot_url, smtp_port
        )
    }
}

fn config(peers: &Peers, routing: &str, poll_every: &str) -> TestConfig {
    config_on(None, peers, routing, poll_every)
}

fn config_on(db: Option<String>, peers: &Peers, routing: &str, poll_every: &str) -> TestConfig {
    let cfg = TestConfig::site(db, TEAM, routing);
    cfg.write("notifier.token", &format!("{TOKEN}\n"));
    cfg.write_main(&peers.notify_section(poll_every));
    cfg
}

/// Telegram messages sent to `chat`, their texts.
fn texts_to(bot: &FakeBotApi, chat: i64) -> Vec<String> {
    bot.sent_messages()
        .iter()
        .filter(|m| m["chat_id"].as_i64() == Some(chat))
        .map(|m| m["text"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_assignment_sends_one_telegram_message_and_one_email_with_the_template() {
    let peers = Peers::start().await;
    let cfg = config(&peers, "default = \"role:sales\"\n", "100ms");
    let db = Db::open(&cfg.db_url).await;
    let _daemon = Daemon::start(&cfg);
    let lead = post_lead(
        &cfg,
        "name=Ann+Smith&phone=89991234567&email=ann@example.net&comment=Call+me+about+X200",
    )
    .await;
    let owner = assignee(&db, lead).await;
    peers
        .bot
        .wait_for("the Telegram message", Duration::from_secs(10), |b| {
            !b.sent_messages().is_empty()
        })
        .await;
    peers
        .smtp
        .wait_for("the e-mail", Duration::from_secs(10), |s| {
            !s.mails().is_empty()
        })
        .await;
    // Nothing more follows.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let sent = peers.bot.sent_messages();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["chat_id"].as_i64(), Some(chat_of(&owner)));
    let text = sent[0]["text"].as_str().unwrap();
    for want in [
        format!("New lead #{lead} for you"),
        "Ann Smith".to_owned(),
        "+79991234567".to_owned(),
        "ann@example.net".to_owned(),
        "Call me about X200".to_owned(),
        "Channel: site (form)".to_owned(),
        format!("https://crm.example/leads/{lead}"),
    ] {
        assert!(text.contains(&want), "{want:?} not in {text:?}");
    }
    let mails = peers.smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0].to, vec![format!("{owner}@ourcompany.example")]);
    assert_eq!(mails[0].from, "leadgate@ourcompany.example");
    let subject = mails[0].header("Subject").unwrap();
    assert!(
        subject.contains(&format!("New lead #{lead} for you")),
        "{subject}"
    );
    let body = mails[0].body();
    assert!(
        body.contains(&format!("https://crm.example/leads/{lead}")),
        "{body}"
    );
    assert!(body.contains("Call me about X200"), "{body}");
    // The outbox says so.
    let sent_rows = db
        .int(
            &format!("SELECT COUNT(*) FROM notifications WHERE lead_id = {lead} AND sent_at IS NOT NULL AND attempts = 1"),
            None,
        )
        .await;
    assert_eq!(sent_rows, 2);
    let inbound = db
        .int(
            &format!("SELECT id FROM inbound_messages WHERE lead_id = {lead}"),
            None,
        )
        .await;
    let (code, out, err) = cli(cfg.path(), &["explain", &inbound.to_string()]);
    assert_eq!(code, 0, "{err}");
    for transport in ["telegram", "email"] {
        let want = format!("notified:    {owner} by {transport} (assigned): sent ");
        assert!(out.contains(&want), "{want:?} not in {out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_credentials_come_from_their_file_and_never_reach_the_log() {
    let peers = Peers::start().await;
    let cfg = config(&peers, "default = \"role:sales\"\n", "100ms");
    cfg.write("smtp.password", "s3cret-pw\n");
    let section = peers.notify_section("100ms").replace(
        "security = \"plain\"\n",
        "security = \"plain\"\nusername = \"leadgate\"\npassword_file = \"smtp.password\"\n",
    );
    cfg.write_main(&section);
    let daemon = Daemon::start(&cfg);
    post_lead(&cfg, "name=Gus&phone=89990000007").await;
    peers
        .smtp
        .wait_for("the e-mail", Duration::from_secs(10), |s| {
            !s.mails().is_empty()
        })
        .await;
    assert_eq!(
        peers.smtp.logins(),
        vec![("leadgate".to_owned(), "s3cret-pw".to_owned())]
    );
    let log = daemon.log_text();
    assert!(!log.contains("s3cret-pw"), "{log}");
    assert!(!log.contains(TOKEN), "{log}");
}

/// `[notify.email]` of [`notify_section`] with TLS instead of `plain`;
/// `ca_file`: the private CA to trust, if any.
fn with_tls(section: &str, security: &str, ca_file: Option<&str>) -> String {
    let ca = ca_file.map_or(String::new(), |f| format!("ca_file = \"{f}\"\n"));
    section.replace(
        "security = \"plain\"\n",
        &format!("security = \"{security}\"\n{ca}"),
    )
}

/// A relay whose certificate a private CA issued, trusted through
/// `ca_file` (relative to the configuration folder): the message goes over
/// TLS, once, to the right person with the template's subject and body.
async fn email_over_tls_with_a_private_ca(security: &str) {
    let cert = TestCertificate::issue();
    let peers = Peers {
        bot: FakeBotApi::start().await,
        smtp: match security {
            "tls" => SmtpSink::start_tls(&cert).await,
            _ => SmtpSink::start_starttls(&cert).await,
        },
    };
    let cfg = config(&peers, "default = \"role:sales\"\n", "100ms");
    cfg.write("smtp-ca.pem", &cert.ca_pem);
    cfg.write_main(&with_tls(
        &peers.notify_section("100ms"),
        security,
        Some("smtp-ca.pem"),
    ));
    let db = Db::open(&cfg.db_url).await;
    let _daemon = Daemon::start(&cfg);
    let lead = post_lead(
        &cfg,
        "name=Ida+Tls&phone=89990000031&comment=Quote+for+X300+please",
    )
    .await;
    let owner = assignee(&db, lead).await;
    peers
        .smtp
        .wait_for("the e-mail over TLS", Duration::from_secs(10), |s| {
            !s.mails().is_empty()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = peers.smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    let mail = &mails[0];
    assert!(mail.tls, "the message came over {security}");
    assert_eq!(mail.to, vec![format!("{owner}@ourcompany.example")]);
    let subject = mail.header("Subject").unwrap();
    assert!(
        subject.contains(&format!("New lead #{lead} for you")) && subject.contains("Ida Tls"),
        "{subject}"
    );
    let body = mail.body();
    for want in [
        "Quote for X300 please".to_owned(),
        "+79990000031".to_owned(),
        format!("https://crm.example/leads/{lead}"),
    ] {
        assert!(body.contains(&want), "{want:?} not in {body:?}");
    }
    assert_eq!(
        db.int(
            &format!(
                "SELECT COUNT(*) FROM notifications WHERE lead_id = {lead} AND transport = 'email' \
                 AND sent_at IS NOT NULL AND attempts = 1 AND last_error IS NULL"
            ),
            None,
        )
        .await,
        1
    );
    assert_eq!(peers.smtp.handshake_failures(), 0);
    // `check --online` connects the same way (TLS, the same trust).
    let path = cfg.path().to_owned();
    let (code, out, err) = tokio::task::spawn_blocking(move || cli(&path, &["check", "--online"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("notify.email: 127.0.0.1:"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn email_goes_over_implicit_tls_to_a_relay_a_private_ca_issued() {
    email_over_tls_with_a_private_ca("tls").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn email_goes_over_starttls_to_a_relay_a_private_ca_issued() {
    email_over_tls_with_a_private_ca("starttls").await;
}

/// Without `ca_file` the relay's certificate is not trusted: each attempt
/// records the certificate error and is retried; ingestion and Telegram go
/// on meanwhile. Trusting the CA (a reload) delivers each message once.
#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_smtp_certificate_is_retried_and_blocks_nothing() {
    let cert = TestCertificate::issue();
    let peers = Peers {
        bot: FakeBotApi::start().await,
        smtp: SmtpSink::start_tls(&cert).await,
    };
    let cfg = config(&peers, "default = \"role:sales\"\n", "50ms");
    cfg.write_main(&with_tls(&peers.notify_section("50ms"), "tls", None));
    let db = Db::open(&cfg.db_url).await;
    let daemon = Daemon::start(&cfg);
    let lead = post_lead(&cfg, "name=Jon&phone=89990000032").await;
    let owner = assignee(&db, lead).await;
    wait_for("failed TLS attempts", Duration::from_secs(10), async || {
        db.int(
            &format!(
                "SELECT COUNT(*) FROM notifications WHERE lead_id = {lead} AND transport = 'email' \
                 AND attempts >= 2 AND last_error IS NOT NULL AND sent_at IS NULL AND failed_at IS NULL"
            ),
            None,
        )
        .await
            == 1
    })
    .await;
    let errors = db
        .texts(&format!(
            "SELECT last_error FROM notifications WHERE lead_id = {lead} AND transport = 'email'"
        ))
        .await;
    let error = errors[0].clone().unwrap();
    assert!(
        error.to_lowercase().contains("certificate"),
        "the error names the certificate: {error}"
    );
    // A claim counts its attempt before the handshake: the second one's
    // failure may still be under way.
    wait_for(
        "two failed handshakes",
        Duration::from_secs(10),
        async || peers.smtp.handshake_failures() >= 2,
    )
    .await;
    assert!(peers.smtp.mails().is_empty());
    // Ingestion is not held up, and Telegram is delivered as usual.
    let started = Instant::now();
    let other = post_lead(&cfg, "name=Kim&phone=89990000033").await;
    assert!(started.elapsed() < Duration::from_secs(2));
    wait_for(
        "the Telegram messages",
        Duration::from_secs(10),
        async || peers.bot.sent_messages().len() == 2,
    )
    .await;
    assert_eq!(texts_to(&peers.bot, chat_of(&owner)).len(), 1);
    // The operator adds the CA and reloads: both e-mails go, once each.
    cfg.write("smtp-ca.pem", &cert.ca_pem);
    cfg.write_main(&with_tls(
        &peers.notify_section("50ms"),
        "tls",
        Some("smtp-ca.pem"),
    ));
    daemon.signal(libc::SIGHUP);
    wait_for(
        "delivery once trusted",
        Duration::from_secs(15),
        async || {
            db.int(
            "SELECT COUNT(*) FROM notifications WHERE transport = 'email' AND sent_at IS NOT NULL",
            None,
        )
        .await
            == 2
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = peers.smtp.mails();
    assert_eq!(mails.len(), 2, "{mails:?}");
    for id in [lead, other] {
        let to_lead = mails
            .iter()
            .filter(|m| {
                m.tls
                    && m.header("Subject")
                        .is_some_and(|s| s.contains(&format!("New lead #{id} ")))
            })
            .count();
        assert_eq!(to_lead, 1, "lead {id}: {mails:?}");
    }
}

/// A `ca_file` that is missing or holds no certificate is a `check` error
/// naming the field and the file.
#[test]
fn check_names_a_bad_smtp_ca_file() {
    let cfg = TestConfig::site(None, TEAM, "default = \"role:sales\"\n");
    cfg.write("notifier.token", &format!("{TOKEN}\n"));
    cfg.write_main(&with_tls(
        &notify_section("http://127.0.0.1:9/", 2525, "1s"),
        "tls",
        Some("certs/smtp-ca.pem"),
    ));
    let (code, _, err) = cli(cfg.path(), &["check"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("leadgate.toml:") && err.contains(": notify.email.ca_file: cannot read "),
        "{err}"
    );
    assert!(err.contains("certs/smtp-ca.pem"), "{err}");
    std::fs::create_dir_all(cfg.path().join("certs")).unwrap();
    cfg.write("certs/smtp-ca.pem", "this is not a certificate\n");
    let (code, _, err) = cli(cfg.path(), &["check"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(": notify.email.ca_file: no certificate in ")
            && err.contains("certs/smtp-ca.pem"),
        "{err}"
    );
    // A good one passes.
    cfg.write("certs/smtp-ca.pem", &TestCertificate::issue().ca_pem);
    let (code, out, err) = cli(cfg.path(), &["check"]);
    assert_eq!(code, 0, "{out}\n{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_points_pending_notifications_at_the_new_bot_api() {
    let peers = Peers::start().await;
    let dead = support::free_port();
    let cfg = TestConfig::site(None, TEAM, "default = \"role:sales\"\n");
    cfg.write("notifier.token", &format!("{TOKEN}\n"));
    cfg.write_main(&notify_section(
        &format!("http://127.0.0.1:{dead}/"),
        peers.smtp.port,
        "50ms",
    ));
    let db = Db::open(&cfg.db_url).await;
    let daemon = Daemon::start(&cfg);
    let lead = post_lead(&cfg, "name=Hal&phone=89990000008").await;
    wait_for("a failed attempt", Duration::from_secs(10), async || {
        db.int(
            "SELECT COUNT(*) FROM notifications WHERE transport = 'telegram' AND last_error IS NOT NULL",
            None,
        )
        .await
            == 1
    })
    .await;
    cfg.write_main(&peers.notify_section("50ms"));
    daemon.signal(libc::SIGHUP);
    let owner = assignee(&db, lead).await;
    wait_for(
        "delivery through the new URL",
        Duration::from_secs(10),
        async || texts_to(&peers.bot, chat_of(&owner)).len() == 1,
    )
    .await;
    assert_eq!(peers.smtp.mails().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_peer_is_retried_with_backoff_and_gets_the_message_once() {
    // Telegram is down (nothing listens on its port) and the SMTP relay
    // answers 451 twice.
    let bot_port = support::free_port();
    let smtp = SmtpSink::start().await;
    smtp.refuse_next(2);
    let cfg = TestConfig::site(None, TEAM, "default = \"role:sales\"\n");
    cfg.write("notifier.token", &format!("{TOKEN}\n"));
    cfg.write_main(&notify_section(
        &format!("http://127.0.0.1:{bot_port}/"),
        smtp.port,
        "50ms",
    ));
    let db = Db::open(&cfg.db_url).await;
    let daemon = Daemon::start(&cfg);
    let lead = post_lead(&cfg, "name=Bob&phone=89990000002").await;
    // Ingestion goes on while the peers fail.
    let started = Instant::now();
    let other = post_lead(&cfg, "name=Cid&phone=89990000003").await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let owner = assignee(&db, lead).await;
    wait_for("failed attempts", Duration::from_secs(10), async || {
        db.int(
            "SELECT COUNT(*) FROM notifications WHERE transport = 'telegram' AND attempts >= 2 \
             AND last_error IS NOT NULL AND sent_at IS NULL",
            None,
        )
        .await
            == 2
    })
    .await;
    // Telegram comes back.
    let peers = Peers {
        bot: FakeBotApi::start_on(bot_port, TOKEN).await,
        smtp,
    };
    wait_for(
        "delivery after the outage",
        Duration::from_secs(20),
        async || {
            !texts_to(&peers.bot, chat_of(&owner)).is_empty()
                && peers
                    .smtp
                    .mails()
                    .iter()
                    .filter(|m| m.to[0].starts_with(&owner))
                    .count()
                    >= 1
                && db
                    .int(
                        "SELECT COUNT(*) FROM notifications WHERE sent_at IS NOT NULL",
                        None,
                    )
                    .await
                    == 4
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Both leads, each person once per transport.
    assert_eq!(peers.bot.sent_messages().len(), 2);
    assert_eq!(peers.smtp.mails().len(), 2);
    assert_eq!(peers.smtp.refused(), 2);
    assert_eq!(peers.bot.calls("sendMessage").len(), 2);
    let row = db
        .row(
            &format!(
                "SELECT CAST(MAX(attempts) AS TEXT) AS attempts FROM notifications \
                 WHERE transport = 'telegram' AND lead_id IN ({lead}, {other})"
            ),
            0,
        )
        .await
        .unwrap();
    let attempts: i64 = row["attempts"].as_deref().unwrap().parse().unwrap();
    assert!(attempts >= 3, "{row:?}");
    // Backoff: a failing row waits 300ms, 600ms, 1.2s, 2s… (each scaled by
    // 0.5–1 for jitter), never at the 50ms poll rate.
    let log = daemon.log_text();
    let waits: Vec<u64> = log
        .lines()
        .filter(|l| {
            l.contains("will retry") && l.contains("lead=1 ") && l.contains("transport=telegram")
        })
        .filter_map(|l| {
            l.split("retry_in_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(waits.len() >= 2, "{log}");
    assert!(waits[0] >= 150 && waits[0] < 300, "{waits:?}");
    assert!(waits[1] >= 300 && waits[1] < 600, "{waits:?}");
    assert_eq!(
        db.int(
            "SELECT COUNT(*) FROM notifications WHERE failed_at IS NOT NULL OR last_error IS NOT NULL",
            None
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notification_older_than_max_age_is_given_up_with_an_error() {
    // Telegram never comes back.
    let bot_port = support::free_port();
    let cfg = TestConfig::site(None, TEAM, "default = \"role:sales\"\n");
    cfg.write("notifier.token", &format!("{TOKEN}\n"));
    let team = TEAM.replace("notify = [\"email\"]\n", "");
    cfg.write("team.toml", &team);
    cfg.write_main(&format!(
        "[notify]\npoll_every = \"50ms\"\nretry_first = \"200ms\"\nretry_max = \"400ms\"\nmax_age = \"1500ms\"\n\
         [notify.telegram]\ntoken_file = \"notifier.token\"\napi_url = \"http://127.0.0.1:{bot_port}/\"\n"
    ));
    let db = Db::open(&cfg.db_url).await;
    let daemon = Daemon::start(&cfg);
    let lead = post_lead(&cfg, "name=Fay&phone=89990000006").await;
    wait_for("giving up", Duration::from_secs(10), async || {
        db.int(
            &format!("SELECT COUNT(*) FROM notifications WHERE lead_id = {lead} AND failed_at IS NOT NULL"),
            None,
        )
        .await
            == 1
    })
    .await;
    let row = db
        .row(
            "SELECT CAST(attempts AS TEXT) AS attempts, last_error, CAST(sent_at AS TEXT) AS sent_at \
             FROM notifications WHERE lead_id = $1",
            lead,
        )
        .await
        .unwrap();
    let attempts: i64 = row["attempts"].as_deref().unwrap().parse().unwrap();
    assert!(attempts >= 3, "retried before giving up: {row:?}");
    assert!(row["last_error"].is_some(), "{row:?}");
    assert_eq!(row["sent_at"], None);
    let log = daemon.log_text();
    assert!(
        log.contains("ERROR") && log.contains("notification given up"),
        "{log}"
    );
    // Nothing is tried after that.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let again = db
        .int(
            &format!("SELECT attempts FROM notifications WHERE lead_id = {lead}"),
            None,
        )
        .await;
    assert_eq!(again, attempts);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_between_commit_and_delivery_still_delivers_once() {
    let peers = Peers::start().await;
    // The delivery task looks once at start, then not for an hour: the
    // lead is committed with its notifications, not delivered.
    let cfg = config(&peers, "default = \"role:sales\"\n", "1h");
    let db = Db::open(&cfg.db_url).await;
    let mut daemon = Daemon::start(&cfg);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lead = post_lead(&cfg, "name=Dan&phone=89990000004").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(peers.bot.sent_messages().is_empty());
    assert_eq!(
        db.int(
            &format!(
                "SELECT COUNT(*) FROM notifications WHERE lead_id = {lead} AND sent_at IS NULL"
            ),
            None
        )
        .await,
        2
    );
    daemon.kill9();
    cfg.write_main(&peers.notify_section("100ms"));
    daemon.restart();
    let owner = assignee(&db, lead).await;
    wait_for(
        "delivery after the restart",
        Duration::from_secs(10),
        async || peers.bot.sent_messages().len() == 1 && peers.smtp.mails().len() == 1,
    )
    .await;
    daemon.restart();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(texts_to(&peers.bot, chat_of(&owner)).len(), 1);
    assert_eq!(peers.bot.sent_messages().len(), 1);
    assert_eq!(peers.smtp.mails().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_escalation_tells_the_new_assignee() {
    let peers = Peers::start().await;
    let routing = "default = \"role:sales\"\n[sla]\nform = \"1s\"\nsupervisor_after = \"1s\"\nsweep_every = \"200ms\"\n";
    let cfg = config(&peers, routing, "100ms");
    let db = Db::open(&cfg.db_url).await;
    let _daemon = Daemon::start(&cfg);
    let lead = post_lead(&cfg, "name=Eve&phone=89990000005").await;
    let first = assignee(&db, lead).await;
    wait_for("the escalation", Duration::from_secs(15), async || {
        assignee(&db, lead).await != first
    })
    .await;
    let second = assignee(&db, lead).await;
    wait_for(
        "the escalation message",
        Duration::from_secs(10),
        async || {
            !texts_to(&peers.bot, chat_of(&second)).is_empty()
                && peers
                    .smtp
                    .mails()
                    .iter()
                    .any(|m| m.to[0] == format!("{second}@ourcompany.example"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let to_second = texts_to(&peers.bot, chat_of(&second));
    assert_eq!(to_second.len(), 1, "{to_second:?}");
    assert!(
        to_second[0].contains(&format!("Overdue lead #{lead} is now yours")),
        "{to_second:?}"
    );
    assert!(to_second[0].contains("not taken by"), "{to_second:?}");
    let to_first = texts_to(&peers.bot, chat_of(&first));
    assert_eq!(to_first.len(), 1, "the assignment only: {to_first:?}");
    assert!(to_first[0].contains(&format!("New lead #{lead}")));
    let mail = peers
        .smtp
        .mails()
        .into_iter()
        .find(|m| m.to[0] == format!("{second}@ourcompany.example"))
        .unwrap();
    assert!(mail.header("Subject").unwrap().contains("Overdue lead"));
    // Still not taken a second later: the supervisor (e-mail only) is told.
    let head = async || {
        peers
            .smtp
            .mails()
            .into_iter()
            .filter(|m| m.to[0] == "head@ourcompany.example")
            .collect::<Vec<_>>()
    };
    wait_for(
        "the supervisor's mail",
        Duration::from_secs(10),
        async || !head().await.is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let to_head = head().await;
    assert_eq!(to_head.len(), 1);
    let subject = to_head[0].header("Subject").unwrap();
    assert!(
        subject.contains(&format!("Lead #{lead} still not taken by {second}")),
        "{subject}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_postgres_send_each_notification_once() {
    let Some(pg) = support::pg::server() else {
        return;
    };
    let url = pg.create_database();
    let peers = Peers::start().await;
    let a = config_on(
        Some(url.clone()),
        &peers,
        "default = \"role:sales\"\n",
        "20ms",
    );
    let b = config_on(
        Some(url.clone()),
        &peers,
        "default = \"role:sales\"\n",
        "20ms",
    );
    let db = Db::open(&url).await;
    let _da = Daemon::start(&a);
    let _db = Daemon::start(&b);
    let mut leads = Vec::new();
    for i in 0..10 {
        let cfg = if i % 2 == 0 { &a } else { &b };
        leads.push(post_lead(cfg, &format!("name=N{i}&phone=8999000002{i}")).await);
    }
    wait_for("all sent", Duration::from_secs(20), async || {
        db.int(
            "SELECT COUNT(*) FROM notifications WHERE sent_at IS NOT NULL",
            None,
        )
        .await
            == 20
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(peers.bot.sent_messages().len(), 10);
    assert_eq!(peers.smtp.mails().len(), 10);
    for lead in leads {
        let owner = assignee(&db, lead).await;
        let texts = texts_to(&peers.bot, chat_of(&owner));
        let mine = texts
            .iter()
            .filter(|t| t.contains(&format!("New lead #{lead} ")))
            .count();
        assert_eq!(mine, 1, "lead {lead}: {texts:?}");
    }
}

const PAIR_CAPPED: &str = r#"
[users.olga]
name = "Olga"
max_open_leads = 1
[users.ivan]
name = "Ivan"
max_open_leads = 1
[roles.pair]
members = ["olga", "ivan"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_lead_is_released_by_the_rules_strategy_not_the_roles() {
    // The role turns round-robin; the rule says least-loaded.
    let routing = "default = \"role:pair\"\n[[rules]]\nname = \"web\"\nwhen.channel = \"site\"\nassign = \"role:pair\"\nstrategy = \"least_loaded\"\n[sla]\nsweep_every = \"200ms\"\n";
    let cfg = TestConfig::site(None, PAIR_CAPPED, routing);
    let db = Db::open(&cfg.db_url).await;
    let _daemon = Daemon::start(&cfg);
    let a = post_lead(&cfg, "name=A&phone=89990000011").await;
    let b = post_lead(&cfg, "name=B&phone=89990000012").await;
    let queued = post_lead(&cfg, "name=C&phone=89990000013").await;
    let (holder_a, holder_b) = (assignee(&db, a).await, assignee(&db, b).await);
    assert_ne!(holder_a, holder_b);
    // The first holder is busy with theirs (open, not new); the second
    // closed theirs: least-loaded is the second, round-robin would start
    // at the pool's first turn.
    db.exec(&format!(
        "UPDATE leads SET status = 'in_progress' WHERE id = {a}"
    ))
    .await;
    db.exec(&format!(
        "UPDATE leads SET status = 'converted' WHERE id = {b}"
    ))
    .await;
    db.exec(&format!(
        "UPDATE lead_timers SET due_at = created_at WHERE lead_id = {queued} AND kind = 'assign'"
    ))
    .await;
    wait_for("release", Duration::from_secs(10), async || {
        db.row("SELECT assignee_user FROM leads WHERE id = $1", queued)
            .await
            .and_then(|r| r["assignee_user"].clone())
            .is_some()
    })
    .await;
    assert_eq!(assignee(&db, queued).await, holder_b);
    let note = db
        .row("SELECT routing_note FROM leads WHERE id = $1", queued)
        .await
        .unwrap()["routing_note"]
        .clone()
        .unwrap();
    assert!(note.contains("least_loaded"), "{note}");
}

const MANGO: &[(&str, &str)] = &[(
    "mango",
    "kind = \"telephony\"\n[telephony]\nprovider = \"mango\"\napi_key = \"test_key\"\napi_salt = \"test_salt\"\n",
)];

async fn mango(cfg: &TestConfig, entry: &str, seq: u32, state: &str) {
    let now = chrono::Utc::now().timestamp();
    let mut event = serde_json::json!({
        "entry_id": entry,
        "call_id": format!("{entry}-leg1"),
        "timestamp": now,
        "seq": seq,
        "call_state": state,
        "location": "queue",
        "from": {"number": "79992345670"},
        "to": {"number": "74951112233", "line_number": "74951112233"},
    });
    if state == "Disconnected" {
        event["disconnect_reason"] = 1100.into();
    }
    let json = event.to_string();
    let sign = hex::encode(Sha256::digest(format!("test_key{json}test_salt")));
    let form = [
        ("vpbx_api_key", "test_key"),
        ("sign", &sign),
        ("json", &json),
    ];
    let resp = reqwest::Client::new()
        .post(format!("{}/telephony/mango/events/call", cfg.base_url()))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_missed_call_gets_its_own_callback_deadline() {
    let routing =
        "default = \"role:sales\"\n[sla]\nmissed_call = \"1s\"\nsweep_every = \"200ms\"\n";
    let team = TEAM.replace("notify = [\"email\"]\n", "");
    let cfg = TestConfig::new(None, MANGO, &team, routing);
    let db = Db::open(&cfg.db_url).await;
    let _daemon = Daemon::start(&cfg);
    let overdue = async || {
        db.int(
            "SELECT COUNT(*) FROM activities WHERE kind = 'callback_overdue'",
            None,
        )
        .await
    };
    mango(&cfg, "E1", 1, "Appeared").await;
    mango(&cfg, "E1", 2, "Disconnected").await;
    wait_for(
        "the first callback deadline",
        Duration::from_secs(10),
        async || overdue().await == 1,
    )
    .await;
    let leads = db.int("SELECT COUNT(*) FROM leads", None).await;
    // The same number calls again and nobody answers.
    mango(&cfg, "E2", 1, "Appeared").await;
    mango(&cfg, "E2", 2, "Disconnected").await;
    assert_eq!(db.int("SELECT COUNT(*) FROM leads", None).await, leads);
    wait_for(
        "the second callback deadline",
        Duration::from_secs(10),
        async || overdue().await == 2,
    )
    .await;
    // And no third one without a third missed call.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(overdue().await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_online_asks_the_notifier_bot_and_the_smtp_server() {
    let peers = Peers::start().await;
    let cfg = config(&peers, "default = \"role:sales\"\n", "100ms");
    let path = cfg.path().to_owned();
    let (code, out, err) = tokio::task::spawn_blocking(move || cli(&path, &["check", "--online"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("notify.telegram: token OK (@ourcompany_bot)"),
        "{out}"
    );
    assert!(out.contains("notify.email: 127.0.0.1:"), "{out}");
    assert_eq!(peers.bot.calls("getMe").len(), 1);
    // A token the API refuses.
    cfg.write("notifier.token", "7000000001:AAwrong\n");
    let path = cfg.path().to_owned();
    let (code, _, err) = tokio::task::spawn_blocking(move || cli(&path, &["check", "--online"]))
        .await
        .unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("leadgate.toml: notify.telegram: "), "{err}");
    assert!(!err.contains("AAwrong"), "{err}");
}

#[test]
fn check_names_the_file_and_field_of_notification_mistakes() {
    let cfg = TestConfig::site(None, TEAM, "default = \"role:sales\"\n");
    cfg.write(
        "team.toml",
        &format!(
            "{TEAM}\n[users.nochat]\nname = \"No chat\"\nnotify = [\"telegram\", \"pigeon\"]\n"
        ),
    );
    cfg.write_main(
        "[notify]\nsupervisors = [\"ghost\"]\n[notify.telegram]\ntoken = \"1:abc\"\n[notify.templates]\nassigned = \"Lead {lead}\"\nbody = \"{summary\"\n",
    );
    let (code, _, err) = cli(cfg.path(), &["check"]);
    assert_eq!(code, 2, "{err}");
    for want in [
        "leadgate.toml: notify.supervisors[0]: unknown user \"ghost\"",
        "leadgate.toml: notify.templates.assigned: unknown placeholder {lead}",
        "leadgate.toml: notify.templates.body: unclosed {",
        "team.toml: users.nochat.notify: \"telegram\" needs users.nochat.telegram_chat_id",
        "team.toml: users.nochat.notify: unknown transport \"pigeon\"",
        "team.toml: users.head.notify: \"email\" is not enabled",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
}

/// Eight leads for one person at once: Telegram takes about one message a
/// second per chat, so the notifier sends a short burst and then paces the
/// rest instead of collecting 429s; each message still goes exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_leads_for_one_person_is_paced_to_what_telegram_takes() {
    const LEADS: usize = 8;
    let peers = Peers::start().await;
    let cfg = config(&peers, "default = \"user:olga\"\n", "100ms");
    let _daemon = Daemon::start(&cfg);
    for i in 0..LEADS {
        post_lead(&cfg, &format!("name=Burst+{i}&phone=8999555{i:04}")).await;
    }
    peers
        .bot
        .wait_for("every message", Duration::from_secs(30), |b| {
            texts_to(b, chat_of("olga")).len() >= LEADS
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let texts = texts_to(&peers.bot, chat_of("olga"));
    for i in 0..LEADS {
        let about = format!("Burst {i}");
        let n = texts.iter().filter(|t| t.contains(&about)).count();
        assert_eq!(n, 1, "{about}: {n} messages in {texts:#?}");
    }
    // A burst of three, then one a second: any four in a row span a second
    // (less a little for the timers' slack).
    let sent = peers.bot.calls("sendMessage");
    assert_eq!(sent.len(), LEADS, "sendMessage calls");
    for four in sent.windows(4) {
        let span = four[3] - four[0];
        assert!(
            span >= Duration::from_millis(900),
            "four messages to one chat within {span:?}: {:?}",
            sent.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>()
        );
    }
}
