//! An open site form in front of the daemon: the setup the routing,
//! assignment and notification tests share — the `site` channel, posting a
//! form, reading who got the lead, and waiting on the database.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::daemon::TestConfig;
use super::db::Db;

/// One form channel, `site`, with no rate limit (tests post in bursts).
pub const SITE: &[(&str, &str)] = &[(
    "site",
    "kind = \"form\"\n[form]\nrate_limit_per_minute = 0\n",
)];

impl TestConfig {
    /// A configuration folder with the [`SITE`] channel and these
    /// `team.toml` and `routing.toml`; `db_url` as [`TestConfig::new`].
    pub fn site(db_url: Option<String>, team: &str, routing: &str) -> TestConfig {
        TestConfig::new(db_url, SITE, team, routing)
    }
}

/// Post a urlencoded form to `/forms/<channel>`; its JSON answer, which
/// must be a 200.
pub async fn post_form(cfg: &TestConfig, channel: &str, body: &str) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{}/forms/{channel}", cfg.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// Post a form to `site`; the id of the lead it made or joined.
pub async fn post_lead(cfg: &TestConfig, body: &str) -> i64 {
    let v = post_form(cfg, "site", body).await;
    v["lead_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no lead: {v}"))
}

/// Who the lead is assigned to (it must be assigned).
pub async fn assignee(db: &Db, lead: i64) -> String {
    db.row("SELECT assignee_user FROM leads WHERE id = $1", lead)
        .await
        .and_then(|r| r["assignee_user"].clone())
        .expect("an assigned lead")
}

/// Poll `check` every 50 ms until it holds; fail naming `what` after
/// `within`.
pub async fn wait_for(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < end, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
