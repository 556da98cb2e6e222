//! The writer's side of assignment: reads what a decision needs inside the
//! commit transaction (round-robin turns, open-lead counts, the contact's
//! previous owner), lets the pure [`crate::assign::decide`] choose, and
//! writes what follows from the choice (a queued lead's release timer).
//!
//! Turns and counts are cached for the transaction: read once, kept in
//! memory as leads are assigned, turns written back before commit.

use std::collections::HashMap;
use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::tx::Tx;
use crate::assign::sla::deadline;
use crate::assign::{Ask, Load, Outcome, decide, loads_needed};
use crate::pipeline::{Prepared, Route};
use crate::routing::Strategy;

type R<T> = sqlx::Result<T>;

/// Who a new lead goes to.
pub(super) struct Assignment {
    pub user: Option<String>,
    pub role: Option<String>,
    pub note: Option<String>,
    /// Replaces the rule's `assigned_by` (`sticky_owner`, `after_hours`).
    pub assigned_by: Option<&'static str>,
    pub queued_until: Option<DateTime<Utc>>,
}

impl Assignment {
    fn from_outcome(o: Outcome) -> Assignment {
        Assignment {
            assigned_by: o.assigned_by(),
            queued_until: o.queued_until(),
            user: o.user,
            role: o.role,
            note: Some(o.note).filter(|n| !n.is_empty()),
        }
    }
}

/// Timer kinds in `lead_timers`.
pub(crate) const TIMER_ASSIGN: &str = "assign";
/// `(lead, kind, due, target)`: a queued lead's pool or person, a deadline's
/// escalation target.
pub(crate) type NewTimer<'a> = (i64, &'a str, DateTime<Utc>, Option<&'a str>);
pub(crate) const TIMER_RESPOND: &str = "respond";
pub(crate) const TIMER_SUPERVISE: &str = "supervise";
pub(crate) const TIMER_CALLBACK: &str = "callback";

/// The statements assignment runs, beside the writer's own.
pub(crate) trait AssignTx: Send {
    /// The assignee of the newest lead, created since `since`, of any
    /// contact that has one of these identities.
    fn previous_owner(
        &mut self,
        ids: &[(&str, &str)],
        since: DateTime<Utc>,
    ) -> impl Future<Output = R<Option<String>>> + Send;
    /// `(user, new, open)` for those of `users` with open leads.
    fn lead_loads(
        &mut self,
        users: &[&str],
    ) -> impl Future<Output = R<Vec<(String, i64, i64)>>> + Send;
    /// Arm (or re-arm) a lead's timer of `kind`.
    /// `target`: whom a queued lead waits for (`user:<id>`, `role:<id>`).
    fn set_timer(
        &mut self,
        lead: i64,
        kind: &str,
        due: DateTime<Utc>,
        target: Option<&str>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = R<()>> + Send;
    /// Arm many timers in one statement: `(lead, kind, due, target)`.
    fn set_timers(
        &mut self,
        timers: &[NewTimer<'_>],
        now: DateTime<Utc>,
    ) -> impl Future<Output = R<()>> + Send;
    /// Copy the leads' `respond` deadlines onto their rows.
    fn copy_respond_by(&mut self, leads: &[i64]) -> impl Future<Output = R<()>> + Send;
    fn set_queued(
        &mut self,
        lead: i64,
        until: Option<DateTime<Utc>>,
    ) -> impl Future<Output = R<()>> + Send;
    /// Queue notifications in the outbox; one already queued for the same
    /// (event, recipient, transport) is left as it is.
    fn insert_notices(
        &mut self,
        notices: &[Notice],
        now: DateTime<Utc>,
    ) -> impl Future<Output = R<()>> + Send;
}

/// A row of the `notifications` outbox.
#[derive(Debug, Clone)]
pub(crate) struct Notice {
    /// Names the event once: `lead:<id>:assigned`, `timer:<id>:<due>`.
    pub event_key: String,
    pub lead: i64,
    pub event: &'static str,
    pub recipient: String,
    pub transport: &'static str,
    pub address: String,
    pub note: Option<String>,
}

/// One notice per transport by which `user` is told (none for a user
/// without addresses, or with notifications off).
pub(crate) fn notices_for(
    team: &crate::routing::TeamConfig,
    user: &str,
    lead: i64,
    event: &'static str,
    event_key: &str,
    note: Option<&str>,
) -> Vec<Notice> {
    let Some(u) = team.users.get(user) else {
        return Vec::new();
    };
    u.notify
        .iter()
        .map(|(t, address)| Notice {
            event_key: event_key.to_owned(),
            lead,
            event,
            recipient: user.to_owned(),
            transport: t.as_str(),
            address: address.clone(),
            note: note.map(str::to_owned),
        })
        .collect()
}

/// Outbox columns per row in [`AssignTx::insert_notices`].
const NOTICE_COLUMNS: usize = 9;

macro_rules! impl_assign_tx {
    ($conn:ty, $anonymous:expr) => {
        impl AssignTx for $conn {
            async fn insert_notices(&mut self, notices: &[Notice], now: DateTime<Utc>) -> R<()> {
                // Rows per statement: well under both databases' parameter
                // limits.
                for chunk in notices.chunks(1_000) {
                    let mut n = 0;
                    let rows: Vec<String> = chunk
                        .iter()
                        .map(|_| {
                            let cols: Vec<String> = (0..NOTICE_COLUMNS)
                                .map(|_| {
                                    n += 1;
                                    // SQLite looks numbered parameters up by
                                    // name, quadratic in a long statement.
                                    if $anonymous { "?".to_owned() } else { format!("${n}") }
                                })
                                .collect();
                            format!("({})", cols.join(", "))
                        })
                        .collect();
                    let sql = format!(
                        "INSERT INTO notifications (event_key, lead_id, event, recipient, transport, address, note, \
                         created_at, next_attempt_at) VALUES {} \
                         ON CONFLICT (event_key, recipient, transport) DO NOTHING",
                        rows.join(", ")
                    );
                    let mut q = sqlx::query(&sql);
                    for x in chunk {
                        q = q
                            .bind(x.event_key.as_str())
                            .bind(x.lead)
                            .bind(x.event)
                            .bind(x.recipient.as_str())
                            .bind(x.transport)
                            .bind(x.address.as_str())
                            .bind(x.note.as_deref())
                            .bind(now)
                            .bind(now);
                    }
                    q.execute(&mut *self).await?;
                }
                Ok(())
            }

            async fn previous_owner(&mut self, ids: &[(&str, &str)], since: DateTime<Utc>) -> R<Option<String>> {
                if ids.is_empty() {
                    return Ok(None);
                }
                let pairs: Vec<String> = (0..ids.len())
                    .map(|i| format!("(ci.kind = ${} AND ci.value = ${})", 2 * i + 2, 2 * i + 3))
                    .collect();
                let sql = format!(
                    "SELECT l.assignee_user FROM leads l JOIN contact_identities ci ON ci.contact_id = l.contact_id \
                     WHERE l.created_at >= $1 AND l.assignee_user IS NOT NULL AND ({}) \
                     ORDER BY l.id DESC LIMIT 1",
                    pairs.join(" OR ")
                );
                let mut q = sqlx::query_scalar(&sql).bind(since);
                for (kind, value) in ids {
                    q = q.bind(*kind).bind(*value);
                }
                q.fetch_optional(&mut *self).await
            }

            async fn lead_loads(&mut self, users: &[&str]) -> R<Vec<(String, i64, i64)>> {
                if users.is_empty() {
                    return Ok(Vec::new());
                }
                let list: Vec<String> = (0..users.len()).map(|i| format!("${}", i + 1)).collect();
                let sql = format!(
                    "SELECT assignee_user, SUM(CASE WHEN status = 'new' THEN 1 ELSE 0 END), COUNT(*) FROM leads \
                     WHERE assignee_user IN ({}) AND status IN ('new', 'in_progress') GROUP BY assignee_user",
                    list.join(", ")
                );
                let mut q = sqlx::query(&sql);
                for u in users {
                    q = q.bind(*u);
                }
                q.fetch_all(&mut *self)
                    .await?
                    .iter()
                    .map(|r| {
                        Ok((
                            r.try_get(0)?,
                            r.try_get::<Option<i64>, _>(1)?.unwrap_or(0),
                            r.try_get(2)?,
                        ))
                    })
                    .collect()
            }

            async fn set_timer(
                &mut self,
                lead: i64,
                kind: &str,
                due: DateTime<Utc>,
                target: Option<&str>,
                now: DateTime<Utc>,
            ) -> R<()> {
                sqlx::query(
                    "INSERT INTO lead_timers (lead_id, kind, due_at, created_at, target) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (lead_id, kind) DO UPDATE SET due_at = $3, fired_at = NULL, outcome = NULL, target = $5",
                )
                .bind(lead)
                .bind(kind)
                .bind(due)
                .bind(now)
                .bind(target)
                .execute(&mut *self)
                .await
                .map(|_| ())
            }

            async fn set_timers(&mut self, timers: &[NewTimer<'_>], now: DateTime<Utc>) -> R<()> {
                for chunk in timers.chunks(5_000) {
                    let rows: Vec<String> = (0..chunk.len())
                        .map(|i| {
                            let p = 5 * i;
                            format!("(${}, ${}, ${}, ${}, ${})", p + 1, p + 2, p + 3, p + 4, p + 5)
                        })
                        .collect();
                    let sql = format!(
                        "INSERT INTO lead_timers (lead_id, kind, due_at, created_at, target) VALUES {} \
                         ON CONFLICT (lead_id, kind) DO UPDATE SET due_at = excluded.due_at, \
                         target = excluded.target, fired_at = NULL, outcome = NULL",
                        rows.join(", ")
                    );
                    let mut q = sqlx::query(&sql);
                    for (lead, kind, due, target) in chunk {
                        q = q.bind(*lead).bind(*kind).bind(*due).bind(now).bind(*target);
                    }
                    q.execute(&mut *self).await?;
                }
                Ok(())
            }

            async fn copy_respond_by(&mut self, leads: &[i64]) -> R<()> {
                for chunk in leads.chunks(5_000) {
                    let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 1)).collect();
                    let sql = format!(
                        "UPDATE leads SET respond_by = (SELECT t.due_at FROM lead_timers t \
                         WHERE t.lead_id = leads.id AND t.kind = 'respond') WHERE id IN ({})",
                        list.join(", ")
                    );
                    let mut q = sqlx::query(&sql);
                    for lead in chunk {
                        q = q.bind(*lead);
                    }
                    q.execute(&mut *self).await?;
                }
                Ok(())
            }

            async fn set_queued(&mut self, lead: i64, until: Option<DateTime<Utc>>) -> R<()> {
                sqlx::query("UPDATE leads SET queued_until = $2 WHERE id = $1")
                    .bind(lead)
                    .bind(until)
                    .execute(&mut *self)
                    .await
                    .map(|_| ())
            }
        }
    };
}

impl_assign_tx!(sqlx::SqliteConnection, true);
impl_assign_tx!(sqlx::PgConnection, false);

/// Round-robin turns and open-lead counts for the transaction.
#[derive(Default)]
pub(super) struct Assigner {
    /// pool → (counter, changed)
    turns: HashMap<String, (i64, bool)>,
    loads: HashMap<String, Load>,
    /// Leads assigned per user that are decided but not yet inserted, so
    /// a count read from the table meanwhile is completed.
    unflushed: HashMap<String, i64>,
    /// Queued leads whose rows are not inserted yet: `(lead, until,
    /// target)`.
    queued: Vec<(i64, Option<DateTime<Utc>>, String)>,
    /// Response deadlines of leads whose rows are not inserted yet.
    /// `(lead, due, escalation target)`.
    deadlines: Vec<(i64, DateTime<Utc>, Option<String>)>,
    /// Notifications of leads whose rows are not inserted yet.
    notices: Vec<Notice>,
}

impl Assigner {
    /// Decide who gets `item`'s lead at `now`. `returning`: the sender may
    /// have had leads before (false only for a contact this transaction
    /// created with identities nobody had). `deferred`: the lead is
    /// inserted later with the pending rows.
    pub(super) async fn assign<T: Tx>(
        &mut self,
        tx: &mut T,
        item: &Prepared,
        now: DateTime<Utc>,
        returning: bool,
        deferred: bool,
    ) -> R<Assignment> {
        let route = &item.route;
        let pool = match route {
            Route::Role {
                role,
                strategy: Strategy::RoundRobin,
                members,
            } if !members.is_empty() => Some(format!("role:{role}")),
            _ => None,
        };
        let turn = match &pool {
            None => 0,
            Some(pool) => match self.turns.get(pool) {
                Some(t) => t.0,
                None => {
                    let counter = tx.current_turn(pool).await?;
                    self.turns.insert(pool.clone(), (counter, false));
                    counter
                }
            },
        };
        let previous_owner = match (route, item.policy.sticky_window) {
            (Route::Role { members, .. }, Some(window)) if returning && !members.is_empty() => {
                let ids: Vec<(&str, &str)> = item
                    .identities
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                tx.previous_owner(&ids, now - window).await?
            }
            _ => None,
        };
        let ask = Ask {
            route,
            policy: &item.policy,
            previous_owner: previous_owner.as_deref(),
            turn,
            now,
        };
        if let Some(users) = loads_needed(&item.team, &ask) {
            self.read_loads(tx, &users).await?;
        }
        let loads = &self.loads;
        let outcome = decide(&item.team, &ask, &|u: &str| {
            loads.get(u).copied().unwrap_or_default()
        });
        if let (Some(pool), Some(turn)) = (pool, outcome.turn) {
            self.turns.insert(pool, (turn, true));
        }
        if let Some(user) = &outcome.user {
            if let Some(load) = self.loads.get_mut(user) {
                load.new += 1;
                load.open += 1;
            }
            if deferred {
                *self.unflushed.entry(user.clone()).or_default() += 1;
            }
        }
        Ok(Assignment::from_outcome(outcome))
    }

    async fn read_loads<T: Tx>(&mut self, tx: &mut T, users: &[String]) -> R<()> {
        let mut missing: Vec<&str> = users
            .iter()
            .filter(|u| !self.loads.contains_key(*u))
            .map(String::as_str)
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        let mut found: HashMap<String, Load> = tx
            .lead_loads(&missing)
            .await?
            .into_iter()
            .map(|(u, new, open)| (u, Load { new, open }))
            .collect();
        for u in missing {
            let mut load = found.remove(u).unwrap_or_default();
            let pending = self.unflushed.get(u).copied().unwrap_or(0);
            load.new += pending;
            load.open += pending;
            self.loads.insert(u.to_owned(), load);
        }
        Ok(())
    }

    /// The lead of `assignment` now has an id: remember what to write
    /// once its row is inserted (a queued lead's release, a deadline).
    pub(super) fn created(
        &mut self,
        lead: i64,
        assignment: &Assignment,
        item: &Prepared,
        now: DateTime<Utc>,
    ) {
        if let Some(user) = &assignment.user {
            let key = format!("lead:{lead}:assigned");
            self.notices
                .extend(notices_for(&item.team, user, lead, "assigned", &key, None));
        }
        if assignment.assigned_by == Some("after_hours") && assignment.user.is_none() {
            // Its deadline starts when it is released to someone.
            // The pool with the strategy the rule chose, so the release
            // picks the way the rule said, not by the role's default.
            let target = match &item.route {
                Route::User(u) => format!("user:{u}"),
                r @ Route::Role { .. } => super::timers::pool_target(r).unwrap_or_default(),
                Route::Nobody => return,
            };
            self.queued.push((lead, assignment.queued_until, target));
            return;
        }
        if let Some(within) = item.policy.sla.respond_within(item.kind.as_str())
            && let Some(due) = deadline(&item.team, assignment.user.as_deref(), now, within)
        {
            // Without a named target the lead's own pool takes it over, by
            // the strategy the rule chose for it.
            let target = item
                .policy
                .sla
                .escalate_to()
                .map(|a| a.to_string())
                .or_else(|| super::timers::pool_target(&item.route));
            self.deadlines.push((lead, due, target));
        }
    }

    /// The pending leads are inserted: write what follows from their
    /// assignment.
    pub(super) async fn flushed<T: Tx>(&mut self, tx: &mut T, now: DateTime<Utc>) -> R<()> {
        self.unflushed.clear();
        if !self.notices.is_empty() {
            tx.insert_notices(&self.notices, now).await?;
            self.notices.clear();
        }
        if !self.deadlines.is_empty() {
            let timers: Vec<NewTimer<'_>> = self
                .deadlines
                .iter()
                .map(|(lead, due, target)| (*lead, TIMER_RESPOND, *due, target.as_deref()))
                .collect();
            tx.set_timers(&timers, now).await?;
            let leads: Vec<i64> = self.deadlines.iter().map(|d| d.0).collect();
            tx.copy_respond_by(&leads).await?;
            self.deadlines.clear();
        }
        for (lead, until, target) in self.queued.drain(..) {
            tx.set_queued(lead, until).await?;
            if let Some(until) = until {
                tx.set_timer(lead, TIMER_ASSIGN, until, Some(&target), now)
                    .await?;
            }
        }
        Ok(())
    }

    pub(super) async fn save<T: Tx>(&mut self, tx: &mut T) -> R<()> {
        for (pool, (counter, changed)) in &mut self.turns {
            if *changed {
                tx.save_turn(pool, *counter).await?;
                *changed = false;
            }
        }
        Ok(())
    }
}
