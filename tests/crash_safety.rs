//! The delivery promise under SIGKILL and under a database outage: every
//! request answered 2xx is stored exactly once; nothing is acknowledged that
//! was not committed.

mod support;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::Value;
use support::daemon::{Daemon, TEAM, TestConfig};
use support::db::Db;
use support::pg;

const OPEN_CHANNEL: &[(&str, &str)] = &[(
    "site",
    "kind = \"form\"\n[form]\nrate_limit_per_minute = 0\n",
)];
const SUBMISSIONS: usize = 2_000;
const CLIENTS: usize = 16;
const KILLS: usize = 6;

fn submission(i: usize) -> String {
    // Half carry a provider id (Tilda's tranid), half rely on the content
    // window to recognise a retry.
    let phone = format!("8998{i:07}");
    if i.is_multiple_of(2) {
        format!("name=Client+{i}&phone={phone}&tranid=crash%3A{i}")
    } else {
        format!("name=Client+{i}&phone={phone}&comment=order+{i}")
    }
}

async fn crash_drill(db_url: Option<String>) {
    let cfg = TestConfig::new(db_url, OPEN_CHANNEL, TEAM, "default = \"role:sales\"\n");
    let daemon = Arc::new(Mutex::new(Daemon::start(&cfg)));
    let pending = Arc::new(Mutex::new((0..SUBMISSIONS).collect::<VecDeque<_>>()));
    let acked: Arc<Mutex<HashMap<usize, i64>>> = Arc::default();
    let base = cfg.base_url();

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (pending, acked, base) = (pending.clone(), acked.clone(), base.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(240);
            loop {
                let Some(i) = pending.lock().unwrap().pop_front() else {
                    if acked.lock().unwrap().len() == SUBMISSIONS || Instant::now() > deadline {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let sent = client
                    .post(format!("{base}/forms/site"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(submission(i))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        let body: Value = r.json().await.expect("a 2xx carries its receipt");
                        let lead = body["lead_id"].as_i64().expect("lead id");
                        assert!(
                            acked.lock().unwrap().insert(i, lead).is_none(),
                            "acknowledged twice"
                        );
                    }
                    Ok(r) => {
                        let s = r.status();
                        assert!(
                            s == 503 || s == 502,
                            "unexpected HTTP {s} while the daemon restarts"
                        );
                        pending.lock().unwrap().push_back(i);
                    }
                    Err(_) => {
                        // Connection refused or reset by the kill: not
                        // acknowledged, so the client sends it again.
                        pending.lock().unwrap().push_back(i);
                        tokio::time::sleep(Duration::from_millis(30)).await;
                    }
                }
            }
        }));
    }

    let killer = {
        let (daemon, acked) = (daemon.clone(), acked.clone());
        tokio::task::spawn_blocking(move || {
            let mut kills = 0;
            let mut rng = rand::rng();
            while kills < KILLS {
                std::thread::sleep(Duration::from_millis(rng.random_range(50..200)));
                if acked.lock().unwrap().len() == SUBMISSIONS {
                    break;
                }
                daemon.lock().unwrap().restart();
                kills += 1;
            }
            kills
        })
    };
    let kills = killer.await.unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        kills >= 5,
        "only {kills} kills landed while submissions were in flight"
    );
    assert_eq!(
        acked.len(),
        SUBMISSIONS,
        "every submission is acknowledged in the end"
    );
    eprintln!("{kills} SIGKILLs during {SUBMISSIONS} submissions");

    let db = Db::open(&cfg.db_url).await;
    assert_eq!(
        db.int("SELECT COUNT(*) FROM leads", None).await,
        SUBMISSIONS as i64,
        "one lead per submission"
    );
    let duplicated = db
        .int(
            "SELECT COUNT(*) FROM (SELECT phone FROM leads GROUP BY phone HAVING COUNT(*) > 1) d",
            None,
        )
        .await;
    assert_eq!(duplicated, 0, "no submission became two leads");
    for (i, lead) in &acked {
        let row = db.row("SELECT phone FROM leads WHERE id = $1", *lead).await;
        let want = format!("+7998{i:07}");
        assert_eq!(
            row.and_then(|r| r["phone"].clone()),
            Some(want),
            "submission {i} -> lead {lead}"
        );
    }
    db.close().await;
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_load_loses_and_duplicates_nothing_on_sqlite() {
    crash_drill(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_load_loses_and_duplicates_nothing_on_postgres() {
    let Some(pg) = pg::server() else { return };
    crash_drill(Some(pg.create_database())).await;
}

async fn post(client: &reqwest::Client, base: &str, i: usize) -> (u16, Option<i64>, Duration) {
    let started = Instant::now();
    let r = client
        .post(format!("{base}/forms/site"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("name=Outage+{i}&phone=8997{i:07}"))
        .send()
        .await
        .expect("the daemon answers while the database is down");
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, body["lead_id"].as_i64(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_outage_answers_503_then_recovers_without_loss() {
    let Some(pg) = pg::server() else { return };
    let cfg = TestConfig::new(
        Some(pg.create_database()),
        OPEN_CHANNEL,
        TEAM,
        "default = \"role:sales\"\n",
    );
    let _daemon = Daemon::start(&cfg);
    let base = cfg.base_url();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut acked = Vec::new();

    let (status, lead, _) = post(&client, &base, 0).await;
    assert_eq!(status, 200);
    acked.push(lead.unwrap());

    pg.stop();
    let mut during = Vec::new();
    for i in 1..=8 {
        let (client, base) = (client.clone(), base.clone());
        during.push(tokio::spawn(async move { post(&client, &base, i).await }));
    }
    for handle in during {
        let (status, lead, took) = handle.await.unwrap();
        assert_eq!(
            status, 503,
            "a post while the database is down is refused with 503"
        );
        assert_eq!(lead, None);
        assert!(
            took < Duration::from_secs(10),
            "503 came after {took:?}: bounded, not a hang"
        );
    }
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "readiness is red during the outage");
    let metrics = support::metrics::scrape(&base).await;
    assert_eq!(
        support::metrics::value(&metrics, "leadgate_store_up"),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        !metrics.contains("\nleadgate_commit_failures_total 0\n")
            && metrics.contains("leadgate_commit_failures_total"),
        "{metrics}"
    );

    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 100;
    loop {
        let (status, lead, _) = post(&client, &base, i).await;
        if status == 200 {
            acked.push(lead.unwrap());
            break;
        }
        assert_eq!(status, 503);
        assert!(
            Instant::now() < deadline,
            "still 503 30 s after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        i += 1;
    }
    for i in 200..210 {
        let (status, lead, _) = post(&client, &base, i).await;
        assert_eq!(status, 200);
        acked.push(lead.unwrap());
    }
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let db = Db::open(&cfg.db_url).await;
    assert_eq!(
        db.int("SELECT COUNT(*) FROM leads", None).await,
        acked.len() as i64,
        "exactly the acknowledged posts"
    );
    for lead in acked {
        assert!(
            db.row("SELECT name FROM leads WHERE id = $1", lead)
                .await
                .is_some()
        );
    }
    db.close().await;
}
