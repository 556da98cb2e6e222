//! Telegram benchmark of the real daemon against the tests' fake Bot API
//! server: `cargo bench --bench telegram`.
//!
//! 1. `latency`: one bot in polling mode (`poll_timeout = "25s"`, so the
//!    daemon sits in a long poll, as in production). `LEADGATE_BENCH_TG_COUNT`
//!    (200) updates, each from a new person, are put on the fake server one
//!    at a time, `LEADGATE_BENCH_TG_GAP_MS` (20) apart; latency = the moment
//!    the update is queued on the fake server → its lead row is visible in
//!    SQLite (polled every millisecond from this process).
//! 2. `webhook`: `LEADGATE_BENCH_CONCURRENCY` (64) keep-alive clients post
//!    unique updates to `POST /telegram/hook` back to back for
//!    `LEADGATE_BENCH_SECONDS` (10) s; answered 200/s and latency
//!    percentiles; then `COUNT(*)` of leads must equal the 200 answers.
//!
//! SQLite in a temp directory (`LEADGATE_BENCH_DIR` to choose its parent),
//! log level `warn`. The daemon is killed if this process dies.

mod common;
#[allow(dead_code)]
#[path = "../tests/support/telegram.rs"]
mod fake;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use common::{Daemon, env_num, free_port, percentile, spawn_daemon, write_base_config};
use fake::{FakeBotApi, TOKEN};
use serde_json::{Value, json};

const SECRET: &str = "bench_secret";

fn start_daemon(dir: &std::path::Path, api: &FakeBotApi) -> anyhow::Result<Daemon> {
    let port = free_port()?;
    write_base_config(dir, port)?;
    std::fs::write(dir.join("bot.token"), TOKEN)?;
    let common = format!(
        "kind = \"telegram\"\n[telegram]\ntoken_file = \"bot.token\"\napi_url = \"{}\"\n",
        api.url()
    );
    std::fs::write(
        dir.join("channels.d/poll.toml"),
        format!("{common}mode = \"polling\"\npoll_timeout = \"25s\"\n"),
    )?;
    std::fs::write(
        dir.join("channels.d/hook.toml"),
        format!("{common}mode = \"webhook\"\nwebhook_secret = \"{SECRET}\"\n"),
    )?;
    spawn_daemon(dir, port)
}

fn update(n: u64, channel_offset: u64) -> Value {
    let user = 700_000_000 + channel_offset + n;
    json!({"update_id": 920_000_000 + n, "message": {
        "message_id": n, "date": 1763283300,
        "from": {"id": user, "is_bot": false, "first_name": "Клиент", "last_name": format!("№{n}")},
        "chat": {"id": user, "type": "private", "first_name": "Клиент"},
        "text": format!("Здравствуйте, хочу заказать, заявка {n}")}})
}

async fn latency(api: &FakeBotApi, db: &sqlx::SqlitePool) -> anyhow::Result<()> {
    let count: u64 = env_num("LEADGATE_BENCH_TG_COUNT", 200);
    let gap = Duration::from_millis(env_num("LEADGATE_BENCH_TG_GAP_MS", 20));
    // Let the daemon reach its long poll.
    api.wait_for("the first getUpdates", Duration::from_secs(30), |a| {
        !a.calls("getUpdates").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut samples = Vec::with_capacity(count as usize);
    for n in 1..=count {
        let user = 700_000_000 + n;
        let source_ref = format!("{user}:{n}");
        let start = Instant::now();
        api.push(update(n, 0));
        loop {
            let found: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM leads WHERE channel_id = 'poll' AND source_ref = ?",
            )
            .bind(&source_ref)
            .fetch_one(db)
            .await?;
            if found == 1 {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("update {n} never became a lead");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(start.elapsed());
        tokio::time::sleep(gap).await;
    }
    samples.sort();
    println!(
        "long-poll latency, update on the fake server -> lead row ({count} updates, {} ms apart): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        gap.as_millis(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.9),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0)
    );
    Ok(())
}

async fn webhook(port: u16, db: &sqlx::SqlitePool) -> anyhow::Result<()> {
    let clients: u64 = env_num("LEADGATE_BENCH_CONCURRENCY", 64);
    let seconds: u64 = env_num("LEADGATE_BENCH_SECONDS", 10);
    let next = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let url = format!("http://127.0.0.1:{port}/telegram/hook");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, stop, errors, url) = (next.clone(), stop.clone(), errors.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let body = update(n, 100_000_000).to_string();
                let t = Instant::now();
                let ok = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-telegram-bot-api-secret-token", SECRET)
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
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
        "webhook ingest, {clients} clients, {seconds} s: {} answered 200 ({:.0}/s), {} errors, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; leads stored {leads}",
        all.len(),
        all.len() as f64 / elapsed,
        errors.load(Ordering::Relaxed),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 1.0)
    );
    if leads != all.len() as i64 {
        bail!("{} answers 200 but {leads} leads stored", all.len());
    }
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let dir = match std::env::var_os("LEADGATE_BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(parent)?,
        None => tempfile::tempdir()?,
    };
    let api = FakeBotApi::start().await;
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
    webhook(daemon.port, &pool).await?;
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
            eprintln!("telegram bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
