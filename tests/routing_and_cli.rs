//! Routing, identification and the CLI against the real daemon and store.

mod support;

use support::daemon::{Daemon, TEAM, TestConfig, cli};
use support::db::Db;
use support::pg;
use support::site::{assignee, post_form};

async fn round_robin_survives_restarts(db_url: Option<String>) {
    let cfg = TestConfig::site(db_url, TEAM, "default = \"role:sales\"\n");
    let db = Db::open(&cfg.db_url).await;
    let mut daemon = Daemon::start(&cfg);
    let mut got = Vec::new();
    for i in 0..7 {
        if i == 3 || i == 5 {
            daemon.restart();
        }
        let r = post_form(&cfg, "site", &format!("name=N{i}&phone=8999000000{i}")).await;
        got.push(assignee(&db, r["lead_id"].as_i64().unwrap()).await);
    }
    assert_eq!(
        got,
        ["olga", "ivan", "anna", "olga", "ivan", "anna", "olga"]
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_turns_survive_restarts_on_sqlite() {
    round_robin_survives_restarts(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_turns_survive_restarts_on_postgres() {
    let Some(pg) = pg::server() else { return };
    round_robin_survives_restarts(Some(pg.create_database())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn least_loaded_counts_open_leads_only() {
    let team = "[users.a]\n[users.b]\n[roles.pool]\nmembers = [\"a\", \"b\"]\nstrategy = \"least_loaded\"\n";
    let cfg = TestConfig::site(None, team, "default = \"role:pool\"\n");
    let db = Db::open(&cfg.db_url).await;
    let _daemon = Daemon::start(&cfg);
    let first = post_form(&cfg, "site", "phone=89990000001").await["lead_id"]
        .as_i64()
        .unwrap();
    let second = post_form(&cfg, "site", "phone=89990000002").await["lead_id"]
        .as_i64()
        .unwrap();
    assert_eq!(assignee(&db, first).await, "a");
    assert_eq!(assignee(&db, second).await, "b");
    // The CRM closes a's lead: a now has the fewest open leads, twice over.
    db.exec(&format!(
        "UPDATE leads SET status = 'converted' WHERE id = {first}"
    ))
    .await;
    let third = post_form(&cfg, "site", "phone=89990000003").await["lead_id"]
        .as_i64()
        .unwrap();
    assert_eq!(assignee(&db, third).await, "a");
    let fourth = post_form(&cfg, "site", "phone=89990000004").await["lead_id"]
        .as_i64()
        .unwrap();
    assert_eq!(
        assignee(&db, fourth).await,
        "a",
        "tie between a and b goes to the first member"
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_route_by_region_product_and_any_field_with_fallbacks() {
    let channels: &[(&str, &str)] = &[
        (
            "site",
            "kind = \"form\"\nresponsible = \"user:anna\"\n[form]\nrate_limit_per_minute = 0\n",
        ),
        (
            "landing",
            "kind = \"form\"\n[form]\nrate_limit_per_minute = 0\n",
        ),
    ];
    let routing = r#"
default = "user:olga"
[[rules]]
name = "kazan"
when.region = "Казань"
assign = "role:kazan"
[[rules]]
name = "machines"
when.product = { regex = "^X[0-9]{3}$" }
assign = "user:ivan"
[[rules]]
name = "red-partners"
when.color = { one_of = ["red", "crimson"] }
when.utm_source = { prefix = "partner" }
assign = "user:pavel"
"#;
    let cfg = TestConfig::new(None, channels, TEAM, routing);
    let db = Db::open(&cfg.db_url).await;
    let _daemon = Daemon::start(&cfg);
    let cases = [
        (
            "site",
            "phone=89990000011&city=%D0%9A%D0%B0%D0%B7%D0%B0%D0%BD%D1%8C",
            "pavel",
            "rule:kazan",
        ),
        (
            "site",
            "phone=89990000012&product=X200",
            "ivan",
            "rule:machines",
        ),
        (
            "site",
            "phone=89990000013&color=Red&utm_source=partner-7",
            "pavel",
            "rule:red-partners",
        ),
        (
            "site",
            "phone=89990000014&color=red&utm_source=google",
            "anna",
            "channel_default",
        ),
        (
            "landing",
            "phone=89990000015&product=Y1",
            "olga",
            "global_default",
        ),
    ];
    for (channel, body, who, by) in cases {
        let lead = post_form(&cfg, channel, body).await["lead_id"]
            .as_i64()
            .unwrap();
        let row = db
            .row(
                "SELECT assignee_user, assigned_by FROM leads WHERE id = $1",
                lead,
            )
            .await
            .unwrap();
        assert_eq!(row["assignee_user"].as_deref(), Some(who), "{body}");
        assert_eq!(row["assigned_by"].as_deref(), Some(by), "{body}");
    }
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_returning_contact_adds_an_activity_and_a_non_source_channel_makes_no_lead() {
    let channels: &[(&str, &str)] = &[
        (
            "site",
            "kind = \"form\"\n[form]\nrate_limit_per_minute = 0\n",
        ),
        (
            "vendors",
            "kind = \"form\"\nlead_source = false\n[form]\nrate_limit_per_minute = 0\n",
        ),
    ];
    let cfg = TestConfig::new(None, channels, TEAM, "default = \"role:sales\"\n");
    let db = Db::open(&cfg.db_url).await;
    let _daemon = Daemon::start(&cfg);
    let first = post_form(&cfg, "site", "name=Lev&phone=8 999 555-00-01&comment=first").await;
    assert_eq!(first["disposition"], "lead_created");
    // Same person by e-mail and a differently written phone, new question.
    let again = post_form(
        &cfg,
        "site",
        "phone=%2B79995550001&email=LEV%40example.ru&comment=second",
    )
    .await;
    assert_eq!(again["disposition"], "activity_added");
    assert_eq!(again["lead_id"], first["lead_id"]);
    let activities = db.int("SELECT COUNT(*) FROM activities", None).await;
    assert_eq!(activities, 1);
    // The e-mail learnt from the second message identifies the contact too.
    let third = post_form(&cfg, "site", "email=lev@example.ru&comment=third").await;
    assert_eq!(third["disposition"], "activity_added");

    // Someone else quoting the same phone with their own e-mail (an office
    // number, a forwarded request) is a new person, not Lev's activity.
    let other = post_form(
        &cfg,
        "site",
        "name=Viktor&phone=89995550001&email=viktor@example.ru",
    )
    .await;
    assert_eq!(other["disposition"], "lead_created");
    assert_ne!(other["lead_id"], first["lead_id"]);

    let vendor = post_form(&cfg, "vendors", "name=V&phone=89990009988").await;
    assert_eq!(vendor["disposition"], "not_lead_source");
    assert_eq!(vendor["lead_id"], serde_json::Value::Null);
    assert_eq!(db.int("SELECT COUNT(*) FROM leads", None).await, 2);
    assert_eq!(
        db.int("SELECT COUNT(*) FROM inbound_messages", None).await,
        5
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_lists_leads_and_explains_decisions() {
    let cfg = TestConfig::site(None, TEAM, support::daemon::ROUTING);
    let daemon = Daemon::start(&cfg);
    let lead = post_form(
        &cfg,
        "site",
        "name=Ivan+Petrov&phone=89123456789&region=%D0%9A%D0%B0%D0%B7%D0%B0%D0%BD%D1%8C",
    )
    .await;
    let (code, out, err) = cli(cfg.path(), &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "daemon:   running on 127.0.0.1:{}, ready",
            cfg.port
        )),
        "{out}"
    );
    assert!(out.contains("leads:    1 open"), "{out}");
    let site = out
        .lines()
        .find(|l| l.starts_with("site "))
        .expect("a line for the channel");
    assert_eq!(
        site.split_whitespace().take(5).collect::<Vec<_>>(),
        ["site", "form", "yes", "1", "1"],
        "{out}"
    );
    drop(daemon);
    let (_, out, _) = cli(cfg.path(), &["status"]);
    assert!(out.contains("daemon:   not answering"), "{out}");

    let (code, out, err) = cli(cfg.path(), &["leads", "--limit", "5"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Ivan Petrov") && out.contains("+79123456789") && out.contains("rule:kazan"),
        "{out}"
    );

    let id = lead["id"].as_i64().unwrap().to_string();
    let (code, out, err) = cli(cfg.path(), &["explain", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("disposition: lead_created"), "{out}");
    assert!(out.contains("assigned to: pavel (role kazan)"), "{out}");
    assert!(out.contains("assigned by: rule:kazan"), "{out}");

    let (code, _, err) = cli(cfg.path(), &["explain", "999999"]);
    assert_ne!(code, 0);
    assert!(err.contains("no inbound message with id 999999"), "{err}");
}

#[test]
fn check_reports_every_problem_with_file_line_and_field() {
    let cfg = TestConfig::new(
        None,
        &[
            ("site", "kind = \"form\"\nlead_sorce = false\n"),
            ("bad", "kind = \"form\"\nresponsible = \"role:ghosts\"\n"),
        ],
        TEAM,
        "default = \"user:nobody\"\n",
    );
    let (code, _, err) = cli(cfg.path(), &["check"]);
    assert_eq!(code, 2, "{err}");
    let site = cfg.path().join("channels.d/site.toml");
    let bad = cfg.path().join("channels.d/bad.toml");
    let routing = cfg.path().join("routing.toml");
    assert!(
        err.contains(&format!(
            "{}:2:1: unknown field `lead_sorce`",
            site.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}:2:15: responsible: role:ghosts is not defined",
            bad.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}:1:11: default: user:nobody is not defined",
            routing.display()
        )),
        "{err}"
    );

    let good = TestConfig::corpus(None);
    let (code, out, err) = cli(good.path(), &["check"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration OK: 3 channel(s)"), "{out}");
}

#[test]
fn secrets_never_appear_in_errors() {
    let cfg = TestConfig::site(
        Some("postgres://leadgate:hunter2secret@127.0.0.1:1/nowhere".into()),
        TEAM,
        "",
    );
    let (code, out, err) = cli(cfg.path(), &["migrate"]);
    assert_ne!(code, 0);
    assert!(
        !err.contains("hunter2secret") && !out.contains("hunter2secret"),
        "{err}"
    );
    assert!(err.contains("postgres://127.0.0.1:1/nowhere"), "{err}");
}

/// `leadgate check | head -c0` (a reader that has had enough): the command
/// ends by SIGPIPE as Unix tools do, not with a panic on the closed pipe.
#[test]
fn a_command_writing_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let cfg = TestConfig::corpus(None);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(support::daemon::binary())
        .arg("--config")
        .arg(cfg.path())
        .arg("check")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {err}",
        out.status
    );
}
