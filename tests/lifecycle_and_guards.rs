//! Per-IP rate limiting, environment overrides, graceful stop.

mod support;

use std::time::Duration;

use futures_util::StreamExt;

use support::daemon::{Daemon, TEAM, TestConfig, binary, cli};
use support::db::Db;

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_from_one_address_gets_429_with_retry_after() {
    let channels: &[(&str, &str)] = &[(
        "site",
        "kind = \"form\"\n[form]\nrate_limit_per_minute = 3\n",
    )];
    let cfg = TestConfig::new(None, channels, TEAM, "default = \"role:sales\"\n");
    let _daemon = Daemon::start(&cfg);
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..6 {
        let r = client
            .post(format!("{}/forms/site", cfg.base_url()))
            .form(&[("phone", format!("8999123000{i}"))])
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    let db = Db::open(&cfg.db_url).await;
    assert_eq!(db.int("SELECT COUNT(*) FROM leads", None).await, 3);
    db.close().await;
}

/// Behind a reverse proxy every visitor arrives from the proxy's address:
/// with the proxy in `http.trusted_proxies` the per-address limit applies
/// to the visitors `X-Forwarded-For` names, while a peer that is not
/// trusted cannot pick its address by sending the header.
#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_each_visitor_has_its_own_limit() {
    let channels: &[(&str, &str)] = &[(
        "site",
        "kind = \"form\"\n[form]\nrate_limit_per_minute = 3\n",
    )];
    let cfg = TestConfig::new(None, channels, TEAM, "default = \"role:sales\"\n");
    cfg.write(
        "leadgate.toml",
        &format!(
            "[database]\nurl = \"{}\"\n[http]\nlisten = \"127.0.0.1:{}\"\ntrusted_proxies = [\"127.0.0.1\"]\n",
            cfg.db_url, cfg.port
        ),
    );
    let _daemon = Daemon::start(&cfg);
    let post = |client: &reqwest::Client, visitor: &str, n: usize| {
        client
            .post(format!("{}/forms/site", cfg.base_url()))
            .header("x-forwarded-for", format!("198.51.100.250, {visitor}"))
            .form(&[("phone", format!("8999124{n:04}"))])
            .send()
    };
    let proxy = reqwest::Client::new();
    let mut statuses = Vec::new();
    for (n, visitor) in ["203.0.113.1", "203.0.113.2"]
        .iter()
        .cycle()
        .take(8)
        .enumerate()
    {
        statuses.push((
            *visitor,
            post(&proxy, visitor, n).await.unwrap().status().as_u16(),
        ));
    }
    let refused: Vec<_> = statuses.iter().filter(|(_, s)| *s == 429).collect();
    // Three each (the burst), then 429 for each: not three for all of them.
    assert_eq!(
        refused,
        [&("203.0.113.1", 429), &("203.0.113.2", 429)],
        "{statuses:?}"
    );
    // From an address that is not a trusted proxy the header counts for
    // nothing: four posts naming four visitors are one sender.
    let untrusted = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let mut from_untrusted = Vec::new();
    for n in 0..4 {
        let visitor = format!("203.0.113.{}", 10 + n);
        from_untrusted.push(
            post(&untrusted, &visitor, 100 + n)
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(from_untrusted, [200, 200, 200, 429]);
}

#[test]
fn environment_overrides_the_main_file() {
    let cfg = TestConfig::corpus(None);
    let elsewhere = cfg.path().join("elsewhere.db");
    let out = std::process::Command::new(binary())
        .args(["--config", cfg.path().to_str().unwrap(), "migrate"])
        .env(
            "LEADGATE__DATABASE__URL",
            format!("sqlite://{}", elsewhere.display()),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        elsewhere.exists(),
        "the database was created where the environment said"
    );
    assert!(
        !cfg.path().join("leads.db").exists(),
        "not where the file said"
    );

    let out = std::process::Command::new(binary())
        .args(["--config", cfg.path().to_str().unwrap(), "check"])
        .env("LEADGATE__HTTP__LISTN", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("LEADGATE__HTTP__LISTN") && err.contains("unknown field `listn`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_commits_everything_acknowledged_and_exits_zero() {
    let channels: &[(&str, &str)] = &[(
        "site",
        "kind = \"form\"\n[form]\nrate_limit_per_minute = 0\n",
    )];
    let cfg = TestConfig::new(None, channels, TEAM, "default = \"role:sales\"\n");
    let mut daemon = Daemon::start(&cfg);
    let base = cfg.base_url();
    let mut clients = Vec::new();
    for c in 0..8 {
        let base = base.clone();
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acked = Vec::new();
            for i in 0..10_000 {
                let sent = client
                    .post(format!("{base}/forms/site"))
                    .form(&[("phone", format!("8996{c}{i:06}"))])
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => {
                        let v: serde_json::Value = r.json().await.unwrap();
                        acked.push(v["lead_id"].as_i64().unwrap());
                    }
                    Ok(r) => assert_eq!(r.status(), 503, "only 503 while stopping"),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = daemon.terminate();
        (status, daemon)
    })
    .await
    .unwrap();
    assert!(
        status.0.success(),
        "exit status {:?}\n{}",
        status.0,
        status.1.log_text()
    );
    let mut acked = Vec::new();
    for c in clients {
        acked.extend(c.await.unwrap());
    }
    assert!(!acked.is_empty());
    let db = Db::open(&cfg.db_url).await;
    assert_eq!(
        db.int("SELECT COUNT(*) FROM leads", None).await,
        acked.len() as i64
    );
    db.close().await;
    let (code, out, _) = cli(cfg.path(), &["leads", "--limit", "1"]);
    assert_eq!(code, 0);
    assert!(out.contains("site"));
}

#[test]
fn systemd_hears_ready_watchdog_and_stopping_in_order() {
    use std::os::unix::net::UnixDatagram;
    let cfg = TestConfig::corpus(None);
    let socket_path = cfg.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut daemon = Daemon::start_with_env(
        &cfg,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !received.iter().any(|m: &String| m.contains("WATCHDOG=1")) {
        let n = socket.recv(&mut buf).expect("a notification within 10 s");
        received.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let status = daemon.terminate();
    assert!(status.success());
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while let Ok(n) = socket.recv(&mut buf) {
        received.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let position = |what: &str| received.iter().position(|m| m.contains(what));
    let ready = position("READY=1").expect("READY=1");
    let watchdog = position("WATCHDOG=1").expect("WATCHDOG=1");
    let stopping = position("STOPPING=1").expect("STOPPING=1");
    assert!(ready < watchdog && watchdog < stopping, "{received:?}");
    assert!(
        received[ready].contains("STATUS=serving 3 channel(s)"),
        "{received:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_applies_a_valid_config_and_keeps_the_old_one_when_invalid() {
    let channels: &[(&str, &str)] = &[
        (
            "site",
            "kind = \"form\"\n[form]\nrate_limit_per_minute = 0\n",
        ),
        (
            "old",
            "kind = \"form\"\n[form]\nrate_limit_per_minute = 0\n",
        ),
    ];
    let cfg = TestConfig::new(None, channels, TEAM, "default = \"user:olga\"\n");
    // RUST_LOG would win over [log] level, which this test reloads.
    let daemon = Daemon::start_with_env(&cfg, &[("RUST_LOG", "")]);
    let client = reqwest::Client::new();
    let post = |channel: &'static str, phone: &'static str| {
        let (client, base) = (client.clone(), cfg.base_url());
        async move {
            client
                .post(format!("{base}/forms/{channel}"))
                .form(&[("phone", phone)])
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(post("old", "89990000101").await.status(), 200);
    assert_eq!(post("new", "89990000102").await.status(), 404);

    // A slow client is mid-request when the reload happens.
    let base = cfg.base_url();
    let in_flight = tokio::spawn(async move {
        let body = futures_util::stream::iter(vec![
            Ok::<_, std::io::Error>("phone=8999000".to_owned()),
            Ok("0103".to_owned()),
        ])
        .then(|chunk| async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            chunk
        });
        reqwest::Client::new()
            .post(format!("{base}/forms/site"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .unwrap()
            .status()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::remove_file(cfg.path().join("channels.d/old.toml")).unwrap();
    cfg.write(
        "channels.d/new.toml",
        "kind = \"form\"\n[form]\nrate_limit_per_minute = 0\n",
    );
    cfg.write("routing.toml", "default = \"user:ivan\"\n");
    daemon.signal(libc::SIGHUP);
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the in-flight post survives the reload"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        post("old", "89990000104").await.status(),
        404,
        "removed channel"
    );
    let r: serde_json::Value = post("new", "89990000105").await.json().await.unwrap();
    let db = Db::open(&cfg.db_url).await;
    let lead = db
        .row(
            "SELECT assignee_user FROM leads WHERE id = $1",
            r["lead_id"].as_i64().unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        lead["assignee_user"].as_deref(),
        Some("ivan"),
        "new routing applies"
    );

    // Settings a reload cannot apply are named, not silently ignored.
    cfg.write_main("[instance]\nlease_ttl = \"45s\"\n");
    daemon.signal(libc::SIGHUP);
    let restart_line = until_logged(&daemon, "apply at the next restart").await;
    assert!(
        restart_line.contains("[instance]") && !restart_line.contains("[http]"),
        "{restart_line}"
    );
    assert_eq!(post("new", "89990000107").await.status(), 200);

    // The log level applies at once, before the reload's own lines: at
    // `warn` its info line is gone while its warning (an explicit format
    // is a start-only change) is there; back at `info` it is logged again.
    let reloaded = || daemon.log_text().matches("configuration reloaded").count();
    let with_log = |log: &str| {
        format!(
            "[database]\nurl = \"{}\"\nacquire_timeout = \"1s\"\n[http]\nlisten = \"127.0.0.1:{}\"\n\
             [instance]\nlease_ttl = \"45s\"\n[log]\n{log}\n",
            cfg.db_url, cfg.port
        )
    };
    let before = reloaded();
    cfg.write(
        "leadgate.toml",
        &with_log("level = \"warn\"\nformat = \"plain\""),
    );
    daemon.signal(libc::SIGHUP);
    let format_line = until_logged(&daemon, "[log] format").await;
    assert!(format_line.contains("[instance]"), "{format_line}");
    assert_eq!(reloaded(), before, "an info line passed the warn level");
    cfg.write("leadgate.toml", &with_log("level = \"info\""));
    daemon.signal(libc::SIGHUP);
    for _ in 0..100 {
        if reloaded() > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = daemon.log_text();
    assert_eq!(reloaded(), before + 1, "{log}");
    assert_eq!(log.matches("log level changed").count(), 1, "{log}");

    // An invalid config is refused; the running one stays.
    cfg.write("routing.toml", "default = \"user:ghost\"\n");
    cfg.write("channels.d/broken.toml", "kind = \"form\"\nbogus = 1\n");
    daemon.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r: serde_json::Value = post("new", "89990000106").await.json().await.unwrap();
    let lead = db
        .row(
            "SELECT assignee_user FROM leads WHERE id = $1",
            r["lead_id"].as_i64().unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(lead["assignee_user"].as_deref(), Some("ivan"));
    let log = daemon.log_text();
    assert!(
        log.contains("reload rejected") && log.contains("user:ghost") && log.contains("bogus"),
        "{log}"
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_listeners_get_one_notify_per_new_lead() {
    let Some(pg) = support::pg::server() else {
        return;
    };
    let channels: &[(&str, &str)] = &[(
        "site",
        "kind = \"form\"\n[form]\nrate_limit_per_minute = 0\n",
    )];
    let cfg = TestConfig::new(
        Some(pg.create_database()),
        channels,
        TEAM,
        "default = \"role:sales\"\n",
    );
    let _daemon = Daemon::start(&cfg);
    let mut listener = sqlx::postgres::PgListener::connect(&cfg.db_url)
        .await
        .unwrap();
    listener.listen("leadgate_leads").await.unwrap();
    let client = reqwest::Client::new();
    let mut leads = Vec::new();
    for body in [
        "phone=89990000201",
        "phone=89990000202",
        "phone=89990000201",
        "phone=89990000203&tranid=x",
    ] {
        let r: serde_json::Value = client
            .post(format!("{}/forms/site", cfg.base_url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if r["disposition"] == "lead_created" {
            leads.push(r["lead_id"].as_i64().unwrap().to_string());
        }
    }
    assert_eq!(
        leads.len(),
        3,
        "the repeated post is a duplicate, not a lead"
    );
    let mut heard = Vec::new();
    while heard.len() < leads.len() {
        let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .expect("a NOTIFY per lead within 5 s")
            .unwrap();
        heard.push(n.payload().to_owned());
    }
    assert_eq!(heard, leads);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.recv())
            .await
            .is_err(),
        "no extra notification"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_inbound_leads_commits_and_responses() {
    let cfg = TestConfig::corpus(None);
    let _daemon = Daemon::start(&cfg);
    let client = reqwest::Client::new();
    for body in [
        "phone=89990000301",
        "phone=89990000301",
        "comment=no+contact",
    ] {
        client
            .post(format!("{}/forms/site", cfg.base_url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
    }
    let r = client
        .get(format!("{}/metrics", cfg.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    for line in [
        "leadgate_inbound_total{channel=\"site\",disposition=\"lead_created\"} 1",
        "leadgate_inbound_total{channel=\"site\",disposition=\"duplicate\"} 1",
        "leadgate_leads_created_total{channel=\"site\"} 1",
        "leadgate_routing_decisions_total{assigned_by=\"channel_default\"} 1",
        "leadgate_http_responses_total{endpoint=\"forms\",status=\"200\"} 2",
        "leadgate_http_responses_total{endpoint=\"forms\",status=\"422\"} 1",
        "leadgate_store_up 1",
        "leadgate_commit_batch_items_count 2",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // A form is received when posted: its lag is the commit's own time.
    let lag = support::metrics::value(&text, "leadgate_channel_lag_seconds{channel=\"site\"}")
        .unwrap_or_else(|| panic!("no lag for the site channel in\n{text}"));
    assert!((0.0..5.0).contains(&lag), "lag {lag} s");
}

/// The first log line containing `needle`, waiting up to 5 s for it.
async fn until_logged(daemon: &Daemon, needle: &str) -> String {
    for _ in 0..100 {
        if let Some(line) = daemon.log_text().lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no log line with {needle:?}:\n{}", daemon.log_text());
}
