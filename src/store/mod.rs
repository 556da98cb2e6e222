//! Storage: SQLite (embedded default) or PostgreSQL, one schema, one set of
//! statements. See `docs/schema.md` for the table contract.

mod assign;
mod batch;
mod checkpointer;
mod health;
mod lease;
mod log_flush;
mod migrations;
mod outbox;
mod timers;
mod tx;
mod writer;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use leadgate_connector::{CursorUpdate, Secret};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Row, SqlitePool};

pub use health::{REFUSING_FOR, WriterHealth};
pub use lease::LeaseKeeper;
pub use outbox::{LeadSummary, NoticeOutcome, NoticeState, OutboxRow};
pub use timers::{DueTimer, LeadTimeline, sweep as sweep_timers};
pub use writer::{WriterHandle, spawn as spawn_writer};

use crate::config::{DatabaseConfig, SqliteSynchronous as SyncSetting};

/// Run `$body` with `$pool` bound to whichever pool the store has; the body
/// is compiled once per database, written once.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite($pool) => $body,
            $crate::store::Store::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL must start with sqlite:// or postgres://")]
    UnknownScheme,
    #[error("cannot create the database directory {0}: {1}")]
    Directory(String, std::io::Error),
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A lead as `leadgate leads` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadRow {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub channel: String,
    pub name: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub product: Option<String>,
    pub assignee_user: Option<String>,
    pub assignee_role: Option<String>,
    pub assigned_by: String,
    pub status: String,
}

/// The `channel_state` key under which a channel's last connector error is
/// kept (a cursor key no connector uses).
pub const LAST_ERROR_KEY: &str = "last_error";

/// One channel's recent activity, for `leadgate status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelActivity {
    pub channel: String,
    pub inbound: i64,
    pub leads: i64,
    pub invalid: i64,
    pub last_inbound: Option<DateTime<Utc>>,
    pub cursors: Vec<CursorUpdate>,
}

/// Everything `leadgate explain` tells about one inbound.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub inbound_id: i64,
    pub channel: String,
    pub kind: String,
    pub source_ref: String,
    pub received_at: DateTime<Utc>,
    pub disposition: String,
    pub reason: Option<String>,
    pub sender: Vec<String>,
    pub lead: Option<ExplainedLead>,
}

/// The lead an explained inbound created or joined.
#[derive(Debug, Clone)]
pub struct ExplainedLead {
    pub id: i64,
    pub assignee_user: Option<String>,
    pub assignee_role: Option<String>,
    pub assigned_by: String,
    pub routing_note: Option<String>,
    pub status: String,
}

impl Store {
    /// Connect (creating an SQLite file and its directory when missing).
    /// Does not migrate.
    pub async fn connect(url: &Secret, db: &DatabaseConfig) -> Result<Store, StoreError> {
        let url = url.expose();
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(match db.sqlite_synchronous {
                    SyncSetting::Full => SqliteSynchronous::Full,
                    SyncSetting::Normal => SqliteSynchronous::Normal,
                })
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true)
                // A multi-row INSERT keeps a statement journal so it can
                // roll back alone; on disk that cost a write per page.
                .pragma("temp_store", "memory")
                // Room for every padded size of the writer's statements
                // (src/store/tx.rs) besides the fixed ones.
                .statement_cache_capacity(512);
            if let Some(dir) = opts.get_filename().parent()
                && !dir.as_os_str().is_empty()
                && !dir.exists()
            {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Directory(dir.display().to_string(), e))?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(db.max_connections)
                .acquire_timeout(db.acquire_timeout.0)
                .after_release(|conn, _| Box::pin(settled(conn)))
                .connect_with(opts)
                .await?;
            Ok(Store::Sqlite(pool))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(db.max_connections)
                .acquire_timeout(db.acquire_timeout.0)
                .connect(url)
                .await?;
            Ok(Store::Postgres(pool))
        } else {
            Err(StoreError::UnknownScheme)
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(pool) => migrations::sqlite().await?.run(pool).await?,
            Store::Postgres(pool) => migrations::postgres().await?.run(pool).await?,
        }
        Ok(())
    }

    /// Whether the database answers now (for `/readyz`).
    pub async fn ping(&self) -> bool {
        // An unreachable server that drops packets would hold the probe
        // until the kernel gives up on the connection.
        let probe =
            async { on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.is_ok()) };
        tokio::time::timeout(Duration::from_secs(2), probe)
            .await
            .unwrap_or(false)
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    /// The saved cursors of a channel.
    pub async fn cursors(&self, channel: &str) -> Result<Vec<CursorUpdate>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query("SELECT cursor_key, value FROM channel_state WHERE channel_id = $1 ORDER BY cursor_key")
                .bind(channel)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| Ok(CursorUpdate { key: r.try_get(0)?, value: r.try_get(1)? }))
                .collect()
        })
    }

    /// Per-channel counts since `since`, and every channel's cursors.
    pub async fn activity(&self, since: DateTime<Utc>) -> Result<Vec<ChannelActivity>, StoreError> {
        let rows = on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT channel_id, COUNT(*), \
                 SUM(CASE WHEN disposition = 'lead_created' THEN 1 ELSE 0 END), \
                 SUM(CASE WHEN disposition = 'invalid' THEN 1 ELSE 0 END), MAX(received_at) \
                 FROM inbound_messages WHERE received_at >= $1 GROUP BY channel_id ORDER BY channel_id",
            )
            .bind(since)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| -> sqlx::Result<_> {
                    Ok(ChannelActivity {
                        channel: r.try_get(0)?,
                        inbound: r.try_get(1)?,
                        leads: r.try_get::<Option<i64>, _>(2)?.unwrap_or(0),
                        invalid: r.try_get::<Option<i64>, _>(3)?.unwrap_or(0),
                        last_inbound: r.try_get(4)?,
                        cursors: Vec::new(),
                    })
                })
                .collect::<sqlx::Result<Vec<_>>>()?
        });
        let mut out = rows;
        for a in &mut out {
            a.cursors = self.cursors(&a.channel).await?;
        }
        Ok(out)
    }

    /// Open leads, and those of them flagged as missed calls.
    pub async fn open_leads(&self) -> Result<(i64, i64), StoreError> {
        on_pool!(self, pool => {
            let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM leads WHERE status IN ('new', 'in_progress')")
                .fetch_one(pool)
                .await?;
            let missed: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM leads WHERE status IN ('new', 'in_progress') AND missed = $1",
            )
            .bind(true)
            .fetch_one(pool)
            .await?;
            Ok((open, missed))
        })
    }

    /// Remember a channel's last connector error where `leadgate status`
    /// shows it (beside the cursors, under [`LAST_ERROR_KEY`]), with its time.
    pub async fn record_channel_error(&self, channel: &str, error: &str) -> Result<(), StoreError> {
        let value = format!("{} {error}", Utc::now().format("%Y-%m-%d %H:%M:%S"));
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO channel_state (channel_id, cursor_key, value, updated_at) VALUES ($1, $4, $2, $3) \
                 ON CONFLICT (channel_id, cursor_key) DO UPDATE SET value = $2, updated_at = $3",
            )
            .bind(channel)
            .bind(value)
            .bind(Utc::now())
            .bind(LAST_ERROR_KEY)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn recent_leads(&self, limit: i64) -> Result<Vec<LeadRow>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT id, created_at, channel_id, name, phone, email, product, assignee_user, assignee_role, \
                 assigned_by, status FROM leads ORDER BY id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(LeadRow {
                        id: r.try_get(0)?,
                        created_at: r.try_get(1)?,
                        channel: r.try_get(2)?,
                        name: r.try_get(3)?,
                        phone: r.try_get(4)?,
                        email: r.try_get(5)?,
                        product: r.try_get(6)?,
                        assignee_user: r.try_get(7)?,
                        assignee_role: r.try_get(8)?,
                        assigned_by: r.try_get(9)?,
                        status: r.try_get(10)?,
                    })
                })
                .collect()
        })
    }

    pub async fn explain(&self, inbound_id: i64) -> Result<Option<Explanation>, StoreError> {
        on_pool!(self, pool => {
            let Some(r) = sqlx::query(
                "SELECT id, channel_id, channel_kind, source_ref, received_at, disposition, reason, lead_id, \
                 sender_name, sender_phone, sender_email FROM inbound_messages WHERE id = $1",
            )
            .bind(inbound_id)
            .fetch_optional(pool)
            .await?
            else {
                return Ok(None);
            };
            let lead_id: Option<i64> = r.try_get(7)?;
            let sender = [8, 9, 10]
                .iter()
                .filter_map(|i| r.try_get::<Option<String>, _>(*i).ok().flatten())
                .collect();
            let lead = match lead_id {
                None => None,
                Some(id) => sqlx::query(
                    "SELECT id, assignee_user, assignee_role, assigned_by, routing_note, status FROM leads WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(pool)
                .await?
                .map(|l| -> sqlx::Result<_> {
                    Ok(ExplainedLead {
                        id: l.try_get(0)?,
                        assignee_user: l.try_get(1)?,
                        assignee_role: l.try_get(2)?,
                        assigned_by: l.try_get(3)?,
                        routing_note: l.try_get(4)?,
                        status: l.try_get(5)?,
                    })
                })
                .transpose()?,
            };
            Ok(Some(Explanation {
                inbound_id: r.try_get(0)?,
                channel: r.try_get(1)?,
                kind: r.try_get(2)?,
                source_ref: r.try_get(3)?,
                received_at: r.try_get(4)?,
                disposition: r.try_get(5)?,
                reason: r.try_get(6)?,
                sender,
                lead,
            }))
        })
    }
}

/// Whether an SQLite connection may go back to the pool: not while sqlx
/// still counts it inside a transaction.
///
/// A write that fails with SQLITE_FULL or an I/O error may be rolled back
/// by SQLite itself; the ROLLBACK that sqlx issues when the transaction is
/// dropped then fails ("no transaction is active"), and sqlx keeps the
/// connection's transaction depth at 1 for good. Back in the pool, every
/// later `BEGIN` on it failed ("attempted to call begin_with at non-zero
/// transaction depth"), so after a full disk the daemon answered 503 until
/// restarted, however much room there was again. Such a connection is
/// closed instead and the pool opens a fresh one.
async fn settled(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::{Connection, TransactionManager};
    // The rollback a dropped transaction queued runs before the ping.
    conn.ping().await?;
    let depth = <sqlx::Sqlite as sqlx::Database>::TransactionManager::get_transaction_depth(conn);
    if depth > 0 {
        tracing::debug!(
            depth,
            "an SQLite connection could not roll back its transaction; closed"
        );
    }
    Ok(depth == 0)
}

/// Where an SQLite URL points, for messages.
pub fn describe_url(url: &Secret) -> String {
    let u = url.expose();
    match u.split_once("://") {
        Some(("sqlite", path)) => format!(
            "sqlite {}",
            Path::new(path.split('?').next().unwrap_or(path)).display()
        ),
        Some((scheme, rest)) => {
            // Never print credentials: keep host and database only.
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{}", host.split('?').next().unwrap_or(host))
        }
        None => "database".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a write failing with SQLITE_FULL does behind sqlx's back: SQLite
    /// ends the transaction itself, so the ROLLBACK sqlx sends when the
    /// transaction is dropped fails. The connection (the only one) must
    /// still serve the next transaction.
    #[tokio::test]
    async fn a_connection_whose_rollback_failed_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let url = Secret::new(format!("sqlite://{}/t.db", dir.path().display()));
        let config = DatabaseConfig {
            max_connections: 1,
            ..DatabaseConfig::default()
        };
        let Store::Sqlite(pool) = Store::connect(&url, &config).await.unwrap() else {
            unreachable!()
        };
        for _ in 0..2 {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
            sqlx::query("ROLLBACK").execute(&mut *tx).await.unwrap();
        }
        let mut tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .expect("a connection that can begin a transaction");
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
}
