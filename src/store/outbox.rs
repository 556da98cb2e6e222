//! The delivery side of the `notifications` outbox: due rows, the claim
//! that makes one sender own a row for a while, and the outcome of a send.
//! Rows are written by the transactions that assign and escalate leads
//! (`assign.rs`, `timers.rs`).
//!
//! A claim moves the rows' `next_attempt_at` past the time a send may
//! take, in one statement that only takes rows still due: of two
//! instances (or two sweeps) racing for a row, one wins, and a row whose
//! sender died becomes due again when its claim runs out.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Store, StoreError, on_pool};

/// A notification to send, with the lead it is about.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub lead_id: i64,
    pub event: String,
    pub recipient: String,
    pub transport: String,
    pub address: String,
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
    pub attempts: i32,
    pub lead: Option<LeadSummary>,
}

/// What a message says about its lead.
#[derive(Debug, Clone, Default)]
pub struct LeadSummary {
    pub channel: String,
    pub kind: String,
    pub name: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub messenger: Option<String>,
    pub subject: Option<String>,
    pub message: Option<String>,
    pub product: Option<String>,
    pub region: Option<String>,
    pub assignee: Option<String>,
}

impl Store {
    /// Take up to `limit` rows due by `now` (oldest first) until `until`
    /// and count their attempt, in one statement: a claim is one write
    /// transaction per round, not per row, so the deliverer waits for
    /// SQLite's write lock once while the writer is busy. A row another
    /// sender claimed meanwhile fails the repeated due condition and is
    /// left to it.
    ///
    /// Whether anything is due is read first: an UPDATE takes SQLite's
    /// one write lock even when it matches nothing, and the deliverer
    /// polls every second whether or not notifications are configured, so
    /// an idle outbox would otherwise queue behind the writer under load
    /// (and make the writer's next commit wait for it).
    pub async fn claim_due_notifications(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        // Due by the time bound to `now`, e.g. `$2`.
        let due_by = |now: &str| {
            format!("sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= {now}")
        };
        let (due_now, due_then) = (due_by("$1"), due_by("$2"));
        Ok(on_pool!(self, pool => {
            let due: Option<i64> = sqlx::query_scalar(&format!(
                "SELECT id FROM notifications WHERE {due_now} LIMIT 1"
            ))
            .bind(now)
            .fetch_optional(pool)
            .await?;
            if due.is_none() {
                return Ok(Vec::new());
            }
            let claimed: Vec<i64> = sqlx::query_scalar(&format!(
                "UPDATE notifications SET next_attempt_at = $1, attempts = attempts + 1 \
                 WHERE id IN (SELECT id FROM notifications WHERE {due_then} ORDER BY next_attempt_at LIMIT $3) \
                 AND {due_then} RETURNING id"
            ))
            .bind(until)
            .bind(now)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            if claimed.is_empty() {
                return Ok(Vec::new());
            }
            let list: Vec<String> = (1..=claimed.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT n.id, n.lead_id, n.event, n.recipient, n.transport, n.address, n.note, n.created_at, \
                 n.attempts, l.id, l.channel_id, l.channel_kind, l.name, l.phone, l.email, l.messenger, \
                 l.subject, l.message, l.product, l.region, l.assignee_user \
                 FROM notifications n LEFT JOIN leads l ON l.id = n.lead_id WHERE n.id IN ({}) ORDER BY n.id",
                list.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for id in &claimed {
                q = q.bind(id);
            }
            let mut rows = Vec::with_capacity(claimed.len());
            for r in q.fetch_all(pool).await? {
                let lead = match r.try_get::<Option<i64>, _>(9)? {
                    None => None,
                    Some(_) => Some(LeadSummary {
                        channel: r.try_get(10)?,
                        kind: r.try_get(11)?,
                        name: r.try_get(12)?,
                        phone: r.try_get(13)?,
                        email: r.try_get(14)?,
                        messenger: r.try_get(15)?,
                        subject: r.try_get(16)?,
                        message: r.try_get(17)?,
                        product: r.try_get(18)?,
                        region: r.try_get(19)?,
                        assignee: r.try_get(20)?,
                    }),
                };
                rows.push(OutboxRow {
                    id: r.try_get(0)?,
                    lead_id: r.try_get(1)?,
                    event: r.try_get(2)?,
                    recipient: r.try_get(3)?,
                    transport: r.try_get(4)?,
                    address: r.try_get(5)?,
                    note: r.try_get(6)?,
                    created_at: r.try_get(7)?,
                    attempts: r.try_get(8)?,
                    lead,
                });
            }
            rows
        }))
    }

    /// Record the outcomes of finished sends, all in one transaction: 64
    /// senders each committing its own row waited for SQLite's write lock
    /// in the busy handler's sleeps, and delivery ran at ~60 rows/s.
    pub async fn record_notification_outcomes(
        &self,
        outcomes: &[NoticeOutcome],
    ) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for outcome in outcomes {
                let q = match outcome {
                    NoticeOutcome::Sent { id, at } => sqlx::query(
                        "UPDATE notifications SET sent_at = $2, last_error = NULL WHERE id = $1",
                    )
                    .bind(id)
                    .bind(at),
                    NoticeOutcome::Retry { id, error, at } => sqlx::query(
                        "UPDATE notifications SET last_error = $2, next_attempt_at = $3 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(error.as_str())
                    .bind(at),
                    NoticeOutcome::GaveUp { id, error, at } => sqlx::query(
                        "UPDATE notifications SET last_error = $2, failed_at = $3 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(error.as_str())
                    .bind(at),
                };
                q.execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}

/// How one send of an outbox row ended.
#[derive(Debug, Clone)]
pub enum NoticeOutcome {
    /// Delivered at `at`.
    Sent { id: i64, at: DateTime<Utc> },
    /// Failed; due again at `at`.
    Retry {
        id: i64,
        error: String,
        at: DateTime<Utc>,
    },
    /// Failed for good (a permanent error or too old) at `at`.
    GaveUp {
        id: i64,
        error: String,
        at: DateTime<Utc>,
    },
}

/// A lead's notification as `leadgate explain` shows it.
#[derive(Debug, Clone)]
pub struct NoticeState {
    pub event: String,
    pub recipient: String,
    pub transport: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
}

impl Store {
    pub async fn lead_notifications(&self, lead: i64) -> Result<Vec<NoticeState>, StoreError> {
        Ok(on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT event, recipient, transport, attempts, last_error, sent_at, failed_at \
                 FROM notifications WHERE lead_id = $1 ORDER BY id",
            )
            .bind(lead)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(NoticeState {
                        event: r.try_get(0)?,
                        recipient: r.try_get(1)?,
                        transport: r.try_get(2)?,
                        attempts: r.try_get(3)?,
                        last_error: r.try_get(4)?,
                        sent_at: r.try_get(5)?,
                        failed_at: r.try_get(6)?,
                    })
                })
                .collect::<sqlx::Result<Vec<_>>>()?
        }))
    }
}

impl Store {
    /// `(pending, given up)` notifications, for `leadgate status` (through
    /// the due index for the pending ones).
    pub async fn notification_backlog(&self) -> Result<(i64, i64), StoreError> {
        Ok(on_pool!(self, pool => {
            let pending: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM notifications WHERE sent_at IS NULL AND failed_at IS NULL",
            )
            .fetch_one(pool)
            .await?;
            let failed: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE failed_at IS NOT NULL")
                    .fetch_one(pool)
                    .await?;
            (pending, failed)
        }))
    }
}

impl Store {
    /// Delete sent and given-up rows finished before `before`; how many.
    pub async fn prune_notifications(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query(
                "DELETE FROM notifications WHERE (sent_at IS NOT NULL AND sent_at < $1) \
                 OR (failed_at IS NOT NULL AND failed_at < $1)",
            )
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, Utc};
    use leadgate_connector::Secret;

    use crate::config::DatabaseConfig;
    use crate::store::Store;

    /// With nothing due the deliverer's poll must not need the write lock:
    /// held elsewhere (as the writer holds it most of the time under
    /// load), the claim would otherwise wait out the busy timeout and fail.
    #[tokio::test]
    async fn an_idle_outbox_is_polled_without_the_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let url = Secret::new(format!("sqlite://{}/t.db", dir.path().display()));
        let config = DatabaseConfig {
            max_connections: 2,
            ..DatabaseConfig::default()
        };
        let store = Store::connect(&url, &config).await.unwrap();
        store.migrate().await.unwrap();
        let Store::Sqlite(pool) = &store else {
            unreachable!()
        };
        // BEGIN IMMEDIATE takes the write lock at once.
        let writer = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let now = Utc::now();
        let claimed = store
            .claim_due_notifications(now, now + Duration::seconds(60), 10)
            .await
            .expect("an idle outbox is polled while another connection writes");
        assert!(claimed.is_empty());
        writer.rollback().await.unwrap();
    }
}
