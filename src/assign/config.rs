//! The calendar part of `team.toml`: parsed with spans so every problem
//! names its line, and validated as a whole (unknown or looping
//! substitutes, overlapping absences, time zones, shift syntax).
//!
//! ```toml
//! [calendar]
//! time_zone = "Europe/Moscow"          # the team's; users inherit it
//! holidays = ["2027-01-01", "2027-01-07"]
//! hours = { mon = "09:00-18:00", tue = "09:00-18:00", sat = "off" }
//!
//! [users.olga]
//! time_zone = "Asia/Yekaterinburg"
//! hours = { fri = ["09:00-13:00", "22:00-06:00"] }
//! max_open_leads = 20
//! absences = [{ from = "2027-07-01", to = "2027-07-14", substitute = "ivan", reason = "vacation" }]
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use chrono::NaiveDate;
use chrono_tz::Tz;
use serde::Deserialize;
use toml::Spanned;

use leadgate_connector::HumanDuration;

use super::calendar::{Absence, Calendars, Shift, UserCalendar, WeeklyHours};
use super::sla::Sla;
use crate::routing::User;

/// One problem, located by a byte span of the file when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub span: Option<Range<usize>>,
    pub field: String,
    pub message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarFile {
    time_zone: Option<Spanned<String>>,
    #[serde(default)]
    holidays: Vec<Spanned<String>>,
    hours: Option<Spanned<HoursFile>>,
}

type HoursFile = BTreeMap<String, Spanned<ShiftsFile>>;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ShiftsFile {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserFile {
    name: Option<String>,
    email: Option<String>,
    /// An inactive user keeps their leads but gets no new ones.
    #[serde(default = "yes")]
    active: bool,
    time_zone: Option<Spanned<String>>,
    hours: Option<Spanned<HoursFile>>,
    #[serde(default)]
    absences: Vec<Spanned<AbsenceFile>>,
    max_open_leads: Option<Spanned<u32>>,
    /// The chat id of the user's private chat with the notifier bot.
    telegram_chat_id: Option<i64>,
    /// `["telegram", "email"]`: how the user wants to be told.
    notify: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AbsenceFile {
    from: String,
    to: String,
    substitute: Option<String>,
    reason: Option<String>,
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

struct Issues(Vec<Issue>);

impl Issues {
    fn at(&mut self, span: Range<usize>, field: String, message: impl Into<String>) {
        self.0.push(Issue {
            span: Some(span),
            field,
            message: message.into(),
        });
    }
}

fn time_zone(issues: &mut Issues, tz: &Spanned<String>, field: String) -> Option<Tz> {
    match tz.get_ref().trim().parse::<Tz>() {
        Ok(tz) => Some(tz),
        Err(_) => {
            issues.at(
                tz.span(),
                field,
                format!(
                    "{:?} is not an IANA time zone (e.g. \"Europe/Moscow\", \"Asia/Yekaterinburg\", \"UTC\")",
                    tz.get_ref()
                ),
            );
            None
        }
    }
}

fn hours(issues: &mut Issues, file: &Spanned<HoursFile>, field: &str) -> WeeklyHours {
    let mut week = WeeklyHours::default();
    for (day, shifts) in file.get_ref() {
        let Some(index) = WEEKDAYS.iter().position(|d| d == day) else {
            issues.at(
                file.span(),
                format!("{field}.{day}"),
                format!("unknown weekday; use {}", WEEKDAYS.join(", ")),
            );
            continue;
        };
        let texts: Vec<&str> = match shifts.get_ref() {
            ShiftsFile::One(s) => vec![s.as_str()],
            ShiftsFile::Many(v) => v.iter().map(String::as_str).collect(),
        };
        for text in texts {
            if text.trim() == "off" || text.trim().is_empty() {
                continue;
            }
            match text.parse::<Shift>() {
                Ok(s) => week.days[index].push(s),
                Err(e) => issues.at(shifts.span(), format!("{field}.{day}"), e),
            }
        }
    }
    week
}

fn date(text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| format!("{text:?} is not a date; write \"YYYY-MM-DD\""))
}

/// Build the users and their calendars; every problem is returned, with
/// what could be built regardless.
pub fn build(
    calendar: Option<&CalendarFile>,
    users: &BTreeMap<String, Spanned<UserFile>>,
) -> (BTreeMap<String, User>, Calendars, Vec<Issue>) {
    let mut issues = Issues(Vec::new());
    let default = CalendarFile::default();
    let team_file = calendar.unwrap_or(&default);
    let team_tz = team_file
        .time_zone
        .as_ref()
        .and_then(|tz| time_zone(&mut issues, tz, "calendar.time_zone".into()))
        .unwrap_or(Tz::UTC);
    let team_hours = team_file
        .hours
        .as_ref()
        .map(|h| hours(&mut issues, h, "calendar.hours"));
    let mut holidays = BTreeSet::new();
    for h in &team_file.holidays {
        match date(h.get_ref()) {
            Ok(d) => {
                holidays.insert(d);
            }
            Err(e) => issues.at(h.span(), "calendar.holidays".into(), e),
        }
    }

    let mut out_users = BTreeMap::new();
    let mut calendars = BTreeMap::new();
    for (name, file) in users {
        let f = file.get_ref();
        out_users.insert(
            name.clone(),
            User {
                name: f.name.clone(),
                email: f.email.clone(),
                active: f.active,
                telegram_chat_id: f.telegram_chat_id,
                notify_via: f.notify.clone(),
                notify: Vec::new(),
            },
        );
        let tz = f
            .time_zone
            .as_ref()
            .and_then(|tz| time_zone(&mut issues, tz, format!("users.{name}.time_zone")))
            .unwrap_or(team_tz);
        let own_hours = f
            .hours
            .as_ref()
            .map(|h| hours(&mut issues, h, &format!("users.{name}.hours")));
        let mut absences: Vec<Absence> = Vec::new();
        for (i, a) in f.absences.iter().enumerate() {
            let field = format!("users.{name}.absences[{i}]");
            let af = a.get_ref();
            let (from, to) = match (date(&af.from), date(&af.to)) {
                (Ok(from), Ok(to)) => (from, to),
                (Err(e), _) | (_, Err(e)) => {
                    issues.at(a.span(), field, e);
                    continue;
                }
            };
            if from > to {
                issues.at(a.span(), field, format!("`from` {from} is after `to` {to}"));
                continue;
            }
            if let Some(sub) = &af.substitute {
                if sub == name {
                    issues.at(
                        a.span(),
                        format!("{field}.substitute"),
                        "a user cannot substitute for themselves",
                    );
                } else if !users.contains_key(sub) {
                    issues.at(
                        a.span(),
                        format!("{field}.substitute"),
                        format!("unknown user {sub:?} (define it under [users.{sub}])"),
                    );
                }
            }
            if let Some(other) = absences.iter().find(|b| b.from <= to && from <= b.to) {
                issues.at(
                    a.span(),
                    field,
                    format!(
                        "overlaps the absence {}..{}; merge them or split the dates",
                        other.from, other.to
                    ),
                );
                continue;
            }
            absences.push(Absence {
                from,
                to,
                substitute: af.substitute.clone(),
                reason: af.reason.clone(),
            });
        }
        let max_open_leads = match &f.max_open_leads {
            Some(cap) if *cap.get_ref() == 0 => {
                issues.at(
                    cap.span(),
                    format!("users.{name}.max_open_leads"),
                    "must be at least 1 (set `active = false` to give someone no new leads)",
                );
                None
            }
            other => other.as_ref().map(|c| *c.get_ref()),
        };
        calendars.insert(
            name.clone(),
            UserCalendar {
                tz,
                hours: own_hours.or_else(|| team_hours.clone()),
                absences,
                max_open_leads,
            },
        );
    }
    check_loops(&mut issues, users, &calendars);
    let team = UserCalendar {
        tz: team_tz,
        hours: team_hours,
        absences: Vec::new(),
        max_open_leads: None,
    };
    (
        out_users,
        Calendars {
            holidays,
            users: calendars,
            team,
        },
        issues.0,
    )
}

/// A substitute chain loops when, on some day, each person in it is absent
/// and names the next as substitute, back to the first.
fn check_loops(
    issues: &mut Issues,
    files: &BTreeMap<String, Spanned<UserFile>>,
    calendars: &BTreeMap<String, UserCalendar>,
) {
    fn walk(
        calendars: &BTreeMap<String, UserCalendar>,
        path: &mut Vec<String>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Option<(Vec<String>, NaiveDate, NaiveDate)> {
        let current = path.last()?.clone();
        for a in &calendars.get(&current)?.absences {
            let (f, t) = (from.max(a.from), to.min(a.to));
            let Some(sub) = a.substitute.as_ref().filter(|_| f <= t) else {
                continue;
            };
            if path.first() == Some(sub) {
                let mut cycle = path.clone();
                cycle.push(sub.clone());
                return Some((cycle, f, t));
            }
            if path.contains(sub) || path.len() > calendars.len() {
                continue;
            }
            path.push(sub.clone());
            if let Some(found) = walk(calendars, path, f, t) {
                return Some(found);
            }
            path.pop();
        }
        None
    }
    let mut reported = BTreeSet::new();
    for (name, cal) in calendars {
        for (i, a) in cal.absences.iter().enumerate() {
            if a.substitute.as_ref() == Some(name) {
                continue; // reported as substituting for oneself
            }
            let mut path = vec![name.clone()];
            if let Some((cycle, f, t)) = walk(calendars, &mut path, a.from, a.to) {
                let mut members = cycle.clone();
                members.sort();
                members.dedup();
                if !reported.insert(members) {
                    continue;
                }
                let span = files[name]
                    .get_ref()
                    .absences
                    .get(i)
                    .map(|s| s.span())
                    .unwrap_or_else(|| files[name].span());
                issues.at(
                    span,
                    format!("users.{name}.absences[{i}].substitute"),
                    format!(
                        "substitutes loop from {f} to {t}: {} (nobody would take their leads)",
                        cycle.join(" → ")
                    ),
                );
            }
        }
    }
}

/// `[sla]` of `routing.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaFile {
    form: Option<HumanDuration>,
    imap: Option<HumanDuration>,
    telegram: Option<HumanDuration>,
    vk: Option<HumanDuration>,
    telephony: Option<HumanDuration>,
    missed_call: Option<HumanDuration>,
    supervisor_after: Option<HumanDuration>,
    /// `user:<id>` or `role:<id>`; checked against the team by the caller.
    pub escalate_to: Option<Spanned<String>>,
    sweep_every: Option<Spanned<HumanDuration>>,
}

fn minutes(d: HumanDuration) -> chrono::Duration {
    chrono::Duration::from_std(d.0).unwrap_or(chrono::Duration::days(36_500))
}

/// The `[sla]` table without its escalation target (which needs the team).
pub fn build_sla(file: &SlaFile) -> (Sla, Vec<Issue>) {
    let mut issues = Issues(Vec::new());
    let mut sla = Sla::default();
    for (kind, within) in [
        ("form", file.form),
        ("imap", file.imap),
        ("telegram", file.telegram),
        ("vk", file.vk),
        ("telephony", file.telephony),
    ] {
        if let Some(w) = within {
            sla.by_kind.insert(kind.to_owned(), minutes(w));
        }
    }
    sla.missed_call = file.missed_call.map(minutes);
    sla.supervisor_after = file.supervisor_after.map(minutes);
    if let Some(every) = &file.sweep_every {
        if every.get_ref().0 < std::time::Duration::from_millis(100) {
            issues.at(
                every.span(),
                "sla.sweep_every".into(),
                "must be at least 100ms",
            );
        } else {
            sla.sweep_every = every.get_ref().0;
        }
    }
    (sla, issues.0)
}
