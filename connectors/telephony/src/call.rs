//! What every provider shares: telling extensions from outside numbers,
//! reading times, and turning one [`CallEvent`] into one [`Inbound`].

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use leadgate_connector::{
    CallDirection, CallEvent, CallPhase, ChannelId, IdentityKind, Inbound, fields,
};

use crate::error::TelephonyError;

/// Longest id (call id, event id, recording id) taken into a `source_ref`,
/// and longest phone number or extension.
pub const MAX_ID_LEN: usize = 256;

/// Longest other value kept (a recording URL, a disposition).
pub const MAX_VALUE_LEN: usize = 2048;

/// `Inbound::fields` key of the employee's extension, for routing rules.
pub const EXTENSION_FIELD: &str = "extension";

/// The PBX's own short number (`101`): only digits (a leading `+` aside),
/// at least 2 and at most `max_digits` of them. A lone digit (`0`, what
/// some PBXs show for a hidden caller) is no one's extension.
pub fn is_extension(number: &str, max_digits: usize) -> bool {
    let t = number.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    (2..=max_digits).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit())
}

/// An outside phone number: more digits than an extension can have
/// (`79991234567`, `+7 (999) 123-45-67`).
pub fn is_outside(number: &str, max_digits: usize) -> bool {
    number.bytes().filter(u8::is_ascii_digit).count() > max_digits
}

/// An id as a `source_ref` part: non-empty, bounded, without control
/// characters.
pub fn check_id(field: &str, value: &str) -> Result<(), TelephonyError> {
    check_text(field, value, MAX_ID_LEN)
}

/// A value kept as a field: bounded, without control characters.
pub fn check_text(field: &str, value: &str, limit: usize) -> Result<(), TelephonyError> {
    if value.len() > limit {
        return Err(TelephonyError::invalid(
            field,
            format!("is longer than {limit} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(TelephonyError::invalid(
            field,
            "contains control characters",
        ));
    }
    Ok(())
}

/// Unix seconds (milliseconds when the number is that large) to a time.
pub fn from_unix(seconds: i64) -> Option<DateTime<Utc>> {
    if seconds <= 0 {
        return None;
    }
    if seconds >= 100_000_000_000 {
        return DateTime::from_timestamp_millis(seconds);
    }
    DateTime::from_timestamp(seconds, 0)
}

/// A wall-clock time (`2026-11-16 10:20:00`, `2026-11-16T10:20:00`) in the
/// PBX's time zone, or RFC 3339 with its own offset, or unix seconds.
pub fn parse_time(text: &str, offset: FixedOffset) -> Option<DateTime<Utc>> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<i64>().ok().and_then(from_unix);
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Some(dt.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, format) {
            return offset
                .from_local_datetime(&naive)
                .single()
                .map(|dt| dt.with_timezone(&Utc));
        }
    }
    None
}

/// Whole seconds between two times, when `to` is not before `from`.
pub fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> Option<u32> {
    u32::try_from((to - from).num_seconds()).ok()
}

/// A short human line for the lead card's activity list.
pub fn summary(event: &CallEvent, internal_peer: Option<&str>) -> String {
    let who = event.client_number.as_deref().unwrap_or("a hidden number");
    let to_line = event
        .line
        .as_deref()
        .map(|l| format!(" to line {l}"))
        .unwrap_or_default();
    let ext = event.extension.as_deref();
    let reason = event
        .end_reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    match (event.direction, event.phase) {
        (_, CallPhase::Recording) => format!(
            "Recording of call {} is available: {}",
            event.call_id,
            event.recording.as_deref().unwrap_or("?")
        ),
        (CallDirection::Internal, phase) => {
            let what = match phase {
                CallPhase::Ringing => "",
                CallPhase::Answered => ", answered",
                _ => ", ended",
            };
            format!(
                "Internal call from extension {} to {}{what}",
                ext.unwrap_or("?"),
                internal_peer.unwrap_or("?")
            )
        }
        (CallDirection::Inbound, CallPhase::Ringing) => match ext {
            Some(e) => format!("Incoming call from {who}{to_line}, ringing extension {e}"),
            None => format!("Incoming call from {who}{to_line}"),
        },
        (CallDirection::Inbound, CallPhase::Answered) => match ext {
            Some(e) => format!("Call from {who} answered by extension {e}"),
            None => format!("Call from {who} answered"),
        },
        (CallDirection::Inbound, CallPhase::Ended) => match event.answered {
            Some(false) => {
                let waited = event
                    .wait_seconds
                    .map(|w| format!(", waited {w} s"))
                    .unwrap_or_default();
                format!("Missed call from {who}{to_line}{waited}{reason}")
            }
            Some(true) => match event.talk_seconds {
                Some(t) => format!("Call from {who} ended after {t} s of talk"),
                None => format!("Call from {who} ended"),
            },
            None => format!("Call from {who} ended{reason}"),
        },
        (CallDirection::Outbound, CallPhase::Ringing) => match ext {
            Some(e) => format!("Outgoing call from extension {e} to {who}"),
            None => format!("Outgoing call to {who}"),
        },
        (CallDirection::Outbound, CallPhase::Answered) => {
            format!("Outgoing call to {who} answered")
        }
        (CallDirection::Outbound, CallPhase::Ended) => match (event.answered, event.talk_seconds) {
            (Some(true), Some(t)) => format!("Outgoing call to {who} ended after {t} s of talk"),
            (Some(false), _) => format!("Outgoing call to {who} not answered{reason}"),
            _ => format!("Outgoing call to {who} ended{reason}"),
        },
    }
}

/// One event as the pipeline takes it: the outside party as the sender (not
/// for internal calls, nor a hidden or short number), the line and
/// extension as fields, the body as raw.
pub fn inbound(
    channel: &ChannelId,
    source_ref: String,
    now: DateTime<Utc>,
    event: CallEvent,
    internal_peer: Option<&str>,
    raw: &[u8],
    max_digits: usize,
) -> Inbound {
    let mut inbound = Inbound::new(channel.clone(), source_ref, now);
    if event.direction != CallDirection::Internal
        && let Some(number) = &event.client_number
        && is_outside(number, max_digits)
    {
        inbound.sender.push(IdentityKind::Phone, number.as_str());
    }
    if let Some(line) = &event.line {
        inbound
            .fields
            .insert(fields::CALLED_LINE.into(), line.clone());
    }
    if let Some(ext) = &event.extension {
        inbound.fields.insert(EXTENSION_FIELD.into(), ext.clone());
    }
    inbound.text = Some(summary(&event, internal_peer));
    inbound.raw = String::from_utf8_lossy(raw).into_owned();
    inbound.call = Some(event);
    inbound
}

/// An empty event of the given shape, filled in by each provider.
pub fn event(call_id: &str, direction: CallDirection, phase: CallPhase) -> CallEvent {
    CallEvent {
        call_id: call_id.to_owned(),
        direction,
        phase,
        client_number: None,
        line: None,
        extension: None,
        at: None,
        answered: None,
        talk_seconds: None,
        wait_seconds: None,
        end_reason: None,
        recording: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_and_outside_numbers() {
        assert!(is_extension("101", 5));
        assert!(is_extension(" 10101 ", 5));
        assert!(!is_extension("101010", 5));
        assert!(!is_extension("", 5));
        assert!(!is_extension("abc", 5));
        assert!(!is_extension("sip:101@pbx", 5));
        assert!(!is_extension("0", 5));
        assert!(is_outside("79991234567", 5));
        assert!(is_outside("+7 (999) 123-45-67", 5));
        assert!(!is_outside("101", 5));
        assert!(!is_outside("anonymous", 5));
    }

    #[test]
    fn times_in_every_shape() {
        let utc = FixedOffset::east_opt(0).unwrap();
        let msk = FixedOffset::east_opt(3 * 3600).unwrap();
        let want = DateTime::from_timestamp(1_763_288_400, 0).unwrap();
        assert_eq!(parse_time("2025-11-16 10:20:00", utc), Some(want));
        assert_eq!(parse_time("2025-11-16 13:20:00", msk), Some(want));
        assert_eq!(parse_time("2025-11-16T10:20:00", utc), Some(want));
        assert_eq!(parse_time("2025-11-16T13:20:00+03:00", utc), Some(want));
        assert_eq!(parse_time("1763288400", utc), Some(want));
        assert_eq!(parse_time("1763288400000", utc), Some(want));
        for bad in [
            "",
            "0",
            "yesterday",
            "2025-13-01 00:00:00",
            "99999999999999999999999",
        ] {
            assert_eq!(parse_time(bad, utc), None, "{bad:?}");
        }
    }

    #[test]
    fn ids_are_bounded() {
        assert!(check_id("x", "abc").is_ok());
        assert!(check_id("x", &"a".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(check_id("x", "a\nb").is_err());
    }
}
