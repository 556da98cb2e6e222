//! Templated PBX webhooks (UIS, Sipuni, Beeline and anything else that can
//! send a JSON or form request per call event): `POST {base}` (or `GET` with
//! query parameters, for templates that only make GET requests), read
//! through the channel's `[telephony.fields]` and `[telephony.values]`.
//!
//! Authentication, when configured: a shared token in a header (or
//! `?token=`), and/or an HMAC-SHA256 of the raw body, hex-encoded in a
//! header. Both are compared in constant time.

use chrono::{DateTime, FixedOffset, Utc};
use hmac::{Hmac, Mac};
use http::HeaderName;
use leadgate_connector::{CallDirection, CallPhase, Secret};
use sha2::{Digest, Sha256};

use crate::body::{Form, Payload, parse_payload};
use crate::call::{
    self, MAX_ID_LEN, MAX_VALUE_LEN, check_text, is_extension, is_outside, parse_time,
    seconds_between,
};
use crate::config::{GenericFields, GenericValues, TelephonyChannel};
use crate::error::TelephonyError;
use crate::mango::Parsed;
use crate::webhook::{Outcome, WebhookRequest, digests_equal};

/// The query parameter a token may come in.
pub const TOKEN_PARAM: &str = "token";

fn check_token(
    header: &HeaderName,
    token: &Secret,
    request: &WebhookRequest<'_>,
) -> Result<(), TelephonyError> {
    let from_header = request
        .headers
        .get(header)
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let from_query = || {
        Form::parse(request.query.unwrap_or("").as_bytes())
            .ok()
            .and_then(|q| q.raw(TOKEN_PARAM).map(str::to_owned))
    };
    let given = from_header.or_else(from_query).ok_or_else(|| {
        TelephonyError::BadSignature(format!(
            "no token: send it in the {header} header or as ?{TOKEN_PARAM}="
        ))
    })?;
    if digests_equal(given.trim(), token.expose()) {
        Ok(())
    } else {
        Err(TelephonyError::BadSignature("wrong token".into()))
    }
}

fn check_hmac(
    header: &HeaderName,
    secret: &Secret,
    request: &WebhookRequest<'_>,
) -> Result<(), TelephonyError> {
    let given = request
        .headers
        .get(header)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            TelephonyError::BadSignature(format!("the request has no {header} header"))
        })?;
    let given = given.strip_prefix("sha256=").unwrap_or(given);
    let given = hex::decode(given)
        .map_err(|_| TelephonyError::BadSignature(format!("{header} is not hex")))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .map_err(|_| TelephonyError::BadSignature("unusable secret".into()))?;
    mac.update(request.body);
    mac.verify_slice(&given)
        .map_err(|_| TelephonyError::BadSignature(format!("{header} does not match the body")))
}

/// Verify and read one request.
pub fn handle(
    channel: &TelephonyChannel,
    token: Option<&(HeaderName, Secret)>,
    hmac: Option<&(HeaderName, Secret)>,
    request: &WebhookRequest<'_>,
    now: DateTime<Utc>,
) -> Result<Outcome, TelephonyError> {
    if !matches!(request.path, "" | "/") {
        return Err(TelephonyError::UnknownPath(request.path.to_owned()));
    }
    let from_query = match *request.method {
        http::Method::GET => true,
        http::Method::POST => {
            request.body.iter().all(u8::is_ascii_whitespace) && request.query.is_some()
        }
        _ => return Err(TelephonyError::MethodNotAllowed(request.method.to_string())),
    };
    if let Some((header, secret)) = token {
        check_token(header, secret, request)?;
    }
    if let Some((header, secret)) = hmac {
        check_hmac(header, secret, request)?;
    }
    let (payload, raw) = if from_query {
        let query = request.query.unwrap_or("");
        (
            Payload::Form(Form::parse(query.as_bytes())?),
            query.as_bytes(),
        )
    } else {
        let content_type = request
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        (parse_payload(content_type, request.body)?, request.body)
    };
    let max = channel.settings.internal_number_max_digits;
    match parse(
        &payload,
        raw,
        &channel.fields,
        &channel.values,
        max,
        channel.time_offset,
    )? {
        Ok(p) => Ok(Outcome::Store(Box::new(call::inbound(
            &channel.id,
            p.source_ref,
            now,
            p.event,
            p.internal_peer.as_deref(),
            raw,
            max,
        )))),
        Err(why) => Ok(Outcome::Ignore(why)),
    }
}

fn one_of(list: &[String], value: &str) -> bool {
    list.iter()
        .any(|v| v.trim().eq_ignore_ascii_case(value.trim()))
}

fn phase_name(phase: CallPhase) -> &'static str {
    match phase {
        CallPhase::Ringing => "ringing",
        CallPhase::Answered => "answered",
        CallPhase::Ended => "ended",
        CallPhase::Recording => "recording",
    }
}

/// Read a payload through the mapping. The inner `Err` is an event value
/// the mapping does not name: acknowledged, not stored.
pub fn parse(
    payload: &Payload,
    raw: &[u8],
    f: &GenericFields,
    v: &GenericValues,
    max: usize,
    offset: FixedOffset,
) -> Result<Result<Parsed, String>, TelephonyError> {
    let get_bounded = |name: &str, limit: usize| -> Result<Option<String>, TelephonyError> {
        match payload.get(name) {
            Some(value) => {
                check_text(name, &value, limit)?;
                Ok(Some(value))
            }
            None => Ok(None),
        }
    };
    let get = |name: &str| get_bounded(name, MAX_ID_LEN);
    let time = |name: &str| -> Result<Option<DateTime<Utc>>, TelephonyError> {
        match get(name)? {
            Some(text) => parse_time(&text, offset).map(Some).ok_or_else(|| {
                TelephonyError::invalid(
                    name,
                    "is not a time (unix seconds, RFC 3339 or YYYY-MM-DD HH:MM:SS)",
                )
            }),
            None => Ok(None),
        }
    };
    let call_id =
        get(&f.call_id)?.ok_or_else(|| TelephonyError::MissingField(f.call_id.clone()))?;
    let event_value = get(&f.event)?;
    let caller = get(&f.caller)?;
    let callee = get(&f.callee)?;
    let line = get(&f.line)?;
    let extension = get(&f.extension)?;
    let timestamp = time(&f.timestamp)?;
    let start = time(&f.start_time)?;
    let answer = time(&f.answer_time)?;
    let end = time(&f.end_time)?;
    let disposition = get(&f.disposition)?;
    let recording = get_bounded(&f.recording_url, MAX_VALUE_LEN)?;
    let duration = match get(&f.duration)? {
        Some(text) => Some(
            text.parse::<f64>()
                .ok()
                .filter(|d| d.is_finite() && *d >= 0.0 && *d < f64::from(u32::MAX))
                .map(|d| d.round() as u32)
                .ok_or_else(|| {
                    TelephonyError::invalid(&f.duration, "is not a number of seconds")
                })?,
        ),
        None => None,
    };

    let phase = match &event_value {
        Some(value) if one_of(&v.ringing, value) => CallPhase::Ringing,
        Some(value) if one_of(&v.answered, value) => CallPhase::Answered,
        Some(value) if one_of(&v.ended, value) => CallPhase::Ended,
        Some(value) if one_of(&v.recording, value) => CallPhase::Recording,
        Some(value) => {
            return Ok(Err(format!(
                "event {value:?} is not one of the values in [telephony.values]"
            )));
        }
        None if end.is_some() || disposition.is_some() || duration.is_some() => CallPhase::Ended,
        None if answer.is_some() => CallPhase::Answered,
        None if recording.is_some() => CallPhase::Recording,
        None => CallPhase::Ringing,
    };
    let caller_is_employee = caller.as_deref().is_some_and(|c| is_extension(c, max));
    let callee_is_outside = callee.as_deref().is_some_and(|c| is_outside(c, max));
    let guessed = if !caller_is_employee {
        CallDirection::Inbound
    } else if callee_is_outside {
        CallDirection::Outbound
    } else {
        CallDirection::Internal
    };
    let direction = match get(&f.direction)? {
        Some(d) if one_of(&v.inbound, &d) => CallDirection::Inbound,
        Some(d) if one_of(&v.outbound, &d) => CallDirection::Outbound,
        Some(d) if one_of(&v.internal, &d) => CallDirection::Internal,
        _ => guessed,
    };

    let mut e = call::event(&call_id, direction, phase);
    let ext = |n: &Option<String>| n.clone().filter(|n| is_extension(n, max));
    let outside = |n: &Option<String>| n.clone().filter(|n| is_outside(n, max));
    let mut peer = None;
    match direction {
        CallDirection::Inbound => {
            e.client_number = caller.clone();
            e.line = line.clone().or_else(|| outside(&callee));
            e.extension = extension.clone().or_else(|| ext(&callee));
        }
        CallDirection::Outbound => {
            e.client_number = callee.clone();
            e.line = line.clone().or_else(|| outside(&caller));
            e.extension = extension.clone().or_else(|| ext(&caller));
        }
        CallDirection::Internal => {
            e.line = line.clone();
            e.extension = extension.clone().or_else(|| caller.clone());
            peer = callee.clone();
        }
    }
    e.at = timestamp.or(match phase {
        CallPhase::Ringing => start,
        CallPhase::Answered => answer,
        CallPhase::Ended => end,
        CallPhase::Recording => None,
    });
    if phase == CallPhase::Ended {
        e.answered = match (&disposition, answer, duration) {
            (Some(d), _, _) => Some(one_of(&v.answered_dispositions, d)),
            (None, Some(_), _) => Some(true),
            (None, None, Some(d)) => Some(d > 0),
            (None, None, None) => None,
        };
        e.talk_seconds = match e.answered {
            Some(true) => duration.or_else(|| seconds_between(answer?, end?)),
            Some(false) => Some(0),
            None => None,
        };
        e.end_reason = disposition.clone();
    }
    e.wait_seconds = match (start, answer, end) {
        (Some(s), Some(a), _) => seconds_between(s, a),
        (Some(s), None, Some(x)) if e.answered == Some(false) => seconds_between(s, x),
        _ => None,
    };
    e.recording = recording;
    let source_ref = match get(&f.event_id)? {
        Some(id) => format!("generic:{call_id}:{id}"),
        None => {
            // No event id: the request's content tells a retry (same bytes)
            // from the next event.
            let digest = Sha256::digest(raw);
            format!(
                "generic:{call_id}:{}:{}:{}",
                phase_name(phase),
                event_value.as_deref().unwrap_or(""),
                hex::encode(&digest[..8])
            )
        }
    };
    Ok(Ok(Parsed {
        source_ref,
        event: e,
        internal_peer: peer,
    }))
}
