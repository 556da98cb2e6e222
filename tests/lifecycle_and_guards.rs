//! Per-IP rate limiting, environment overrides, graceful stop.

mod support;

use std::time::Duration;

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
