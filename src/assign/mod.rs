//! Assignment that follows how sales teams work: which person gets a lead
//! *now* once the routing rules chose a user or a role — sticky owners,
//! the team calendar (time zones, shifts, absences with substitutes,
//! holidays), weighted round-robin and caps of open new leads.
//!
//! Everything in this module is pure: the writer (`store::assign`) reads
//! the facts a decision needs (round-robin turns, open-lead counts, the
//! contact's previous owner) inside its transaction and hands them in with
//! the clock, so decisions are table-tested here with any instant.

pub mod calendar;
pub mod config;
pub mod decide;
pub mod sla;

pub use calendar::{Absence, Availability, Calendars, Shift, UserCalendar, WeeklyHours};
pub use decide::{AfterHours, Ask, Load, Outcome, Picked, Policy, Skip, decide, loads_needed};
