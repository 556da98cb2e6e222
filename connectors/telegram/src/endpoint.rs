//! `POST /telegram/{channel}`: Telegram's webhook deliveries.
//!
//! A delivery is answered 200 only after its update is committed, 503 when
//! the store cannot commit (Telegram delivers it again later), 401 when the
//! `X-Telegram-Bot-Api-Secret-Token` header does not carry the channel's
//! secret, 400 when the body is not JSON at all. A body that is JSON but
//! not a readable update is stored with its error and answered 200, so
//! Telegram does not repeat what can never be read.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use chrono::Utc;
use http::{HeaderValue, Method, StatusCode};
use leadgate_connector::body::{BodyError, read_bounded};
use leadgate_connector::{Disposition, LiveChannels, Sink, SinkError};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Mode, TelegramChannel};
use crate::reply::greet;
use crate::update::{ChatPolicy, json_error_message, parse_update};

/// The header Telegram sends the webhook's `secret_token` in.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// Everything a webhook delivery can be refused for, each with one HTTP
/// status and a stable code.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TelegramError {
    #[error("unknown telegram channel {0:?}")]
    UnknownChannel(String),
    #[error("channel {0:?} takes updates by polling, not by webhook")]
    NotWebhook(String),
    #[error("method {0} is not allowed here; Telegram POSTs updates")]
    MethodNotAllowed(String),
    #[error("missing or wrong X-Telegram-Bot-Api-Secret-Token")]
    BadSecret,
    #[error("body too large: the limit is {0} bytes")]
    TooLarge(usize),
    #[error("the body was cut off: {0}")]
    Interrupted(String),
    /// Names the problem: `truncated JSON: …` or `malformed JSON: …`.
    #[error("{0}")]
    MalformedJson(String),
    #[error("store unavailable; retry later")]
    Unavailable,
}

impl TelegramError {
    pub fn status(&self) -> StatusCode {
        match self {
            TelegramError::UnknownChannel(_) | TelegramError::NotWebhook(_) => {
                StatusCode::NOT_FOUND
            }
            TelegramError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            TelegramError::BadSecret => StatusCode::UNAUTHORIZED,
            TelegramError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            TelegramError::Interrupted(_) | TelegramError::MalformedJson(_) => {
                StatusCode::BAD_REQUEST
            }
            TelegramError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            TelegramError::UnknownChannel(_) => "unknown_channel",
            TelegramError::NotWebhook(_) => "not_a_webhook_channel",
            TelegramError::MethodNotAllowed(_) => "method_not_allowed",
            TelegramError::BadSecret => "bad_secret",
            TelegramError::TooLarge(_) => "body_too_large",
            TelegramError::Interrupted(_) => "body_interrupted",
            TelegramError::MalformedJson(_) => "malformed_json",
            TelegramError::Unavailable => "unavailable",
        }
    }
}

/// Shared state of the Telegram webhook endpoints. Channels can be replaced
/// at run time (config reload) without rebuilding the router.
#[derive(Clone)]
pub struct TelegramState {
    channels: LiveChannels<TelegramChannel>,
    sink: Arc<dyn Sink>,
}

impl TelegramState {
    pub fn new(sink: Arc<dyn Sink>, channels: Vec<TelegramChannel>) -> Self {
        let state = TelegramState {
            channels: LiveChannels::default(),
            sink,
        };
        state.set_channels(channels);
        state
    }

    /// Swap in a new channel set; requests already running finish with the
    /// channel they started with.
    pub fn set_channels(&self, channels: Vec<TelegramChannel>) {
        self.channels
            .replace(channels.into_iter().map(|c| (c.id.0.clone(), c)));
    }
}

pub fn router(state: TelegramState) -> Router {
    Router::new()
        .route("/telegram/{channel}", any(deliver))
        // Limits are per channel, enforced while reading the body.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

fn error_response(err: &TelegramError) -> Response {
    leadgate_connector::body::error_reply(
        err.status(),
        err.code(),
        err.to_string(),
        matches!(err, TelegramError::Unavailable),
    )
}

async fn deliver(
    State(state): State<TelegramState>,
    channel: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    let Ok(Path(name)) = channel else {
        return error_response(&TelegramError::UnknownChannel(String::new()));
    };
    let Some(channel) = state.channels.get(&name) else {
        return error_response(&TelegramError::UnknownChannel(name));
    };
    match accept(&state, &channel, request).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => {
            tracing::debug!(channel = %channel.id, error = %e, "telegram delivery refused");
            error_response(&e)
        }
    }
}

/// Compare a credential in constant time, in its length too (the digests
/// have a fixed length).
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let a = Sha256::digest(given);
    let b = Sha256::digest(expected);
    a.ct_eq(&b).into()
}

async fn accept(
    state: &TelegramState,
    channel: &TelegramChannel,
    request: Request,
) -> Result<(), TelegramError> {
    if channel.mode() != Mode::Webhook {
        return Err(TelegramError::NotWebhook(channel.id.0.clone()));
    }
    let (parts, body) = request.into_parts();
    if parts.method != Method::POST {
        return Err(TelegramError::MethodNotAllowed(parts.method.to_string()));
    }
    let expected = channel
        .webhook_secret
        .as_ref()
        .ok_or(TelegramError::BadSecret)?;
    let given = parts
        .headers
        .get(SECRET_HEADER)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    if !same_secret(given, expected.expose().as_bytes()) {
        return Err(TelegramError::BadSecret);
    }
    let body = read_bounded(
        &parts.headers,
        Body::new(body),
        channel.settings.max_body_bytes,
    )
    .await
    .map_err(|e| match e {
        BodyError::TooLarge(limit) => TelegramError::TooLarge(limit),
        BodyError::Interrupted(why) => TelegramError::Interrupted(why),
    })?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| TelegramError::MalformedJson(json_error_message(&e)))?;
    // Valid JSON is valid UTF-8.
    let raw = String::from_utf8_lossy(&body).into_owned();
    let policy = ChatPolicy {
        groups: channel.settings.groups,
        channel_posts: channel.settings.channel_posts,
    };
    let parsed = parse_update(&channel.id, policy, &value, raw, Utc::now());
    let source_ref = parsed.inbound.source_ref.clone();
    let receipt = state.sink.submit_one(parsed.inbound).await.map_err(|e| {
        e.log_refused(&channel.id, "telegram update", Some(&source_ref));
        match e {
            SinkError::UnknownChannel(c) => TelegramError::UnknownChannel(c),
            SinkError::Unavailable(_) | SinkError::ShuttingDown => TelegramError::Unavailable,
        }
    })?;
    tracing::debug!(
        channel = %channel.id,
        source_ref,
        inbound_id = receipt.inbound_id,
        disposition = receipt.disposition.as_str(),
        "telegram update stored"
    );
    if receipt.disposition == Disposition::LeadCreated
        && let Some(chat) = parsed.reply_chat
    {
        greet(channel, chat);
    }
    Ok(())
}
