use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use leadgate_connector::body::{BodyError, read_bounded};
use leadgate_connector::{
    Dedupe, Flag, IdentityKind, Inbound, LiveChannels, Receipt, Sink, SinkError, fields,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::FormChannel;
use crate::limiter::PerAddressLimiter;
use crate::mapping::map_fields;
use crate::parse::{FormError, parse_body};

/// Header a server-to-server caller puts its key in.
pub const KEY_HEADER: &str = "x-leadgate-key";

struct LiveChannel {
    channel: FormChannel,
    limiter: Option<PerAddressLimiter>,
}

/// Shared state of the forms endpoint. Channels can be replaced at run time
/// (config reload) without rebuilding the router.
#[derive(Clone)]
pub struct FormsState {
    channels: LiveChannels<LiveChannel>,
    sink: Arc<dyn Sink>,
}

impl FormsState {
    pub fn new(sink: Arc<dyn Sink>, channels: Vec<FormChannel>) -> Self {
        let state = FormsState {
            channels: LiveChannels::default(),
            sink,
        };
        state.set_channels(channels);
        state
    }

    /// Swap in a new channel set; requests already running finish with the
    /// channel they started with.
    pub fn set_channels(&self, channels: Vec<FormChannel>) {
        self.channels.replace(channels.into_iter().map(|channel| {
            let limiter = NonZeroU32::new(channel.settings.rate_limit_per_minute)
                .map(PerAddressLimiter::per_minute);
            (channel.id.0.clone(), LiveChannel { channel, limiter })
        }));
    }

    fn channel(&self, name: &str) -> Option<Arc<LiveChannel>> {
        self.channels.get(name)
    }
}

/// `POST /forms/{channel}` and its CORS preflight.
pub fn router(state: FormsState) -> Router {
    Router::new()
        .route("/forms/{channel}", post(submit).options(preflight))
        // Limits are per channel, enforced while reading the body.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

struct Reply {
    status: StatusCode,
    body: Response,
    cors: Option<HeaderValue>,
}

fn error_reply(err: &FormError, cors: Option<HeaderValue>) -> Reply {
    let mut response = (
        err.status(),
        axum::Json(json!({"ok": false, "error": err.code(), "message": err.to_string()})),
    )
        .into_response();
    if matches!(err, FormError::Unavailable | FormError::RateLimited) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    Reply {
        status: err.status(),
        body: response,
        cors,
    }
}

fn finish(reply: Reply) -> Response {
    let mut response = reply.body;
    *response.status_mut() = reply.status;
    if let Some(origin) = reply.cors {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// The request's `Origin` when the channel allows it. `Err` when the channel
/// has an allow-list and the origin is not on it.
fn check_origin(
    channel: &FormChannel,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, FormError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(None);
    };
    let allowed = &channel.settings.cors_origins;
    if allowed.is_empty() {
        return Ok(None);
    }
    let text = origin.to_str().unwrap_or("");
    if allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(text))
    {
        Ok(Some(origin.clone()))
    } else {
        Err(FormError::OriginNotAllowed(text.to_owned()))
    }
}

async fn preflight(
    State(state): State<FormsState>,
    Path(channel): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(live) = state.channel(&channel) else {
        return finish(error_reply(&FormError::UnknownChannel(channel), None));
    };
    match check_origin(&live.channel, &headers) {
        Ok(Some(origin)) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            let h = response.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Content-Type, X-Leadgate-Key, Idempotency-Key"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            response
        }
        Ok(None) => finish(error_reply(
            &FormError::OriginNotAllowed(
                String::from_utf8_lossy(
                    headers
                        .get(header::ORIGIN)
                        .map(|o| o.as_bytes())
                        .unwrap_or(b""),
                )
                .into_owned(),
            ),
            None,
        )),
        Err(e) => finish(error_reply(&e, None)),
    }
}

fn client_ip(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

fn query_token(request: &Request) -> Option<String> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "token").then(|| v.to_owned())
    })
}

fn keys_equal(given: &str, expected: &str) -> bool {
    // Comparing digests keeps the comparison constant-time in the length too.
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

async fn submit(
    State(state): State<FormsState>,
    Path(channel): Path<String>,
    request: Request,
) -> Response {
    let Some(live) = state.channel(&channel) else {
        return finish(error_reply(&FormError::UnknownChannel(channel), None));
    };
    let cors = match check_origin(&live.channel, request.headers()) {
        Ok(cors) => cors,
        Err(e) => return finish(error_reply(&e, None)),
    };
    match accept(&state, &live, request).await {
        Ok(reply) => finish(Reply { cors, ..reply }),
        Err(e) => {
            tracing::debug!(channel = %live.channel.id, error = %e, "form post refused");
            finish(error_reply(&e, cors))
        }
    }
}

async fn accept(
    state: &FormsState,
    live: &LiveChannel,
    request: Request,
) -> Result<Reply, FormError> {
    let channel = &live.channel;
    if let Some(limiter) = &live.limiter
        && !limiter.allows(client_ip(&request))
    {
        return Err(FormError::RateLimited);
    }
    if let Some(expected) = &channel.api_key {
        let given = request
            .headers()
            .get(KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| query_token(&request));
        match given {
            None => return Err(FormError::MissingKey),
            Some(given) if !keys_equal(&given, expected.expose()) => {
                return Err(FormError::WrongKey);
            }
            Some(_) => {}
        }
    }
    let limit = channel.settings.max_body_bytes;
    let (parts, body) = request.into_parts();
    let body = read_bounded(&parts.headers, Body::new(body), limit)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(limit) => FormError::TooLarge(limit),
            BodyError::Interrupted(why) => FormError::Interrupted(why),
        })?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let parsed = parse_body(content_type, &body).await?;
    let form = map_fields(
        &parsed,
        &channel.settings.fields,
        &channel.settings.honeypot_fields,
    );
    if form.is_handshake {
        return Ok(Reply {
            status: StatusCode::OK,
            body: "ok".into_response(),
            cors: None,
        });
    }
    if form.honeypot.is_none() && !form.has_contact() {
        return Err(FormError::NoContact);
    }

    let now = Utc::now();
    let idempotency_key = parts
        .headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let (source_ref, dedupe) = match (&form.provider_id, idempotency_key) {
        (Some(id), _) => (id.clone(), Dedupe::SourceRef),
        (None, Some(key)) => (format!("idempotency:{key}"), Dedupe::SourceRef),
        (None, None) => (unique_submission_ref(now), Dedupe::ContentWithinWindow),
    };
    let mut inbound = Inbound::new(channel.id.clone(), source_ref, now);
    inbound.dedupe = dedupe;
    inbound.sender.name = form.name.clone();
    for phone in &form.phones {
        inbound.sender.push(IdentityKind::Phone, phone.as_str());
    }
    for email in &form.emails {
        inbound.sender.push(IdentityKind::Email, email.as_str());
    }
    for tg in &form.telegram {
        inbound.sender.push(IdentityKind::Telegram, tg.as_str());
    }
    inbound.fields = form.fields;
    inbound.text = inbound.fields.remove(fields::COMMENT);
    if let Some(referer) = parts
        .headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
    {
        inbound
            .fields
            .insert(fields::REFERER.into(), referer.to_owned());
    }
    inbound.attachments = parsed.attachments;
    if let Some(field) = &form.honeypot {
        inbound
            .flags
            .push(Flag::Spam(format!("honeypot field {field:?} filled")));
    }
    inbound.raw = String::from_utf8_lossy(&body).into_owned();

    let receipt = state.sink.submit_one(inbound).await.map_err(|e| {
        e.log_refused(&channel.id, "form post", None);
        match e {
            SinkError::UnknownChannel(c) => FormError::UnknownChannel(c),
            SinkError::Unavailable(_) | SinkError::ShuttingDown => FormError::Unavailable,
        }
    })?;
    Ok(success(channel, &parts.headers, &receipt))
}

fn success(channel: &FormChannel, headers: &HeaderMap, receipt: &Receipt) -> Reply {
    let wants_page = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if let (true, Some(target)) = (wants_page, &channel.settings.success_redirect)
        && let Ok(location) = HeaderValue::from_str(target)
    {
        let mut response = StatusCode::SEE_OTHER.into_response();
        response.headers_mut().insert(header::LOCATION, location);
        return Reply {
            status: StatusCode::SEE_OTHER,
            body: response,
            cors: None,
        };
    }
    Reply {
        status: StatusCode::OK,
        body: axum::Json(json!({
            "ok": true,
            "id": receipt.inbound_id,
            "lead_id": receipt.lead_id,
            "disposition": receipt.disposition.as_str(),
        }))
        .into_response(),
        cors: None,
    }
}

/// A `source_ref` for a post without any provider id: unique per post, so
/// only the content window decides whether it repeats an earlier one.
fn unique_submission_ref(now: chrono::DateTime<Utc>) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(
        "post:{}:{}:{seq}",
        now.timestamp_nanos_opt().unwrap_or_default(),
        std::process::id()
    )
}
