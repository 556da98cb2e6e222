//! Assignment benchmark: `cargo bench --bench assignment`.
//!
//! 1. Rule evaluation: 1,000 routing rules (two conditions each), a lead
//!    that only the last rule matches, so every decision tries all 1,000;
//!    reports rule evaluations per second on one core.
//! 2. Person decision: a 20-member role out of 200 users with calendars
//!    (time zones, shifts across midnight, absences with substitutes, caps,
//!    weights); reports decisions per second at an instant when a third of
//!    the pool is off shift or absent.
//! 3. Timer sweep with 100,000 open leads in SQLite (500 per user), each
//!    with a pending response deadline, 100 of them due: the time to find the due timers
//!    (partial index on `due_at`), to fire them (one transaction each), and
//!    for contrast a query that has to look at every open lead.
//!
//! Knobs: `LEADGATE_BENCH_SECONDS` (3, per in-memory phase),
//! `LEADGATE_BENCH_LEADS` (100000), `LEADGATE_BENCH_DIR` (temp parent).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use leadgate::assign::{Ask, Load, Policy, decide};
use leadgate::config;
use leadgate::pipeline::{PipelineSettings, Route};
use leadgate::routing::LeadFacts;
use leadgate::store::Store;

struct Facts(BTreeMap<&'static str, String>);

impl LeadFacts for Facts {
    fn fact(&self, field: &str) -> Option<&str> {
        self.0.get(field).map(String::as_str)
    }
}

fn seconds() -> Duration {
    Duration::from_secs_f64(
        std::env::var("LEADGATE_BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    )
}

/// 200 users in 10 roles of 20: days in Moscow, nights across midnight in
/// Yekaterinburg, a weekend shift; every seventh absent with a substitute,
/// every fifth capped, every tenth weighted.
fn team_toml() -> String {
    let mut t = String::from(
        "[calendar]\ntime_zone = \"Europe/Moscow\"\nholidays = [\"2027-01-01\"]\n\
         hours = { mon = \"09:00-18:00\", tue = \"09:00-18:00\", wed = \"09:00-18:00\", thu = \"09:00-18:00\", fri = \"09:00-18:00\" }\n",
    );
    for u in 0..200 {
        t.push_str(&format!("[users.u{u}]\nname = \"User {u}\"\n"));
        match u % 3 {
            1 => t.push_str(
                "time_zone = \"Asia/Yekaterinburg\"\nhours = { mon = \"22:00-06:00\", tue = \"22:00-06:00\", wed = \"22:00-06:00\", thu = \"22:00-06:00\", fri = \"22:00-06:00\" }\n",
            ),
            2 => t.push_str("hours = { sat = \"10:00-16:00\", sun = \"10:00-16:00\", mon = \"12:00-21:00\", tue = \"12:00-21:00\" }\n"),
            _ => {}
        }
        if u % 5 == 0 {
            t.push_str("max_open_leads = 25\n");
        }
        if u % 7 == 3 {
            t.push_str(&format!(
                "absences = [{{ from = \"2026-11-20\", to = \"2026-12-05\", substitute = \"u{}\", reason = \"vacation\" }}]\n",
                (u + 1) % 200
            ));
        }
    }
    for r in 0..10 {
        let members: Vec<String> = (0..20).map(|i| format!("\"u{}\"", r * 20 + i)).collect();
        t.push_str(&format!(
            "[roles.r{r}]\nmembers = [{}]\nweights = {{ u{} = 2 }}\n",
            members.join(", "),
            r * 20
        ));
    }
    t.push_str("[roles.sales]\nmembers = [\"u0\", \"u1\", \"u2\", \"u3\"]\n");
    t
}

fn routing_toml() -> String {
    let mut t = String::from("default = \"role:sales\"\n[sla]\nform = \"2m\"\n");
    for i in 0..1000 {
        t.push_str(&format!(
            "[[rules]]\nname = \"rule{i}\"\nwhen.product = \"product-{i}\"\nwhen.region = {{ one_of = [\"region-{i}\", \"Region {i}\"] }}\nassign = \"role:r{}\"\n",
            i % 10
        ));
    }
    t
}

fn load_config(dir: &std::path::Path, db: &str) -> config::Config {
    std::fs::write(
        dir.join("leadgate.toml"),
        format!("[database]\nurl = \"{db}\"\n"),
    )
    .unwrap();
    std::fs::write(dir.join("team.toml"), team_toml()).unwrap();
    std::fs::write(dir.join("routing.toml"), routing_toml()).unwrap();
    config::load(dir).unwrap_or_else(|e| panic!("{e}"))
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn rules(config: &config::Config) {
    let facts = Facts(BTreeMap::from([
        ("product", "product-999".to_owned()),
        ("region", "Region 999".to_owned()),
        ("channel", "site".to_owned()),
    ]));
    let miss = Facts(BTreeMap::from([("product", "nothing".to_owned())]));
    let until = Instant::now() + seconds();
    let (mut decisions, started) = (0u64, Instant::now());
    while Instant::now() < until {
        for _ in 0..100 {
            black_box(config.routing.decide(black_box(&facts), None));
            black_box(config.routing.decide(black_box(&miss), None));
        }
        decisions += 200;
    }
    let secs = started.elapsed().as_secs_f64();
    let evaluations = decisions as f64 * 1000.0;
    println!(
        "rules: {} decisions over 1,000 rules in {secs:.2} s: {:.0} decisions/s, {:.2} M rule evaluations/s (one core)",
        decisions,
        decisions as f64 / secs,
        evaluations / secs / 1e6
    );
}

fn people(config: &config::Config) {
    let members: Vec<String> = config
        .team
        .active_members("r0")
        .into_iter()
        .map(str::to_owned)
        .collect();
    let route = Route::Role {
        role: "r0".into(),
        members,
        strategy: leadgate::routing::Strategy::RoundRobin,
    };
    let policy = Policy::default();
    // Monday 20:00 MSK: day shift gone, night shift not yet in, some absent.
    let instants = [
        at("2026-11-23T17:00:00Z"),
        at("2026-11-24T07:00:00Z"),
        at("2026-11-28T09:00:00Z"),
    ];
    let load = |u: &str| Load {
        new: (u.len() as i64 * 7) % 30,
        open: (u.len() as i64 * 11) % 40,
    };
    let until = Instant::now() + seconds();
    let (mut n, started, mut turn, mut queued) = (0u64, Instant::now(), 0i64, 0u64);
    while Instant::now() < until {
        for i in 0..300 {
            let ask = Ask {
                route: &route,
                policy: &policy,
                previous_owner: if i % 4 == 0 { Some("u5") } else { None },
                turn,
                now: instants[i % 3],
            };
            let o = decide(&config.team, &ask, &load);
            turn = o.turn.unwrap_or(turn);
            queued += u64::from(o.user.is_none());
            black_box(o);
        }
        n += 300;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "people: {n} person decisions (20-member pool of 200 users, calendars, caps, weights) in {secs:.2} s: {:.0} decisions/s ({queued} queued)",
        n as f64 / secs
    );
}

async fn sweep(config: &config::Config, url: &str, leads: i64) {
    let db = config::DatabaseConfig::default();
    let store = Store::connect(&leadgate_connector::Secret::new(url), &db)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let Store::Sqlite(pool) = &store else {
        unreachable!()
    };
    let now = Utc::now();
    let (past, future) = (
        now - chrono::Duration::seconds(5),
        now + chrono::Duration::hours(1),
    );
    let started = Instant::now();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
         INSERT INTO leads (id, created_at, updated_at, channel_id, channel_kind, source_ref, assigned_by, \
         last_activity_at, assignee_user, assignee_role, status) \
         SELECT i, $2, $2, 'site', 'form', 's' || i, 'rule:x', $2, 'u' || (i % 200), 'r' || ((i % 200) / 20), 'new' FROM n",
    )
    .bind(leads)
    .bind(now)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
         INSERT INTO lead_timers (lead_id, kind, due_at, created_at) \
         SELECT i, 'respond', CASE WHEN i % 1000 = 0 THEN $2 ELSE $3 END, $4 FROM n",
    )
    .bind(leads)
    .bind(past)
    .bind(future)
    .bind(now)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE").execute(pool).await.unwrap();
    println!(
        "sweep: {leads} open leads with pending deadlines ({} due) loaded in {:.1} s",
        leads / 1000,
        started.elapsed().as_secs_f64()
    );
    let plan: Vec<String> = sqlx::query(
        "EXPLAIN QUERY PLAN SELECT id, lead_id, kind, target FROM lead_timers \
         WHERE fired_at IS NULL AND due_at <= $1 ORDER BY due_at LIMIT 500",
    )
    .bind(now)
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| sqlx::Row::get::<String, _>(r, 3))
    .collect();
    println!("sweep: plan of the due-timer query: {}", plan.join(" / "));

    let mut times = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let due = store.due_timers(Utc::now(), 500).await.unwrap();
        times.push(t.elapsed());
        assert_eq!(due.len() as i64, leads / 1000);
    }
    times.sort();
    println!(
        "sweep: finding the {} due timers: median {:.3} ms, max {:.3} ms (50 runs)",
        leads / 1000,
        times[25].as_secs_f64() * 1e3,
        times[49].as_secs_f64() * 1e3
    );
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let nothing = store
            .due_timers(now - chrono::Duration::hours(1), 500)
            .await
            .unwrap();
        times.push(t.elapsed());
        assert!(nothing.is_empty());
    }
    times.sort();
    println!(
        "sweep: an idle sweep (nothing due): median {:.3} ms",
        times[10].as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM leads WHERE status = 'new' AND created_at <= $1")
            .bind(Utc::now())
            .fetch_one(pool)
            .await
            .unwrap();
    println!(
        "sweep: for contrast, one pass over all {n} open leads: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    let settings = PipelineSettings::from_config(config);
    let due = store.due_timers(Utc::now(), 500).await.unwrap();
    let t = Instant::now();
    let mut fired = 0;
    for timer in &due {
        if store
            .fire_timer(timer, &settings, Utc::now())
            .await
            .unwrap()
            .is_some()
        {
            fired += 1;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "sweep: fired {fired} deadlines (escalation: reassign, activity, one transaction each) in {:.1} ms: {:.2} ms each",
        secs * 1e3,
        secs * 1e3 / fired.max(1) as f64
    );
    store.close().await;
}

fn main() {
    let dir = match std::env::var_os("LEADGATE_BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(parent),
        None => tempfile::tempdir(),
    }
    .unwrap();
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    let t = Instant::now();
    let config = load_config(dir.path(), &url);
    println!(
        "config: 200 users, 11 roles, 1,000 rules loaded and checked in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    rules(&config);
    people(&config);
    let leads = std::env::var("LEADGATE_BENCH_LEADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(sweep(&config, &url, leads));
}
