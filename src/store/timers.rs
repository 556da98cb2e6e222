//! The timer sweep: what leadgate does to a lead at a time — release a
//! queued lead to whoever is on shift, escalate a lead nobody took by its
//! response deadline, flag it for a supervisor at the second deadline,
//! chase a missed call nobody called back.
//!
//! Timers are rows of `lead_timers`. One instance sweeps (it holds the
//! `timers` lease); each timer fires in its own transaction that first
//! claims the row (`fired_at IS NULL` → now) and then applies its effect, so
//! a timer fires exactly once whatever restarts or other instances do: a
//! crash before commit leaves it unfired, a second sweeper claims nothing.
//! The sweep reads only due, unfired timers through the partial index on
//! `due_at`, never the leads table as a whole.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::assign::{
    AssignTx, NewTimer, TIMER_ASSIGN, TIMER_CALLBACK, TIMER_RESPOND, TIMER_SUPERVISE, notices_for,
};
use super::tx::Tx;
use super::{Store, StoreError};
use crate::assign::sla::{deadline, escalate, escalation_loads};
use crate::assign::{Ask, Load, Policy, decide, loads_needed};
use crate::pipeline::{Pipeline, PipelineSettings, Route};
use crate::routing::{Assignee, Strategy, TeamConfig};

type R<T> = sqlx::Result<T>;

/// Timers fired per sweep at most (the rest wait for the next one).
const SWEEP_LIMIT: i64 = 500;

/// A due timer.
#[derive(Debug, Clone)]
pub struct DueTimer {
    pub id: i64,
    pub lead: i64,
    pub kind: String,
    pub target: Option<String>,
    pub due: DateTime<Utc>,
}

impl DueTimer {
    /// Names this firing of the timer in the outbox: a re-armed timer
    /// fires again under a new due time, a replayed firing under the same.
    fn event_key(&self) -> String {
        format!("timer:{}:{}", self.id, self.due.timestamp_millis())
    }
}

/// What a fired timer changes on its lead.
struct Change<'a> {
    /// The new holder; `None` keeps the current one.
    user: Option<&'a str>,
    role: Option<&'a str>,
    /// Appended to `routing_note`.
    note: &'a str,
    escalation: Option<&'a str>,
    overdue: bool,
}

/// The lead a timer acts on.
struct LeadState {
    status: String,
    user: Option<String>,
    role: Option<String>,
    missed: bool,
    kind: String,
}

trait TimerTx: Send {
    /// Take the timer; false when it already fired (another sweeper).
    fn claim(&mut self, id: i64, now: DateTime<Utc>) -> impl Future<Output = R<bool>> + Send;
    fn lead_state(&mut self, lead: i64) -> impl Future<Output = R<Option<LeadState>>> + Send;
    fn timer_outcome(&mut self, id: i64, outcome: &str) -> impl Future<Output = R<()>> + Send;
    /// Give the lead to `user`, append `note` to its routing note, and set
    /// `escalation`/`overdue` when given.
    fn reassign(
        &mut self,
        lead: i64,
        change: Change<'_>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = R<()>> + Send;
    fn note_activity(
        &mut self,
        lead: i64,
        kind: &str,
        summary: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = R<()>> + Send;
}

macro_rules! impl_timer_tx {
    ($conn:ty) => {
        impl TimerTx for $conn {
            async fn claim(&mut self, id: i64, now: DateTime<Utc>) -> R<bool> {
                let done = sqlx::query("UPDATE lead_timers SET fired_at = $2 WHERE id = $1 AND fired_at IS NULL")
                    .bind(id)
                    .bind(now)
                    .execute(&mut *self)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn lead_state(&mut self, lead: i64) -> R<Option<LeadState>> {
                let Some(r) = sqlx::query(
                    "SELECT status, assignee_user, assignee_role, missed, channel_kind FROM leads WHERE id = $1",
                )
                .bind(lead)
                .fetch_optional(&mut *self)
                .await?
                else {
                    return Ok(None);
                };
                Ok(Some(LeadState {
                    status: r.try_get(0)?,
                    user: r.try_get(1)?,
                    role: r.try_get(2)?,
                    missed: r.try_get(3)?,
                    kind: r.try_get(4)?,
                }))
            }

            async fn timer_outcome(&mut self, id: i64, outcome: &str) -> R<()> {
                sqlx::query("UPDATE lead_timers SET outcome = $2 WHERE id = $1")
                    .bind(id)
                    .bind(outcome)
                    .execute(&mut *self)
                    .await
                    .map(|_| ())
            }

            async fn reassign(&mut self, lead: i64, c: Change<'_>, now: DateTime<Utc>) -> R<()> {
                sqlx::query(
                    "UPDATE leads SET assignee_user = COALESCE($2, assignee_user), \
                     assignee_role = COALESCE($3, assignee_role), \
                     routing_note = CASE WHEN routing_note IS NULL OR routing_note = '' THEN $4 \
                                         ELSE routing_note || '; ' || $4 END, \
                     escalation = COALESCE($5, escalation), \
                     overdue = CASE WHEN $6 THEN $6 ELSE overdue END, \
                     queued_until = CASE WHEN $2 IS NULL THEN queued_until ELSE NULL END, \
                     updated_at = $7 WHERE id = $1",
                )
                .bind(lead)
                .bind(c.user)
                .bind(c.role)
                .bind(c.note)
                .bind(c.escalation)
                .bind(c.overdue)
                .bind(now)
                .execute(&mut *self)
                .await
                .map(|_| ())
            }

            async fn note_activity(&mut self, lead: i64, kind: &str, summary: &str, now: DateTime<Utc>) -> R<()> {
                sqlx::query(
                    "INSERT INTO activities (lead_id, inbound_id, created_at, kind, summary) VALUES ($1, NULL, $2, $3, $4)",
                )
                .bind(lead)
                .bind(now)
                .bind(kind)
                .bind(summary)
                .execute(&mut *self)
                .await
                .map(|_| ())
            }
        }
    };
}

impl_timer_tx!(sqlx::SqliteConnection);
impl_timer_tx!(sqlx::PgConnection);

/// A timer's `target`: `user:<id>`, `role:<id>`, or
/// `role:<id>;strategy=<s>` for a pool whose rule chose its strategy.
pub(super) fn parse_target(t: &str) -> Option<(Assignee, Option<Strategy>)> {
    let (who, strategy) = match t.split_once(";strategy=") {
        Some((who, s)) => (who, Strategy::parse(s)),
        None => (t, None),
    };
    Some((who.parse().ok()?, strategy))
}

/// The target recording a role pool and the strategy it was picked by.
pub(super) fn pool_target(route: &Route) -> Option<String> {
    match route {
        Route::Role { role, strategy, .. } => {
            Some(format!("role:{role};strategy={}", strategy.as_str()))
        }
        _ => None,
    }
}

fn utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// Loads of `users` as the decision wants them.
async fn loads<C: AssignTx>(
    tx: &mut C,
    users: &[String],
) -> R<std::collections::HashMap<String, Load>> {
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    Ok(tx
        .lead_loads(&names)
        .await?
        .into_iter()
        .map(|(u, new, open)| (u, Load { new, open }))
        .collect())
}

/// Apply one claimed timer; returns its outcome.
async fn fire<C: Tx + TimerTx>(
    tx: &mut C,
    timer: &DueTimer,
    settings: &PipelineSettings,
    now: DateTime<Utc>,
) -> R<String> {
    let team: &TeamConfig = &settings.team;
    let sla = settings.routing.policy.sla.defaults.clone();
    let Some(lead) = tx.lead_state(timer.lead).await? else {
        return Ok("lead gone".into());
    };
    match timer.kind.as_str() {
        TIMER_ASSIGN => {
            if lead.user.is_some() || lead.status != "new" {
                return Ok("already assigned".into());
            }
            let route = match timer.target.as_deref().and_then(parse_target) {
                Some((Assignee::User(u), _)) => Route::User(u),
                // The strategy the rule chose when the lead was queued (its
                // override of the role's), else the role's own.
                Some((Assignee::Role(r), strategy)) => Route::Role {
                    members: team
                        .active_members(&r)
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                    strategy: strategy
                        .or_else(|| team.roles.get(&r).map(|x| x.strategy))
                        .unwrap_or_default(),
                    role: r,
                },
                _ => return Ok("no target".into()),
            };
            let pool = match &route {
                Route::Role { role, .. } => Some(format!("role:{role}")),
                _ => None,
            };
            let turn = match &pool {
                Some(p) => tx.current_turn(p).await?,
                None => 0,
            };
            let policy = Policy {
                sticky_window: None,
                ..Policy::default()
            };
            let ask = Ask {
                route: &route,
                policy: &policy,
                previous_owner: None,
                turn,
                now,
            };
            let counts = match loads_needed(team, &ask) {
                Some(users) => loads(tx, &users).await?,
                None => Default::default(),
            };
            let o = decide(team, &ask, &|u: &str| {
                counts.get(u).copied().unwrap_or_default()
            });
            if let (Some(pool), Some(turn)) = (&pool, o.turn) {
                tx.save_turn(pool, turn).await?;
            }
            match (&o.user, o.queued_until()) {
                (Some(user), _) => {
                    let note = format!("released from the queue at {}: {}", utc(now), o.note);
                    tx.reassign(
                        timer.lead,
                        Change {
                            user: Some(user),
                            role: None,
                            note: &note,
                            escalation: None,
                            overdue: false,
                        },
                        now,
                    )
                    .await?;
                    tx.note_activity(
                        timer.lead,
                        "assigned",
                        &format!("released from the queue to {user}"),
                        now,
                    )
                    .await?;
                    let notices = notices_for(
                        team,
                        user,
                        timer.lead,
                        "assigned",
                        &timer.event_key(),
                        Some("released from the queue"),
                    );
                    tx.insert_notices(&notices, now).await?;
                    // Its response deadline starts now.
                    if let Some(within) = settings.routing.policy.sla.respond_within(&lead.kind)
                        && let Some(due) = deadline(team, Some(user), now, within)
                    {
                        let target = settings
                            .routing
                            .policy
                            .sla
                            .escalate_to()
                            .map(|a| a.to_string())
                            .or_else(|| pool_target(&route));
                        tx.set_timers(&[(timer.lead, TIMER_RESPOND, due, target.as_deref())], now)
                            .await?;
                        tx.copy_respond_by(&[timer.lead]).await?;
                    }
                    Ok(format!("assigned to {user}"))
                }
                (None, Some(until)) => {
                    tx.set_queued(timer.lead, Some(until)).await?;
                    tx.set_timer(
                        timer.lead,
                        TIMER_ASSIGN,
                        until,
                        timer.target.as_deref(),
                        now,
                    )
                    .await?;
                    Ok(format!("queued again until {}", utc(until)))
                }
                (None, None) => Ok(format!("nobody: {}", o.note)),
            }
        }
        TIMER_RESPOND | TIMER_CALLBACK => {
            let respond = timer.kind == TIMER_RESPOND;
            if respond && lead.status != "new" {
                return Ok("taken".into());
            }
            if !respond && (!lead.missed || !matches!(lead.status.as_str(), "new" | "in_progress"))
            {
                return Ok("called back".into());
            }
            // The rule's target, recorded when the deadline was armed, else
            // the `[sla]` one.
            let recorded = timer.target.as_deref().and_then(parse_target);
            let strategy = recorded.as_ref().and_then(|r| r.1);
            let recorded = recorded.map(|r| r.0);
            let target = recorded.as_ref().or(sla.escalate_to.as_ref());
            let users = escalation_loads(team, lead.role.as_deref(), target);
            let counts = loads(tx, &users).await?;
            // A pool escalated round-robin takes the pool's next turn.
            let pool = match (strategy, target) {
                (Some(Strategy::RoundRobin), Some(Assignee::Role(r))) => Some(format!("role:{r}")),
                _ => None,
            };
            let turn = match &pool {
                Some(p) => tx.current_turn(p).await?,
                None => 0,
            };
            let e = escalate(
                team,
                lead.user.as_deref(),
                lead.role.as_deref(),
                target,
                (strategy, turn),
                now,
                &|u: &str| counts.get(u).copied().unwrap_or_default(),
            );
            if let (Some(pool), Some(turn)) = (&pool, e.turn) {
                tx.save_turn(pool, turn).await?;
            }
            let holder = lead.user.as_deref().unwrap_or("nobody");
            let why = match respond {
                true => format!("not taken by {holder} by its response deadline"),
                false => format!("missed call not called back by {holder} in time"),
            };
            let (summary, outcome) = match &e.user {
                Some(u) => (
                    format!("overdue: {why}; reassigned to {u}"),
                    format!("escalated to {u}"),
                ),
                None => (format!("overdue: {why}; {}", e.note), "overdue".to_owned()),
            };
            let note = format!(
                "overdue at {}: {}",
                utc(now),
                summary.trim_start_matches("overdue: ")
            );
            let change = Change {
                user: e.user.as_deref(),
                role: e.role.as_deref(),
                note: &note,
                escalation: Some("escalated"),
                overdue: true,
            };
            tx.reassign(timer.lead, change, now).await?;
            let kind = if respond {
                "escalated"
            } else {
                "callback_overdue"
            };
            tx.note_activity(timer.lead, kind, &summary, now).await?;
            if let Some(user) = &e.user {
                let notices = notices_for(
                    team,
                    user,
                    timer.lead,
                    "escalated",
                    &timer.event_key(),
                    Some(&why),
                );
                tx.insert_notices(&notices, now).await?;
            }
            if let Some(after) = sla.supervisor_after
                && let Some(due) =
                    deadline(team, e.user.as_deref().or(lead.user.as_deref()), now, after)
            {
                tx.set_timer(timer.lead, TIMER_SUPERVISE, due, None, now)
                    .await?;
            }
            Ok(outcome)
        }
        TIMER_SUPERVISE => {
            if !matches!(lead.status.as_str(), "new") {
                return Ok("taken".into());
            }
            let note = format!("still not taken at {}: flagged for a supervisor", utc(now));
            tx.reassign(
                timer.lead,
                Change {
                    user: None,
                    role: None,
                    note: &note,
                    escalation: Some("supervisor"),
                    overdue: true,
                },
                now,
            )
            .await?;
            tx.note_activity(
                timer.lead,
                "supervisor",
                "still not taken: flagged for a supervisor",
                now,
            )
            .await?;
            let notices: Vec<_> = team
                .supervisors
                .iter()
                .flat_map(|s| {
                    notices_for(
                        team,
                        s,
                        timer.lead,
                        "supervisor",
                        &timer.event_key(),
                        Some("still not taken"),
                    )
                })
                .collect();
            tx.insert_notices(&notices, now).await?;
            Ok("supervisor".into())
        }
        other => Ok(format!("unknown timer kind {other}")),
    }
}

impl Store {
    /// Unfired timers due by `now`, oldest first.
    pub async fn due_timers(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<DueTimer>, StoreError> {
        Ok(super::on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT id, lead_id, kind, target, due_at FROM lead_timers \
                 WHERE fired_at IS NULL AND due_at <= $1 ORDER BY due_at LIMIT $2",
            )
            .bind(now)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(DueTimer {
                        id: r.try_get(0)?,
                        lead: r.try_get(1)?,
                        kind: r.try_get(2)?,
                        target: r.try_get(3)?,
                        due: r.try_get(4)?,
                    })
                })
                .collect::<sqlx::Result<Vec<_>>>()?
        }))
    }

    /// Fire one due timer in its own transaction; `None` when another
    /// sweeper fired it first.
    pub async fn fire_timer(
        &self,
        timer: &DueTimer,
        settings: &PipelineSettings,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        macro_rules! once {
            ($tx:expr) => {{
                let tx = &mut $tx;
                if !tx.claim(timer.id, now).await? {
                    return Ok(None);
                }
                let outcome = fire(&mut *tx, timer, settings, now).await?;
                tx.timer_outcome(timer.id, &outcome).await?;
                outcome
            }};
        }
        let outcome = match self {
            Store::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let o = once!(*tx);
                tx.commit().await?;
                o
            }
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let o = once!(*tx);
                tx.commit().await?;
                o
            }
        };
        Ok(Some(outcome))
    }

    /// Arm a callback deadline for each open missed call that has none,
    /// or whose deadline already fired before another call was missed (a
    /// second missed call needs its own callback). Through the
    /// `leads_missed` partial index: only missed leads are read.
    pub async fn arm_callbacks(
        &self,
        settings: &PipelineSettings,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let Some(within) = settings.routing.policy.sla.defaults.missed_call else {
            return Ok(0);
        };
        let rows: Vec<(i64, DateTime<Utc>, Option<String>)> = super::on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT id, updated_at, assignee_user FROM leads WHERE missed \
                 AND status IN ('new', 'in_progress') AND NOT EXISTS \
                 (SELECT 1 FROM lead_timers t WHERE t.lead_id = leads.id AND t.kind = 'callback' \
                  AND (t.fired_at IS NULL OR NOT EXISTS (SELECT 1 FROM calls c WHERE c.lead_id = leads.id \
                  AND c.missed AND c.updated_at > t.fired_at))) LIMIT 500",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect::<sqlx::Result<Vec<_>>>()?
        });
        let target = settings
            .routing
            .policy
            .sla
            .escalate_to()
            .map(|a| a.to_string());
        let timers: Vec<NewTimer<'_>> = rows
            .iter()
            .filter_map(|(lead, since, user)| {
                deadline(&settings.team, user.as_deref(), *since, within)
                    .map(|due| (*lead, TIMER_CALLBACK, due, target.as_deref()))
            })
            .collect();
        if !timers.is_empty() {
            super::on_pool!(self, pool => {
                let mut conn = pool.acquire().await?;
                conn.set_timers(&timers, now).await?;
            });
        }
        Ok(timers.len())
    }
}

/// Sweep while `held` (the `timers` lease) lasts: fire due timers, arm
/// callback deadlines, sleep `sla.sweep_every`.
pub async fn sweep(store: Store, pipeline: Arc<Pipeline>, held: CancellationToken) {
    loop {
        let settings = pipeline.settings();
        let every = settings.routing.policy.sla.defaults.sweep_every;
        if let Err(e) = sweep_once(&store, &settings, &held).await {
            tracing::warn!(error = %e, "timer sweep failed; retrying");
        }
        tokio::select! {
            _ = held.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn sweep_once(
    store: &Store,
    settings: &PipelineSettings,
    held: &CancellationToken,
) -> Result<(), StoreError> {
    store.arm_callbacks(settings, Utc::now()).await?;
    let now = Utc::now();
    for timer in store.due_timers(now, SWEEP_LIMIT).await? {
        if held.is_cancelled() {
            break;
        }
        if let Some(outcome) = store.fire_timer(&timer, settings, Utc::now()).await? {
            tracing::info!(lead = timer.lead, timer = %timer.kind, %outcome, "timer fired");
            crate::metrics::inc("leadgate_timers_fired_total", &[("kind", &timer.kind)], 1);
        }
    }
    Ok(())
}

/// A lead's deadlines and timers, for `leadgate explain`.
#[derive(Debug, Clone, Default)]
pub struct LeadTimeline {
    pub queued_until: Option<DateTime<Utc>>,
    pub respond_by: Option<DateTime<Utc>>,
    pub overdue: bool,
    pub escalation: Option<String>,
    /// By due time.
    pub timers: Vec<TimerRow>,
}

#[derive(Debug, Clone)]
pub struct TimerRow {
    pub kind: String,
    pub due: DateTime<Utc>,
    pub fired: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
}

impl Store {
    pub async fn lead_timeline(&self, lead: i64) -> Result<LeadTimeline, StoreError> {
        Ok(super::on_pool!(self, pool => {
            let mut t = LeadTimeline::default();
            if let Some(r) = sqlx::query("SELECT queued_until, respond_by, overdue, escalation FROM leads WHERE id = $1")
                .bind(lead)
                .fetch_optional(pool)
                .await?
            {
                t.queued_until = r.try_get(0)?;
                t.respond_by = r.try_get(1)?;
                t.overdue = r.try_get(2)?;
                t.escalation = r.try_get(3)?;
            }
            for r in sqlx::query(
                "SELECT kind, due_at, fired_at, outcome FROM lead_timers WHERE lead_id = $1 ORDER BY due_at, id",
            )
            .bind(lead)
            .fetch_all(pool)
            .await?
            {
                t.timers.push(TimerRow {
                    kind: r.try_get(0)?,
                    due: r.try_get(1)?,
                    fired: r.try_get(2)?,
                    outcome: r.try_get(3)?,
                });
            }
            t
        }))
    }
}
