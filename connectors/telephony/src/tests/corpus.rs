//! Every telephony sample of the corpus through the signature checks and
//! the parsers, against the manifest's expectations.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use leadgate_connector::{CallDirection, CallEvent, CallPhase, IdentityKind, Inbound, fields};

use super::support::{Sample, channel_for, samples};
use crate::body::Form;
use crate::call::EXTENSION_FIELD;
use crate::config::ChannelAuth;
use crate::webhook::{Outcome, parse_webhook};
use crate::{mango, zadarma};

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// The signature check alone: `Ok(true)` verified, `Ok(false)` refused,
/// `Err` when the sample carries nothing to verify (the URL check).
fn signature_verifies(sample: &Sample) -> Result<bool, String> {
    let channel = channel_for(sample);
    let form = Form::parse(&sample.body).map_err(|e| e.to_string())?;
    match &channel.auth {
        ChannelAuth::Mango { key, salt } => Ok(mango::verify(key, salt, &form).is_ok()),
        ChannelAuth::Zadarma {
            secret: Some(secret),
        } => {
            let event = form.value("event").ok_or("no event")?;
            let fields = zadarma::signature_fields(event).ok_or("no signature scheme")?;
            let header = sample
                .headers
                .get("signature")
                .and_then(|v| v.to_str().ok());
            Ok(zadarma::verify(secret, &form, fields, header).is_ok())
        }
        _ => Err("unexpected channel".into()),
    }
}

#[test]
fn every_sample_signature_verifies_unless_it_is_forged() {
    let mut checked = 0;
    let mut forged = 0;
    for sample in samples() {
        match signature_verifies(&sample) {
            Ok(ok) => {
                checked += 1;
                if sample.is_bad_signature() {
                    forged += 1;
                    assert!(!ok, "{}: a forged signature verified", sample.file);
                } else {
                    assert!(ok, "{}: a good signature was refused", sample.file);
                }
            }
            Err(why) => assert_eq!(
                sample.kind, "verification",
                "{}: nothing to verify ({why})",
                sample.file
            ),
        }
    }
    assert!(checked >= 20, "only {checked} samples checked");
    assert_eq!(forged, 2, "both bad_signature samples are checked");
}

#[test]
fn a_signature_made_with_other_secrets_is_refused() {
    for sample in samples().iter().filter(|s| s.is_stored()) {
        let mut channel = channel_for(sample);
        channel.auth = match channel.auth {
            ChannelAuth::Mango { key, .. } => ChannelAuth::Mango {
                key,
                salt: leadgate_connector::Secret::new("other_salt"),
            },
            ChannelAuth::Zadarma { .. } => ChannelAuth::Zadarma {
                secret: Some(leadgate_connector::Secret::new("other_secret")),
            },
            other => other,
        };
        let err = parse_webhook(&channel, &sample.request(), now()).unwrap_err();
        assert_eq!(err.status().as_u16(), 401, "{}: {err}", sample.file);
        assert!(
            err.to_string().contains("bad signature"),
            "{}: {err}",
            sample.file
        );
    }
}

fn stored(sample: &Sample) -> Inbound {
    match parse_webhook(&channel_for(sample), &sample.request(), now()) {
        Ok(Outcome::Store(inbound)) => *inbound,
        other => panic!("{}: expected an item to store, got {other:?}", sample.file),
    }
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// What each sample's event says, as this connector reads it:
/// (file, direction, phase, answered, talk, wait, recording).
type Row = (
    &'static str,
    CallDirection,
    CallPhase,
    Option<bool>,
    Option<u32>,
    Option<u32>,
    Option<&'static str>,
);

const IN: CallDirection = CallDirection::Inbound;
const OUT: CallDirection = CallDirection::Outbound;
const INT: CallDirection = CallDirection::Internal;
const RING: CallPhase = CallPhase::Ringing;
const ANS: CallPhase = CallPhase::Answered;
const END: CallPhase = CallPhase::Ended;
const REC: CallPhase = CallPhase::Recording;

const TABLE: &[Row] = &[
    (
        "mango_001_incoming_appeared",
        IN,
        RING,
        None,
        None,
        None,
        None,
    ),
    (
        "mango_002_incoming_connected",
        IN,
        ANS,
        None,
        None,
        None,
        None,
    ),
    (
        "mango_003_incoming_disconnected",
        IN,
        END,
        None,
        None,
        None,
        None,
    ),
    (
        "mango_004_summary_answered",
        IN,
        END,
        Some(true),
        Some(120),
        Some(5),
        None,
    ),
    (
        "mango_005_missed_appeared",
        IN,
        RING,
        None,
        None,
        None,
        None,
    ),
    (
        "mango_006_missed_disconnected",
        IN,
        END,
        None,
        None,
        None,
        None,
    ),
    (
        "mango_007_missed_summary",
        IN,
        END,
        Some(false),
        Some(0),
        Some(40),
        None,
    ),
    ("mango_008_internal_call", INT, RING, None, None, None, None),
    ("mango_009_outgoing_call", OUT, RING, None, None, None, None),
    ("zadarma_001_notify_start", IN, RING, None, None, None, None),
    (
        "zadarma_002_notify_internal_ring",
        IN,
        RING,
        None,
        None,
        None,
        None,
    ),
    (
        "zadarma_003_notify_end_answered",
        IN,
        END,
        Some(true),
        Some(95),
        None,
        Some("1763288400.123"),
    ),
    ("zadarma_004_start_missed", IN, RING, None, None, None, None),
    (
        "zadarma_005_end_no_answer",
        IN,
        END,
        Some(false),
        Some(0),
        None,
        None,
    ),
    (
        "zadarma_006_end_busy_unseen_start",
        IN,
        END,
        Some(false),
        Some(0),
        None,
        None,
    ),
    (
        "zadarma_007_out_start_callback",
        OUT,
        RING,
        None,
        None,
        None,
        None,
    ),
    (
        "zadarma_008_internal_extension_call",
        INT,
        RING,
        None,
        None,
        None,
        None,
    ),
    (
        "zadarma_011_record",
        IN,
        REC,
        None,
        None,
        None,
        Some("1763288400.123"),
    ),
];

#[test]
fn every_stored_sample_reads_as_the_table_says() {
    let all = samples();
    let stored_samples: Vec<&Sample> = all.iter().filter(|s| s.is_stored()).collect();
    assert_eq!(stored_samples.len(), TABLE.len(), "a row per stored sample");
    for (file, direction, phase, answered, talk, wait, recording) in TABLE {
        let sample = stored_samples
            .iter()
            .find(|s| s.file.contains(file))
            .unwrap_or_else(|| panic!("{file} is in the corpus"));
        let item = stored(sample);
        let call = item.call.as_ref().unwrap();
        let ctx = format!("{file}: {call:?}");
        assert_eq!(call.direction, *direction, "{ctx}");
        assert_eq!(call.phase, *phase, "{ctx}");
        assert_eq!(call.answered, *answered, "{ctx}");
        assert_eq!(call.talk_seconds, *talk, "{ctx}");
        assert_eq!(call.wait_seconds, *wait, "{ctx}");
        assert_eq!(call.recording.as_deref(), *recording, "{ctx}");
        assert!(item.text.as_deref().is_some_and(|t| !t.is_empty()), "{ctx}");
        assert_eq!(
            item.raw.as_bytes(),
            sample.body.as_slice(),
            "{ctx}: raw is the body"
        );
    }
}

/// The pipeline's rules for one call, as the contract documents them
/// (`CallPhase`, `CallEvent`): a call is missed when it is inbound, has
/// ended, and no event shows an answer; its wait is as reported, else from
/// the first event to the answer or to the hang-up of a missed call.
#[derive(Default)]
struct CallModel {
    direction: Option<CallDirection>,
    started: Option<DateTime<Utc>>,
    answered_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    ended: bool,
    answered: Option<bool>,
    reported_wait: Option<u32>,
}

impl CallModel {
    fn merge(&mut self, e: &CallEvent) {
        self.direction.get_or_insert(e.direction);
        if let Some(at) = e.at {
            self.started = Some(self.started.map_or(at, |s| s.min(at)));
        }
        match e.phase {
            CallPhase::Answered => {
                self.answered = Some(true);
                self.answered_at = self.answered_at.or(e.at);
            }
            CallPhase::Ended => {
                self.ended = true;
                self.ended_at = e.at.or(self.ended_at);
            }
            _ => {}
        }
        match e.answered {
            Some(true) => self.answered = Some(true),
            Some(false) if self.answered.is_none() => self.answered = Some(false),
            _ => {}
        }
        if e.talk_seconds.is_some_and(|t| t > 0) {
            self.answered = Some(true);
        }
        if e.wait_seconds.is_some() {
            self.reported_wait = e.wait_seconds;
        }
    }

    fn missed(&self) -> bool {
        self.direction == Some(CallDirection::Inbound) && self.ended && self.answered != Some(true)
    }

    fn wait(&self) -> Option<u32> {
        if self.reported_wait.is_some() {
            return self.reported_wait;
        }
        let until = self
            .answered_at
            .or(self.ended_at.filter(|_| self.missed()))?;
        u32::try_from((until - self.started?).num_seconds()).ok()
    }
}

#[test]
fn the_manifest_expectations_follow_from_the_events() {
    let mut calls: HashMap<String, CallModel> = HashMap::new();
    let mut refs = HashSet::new();
    for sample in samples().iter().filter(|s| s.is_stored()) {
        let item = stored(sample);
        let exp = &sample.expect;
        let call = item.call.clone().unwrap();
        let ctx = format!("{}: {call:?}", sample.file);
        assert!(
            refs.insert(item.source_ref.clone()),
            "{ctx}: source_ref {} repeats",
            item.source_ref
        );
        let model = calls.entry(call.call_id.clone()).or_default();
        model.merge(&call);

        if let Some(id) = exp["call_id"].as_str() {
            assert_eq!(call.call_id, id, "{ctx}");
        }
        if let Some(phone) = exp["phone"].as_str() {
            assert_eq!(
                call.client_number.as_deref().map(digits),
                Some(digits(phone)),
                "{ctx}"
            );
            let sender: Vec<_> = item
                .sender
                .identities
                .iter()
                .filter(|i| i.kind == IdentityKind::Phone)
                .map(|i| digits(&i.value))
                .collect();
            assert_eq!(
                sender,
                vec![digits(phone)],
                "{ctx}: the sender is the outside party"
            );
        }
        if let Some(line) = exp["called_line"].as_str() {
            assert_eq!(
                item.field(fields::CALLED_LINE).map(digits),
                Some(digits(line)),
                "{ctx}"
            );
        }
        if let Some(talk) = exp["talk_seconds"].as_u64() {
            assert_eq!(call.talk_seconds.map(u64::from), Some(talk), "{ctx}");
        }
        if let Some(missed) = exp["missed"].as_bool() {
            assert_eq!(
                model.missed(),
                missed,
                "{ctx}: missed, over the call's events so far"
            );
        }
        if let Some(wait) = exp["wait_seconds"].as_u64() {
            assert_eq!(
                model.wait().map(u64::from),
                Some(wait),
                "{ctx}: wait, over the call's events so far"
            );
        }
        if exp["recording"] == true {
            assert!(call.recording.is_some(), "{ctx}");
        }
        match exp["disposition"].as_str() {
            Some("internal_call") => {
                assert_eq!(call.direction, CallDirection::Internal, "{ctx}");
                assert!(
                    item.sender.identities.is_empty(),
                    "{ctx}: no contact for an internal call"
                );
                assert!(item.field(EXTENSION_FIELD).is_some(), "{ctx}");
            }
            Some("activity_added") => assert_eq!(call.direction, CallDirection::Outbound, "{ctx}"),
            Some("call_updated") => assert_eq!(call.direction, CallDirection::Inbound, "{ctx}"),
            _ => {}
        }
        if exp["lead"] == true {
            assert_eq!(call.direction, CallDirection::Inbound, "{ctx}");
            assert!(call.client_number.is_some(), "{ctx}");
        }
    }
}

#[test]
fn refused_samples_fail_as_the_manifest_says() {
    for sample in samples().iter().filter(|s| !s.is_stored()) {
        let result = parse_webhook(&channel_for(sample), &sample.request(), now());
        let exp = &sample.expect;
        if let Some(body) = exp["response_body"].as_str() {
            assert_eq!(
                result,
                Ok(Outcome::Echo(body.to_owned())),
                "{}",
                sample.file
            );
            continue;
        }
        let err = result.expect_err(&sample.file);
        let status = u64::from(err.status().as_u16());
        match (
            exp["http_status"].as_u64(),
            exp["http_status_in"].as_array(),
        ) {
            (Some(want), _) => assert_eq!(status, want, "{}: {err}", sample.file),
            (None, Some(list)) => assert!(
                list.iter().any(|s| s.as_u64() == Some(status)),
                "{}: {err}",
                sample.file
            ),
            (None, None) => panic!("{}: no expected status", sample.file),
        }
        if let Some(text) = exp["error"].as_str() {
            assert!(
                err.to_string().contains(text),
                "{}: {err} lacks {text:?}",
                sample.file
            );
        }
    }
}

#[test]
fn redelivery_gives_the_same_source_ref() {
    for sample in samples().iter().filter(|s| s.is_stored()) {
        let a = stored(sample);
        let b = stored(sample);
        assert_eq!(a.source_ref, b.source_ref, "{}", sample.file);
        assert_eq!(a.call, b.call, "{}", sample.file);
    }
}
