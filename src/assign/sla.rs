//! Response deadlines: how long a lead may stay in `new`, counted in the
//! working time of whoever holds it, and who gets it when nobody took it.
//!
//! ```toml
//! # routing.toml
//! [sla]
//! telephony = "2m"            # respond within, per channel kind
//! telegram = "2m"
//! imap = "1h"
//! missed_call = "10m"         # a missed call needs a callback by then
//! supervisor_after = "30m"    # second deadline, after the first: flag for a supervisor
//! escalate_to = "user:head"   # else the next person of the lead's role
//! sweep_every = "5s"
//! ```
//! A rule may set its own `respond_within` and `escalate_to`.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use super::decide::{AfterHours, Ask, Load, Policy, decide};
use crate::pipeline::Route;
use crate::routing::{Assignee, Strategy, TeamConfig};

/// `[sla]` of `routing.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sla {
    /// Respond-within per channel kind (`form`, `imap`, `telephony`, …).
    pub by_kind: BTreeMap<String, Duration>,
    pub missed_call: Option<Duration>,
    pub supervisor_after: Option<Duration>,
    pub escalate_to: Option<Assignee>,
    /// How often the instance holding the `timers` lease looks for due
    /// deadlines.
    pub sweep_every: std::time::Duration,
}

impl Default for Sla {
    fn default() -> Self {
        Sla {
            by_kind: BTreeMap::new(),
            missed_call: None,
            supervisor_after: None,
            escalate_to: None,
            sweep_every: std::time::Duration::from_secs(5),
        }
    }
}

/// The deadlines a rule's leads are held to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSla {
    pub respond_within: Option<Duration>,
    pub escalate_to: Option<Assignee>,
    pub defaults: Arc<Sla>,
}

impl RuleSla {
    pub fn respond_within(&self, kind: &str) -> Option<Duration> {
        self.respond_within
            .or_else(|| self.defaults.by_kind.get(kind).copied())
    }

    pub fn escalate_to(&self) -> Option<&Assignee> {
        self.escalate_to
            .as_ref()
            .or(self.defaults.escalate_to.as_ref())
    }
}

/// `from` plus `work` of working time in the calendar of `user` (the
/// team's calendar for a lead nobody holds).
pub fn deadline(
    team: &TeamConfig,
    user: Option<&str>,
    from: DateTime<Utc>,
    work: Duration,
) -> Option<DateTime<Utc>> {
    let cal = match user {
        Some(u) => team.calendars.user(u),
        None => &team.calendars.team,
    };
    cal.add_working_time(&team.calendars.holidays, from, work)
}

/// Who takes over a lead whose holder missed the deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escalation {
    /// `None`: nobody else can take it; it stays where it is, overdue.
    pub user: Option<String>,
    pub role: Option<String>,
    pub note: String,
    /// The pool's new round-robin counter, when the pick used a turn.
    pub turn: Option<i64>,
}

/// The named target if any (a user gets it even off shift: it is who the
/// admin chose for exactly this), else another member of the lead's role
/// who can take it now: by `pool` (the strategy the rule chose for the
/// pool, with the pool's round-robin `turn`), least-loaded without one.
pub fn escalate(
    team: &TeamConfig,
    holder: Option<&str>,
    role: Option<&str>,
    target: Option<&Assignee>,
    pool: (Option<Strategy>, i64),
    now: DateTime<Utc>,
    load: &dyn Fn(&str) -> Load,
) -> Escalation {
    let (strategy, turn) = pool;
    let target = target.map(|t| match t {
        Assignee::User(u) => Assignee::User(u.clone()),
        Assignee::Role(r) => Assignee::Role(r.clone()),
    });
    let (route, after_hours) = match (target.as_ref(), role) {
        (Some(Assignee::User(u)), _) => (Route::User(u.clone()), AfterHours::User(u.clone())),
        (Some(Assignee::Role(r)), _) => role_route(team, r, holder, strategy),
        (None, Some(r)) => role_route(team, r, holder, strategy),
        (None, None) => {
            return Escalation {
                user: None,
                role: None,
                note: "no escalation target and no role to pick the next person from".into(),
                turn: None,
            };
        }
    };
    let policy = Policy {
        sticky_window: None,
        after_hours,
        ..Policy::default()
    };
    let outcome = decide(
        team,
        &Ask {
            route: &route,
            policy: &policy,
            previous_owner: None,
            turn,
            now,
        },
        load,
    );
    let role = outcome.role.clone().or_else(|| role.map(str::to_owned));
    match outcome.user {
        Some(user) if Some(user.as_str()) != holder => Escalation {
            user: Some(user),
            role,
            note: outcome.note,
            turn: outcome.turn,
        },
        _ => Escalation {
            user: None,
            role: None,
            note: format!("nobody else can take it now ({})", outcome.note),
            turn: None,
        },
    }
}

fn role_route(
    team: &TeamConfig,
    role: &str,
    holder: Option<&str>,
    strategy: Option<Strategy>,
) -> (Route, AfterHours) {
    let members = team
        .active_members(role)
        .into_iter()
        .filter(|m| Some(*m) != holder)
        .map(str::to_owned)
        .collect();
    let route = Route::Role {
        role: role.to_owned(),
        members,
        strategy: strategy.unwrap_or(Strategy::LeastLoaded),
    };
    (route, AfterHours::Queue)
}

/// The users whose loads [`escalate`] may read.
pub fn escalation_loads(
    team: &TeamConfig,
    role: Option<&str>,
    target: Option<&Assignee>,
) -> Vec<String> {
    let pool: &str = match (target, role) {
        (Some(Assignee::User(u)), _) => return vec![u.clone()],
        (Some(Assignee::Role(r)), _) => r,
        (None, Some(r)) => r,
        (None, None) => return Vec::new(),
    };
    let mut people: Vec<String> = team
        .active_members(pool)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut i = 0;
    while i < people.len() && people.len() <= team.users.len() + 1 {
        for a in &team.calendars.user(&people[i]).absences {
            if let Some(s) = &a.substitute
                && !people.contains(s)
            {
                people.push(s.clone());
            }
        }
        i += 1;
    }
    people
}
