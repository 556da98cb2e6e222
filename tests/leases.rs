//! Poller leases between instances: one holder at a time, takeover after a
//! holder dies, on SQLite and on a real PostgreSQL shared by two "instances"
//! (two stores with their own pools).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use leadgate::config::DatabaseConfig;
use leadgate::store::{LeaseKeeper, Store};
use leadgate_connector::{CancellationToken, Secret};
use support::pg;

async fn store(url: &str) -> Store {
    let s = Store::connect(&Secret::new(url), &DatabaseConfig::default())
        .await
        .unwrap();
    s.migrate().await.unwrap();
    s
}

async fn one_holder_at_a_time(a: Store, b: Store) {
    let ttl = Duration::from_millis(800);
    let now = Utc::now();
    assert!(a.acquire_lease("imap:sales", "a", ttl, now).await.unwrap());
    assert!(
        !b.acquire_lease("imap:sales", "b", ttl, now).await.unwrap(),
        "held by a"
    );
    assert!(
        a.acquire_lease("imap:sales", "a", ttl, now).await.unwrap(),
        "a renews"
    );
    assert!(
        b.acquire_lease("imap:other", "b", ttl, now).await.unwrap(),
        "leases are per name"
    );
    b.release_lease("imap:sales", "b").await.unwrap();
    assert_eq!(
        a.lease_holder("imap:sales", now).await.unwrap().as_deref(),
        Some("a"),
        "only the owner releases"
    );

    let later = now + chrono::Duration::milliseconds(900);
    assert!(
        b.acquire_lease("imap:sales", "b", ttl, later)
            .await
            .unwrap(),
        "expired: b takes over"
    );
    assert!(
        !a.acquire_lease("imap:sales", "a", ttl, later)
            .await
            .unwrap(),
        "a lost it"
    );
    b.release_lease("imap:sales", "b").await.unwrap();
    assert!(
        a.acquire_lease("imap:sales", "a", ttl, later)
            .await
            .unwrap(),
        "released: free at once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/l.db", dir.path().display());
    one_holder_at_a_time(store(&url).await, store(&url).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_on_postgres() {
    let Some(pg) = pg::server() else { return };
    let url = pg.create_database();
    one_holder_at_a_time(store(&url).await, store(&url).await).await;
}

/// Two keepers race for one lease: at every moment at most one runs the
/// guarded work; when the holder dies without releasing, the other takes
/// over within the TTL plus one renewal beat.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keepers_hand_over_when_the_holder_dies() {
    let Some(pg) = pg::server() else { return };
    let url = pg.create_database();
    let ttl = Duration::from_millis(900);
    let running = Arc::new(AtomicUsize::new(0));
    let max_running = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let mut owners = Vec::new();
    for name in ["instance-a", "instance-b"] {
        let keeper = LeaseKeeper {
            store: store(&url).await,
            name: "telegram:bot".into(),
            owner: name.into(),
            ttl,
        };
        let (running, max_running) = (running.clone(), max_running.clone());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(keeper.run(shutdown.clone(), move |held| {
            let (running, max_running) = (running.clone(), max_running.clone());
            tokio::spawn(async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                max_running.fetch_max(now, Ordering::SeqCst);
                held.cancelled().await;
                running.fetch_sub(1, Ordering::SeqCst);
            });
        }));
        tasks.push((task, shutdown));
        owners.push(name);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        running.load(Ordering::SeqCst),
        1,
        "exactly one instance holds the lease"
    );
    let observer = store(&url).await;
    let holder = observer
        .lease_holder("telegram:bot", Utc::now())
        .await
        .unwrap()
        .expect("held");
    let index = owners.iter().position(|o| *o == holder).unwrap();

    // The holder dies: no release, no cancellation of its work token.
    let (dead, _) = &tasks[index];
    dead.abort();
    running.fetch_sub(1, Ordering::SeqCst);
    let died = Instant::now();
    let other = owners[1 - index];
    loop {
        if observer
            .lease_holder("telegram:bot", Utc::now())
            .await
            .unwrap()
            .as_deref()
            == Some(other)
        {
            break;
        }
        assert!(died.elapsed() < ttl * 2, "no takeover within TTL + a beat");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        running.load(Ordering::SeqCst),
        1,
        "the survivor runs the work"
    );
    assert_eq!(max_running.load(Ordering::SeqCst), 1, "never two at once");
    let (_, shutdown) = &tasks[1 - index];
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        observer
            .lease_holder("telegram:bot", Utc::now())
            .await
            .unwrap(),
        None,
        "released on stop"
    );
}
