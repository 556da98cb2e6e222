//! Routing: which person or role gets a lead.
//!
//! Rules are tried in file order; the first whose every condition holds
//! assigns the lead. A role is resolved to one member by its strategy in the
//! store (round-robin state and open-lead counts live in the database, so
//! they survive restarts and agree between instances). No match falls back
//! to the channel's `responsible`, then to the global `default`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// `user:<id>` or `role:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Assignee {
    User(String),
    Role(String),
}

impl FromStr for Assignee {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("user", id)) if !id.trim().is_empty() => Ok(Assignee::User(id.trim().to_owned())),
            Some(("role", id)) if !id.trim().is_empty() => Ok(Assignee::Role(id.trim().to_owned())),
            _ => Err(format!(
                "{s:?} is not an assignee; write \"user:<id>\" or \"role:<id>\""
            )),
        }
    }
}

impl fmt::Display for Assignee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Assignee::User(u) => write!(f, "user:{u}"),
            Assignee::Role(r) => write!(f, "role:{r}"),
        }
    }
}

/// How a role picks one of its members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Members in turn; the turn is kept in the database.
    #[default]
    RoundRobin,
    /// The member with the fewest open (new or in-progress) leads.
    LeastLoaded,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastLoaded => "least_loaded",
        }
    }

    pub fn parse(s: &str) -> Option<Strategy> {
        [Strategy::RoundRobin, Strategy::LeastLoaded]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: Option<String>,
    pub email: Option<String>,
    /// An inactive user keeps their leads but gets no new ones.
    #[serde(default = "active_default")]
    pub active: bool,
    /// Their chat with the notifier bot (they send it /start first).
    #[serde(default)]
    pub telegram_chat_id: Option<i64>,
    /// Transports they asked for (`notify = ["telegram"]`); unset: every
    /// enabled one they have an address for.
    #[serde(default)]
    pub notify_via: Option<Vec<String>>,
    /// Where their notifications go, resolved against `[notify]` when the
    /// configuration is loaded: `(transport, chat id or address)`.
    #[serde(skip)]
    pub notify: Vec<(crate::notify::Transport, String)>,
}

fn active_default() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub members: Vec<String>,
    pub strategy: Strategy,
    /// Round-robin turns per cycle by member (default 1): `olga = 2`
    /// gives olga two leads for every one of the others.
    pub weights: BTreeMap<String, u32>,
}

/// `team.toml`: who can be assigned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TeamConfig {
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
    /// When each user works, their absences and caps.
    pub calendars: crate::assign::Calendars,
    /// Users told when a lead is flagged for a supervisor
    /// (`notify.supervisors`).
    pub supervisors: Vec<String>,
}

impl TeamConfig {
    /// The active members of a role, in configured order.
    pub fn active_members(&self, role: &str) -> Vec<&str> {
        self.roles
            .get(role)
            .map(|r| {
                r.members
                    .iter()
                    .filter(|m| self.users.get(*m).is_some_and(|u| u.active))
                    .map(String::as_str)
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub enum Condition {
    Equals(String),
    OneOf(Vec<String>),
    Prefix(String),
    Regex(Regex),
}

impl Condition {
    fn holds(&self, value: &str) -> bool {
        let value = value.trim();
        match self {
            Condition::Equals(want) => eq_fold(value, want),
            Condition::OneOf(wants) => wants.iter().any(|w| eq_fold(value, w)),
            Condition::Prefix(p) => value.to_lowercase().starts_with(&p.to_lowercase()),
            Condition::Regex(re) => re.is_match(value),
        }
    }
}

fn eq_fold(a: &str, b: &str) -> bool {
    a == b || a.to_lowercase() == b.trim().to_lowercase()
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub when: Vec<(String, Condition)>,
    pub assign: Assignee,
    /// Overrides the role's own strategy for leads this rule assigns.
    pub strategy: Option<Strategy>,
    /// Sticky owners and the after-hours target.
    pub policy: crate::assign::Policy,
}

/// `routing.toml`, validated.
#[derive(Debug, Clone, Default)]
pub struct RoutingConfig {
    pub default: Option<Assignee>,
    pub rules: Vec<Rule>,
    /// The policy of leads no rule matched (channel responsible, default).
    pub policy: crate::assign::Policy,
}

/// What a rule can look at: the normalized lead.
pub trait LeadFacts {
    fn fact(&self, field: &str) -> Option<&str>;
}

/// Why a lead went where it went; recorded on the lead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", content = "rule", rename_all = "snake_case")]
pub enum AssignedBy {
    Rule(String),
    ChannelDefault,
    GlobalDefault,
    Unassigned,
}

impl fmt::Display for AssignedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssignedBy::Rule(name) => write!(f, "rule:{name}"),
            AssignedBy::ChannelDefault => f.write_str("channel_default"),
            AssignedBy::GlobalDefault => f.write_str("global_default"),
            AssignedBy::Unassigned => f.write_str("unassigned"),
        }
    }
}

/// The routing decision before a role is resolved to a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub target: Option<Assignee>,
    pub strategy: Option<Strategy>,
    pub assigned_by: AssignedBy,
    pub policy: crate::assign::Policy,
}

impl RoutingConfig {
    pub fn decide(&self, lead: &dyn LeadFacts, channel_responsible: Option<&Assignee>) -> Decision {
        for rule in &self.rules {
            let matched = rule
                .when
                .iter()
                .all(|(field, cond)| lead.fact(field).is_some_and(|v| cond.holds(v)));
            if matched {
                return Decision {
                    target: Some(rule.assign.clone()),
                    strategy: rule.strategy,
                    assigned_by: AssignedBy::Rule(rule.name.clone()),
                    policy: rule.policy.clone(),
                };
            }
        }
        let (target, assigned_by) = match (channel_responsible, &self.default) {
            (Some(a), _) => (Some(a.clone()), AssignedBy::ChannelDefault),
            (None, Some(a)) => (Some(a.clone()), AssignedBy::GlobalDefault),
            (None, None) => (None, AssignedBy::Unassigned),
        };
        Decision {
            target,
            strategy: None,
            assigned_by,
            policy: self.policy.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Facts(BTreeMap<&'static str, &'static str>);

    impl LeadFacts for Facts {
        fn fact(&self, field: &str) -> Option<&str> {
            self.0.get(field).copied()
        }
    }

    fn rule(name: &str, when: Vec<(&str, Condition)>, assign: &str) -> Rule {
        Rule {
            name: name.into(),
            when: when.into_iter().map(|(f, c)| (f.to_owned(), c)).collect(),
            assign: assign.parse().unwrap(),
            strategy: None,
            policy: Default::default(),
        }
    }

    fn routing() -> RoutingConfig {
        RoutingConfig {
            policy: Default::default(),
            default: Some("role:sales".parse().unwrap()),
            rules: vec![
                rule(
                    "kazan",
                    vec![("region", Condition::Equals("Казань".into()))],
                    "role:volga",
                ),
                rule(
                    "machines",
                    vec![(
                        "product",
                        Condition::OneOf(vec!["X200".into(), "X300".into()]),
                    )],
                    "user:olga",
                ),
                rule(
                    "partners",
                    vec![("utm_source", Condition::Prefix("partner".into()))],
                    "user:ivan",
                ),
                rule(
                    "vip",
                    vec![
                        ("channel", Condition::Equals("site".into())),
                        ("budget", Condition::Regex(Regex::new(r"^\d{7,}$").unwrap())),
                    ],
                    "user:boss",
                ),
            ],
        }
    }

    #[test]
    fn first_matching_rule_wins_and_fallbacks_apply_in_order() {
        let r = routing();
        type Case = (
            Vec<(&'static str, &'static str)>,
            Option<&'static str>,
            &'static str,
            AssignedBy,
        );
        let table: Vec<Case> = vec![
            (
                vec![("region", "казань")],
                None,
                "role:volga",
                AssignedBy::Rule("kazan".into()),
            ),
            (
                vec![("region", "Казань"), ("product", "X200")],
                None,
                "role:volga",
                AssignedBy::Rule("kazan".into()),
            ),
            (
                vec![("product", "x300")],
                None,
                "user:olga",
                AssignedBy::Rule("machines".into()),
            ),
            (
                vec![("utm_source", "Partner-42")],
                None,
                "user:ivan",
                AssignedBy::Rule("partners".into()),
            ),
            (
                vec![("channel", "site"), ("budget", "15000000")],
                None,
                "user:boss",
                AssignedBy::Rule("vip".into()),
            ),
            (
                vec![("channel", "site"), ("budget", "15k")],
                None,
                "role:sales",
                AssignedBy::GlobalDefault,
            ),
            (
                vec![("product", "X999")],
                Some("user:anna"),
                "user:anna",
                AssignedBy::ChannelDefault,
            ),
        ];
        for (facts, responsible, want, by) in table {
            let responsible: Option<Assignee> = responsible.map(|s| s.parse().unwrap());
            let d = r.decide(
                &Facts(facts.iter().copied().collect()),
                responsible.as_ref(),
            );
            assert_eq!(d.target.unwrap().to_string(), want, "facts {facts:?}");
            assert_eq!(d.assigned_by, by, "facts {facts:?}");
        }
    }

    #[test]
    fn nothing_configured_leaves_the_lead_unassigned() {
        let d = RoutingConfig::default().decide(&Facts(BTreeMap::new()), None);
        assert_eq!(d.target, None);
        assert_eq!(d.assigned_by, AssignedBy::Unassigned);
    }

    #[test]
    fn assignee_syntax_is_checked() {
        assert_eq!("role:sales".parse(), Ok(Assignee::Role("sales".into())));
        assert!("sales".parse::<Assignee>().is_err());
        assert!("user:".parse::<Assignee>().is_err());
    }
}
