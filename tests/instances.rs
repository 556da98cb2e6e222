//! Several instances on one PostgreSQL: each mailbox is polled by exactly
//! one of them; when that one dies (SIGKILL, lease not released) another
//! takes over within the lease TTL, and no message is lost or stored twice.
//! Webhooks and forms work on every instance.

mod support;

use std::time::{Duration, Instant};

use support::daemon::{Daemon, TEAM, TestConfig};
use support::db::Db;
use support::dovecot::{Dovecot, ImapClient};
use support::pg;

fn mail(i: usize) -> Vec<u8> {
    format!(
        "From: Client {i} <client{i}@example.net>\r\nTo: sales@ourcompany.example\r\nSubject: Request {i}\r\n\
         Message-ID: <instances-{i}@example.net>\r\n\r\nPlease call 8 999 {:03} {:02} {:02}\r\n",
        i / 10_000 % 1000,
        i / 100 % 100,
        i % 100
    )
    .into_bytes()
}

async fn wait_rows(db: &Db, want: i64, within: Duration) {
    let deadline = Instant::now() + within;
    while db
        .int(
            "SELECT COUNT(*) FROM inbound_messages WHERE channel_id = 'sales'",
            None,
        )
        .await
        < want
    {
        assert!(
            Instant::now() < deadline,
            "fewer than {want} messages after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn polls(d: &Daemon) -> bool {
    d.log_text().contains("IMAP session open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_instance_polls_and_another_takes_over_when_it_dies() {
    let Some(pg) = pg::server() else { return };
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    let url = pg.create_database();
    let channel = dovecot.channel_toml("");
    let form = "kind = \"form\"\n[form]\nrate_limit_per_minute = 0\n";
    let channels: &[(&str, &str)] = &[("sales", channel.as_str()), ("site", form)];
    let configs: Vec<TestConfig> = ["a", "b"]
        .iter()
        .map(|name| {
            let cfg = TestConfig::new(
                Some(url.clone()),
                channels,
                TEAM,
                "default = \"role:sales\"\n",
            );
            cfg.write_main(&format!(
                "[instance]\nname = \"{name}\"\nlease_ttl = \"2s\"\n"
            ));
            cfg
        })
        .collect();
    let mut daemons: Vec<Daemon> = configs.iter().map(Daemon::start).collect();
    let db = Db::open(&url).await;

    let mut imap = ImapClient::login(dovecot.port);
    for i in 0..40 {
        imap.append("INBOX", &mail(i));
    }
    wait_rows(&db, 40, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pollers: Vec<usize> = (0..2).filter(|i| polls(&daemons[*i])).collect();
    assert_eq!(pollers.len(), 1, "exactly one instance polls the mailbox");
    let holder = pollers[0];
    let survivor = 1 - holder;

    // Forms work on both instances at the same time.
    for (i, cfg) in configs.iter().enumerate() {
        let r = reqwest::Client::new()
            .post(format!("{}/forms/site", cfg.base_url()))
            .form(&[("phone", format!("8999000040{i}"))])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    daemons[holder].kill9();
    let died = Instant::now();
    for i in 40..80 {
        imap.append("INBOX", &mail(i));
    }
    wait_rows(&db, 80, Duration::from_secs(30)).await;
    let took = died.elapsed();
    assert!(
        polls(&daemons[survivor]),
        "the survivor took the mailbox over"
    );
    assert!(took < Duration::from_secs(15), "takeover took {took:?}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        db.int(
            "SELECT COUNT(*) FROM inbound_messages WHERE channel_id = 'sales'",
            None
        )
        .await,
        80,
        "every message once"
    );
    assert_eq!(
        db.int(
            "SELECT COUNT(*) FROM leads WHERE channel_id = 'sales'",
            None
        )
        .await,
        80
    );
    let holder_now = db
        .texts("SELECT owner FROM leases WHERE name = 'poller:sales'")
        .await;
    assert_eq!(holder_now, [Some(["a", "b"][survivor].to_owned())]);
    db.close().await;
}
