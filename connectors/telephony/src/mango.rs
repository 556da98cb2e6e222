//! Mango Office VPBX notifications.
//!
//! Every request is a form with `vpbx_api_key`, `sign` and `json`, where
//! `sign = hex(sha256(vpbx_api_key + json + vpbx_api_salt))` over the `json`
//! text exactly as received. `events/call` reports one leg's state
//! (`Appeared`, `Connected`, `OnHold`, `Disconnected`), `events/summary` the
//! whole call after it ended, `events/recording` a recording; anything else
//! under `events/` or `result/` is verified and acknowledged, not stored.

use chrono::{DateTime, Utc};
use leadgate_connector::{CallDirection, CallEvent, CallPhase, Secret};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::body::Form;
use crate::call::{self, check_id, from_unix, is_extension, is_outside};
use crate::config::TelephonyChannel;
use crate::error::TelephonyError;
use crate::webhook::{Outcome, digests_equal};

/// Which Mango notification a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MangoPath {
    Call,
    Summary,
    Recording,
    /// Another notification or a command result: verified, not stored.
    Other,
}

impl MangoPath {
    /// `path` is relative to the channel's base (`/events/call`).
    pub fn parse(path: &str) -> Option<MangoPath> {
        let p = path.trim_end_matches('/');
        match p {
            "/events/call" => Some(MangoPath::Call),
            "/events/summary" => Some(MangoPath::Summary),
            "/events/recording" => Some(MangoPath::Recording),
            _ if p.starts_with("/events/") || p.starts_with("/result/") => Some(MangoPath::Other),
            _ => None,
        }
    }
}

/// Check `vpbx_api_key` and `sign`. Both comparisons run in constant time
/// and both always run, so timing tells nothing about which one failed.
pub fn verify(key: &Secret, salt: &Secret, form: &Form) -> Result<(), TelephonyError> {
    let given_key = form
        .raw("vpbx_api_key")
        .ok_or_else(|| TelephonyError::BadSignature("the request has no `vpbx_api_key`".into()))?;
    let sign = form
        .raw("sign")
        .ok_or_else(|| TelephonyError::BadSignature("the request has no `sign`".into()))?;
    let json = form.raw("json").unwrap_or("");
    let mut hasher = Sha256::new();
    hasher.update(key.expose().as_bytes());
    hasher.update(json.as_bytes());
    hasher.update(salt.expose().as_bytes());
    let expected = hex::encode(hasher.finalize());
    let key_ok = digests_equal(given_key.trim(), key.expose());
    let sign_ok = digests_equal(&sign.trim().to_ascii_lowercase(), &expected);
    if key_ok & sign_ok {
        Ok(())
    } else {
        Err(TelephonyError::BadSignature(
            "wrong `vpbx_api_key` or `sign`".into(),
        ))
    }
}

/// The `json` field as an object.
pub fn payload(form: &Form) -> Result<Map<String, Value>, TelephonyError> {
    let json = form
        .raw("json")
        .ok_or_else(|| TelephonyError::MissingField("json".into()))?;
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(TelephonyError::InvalidJsonField(
            "expected a JSON object".into(),
        )),
        Err(e) => Err(TelephonyError::InvalidJsonField(e.to_string())),
    }
}

/// Verify and read one request.
pub fn handle(
    channel: &TelephonyChannel,
    key: &Secret,
    salt: &Secret,
    path: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Outcome, TelephonyError> {
    let kind =
        MangoPath::parse(path).ok_or_else(|| TelephonyError::UnknownPath(path.to_owned()))?;
    let form = Form::parse(body)?;
    verify(key, salt, &form)?;
    if kind == MangoPath::Other {
        return Ok(Outcome::Ignore(format!(
            "Mango notification {path} is not tracked"
        )));
    }
    let json = payload(&form)?;
    let max = channel.settings.internal_number_max_digits;
    let parsed = match kind {
        MangoPath::Call => call_event(&json, max)?,
        MangoPath::Summary => summary(&json, max)?,
        MangoPath::Recording => match recording(&json, max)? {
            Some(p) => p,
            None => return Ok(Outcome::Ignore("recording not finished yet".into())),
        },
        MangoPath::Other => return Ok(Outcome::Ignore(String::new())),
    };
    Ok(Outcome::Store(Box::new(call::inbound(
        &channel.id,
        parsed.source_ref,
        now,
        parsed.event,
        parsed.internal_peer.as_deref(),
        body,
        max,
    ))))
}

/// One notification read into provider-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub source_ref: String,
    pub event: CallEvent,
    /// The other extension of an internal call.
    pub internal_peer: Option<String>,
}

fn json_text(field: &str, v: Option<&Value>) -> Result<Option<String>, TelephonyError> {
    let text = match v {
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Ok(None),
    };
    if text.is_empty() {
        return Ok(None);
    }
    check_id(field, &text)?;
    Ok(Some(text))
}

fn json_int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 1e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn required(json: &Map<String, Value>, name: &str) -> Result<String, TelephonyError> {
    let field = format!("json.{name}");
    json_text(&field, json.get(name))?.ok_or(TelephonyError::MissingField(field))
}

/// One side of a call: `{number, extension, line_number}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Party {
    number: Option<String>,
    extension: Option<String>,
    line_number: Option<String>,
}

impl Party {
    fn read(json: &Map<String, Value>, name: &str) -> Result<Party, TelephonyError> {
        let field = |f: &str| format!("json.{name}.{f}");
        Ok(match json.get(name) {
            Some(Value::Object(m)) => Party {
                number: json_text(&field("number"), m.get("number"))?,
                extension: json_text(&field("extension"), m.get("extension"))?,
                line_number: json_text(&field("line_number"), m.get("line_number"))?,
            },
            other => Party {
                number: json_text(&format!("json.{name}"), other)?,
                ..Party::default()
            },
        })
    }

    fn is_empty(&self) -> bool {
        self.number.is_none() && self.extension.is_none() && self.line_number.is_none()
    }

    /// An employee of the PBX: an extension, or a short number.
    fn is_employee(&self, max: usize) -> bool {
        self.extension.is_some() || self.number.as_deref().is_some_and(|n| is_extension(n, max))
    }

    /// An outside party: an outside number and no extension.
    fn is_outside(&self, max: usize) -> bool {
        self.extension.is_none() && self.number.as_deref().is_some_and(|n| is_outside(n, max))
    }

    fn extension(&self, max: usize) -> Option<String> {
        self.extension
            .clone()
            .or_else(|| self.number.clone().filter(|n| is_extension(n, max)))
    }

    fn outside_number(&self, max: usize) -> Option<String> {
        self.number.clone().filter(|n| is_outside(n, max))
    }
}

/// Who called whom: an outside caller makes the call inbound (whoever it
/// reached); an employee calling an outside number makes it outbound; an
/// employee calling an employee makes it internal. `None` when the payload
/// names neither side.
fn direction(from: &Party, to: &Party, max: usize) -> Option<CallDirection> {
    if from.is_empty() && to.is_empty() {
        None
    } else if !from.is_employee(max) {
        Some(CallDirection::Inbound)
    } else if to.is_outside(max) {
        Some(CallDirection::Outbound)
    } else {
        Some(CallDirection::Internal)
    }
}

/// Fill in the parties of an event of the given direction.
fn set_parties(
    event: &mut CallEvent,
    json: &Map<String, Value>,
    from: &Party,
    to: &Party,
    max: usize,
) -> Result<Option<String>, TelephonyError> {
    let top_line = json_text("json.line_number", json.get("line_number"))?;
    let mut peer = None;
    match event.direction {
        CallDirection::Inbound => {
            event.client_number = from.number.clone();
            event.line = to
                .line_number
                .clone()
                .or(top_line)
                .or_else(|| to.outside_number(max));
            event.extension = to.extension(max);
        }
        CallDirection::Outbound => {
            event.client_number = to.number.clone();
            event.line = from
                .line_number
                .clone()
                .or(top_line)
                .or_else(|| from.outside_number(max))
                .or_else(|| to.line_number.clone());
            event.extension = from.extension(max);
        }
        CallDirection::Internal => {
            event.line = top_line;
            event.extension = from.extension(max);
            peer = to.extension(max).or_else(|| to.number.clone());
        }
    }
    Ok(peer)
}

/// `events/call`: one leg's state change.
pub fn call_event(json: &Map<String, Value>, max: usize) -> Result<Parsed, TelephonyError> {
    let entry_id = required(json, "entry_id")?;
    let state = required(json, "call_state")?;
    let leg = json_text("json.call_id", json.get("call_id"))?.unwrap_or_default();
    let timestamp = json_int(json.get("timestamp"));
    let seq = match json_text("json.seq", json.get("seq"))? {
        Some(seq) => seq,
        None => timestamp.map(|t| t.to_string()).unwrap_or_default(),
    };
    let from = Party::read(json, "from")?;
    let to = Party::read(json, "to")?;
    let dir = direction(&from, &to, max).unwrap_or(CallDirection::Inbound);
    // `OnHold` and states not known here say the call exists, not that
    // anyone answered: a `Connected` always comes first when someone did.
    let phase = match state.to_ascii_lowercase().as_str() {
        "connected" => CallPhase::Answered,
        "disconnected" => CallPhase::Ended,
        _ => CallPhase::Ringing,
    };
    let mut event = call::event(&entry_id, dir, phase);
    event.at = timestamp.and_then(from_unix);
    if phase == CallPhase::Ended {
        // One leg's `Disconnected` cannot tell an answered call from a
        // missed one; the pipeline decides from the whole call.
        event.end_reason = json_text("json.disconnect_reason", json.get("disconnect_reason"))?;
    }
    let peer = set_parties(&mut event, json, &from, &to, max)?;
    Ok(Parsed {
        source_ref: format!("mango:{entry_id}:{leg}:{seq}:{state}"),
        event,
        internal_peer: peer,
    })
}

/// `events/summary`: the whole call after it ended.
pub fn summary(json: &Map<String, Value>, max: usize) -> Result<Parsed, TelephonyError> {
    let entry_id = required(json, "entry_id")?;
    let from = Party::read(json, "from")?;
    let to = Party::read(json, "to")?;
    // The parties decide (their shape is corroborated by public code);
    // `call_direction` (0 internal, 1 inbound, 2 outbound: unverified)
    // only when the payload names neither side.
    let dir = direction(&from, &to, max)
        .or_else(|| match json_int(json.get("call_direction")) {
            Some(0) => Some(CallDirection::Internal),
            Some(1) => Some(CallDirection::Inbound),
            Some(2) => Some(CallDirection::Outbound),
            _ => None,
        })
        .unwrap_or(CallDirection::Inbound);
    let positive = |name: &str| json_int(json.get(name)).filter(|t| *t > 0);
    let create = positive("create_time");
    let talk = positive("talk_time");
    let end = positive("end_time");
    // `talk_time` is 0 when nobody answered; `entry_result` 1 answered,
    // 0 not (unverified, so a talk time wins over it).
    let answered = match (talk, json_int(json.get("entry_result"))) {
        (Some(_), _) | (None, Some(1)) => Some(true),
        (None, Some(0)) => Some(false),
        (None, _) if json_int(json.get("talk_time")) == Some(0) => Some(false),
        _ => None,
    };
    let mut event = call::event(&entry_id, dir, CallPhase::Ended);
    event.at = end.or(create).and_then(from_unix);
    event.answered = answered;
    event.talk_seconds = match (talk, end) {
        (Some(t), Some(e)) if e >= t => u32::try_from(e - t).ok(),
        _ if answered == Some(false) => Some(0),
        _ => None,
    };
    event.wait_seconds = match (create, talk.or(end)) {
        (Some(c), Some(until)) if until >= c => u32::try_from(until - c).ok(),
        _ => None,
    };
    event.end_reason = json_text("json.disconnect_reason", json.get("disconnect_reason"))?;
    let peer = set_parties(&mut event, json, &from, &to, max)?;
    Ok(Parsed {
        source_ref: format!("mango:{entry_id}:summary"),
        event,
        internal_peer: peer,
    })
}

/// `events/recording`: `None` while the recording is not complete.
pub fn recording(json: &Map<String, Value>, max: usize) -> Result<Option<Parsed>, TelephonyError> {
    let entry_id = required(json, "entry_id")?;
    let Some(recording_id) = json_text("json.recording_id", json.get("recording_id"))? else {
        return Ok(None);
    };
    if let Some(state) = json_text("json.recording_state", json.get("recording_state"))?
        && !state.eq_ignore_ascii_case("completed")
    {
        return Ok(None);
    }
    let from = Party::read(json, "from")?;
    let to = Party::read(json, "to")?;
    // The notification names no parties: the call's record (merged by its
    // id) already knows its direction.
    let dir = direction(&from, &to, max).unwrap_or(CallDirection::Inbound);
    let mut event = call::event(&entry_id, dir, CallPhase::Recording);
    event.at = json_int(json.get("timestamp")).and_then(from_unix);
    event.recording = Some(recording_id.clone());
    event.extension = json_text("json.extension", json.get("extension"))?;
    Ok(Some(Parsed {
        source_ref: format!("mango:{entry_id}:recording:{recording_id}"),
        event,
        internal_peer: None,
    }))
}
