//! The team calendar: when each person works.
//!
//! Every user has a time zone, weekly working hours (a list of shifts per
//! weekday; a shift whose end is not after its start runs past midnight
//! into the next day and belongs to the day it starts on), absences (local
//! date ranges, both ends included, with an optional substitute) and the
//! team's holidays (local dates on which no shift *starts*). A user with no
//! hours anywhere in `team.toml` is always on shift, so a team without a
//! calendar behaves as before calendars existed.
//!
//! Everything here is a pure function of the calendar and an instant.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Days, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// How far ahead a search for someone's next shift looks before giving up
/// (a year plus slack: absences and holidays never hide a weekly shift for
/// longer in a sane calendar).
const SEARCH_DAYS: u64 = 400;

/// One working interval: minutes after local midnight and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shift {
    pub start_minute: u16,
    pub minutes: u16,
}

impl FromStr for Shift {
    type Err = String;

    /// `"09:00-18:00"`, `"22:00-06:00"` (past midnight), `"00:00-24:00"`.
    fn from_str(s: &str) -> Result<Shift, String> {
        let bad = || format!("{s:?} is not a shift; write \"HH:MM-HH:MM\", e.g. \"09:00-18:00\"");
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
        };
        let (start, end) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
        if start == 1440 {
            return Err(bad());
        }
        if start == end {
            return Err(format!(
                "{s:?} starts and ends at the same time; a whole day is \"00:00-24:00\""
            ));
        }
        let minutes = if end > start {
            end - start
        } else {
            1440 - start + end
        };
        Ok(Shift {
            start_minute: start,
            minutes,
        })
    }
}

impl fmt::Display for Shift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = (self.start_minute + self.minutes) % 1440;
        let end = if end == 0 && self.start_minute + self.minutes == 1440 {
            1440
        } else {
            end
        };
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start_minute / 60,
            self.start_minute % 60,
            end / 60,
            end % 60
        )
    }
}

/// Shifts per weekday, Monday first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WeeklyHours {
    pub days: [Vec<Shift>; 7],
}

/// Time away from work; `from..=to` are dates in the user's time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Absence {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub substitute: Option<String>,
    pub reason: Option<String>,
}

impl Absence {
    fn covers(&self, day: NaiveDate) -> bool {
        self.from <= day && day <= self.to
    }
}

impl fmt::Display for Absence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}..{}",
            self.reason.as_deref().unwrap_or("absent"),
            self.from,
            self.to
        )
    }
}

/// One user's calendar, with the team's defaults already applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCalendar {
    pub tz: Tz,
    /// `None`: always on shift.
    pub hours: Option<WeeklyHours>,
    pub absences: Vec<Absence>,
    /// Most leads in status `new` this user may hold; more go elsewhere.
    pub max_open_leads: Option<u32>,
}

impl Default for UserCalendar {
    fn default() -> Self {
        UserCalendar {
            tz: Tz::UTC,
            hours: None,
            absences: Vec::new(),
            max_open_leads: None,
        }
    }
}

/// The whole team's calendar.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Calendars {
    pub holidays: BTreeSet<NaiveDate>,
    pub users: BTreeMap<String, UserCalendar>,
    /// The team's own time zone and hours, for deadlines of leads that
    /// have no single person (a queue, a role without members).
    pub team: UserCalendar,
}

/// Whether a user can take a lead at an instant, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability<'a> {
    OnShift,
    Absent(&'a Absence),
    /// Off shift (or on a holiday); `next` is when they are next on shift.
    OffShift {
        next: Option<DateTime<Utc>>,
        holiday: bool,
    },
}

/// A local wall-clock time as an instant; a time skipped by a DST change
/// counts as the first instant after the gap.
fn instant(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
        LocalResult::None => {
            let later = local + chrono::Duration::hours(1);
            match tz.from_local_datetime(&later) {
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
                // No zone skips two hours; fall back to reading it as UTC.
                LocalResult::None => Utc.from_utc_datetime(&local),
            }
        }
    }
}

impl UserCalendar {
    fn local_date(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.tz).date_naive()
    }

    pub fn absence_at(&self, at: DateTime<Utc>) -> Option<&Absence> {
        let day = self.local_date(at);
        self.absences.iter().find(|a| a.covers(day))
    }

    /// The working intervals of the shifts that start on local `day`.
    fn shifts_of<'a>(
        &'a self,
        hours: &'a WeeklyHours,
        holidays: &BTreeSet<NaiveDate>,
        day: NaiveDate,
    ) -> impl Iterator<Item = (DateTime<Utc>, DateTime<Utc>)> + 'a {
        let shifts: &[Shift] = if holidays.contains(&day) {
            &[]
        } else {
            &hours.days[day.weekday().num_days_from_monday() as usize]
        };
        let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default();
        shifts.iter().map(move |s| {
            let start = midnight + chrono::Duration::minutes(i64::from(s.start_minute));
            let end = start + chrono::Duration::minutes(i64::from(s.minutes));
            (instant(self.tz, start), instant(self.tz, end))
        })
    }

    /// Working intervals (shifts, holidays removed; absences not) that end
    /// after `from`, in time order, looking at most [`SEARCH_DAYS`] ahead.
    pub fn intervals_from<'a>(
        &'a self,
        holidays: &'a BTreeSet<NaiveDate>,
        from: DateTime<Utc>,
    ) -> Box<dyn Iterator<Item = (DateTime<Utc>, DateTime<Utc>)> + 'a> {
        let Some(hours) = &self.hours else {
            return Box::new(std::iter::once((from, DateTime::<Utc>::MAX_UTC)));
        };
        // A shift that started yesterday may still run.
        let first = self.local_date(from) - Days::new(1);
        Box::new(
            (0..SEARCH_DAYS)
                .filter_map(move |i| first.checked_add_days(Days::new(i)))
                .flat_map(move |day| {
                    let mut v: Vec<_> = self.shifts_of(hours, holidays, day).collect();
                    v.sort();
                    v
                })
                .filter(move |(_, end)| *end > from),
        )
    }

    /// The first instant at or after `from` when the user is on shift and
    /// not absent.
    pub fn next_available(
        &self,
        holidays: &BTreeSet<NaiveDate>,
        from: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        for (start, end) in self.intervals_from(holidays, from) {
            let mut t = start.max(from);
            // Skip the absent days inside this interval.
            while t < end {
                match self.absence_at(t) {
                    None => return Some(t),
                    Some(a) => {
                        let after = a.to.succ_opt()?.and_hms_opt(0, 0, 0)?;
                        let resumes = instant(self.tz, after);
                        if resumes <= t {
                            break;
                        }
                        t = resumes;
                    }
                }
            }
        }
        None
    }

    pub fn availability<'a>(
        &'a self,
        holidays: &BTreeSet<NaiveDate>,
        at: DateTime<Utc>,
    ) -> Availability<'a> {
        if let Some(a) = self.absence_at(at) {
            return Availability::Absent(a);
        }
        let on = self
            .intervals_from(holidays, at)
            .next()
            .is_some_and(|(start, _)| start <= at);
        if on {
            return Availability::OnShift;
        }
        Availability::OffShift {
            next: self.next_available(holidays, at),
            holiday: holidays.contains(&self.local_date(at)),
        }
    }

    /// `from` plus `work` counted in this calendar's working time only
    /// (absences are not subtracted: the lead's deadline is the team's
    /// promise, not the person's).
    pub fn add_working_time(
        &self,
        holidays: &BTreeSet<NaiveDate>,
        from: DateTime<Utc>,
        work: chrono::Duration,
    ) -> Option<DateTime<Utc>> {
        let mut left = work;
        for (start, end) in self.intervals_from(holidays, from) {
            let start = start.max(from);
            if end - start >= left {
                return Some(start + left);
            }
            left -= end - start;
        }
        None
    }
}

impl Calendars {
    /// A user's calendar; users the calendar does not know work always.
    pub fn user(&self, user: &str) -> &UserCalendar {
        static ALWAYS: std::sync::LazyLock<UserCalendar> =
            std::sync::LazyLock::new(UserCalendar::default);
        self.users.get(user).unwrap_or(&ALWAYS)
    }

    pub fn availability(&self, user: &str, at: DateTime<Utc>) -> Availability<'_> {
        self.user(user).availability(&self.holidays, at)
    }

    pub fn next_available(&self, user: &str, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.user(user).next_available(&self.holidays, from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn week(days: &[(usize, &str)]) -> WeeklyHours {
        let mut w = WeeklyHours::default();
        for (d, s) in days {
            w.days[*d].push(s.parse().unwrap());
        }
        w
    }

    #[test]
    fn shift_syntax() {
        assert_eq!(
            "09:00-18:00".parse(),
            Ok(Shift {
                start_minute: 540,
                minutes: 540
            })
        );
        assert_eq!(
            "22:00-06:00".parse(),
            Ok(Shift {
                start_minute: 1320,
                minutes: 480
            })
        );
        assert_eq!("00:00-24:00".parse::<Shift>().unwrap().minutes, 1440);
        assert_eq!(
            "00:00-24:00".parse::<Shift>().unwrap().to_string(),
            "00:00-24:00"
        );
        for bad in [
            "9-18",
            "09:00",
            "25:00-26:00",
            "09:60-10:00",
            "10:00-10:00",
            "24:00-01:00",
        ] {
            assert!(bad.parse::<Shift>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_night_shift_runs_past_midnight_in_the_users_zone() {
        // Friday 22:00 → Saturday 06:00 in Yekaterinburg (UTC+5).
        let cal = UserCalendar {
            tz: "Asia/Yekaterinburg".parse().unwrap(),
            hours: Some(week(&[(4, "22:00-06:00")])),
            ..UserCalendar::default()
        };
        let none = BTreeSet::new();
        // 2026-11-28 is a Saturday; 00:30 UTC = 05:30 local: still on.
        assert_eq!(
            cal.availability(&none, at("2026-11-28T00:30:00Z")),
            Availability::OnShift
        );
        // 01:30 UTC = 06:30 local: off until next Friday 22:00 local.
        assert_eq!(
            cal.availability(&none, at("2026-11-28T01:30:00Z")),
            Availability::OffShift {
                next: Some(at("2026-12-04T17:00:00Z")),
                holiday: false
            }
        );
    }

    #[test]
    fn holidays_cancel_shifts_and_absences_push_the_next_start() {
        let cal = UserCalendar {
            tz: "Europe/Moscow".parse().unwrap(),
            hours: Some(week(&[
                (0, "09:00-18:00"),
                (1, "09:00-18:00"),
                (2, "09:00-18:00"),
            ])),
            absences: vec![Absence {
                from: NaiveDate::from_ymd_opt(2026, 11, 24).unwrap(),
                to: NaiveDate::from_ymd_opt(2026, 11, 24).unwrap(),
                substitute: None,
                reason: Some("sick".into()),
            }],
            ..UserCalendar::default()
        };
        // Monday 2026-11-23 is a holiday.
        let holidays = BTreeSet::from([NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()]);
        // Monday 10:00 MSK: holiday, Tuesday absent → Wednesday 09:00 MSK.
        assert_eq!(
            cal.availability(&holidays, at("2026-11-23T07:00:00Z")),
            Availability::OffShift {
                next: Some(at("2026-11-25T06:00:00Z")),
                holiday: true
            }
        );
        assert!(matches!(
            cal.availability(&holidays, at("2026-11-24T07:00:00Z")),
            Availability::Absent(_)
        ));
    }

    #[test]
    fn working_time_skips_nights_and_weekends() {
        let cal = UserCalendar {
            tz: Tz::UTC,
            hours: Some(week(&[(4, "09:00-18:00"), (0, "09:00-18:00")])),
            ..UserCalendar::default()
        };
        let none = BTreeSet::new();
        // Friday 17:30 + 1h of work = Monday 09:30.
        assert_eq!(
            cal.add_working_time(
                &none,
                at("2026-11-27T17:30:00Z"),
                chrono::Duration::hours(1)
            ),
            Some(at("2026-11-30T09:30:00Z"))
        );
        // Saturday 12:00 + 2 min = Monday 09:02.
        assert_eq!(
            cal.add_working_time(
                &none,
                at("2026-11-28T12:00:00Z"),
                chrono::Duration::minutes(2)
            ),
            Some(at("2026-11-30T09:02:00Z"))
        );
        let always = UserCalendar::default();
        assert_eq!(
            always.add_working_time(
                &none,
                at("2026-11-28T12:00:00Z"),
                chrono::Duration::minutes(2)
            ),
            Some(at("2026-11-28T12:02:00Z"))
        );
    }
}
