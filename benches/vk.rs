//! VK benchmark of the real daemon against the tests' fake VK API
//! (`tests/support/vk.rs`, in this process): `cargo bench --bench vk`.
//!
//! 1. `latency`: community `poll` in long-poll mode (`wait = "25s"`, so the
//!    daemon sits in `a_check` as in production, names looked up with
//!    users.get at the default 3 calls/s). `LEADGATE_BENCH_VK_COUNT` (100)
//!    messages, each from a new person, are put on the fake long-poll server
//!    one at a time, `LEADGATE_BENCH_VK_GAP_MS` (400) apart; latency = the
//!    moment the event is on the fake server → its lead row is visible in
//!    SQLite (polled every millisecond from this process).
//! 2. `callback`: `LEADGATE_BENCH_CONCURRENCY` (64) keep-alive clients post
//!    unique `message_new` events (a new person each) to `POST /vk/hook`
//!    (secret checked, `fetch_names = false`) back to back for
//!    `LEADGATE_BENCH_SECONDS` (10) s; answered-`ok` rate and latency
//!    percentiles; then `COUNT(*)` of leads must equal the `ok` answers.
//!
//! SQLite in a temp directory (`LEADGATE_BENCH_DIR` to choose its parent),
//! log level `warn`. The daemon is killed if this process dies.

mod common;
#[allow(dead_code)]
#[path = "../tests/support/vk.rs"]
mod fake;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use common::{Daemon, env_num, free_port, percentile, spawn_daemon, write_base_config};
use fake::{FakeVk, GROUP_ID, TOKEN, message_new};
use serde_json::json;

const SECRET: &str = "bench_secret";

fn start_daemon(dir: &std::path::Path, api: &FakeVk) -> anyhow::Result<Daemon> {
    let port = free_port()?;
    write_base_config(dir, port)?;
    std::fs::write(dir.join("vk.token"), TOKEN)?;
    let common = format!(
        "kind = \"vk\"\n[vk]\ngroup_id = {GROUP_ID}\ntoken_file = \"vk.token\"\napi_url = \"{}\"\n",
        api.api_url()
    );
    std::fs::write(
        dir.join("channels.d/poll.toml"),
        format!("{common}mode = \"long_poll\"\nwait = \"25s\"\n"),
    )?;
    std::fs::write(
        dir.join("channels.d/hook.toml"),
        format!(
            "{common}mode = \"callback\"\nconfirmation = \"c0nf1rm\"\nsecret = \"{SECRET}\"\nfetch_names = false\n"
        ),
    )?;
    spawn_daemon(dir, port)
}

async fn latency(api: &FakeVk, db: &sqlx::SqlitePool) -> anyhow::Result<()> {
    let count: i64 = env_num("LEADGATE_BENCH_VK_COUNT", 100);
    let gap = Duration::from_millis(env_num("LEADGATE_BENCH_VK_GAP_MS", 400));
    // Let the daemon reach its long poll.
    api.wait_for_polls(1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut samples = Vec::with_capacity(count as usize);
    let mut named = 0;
    for n in 1..=count {
        let user = 850_000_000 + n;
        let source_ref = format!("msg:{user}:1");
        let start = Instant::now();
        api.push([message_new(user, 1, "Здравствуйте, хочу заказать")]);
        loop {
            let found: Option<Option<String>> = sqlx::query_scalar(
                "SELECT name FROM leads WHERE channel_id = 'poll' AND source_ref = ?",
            )
            .bind(&source_ref)
            .fetch_optional(db)
            .await?;
            if let Some(name) = found {
                named += i64::from(name.is_some());
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("message {n} never became a lead");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(start.elapsed());
        tokio::time::sleep(gap).await;
    }
    samples.sort();
    println!(
        "long-poll latency, event on the fake server -> lead row ({count} messages from new people, {} ms apart, names looked up): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {named} of {count} leads named",
        gap.as_millis(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.9),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0)
    );
    Ok(())
}

fn callback_event(n: u64) -> String {
    let user = 860_000_000 + n as i64;
    let mut event = message_new(user, 1, "Добрый день, сколько стоит доставка?");
    event["secret"] = json!(SECRET);
    event.to_string()
}

async fn callback(port: u16, db: &sqlx::SqlitePool) -> anyhow::Result<()> {
    let clients: u64 = env_num("LEADGATE_BENCH_CONCURRENCY", 64);
    let seconds: u64 = env_num("LEADGATE_BENCH_SECONDS", 10);
    let next = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let url = format!("http://127.0.0.1:{port}/vk/hook");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, stop, errors, url) = (next.clone(), stop.clone(), errors.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let body = callback_event(next.fetch_add(1, Ordering::Relaxed));
                let t = Instant::now();
                let ok = match http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => r.text().await.is_ok_and(|b| b == "ok"),
                    _ => false,
                };
                if ok {
                    latencies.push(t.elapsed());
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let leads: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM leads WHERE channel_id = 'hook'")
        .fetch_one(db)
        .await?;
    println!(
        "callback ingest, {clients} clients, {seconds} s: {} answered ok ({:.0}/s), {} errors, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; leads stored {leads}",
        all.len(),
        all.len() as f64 / elapsed,
        errors.load(Ordering::Relaxed),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 1.0)
    );
    if leads != all.len() as i64 {
        bail!("{} answers ok but {leads} leads stored", all.len());
    }
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let dir = match std::env::var_os("LEADGATE_BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(parent)?,
        None => tempfile::tempdir()?,
    };
    let api = FakeVk::start(1).await;
    let daemon = start_daemon(dir.path(), &api)?;
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(dir.path().join("leads.db"))
                .read_only(true),
        )
        .await?;
    latency(&api, &pool).await?;
    callback(daemon.port, &pool).await?;
    if api.rate_errors() > 0 {
        println!("the fake VK answered error 6 {} times", api.rate_errors());
    }
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    if !log.trim().is_empty() {
        println!("daemon warnings:\n{log}");
    }
    Ok(())
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; nothing to parse.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vk bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
