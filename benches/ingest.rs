//! Load benchmark of the real daemon: `cargo bench --bench ingest`.
//!
//! Starts the release `leadgate` binary with a throw-away configuration on a
//! free loopback port and measures, in one run:
//!
//! 1. idle resident memory (VmRSS after ~2 s idle);
//! 2. closed-loop throughput on SQLite: C keep-alive clients post unique
//!    forms back to back for N seconds (req/s answered 200, errors,
//!    p50/p99/max), then checks that the `leads` table holds exactly one row
//!    per `lead_created` answer;
//! 3. open-loop latency at a fixed rate (default 5,000 req/s): sends are
//!    scheduled at fixed intervals and latency is measured from the
//!    scheduled time, so a stalled server cannot hide its queueing delay
//!    (no coordinated omission);
//! 4. a naive baseline in the same run: an in-process axum server whose
//!    handler does one autocommit `INSERT` per request into SQLite (WAL,
//!    synchronous=FULL) before answering 200, driven by the same
//!    closed-loop load;
//! 5. optionally the same closed-loop (and fixed-rate) runs against
//!    PostgreSQL when `LEADGATE_BENCH_PG_URL` is set. THE BENCH DROPS EVERY
//!    TABLE IN THAT DATABASE'S CURRENT SCHEMA: give it a throw-away database.
//!
//! Knobs (environment): `LEADGATE_BENCH_SECONDS` (10, per measured phase),
//! `LEADGATE_BENCH_WARMUP` (1), `LEADGATE_BENCH_CONCURRENCY` (64),
//! `LEADGATE_BENCH_RATE` (5000), `LEADGATE_BENCH_OPEN_CONNS` (256),
//! `LEADGATE_BENCH_BASELINE_CONNS` (1), `LEADGATE_BENCH_SQLITE_SYNC` (unset:
//! the daemon's default `full`; `normal` to see what fsync costs),
//! `LEADGATE_BENCH_PG_URL`,
//! `LEADGATE_BENCH_DIR` (parent of the temp directory; default the system
//! temp dir — keep it on a real disk, not tmpfs, or fsync costs nothing),
//! `LEADGATE_BENCH_DAEMON_LOG` (the daemon's log level, default `warn`; e.g.
//! `warn,sqlx::query=debug` times every statement; each daemon's log is
//! then kept as `daemon-<pid>.log` in the current directory).
//!
//! Workloads (`LEADGATE_BENCH_WORKLOAD`): `forms` (the default: site-form
//! posts from new contacts, no routing configured), `mango` (signed Mango
//! Office call events), and for the notifications outbox (issue #10)
//! `forms-routed` (the same posts, every lead routed to one user who has a
//! Telegram chat, no `[notify]`) and `forms-notify` (the same, plus
//! `[notify]` with the notifier bot pointed at a minimal fake Bot API on
//! its own thread here: every lead also writes an outbox row, which the
//! daemon then claims, sends and marks sent). `forms-notify` against
//! `forms-routed` is the outbox's cost; after the load the bench watches the
//! outbox drain for `LEADGATE_BENCH_OUTBOX_SECONDS` (30) and reports the
//! delivery rate, and after the daemon stops it checks one row per lead and
//! one `sendMessage` per row marked sent.
//!
//! The load generator is deliberately cheap: one current-thread tokio
//! runtime and a minimal HTTP/1.1 keep-alive client over raw TCP that reuses
//! its buffers. It still shares the machine's cores with the server; the
//! CPU each side used is printed per phase.
//!
//! Everything is bounded in time and talks only to 127.0.0.1. The daemon is
//! stopped at the end, on error (guard `Drop`), and if this process dies
//! (`PR_SET_PDEATHSIG`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::ConnectOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

const FORM_PATH: &str = "/forms/site";
const MANGO_PATH: &str = "/telephony/pbx/events/call";
const MANGO_KEY: &str = "bench_key";
const MANGO_SALT: &str = "bench_salt";
const LEAD_CREATED: &[u8] = b"lead_created";

/// What the load posts (`LEADGATE_BENCH_WORKLOAD`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    /// Site-form posts from new contacts (`forms`, the default).
    Forms,
    /// Mango Office `events/call` "Appeared" events of new incoming calls,
    /// each signed: sign = hex sha256(api_key + json + api_salt), which
    /// the daemon checks before anything else (`mango`).
    Mango,
    /// `forms`, each lead routed to a user with a Telegram chat, no
    /// notifications (`forms-routed`): the control for `forms-notify`.
    FormsRouted,
    /// `forms-routed` plus `[notify]`: an outbox row per lead, delivered
    /// to the fake Bot API while the load runs (`forms-notify`).
    FormsNotify,
}

static WORKLOAD: std::sync::OnceLock<Workload> = std::sync::OnceLock::new();

fn workload() -> Workload {
    *WORKLOAD.get_or_init(
        || match std::env::var("LEADGATE_BENCH_WORKLOAD").as_deref() {
            Ok("mango") => Workload::Mango,
            Ok("forms") | Ok("") | Err(_) => Workload::Forms,
            Ok("forms-routed") => Workload::FormsRouted,
            Ok("forms-notify") => Workload::FormsNotify,
            Ok(other) => panic!(
                "LEADGATE_BENCH_WORKLOAD={other:?}: use forms, mango, forms-routed or forms-notify"
            ),
        },
    )
}

// ---------------------------------------------------------------- settings

struct Settings {
    seconds: u64,
    warmup: u64,
    concurrency: usize,
    rate: u64,
    open_conns: usize,
    baseline_conns: u32,
    pg_url: Option<String>,
    dir: Option<PathBuf>,
    sqlite_sync: Option<String>,
    request_timeout: Duration,
}

fn env_num<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            seconds: env_num("LEADGATE_BENCH_SECONDS", 10u64).clamp(1, 600),
            warmup: env_num("LEADGATE_BENCH_WARMUP", 1u64).min(60),
            concurrency: env_num("LEADGATE_BENCH_CONCURRENCY", 64usize).clamp(1, 4096),
            rate: env_num("LEADGATE_BENCH_RATE", 5000u64).clamp(1, 1_000_000),
            open_conns: env_num("LEADGATE_BENCH_OPEN_CONNS", 256usize).clamp(1, 4096),
            baseline_conns: env_num("LEADGATE_BENCH_BASELINE_CONNS", 1u32).clamp(1, 64),
            pg_url: std::env::var("LEADGATE_BENCH_PG_URL")
                .ok()
                .filter(|s| !s.trim().is_empty()),
            dir: std::env::var_os("LEADGATE_BENCH_DIR").map(PathBuf::from),
            sqlite_sync: std::env::var("LEADGATE_BENCH_SQLITE_SYNC")
                .ok()
                .filter(|s| !s.trim().is_empty()),
            request_timeout: Duration::from_secs(10),
        }
    }
}

// ------------------------------------------------------ minimal HTTP client

/// One keep-alive HTTP/1.1 connection. Just enough protocol for this bench:
/// Content-Length and chunked bodies, `Connection: close`.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Clone, Copy)]
struct Answer {
    status: u16,
    lead_created: bool,
    close: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

fn parse_dec(b: &[u8]) -> io::Result<usize> {
    std::str::from_utf8(trim_ascii(b))
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad decimal number in response"))
}

fn parse_hex(b: &[u8]) -> io::Result<usize> {
    let b = b.split(|&c| c == b';').next().unwrap_or(b);
    std::str::from_utf8(trim_ascii(b))
        .ok()
        .and_then(|s| usize::from_str_radix(s, 16).ok())
        .ok_or_else(|| invalid("bad chunk size in response"))
}

impl Conn {
    async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        Ok(())
    }

    /// Read up to and including the next CRLF at or after `pos`; returns the
    /// index of the CR.
    async fn line_end(&mut self, pos: usize) -> io::Result<usize> {
        loop {
            if let Some(p) = find(&self.buf[pos..], b"\r\n") {
                return Ok(pos + p);
            }
            if self.buf.len() - pos > 16 * 1024 {
                return Err(invalid("response line too long"));
            }
            self.fill().await?;
        }
    }

    async fn roundtrip(&mut self, request: &[u8]) -> io::Result<Answer> {
        self.stream.write_all(request).await?;
        self.read_answer().await
    }

    async fn read_answer(&mut self) -> io::Result<Answer> {
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            if self.buf.len() > 64 * 1024 {
                return Err(invalid("response head too large"));
            }
            self.fill().await?;
        };
        let (status, content_length, chunked, close) = {
            let head = &self.buf[..head_end];
            if head.len() < 12 || !head.starts_with(b"HTTP/1.") {
                return Err(invalid("not an HTTP/1.x response"));
            }
            let status = parse_dec(&head[9..12])? as u16;
            let (mut content_length, mut chunked, mut close) = (None, false, false);
            for line in head.split(|&b| b == b'\n').skip(1) {
                let Some(colon) = line.iter().position(|&b| b == b':') else {
                    continue;
                };
                let (name, value) = (&line[..colon], trim_ascii(&line[colon + 1..]));
                if name.eq_ignore_ascii_case(b"content-length") {
                    content_length = Some(parse_dec(value)?);
                } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    chunked = value.to_ascii_lowercase().ends_with(b"chunked");
                } else if name.eq_ignore_ascii_case(b"connection") {
                    close = find(&value.to_ascii_lowercase(), b"close").is_some();
                }
            }
            (status, content_length, chunked, close)
        };
        let mut lead_created = false;
        if chunked {
            let mut pos = head_end;
            loop {
                let end = self.line_end(pos).await?;
                let size = parse_hex(&self.buf[pos..end])?;
                pos = end + 2;
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        let end = self.line_end(pos).await?;
                        let empty = end == pos;
                        pos = end + 2;
                        if empty {
                            break;
                        }
                    }
                    break;
                }
                while self.buf.len() < pos + size + 2 {
                    self.fill().await?;
                }
                lead_created |= find(&self.buf[pos..pos + size], LEAD_CREATED).is_some();
                pos += size + 2;
            }
            self.buf.drain(..pos);
        } else if let Some(len) = content_length {
            while self.buf.len() < head_end + len {
                self.fill().await?;
            }
            lead_created = find(&self.buf[head_end..head_end + len], LEAD_CREATED).is_some();
            self.buf.drain(..head_end + len);
        } else if close {
            loop {
                match self.fill().await {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            lead_created = find(&self.buf[head_end..], LEAD_CREATED).is_some();
            self.buf.clear();
        } else {
            self.buf.drain(..head_end);
        }
        Ok(Answer {
            status,
            lead_created,
            close,
        })
    }
}

/// One GET, new connection, body returned (for /readyz and /metrics).
async fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let head_end = find(&raw, b"\r\n\r\n").ok_or_else(|| invalid("no response head"))? + 4;
    if raw.len() < 12 {
        return Err(invalid("short response"));
    }
    let status = parse_dec(&raw[9..12])? as u16;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let body = if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut pos = head_end;
        while let Some(p) = find(&raw[pos..], b"\r\n") {
            let size = parse_hex(&raw[pos..pos + p])?;
            pos += p + 2;
            if size == 0 || pos + size > raw.len() {
                break;
            }
            out.extend_from_slice(&raw[pos..pos + size]);
            pos += size + 2;
        }
        out
    } else {
        raw[head_end..].to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A realistic form post from a contact nobody has seen: unique name,
/// phone (8 999 + 7-digit counter) and e-mail.
fn build_request(req: &mut Vec<u8>, body: &mut Vec<u8>, host: &str, n: u64) {
    if workload() == Workload::Mango {
        return build_mango_request(req, body, host, n);
    }
    let n7 = n % 10_000_000;
    body.clear();
    let _ = write!(
        body,
        "name=Bench+Client+{n}&phone=8999{n7:07}&email=lead{n}%40bench.example\
         &comment=Load+test+post+{n}%2C+please+call+back+about+the+price"
    );
    req.clear();
    let _ = write!(
        req,
        "POST {FORM_PATH} HTTP/1.1\r\nHost: {host}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    req.extend_from_slice(body);
}

/// A new incoming call from a new number: its first event creates a lead
/// (the daemon answers 200 with an empty body, as Mango expects).
fn build_mango_request(req: &mut Vec<u8>, body: &mut Vec<u8>, host: &str, n: u64) {
    use sha2::Digest;
    let n7 = n % 10_000_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let json = format!(
        "{{\"entry_id\":\"bench-{n}\",\"call_id\":\"bench-{n}-leg1\",\"timestamp\":{now},\
         \"seq\":1,\"call_state\":\"Appeared\",\"location\":\"ivr\",\
         \"from\":{{\"number\":\"7999{n7:07}\"}},\
         \"to\":{{\"number\":\"74950000000\",\"line_number\":\"74950000000\"}}}}"
    );
    let sign = hex::encode(sha2::Sha256::digest(
        format!("{MANGO_KEY}{json}{MANGO_SALT}").as_bytes(),
    ));
    body.clear();
    let _ = write!(body, "vpbx_api_key={MANGO_KEY}&sign={sign}&json=");
    for b in json.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            body.push(b);
        } else {
            let _ = write!(body, "%{b:02X}");
        }
    }
    req.clear();
    let _ = write!(
        req,
        "POST {MANGO_PATH} HTTP/1.1\r\nHost: {host}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    req.extend_from_slice(body);
}

// ------------------------------------------------------------------ tallies

#[derive(Default)]
struct Tally {
    sent: u64,
    /// HTTP 200 answers.
    ok: u64,
    /// 200 answers whose body says `lead_created`.
    created: u64,
    /// Non-200 answers by status.
    http_errors: BTreeMap<u16, u64>,
    io_errors: u64,
    timeouts: u64,
    /// Open loop: scheduled requests never sent because the phase hit its
    /// time cap (the server fell too far behind the schedule).
    unsent: u64,
    first_error: Option<String>,
    /// Latency of every answered request (any status), microseconds.
    lat_us: Vec<u32>,
    /// Open loop: how late each send started after its scheduled time.
    lag_us: Vec<u32>,
}

impl Tally {
    fn answer(&mut self, a: Answer, latency: Duration) {
        self.lat_us
            .push(latency.as_micros().min(u32::MAX as u128) as u32);
        if a.status == 200 {
            self.ok += 1;
            // Mango answers an empty 200; the row check counts its leads.
            if a.lead_created || workload() == Workload::Mango {
                self.created += 1;
            }
        } else {
            *self.http_errors.entry(a.status).or_default() += 1;
        }
    }

    fn io_error(&mut self, e: &io::Error) {
        self.io_errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    fn timeout(&mut self) {
        self.timeouts += 1;
        if self.first_error.is_none() {
            self.first_error = Some("request timed out".into());
        }
    }

    fn merge(&mut self, o: Tally) {
        self.sent += o.sent;
        self.ok += o.ok;
        self.created += o.created;
        for (s, c) in o.http_errors {
            *self.http_errors.entry(s).or_default() += c;
        }
        self.io_errors += o.io_errors;
        self.timeouts += o.timeouts;
        self.unsent += o.unsent;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.lat_us.extend(o.lat_us);
        self.lag_us.extend(o.lag_us);
    }

    fn errors(&self) -> u64 {
        self.http_errors.values().sum::<u64>() + self.io_errors + self.timeouts + self.unsent
    }

    fn error_text(&self) -> String {
        let mut s = String::new();
        for (status, c) in &self.http_errors {
            let _ = write!(s, "HTTP {status}: {c}; ");
        }
        if self.io_errors > 0 {
            let _ = write!(s, "I/O errors: {}; ", self.io_errors);
        }
        if self.timeouts > 0 {
            let _ = write!(s, "timeouts: {}; ", self.timeouts);
        }
        if self.unsent > 0 {
            let _ = write!(s, "never sent (phase time cap): {}; ", self.unsent);
        }
        if let Some(e) = &self.first_error {
            let _ = write!(s, "first: {e}");
        }
        if s.is_empty() { "none".into() } else { s }
    }
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

// -------------------------------------------------------------- load shapes

async fn closed_worker(
    addr: SocketAddr,
    host: Arc<str>,
    deadline: Instant,
    counter: Arc<AtomicU64>,
    timeout: Duration,
) -> Tally {
    let mut t = Tally::default();
    let (mut req, mut body) = (Vec::with_capacity(512), Vec::with_capacity(256));
    let mut conn: Option<Conn> = None;
    while Instant::now() < deadline {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match tokio::time::timeout(timeout, Conn::connect(addr)).await {
                Ok(Ok(c)) => conn.insert(c),
                Ok(Err(e)) => {
                    t.io_error(&e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => {
                    t.timeout();
                    continue;
                }
            },
        };
        let n = counter.fetch_add(1, Ordering::Relaxed);
        build_request(&mut req, &mut body, &host, n);
        t.sent += 1;
        let began = Instant::now();
        match tokio::time::timeout(timeout, c.roundtrip(&req)).await {
            Ok(Ok(a)) => {
                t.answer(a, began.elapsed());
                if a.close {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                t.io_error(&e);
                conn = None;
            }
            Err(_) => {
                t.timeout();
                conn = None;
            }
        }
    }
    t
}

/// `concurrency` clients post back to back until `duration` is over.
async fn closed_loop(
    addr: SocketAddr,
    concurrency: usize,
    duration: Duration,
    counter: &Arc<AtomicU64>,
    timeout: Duration,
) -> (Tally, Duration) {
    let host: Arc<str> = addr.to_string().into();
    let start = Instant::now();
    let deadline = start + duration;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        set.spawn(closed_worker(
            addr,
            host.clone(),
            deadline,
            counter.clone(),
            timeout,
        ));
    }
    let mut total = Tally::default();
    while let Some(r) = set.join_next().await {
        total.merge(r.expect("load worker panicked"));
    }
    (total, start.elapsed())
}

#[allow(clippy::too_many_arguments)]
async fn open_worker(
    addr: SocketAddr,
    host: Arc<str>,
    t0: Instant,
    stop_at: Instant,
    total: u64,
    rate: u64,
    next: Arc<AtomicU64>,
    counter: Arc<AtomicU64>,
    timeout: Duration,
) -> Tally {
    let mut t = Tally::default();
    let (mut req, mut body) = (Vec::with_capacity(512), Vec::with_capacity(256));
    // Connect before the schedule starts.
    let mut conn = match tokio::time::timeout(timeout, Conn::connect(addr)).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            t.io_error(&e);
            None
        }
        Err(_) => None,
    };
    loop {
        if Instant::now() >= stop_at {
            break;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            break;
        }
        let scheduled =
            t0 + Duration::from_nanos((i as u128 * 1_000_000_000 / rate as u128) as u64);
        tokio::time::sleep_until(scheduled.into()).await;
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match tokio::time::timeout(timeout, Conn::connect(addr)).await {
                Ok(Ok(c)) => conn.insert(c),
                Ok(Err(e)) => {
                    t.sent += 1;
                    t.io_error(&e);
                    continue;
                }
                Err(_) => {
                    t.sent += 1;
                    t.timeout();
                    continue;
                }
            },
        };
        let n = counter.fetch_add(1, Ordering::Relaxed);
        build_request(&mut req, &mut body, &host, n);
        t.sent += 1;
        t.lag_us.push(
            Instant::now()
                .saturating_duration_since(scheduled)
                .as_micros()
                .min(u32::MAX as u128) as u32,
        );
        match tokio::time::timeout(timeout, c.roundtrip(&req)).await {
            Ok(Ok(a)) => {
                // From the scheduled send time: queueing delay counts.
                t.answer(a, scheduled.elapsed());
                if a.close {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                t.io_error(&e);
                conn = None;
            }
            Err(_) => {
                t.timeout();
                conn = None;
            }
        }
    }
    t
}

/// `rate` requests per second for `duration`, sends at fixed intervals over
/// a pool of `conns` connections; returns the tally and the time from the
/// first scheduled send to the last answer. When the server cannot keep up,
/// sends fall behind the schedule (their latency still counts from the
/// scheduled time); after 5 x `duration` + 10 s nothing new is sent and the
/// rest counts as `unsent`, so the phase stays bounded.
async fn open_loop(
    addr: SocketAddr,
    rate: u64,
    duration: Duration,
    conns: usize,
    counter: &Arc<AtomicU64>,
    timeout: Duration,
) -> (Tally, Duration) {
    let host: Arc<str> = addr.to_string().into();
    let total = rate * duration.as_secs();
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now() + Duration::from_millis(300);
    let stop_at = t0 + duration * 5 + Duration::from_secs(10);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conns {
        set.spawn(open_worker(
            addr,
            host.clone(),
            t0,
            stop_at,
            total,
            rate,
            next.clone(),
            counter.clone(),
            timeout,
        ));
    }
    let mut all = Tally::default();
    while let Some(r) = set.join_next().await {
        all.merge(r.expect("load worker panicked"));
    }
    all.unsent = total.saturating_sub(all.sent);
    (all, t0.elapsed())
}

// ------------------------------------------------------------ /proc helpers

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime and the thread name from a /proc stat file.
fn stat_ticks(path: &Path) -> Option<(String, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let f: Vec<&str> = s[close + 1..].split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((comm, ticks))
}

/// CPU ticks of a process, in total and per thread-name group.
#[derive(Clone, Default)]
struct CpuSnap {
    total: u64,
    groups: BTreeMap<String, u64>,
}

fn cpu_snapshot(pid: &str) -> CpuSnap {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let mut snap = CpuSnap {
        total: stat_ticks(&base.join("stat")).map_or(0, |(_, t)| t),
        groups: BTreeMap::new(),
    };
    if let Ok(tasks) = std::fs::read_dir(base.join("task")) {
        for task in tasks.flatten() {
            if let Some((comm, ticks)) = stat_ticks(&task.path().join("stat")) {
                let group = comm
                    .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '_')
                    .to_string();
                *snap.groups.entry(group).or_default() += ticks;
            }
        }
    }
    snap
}

/// "daemon 143% (tokio-runtime-w 80%, sqlx-sqlite-wor 60%, ...)".
fn cpu_delta(before: &CpuSnap, after: &CpuSnap, wall: Duration) -> (f64, String) {
    let hz = clk_tck();
    let pc = |ticks: u64| ticks as f64 / hz / wall.as_secs_f64() * 100.0;
    let total = pc(after.total.saturating_sub(before.total));
    let mut parts: Vec<(u64, &String)> = after
        .groups
        .iter()
        .map(|(g, t)| (t.saturating_sub(*before.groups.get(g).unwrap_or(&0)), g))
        .filter(|(t, _)| *t > 0)
        .collect();
    parts.sort_by_key(|b| std::cmp::Reverse(b.0));
    let detail = parts
        .iter()
        .map(|(t, g)| format!("{g} {:.0}%", pc(*t)))
        .collect::<Vec<_>>()
        .join(", ");
    (total, detail)
}

fn proc_status_kb(pid: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

// ------------------------------------------------------------------- daemon

/// `LEADGATE_BENCH_DAEMON_LOG`: a log level for the daemon, whose log is
/// then kept.
fn daemon_log_level() -> Option<&'static str> {
    static LEVEL: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    LEVEL
        .get_or_init(|| std::env::var("LEADGATE_BENCH_DAEMON_LOG").ok())
        .as_deref()
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// The daemon child process; killed on drop if still running.
struct Daemon {
    child: Option<Child>,
    pid: String,
    addr: SocketAddr,
    log: PathBuf,
}

impl Daemon {
    /// `notifier`: the fake Bot API's URL, for `forms-notify`.
    fn start(
        bin: &Path,
        dir: &Path,
        db_url: &str,
        sync: Option<&str>,
        notifier: Option<&str>,
    ) -> anyhow::Result<Daemon> {
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        std::fs::create_dir_all(dir.join("channels.d"))?;
        std::fs::write(
            dir.join("leadgate.toml"),
            format!(
                "[database]\nurl = \"{db_url}\"\n{}\n[http]\nlisten = \"{addr}\"\n\n\
                 [log]\nformat = \"plain\"\nlevel = \"{}\"\n{}",
                sync.map_or(String::new(), |s| format!("sqlite_synchronous = \"{s}\"\n")),
                daemon_log_level().unwrap_or("warn"),
                notifier.map_or(String::new(), |url| format!(
                    "\n[notify]\n[notify.telegram]\ntoken_file = \"notifier.token\"\napi_url = \"{url}\"\n"
                ))
            ),
        )?;
        if notifier.is_some() {
            std::fs::write(dir.join("notifier.token"), NOTIFIER_TOKEN)?;
        }
        if matches!(workload(), Workload::FormsRouted | Workload::FormsNotify) {
            std::fs::write(
                dir.join("team.toml"),
                "[users.olga]\nname = \"Olga\"\ntelegram_chat_id = 1001\n",
            )?;
            std::fs::write(
                dir.join("routing.toml"),
                "default = \"user:olga\"\n\n[[rules]]\nname = \"site-form\"\n\
                 when.channel = \"site\"\nassign = \"user:olga\"\n",
            )?;
        }
        std::fs::write(
            dir.join("channels.d/site.toml"),
            "kind = \"form\"\n\n[form]\nrate_limit_per_minute = 0\n",
        )?;
        std::fs::write(
            dir.join("channels.d/pbx.toml"),
            format!(
                "kind = \"telephony\"\n\n[telephony]\nprovider = \"mango\"\n\
                 api_key = \"{MANGO_KEY}\"\napi_salt = \"{MANGO_SALT}\"\n"
            ),
        )?;
        let log = dir.join("daemon.log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(dir)
            .arg("run")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("LEADGATE_") || k == "RUST_LOG" || k == "NOTIFY_SOCKET" {
                cmd.env_remove(&*k);
            }
        }
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Daemon {
            pid: child.id().to_string(),
            child: Some(child),
            addr,
            log,
        })
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn wait_ready(&mut self, rt: &Runtime, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "the daemon exited ({status}) before it was ready; its log:\n{}",
                    self.log_tail(30)
                );
            }
            if let Ok((200, _)) = rt.block_on(http_get(self.addr, "/readyz")) {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the daemon was not ready after {limit:?}; its log:\n{}",
            self.log_tail(30)
        )
    }

    /// SIGTERM, then wait (at most 30 s) for the graceful stop.
    fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("the daemon is not running");
        };
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("the daemon did not stop within 30 s of SIGTERM; killed")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if daemon_log_level().is_some() {
            let kept = format!("daemon-{}.log", self.pid);
            match std::fs::copy(&self.log, &kept) {
                Ok(_) => eprintln!("daemon log kept as {kept}"),
                Err(e) => eprintln!("cannot keep the daemon log as {kept}: {e}"),
            }
        }
    }
}

/// Commit metrics scraped from /metrics: (commits, items committed,
/// seconds spent committing).
async fn commit_metrics(addr: SocketAddr) -> Option<(f64, f64, f64)> {
    let (status, text) = http_get(addr, "/metrics").await.ok()?;
    if status != 200 {
        return None;
    }
    let get = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Some((
        get("leadgate_commit_batch_items_count"),
        get("leadgate_commit_batch_items_sum"),
        get("leadgate_commit_seconds_sum"),
    ))
}

fn commit_note(
    before: Option<(f64, f64, f64)>,
    after: Option<(f64, f64, f64)>,
    wall: Duration,
) -> String {
    match (before, after) {
        (Some(b), Some(a)) if a.0 > b.0 => {
            let commits = a.0 - b.0;
            format!(
                "{:.0} commits/s, {:.1} items/commit on average, writer busy committing {:.0}% of the time, {:.2} ms/commit",
                commits / wall.as_secs_f64(),
                (a.1 - b.1) / commits,
                (a.2 - b.2) / wall.as_secs_f64() * 100.0,
                (a.2 - b.2) / commits * 1000.0
            )
        }
        _ => "no commit metrics".into(),
    }
}

// ------------------------------------------------- fake notifier Bot API

const NOTIFIER_TOKEN: &str = "7000000001:AAbench_notifier";

/// `forms-notify`: a minimal Telegram Bot API for the notifier bot, on a
/// thread of its own so it takes no time from the load generator. It
/// answers `sendMessage` as Telegram does (the sent message) and counts
/// it; anything else is a 404. It keeps nothing per message (the tests'
/// fake records every call, which a long run would make slow and large).
struct FakeNotifier {
    /// The server's runtime: it serves as long as this lives.
    _rt: Runtime,
    url: String,
    sent: Arc<AtomicU64>,
}

impl FakeNotifier {
    fn start() -> anyhow::Result<FakeNotifier> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-bot-api")
            .enable_all()
            .build()?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("cannot bind the fake Bot API")?;
        let url = format!("http://{}/", listener.local_addr()?);
        let sent = Arc::new(AtomicU64::new(0));
        let app = axum::Router::new()
            .route("/{bot}/{method}", axum::routing::post(fake_send_message))
            .with_state(sent.clone());
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeNotifier { _rt: rt, url, sent })
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

async fn fake_send_message(
    axum::extract::State(sent): axum::extract::State<Arc<AtomicU64>>,
    axum::extract::Path((bot, method)): axum::extract::Path<(String, String)>,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    use serde_json::json;
    // teloxide writes the method as `SendMessage`; the Bot API ignores case.
    if bot.strip_prefix("bot") != Some(NOTIFIER_TOKEN)
        || !method.eq_ignore_ascii_case("sendMessage")
    {
        return (
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(json!({"ok": false, "error_code": 404, "description": "Not Found"})),
        );
    }
    let params: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let n = sent.fetch_add(1, Ordering::Relaxed) + 1;
    (
        axum::http::StatusCode::OK,
        axum::Json(json!({"ok": true, "result": {
            "message_id": n,
            "date": 1763283300,
            "chat": {"id": params["chat_id"], "type": "private", "first_name": "Olga"},
            "from": {"id": 7000000001i64, "is_bot": true, "first_name": "Notifier", "username": "notifier_bot"},
            "text": params["text"],
        }})),
    )
}

/// How long the bench watches the outbox drain after the load
/// (`LEADGATE_BENCH_OUTBOX_SECONDS`, default 30 s): long enough for a
/// delivery rate, not for the whole backlog, which a real Bot API would
/// pace at ~30 messages/s per bot anyway.
fn outbox_window() -> Duration {
    Duration::from_secs(env_num("LEADGATE_BENCH_OUTBOX_SECONDS", 30u64).clamp(1, 3600))
}

const UNSENT: &str = "SELECT COUNT(*) FROM notifications WHERE sent_at IS NULL";

/// After the load, while the daemon runs: how fast the outbox drains
/// (until it is empty or the window ends).
fn outbox_drain(rt: &Runtime, db: &Db, label: &str, report: &mut Report) -> anyhow::Result<()> {
    let backlog = db.count(rt, UNSENT)?;
    let start = Instant::now();
    let mut unsent = backlog;
    while unsent > 0 && start.elapsed() < outbox_window() {
        std::thread::sleep(Duration::from_millis(100));
        unsent = db.count(rt, UNSENT)?;
    }
    let took = start.elapsed().as_secs_f64();
    let line = format!(
        "{label} outbox drain: {backlog} unsent when the load stopped, {unsent} after {took:.1} s \
         = {:.0} notifications/s delivered after the load",
        (backlog - unsent) as f64 / took.max(0.001)
    );
    println!("  {line}");
    report.rows.push(line);
    Ok(())
}

/// After the daemon stopped (in-flight sends recorded): one row per lead,
/// and the fake Bot API got exactly one `sendMessage` per row marked sent:
/// none lost in the books, none sent twice. `sent_before`: the fake's
/// count when this daemon started.
fn outbox_audit(
    rt: &Runtime,
    db: &Db,
    label: &str,
    fake: &FakeNotifier,
    sent_before: u64,
    report: &mut Report,
) -> anyhow::Result<()> {
    let rows = db.count(rt, "SELECT COUNT(*) FROM notifications")?;
    let leads = db.count(rt, "SELECT COUNT(*) FROM leads")?;
    let marked = rows - db.count(rt, UNSENT)?;
    let sent = fake.sent() - sent_before;
    let ok = rows == leads && sent == marked as u64;
    let line = format!(
        "{label} outbox audit: {rows} row(s) for {leads} lead(s); {marked} marked sent, \
         the fake Bot API got {sent} sendMessage -> {}",
        if ok { "OK" } else { "MISMATCH" }
    );
    println!("  {line}");
    if !ok {
        report.failures.push(line.clone());
    }
    report.rows.push(line);
    Ok(())
}

// ----------------------------------------------------------------- database

async fn sqlite_scalar(path: &Path, sql: &str) -> anyhow::Result<i64> {
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
    Ok(n)
}

async fn pg_scalar(url: &str, sql: &str) -> anyhow::Result<i64> {
    let mut conn = sqlx::postgres::PgConnectOptions::from_str(url)?
        .connect()
        .await
        .context("cannot connect to LEADGATE_BENCH_PG_URL")?;
    let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
    Ok(n)
}

async fn pg_analyze(url: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::postgres::PgConnectOptions::from_str(url)?
        .connect()
        .await
        .context("cannot connect to LEADGATE_BENCH_PG_URL")?;
    sqlx::query("ANALYZE").execute(&mut conn).await?;
    Ok(())
}

/// Drop every table of the current schema (the bench's database is
/// throw-away by contract) so the daemon migrates from scratch.
async fn pg_reset(url: &str) -> anyhow::Result<usize> {
    let mut conn = sqlx::postgres::PgConnectOptions::from_str(url)?
        .connect()
        .await
        .context("cannot connect to LEADGATE_BENCH_PG_URL")?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()",
    )
    .fetch_all(&mut conn)
    .await?;
    if !tables.is_empty() {
        let list = tables
            .iter()
            .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::query(&format!("DROP TABLE IF EXISTS {list} CASCADE"))
            .execute(&mut conn)
            .await?;
    }
    Ok(tables.len())
}

// ---------------------------------------------------------- naive baseline

fn url_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => {
                let hex = std::str::from_utf8(&s[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn baseline_submit(
    axum::extract::State(pool): axum::extract::State<sqlx::SqlitePool>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (mut name, mut phone, mut email, mut comment) = (None, None, None, None);
    for pair in body.split(|&b| b == b'&') {
        let mut kv = pair.splitn(2, |&b| b == b'=');
        let k = url_decode(kv.next().unwrap_or_default());
        let v = url_decode(kv.next().unwrap_or_default());
        match k.as_str() {
            "name" => name = Some(v),
            "phone" => phone = Some(v),
            "email" => email = Some(v),
            "comment" => comment = Some(v),
            _ => {}
        }
    }
    let r = sqlx::query(
        "INSERT INTO leads (created_at, name, phone, email, comment) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(chrono::Utc::now().to_rfc3339())
    .bind(name)
    .bind(phone)
    .bind(email)
    .bind(comment)
    .execute(&pool)
    .await;
    match r {
        Ok(done) => axum::Json(serde_json::json!({
            "ok": true, "id": done.last_insert_rowid(), "disposition": "lead_created"
        }))
        .into_response(),
        Err(e) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"ok": false, "error": e.to_string()})),
        )
            .into_response(),
    }
}

struct Baseline {
    rt: Runtime,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Baseline {
    fn start(db: &Path, conns: u32) -> anyhow::Result<Baseline> {
        // Its own 2-worker runtime, like the daemon's default on this box.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .thread_name("baseline-srv")
            .enable_all()
            .build()?;
        let db = db.to_owned();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let addr = rt.block_on(async move {
            let opts = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&db)
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(5));
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(conns)
                .acquire_timeout(Duration::from_secs(3))
                .connect_with(opts)
                .await?;
            sqlx::query(
                "CREATE TABLE leads (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, \
                 name TEXT, phone TEXT, email TEXT, comment TEXT)",
            )
            .execute(&pool)
            .await?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let app = axum::Router::new()
                .route(FORM_PATH, axum::routing::post(baseline_submit))
                .with_state(pool.clone());
            tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
                pool.close().await;
            });
            anyhow::Ok(addr)
        })?;
        Ok(Baseline {
            rt,
            addr,
            stop: Some(stop),
        })
    }

    fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.rt.shutdown_timeout(Duration::from_secs(5));
    }
}

// ------------------------------------------------------------------ phases

struct PhaseResult {
    label: String,
    wall: Duration,
    tally: Tally,
    p50: f64,
    p99: f64,
    max: f64,
    lag_p99: f64,
    server_cpu: String,
    client_cpu: String,
    commits: String,
}

impl PhaseResult {
    fn new(label: &str, wall: Duration, mut tally: Tally) -> PhaseResult {
        tally.lat_us.sort_unstable();
        tally.lag_us.sort_unstable();
        PhaseResult {
            label: label.into(),
            wall,
            p50: pct(&tally.lat_us, 50.0),
            p99: pct(&tally.lat_us, 99.0),
            max: pct(&tally.lat_us, 100.0),
            lag_p99: pct(&tally.lag_us, 99.0),
            tally,
            server_cpu: String::new(),
            client_cpu: String::new(),
            commits: String::new(),
        }
    }

    fn ok_rate(&self) -> f64 {
        self.tally.ok as f64 / self.wall.as_secs_f64()
    }

    fn print(&self) {
        println!(
            "  {}: {} sent, {} answered 200 ({} lead_created) in {:.2} s = {:.0} req/s; errors: {}",
            self.label,
            self.tally.sent,
            self.tally.ok,
            self.tally.created,
            self.wall.as_secs_f64(),
            self.ok_rate(),
            self.tally.error_text()
        );
        println!(
            "    latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}",
            self.p50,
            self.p99,
            self.max,
            if self.tally.lag_us.is_empty() {
                String::new()
            } else {
                format!(" (send lag behind schedule p99 {:.2} ms)", self.lag_p99)
            }
        );
        if !self.server_cpu.is_empty() {
            println!("    server CPU: {}", self.server_cpu);
        }
        if !self.client_cpu.is_empty() {
            println!("    load generator CPU: {}", self.client_cpu);
        }
        if !self.commits.is_empty() {
            println!("    writer: {}", self.commits);
        }
    }
}

#[derive(Default)]
struct Report {
    sqlite_idle_rss_kb: Option<u64>,
    sqlite_peak_rss_kb: Option<u64>,
    sqlite_after_rss_kb: Option<u64>,
    sqlite_closed: Option<PhaseResult>,
    sqlite_open: Option<PhaseResult>,
    baseline: Option<PhaseResult>,
    pg_idle_rss_kb: Option<u64>,
    pg_closed: Option<PhaseResult>,
    pg_open: Option<PhaseResult>,
    rows: Vec<String>,
    failures: Vec<String>,
}

enum Db<'a> {
    Sqlite(&'a Path),
    Postgres(&'a str),
}

impl Db<'_> {
    fn count(&self, rt: &Runtime, sql: &str) -> anyhow::Result<i64> {
        match self {
            Db::Sqlite(p) => rt.block_on(sqlite_scalar(p, sql)),
            Db::Postgres(u) => rt.block_on(pg_scalar(u, sql)),
        }
    }
}

/// Check the committed rows against the answers; record a failure if they
/// differ.
fn verify(
    rt: &Runtime,
    db: &Db,
    what: &str,
    expected_created: u64,
    expected_inbound: Option<u64>,
    report: &mut Report,
) {
    match db.count(rt, "SELECT COUNT(*) FROM leads") {
        Ok(n) => {
            let line = format!(
                "{what}: leads rows = {n}, 200 answers with lead_created = {expected_created} -> {}",
                if n as u64 == expected_created {
                    "OK"
                } else {
                    "MISMATCH"
                }
            );
            println!("  {line}");
            if n as u64 != expected_created {
                report.failures.push(line.clone());
            }
            report.rows.push(line);
        }
        Err(e) => report
            .failures
            .push(format!("{what}: cannot count leads: {e:#}")),
    }
    if let Some(expected) = expected_inbound {
        match db.count(rt, "SELECT COUNT(*) FROM inbound_messages") {
            Ok(n) if n as u64 == expected => {}
            Ok(n) => report.failures.push(format!(
                "{what}: inbound_messages rows = {n}, 200 answers = {expected}"
            )),
            Err(e) => report
                .failures
                .push(format!("{what}: cannot count inbound_messages: {e:#}")),
        }
    }
}

/// A single line for non-200 answers or errors: these count as problems.
fn check_errors(p: &PhaseResult, report: &mut Report) {
    if p.tally.errors() > 0 {
        report.failures.push(format!(
            "{}: {} request(s) without a 200 answer: {}",
            p.label,
            p.tally.errors(),
            p.tally.error_text()
        ));
    }
    if p.tally.ok != p.tally.created {
        report.failures.push(format!(
            "{}: {} answer(s) were 200 but not lead_created",
            p.label,
            p.tally.ok - p.tally.created
        ));
    }
}

struct DaemonRun {
    idle_rss_kb: Option<u64>,
    closed: PhaseResult,
    open: PhaseResult,
    after_rss_kb: Option<u64>,
    peak_rss_kb: Option<u64>,
}

/// Start the daemon on `db_url`, measure idle RSS, warm up, run the
/// closed-loop and fixed-rate phases, verify rows, stop it.
#[allow(clippy::too_many_arguments)]
fn run_daemon(
    s: &Settings,
    rt: &Runtime,
    bin: &Path,
    dir: &Path,
    db_url: &str,
    db: &Db,
    label: &str,
    counter: &Arc<AtomicU64>,
    notifier: Option<&FakeNotifier>,
    report: &mut Report,
) -> anyhow::Result<DaemonRun> {
    let sync = if matches!(db, Db::Sqlite(_)) {
        s.sqlite_sync.as_deref()
    } else {
        None
    };
    let sent_before = notifier.map_or(0, FakeNotifier::sent);
    let mut daemon = Daemon::start(bin, dir, db_url, sync, notifier.map(|n| n.url.as_str()))?;
    let ready = daemon.wait_ready(rt, Duration::from_secs(60))?;
    println!(
        "[{label}] daemon pid {} on {} ready after {:.2} s",
        daemon.pid,
        daemon.addr,
        ready.as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss_kb = proc_status_kb(&daemon.pid, "VmRSS:");
    println!(
        "[{label}] idle RSS after 2 s: {} kB",
        idle_rss_kb.map_or("?".into(), |k| k.to_string())
    );

    let mut created_total = 0u64;
    let mut ok_total = 0u64;
    if s.warmup > 0 {
        let (t, wall) = rt.block_on(closed_loop(
            daemon.addr,
            s.concurrency,
            Duration::from_secs(s.warmup),
            counter,
            s.request_timeout,
        ));
        created_total += t.created;
        ok_total += t.ok;
        println!(
            "[{label}] warm-up {:.1} s: {} answered 200, errors: {}",
            wall.as_secs_f64(),
            t.ok,
            t.error_text()
        );
        if t.errors() > 0 {
            report
                .failures
                .push(format!("{label} warm-up: errors: {}", t.error_text()));
        }
    }

    // A database in service has statistics: autovacuum analyzes a table
    // within a minute of it growing, and PostgreSQL then plans the
    // writer's lookups on their indexes. A 20 s run from empty tables is
    // shorter than autovacuum's one-minute nap, and on a table it never
    // analyzed the planner takes a lookup's `channel = …` for a handful
    // of rows and filters the rest of the key, so each commit's lookups
    // would grow with the table. Analyze once, as autovacuum would have.
    if let Db::Postgres(url) = db {
        rt.block_on(pg_analyze(url))?;
        println!("[{label}] ANALYZE after the warm-up (autovacuum's job in service)");
    }

    // Closed loop.
    let (m0, srv0, cli0) = (
        rt.block_on(commit_metrics(daemon.addr)),
        cpu_snapshot(&daemon.pid),
        cpu_snapshot("self"),
    );
    let (t, wall) = rt.block_on(closed_loop(
        daemon.addr,
        s.concurrency,
        Duration::from_secs(s.seconds),
        counter,
        s.request_timeout,
    ));
    let (srv1, cli1) = (cpu_snapshot(&daemon.pid), cpu_snapshot("self"));
    let m1 = rt.block_on(commit_metrics(daemon.addr));
    let mut closed = PhaseResult::new(&format!("{label} closed-loop x{}", s.concurrency), wall, t);
    let (pc, detail) = cpu_delta(&srv0, &srv1, wall);
    closed.server_cpu = format!("{pc:.0}% of one core ({detail})");
    closed.client_cpu = format!("{:.0}% of one core", cpu_delta(&cli0, &cli1, wall).0);
    closed.commits = commit_note(m0, m1, wall);
    created_total += closed.tally.created;
    ok_total += closed.tally.ok;
    println!("[{label}] closed loop:");
    closed.print();
    check_errors(&closed, report);
    verify(
        rt,
        db,
        &format!("{label} after closed loop"),
        created_total,
        Some(ok_total),
        report,
    );

    // Open loop at a fixed rate.
    let (m0, srv0, cli0) = (
        rt.block_on(commit_metrics(daemon.addr)),
        cpu_snapshot(&daemon.pid),
        cpu_snapshot("self"),
    );
    let (t, wall) = rt.block_on(open_loop(
        daemon.addr,
        s.rate,
        Duration::from_secs(s.seconds),
        s.open_conns,
        counter,
        s.request_timeout,
    ));
    let (srv1, cli1) = (cpu_snapshot(&daemon.pid), cpu_snapshot("self"));
    let m1 = rt.block_on(commit_metrics(daemon.addr));
    let mut open = PhaseResult::new(&format!("{label} fixed rate {}/s", s.rate), wall, t);
    let (pc, detail) = cpu_delta(&srv0, &srv1, wall);
    open.server_cpu = format!("{pc:.0}% of one core ({detail})");
    open.client_cpu = format!("{:.0}% of one core", cpu_delta(&cli0, &cli1, wall).0);
    open.commits = commit_note(m0, m1, wall);
    created_total += open.tally.created;
    ok_total += open.tally.ok;
    println!("[{label}] fixed rate:");
    open.print();
    check_errors(&open, report);
    verify(
        rt,
        db,
        &format!("{label} after fixed rate"),
        created_total,
        Some(ok_total),
        report,
    );
    if notifier.is_some()
        && let Err(e) = outbox_drain(rt, db, label, report)
    {
        report
            .failures
            .push(format!("{label}: cannot watch the outbox: {e:#}"));
    }

    let after_rss_kb = proc_status_kb(&daemon.pid, "VmRSS:");
    let peak_rss_kb = proc_status_kb(&daemon.pid, "VmHWM:");
    match daemon.stop() {
        Ok(status) if status.success() => println!("[{label}] daemon stopped cleanly on SIGTERM"),
        Ok(status) => report
            .failures
            .push(format!("{label}: daemon exited with {status} on SIGTERM")),
        Err(e) => report.failures.push(format!("{label}: {e:#}")),
    }
    if let Some(fake) = notifier
        && let Err(e) = outbox_audit(rt, db, label, fake, sent_before, report)
    {
        report
            .failures
            .push(format!("{label}: cannot audit the outbox: {e:#}"));
    }
    let lines = daemon.log_lines();
    if !lines.is_empty() {
        println!(
            "[{label}] daemon log has {} line(s) at warn level or above; first ones:",
            lines.len()
        );
        for l in lines.iter().take(5) {
            println!("    {l}");
        }
        report.failures.push(format!(
            "{label}: daemon logged {} warning/error line(s) (see {})",
            lines.len(),
            daemon.log.display()
        ));
    }
    Ok(DaemonRun {
        idle_rss_kb,
        closed,
        open,
        after_rss_kb,
        peak_rss_kb,
    })
}

fn run(s: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_leadgate"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tmp = match &s.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            tempfile::Builder::new()
                .prefix("leadgate-bench-")
                .tempdir_in(d)?
        }
        None => tempfile::Builder::new()
            .prefix("leadgate-bench-")
            .tempdir()?,
    };
    let counter = Arc::new(AtomicU64::new(1));
    let notifier = match workload() {
        Workload::FormsNotify => Some(FakeNotifier::start()?),
        _ => None,
    };
    println!(
        "leadgate ingest bench: {} s phases, {} s warm-up, {} closed-loop clients, {} req/s fixed rate over {} connections",
        s.seconds, s.warmup, s.concurrency, s.rate, s.open_conns
    );
    println!("daemon binary: {}", bin.display());
    println!("workload: {:?} (LEADGATE_BENCH_WORKLOAD)", workload());
    if let Some(n) = &notifier {
        println!("notifier: fake Bot API at {}", n.url);
    }
    if let Some(sync) = &s.sqlite_sync {
        println!(
            "daemon sqlite_synchronous = {sync} (LEADGATE_BENCH_SQLITE_SYNC; the baseline stays FULL)"
        );
    }
    println!("work dir: {}", tmp.path().display());

    // SQLite.
    let sqlite_dir = tmp.path().join("sqlite");
    let db_path = sqlite_dir.join("bench.db");
    let db_url = format!("sqlite://{}", db_path.display());
    let r = run_daemon(
        s,
        &rt,
        &bin,
        &sqlite_dir,
        &db_url,
        &Db::Sqlite(&db_path),
        "sqlite",
        &counter,
        notifier.as_ref(),
        report,
    )?;
    report.sqlite_idle_rss_kb = r.idle_rss_kb;
    report.sqlite_after_rss_kb = r.after_rss_kb;
    report.sqlite_peak_rss_kb = r.peak_rss_kb;
    report.sqlite_closed = Some(r.closed);
    report.sqlite_open = Some(r.open);

    // Naive baseline (of a form post; nothing comparable for PBX events).
    if workload() == Workload::Forms {
        run_baseline(s, &rt, tmp.path(), &counter, report)?;
    }

    // PostgreSQL.
    if let Some(url) = &s.pg_url {
        let dropped = rt.block_on(pg_reset(url))?;
        println!("[postgres] dropped {dropped} table(s) in the bench database");
        let r = run_daemon(
            s,
            &rt,
            &bin,
            &tmp.path().join("postgres"),
            url,
            &Db::Postgres(url),
            "postgres",
            &counter,
            notifier.as_ref(),
            report,
        )?;
        report.pg_idle_rss_kb = r.idle_rss_kb;
        report.pg_closed = Some(r.closed);
        report.pg_open = Some(r.open);
    }
    Ok(())
}

fn run_baseline(
    s: &Settings,
    rt: &Runtime,
    tmp: &Path,
    counter: &Arc<AtomicU64>,
    report: &mut Report,
) -> anyhow::Result<()> {
    // Naive baseline.
    let base_db = tmp.join("baseline.db");
    let baseline = Baseline::start(&base_db, s.baseline_conns)?;
    println!(
        "[baseline] naive axum + one autocommit INSERT per request on {} ({} pool connection(s))",
        baseline.addr, s.baseline_conns
    );
    let mut base_ok = 0;
    if s.warmup > 0 {
        let (t, _) = rt.block_on(closed_loop(
            baseline.addr,
            s.concurrency,
            Duration::from_secs(s.warmup),
            counter,
            s.request_timeout,
        ));
        base_ok += t.ok;
    }
    let cli0 = cpu_snapshot("self");
    let (t, wall) = rt.block_on(closed_loop(
        baseline.addr,
        s.concurrency,
        Duration::from_secs(s.seconds),
        counter,
        s.request_timeout,
    ));
    let cli1 = cpu_snapshot("self");
    let mut base = PhaseResult::new(&format!("baseline closed-loop x{}", s.concurrency), wall, t);
    let (pc, detail) = cpu_delta(&cli0, &cli1, wall);
    base.server_cpu = format!("whole bench process {pc:.0}% of one core ({detail})");
    base_ok += base.tally.ok;
    println!("[baseline] closed loop:");
    base.print();
    baseline.stop();
    match rt.block_on(sqlite_scalar(&base_db, "SELECT COUNT(*) FROM leads")) {
        Ok(n) if n as u64 == base_ok => {
            println!("  baseline: rows = {n} = 200 answers: OK")
        }
        Ok(n) => report
            .failures
            .push(format!("baseline: rows = {n}, 200 answers = {base_ok}")),
        Err(e) => report.failures.push(format!("baseline: {e:#}")),
    }
    if base.tally.errors() > 0 {
        report.failures.push(format!(
            "baseline: {} request(s) without a 200 answer: {}",
            base.tally.errors(),
            base.tally.error_text()
        ));
    }
    report.baseline = Some(base);
    Ok(())
}

fn mb(kb: Option<u64>) -> String {
    kb.map_or("?".into(), |k| format!("{:.1} MB", k as f64 / 1024.0))
}

fn print_summary(s: &Settings, r: &Report) {
    println!();
    println!("================================ SUMMARY ================================");
    println!(
        "workload {:?}; phases {} s, {} closed-loop clients, fixed rate {} req/s; daemon SQLite synchronous={}; latencies in ms",
        workload(),
        s.seconds,
        s.concurrency,
        s.rate,
        s.sqlite_sync.as_deref().unwrap_or("full (default)")
    );
    println!(
        "{:<34} {:>9} {:>7} {:>8} {:>8} {:>8}",
        "run", "ok req/s", "errors", "p50", "p99", "max"
    );
    let row = |p: &Option<PhaseResult>| {
        if let Some(p) = p {
            println!(
                "{:<34} {:>9.0} {:>7} {:>8.2} {:>8.2} {:>8.2}",
                p.label,
                p.ok_rate(),
                p.tally.errors(),
                p.p50,
                p.p99,
                p.max
            );
        }
    };
    row(&r.sqlite_closed);
    row(&r.sqlite_open);
    row(&r.baseline);
    row(&r.pg_closed);
    row(&r.pg_open);
    if let (Some(l), Some(b)) = (&r.sqlite_closed, &r.baseline) {
        println!(
            "leadgate/baseline closed-loop throughput ratio (SQLite): {:.2}x",
            l.ok_rate() / b.ok_rate()
        );
    }
    println!(
        "daemon RSS (SQLite): idle {}, after load {}, peak {}",
        mb(r.sqlite_idle_rss_kb),
        mb(r.sqlite_after_rss_kb),
        mb(r.sqlite_peak_rss_kb)
    );
    if r.pg_closed.is_some() {
        println!("daemon idle RSS (PostgreSQL): {}", mb(r.pg_idle_rss_kb));
    }
    println!("targets:");
    if let Some(p) = &r.sqlite_closed {
        println!(
            "  >= 5,000 durable posts/s on SQLite (aim 10,000): {:.0}/s -> {}",
            p.ok_rate(),
            if p.ok_rate() >= 10_000.0 {
                "met (aim too)"
            } else if p.ok_rate() >= 5_000.0 {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    if let Some(p) = &r.sqlite_open {
        let ok = p.p99 < 25.0 && p.tally.errors() == 0;
        println!(
            "  p99 < 25 ms at {}/s (achieved {:.0}/s): p99 {}{:.2} ms -> {}",
            s.rate,
            p.ok_rate(),
            if p.tally.unsent > 0 { ">= " } else { "" },
            p.p99,
            if ok { "met" } else { "MISSED" }
        );
    }
    if let Some(kb) = r.sqlite_idle_rss_kb {
        println!(
            "  idle RSS < 30 MB: {} -> {}",
            mb(Some(kb)),
            if kb < 30 * 1024 { "met" } else { "MISSED" }
        );
    }
    for line in &r.rows {
        println!("row check: {line}");
    }
    if r.failures.is_empty() {
        println!("no errors, no non-200 answers, row counts match");
    } else {
        println!("PROBLEMS ({}):", r.failures.len());
        for f in &r.failures {
            println!("  - {f}");
        }
    }
}

fn main() -> ExitCode {
    let settings = Settings::from_env();
    let mut report = Report::default();
    let result = run(&settings, &mut report);
    print_summary(&settings, &report);
    match result {
        Err(e) => {
            eprintln!("ingest bench failed: {e:#}");
            ExitCode::FAILURE
        }
        Ok(()) if !report.failures.is_empty() => {
            eprintln!(
                "ingest bench: {} problem(s), see above",
                report.failures.len()
            );
            ExitCode::FAILURE
        }
        Ok(()) => ExitCode::SUCCESS,
    }
}
