//! A fake Telegram Bot API server on a loopback port: `getUpdates` with
//! offset, limit and long-poll timeout semantics (an offset confirms, and
//! forgets, every update below it), `getMe`, `getWebhookInfo`,
//! `setWebhook`, `deleteWebhook` and `sendMessage`, with 401/409/429
//! answers on demand. It records every call and every confirmation, and can
//! check at the moment of each confirmation that what it confirms is
//! already stored.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};
use tokio::sync::Notify;

pub const TOKEN: &str = "7000000001:AAtest_token-for_leadgate";

/// An answer the server gives instead of the real one, once.
#[derive(Debug, Clone)]
pub enum Injected {
    /// 409: another getUpdates consumer.
    ConflictOtherConsumer,
    /// 429 with `retry_after` seconds.
    RetryAfter(u32),
    /// 502 with a body that is not JSON.
    BadGateway,
}

/// A server that is broken for a while: every call answers this until
/// [`FakeBotApi::set_broken`] is called with `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// 500 with Telegram's JSON error.
    ServerError,
    /// 200 with a body that is not JSON.
    Garbage,
    /// No answer until the server is mended (then 502).
    Hang,
    /// 429 with `retry_after` seconds (a flood-control storm).
    RetryAfter(u32),
}

/// Called with the updates a `getUpdates` is about to confirm; an error is
/// a broken delivery promise, recorded in `violations`.
pub type ConfirmCheck = Arc<
    dyn Fn(Vec<Value>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync,
>;

#[derive(Default)]
struct Inner {
    /// Unconfirmed updates with their position: their `update_id`, or the
    /// position of the update before them when they have none.
    queue: Vec<(i64, Value)>,
    last_position: i64,
    /// Every offset getUpdates was called with, in order.
    offsets: Vec<i64>,
    /// `(method, when)` of every call.
    calls: Vec<(String, Instant)>,
    webhook: Option<(String, String)>,
    sent: Vec<Value>,
    get_updates_errors: VecDeque<Injected>,
    /// Answer every getUpdates with this (a persistent conflict).
    always_conflict: bool,
    /// Leave the next confirming getUpdates unanswered and unapplied, as
    /// if it never reached Telegram.
    stall_confirmation: bool,
    stalled: usize,
    send_message_errors: VecDeque<Injected>,
    violations: Vec<String>,
    check: Option<ConfirmCheck>,
    broken: Option<Broken>,
}

#[derive(Clone)]
pub struct FakeBotApi {
    inner: Arc<Mutex<Inner>>,
    arrived: Arc<Notify>,
    pub port: u16,
    token: String,
}

impl FakeBotApi {
    pub async fn start() -> FakeBotApi {
        FakeBotApi::start_with_token(TOKEN).await
    }

    /// A server that accepts only `token`.
    pub async fn start_with_token(token: &str) -> FakeBotApi {
        FakeBotApi::start_on(0, token).await
    }

    /// A server on `port` (0: any free one).
    pub async fn start_on(port: u16, token: &str) -> FakeBotApi {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let api = FakeBotApi {
            inner: Arc::default(),
            arrived: Arc::new(Notify::new()),
            port,
            token: token.to_owned(),
        };
        let app = Router::new()
            .route("/{bot}/{method}", any(handle))
            .with_state(api.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        api
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue an update for getUpdates.
    pub fn push(&self, update: Value) {
        {
            let mut inner = self.lock();
            // One without an id (never sent by Telegram, but in the corpus)
            // goes once the next real update is confirmed.
            let position = update["update_id"]
                .as_i64()
                .unwrap_or(inner.last_position + 1);
            inner.last_position = inner.last_position.max(position);
            inner.queue.push((position, update));
        }
        self.arrived.notify_waiters();
    }

    pub fn inject_get_updates(&self, answer: Injected) {
        self.lock().get_updates_errors.push_back(answer);
    }

    pub fn inject_send_message(&self, answer: Injected) {
        self.lock().send_message_errors.push_back(answer);
    }

    /// The next getUpdates that would confirm something is held without
    /// confirming anything (the daemon can be killed while it waits).
    pub fn stall_next_confirmation(&self) {
        self.lock().stall_confirmation = true;
    }

    pub fn stalled(&self) -> usize {
        self.lock().stalled
    }

    /// Break every method the way `how` says, or mend it (`None`).
    pub fn set_broken(&self, how: Option<Broken>) {
        self.lock().broken = how;
    }

    pub fn set_always_conflict(&self, on: bool) {
        self.lock().always_conflict = on;
    }

    pub fn set_webhook(&self, url: &str, secret: &str) {
        self.lock().webhook = Some((url.to_owned(), secret.to_owned()));
    }

    pub fn webhook(&self) -> Option<(String, String)> {
        self.lock().webhook.clone()
    }

    pub fn check_confirmations(&self, check: ConfirmCheck) {
        self.lock().check = Some(check);
    }

    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    pub fn offsets(&self) -> Vec<i64> {
        self.lock().offsets.clone()
    }

    pub fn highest_offset(&self) -> Option<i64> {
        self.lock().offsets.iter().copied().max()
    }

    pub fn pending(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn calls(&self, method: &str) -> Vec<Instant> {
        self.lock()
            .calls
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, t)| *t)
            .collect()
    }

    pub fn sent_messages(&self) -> Vec<Value> {
        self.lock().sent.clone()
    }

    /// Wait until `done` holds, or panic after `within` naming `what`.
    pub async fn wait_for(&self, what: &str, within: Duration, done: impl Fn(&FakeBotApi) -> bool) {
        let deadline = Instant::now() + within;
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn ok(result: Value) -> Response {
    axum::Json(json!({"ok": true, "result": result})).into_response()
}

fn error(status: u16, description: &str, parameters: Option<Value>) -> Response {
    let mut body = json!({"ok": false, "error_code": status, "description": description});
    if let Some(p) = parameters {
        body["parameters"] = p;
    }
    let status = axum::http::StatusCode::from_u16(status).unwrap();
    (status, axum::Json(body)).into_response()
}

fn injected(answer: &Injected) -> Response {
    match answer {
        Injected::ConflictOtherConsumer => error(
            409,
            "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
            None,
        ),
        Injected::RetryAfter(secs) => error(
            429,
            &format!("Too Many Requests: retry after {secs}"),
            Some(json!({"retry_after": secs})),
        ),
        Injected::BadGateway => (
            axum::http::StatusCode::BAD_GATEWAY,
            "<html>502 Bad Gateway</html>",
        )
            .into_response(),
    }
}

async fn handle(
    State(api): State<FakeBotApi>,
    Path((bot, method)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    // Method names are case-insensitive (teloxide says `SendMessage`);
    // the fake keeps Telegram's spelling.
    let method = [
        "getMe",
        "getWebhookInfo",
        "setWebhook",
        "deleteWebhook",
        "sendMessage",
        "getUpdates",
    ]
    .into_iter()
    .find(|m| m.eq_ignore_ascii_case(&method))
    .map_or(method, str::to_owned);
    api.lock().calls.push((method.clone(), Instant::now()));
    let broken = api.lock().broken;
    match broken {
        None => {}
        Some(Broken::ServerError) => return error(500, "Internal Server Error", None),
        Some(Broken::Garbage) => return "<html><body>upstream".into_response(),
        Some(Broken::RetryAfter(secs)) => return injected(&Injected::RetryAfter(secs)),
        Some(Broken::Hang) => {
            while api.lock().broken == Some(Broken::Hang) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return error(502, "Bad Gateway", None);
        }
    }
    if bot.strip_prefix("bot") != Some(api.token.as_str()) {
        return error(401, "Unauthorized", None);
    }
    let params: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return error(400, "Bad Request: the fake takes JSON parameters", None),
        }
    };
    match method.as_str() {
        "getMe" => ok(
            json!({"id": 7000000001i64, "is_bot": true, "first_name": "OurCompanyBot", "username": "ourcompany_bot"}),
        ),
        "getWebhookInfo" => {
            let inner = api.lock();
            let url = inner.webhook.as_ref().map_or("", |(u, _)| u.as_str());
            ok(
                json!({"url": url, "has_custom_certificate": false, "pending_update_count": inner.queue.len()}),
            )
        }
        "setWebhook" => {
            let url = params["url"].as_str().unwrap_or("").to_owned();
            let secret = params["secret_token"].as_str().unwrap_or("").to_owned();
            api.lock().webhook = (!url.is_empty()).then_some((url, secret));
            ok(json!(true))
        }
        "deleteWebhook" => {
            api.lock().webhook = None;
            ok(json!(true))
        }
        "sendMessage" => {
            if let Some(answer) = api.lock().send_message_errors.pop_front() {
                return injected(&answer);
            }
            let chat = params["chat_id"].as_i64().unwrap_or(0);
            api.lock().sent.push(params.clone());
            ok(json!({
                "message_id": 1000 + api.sent_messages().len() as i64,
                "date": 1763283300,
                "chat": {"id": chat, "type": "private", "first_name": "Client"},
                "from": {"id": 7000000001i64, "is_bot": true, "first_name": "OurCompanyBot", "username": "ourcompany_bot"},
                "text": params["text"].clone(),
            }))
        }
        "getUpdates" => get_updates(&api, &params).await,
        other => error(404, &format!("Not Found: method {other}"), None),
    }
}

async fn get_updates(api: &FakeBotApi, params: &Value) -> Response {
    {
        let mut inner = api.lock();
        if inner.webhook.is_some() {
            return error(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
                None,
            );
        }
        if inner.always_conflict {
            return injected(&Injected::ConflictOtherConsumer);
        }
        if let Some(answer) = inner.get_updates_errors.pop_front() {
            return injected(&answer);
        }
    }
    let limit = params["limit"].as_u64().unwrap_or(100).clamp(1, 100) as usize;
    let timeout = Duration::from_secs(params["timeout"].as_u64().unwrap_or(0));
    if let Some(offset) = params["offset"].as_i64() {
        let stall = {
            let mut inner = api.lock();
            let confirms = inner.queue.iter().any(|(pos, _)| *pos < offset);
            let stall = confirms && inner.stall_confirmation;
            if stall {
                inner.stall_confirmation = false;
                inner.stalled += 1;
            }
            stall
        };
        if stall {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return error(502, "stalled by the test", None);
        }
        let (confirmed, check) = {
            let mut inner = api.lock();
            inner.offsets.push(offset);
            let (gone, kept): (Vec<_>, Vec<_>) =
                inner.queue.drain(..).partition(|(pos, _)| *pos < offset);
            inner.queue = kept;
            (
                gone.into_iter().map(|(_, u)| u).collect::<Vec<_>>(),
                inner.check.clone(),
            )
        };
        if let (false, Some(check)) = (confirmed.is_empty(), check)
            && let Err(e) = check(confirmed).await
        {
            api.lock().violations.push(format!("offset {offset}: {e}"));
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = api.arrived.notified();
        let batch: Vec<Value> = api
            .lock()
            .queue
            .iter()
            .take(limit)
            .map(|(_, u)| u.clone())
            .collect();
        if !batch.is_empty() || tokio::time::Instant::now() >= deadline {
            return ok(Value::Array(batch));
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}
