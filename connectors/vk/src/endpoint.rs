//! The Callback API endpoint, `POST /vk/{channel}`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use http::{HeaderValue, StatusCode, header};
use leadgate_connector::body::{BodyError, read_bounded};
use leadgate_connector::{LiveChannels, Sink, SinkError};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::VkApi;
use crate::config::{VkChannel, VkMode};
use crate::error::VkError;
use crate::event::parse_event;
use crate::profiles::Profiles;

/// How long a Callback request waits for a sender's name before the event
/// is stored without it: VK gives up on slow answers and redelivers.
const NAME_WAIT: Duration = Duration::from_secs(3);

struct CallbackChannel {
    channel: VkChannel,
    profiles: Option<Profiles>,
}

/// Shared state of the VK endpoint. Channels can be replaced at run time
/// (config reload) without rebuilding the router.
#[derive(Clone)]
pub struct VkState {
    channels: LiveChannels<CallbackChannel>,
    sink: Arc<dyn Sink>,
}

impl VkState {
    /// Needs a Tokio runtime (name lookups run as tasks).
    pub fn new(sink: Arc<dyn Sink>, channels: Vec<VkChannel>) -> Self {
        let state = VkState {
            channels: LiveChannels::default(),
            sink,
        };
        state.set_channels(channels);
        state
    }

    /// Swap in a new channel set; requests already running finish with the
    /// channel they started with. Long-poll channels are kept only to
    /// answer Callback requests for them with a clear refusal.
    pub fn set_channels(&self, channels: Vec<VkChannel>) {
        let table = channels.into_iter().map(|channel| {
            let callback = channel.mode() == VkMode::Callback;
            if callback && !channel.verifies_requests() {
                tracing::warn!(
                    channel = %channel.id,
                    "vk channel has no `secret`: anyone who knows its URL can post events to it"
                );
            }
            let profiles = (callback && channel.settings.fetch_names)
                .then(|| VkApi::for_channel(&channel))
                .flatten()
                .map(|api| Profiles::spawn(Arc::new(api)));
            (channel.id.0.clone(), CallbackChannel { channel, profiles })
        });
        self.channels.replace(table.collect::<Vec<_>>());
    }
}

/// `POST /vk/{channel}`: the Callback API server URL of each community.
pub fn router(state: VkState) -> Router {
    Router::new()
        .route("/vk/{channel}", post(callback))
        // Limits are per channel, enforced while reading the body.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

fn error_response(err: &VkError) -> Response {
    leadgate_connector::body::error_reply(
        err.status(),
        err.code(),
        err.to_string(),
        matches!(err, VkError::Unavailable),
    )
}

/// VK reads the answer as plain text: `ok`, or the confirmation string.
fn plain(text: String) -> Response {
    let mut response = (StatusCode::OK, text).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn callback(
    State(state): State<VkState>,
    channel: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    let Ok(Path(name)) = channel else {
        return error_response(&VkError::UnknownChannel(String::new()));
    };
    let Some(channel) = state.channels.get(&name) else {
        return error_response(&VkError::UnknownChannel(name));
    };
    match accept(&state, &channel, request).await {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(channel = %channel.channel.id, error = %e, "vk callback refused");
            error_response(&e)
        }
    }
}

async fn accept(
    state: &VkState,
    channel: &CallbackChannel,
    request: Request,
) -> Result<Response, VkError> {
    let vk = &channel.channel;
    if vk.mode() != VkMode::Callback {
        return Err(VkError::NotCallback);
    }
    let (parts, body) = request.into_parts();
    let body = read_bounded(&parts.headers, Body::new(body), vk.settings.max_body_bytes)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(limit) => VkError::TooLarge(limit),
            BodyError::Interrupted(why) => VkError::Interrupted(why),
        })?;
    let mut event: Value = serde_json::from_slice(&body).map_err(|e| {
        if e.is_eof() {
            VkError::TruncatedJson(e.to_string())
        } else {
            VkError::InvalidJson(e.to_string())
        }
    })?;
    let Some(object) = event.as_object_mut() else {
        return Err(VkError::InvalidJson("the body is not a JSON object".into()));
    };
    let expected = vk.settings.group_id;
    if let Some(group) = object.get("group_id")
        && group.as_u64() != Some(expected)
    {
        return Err(VkError::GroupMismatch { expected });
    }
    if object.get("type").and_then(Value::as_str) == Some("confirmation") {
        if object.get("group_id").is_none() {
            return Err(VkError::GroupMismatch { expected });
        }
        return Ok(plain(vk.settings.confirmation.clone().unwrap_or_default()));
    }
    // Removed before anything is kept: the raw event is stored.
    let given = object.remove("secret");
    if let Some(secret) = &vk.secret {
        let given = given.as_ref().and_then(Value::as_str).unwrap_or("");
        if !secrets_equal(given, secret.expose()) {
            return Err(VkError::SecretMismatch);
        }
    }
    let raw = event.to_string();
    let mut parsed = parse_event(vk, &event, raw, Utc::now());
    if let (Some(user), Some(profiles)) = (parsed.user_id, &channel.profiles) {
        match tokio::time::timeout(NAME_WAIT, profiles.lookup(vec![user])).await {
            Ok(Ok(found)) => {
                if let Some(p) = found.get(&user) {
                    p.apply(&mut parsed.inbound);
                }
            }
            Ok(Err(e)) if e.is_auth() => {
                tracing::error!(channel = %vk.id, error = %e, "vk token refused; storing events without sender names");
            }
            Ok(Err(e)) => {
                tracing::warn!(channel = %vk.id, error = %e, "sender name not found; storing the event without it");
            }
            Err(_) => {
                tracing::warn!(channel = %vk.id, "sender name lookup too slow; storing the event without it");
            }
        }
    }
    let source_ref = parsed.inbound.source_ref.clone();
    let receipt = state.sink.submit_one(parsed.inbound).await.map_err(|e| {
        e.log_refused(&vk.id, "vk event", Some(&source_ref));
        match e {
            SinkError::UnknownChannel(c) => VkError::UnknownChannel(c),
            SinkError::Unavailable(_) | SinkError::ShuttingDown => VkError::Unavailable,
        }
    })?;
    tracing::debug!(
        channel = %vk.id,
        source_ref,
        inbound_id = receipt.inbound_id,
        disposition = receipt.disposition.as_str(),
        "vk event stored"
    );
    Ok(plain("ok".into()))
}

/// Compare in constant time, in the length too.
fn secrets_equal(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}
