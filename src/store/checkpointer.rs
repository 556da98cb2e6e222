//! Copies the SQLite log into the database file beside the writer, not
//! inside its commits.
//!
//! SQLite checkpoints automatically in the commit that takes the log past
//! 1,000 pages: it copies every page logged since the last checkpoint into
//! the database file and syncs that file while the commit's answers, and
//! the next batch, wait. Under load that was the largest single piece of
//! the writer's serial time and the source of its tail latency
//! (BENCHMARKS.md, session 10). A PASSIVE checkpoint from another
//! connection runs alongside the writer's transactions, so this thread
//! copies the log shortly after commits; the writer's own automatic
//! checkpoint still runs at 1,000 pages (the log only starts over after a
//! checkpoint that catches up between two transactions), but it finds
//! little left to copy. The log's size bound, and so the disk-full
//! behaviour, is SQLite's default as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use tokio::sync::Notify;

/// How long after a commit the log is copied: long enough for a few
/// commits to share a copy (a hot page is copied once however often it was
/// logged), short against the writer's own checkpoint interval under load
/// (about 50 ms).
const AFTER_COMMIT: Duration = Duration::from_millis(10);

/// After a failure (a full disk, a connection that cannot be opened) the
/// thread tries again this much later; the writer's own checkpoints go on.
const AFTER_FAILURE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Shared {
    committed: Notify,
    stopped: Notify,
    stopping: AtomicBool,
}

pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start(options: SqliteConnectOptions) -> std::io::Result<Checkpointer> {
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("leadgate-ckpt".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(run(options, &theirs)),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "cannot start the log checkpointer; the writer checkpoints alone"
                    ),
                }
            })?;
        Ok(Checkpointer {
            shared,
            thread: Some(thread),
        })
    }

    /// The writer committed: the log has grown.
    pub(super) fn committed(&self) {
        self.shared.committed.notify_one();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.committed.notify_one();
        self.shared.stopped.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn run(options: SqliteConnectOptions, shared: &Shared) {
    use sqlx::ConnectOptions;
    let mut conn: Option<sqlx::SqliteConnection> = None;
    loop {
        shared.committed.notified().await;
        if !pause(shared, AFTER_COMMIT).await {
            break;
        }
        let held = match conn.as_mut() {
            Some(held) => held,
            None => match options.connect().await {
                Ok(opened) => conn.insert(opened),
                Err(e) => {
                    tracing::debug!(error = %e, "checkpointer cannot open the database");
                    if !pause(shared, AFTER_FAILURE).await {
                        break;
                    }
                    continue;
                }
            },
        };
        // PASSIVE never waits for the writer or readers: it copies what it
        // can and leaves the rest to the next round.
        let copied = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut *held)
            .await;
        if let Err(e) = copied {
            tracing::debug!(error = %e, "checkpoint failed; retrying later");
            conn = None;
            if !pause(shared, AFTER_FAILURE).await {
                break;
            }
        }
    }
    if let Some(held) = conn {
        use sqlx::Connection;
        let _ = held.close().await;
    }
}

/// Waits `how_long`, or less if the writer stops meanwhile; false then.
async fn pause(shared: &Shared, how_long: Duration) -> bool {
    if !shared.stopping.load(Ordering::Acquire) {
        tokio::select! {
            () = tokio::time::sleep(how_long) => {}
            () = shared.stopped.notified() => {}
        }
    }
    !shared.stopping.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
    use sqlx::{ConnectOptions, Connection};

    use super::Checkpointer;

    /// What was committed reaches the database file itself, not only the
    /// log, without the writing connection checkpointing: a copy of the
    /// file alone (no `-wal` beside it) holds the rows.
    #[tokio::test]
    async fn committed_pages_are_copied_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("t.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .pragma("wal_autocheckpoint", "0");
        // Kept open to the end: the last connection to close would
        // checkpoint the log itself.
        let mut writer = options.connect().await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&mut writer)
            .await
            .unwrap();
        sqlx::query(
            "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 100) \
             INSERT INTO t SELECT v FROM n",
        )
        .execute(&mut writer)
        .await
        .unwrap();

        let rows_in_file_alone = || async {
            let copy = dir.path().join("copy.db");
            let _ = std::fs::remove_file(dir.path().join("copy.db-wal"));
            std::fs::copy(dir.path().join("t.db"), &copy).ok()?;
            let mut conn = SqliteConnectOptions::new()
                .filename(&copy)
                .connect()
                .await
                .ok()?;
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
                .fetch_one(&mut conn)
                .await
                .ok()?;
            let _ = conn.close().await;
            Some(n)
        };
        assert_eq!(rows_in_file_alone().await, None, "only in the log so far");

        let checkpointer = Checkpointer::start(options).unwrap();
        checkpointer.committed();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut copied = None;
        while copied.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            copied = rows_in_file_alone().await;
        }
        assert_eq!(copied, Some(100));
        drop(checkpointer);
        writer.close().await.unwrap();
    }
}
