//! The group-commit writer: one task owns all writes. Requests queue while a
//! transaction commits; the next transaction takes everything queued (up to
//! `max_batch` items), so under load one fsync covers hundreds of items and
//! at low load nothing waits for a batch to fill.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use leadgate_connector::{
    CallDirection, CallEvent, CallPhase, ChannelId, CursorUpdate, Dedupe, Disposition,
    IdentityKind, Receipt, SinkError, fields,
};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::Store;
use super::assign::Assignment;
use super::batch::{Applied, TxState, apply_all};
use super::checkpointer::Checkpointer;
use super::health::{IDLE_TURN, WriterHealth};
use super::log_flush::{LogFlusher, Reply};
use super::tx::{NewInbound, NewLead, StoredCall, Tx};
use crate::calls::CallRecord;
use crate::pipeline::Prepared;

struct WriteRequest {
    channel: Option<ChannelId>,
    items: Vec<Prepared>,
    cursor: Option<CursorUpdate>,
    reply: Reply,
}

/// How connectors' items reach the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<WriteRequest>,
    health: Arc<WriterHealth>,
}

impl WriterHandle {
    pub fn health(&self) -> Arc<WriterHealth> {
        self.health.clone()
    }

    pub async fn write(
        &self,
        channel: Option<ChannelId>,
        items: Vec<Prepared>,
        cursor: Option<CursorUpdate>,
    ) -> Result<Vec<Receipt>, SinkError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(WriteRequest {
                channel,
                items,
                cursor,
                reply,
            })
            .await
            .map_err(|_| SinkError::ShuttingDown)?;
        answer.await.map_err(|_| SinkError::ShuttingDown)?
    }
}

/// Start the writer; it runs until every [`WriterHandle`] is dropped and the
/// queue is drained, so in-flight work is committed on shutdown.
pub fn spawn(store: Store, max_batch: usize) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(max_batch.max(64) * 4);
    let health = Arc::new(WriterHealth::default());
    let recorder = health.clone();
    // The writer gets a thread of its own: on the shared runtime each of a
    // commit's dozen round trips to the database waited behind the request
    // handlers in the run queue, which made the one serial part of the
    // daemon slower the busier it was.
    let (stopped, on_stop) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("leadgate-writer".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(run(store, rx, max_batch.max(1), recorder.clone())),
                // Dropping `rx` makes every write fail with ShuttingDown, so
                // the daemon stops instead of accepting what it cannot store.
                Err(e) => tracing::error!(error = %e, "cannot start the writer's runtime"),
            }
            recorder.stopped();
            drop(stopped);
        });
    if let Err(e) = thread {
        tracing::error!(error = %e, "cannot start the writer thread");
    }
    let task = tokio::spawn(async move {
        let _ = on_stop.await;
    });
    (WriterHandle { tx, health }, task)
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<WriteRequest>,
    max_batch: usize,
    health: Arc<WriterHealth>,
) {
    let mut log = FailureLog::default();
    let mut conn = WriterConnection {
        sqlite: None,
        flusher: None,
        checkpointer: None,
        health: health.clone(),
    };
    let health = &*health;
    loop {
        let first = match tokio::time::timeout(IDLE_TURN, rx.recv()).await {
            Ok(Some(first)) => first,
            Ok(None) => break,
            Err(_idle) => {
                health.turned();
                continue;
            }
        };
        let mut items = first.items.len();
        let mut batch = vec![first];
        take_queued(&mut rx, &mut batch, &mut items, max_batch);
        // A small batch committed while the last one's sync runs would
        // be answered only after the next sync anyway; committing it then
        // costs the log its hot pages again (and a checkpoint sooner). So
        // it waits for that sync, collecting what arrives meanwhile. A
        // batch this size or larger goes at once: under load the disk syncs
        // one batch while the next is written.
        if let Some(flusher) = &conn.flusher {
            while items < COMMIT_DURING_SYNC && flusher.syncing() {
                tokio::select! {
                    () = flusher.synced() => break,
                    next = rx.recv() => match next {
                        Some(next) => {
                            items += next.items.len();
                            batch.push(next);
                        }
                        None => break,
                    },
                }
            }
            take_queued(&mut rx, &mut batch, &mut items, max_batch);
        }
        commit(&store, &mut conn, batch, health, &mut log).await;
    }
    tracing::debug!("writer drained and stopped");
}

/// Items that make a batch worth committing while the previous one's
/// sync is still running (see `run`).
const COMMIT_DURING_SYNC: usize = 16;

fn take_queued(
    rx: &mut mpsc::Receiver<WriteRequest>,
    batch: &mut Vec<WriteRequest>,
    items: &mut usize,
    max_batch: usize,
) {
    while *items < max_batch {
        match rx.try_recv() {
            Ok(next) => {
                *items += next.items.len();
                batch.push(next);
            }
            Err(_) => break,
        }
    }
}

/// Logs failed commits without flooding: the first of a run of failures at
/// once, then one line per [`FailureLog::EVERY`] saying how many failed
/// meanwhile (a full disk fails every commit, hundreds a second), and the
/// recovery. A store that flaps (a nearly full disk where small commits
/// still fit) gets the same allowance: a success does not reopen it.
#[derive(Default)]
struct FailureLog {
    last_logged: Option<Instant>,
    unlogged: u64,
    /// A failure line went out and no recovery line since.
    announced: bool,
    last_recovery_logged: Option<Instant>,
}

impl FailureLog {
    const EVERY: Duration = Duration::from_secs(10);

    fn failed(&mut self, why: &str, requests: usize) {
        if self
            .last_logged
            .is_some_and(|at| at.elapsed() < Self::EVERY)
        {
            self.unlogged += 1;
            return;
        }
        tracing::error!(
            error = %why,
            requests,
            failed_since_last_report = self.unlogged,
            "commit failed; nothing acknowledged"
        );
        self.last_logged = Some(Instant::now());
        self.unlogged = 0;
        self.announced = true;
    }

    fn committed(&mut self) {
        // Failures counted but not logged still get their recovery line,
        // at most once per EVERY so that a flapping store stays quiet.
        let quiet_failures = self.unlogged > 0
            && self
                .last_recovery_logged
                .is_none_or(|at| at.elapsed() >= Self::EVERY);
        if std::mem::take(&mut self.announced) || quiet_failures {
            tracing::info!(
                failed_since_last_report = self.unlogged,
                "commits succeed again"
            );
            self.unlogged = 0;
            self.last_recovery_logged = Some(Instant::now());
        }
    }
}

async fn commit(
    store: &Store,
    conn: &mut WriterConnection,
    batch: Vec<WriteRequest>,
    health: &WriterHealth,
    log: &mut FailureLog,
) {
    let started = std::time::Instant::now();
    match write_all(store, conn, &batch).await {
        Ok(receipts) => {
            let items = batch.iter().map(|r| r.items.len()).sum();
            crate::metrics::commit(items, started.elapsed().as_secs_f64(), true);
            health.committed();
            log.committed();
            let answers = batch
                .into_iter()
                .zip(receipts)
                .map(|(req, r)| {
                    count(&req, &r);
                    (req.reply, r)
                })
                .collect();
            conn.acknowledge(answers);
        }
        Err(e) if batch.len() > 1 && !is_unavailable(&e) => {
            // One request broke the transaction (a constraint, a race with
            // another instance): commit the others without it.
            tracing::warn!(error = %e, "batch failed; retrying its requests one by one");
            for req in batch {
                let result = write_all(store, conn, std::slice::from_ref(&req)).await;
                crate::metrics::commit(
                    req.items.len(),
                    started.elapsed().as_secs_f64(),
                    result.is_ok(),
                );
                match &result {
                    Ok(receipts) => {
                        count(&req, &receipts[0]);
                        health.committed();
                        log.committed();
                    }
                    // The store itself failing, not this one request.
                    Err(e) if is_unavailable(e) => {
                        let why = describe(store, e);
                        health.failed(&why);
                        log.failed(&why, 1);
                    }
                    Err(e) => tracing::warn!(error = %e, "one request failed; not acknowledged"),
                }
                match result {
                    Ok(mut r) => conn.acknowledge(vec![(req.reply, r.remove(0))]),
                    Err(e) => {
                        let _ = req.reply.send(Err(unavailable(store, &e)));
                    }
                }
            }
        }
        Err(e) => {
            let why = describe(store, &e);
            health.failed(&why);
            log.failed(&why, batch.len());
            crate::metrics::commit(0, started.elapsed().as_secs_f64(), false);
            let err = SinkError::Unavailable(why);
            for req in batch {
                let _ = req.reply.send(Err(err.clone()));
            }
        }
    }
}

/// Count what a committed request stored.
fn count(req: &WriteRequest, receipts: &[Receipt]) {
    use crate::metrics;
    for (item, receipt) in req.items.iter().zip(receipts) {
        let channel = item.inbound.channel.as_str();
        metrics::inc(
            "leadgate_inbound_total",
            &[
                ("channel", channel),
                ("disposition", receipt.disposition.as_str()),
            ],
            1,
        );
        if receipt.disposition == Disposition::LeadCreated {
            metrics::inc("leadgate_leads_created_total", &[("channel", channel)], 1);
            let by = item.assigned_by.to_string();
            metrics::inc(
                "leadgate_routing_decisions_total",
                &[("assigned_by", &by)],
                1,
            );
        }
        let now = metrics::now_seconds();
        metrics::set(
            "leadgate_channel_last_inbound_timestamp_seconds",
            &[("channel", channel)],
            now,
        );
        let received = item.inbound.received_at.timestamp_millis() as f64 / 1000.0;
        metrics::set(
            "leadgate_channel_lag_seconds",
            &[("channel", channel)],
            (now - received).max(0.0),
        );
    }
}

fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
    ) || e
        .as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| {
            // PostgreSQL: connection, resource and shutdown classes; SQLite:
            // busy, locked, full, read-only, I/O (extended codes keep the
            // primary code in the low byte).
            ["08", "53", "57"].iter().any(|c| code.starts_with(c))
                || code
                    .parse::<u32>()
                    .is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 8 | 10 | 13 | 14))
        })
}

fn unavailable(store: &Store, e: &sqlx::Error) -> SinkError {
    SinkError::Unavailable(describe(store, e))
}

/// A failed commit as the log and the senders' refusals tell it. SQLite's
/// own words name neither the file nor the way out ("database or disk is
/// full", "disk I/O error"), so a commit that could not write the database
/// file says which file, why and what to do.
fn describe(store: &Store, e: &sqlx::Error) -> String {
    let Store::Sqlite(pool) = store else {
        return e.to_string();
    };
    let Some(code) = e
        .as_database_error()
        .and_then(|d| d.code())
        .and_then(|c| c.parse::<u32>().ok())
    else {
        return e.to_string();
    };
    let options = pool.connect_options();
    let file = options.get_filename();
    const MEANWHILE: &str = "nothing is acknowledged meanwhile (webhooks and forms are \
                             answered 503, pollers keep their place and retry)";
    // Primary codes: 8 READONLY, 10 IOERR, 13 FULL, 14 CANTOPEN.
    let why = match code & 0xff {
        8 | 10 | 13 | 14 if on_read_only_mount(file) => format!(
            "the filesystem holding it is read-only (ext4 turns itself read-only after \
             an I/O error: see the kernel log, `dmesg`); {MEANWHILE}; if it has to be \
             unmounted to be repaired, stop leadgate first and start it after"
        ),
        13 => format!(
            "the filesystem holding it is full: free space there or move the database \
             to a larger one; {MEANWHILE}, and writing resumes by itself once there is room"
        ),
        8 => format!(
            "SQLite opened it read-only (the file or its folder was not writable when \
             leadgate started): make both writable and restart leadgate; {MEANWHILE}"
        ),
        10 => {
            format!("the disk failed a read or a write: see the kernel log (`dmesg`); {MEANWHILE}")
        }
        14 => format!(
            "SQLite cannot open or create the database's files (the database and its \
             `-wal` and `-shm` files beside it): check that folder; {MEANWHILE}"
        ),
        _ => return e.to_string(),
    };
    format!(
        "cannot write the SQLite database {}: {e}: {why}",
        file.display()
    )
}

/// Whether the filesystem holding `file` is read-only now, by
/// `/proc/self/mountinfo`: `ro` among the mount's or the filesystem's
/// options, or ext4's `emergency_ro` (set after an error under
/// `errors=remount-ro`; the options may still say `rw` then). Opening the
/// database file to find out is no option: closing any descriptor of it
/// drops the process's POSIX locks on it, SQLite's among them.
fn on_read_only_mount(file: &std::path::Path) -> bool {
    let Some(dir) = file.parent().and_then(|d| {
        std::fs::canonicalize(if d.as_os_str().is_empty() {
            ".".as_ref()
        } else {
            d
        })
        .ok()
    }) else {
        return false;
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    // `36 35 98:0 /root /mount/point rw,noatime shared:1 - ext4 /dev/x rw,errors=…`
    let mut best: Option<(usize, bool)> = None;
    for line in mounts.lines() {
        let (mount, fs) = line.split_once(" - ").unwrap_or((line, ""));
        let fields: Vec<&str> = mount.split(' ').collect();
        let (Some(point), Some(options)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        let point = point
            .replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\134", "\\");
        let depth = point.len();
        if !dir.starts_with(&point) || best.is_some_and(|(d, _)| d > depth) {
            continue;
        }
        let super_options = fs.split(' ').nth(2).unwrap_or("");
        let ro = options.split(',').any(|o| o == "ro")
            || super_options
                .split(',')
                .any(|o| o == "ro" || o == "emergency_ro");
        best = Some((depth, ro));
    }
    best.is_some_and(|(_, ro)| ro)
}

/// How long a PostgreSQL commit may take before its batch is refused.
///
/// A partition (packets dropped, nothing closed) left a commit waiting for
/// the kernel to give up on the connection, about 15 minutes, and every
/// channel behind the one writer with it. Refused items are retried by
/// their senders; one whose commit did land after all is then recognised
/// as a duplicate. Healthy commits of a full batch take milliseconds; an
/// item that waits for a stuck commit and then fails its own is answered
/// within two deadlines, under the 5 s a webhook sender waits.
const POSTGRES_COMMIT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// The writer's own SQLite connection, outside the pool and kept from one
/// commit to the next.
///
/// Taken from the pool for each commit, the writer got whichever connection
/// was idle: each BEGIN then found the database changed by another
/// connection, so SQLite dropped that connection's page cache and read the
/// indexes' pages again, and each statement was prepared once per
/// connection; acquiring and releasing cost two more round trips to the
/// connection's thread. Outside the pool it takes none of the connections
/// the rest of the daemon shares (`max_connections` may be 1). A connection
/// whose failed transaction cannot be rolled back is closed, and the next
/// commit opens another.
///
/// Under `synchronous = FULL` the connection itself commits with `NORMAL`
/// and a [`LogFlusher`] syncs the log before the answers go out, so the
/// writer runs its next transaction while the disk works; a
/// [`Checkpointer`] copies the log into the database file beside it.
struct WriterConnection {
    sqlite: Option<sqlx::SqliteConnection>,
    flusher: Option<LogFlusher>,
    checkpointer: Option<Checkpointer>,
    health: Arc<WriterHealth>,
}

impl WriterConnection {
    /// Answers committed requests: at once, or once the log is synced.
    fn acknowledge(&self, answers: Vec<(Reply, Vec<Receipt>)>) {
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.committed();
        }
        match &self.flusher {
            Some(flusher) => flusher.acknowledge(answers),
            None => {
                for (reply, receipts) in answers {
                    let _ = reply.send(Ok(receipts));
                }
            }
        }
    }

    async fn open_sqlite(
        &mut self,
        pool: &sqlx::SqlitePool,
    ) -> sqlx::Result<sqlx::SqliteConnection> {
        use sqlx::ConnectOptions;
        let mut opened = pool.connect_options().connect().await?;
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut opened)
            .await?;
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut opened)
            .await?;
        let file: String =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_one(&mut opened)
                .await?;
        // FULL (2) or EXTRA (3) on a database file in WAL mode; an
        // in-memory database has no log to sync.
        if journal.eq_ignore_ascii_case("wal") && synchronous >= 2 && !file.is_empty() {
            if self.flusher.is_none() {
                let log = std::path::PathBuf::from(format!("{file}-wal"));
                self.flusher =
                    Some(LogFlusher::start(log, self.health.clone()).map_err(sqlx::Error::Io)?);
            }
            if self.checkpointer.is_none() {
                let options = (*pool.connect_options()).clone();
                self.checkpointer = Checkpointer::start(options)
                    .inspect_err(|e| {
                        tracing::warn!(error = %e, "cannot start the log checkpointer; the writer checkpoints alone")
                    })
                    .ok();
            }
            sqlx::query("PRAGMA synchronous = NORMAL")
                .execute(&mut opened)
                .await?;
        }
        Ok(opened)
    }
}

/// After a failed sync of the log: copy it into the database file and
/// empty it before anything else is committed (see `log_flush`).
async fn recover_log(conn: &mut sqlx::SqliteConnection) -> sqlx::Result<()> {
    let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(&mut *conn)
        .await?;
    if busy != 0 {
        return Err(sqlx::Error::Io(std::io::Error::other(
            "a sync of the SQLite log failed and the log could not be copied into the \
             database yet (readers hold it); nothing is acknowledged meanwhile",
        )));
    }
    Ok(())
}

async fn write_all(
    store: &Store,
    conn: &mut WriterConnection,
    batch: &[WriteRequest],
) -> sqlx::Result<Vec<Vec<Receipt>>> {
    if let Store::Postgres(_) = store {
        return tokio::time::timeout(
            POSTGRES_COMMIT_DEADLINE,
            write_unbounded(store, conn, batch),
        )
        .await
        .unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "PostgreSQL did not confirm the commit within {} s",
                    POSTGRES_COMMIT_DEADLINE.as_secs()
                ),
            )))
        });
    }
    write_unbounded(store, conn, batch).await
}

async fn write_unbounded(
    store: &Store,
    conn: &mut WriterConnection,
    batch: &[WriteRequest],
) -> sqlx::Result<Vec<Vec<Receipt>>> {
    match store {
        Store::Sqlite(pool) => {
            let mut held = match conn.sqlite.take() {
                Some(held) => held,
                None => conn.open_sqlite(pool).await?,
            };
            let result = match &conn.flusher {
                Some(flusher) if flusher.needs_recovery() => match recover_log(&mut held).await {
                    Ok(()) => {
                        flusher.recovered();
                        write_sqlite(&mut held, batch).await
                    }
                    Err(e) => Err(e),
                },
                _ => write_sqlite(&mut held, batch).await,
            };
            if result.is_ok() || super::settled(&mut held).await.unwrap_or(false) {
                conn.sqlite = Some(held);
            }
            result
        }
        Store::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            let receipts = write_in(&mut *tx, batch).await?;
            tx.commit().await?;
            Ok(receipts)
        }
    }
}

async fn write_sqlite(
    conn: &mut sqlx::SqliteConnection,
    batch: &[WriteRequest],
) -> sqlx::Result<Vec<Vec<Receipt>>> {
    use sqlx::Connection;
    // IMMEDIATE: take SQLite's write lock up front, so the ids the
    // transaction allocates stay free and no other writer makes it fail
    // half-way with a stale snapshot.
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let receipts = write_in(&mut *tx, batch).await?;
    tx.commit().await?;
    Ok(receipts)
}

async fn write_in<T: Tx>(tx: &mut T, batch: &[WriteRequest]) -> sqlx::Result<Vec<Vec<Receipt>>> {
    let now = Utc::now();
    let items: Vec<&Prepared> = batch.iter().flat_map(|r| &r.items).collect();
    let mut receipts = apply_all(tx, &items, now).await?.into_iter();
    let mut all = Vec::with_capacity(batch.len());
    for req in batch {
        all.push(receipts.by_ref().take(req.items.len()).collect());
        if let (Some(cursor), Some(channel)) = (&req.cursor, &req.channel) {
            tx.save_cursor(channel.as_str(), &cursor.key, &cursor.value, now)
                .await?;
        }
    }
    Ok(all)
}

/// identify → route → store for one item, inside the open transaction.
pub(super) async fn apply<T: Tx>(
    tx: &mut T,
    item: &Prepared,
    state: &mut TxState,
) -> sqlx::Result<Applied> {
    let inbound = &item.inbound;
    let channel = inbound.channel.as_str();
    let now = state.now;
    let done = |receipt, contact| Applied { receipt, contact };

    // A connector-made unique ref (no provider id) cannot repeat: the
    // content window below is what recognises a repeated post.
    if inbound.dedupe == Dedupe::SourceRef
        && let Some((id, lead)) = tx.find_inbound(channel, &inbound.source_ref).await?
    {
        return Ok(done(receipt(id, Disposition::Duplicate, lead), None));
    }
    let row = |disposition, reason, lead, contact| {
        inbound_row(item, now, disposition, reason, lead, contact)
    };

    if let Some(key) = &item.content_key
        && let Some((first, lead)) = tx
            .find_same_content(channel, key, item.dedupe_since)
            .await?
    {
        let reason = format!("same content as inbound #{first} within the dedupe window");
        let id = state
            .insert_inbound(tx, row(Disposition::Duplicate, Some(&reason), lead, None))
            .await?;
        return Ok(done(receipt(id, Disposition::Duplicate, lead), None));
    }
    if let Some((disposition, reason)) = &item.verdict {
        let id = state
            .insert_inbound(tx, row(*disposition, Some(reason), None, None))
            .await?;
        return Ok(done(receipt(id, *disposition, None), None));
    }
    if let Some(event) = &inbound.call {
        if let Some(call) = tx.find_call(channel, &event.call_id).await? {
            let contact = call.contact;
            let r = merge_call(tx, item, event, call, state).await?;
            return Ok(done(r, contact));
        }
        if event.direction == CallDirection::Outbound {
            return outbound_call(tx, item, event, state).await;
        }
        if event.phase == CallPhase::Recording {
            // A recording names no caller: without its call there is
            // nothing to attach it to, and it is no lead by itself.
            let reason = format!("recording of call {} that was never seen", event.call_id);
            let id = state
                .insert_inbound(tx, row(Disposition::NotLead, Some(&reason), None, None))
                .await?;
            return Ok(done(receipt(id, Disposition::NotLead, None), None));
        }
    }

    let Identified {
        contact,
        new: new_contact,
    } = identify(tx, item, state).await?;
    let mut open_lead = None;
    for reference in &inbound.thread_refs {
        if let Some(lead) = tx.find_lead_of(channel, reference).await? {
            open_lead = Some((lead, format!("continues {reference}")));
            break;
        }
    }
    if open_lead.is_none()
        && !new_contact
        && let Some(contact) = contact
        && let Some(lead) = tx
            .find_open_lead(contact, channel, item.activity_since)
            .await?
    {
        open_lead = Some((
            lead,
            format!("contact #{contact} has open lead #{lead} on this channel"),
        ));
    }
    let (id, disposition, lead) = match open_lead {
        Some((lead, reason)) => {
            let id = state
                .insert_inbound(
                    tx,
                    row(
                        Disposition::ActivityAdded,
                        Some(&reason),
                        Some(lead),
                        contact,
                    ),
                )
                .await?;
            let summary = item.text.as_deref().or(inbound.subject.as_deref());
            let kind = if inbound.call.is_some() {
                "call"
            } else {
                "message"
            };
            tx.add_activity(lead, id, kind, summary, now).await?;
            (id, Disposition::ActivityAdded, lead)
        }
        None => {
            let lead = create_lead(tx, item, contact, state).await?;
            let id = state
                .insert_inbound(tx, row(Disposition::LeadCreated, None, Some(lead), contact))
                .await?;
            (id, Disposition::LeadCreated, lead)
        }
    };
    if let Some(event) = &inbound.call {
        // The first event of an inbound call: its record starts here.
        let mut call = StoredCall {
            id: 0,
            lead: Some(lead),
            contact,
            record: CallRecord::new(event.direction),
        };
        call.record.merge(
            event,
            item.fields.get(fields::CALLED_LINE).map(String::as_str),
            now,
        );
        tx.insert_call(
            channel,
            &event.call_id,
            &call,
            item.first(IdentityKind::Phone),
            now,
        )
        .await?;
        settle_missed(tx, &call, false, now).await?;
    }
    Ok(done(receipt(id, disposition, Some(lead)), contact))
}

pub(super) fn receipt(inbound_id: i64, disposition: Disposition, lead_id: Option<i64>) -> Receipt {
    Receipt {
        inbound_id,
        disposition,
        lead_id,
    }
}

/// A later event of a known call: fold it into the call's record and keep
/// the lead's missed flag in step with it.
async fn merge_call<T: Tx>(
    tx: &mut T,
    item: &Prepared,
    event: &CallEvent,
    mut call: StoredCall,
    state: &mut TxState,
) -> sqlx::Result<Receipt> {
    let now = state.now;
    let was_missed = call.record.missed();
    call.record.merge(
        event,
        item.fields.get(fields::CALLED_LINE).map(String::as_str),
        now,
    );
    tx.update_call(&call, now).await?;
    settle_missed(tx, &call, was_missed, now).await?;
    let reason = format!("event {} of call {}", call.record.events, event.call_id);
    let id = state
        .insert_inbound(
            tx,
            inbound_row(
                item,
                now,
                Disposition::CallUpdated,
                Some(&reason),
                call.lead,
                call.contact,
            ),
        )
        .await?;
    Ok(receipt(id, Disposition::CallUpdated, call.lead))
}

/// Set or clear the lead's missed flag after the call's record changed. An
/// inbound call that was answered also settles earlier missed calls of the
/// same contact: they talked.
async fn settle_missed<T: Tx>(
    tx: &mut T,
    call: &StoredCall,
    was_missed: bool,
    now: chrono::DateTime<Utc>,
) -> sqlx::Result<()> {
    let Some(lead) = call.lead else { return Ok(()) };
    let missed = call.record.missed();
    if missed || was_missed {
        tx.set_lead_missed(lead, missed, call.record.wait_seconds(), now)
            .await?;
    }
    if call.record.answered == Some(true)
        && let Some(contact) = call.contact
    {
        tx.clear_missed(contact, now).await?;
    }
    Ok(())
}

/// An employee calling out: an activity on the callee's lead (a callback
/// settles their missed calls), never a new lead.
async fn outbound_call<T: Tx>(
    tx: &mut T,
    item: &Prepared,
    event: &CallEvent,
    state: &mut TxState,
) -> sqlx::Result<Applied> {
    let now = state.now;
    let contact = identify(tx, item, state).await?.contact;
    let lead = match contact {
        Some(c) => tx.latest_lead_of(c).await?,
        None => None,
    };
    let mut call = StoredCall {
        id: 0,
        lead,
        contact,
        record: CallRecord::new(CallDirection::Outbound),
    };
    call.record.merge(
        event,
        item.fields.get(fields::CALLED_LINE).map(String::as_str),
        now,
    );
    tx.insert_call(
        item.inbound.channel.as_str(),
        &event.call_id,
        &call,
        item.first(IdentityKind::Phone),
        now,
    )
    .await?;
    let Some(lead) = lead else {
        let id = state
            .insert_inbound(
                tx,
                inbound_row(
                    item,
                    now,
                    Disposition::Outgoing,
                    Some("outgoing call to a number with no lead"),
                    None,
                    contact,
                ),
            )
            .await?;
        return Ok(Applied {
            receipt: receipt(id, Disposition::Outgoing, None),
            contact,
        });
    };
    if let Some(contact) = contact {
        tx.clear_missed(contact, now).await?;
    }
    let reason = format!("outgoing call to the contact of lead #{lead}");
    let id = state
        .insert_inbound(
            tx,
            inbound_row(
                item,
                now,
                Disposition::ActivityAdded,
                Some(&reason),
                Some(lead),
                contact,
            ),
        )
        .await?;
    tx.add_activity(lead, id, "outgoing_call", item.text.as_deref(), now)
        .await?;
    Ok(Applied {
        receipt: receipt(id, Disposition::ActivityAdded, Some(lead)),
        contact,
    })
}

async fn create_lead<T: Tx>(
    tx: &mut T,
    item: &Prepared,
    contact: Option<i64>,
    state: &mut TxState,
) -> sqlx::Result<i64> {
    let now = state.now;
    let returning = contact.is_some();
    let assignment = state
        .assigner
        .assign(tx, item, now, returning, false)
        .await?;
    let lead = state
        .insert_lead(tx, new_lead(item, contact, &assignment, now))
        .await?;
    state.assigner.created(lead, &assignment, item, now);
    state.assigner.flushed(tx, now).await?;
    Ok(lead)
}

/// The `leads` row of a new lead.
pub(super) fn new_lead<'a>(
    item: &'a Prepared,
    contact: Option<i64>,
    assignment: &'a Assignment,
    now: chrono::DateTime<Utc>,
) -> NewLead<'a> {
    let inbound = &item.inbound;
    let field = |k: &str| item.fields.get(k).map(String::as_str);
    let mut custom = item.fields.clone();
    for k in [fields::PRODUCT, fields::REGION, fields::CALLED_LINE]
        .iter()
        .chain(fields::UTM_KEYS.iter())
    {
        custom.remove(*k);
    }
    NewLead {
        now,
        channel: inbound.channel.as_str(),
        kind: item.kind.as_str(),
        source_ref: &inbound.source_ref,
        contact,
        name: item.name.as_deref(),
        phone: item.first(IdentityKind::Phone),
        email: item.first(IdentityKind::Email),
        messenger: item.messenger(),
        subject: inbound.subject.as_deref(),
        message: item.text.as_deref(),
        product: field(fields::PRODUCT),
        region: field(fields::REGION),
        utm: fields::UTM_KEYS.map(field),
        called_line: field(fields::CALLED_LINE),
        fields: json!(custom),
        assignee_user: assignment.user.as_deref(),
        assignee_role: assignment.role.as_deref(),
        assigned_by: assignment
            .assigned_by
            .map_or_else(|| item.assigned_by.to_string(), str::to_owned),
        routing_note: assignment.note.as_deref(),
    }
}

pub(super) fn inbound_row<'a>(
    item: &'a Prepared,
    now: chrono::DateTime<Utc>,
    disposition: Disposition,
    reason: Option<&'a str>,
    lead: Option<i64>,
    contact: Option<i64>,
) -> NewInbound<'a> {
    let inbound = &item.inbound;
    NewInbound {
        channel: inbound.channel.as_str(),
        kind: item.kind.as_str(),
        source_ref: &inbound.source_ref,
        received_at: inbound.received_at,
        stored_at: now,
        disposition: disposition.as_str(),
        reason,
        lead,
        contact,
        sender_name: item.name.as_deref(),
        sender_phone: item.first(IdentityKind::Phone),
        sender_email: item.first(IdentityKind::Email),
        subject: inbound.subject.as_deref(),
        text: item.text.as_deref(),
        fields: json!(item.fields),
        attachments: json!(item.attachments),
        content_key: item.content_key.as_deref(),
        raw: &inbound.raw,
    }
}

/// Find the sender's contact by any identity, or create one; record every
/// identity seen so later messages match by any of them.
///
/// One exception keeps two people apart: a sender whose e-mail address is
/// new is not merged into a contact that already has a different address
/// just because a phone matches (an office number, a phone quoted in a
/// forwarded mail). Their unmatched identities start a new contact; the
/// phone stays with the contact that had it first.
async fn identify<T: Tx>(
    tx: &mut T,
    item: &Prepared,
    state: &mut TxState,
) -> sqlx::Result<Identified> {
    if item.identities.is_empty() {
        return Ok(Identified {
            contact: None,
            new: false,
        });
    }
    let ids: Vec<(&str, &str)> = item
        .identities
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let found = tx.find_contacts(&ids).await?;
    let owner = |kind: IdentityKind| {
        item.identities
            .iter()
            .filter(|(k, _)| *k == kind)
            .find_map(|(k, v)| {
                found
                    .iter()
                    .find(|(fk, fv, _)| fk == k.as_str() && fv == v)
                    .map(|f| f.2)
            })
    };
    let has_email = item
        .identities
        .iter()
        .any(|(k, _)| *k == IdentityKind::Email);
    let by_email = owner(IdentityKind::Email);
    // Identities in the item's order, strongest first.
    let by_other = item
        .identities
        .iter()
        .filter(|(k, _)| *k != IdentityKind::Email)
        .find_map(|(k, v)| {
            found
                .iter()
                .find(|(fk, fv, _)| fk == k.as_str() && fv == v)
                .map(|f| f.2)
        });
    let matched = match (by_email, by_other) {
        (Some(c), _) => Some(c),
        (None, Some(c))
            if has_email && tx.contact_has_kind(c, IdentityKind::Email.as_str()).await? =>
        {
            None
        }
        (None, other) => other,
    };
    let (contact, new) = match matched {
        Some(c) => (c, false),
        None => (state.insert_contact(tx, item.name.as_deref()).await?, true),
    };
    // Only identities not yet bound to anyone need a write.
    let unbound: Vec<(&str, &str, i64)> = ids
        .iter()
        .filter(|(k, v)| !found.iter().any(|(fk, fv, _)| fk == k && fv == v))
        .map(|(k, v)| (*k, *v, contact))
        .collect();
    tx.insert_identities(&unbound, state.now).await?;
    Ok(Identified {
        contact: Some(contact),
        new,
    })
}

/// The sender's contact, and whether this item created it.
struct Identified {
    contact: Option<i64>,
    new: bool,
}
