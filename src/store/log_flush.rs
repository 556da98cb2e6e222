//! Makes the writer's SQLite commits durable without making the writer wait
//! for the disk.
//!
//! Under `synchronous = FULL` every COMMIT waits for an fsync of the log
//! (the `-wal` file), and SQLite's one writer can do nothing meanwhile:
//! about half of each commit's time on this project's disks. Instead the
//! writer's own connection commits with `synchronous = NORMAL` (the log is
//! written, not synced) and hands the answers here; this thread syncs the
//! log and only then releases them, while the writer already runs the next
//! transaction. One sync covers every commit that finished before it
//! started, so nothing is acknowledged before it is on disk: what `full`
//! promises. (SQLite still syncs the log before, and the database file
//! after, each checkpoint.)
//!
//! A failed sync may have lost log pages that the running SQLite believes
//! written (Linux marks them clean anyway), and every later commit chains
//! onto them; after a power loss, SQLite's recovery would stop at the gap.
//! So after a failure nothing more is acknowledged until the writer has
//! copied the whole log into the database file and emptied it
//! (`wal_checkpoint(TRUNCATE)`, which syncs both): commits of the failed
//! generation are answered 503, and their senders' retries find them
//! stored.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use leadgate_connector::{Receipt, SinkError};
use tokio::sync::oneshot;

use super::health::WriterHealth;

pub(super) type Reply = oneshot::Sender<Result<Vec<Receipt>, SinkError>>;

/// Commits whose answers wait for the log to reach the disk.
struct Committed {
    generation: u64,
    answers: Vec<(Reply, Vec<Receipt>)>,
}

/// Shared between the writer and the flushing thread.
#[derive(Default)]
struct Generations {
    /// Bumped by the writer each time it has emptied the log after a
    /// failed sync; commits carry the one they were made in.
    current: AtomicU64,
    /// Commits of a generation below this are never acknowledged: a sync
    /// failed while they were in the log.
    poisoned_below: AtomicU64,
}

pub(super) struct LogFlusher {
    queue: Option<mpsc::Sender<Committed>>,
    thread: Option<std::thread::JoinHandle<()>>,
    generations: Arc<Generations>,
    /// Commits handed over, and (from the thread) commits answered.
    handed: AtomicU64,
    answered: tokio::sync::watch::Receiver<u64>,
}

impl LogFlusher {
    /// Starts the thread that syncs `log` (the database's `-wal` file).
    pub(super) fn start(log: PathBuf, health: Arc<WriterHealth>) -> std::io::Result<LogFlusher> {
        let (queue, committed) = mpsc::channel();
        let generations = Arc::new(Generations::default());
        let shared = generations.clone();
        let (answered_tx, answered) = tokio::sync::watch::channel(0);
        let thread = std::thread::Builder::new()
            .name("leadgate-logsync".into())
            .spawn(move || run(&log, committed, &shared, &health, &answered_tx))?;
        Ok(LogFlusher {
            queue: Some(queue),
            thread: Some(thread),
            generations,
            handed: AtomicU64::new(0),
            answered,
        })
    }

    /// Answers committed requests once the log holding them is on disk.
    pub(super) fn acknowledge(&self, answers: Vec<(Reply, Vec<Receipt>)>) {
        let committed = Committed {
            generation: self.generations.current.load(Ordering::Acquire),
            answers,
        };
        let Some(queue) = &self.queue else {
            return refuse(committed.answers, "the writer is stopping");
        };
        self.handed.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::SendError(committed)) = queue.send(committed) {
            refuse(
                committed.answers,
                "the thread that syncs the SQLite log has stopped",
            );
        }
    }

    /// Whether commits handed over wait for a sync.
    pub(super) fn syncing(&self) -> bool {
        *self.answered.borrow() < self.handed.load(Ordering::Acquire)
    }

    /// Resolves once every commit handed over so far is answered.
    pub(super) fn synced(&self) -> impl Future<Output = ()> + use<> {
        let handed = self.handed.load(Ordering::Acquire);
        let mut answered = self.answered.clone();
        async move {
            // An error means the thread is gone: nothing left to wait for.
            let _ = answered.wait_for(|a| *a >= handed).await;
        }
    }

    /// A sync failed since the log was last emptied: the writer must empty
    /// it (see [`LogFlusher::recovered`]) before committing anything else.
    pub(super) fn needs_recovery(&self) -> bool {
        self.generations.poisoned_below.load(Ordering::Acquire)
            > self.generations.current.load(Ordering::Acquire)
    }

    /// The log was copied into the synced database file and emptied:
    /// commits from now on start a log that owes nothing to the failed one.
    pub(super) fn recovered(&self) {
        let below = self.generations.poisoned_below.load(Ordering::Acquire);
        self.generations.current.fetch_max(below, Ordering::AcqRel);
    }
}

impl Drop for LogFlusher {
    /// Answers everything handed over before returning, so a stopping
    /// writer acknowledges what it committed.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    log: &Path,
    committed: mpsc::Receiver<Committed>,
    generations: &Generations,
    health: &WriterHealth,
    answered: &tokio::sync::watch::Sender<u64>,
) {
    let mut file: Option<(File, u64, u64)> = None;
    while let Ok(first) = committed.recv() {
        let mut pending = vec![first];
        pending.extend(committed.try_iter());
        let count = pending.len() as u64;
        // Read before syncing: a failure the writer already recovered
        // from must not spare commits made before that recovery.
        let poisoned_below = generations.poisoned_below.load(Ordering::Acquire);
        let newest = pending.iter().map(|c| c.generation).max().unwrap_or(0);
        let synced = if newest < poisoned_below {
            Ok(())
        } else {
            sync(log, &mut file)
        };
        match synced {
            Ok(()) => {
                for c in pending {
                    if c.generation < poisoned_below {
                        refuse(c.answers, POISONED);
                    } else {
                        for (reply, receipts) in c.answers {
                            let _ = reply.send(Ok(receipts));
                        }
                    }
                }
            }
            Err(e) => {
                file = None;
                generations
                    .poisoned_below
                    .fetch_max(newest + 1, Ordering::AcqRel);
                let why = format!(
                    "cannot sync the SQLite log {} to disk: {e}; nothing committed since the \
                     last sync is acknowledged, and nothing more until the log is copied \
                     into the database (see the kernel log, `dmesg`)",
                    log.display()
                );
                tracing::error!(error = %why, "log sync failed");
                health.failed(&why);
                for c in pending {
                    refuse(c.answers, &why);
                }
            }
        }
        answered.send_modify(|a| *a += count);
    }
}

const POISONED: &str = "a sync of the SQLite log failed while this commit was in it; \
                        it is acknowledged once written again";

fn refuse(answers: Vec<(Reply, Vec<Receipt>)>, why: &str) {
    let err = SinkError::Unavailable(why.to_owned());
    for (reply, _) in answers {
        let _ = reply.send(Err(err.clone()));
    }
}

/// `fdatasync` of the log. The descriptor is kept while the file stays the
/// same; a new log file (SQLite deletes it when its last connection
/// closes) also gets its directory entry synced, as SQLite does for the
/// files it creates. The log is never locked, so opening and closing it
/// here cannot drop SQLite's POSIX locks.
fn sync(log: &Path, file: &mut Option<(File, u64, u64)>) -> std::io::Result<()> {
    let on_disk = std::fs::metadata(log)?;
    let same = file
        .as_ref()
        .is_some_and(|(_, dev, ino)| (*dev, *ino) == (on_disk.dev(), on_disk.ino()));
    if !same {
        let opened = File::open(log)?;
        let meta = opened.metadata()?;
        if let Some(dir) = log.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)?.sync_all()?;
        }
        *file = Some((opened, meta.dev(), meta.ino()));
    }
    match file {
        Some((f, _, _)) => f.sync_data(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(flusher: &LogFlusher) -> oneshot::Receiver<Result<Vec<Receipt>, SinkError>> {
        let (reply, answer) = oneshot::channel();
        flusher.acknowledge(vec![(reply, Vec::new())]);
        answer
    }

    #[tokio::test]
    async fn after_a_failed_sync_nothing_is_acknowledged_until_the_log_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("leads.db-wal");
        let health = Arc::new(WriterHealth::default());
        let flusher = LogFlusher::start(log.clone(), health).unwrap();

        // No log file to sync: the sync fails, the commit is refused.
        let refused = answer(&flusher).await.unwrap().unwrap_err();
        assert!(refused.to_string().contains("cannot sync"), "{refused}");
        assert!(flusher.needs_recovery());

        // Later syncs succeed, yet commits of the failed generation chain
        // onto what may be lost: still refused.
        std::fs::write(&log, b"frames").unwrap();
        let refused = answer(&flusher).await.unwrap().unwrap_err();
        assert!(refused.to_string().contains("sync"), "{refused}");
        assert!(flusher.needs_recovery());

        flusher.recovered();
        assert!(!flusher.needs_recovery());
        assert!(answer(&flusher).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn every_answer_handed_over_is_given_after_a_sync_and_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("leads.db-wal");
        std::fs::write(&log, b"frames").unwrap();
        let flusher = LogFlusher::start(log, Arc::new(WriterHealth::default())).unwrap();
        let answers: Vec<_> = (0..100).map(|_| answer(&flusher)).collect();
        flusher.synced().await;
        assert!(!flusher.syncing());
        let answers: Vec<_> = answers
            .into_iter()
            .chain((0..100).map(|_| answer(&flusher)))
            .collect();
        drop(flusher);
        for a in answers {
            assert!(a.await.unwrap().is_ok());
        }
    }
}
