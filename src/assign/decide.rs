//! Which person gets a lead, now: a pure function of the route the rules
//! chose, the rule's policy, the team (members, calendars, caps, weights),
//! the clock, the previous owner and the open-lead counts the writer read.
//!
//! The order of preference:
//! 1. the contact's previous owner (sticky), if the rule keeps owners, the
//!    owner is active and in the pool the rule chose;
//! 2. else the pool's strategy pick (weighted round-robin turn or least
//!    loaded), or the rule's user;
//! 3. a person who is absent hands over to their substitute (and theirs, if
//!    also absent);
//! 4. a person off shift, absent without a reachable substitute or at their
//!    cap of open new leads is skipped for the next pool member;
//! 5. nobody left: the rule's after-hours target — a user, a role (its
//!    least-loaded member who can take it), or the queue: the lead waits,
//!    assigned to nobody, until the first of its people comes on shift.

use std::collections::HashSet;
use std::fmt;

use chrono::{DateTime, Utc};

use super::calendar::Availability;
use crate::pipeline::Route;
use crate::routing::{Strategy, TeamConfig};

/// How soon a lead queued because everyone on shift is at their cap is
/// looked at again (caps free up when a CRM moves leads out of `new`).
pub const CAP_RECHECK: chrono::Duration = chrono::Duration::minutes(5);

/// Where a lead goes when nobody in its pool can take it now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AfterHours {
    /// Wait, assigned to nobody, until the first pool member's shift starts.
    #[default]
    Queue,
    User(String),
    Role(String),
}

impl std::str::FromStr for AfterHours {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "queue" {
            return Ok(AfterHours::Queue);
        }
        match s.parse::<crate::routing::Assignee>() {
            Ok(crate::routing::Assignee::User(u)) => Ok(AfterHours::User(u)),
            Ok(crate::routing::Assignee::Role(r)) => Ok(AfterHours::Role(r)),
            Err(_) => Err(format!(
                "{s:?} is not an after-hours target; write \"queue\", \"user:<id>\" or \"role:<id>\""
            )),
        }
    }
}

impl fmt::Display for AfterHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AfterHours::Queue => f.write_str("queue"),
            AfterHours::User(u) => write!(f, "user:{u}"),
            AfterHours::Role(r) => write!(f, "role:{r}"),
        }
    }
}

/// A rule's assignment options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Keep a returning contact with the owner of their leads of this
    /// recent past; `None` turns sticky owners off.
    pub sticky_window: Option<chrono::Duration>,
    pub after_hours: AfterHours,
    /// Response deadlines: the rule's own and the `[sla]` defaults.
    pub sla: super::sla::RuleSla,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            sticky_window: Some(chrono::Duration::days(180)),
            after_hours: AfterHours::Queue,
            sla: Default::default(),
        }
    }
}

/// A user's leads as the writer counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// In status `new`: what a cap limits.
    pub new: i64,
    /// In `new` or `in_progress`: what least-loaded compares.
    pub open: i64,
}

/// Everything the decision looks at besides the team.
pub struct Ask<'a> {
    pub route: &'a Route,
    pub policy: &'a Policy,
    /// The assignee of the contact's latest lead within the sticky window.
    pub previous_owner: Option<&'a str>,
    /// The pool's round-robin counter before this lead.
    pub turn: i64,
    pub now: DateTime<Utc>,
}

/// Why someone did not get the lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The sticky owner is not (or no longer) an active member of the pool.
    NotInPool,
    OffShift {
        next: Option<DateTime<Utc>>,
        holiday: bool,
    },
    Absent {
        absence: String,
        substitute: Option<String>,
    },
    AtCap {
        cap: u32,
    },
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::NotInPool => f.write_str("not an active member of the pool"),
            Skip::OffShift { next, holiday } => {
                f.write_str(if *holiday { "holiday" } else { "off shift" })?;
                match next {
                    Some(t) => write!(f, " until {}", t.format("%Y-%m-%d %H:%M UTC")),
                    None => f.write_str(", no shift ahead"),
                }
            }
            Skip::Absent {
                absence,
                substitute,
            } => match substitute {
                Some(s) => write!(f, "absent ({absence}), substitute {s}"),
                None => write!(f, "absent ({absence}), no substitute"),
            },
            Skip::AtCap { cap } => write!(f, "at cap ({cap} open new leads)"),
        }
    }
}

/// How the person was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Picked {
    /// No rule, channel responsible or default: nobody.
    Nobody,
    /// The rule named a user.
    Direct,
    /// The pool's strategy pick.
    Strategy,
    /// The previous owner of a returning contact.
    StickyOwner,
    /// Stood in for someone absent.
    Substitute {
        replaces: String,
    },
    /// The next pool member after those skipped.
    NextOnShift,
    /// A role with no active members: assigned to the role.
    RoleOnly,
    AfterHoursUser,
    AfterHoursRole,
    /// Nobody now; `until` is when it is looked at again.
    Queued {
        until: Option<DateTime<Utc>>,
    },
}

/// The decision, with its reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub user: Option<String>,
    pub role: Option<String>,
    pub picked: Picked,
    /// The pool's new round-robin counter, when this lead used a turn.
    pub turn: Option<i64>,
    pub skipped: Vec<(String, Skip)>,
    /// The whole story, for `routing_note` and `leadgate explain`.
    pub note: String,
}

impl Outcome {
    /// `assigned_by` when the decision overrides the rule's own: a sticky
    /// owner or an after-hours target.
    pub fn assigned_by(&self) -> Option<&'static str> {
        match self.picked {
            Picked::StickyOwner => Some("sticky_owner"),
            Picked::AfterHoursUser | Picked::AfterHoursRole | Picked::Queued { .. } => {
                Some("after_hours")
            }
            _ => None,
        }
    }

    pub fn queued_until(&self) -> Option<DateTime<Utc>> {
        match self.picked {
            Picked::Queued { until } => until,
            _ => None,
        }
    }
}

/// The users whose loads [`decide`] may read, when it reads any: `None`
/// when the decision needs no counts (no cap, no least-loaded choice).
pub fn loads_needed(team: &TeamConfig, ask: &Ask<'_>) -> Option<Vec<String>> {
    let mut people: Vec<&str> = match ask.route {
        Route::Nobody => return None,
        Route::User(u) => vec![u],
        Route::Role { members, .. } => members.iter().map(String::as_str).collect(),
    };
    let mut needed = matches!(
        ask.route,
        Route::Role {
            strategy: Strategy::LeastLoaded,
            ..
        }
    );
    if let AfterHours::Role(r) = &ask.policy.after_hours {
        for m in team.active_members(r) {
            if !people.contains(&m) {
                people.push(m);
            }
        }
        needed = true;
    }
    if let Some(o) = ask.previous_owner.filter(|o| !people.contains(o)) {
        people.push(o);
    }
    // Substitutes of anyone absent, transitively (bounded by the team).
    let mut i = 0;
    while i < people.len() && people.len() <= team.users.len() * 2 + 8 {
        for a in &team.calendars.user(people[i]).absences {
            if let Some(s) = &a.substitute
                && !people.contains(&s.as_str())
            {
                people.push(s);
            }
        }
        i += 1;
    }
    needed |= people
        .iter()
        .any(|p| team.calendars.user(p).max_open_leads.is_some());
    needed.then(|| people.into_iter().map(str::to_owned).collect())
}

struct Search<'a> {
    team: &'a TeamConfig,
    now: DateTime<Utc>,
    load: &'a dyn Fn(&str) -> Load,
    rejected: HashSet<String>,
    skipped: Vec<(String, Skip)>,
}

impl Search<'_> {
    /// Whether `user` can take the lead now; a skip is recorded once.
    fn fits(&mut self, user: &str) -> Result<(), Skip> {
        let cal = self.team.calendars.user(user);
        let skip = match cal.availability(&self.team.calendars.holidays, self.now) {
            Availability::Absent(a) => Some(Skip::Absent {
                absence: a.to_string(),
                substitute: a.substitute.clone(),
            }),
            Availability::OffShift { next, holiday } => Some(Skip::OffShift { next, holiday }),
            Availability::OnShift => cal
                .max_open_leads
                .filter(|cap| (self.load)(user).new >= i64::from(*cap))
                .map(|cap| Skip::AtCap { cap }),
        };
        match skip {
            None => Ok(()),
            Some(skip) => {
                if self.rejected.insert(user.to_owned()) {
                    self.skipped.push((user.to_owned(), skip.clone()));
                }
                Err(skip)
            }
        }
    }

    /// `user`, or the first of their chain of substitutes who can take it.
    fn person(&mut self, user: &str) -> Option<(String, Option<String>)> {
        if self.rejected.contains(user) {
            return None;
        }
        let mut current = user.to_owned();
        let mut seen = vec![current.clone()];
        loop {
            match self.fits(&current) {
                Ok(()) => {
                    let replaces = (current != user).then(|| user.to_owned());
                    return Some((current, replaces));
                }
                Err(Skip::Absent {
                    substitute: Some(s),
                    ..
                }) if !seen.contains(&s) && self.team.users.get(&s).is_some_and(|u| u.active) => {
                    if self.rejected.contains(&s) {
                        return None;
                    }
                    seen.push(s.clone());
                    current = s;
                }
                Err(_) => return None,
            }
        }
    }

    /// When the first of `people` is next available: for a queued lead.
    fn first_shift(&self, people: &[&str]) -> Option<DateTime<Utc>> {
        let calendar = people
            .iter()
            .filter_map(|p| self.team.calendars.next_available(p, self.now))
            .min();
        let capped = self
            .skipped
            .iter()
            .any(|(_, s)| matches!(s, Skip::AtCap { .. }));
        match (calendar, capped) {
            (Some(t), true) => Some(t.min(self.now + CAP_RECHECK)),
            (None, true) => Some(self.now + CAP_RECHECK),
            (t, false) => t,
        }
    }
}

/// Decide who gets a lead now. `load` answers for the users
/// [`loads_needed`] named (and may answer zero for anyone else).
pub fn decide(team: &TeamConfig, ask: &Ask<'_>, load: &dyn Fn(&str) -> Load) -> Outcome {
    let mut s = Search {
        team,
        now: ask.now,
        load,
        rejected: HashSet::new(),
        skipped: Vec::new(),
    };
    let (role, members, strategy): (Option<&str>, Vec<&str>, Option<Strategy>) = match ask.route {
        Route::Nobody => {
            return Outcome {
                user: None,
                role: None,
                picked: Picked::Nobody,
                turn: None,
                skipped: Vec::new(),
                note: "no rule, channel responsible or default matched".into(),
            };
        }
        Route::User(u) => (None, vec![u.as_str()], None),
        Route::Role { role, members, .. } if members.is_empty() => {
            return Outcome {
                user: None,
                role: Some(role.clone()),
                picked: Picked::RoleOnly,
                turn: None,
                skipped: Vec::new(),
                note: format!("role {role} has no active members; assigned to the role"),
            };
        }
        Route::Role {
            role,
            members,
            strategy,
        } => (
            Some(role.as_str()),
            members.iter().map(String::as_str).collect(),
            Some(*strategy),
        ),
    };
    let mut story: Vec<String> = Vec::new();
    let done = |s: Search<'_>,
                user: Option<String>,
                role: Option<String>,
                picked: Picked,
                turn: Option<i64>,
                mut story: Vec<String>| {
        if !s.skipped.is_empty() {
            let skipped: Vec<String> = s.skipped.iter().map(|(u, w)| format!("{u} {w}")).collect();
            story.push(format!("skipped {}", skipped.join(", ")));
        }
        match (&picked, &user) {
            (Picked::Substitute { replaces }, Some(u)) => {
                story.push(format!("{u} substitutes for {replaces}"))
            }
            (Picked::NextOnShift, Some(u)) => story.push(format!("next on shift: {u}")),
            (Picked::AfterHoursUser, Some(u)) => {
                story.push(format!("nobody can take it now: after-hours user {u}"))
            }
            (Picked::AfterHoursRole, Some(u)) => {
                story.push(format!("nobody can take it now: after-hours {u}"))
            }
            (Picked::Queued { until }, _) => story.push(match until {
                Some(t) => format!(
                    "nobody can take it now: queued until {}",
                    t.format("%Y-%m-%d %H:%M UTC")
                ),
                None => "nobody can take it now: queued with no shift ahead".into(),
            }),
            _ => {}
        }
        Outcome {
            user,
            role,
            picked,
            turn,
            skipped: s.skipped,
            note: story.join("; "),
        }
    };
    let owned_role = role.map(str::to_owned);

    // 1. The previous owner.
    if let (Some(owner), Some(_), Some(role)) = (ask.previous_owner, ask.policy.sticky_window, role)
    {
        if members.contains(&owner) {
            if let Some((user, replaces)) = s.person(owner) {
                story.push(format!("role {role}: sticky owner {owner}"));
                let picked = match replaces {
                    None => Picked::StickyOwner,
                    Some(replaces) => Picked::Substitute { replaces },
                };
                return done(s, Some(user), owned_role, picked, None, story);
            }
        } else {
            s.rejected.insert(owner.to_owned());
            s.skipped.push((owner.to_owned(), Skip::NotInPool));
            story.push(format!("previous owner {owner} is not in role {role}"));
        }
    }

    // 2–4. The strategy's order, each with their substitutes.
    let order: Vec<&str> = match strategy {
        None => members.clone(),
        Some(Strategy::RoundRobin) => {
            let cycle = weighted_cycle(team, role.unwrap_or_default(), &members);
            let start = ask.turn.rem_euclid(cycle.len() as i64) as usize;
            let described: Vec<String> = members
                .iter()
                .map(|m| match weight(team, role.unwrap_or_default(), m) {
                    1 => (*m).to_owned(),
                    w => format!("{m}×{w}"),
                })
                .collect();
            story.push(format!(
                "role {}: round_robin turn {} of [{}]",
                role.unwrap_or_default(),
                ask.turn + 1,
                described.join(", ")
            ));
            let mut picked = None;
            for k in 0..cycle.len() {
                let member = cycle[(start + k) % cycle.len()];
                if let Some(found) = s.person(member) {
                    picked = Some((found, k));
                    break;
                }
            }
            if let Some(((user, replaces), k)) = picked {
                let picked = match (replaces, k) {
                    (Some(replaces), _) => Picked::Substitute { replaces },
                    (None, 0) => Picked::Strategy,
                    (None, _) => Picked::NextOnShift,
                };
                let turn = Some(ask.turn + k as i64 + 1);
                return done(s, Some(user), owned_role, picked, turn, story);
            }
            Vec::new()
        }
        Some(Strategy::LeastLoaded) => {
            let mut by_load: Vec<(i64, usize, &str)> = members
                .iter()
                .enumerate()
                .map(|(i, m)| (load(m).open, i, *m))
                .collect();
            by_load.sort();
            let loads: Vec<String> = members
                .iter()
                .map(|m| format!("{m}={}", load(m).open))
                .collect();
            story.push(format!(
                "role {}: least_loaded open leads {}",
                role.unwrap_or_default(),
                loads.join(", ")
            ));
            by_load.into_iter().map(|(_, _, m)| m).collect()
        }
    };
    for (k, member) in order.iter().enumerate() {
        if let Some((user, replaces)) = s.person(member) {
            let picked = match (replaces, k, strategy) {
                (Some(replaces), _, _) => Picked::Substitute { replaces },
                (None, _, None) => Picked::Direct,
                (None, 0, _) => Picked::Strategy,
                (None, _, _) => Picked::NextOnShift,
            };
            return done(s, Some(user), owned_role, picked, None, story);
        }
    }

    // 5. After hours.
    let turn = match strategy {
        // The turn moves on even when nobody takes it, so the cycle does
        // not restart at the same person every time.
        Some(Strategy::RoundRobin) => Some(ask.turn + 1),
        _ => None,
    };
    match &ask.policy.after_hours {
        AfterHours::User(u) => {
            let picked = Picked::AfterHoursUser;
            return done(s, Some(u.clone()), owned_role, picked, turn, story);
        }
        AfterHours::Role(r) => {
            let mut night: Vec<(i64, usize, &str)> = team
                .active_members(r)
                .into_iter()
                .enumerate()
                .map(|(i, m)| (load(m).open, i, m))
                .collect();
            night.sort();
            for (_, _, m) in night {
                if let Some((user, _)) = s.person(m) {
                    let picked = Picked::AfterHoursRole;
                    story.push(format!("role {r}: least loaded on shift"));
                    return done(s, Some(user), Some(r.clone()), picked, turn, story);
                }
            }
        }
        AfterHours::Queue => {}
    }
    let until = s.first_shift(&members);
    done(s, None, owned_role, Picked::Queued { until }, turn, story)
}

fn weight(team: &TeamConfig, role: &str, member: &str) -> u32 {
    team.roles
        .get(role)
        .and_then(|r| r.weights.get(member))
        .copied()
        .unwrap_or(1)
        .max(1)
}

/// Members repeated by weight, interleaved (`a×2, b` → `a, b, a`) so a
/// heavy member's turns are spread over the cycle.
fn weighted_cycle<'a>(team: &TeamConfig, role: &str, members: &[&'a str]) -> Vec<&'a str> {
    let weights: Vec<u32> = members.iter().map(|m| weight(team, role, m)).collect();
    let rounds = weights.iter().copied().max().unwrap_or(1);
    let mut cycle = Vec::new();
    for round in 0..rounds {
        for (m, w) in members.iter().zip(&weights) {
            if round < *w {
                cycle.push(*m);
            }
        }
    }
    cycle
}
