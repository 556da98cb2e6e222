use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use chrono::Utc;
use http::{HeaderValue, StatusCode, header};
use leadgate_connector::body::{BodyError, read_bounded};
use leadgate_connector::{LiveChannels, Sink, SinkError};

use crate::config::TelephonyChannel;
use crate::error::TelephonyError;
use crate::webhook::{Outcome, WebhookRequest, parse_webhook};

/// Shared state of the telephony endpoints. Channels can be replaced at run
/// time (config reload) without rebuilding the router.
#[derive(Clone)]
pub struct TelephonyState {
    channels: LiveChannels<TelephonyChannel>,
    sink: Arc<dyn Sink>,
}

impl TelephonyState {
    pub fn new(sink: Arc<dyn Sink>, channels: Vec<TelephonyChannel>) -> Self {
        let state = TelephonyState {
            channels: LiveChannels::default(),
            sink,
        };
        state.set_channels(channels);
        state
    }

    /// Swap in a new channel set; requests already running finish with the
    /// channel they started with.
    pub fn set_channels(&self, channels: Vec<TelephonyChannel>) {
        for channel in &channels {
            if !channel.verifies_requests() {
                tracing::warn!(
                    channel = %channel.id,
                    provider = %channel.provider(),
                    "telephony channel has no secret configured: its webhook requests are not verified"
                );
            }
        }
        self.channels
            .replace(channels.into_iter().map(|c| (c.id.0.clone(), c)));
    }

    fn channel(&self, name: &str) -> Option<Arc<TelephonyChannel>> {
        self.channels.get(name)
    }
}

/// Every route of every telephony channel, under `/telephony/{channel}`:
/// the base itself (with or without a trailing slash: Zadarma, generic) and
/// anything below it (Mango's `/events/*` and `/result/*`).
pub fn router(state: TelephonyState) -> Router {
    Router::new()
        .route("/telephony/{channel}", any(at_base))
        .route("/telephony/{channel}/", any(at_base))
        .route("/telephony/{channel}/{*rest}", any(below_base))
        // Limits are per channel, enforced while reading the body.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

fn error_response(err: &TelephonyError) -> Response {
    leadgate_connector::body::error_reply(
        err.status(),
        err.code(),
        err.to_string(),
        matches!(err, TelephonyError::Unavailable),
    )
}

async fn at_base(
    State(state): State<TelephonyState>,
    channel: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    match channel {
        Ok(Path(channel)) => serve(&state, &channel, "/", request).await,
        Err(_) => error_response(&TelephonyError::UnknownChannel(String::new())),
    }
}

async fn below_base(
    State(state): State<TelephonyState>,
    params: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Response {
    match params {
        Ok(Path((channel, rest))) => serve(&state, &channel, &format!("/{rest}"), request).await,
        Err(_) => error_response(&TelephonyError::UnknownChannel(String::new())),
    }
}

async fn serve(state: &TelephonyState, name: &str, path: &str, request: Request) -> Response {
    let Some(channel) = state.channel(name) else {
        return error_response(&TelephonyError::UnknownChannel(name.to_owned()));
    };
    match accept(state, &channel, path, request).await {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(channel = %channel.id, path, error = %e, "telephony request refused");
            error_response(&e)
        }
    }
}

async fn accept(
    state: &TelephonyState,
    channel: &TelephonyChannel,
    path: &str,
    request: Request,
) -> Result<Response, TelephonyError> {
    let limit = channel.settings.max_body_bytes;
    let (parts, body) = request.into_parts();
    let body = read_bounded(&parts.headers, Body::new(body), limit)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(limit) => TelephonyError::TooLarge(limit),
            BodyError::Interrupted(why) => TelephonyError::Interrupted(why),
        })?;
    let webhook = WebhookRequest {
        method: &parts.method,
        path,
        query: parts.uri.query(),
        headers: &parts.headers,
        body: &body,
    };
    match parse_webhook(channel, &webhook, Utc::now())? {
        Outcome::Echo(text) => {
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
            Ok(response)
        }
        Outcome::Ignore(why) => {
            tracing::debug!(channel = %channel.id, path, why, "telephony request acknowledged, nothing stored");
            Ok(StatusCode::OK.into_response())
        }
        Outcome::Store(inbound) => {
            let source_ref = inbound.source_ref.clone();
            let receipt = state.sink.submit_one(*inbound).await.map_err(|e| {
                e.log_refused(&channel.id, "telephony event", Some(&source_ref));
                match e {
                    SinkError::UnknownChannel(c) => TelephonyError::UnknownChannel(c),
                    SinkError::Unavailable(_) | SinkError::ShuttingDown => {
                        TelephonyError::Unavailable
                    }
                }
            })?;
            tracing::debug!(
                channel = %channel.id,
                source_ref,
                inbound_id = receipt.inbound_id,
                disposition = receipt.disposition.as_str(),
                "telephony event stored"
            );
            // The PBXs want an empty 200; a body on NOTIFY_START would even
            // be read by Zadarma as call-control instructions.
            Ok(StatusCode::OK.into_response())
        }
    }
}
