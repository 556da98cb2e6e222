//! Calls, not events: every PBX event about one call merges into one
//! record, whatever order the events arrive in, and whether the call was
//! missed is derived from the merged record, never from one event (a
//! `Disconnected` alone cannot tell an answered call from a missed one).

use chrono::{DateTime, Utc};
use leadgate_connector::{CallDirection, CallEvent, CallPhase};

/// Longest wait (seconds) derived from event times that is believed.
const MAX_PLAUSIBLE_WAIT: i64 = 3600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub direction: CallDirection,
    pub started_at: Option<DateTime<Utc>>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// `Some(true)` once any event shows the call was answered; `Some(false)`
    /// when an end event says it was not (and nothing says otherwise).
    pub answered: Option<bool>,
    pub talk_seconds: Option<i32>,
    /// As the PBX reported it, when it did.
    pub reported_wait_seconds: Option<i32>,
    pub end_reason: Option<String>,
    pub recording: Option<String>,
    pub line: Option<String>,
    pub extension: Option<String>,
    pub events: i32,
}

pub fn direction_str(d: CallDirection) -> &'static str {
    match d {
        CallDirection::Inbound => "inbound",
        CallDirection::Outbound => "outbound",
        CallDirection::Internal => "internal",
    }
}

pub fn parse_direction(s: &str) -> CallDirection {
    match s {
        "outbound" => CallDirection::Outbound,
        "internal" => CallDirection::Internal,
        _ => CallDirection::Inbound,
    }
}

fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn clamp_seconds(s: u32) -> i32 {
    i32::try_from(s).unwrap_or(i32::MAX)
}

impl CallRecord {
    pub fn new(direction: CallDirection) -> Self {
        CallRecord {
            direction,
            started_at: None,
            answered_at: None,
            ended_at: None,
            answered: None,
            talk_seconds: None,
            reported_wait_seconds: None,
            end_reason: None,
            recording: None,
            line: None,
            extension: None,
            events: 0,
        }
    }

    /// Fold one event in. `now` stands in for events without a time.
    pub fn merge(&mut self, event: &CallEvent, line: Option<&str>, now: DateTime<Utc>) {
        let at = event.at.unwrap_or(now);
        self.events += 1;
        self.started_at = earliest(self.started_at, Some(at));
        match event.phase {
            CallPhase::Ringing | CallPhase::Recording => {}
            CallPhase::Answered => {
                self.answered = Some(true);
                self.answered_at = earliest(self.answered_at, Some(at));
            }
            CallPhase::Ended => {
                self.ended_at = Some(self.ended_at.map_or(at, |e| e.max(at)));
            }
        }
        match event.answered {
            Some(true) => self.answered = Some(true),
            Some(false) if self.answered.is_none() => self.answered = Some(false),
            _ => {}
        }
        if let Some(talk) = event.talk_seconds {
            let talk = clamp_seconds(talk);
            self.talk_seconds = Some(self.talk_seconds.map_or(talk, |t| t.max(talk)));
            if talk > 0 {
                self.answered = Some(true);
            }
        }
        if let Some(wait) = event.wait_seconds {
            self.reported_wait_seconds = Some(clamp_seconds(wait));
        }
        if event.end_reason.is_some() {
            self.end_reason.clone_from(&event.end_reason);
        }
        if event.recording.is_some() {
            self.recording.clone_from(&event.recording);
        }
        if self.line.is_none() {
            self.line = line.map(str::to_owned);
        }
        if self.extension.is_none() {
            self.extension.clone_from(&event.extension);
        }
    }

    /// An inbound call that ended without anyone answering.
    pub fn missed(&self) -> bool {
        self.direction == CallDirection::Inbound
            && self.ended_at.is_some()
            && self.answered != Some(true)
    }

    /// How long the caller waited: as reported, else from the first event
    /// to the answer (or to the hang-up of a missed call).
    pub fn wait_seconds(&self) -> Option<i32> {
        if self.reported_wait_seconds.is_some() {
            return self.reported_wait_seconds;
        }
        let until = self
            .answered_at
            .or(self.ended_at.filter(|_| self.missed()))?;
        let secs = (until - self.started_at?).num_seconds();
        // Events without a PBX time are stamped on arrival; a wait derived
        // across such clocks beyond an hour is an artefact, not a caller.
        (0..=MAX_PLAUSIBLE_WAIT)
            .contains(&secs)
            .then_some(secs as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(phase: CallPhase, at: i64) -> CallEvent {
        CallEvent {
            call_id: "c1".into(),
            direction: CallDirection::Inbound,
            phase,
            client_number: Some("79991234567".into()),
            line: Some("74951112233".into()),
            extension: None,
            at: DateTime::from_timestamp(at, 0),
            answered: None,
            talk_seconds: None,
            wait_seconds: None,
            end_reason: None,
            recording: None,
        }
    }

    fn fold(events: &[CallEvent]) -> CallRecord {
        let mut r = CallRecord::new(CallDirection::Inbound);
        for e in events {
            r.merge(e, None, Utc::now());
        }
        r
    }

    /// Every order of the same events gives the same verdict.
    fn all_orders(events: Vec<CallEvent>) -> Vec<CallRecord> {
        fn permute(rest: Vec<CallEvent>, done: Vec<CallEvent>, out: &mut Vec<Vec<CallEvent>>) {
            if rest.is_empty() {
                out.push(done);
                return;
            }
            for i in 0..rest.len() {
                let mut r = rest.clone();
                let e = r.remove(i);
                let mut d = done.clone();
                d.push(e);
                permute(r, d, out);
            }
        }
        let mut orders = Vec::new();
        permute(events, Vec::new(), &mut orders);
        orders.iter().map(|o| fold(o)).collect()
    }

    #[test]
    fn an_answered_call_is_never_missed_whatever_the_order() {
        let mut summary = event(CallPhase::Ended, 1425);
        summary.answered = Some(true);
        summary.talk_seconds = Some(120);
        for r in all_orders(vec![
            event(CallPhase::Ringing, 1300),
            event(CallPhase::Answered, 1305),
            event(CallPhase::Ended, 1425),
            summary.clone(),
        ]) {
            assert!(!r.missed(), "{r:?}");
            assert_eq!(r.talk_seconds, Some(120));
            assert_eq!(r.wait_seconds(), Some(5));
        }
    }

    #[test]
    fn a_call_that_ends_unanswered_is_missed_with_its_wait() {
        for r in all_orders(vec![
            event(CallPhase::Ringing, 1000),
            event(CallPhase::Ended, 1040),
        ]) {
            assert!(r.missed());
            assert_eq!(r.wait_seconds(), Some(40));
        }
        let mut end = event(CallPhase::Ended, 1000);
        end.answered = Some(false);
        end.wait_seconds = Some(33);
        let r = fold(&[end]);
        assert!(
            r.missed(),
            "an end seen without its start is still a missed call"
        );
        assert_eq!(r.wait_seconds(), Some(33));
    }

    #[test]
    fn ringing_alone_is_not_missed_yet_and_outbound_never_is() {
        assert!(!fold(&[event(CallPhase::Ringing, 1)]).missed());
        let mut r = CallRecord::new(CallDirection::Outbound);
        r.merge(&event(CallPhase::Ended, 5), None, Utc::now());
        assert!(!r.missed());
    }
}
