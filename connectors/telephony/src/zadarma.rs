//! Zadarma PBX notifications.
//!
//! `GET {base}/?zd_echo=X` (sent when the URL is saved) is answered with
//! exactly `X`. Events arrive as `POST {base}/` forms with `event=NOTIFY_*`
//! and, when the account has an API key pair, a `Signature` header: base64
//! of the lowercase-hex HMAC-SHA1 of some of the fields concatenated, which
//! fields depending on the event (the official SDK's
//! `getSignatureString()`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, FixedOffset, Utc};
use hmac::{Hmac, Mac};
use leadgate_connector::{CallDirection, CallPhase, Secret};
use sha1::Sha1;

use crate::body::Form;
use crate::call::{self, check_id, is_extension, is_outside, parse_time};
use crate::config::TelephonyChannel;
use crate::error::TelephonyError;
use crate::mango::Parsed;
use crate::webhook::{Outcome, digests_equal};

/// The header Zadarma signs with.
pub const SIGNATURE_HEADER: &str = "signature";

/// Longest `zd_echo` value echoed back.
pub const MAX_ECHO_LEN: usize = 256;

/// The fields whose concatenation an event's signature covers; `None` for
/// events whose signature leadgate does not know (they are not stored).
pub fn signature_fields(event: &str) -> Option<&'static [&'static str]> {
    Some(match event {
        "NOTIFY_START" | "NOTIFY_INTERNAL" | "NOTIFY_END" | "NOTIFY_IVR" => {
            &["caller_id", "called_did", "call_start"]
        }
        "NOTIFY_ANSWER" => &["caller_id", "destination", "call_start"],
        "NOTIFY_OUT_START" | "NOTIFY_OUT_END" => &["internal", "destination", "call_start"],
        "NOTIFY_RECORD" => &["pbx_call_id", "call_id_with_rec"],
        _ => return None,
    })
}

/// Check the `Signature` header of an event with known signature fields.
/// A missing field counts as empty, as in the PHP reference. Besides base64
/// of the hex digest (what the SDK's `hash_hmac` yields) base64 of the raw
/// digest is accepted: both need the secret, and the hex form is inferred
/// from code, not from a captured request.
pub fn verify(
    secret: &Secret,
    form: &Form,
    fields: &[&str],
    header: Option<&str>,
) -> Result<(), TelephonyError> {
    let given = header
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            TelephonyError::BadSignature("the request has no Signature header".into())
        })?;
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.expose().as_bytes())
        .map_err(|_| TelephonyError::BadSignature("unusable secret".into()))?;
    for f in fields {
        mac.update(form.raw(f).unwrap_or("").as_bytes());
    }
    let digest = mac.finalize().into_bytes();
    let of_hex = BASE64.encode(hex::encode(digest));
    let of_raw = BASE64.encode(digest);
    let hex_ok = digests_equal(given, &of_hex);
    let raw_ok = digests_equal(given, &of_raw);
    if hex_ok | raw_ok {
        Ok(())
    } else {
        Err(TelephonyError::BadSignature(
            "the Signature header does not match".into(),
        ))
    }
}

/// Verify and read one request. `path` is relative to the channel's base.
pub fn handle(
    channel: &TelephonyChannel,
    secret: Option<&Secret>,
    request: &crate::webhook::WebhookRequest<'_>,
    now: DateTime<Utc>,
) -> Result<Outcome, TelephonyError> {
    if !matches!(request.path, "" | "/") {
        return Err(TelephonyError::UnknownPath(request.path.to_owned()));
    }
    if request.method == http::Method::GET {
        return echo(request.query);
    }
    if request.method != http::Method::POST {
        return Err(TelephonyError::MethodNotAllowed(request.method.to_string()));
    }
    let form = Form::parse(request.body)?;
    let event = form
        .value("event")
        .ok_or_else(|| TelephonyError::MissingField("event".into()))?
        .to_ascii_uppercase();
    let Some(fields) = signature_fields(&event) else {
        return Ok(Outcome::Ignore(format!(
            "Zadarma event {event} is not tracked"
        )));
    };
    if let Some(secret) = secret {
        let header = request
            .headers
            .get(SIGNATURE_HEADER)
            .map(|v| v.to_str().unwrap_or(""));
        verify(secret, &form, fields, header)?;
    }
    let max = channel.settings.internal_number_max_digits;
    match parse(&form, &event, max, channel.time_offset)? {
        Some(p) => Ok(Outcome::Store(Box::new(call::inbound(
            &channel.id,
            p.source_ref,
            now,
            p.event,
            p.internal_peer.as_deref(),
            request.body,
            max,
        )))),
        None => Ok(Outcome::Ignore(format!(
            "Zadarma event {event} is not tracked"
        ))),
    }
}

/// The answer to the URL check: exactly the `zd_echo` value.
fn echo(query: Option<&str>) -> Result<Outcome, TelephonyError> {
    let query = Form::parse(query.unwrap_or("").as_bytes())?;
    let value = query
        .raw("zd_echo")
        .ok_or_else(|| TelephonyError::MissingField("zd_echo".into()))?;
    if value.len() > MAX_ECHO_LEN || value.chars().any(char::is_control) {
        return Err(TelephonyError::invalid(
            "zd_echo",
            format!("must be at most {MAX_ECHO_LEN} bytes of printable text"),
        ));
    }
    Ok(Outcome::Echo(value.to_owned()))
}

fn field(form: &Form, name: &str) -> Result<Option<String>, TelephonyError> {
    match form.value(name) {
        Some(v) => {
            check_id(name, v)?;
            Ok(Some(v.to_owned()))
        }
        None => Ok(None),
    }
}

/// Read a (verified) event; `None` for events that carry no call facts
/// leadgate keeps (`NOTIFY_IVR`).
pub fn parse(
    form: &Form,
    event: &str,
    max: usize,
    offset: FixedOffset,
) -> Result<Option<Parsed>, TelephonyError> {
    let pbx_call_id = field(form, "pbx_call_id")?
        .ok_or_else(|| TelephonyError::MissingField("pbx_call_id".into()))?;
    let caller = field(form, "caller_id")?;
    let called_did = field(form, "called_did")?;
    let destination = field(form, "destination")?;
    let internal = field(form, "internal")?;
    let started = form.value("call_start").and_then(|t| parse_time(t, offset));
    let ext = |n: &Option<String>| n.clone().filter(|n| is_extension(n, max));
    let outside = |n: &Option<String>| n.clone().filter(|n| is_outside(n, max));

    let (direction, phase) = match event {
        "NOTIFY_START" | "NOTIFY_INTERNAL" | "NOTIFY_ANSWER" | "NOTIFY_END" => {
            // A caller that is an extension makes the call internal; a
            // NOTIFY_INTERNAL of an outside caller is an extension ringing
            // within an inbound call.
            let dir = if caller.as_deref().is_some_and(|c| is_extension(c, max)) {
                CallDirection::Internal
            } else {
                CallDirection::Inbound
            };
            let phase = match event {
                "NOTIFY_ANSWER" => CallPhase::Answered,
                "NOTIFY_END" => CallPhase::Ended,
                _ => CallPhase::Ringing,
            };
            (dir, phase)
        }
        "NOTIFY_OUT_START" | "NOTIFY_OUT_END" => {
            let dir = if destination.as_deref().is_some_and(|d| is_extension(d, max)) {
                CallDirection::Internal
            } else {
                CallDirection::Outbound
            };
            let phase = if event == "NOTIFY_OUT_END" {
                CallPhase::Ended
            } else {
                CallPhase::Ringing
            };
            (dir, phase)
        }
        "NOTIFY_RECORD" => {
            // No parties in this event; Zadarma's outgoing call ids start
            // with `out_`. The call's record, merged by id, knows better.
            let dir = if pbx_call_id.starts_with("out_") {
                CallDirection::Outbound
            } else {
                CallDirection::Inbound
            };
            (dir, CallPhase::Recording)
        }
        _ => return Ok(None),
    };

    let mut e = call::event(&pbx_call_id, direction, phase);
    let mut peer = None;
    let outgoing = event.starts_with("NOTIFY_OUT_");
    match (direction, outgoing) {
        (_, _) if phase == CallPhase::Recording => {}
        (CallDirection::Internal, false) => {
            e.extension = caller.clone();
            peer = called_did
                .clone()
                .or(destination.clone())
                .or(internal.clone());
        }
        (CallDirection::Internal, true) => {
            e.extension = internal.clone();
            peer = destination.clone();
        }
        (_, false) => {
            e.client_number = caller.clone();
            e.line = called_did.clone().or_else(|| outside(&destination));
            e.extension = internal.clone().or_else(|| ext(&destination));
        }
        (_, true) => {
            e.client_number = destination.clone();
            e.line = outside(&caller);
            e.extension = internal.clone();
        }
    }
    // `call_start` is when the call began: the time of the events that
    // begin it. Answer and end times are not in the payload; the pipeline
    // takes the time of arrival for those.
    if phase == CallPhase::Ringing {
        e.at = started;
    }
    if phase == CallPhase::Ended {
        let disposition = form.value("disposition").map(str::to_owned);
        let duration = form.value("duration").and_then(|d| d.parse::<u32>().ok());
        e.answered = disposition
            .as_deref()
            .map(|d| d.eq_ignore_ascii_case("answered"));
        match e.answered {
            Some(true) => e.talk_seconds = duration,
            Some(false) => {
                e.talk_seconds = Some(0);
                // Unanswered calls report 0; a non-zero length is the ring.
                e.wait_seconds = duration.filter(|d| *d > 0);
            }
            None => {}
        }
        e.end_reason = disposition;
        if form.value("is_recorded") != Some("0") {
            e.recording = field(form, "call_id_with_rec")?;
        }
    }
    let source_ref = if phase == CallPhase::Recording {
        let rec = field(form, "call_id_with_rec")?
            .ok_or_else(|| TelephonyError::MissingField("call_id_with_rec".into()))?;
        e.recording = Some(rec.clone());
        format!("zadarma:{pbx_call_id}:{event}:{rec}")
    } else {
        match internal.as_deref().or(if event == "NOTIFY_ANSWER" {
            destination.as_deref()
        } else {
            None
        }) {
            Some(leg) => format!("zadarma:{pbx_call_id}:{event}:{leg}"),
            None => format!("zadarma:{pbx_call_id}:{event}"),
        }
    };
    Ok(Some(Parsed {
        source_ref,
        event: e,
        internal_peer: peer,
    }))
}
