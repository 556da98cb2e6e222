//! A fake VK API on 127.0.0.1 speaking the documented protocol
//! (../shared/protocols.md §3): `/method/groups.getLongPollServer`,
//! `/method/users.get` (v=5.199, access_token, `{"error": {…}}` answers, a
//! per-second limit answered with error 6) and a Bots Long Poll server
//! `/lp?act=a_check&key=&ts=&wait=` that holds the request until an event
//! arrives or `wait` runs out. Tests feed it events (the corpus samples)
//! and inject `failed` answers and API errors.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::routing::{any, get};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// A server that is broken for a while (benches include this file alone,
/// so it does not share `telegram::Broken`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// HTTP 500.
    ServerError,
    /// 200 with a body that is not JSON.
    Garbage,
    /// No answer until the server is mended (then 502).
    Hang,
}

pub const TOKEN: &str = "vk1.a.test-community-token";
pub const GROUP_ID: u64 = 229_000_001;

/// One `a_check` as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRequest {
    pub key: String,
    pub ts: u64,
}

struct Inner {
    /// Event `i` has ts `base + i`; `a_check` with ts `t` returns events
    /// from index `t - base` on and answers the next ts.
    base: u64,
    events: Vec<Value>,
    /// Events below this ts are "forgotten" (history window): failed 1.
    oldest: u64,
    key: String,
    keys_issued: u32,
    poll_failures: VecDeque<i64>,
    api_errors: VecDeque<i64>,
    names: HashMap<i64, (String, String)>,
    calls: HashMap<String, u32>,
    polls: Vec<PollRequest>,
    recent_calls: VecDeque<Instant>,
    per_second: usize,
    rate_errors: u32,
    token: String,
    /// Every request (API and long poll) answers this while set.
    broken: Option<Broken>,
    /// Requests answered while broken.
    broken_hits: u32,
}

#[derive(Clone)]
pub struct FakeVk {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    news: Arc<Notify>,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeVk {
    /// Start on a free loopback port; the first event gets ts `base_ts`.
    pub async fn start(base_ts: u64) -> FakeVk {
        let mut names = HashMap::new();
        // The corpus's users.get answer (015_users_get_response.json).
        names.insert(700_000_001, ("Фёдор".to_owned(), "Белов".to_owned()));
        let inner = Arc::new(Mutex::new(Inner {
            base: base_ts,
            events: Vec::new(),
            oldest: base_ts,
            key: "key-1".into(),
            keys_issued: 1,
            poll_failures: VecDeque::new(),
            api_errors: VecDeque::new(),
            names,
            calls: HashMap::new(),
            polls: Vec::new(),
            recent_calls: VecDeque::new(),
            per_second: 20,
            rate_errors: 0,
            token: TOKEN.into(),
            broken: None,
            broken_hits: 0,
        }));
        let fake = FakeVk {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            inner,
            news: Arc::new(Notify::new()),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = FakeVk { addr, ..fake };
        let app = Router::new()
            .route("/method/{name}", any(method))
            .route("/lp", get(a_check))
            .layer(axum::middleware::from_fn_with_state(fake.clone(), breaker))
            .with_state(fake.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        fake
    }

    /// The `api_url` for a channel file.
    pub fn api_url(&self) -> String {
        format!("http://{}/method/", self.addr)
    }

    /// Add events (update objects); waiting polls answer at once.
    pub fn push(&self, events: impl IntoIterator<Item = Value>) {
        lock(&self.inner).events.extend(events);
        self.news.notify_waiters();
    }

    /// The ts after the last event.
    pub fn head(&self) -> u64 {
        let i = lock(&self.inner);
        i.base + i.events.len() as u64
    }

    /// The next `a_check` (or the one waiting now) answers
    /// `{"failed": code}`; 2 and 3 also expire the key.
    pub fn fail_next_poll(&self, code: i64) {
        lock(&self.inner).poll_failures.push_back(code);
        self.news.notify_waiters();
    }

    /// Push events and make the next poll fail, atomically: the events are
    /// there before the failure is answered.
    pub fn push_then_fail(&self, events: impl IntoIterator<Item = Value>, code: i64) {
        {
            let mut i = lock(&self.inner);
            i.events.extend(events);
            i.poll_failures.push_back(code);
        }
        self.news.notify_waiters();
    }

    /// Forget events below `ts` (VK keeps a limited history).
    pub fn forget_before(&self, ts: u64) {
        lock(&self.inner).oldest = ts;
    }

    /// The next method calls answer these VK error codes, in order.
    pub fn fail_next_calls(&self, codes: &[i64]) {
        lock(&self.inner).api_errors.extend(codes.iter().copied());
    }

    /// Refuse the token from now on (error 5 on every call).
    pub fn revoke_token(&self) {
        lock(&self.inner).token = "revoked".into();
    }

    /// Answer error 6 beyond this many method calls in one second.
    pub fn set_rate_limit(&self, per_second: usize) {
        lock(&self.inner).per_second = per_second;
    }

    /// Break the API and the long-poll server the way `how` says, or mend
    /// them (`None`).
    pub fn set_broken(&self, how: Option<Broken>) {
        lock(&self.inner).broken = how;
    }

    /// Requests answered while broken.
    pub fn broken_hits(&self) -> u32 {
        lock(&self.inner).broken_hits
    }

    pub fn set_name(&self, id: i64, first: &str, last: &str) {
        lock(&self.inner)
            .names
            .insert(id, (first.to_owned(), last.to_owned()));
    }

    pub fn calls(&self, method: &str) -> u32 {
        lock(&self.inner).calls.get(method).copied().unwrap_or(0)
    }

    pub fn polls(&self) -> Vec<PollRequest> {
        lock(&self.inner).polls.clone()
    }

    pub fn rate_errors(&self) -> u32 {
        lock(&self.inner).rate_errors
    }

    pub fn key(&self) -> String {
        lock(&self.inner).key.clone()
    }

    /// Wait until `a_check` was asked at least `n` times.
    pub async fn wait_for_polls(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while lock(&self.inner).polls.len() < n {
            assert!(
                Instant::now() < deadline,
                "the long poll was not asked {n} times within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn breaker(
    State(fake): State<FakeVk>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let broken = {
        let mut i = lock(&fake.inner);
        if i.broken.is_some() {
            i.broken_hits += 1;
        }
        i.broken
    };
    match broken {
        None => next.run(req).await,
        Some(Broken::ServerError) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
        )
            .into_response(),
        Some(Broken::Garbage) => "<html><body>upstream".into_response(),
        Some(Broken::Hang) => {
            while lock(&fake.inner).broken == Some(Broken::Hang) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (axum::http::StatusCode::BAD_GATEWAY, "Bad Gateway").into_response()
        }
    }
}

/// A Callback sample as a long-poll update: the same object without the
/// Callback `secret`.
pub fn as_update(sample: &Value) -> Value {
    let mut update = sample.clone();
    if let Some(o) = update.as_object_mut() {
        o.remove("secret");
    }
    update
}

/// A `message_new` from user `from_id`, message `cmid` in their dialog.
pub fn message_new(from_id: i64, cmid: i64, text: &str) -> Value {
    json!({
        "type": "message_new",
        "group_id": GROUP_ID,
        "event_id": format!("ev{from_id}x{cmid}"),
        "v": "5.199",
        "object": {
            "message": {
                "date": 1763283300, "from_id": from_id, "id": cmid, "out": 0,
                "attachments": [], "conversation_message_id": cmid, "fwd_messages": [],
                "important": false, "is_hidden": false, "peer_id": from_id,
                "random_id": 0, "text": text
            },
            "client_info": {"button_actions": ["text"], "keyboard": true, "inline_keyboard": true, "carousel": true, "lang_id": 0}
        }
    })
}

fn params(query: Option<&str>, body: &[u8]) -> HashMap<String, String> {
    let mut all = HashMap::new();
    for part in [query.unwrap_or("").as_bytes(), body] {
        if let Ok(pairs) = leadgate_connector::urlencoded::decode_pairs(part, 100) {
            all.extend(pairs);
        }
    }
    all
}

fn vk_error(code: i64, message: &str) -> Value {
    json!({"error": {"error_code": code, "error_msg": message, "request_params": []}})
}

async fn method(
    State(fake): State<FakeVk>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    body: axum::body::Bytes,
) -> axum::Json<Value> {
    let p = params(query.as_deref(), &body);
    let mut i = lock(&fake.inner);
    *i.calls.entry(name.clone()).or_default() += 1;
    let now = Instant::now();
    while i
        .recent_calls
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        i.recent_calls.pop_front();
    }
    i.recent_calls.push_back(now);
    if i.recent_calls.len() > i.per_second {
        i.rate_errors += 1;
        return axum::Json(vk_error(6, "Too many requests per second"));
    }
    if p.get("v").map(String::as_str) != Some("5.199") {
        return axum::Json(vk_error(8, "Invalid request: v is required"));
    }
    if p.get("access_token") != Some(&i.token) {
        return axum::Json(vk_error(
            5,
            "User authorization failed: invalid access_token (4).",
        ));
    }
    if let Some(code) = i.api_errors.pop_front() {
        let message = match code {
            5 => "User authorization failed: invalid access_token (4).",
            6 => "Too many requests per second",
            10 => "Internal server error",
            _ => "Injected error",
        };
        return axum::Json(vk_error(code, message));
    }
    match name.as_str() {
        "groups.getLongPollServer" => {
            if p.get("group_id").map(String::as_str) != Some(&GROUP_ID.to_string()) {
                return axum::Json(vk_error(
                    100,
                    "One of the parameters specified was missing or invalid: group_id",
                ));
            }
            let head = i.base + i.events.len() as u64;
            axum::Json(json!({"response": {
                "server": format!("http://{}/lp", fake.addr),
                "key": i.key,
                "ts": head.to_string(),
            }}))
        }
        "users.get" => {
            let ids = p.get("user_ids").cloned().unwrap_or_default();
            let users: Vec<Value> = ids
                .split(',')
                .filter_map(|id| id.trim().parse::<i64>().ok())
                .map(|id| {
                    let (first, last) = i
                        .names
                        .get(&id)
                        .cloned()
                        .unwrap_or_else(|| ("Клиент".into(), format!("№{id}")));
                    json!({"id": id, "first_name": first, "last_name": last, "can_access_closed": true, "is_closed": false})
                })
                .collect();
            axum::Json(json!({ "response": users }))
        }
        _ => axum::Json(vk_error(3, "Unknown method passed")),
    }
}

async fn a_check(State(fake): State<FakeVk>, RawQuery(query): RawQuery) -> axum::Json<Value> {
    let p = params(query.as_deref(), b"");
    let key = p.get("key").cloned().unwrap_or_default();
    let ts: u64 = p.get("ts").and_then(|t| t.parse().ok()).unwrap_or(0);
    let wait = p
        .get("wait")
        .and_then(|w| w.parse::<u64>().ok())
        .unwrap_or(25)
        .min(90);
    if p.get("act").map(String::as_str) != Some("a_check") {
        return axum::Json(json!({"failed": 4}));
    }
    lock(&fake.inner).polls.push(PollRequest {
        key: key.clone(),
        ts,
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        let notified = fake.news.notified();
        {
            let mut i = lock(&fake.inner);
            if let Some(code) = i.poll_failures.pop_front() {
                let head = i.base + i.events.len() as u64;
                if code == 2 || code == 3 {
                    i.keys_issued += 1;
                    i.key = format!("key-{}", i.keys_issued);
                }
                return axum::Json(match code {
                    1 => json!({"failed": 1, "ts": head}),
                    _ => json!({"failed": code}),
                });
            }
            if key != i.key {
                return axum::Json(json!({"failed": 2}));
            }
            let head = i.base + i.events.len() as u64;
            if ts < i.oldest {
                return axum::Json(json!({"failed": 1, "ts": head}));
            }
            if ts < head {
                let from = (ts - i.base) as usize;
                let to = (from + 100).min(i.events.len());
                let updates = i.events[from..to].to_vec();
                return axum::Json(json!({
                    "ts": (i.base + to as u64).to_string(),
                    "updates": updates,
                }));
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return axum::Json(json!({"ts": ts.to_string(), "updates": []}));
        }
    }
}
