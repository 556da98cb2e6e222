//! The IMAP poll loop. Per folder: SELECT, compare UIDVALIDITY with the
//! cursor, fetch every UID above the cursor with `BODY.PEEK[]` in batches,
//! commit each batch together with the cursor that covers it, and only then
//! post-process (`\Seen`, MOVE). Then IDLE (or sleep) until new mail.
//!
//! A dropped connection loses nothing: the cursor only moves in the commit,
//! so the next session fetches again from the last committed UID.

use std::collections::HashMap;

use async_imap::extensions::idle::IdleResponse;
use async_imap::{Client, Session};
use chrono::Utc;
use futures_util::TryStreamExt;
use leadgate_connector::{
    Batch, ConnectorError, CursorUpdate, Flag, Inbound, PollerContext, SinkError,
};

use crate::config::{AfterCommit, Credentials, ImapChannel, Security};
use crate::message::parse_message;
use crate::stream::{MailStream, tls};

type ImapSession = Session<MailStream>;

/// The cursor key of a folder in `channel_state`.
fn cursor_key(folder: &str) -> String {
    format!("folder:{folder}")
}

/// A folder's position: `(UIDVALIDITY, highest committed UID)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FolderCursor {
    uid_validity: u32,
    last_uid: u32,
}

impl FolderCursor {
    fn parse(value: &str) -> Option<FolderCursor> {
        let (v, u) = value.split_once(':')?;
        Some(FolderCursor {
            uid_validity: v.parse().ok()?,
            last_uid: u.parse().ok()?,
        })
    }

    fn value(self) -> String {
        format!("{}:{}", self.uid_validity, self.last_uid)
    }
}

fn network(e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Network(e.to_string())
}

fn imap_error(e: async_imap::error::Error) -> ConnectorError {
    match e {
        async_imap::error::Error::Io(io) => ConnectorError::Network(io.to_string()),
        async_imap::error::Error::ConnectionLost => {
            ConnectorError::Network("connection lost".into())
        }
        other => ConnectorError::Peer(other.to_string()),
    }
}

struct PlainAuth(String);

impl async_imap::Authenticator for PlainAuth {
    type Response = String;
    fn process(&mut self, _challenge: &[u8]) -> String {
        self.0.clone()
    }
}

/// Run the channel until `ctx.shutdown`. Returns an error only when the
/// session failed; the caller decides on backoff by `is_transient`.
pub async fn run(channel: &ImapChannel, ctx: &PollerContext) -> Result<(), ConnectorError> {
    let mut cursors: HashMap<String, FolderCursor> = ctx
        .cursors
        .iter()
        .filter_map(|c| {
            Some((
                c.key.strip_prefix("folder:")?.to_owned(),
                FolderCursor::parse(&c.value)?,
            ))
        })
        .collect();
    let mut session = tokio::select! {
        s = connect(channel) => s?,
        _ = ctx.shutdown.cancelled() => return Ok(()),
    };
    let idle = session
        .capabilities()
        .await
        .map_err(imap_error)?
        .has_str("IDLE");
    let can_move = session
        .capabilities()
        .await
        .map_err(imap_error)?
        .has_str("MOVE");
    tracing::info!(channel = %channel.id, host = %channel.settings.host, idle, "IMAP session open");
    loop {
        for folder in &channel.settings.folders {
            sync_folder(&mut session, channel, ctx, folder, can_move, &mut cursors).await?;
            if ctx.shutdown.is_cancelled() {
                let _ = session.logout().await;
                return Ok(());
            }
        }
        // Wait for new mail: IDLE on the first folder when the server can,
        // the poll interval otherwise (other folders are polled too).
        let first = &channel.settings.folders[0];
        let wait = channel.settings.poll_interval.0;
        if idle && channel.settings.folders.len() == 1 {
            // IDLE reports only what arrives after it starts: mail that came
            // in since the sync above is seen here (UIDNEXT moved), and
            // synced first.
            let mailbox = session.select(first).await.map_err(imap_error)?;
            let seen = cursors.get(first.as_str()).map_or(0, |c| c.last_uid);
            if mailbox
                .uid_next
                .is_some_and(|next| next > seen.saturating_add(1))
                && mailbox.exists > 0
            {
                let highest = session
                    .uid_search(format!("UID {}:*", seen.saturating_add(1)))
                    .await
                    .map_err(imap_error)?;
                if highest.iter().any(|u| *u > seen) {
                    continue;
                }
            }
            let mut handle = session.idle();
            handle.init().await.map_err(imap_error)?;
            // The poll interval is the safety net beside IDLE.
            let renew = channel.settings.idle_renewal.0.min(wait);
            let outcome = {
                let (fut, _stop) = handle.wait_with_timeout(renew);
                tokio::select! {
                    r = fut => Some(r),
                    _ = ctx.shutdown.cancelled() => None,
                }
            };
            session = handle.done().await.map_err(imap_error)?;
            match outcome {
                None => {
                    let _ = session.logout().await;
                    return Ok(());
                }
                Some(Err(e)) => return Err(imap_error(e)),
                Some(Ok(
                    IdleResponse::NewData(_)
                    | IdleResponse::Timeout
                    | IdleResponse::ManualInterrupt,
                )) => {}
            }
        } else {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = ctx.shutdown.cancelled() => {
                    let _ = session.logout().await;
                    return Ok(());
                }
            }
            session.noop().await.map_err(imap_error)?;
        }
    }
}

async fn connect(channel: &ImapChannel) -> Result<ImapSession, ConnectorError> {
    let s = &channel.settings;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((s.host.as_str(), channel.port()))
            .await
            .map_err(network)?;
        let stream = match s.security {
            Security::Tls => tls(tcp, &s.host, &channel.tls).await.map_err(network)?,
            Security::Starttls | Security::Plain => MailStream::Plain(tcp),
        };
        let mut client = Client::new(stream);
        client
            .read_response()
            .await
            .map_err(network)?
            .ok_or_else(|| {
                ConnectorError::Network(
                    "the server closed the connection before its greeting".into(),
                )
            })?;
        if s.security == Security::Starttls {
            client
                .run_command_and_check_ok("STARTTLS", None)
                .await
                .map_err(imap_error)?;
            let MailStream::Plain(tcp) = client.into_inner() else {
                return Err(ConnectorError::Peer("STARTTLS on a TLS stream".into()));
            };
            client = Client::new(tls(tcp, &s.host, &channel.tls).await.map_err(network)?);
        }
        let login = match (&channel.credentials, s.auth) {
            (Credentials::Password(p), crate::config::AuthMethod::Login) => {
                client.login(&s.username, p.expose()).await
            }
            (Credentials::Password(p), _) => {
                client
                    .authenticate(
                        "PLAIN",
                        PlainAuth(format!("\0{}\0{}", s.username, p.expose())),
                    )
                    .await
            }
            (Credentials::OAuth2Token(t), _) => {
                let token = format!("user={}\x01auth=Bearer {}\x01\x01", s.username, t.expose());
                client.authenticate("XOAUTH2", PlainAuth(token)).await
            }
        };
        login.map_err(|(e, _)| match e {
            async_imap::error::Error::Io(io) => ConnectorError::Network(io.to_string()),
            other => ConnectorError::Auth(format!("login as {} failed: {other}", s.username)),
        })
    };
    tokio::time::timeout(s.connect_timeout.0, attempt)
        .await
        .map_err(|_| {
            ConnectorError::Network(format!(
                "no session with {}:{} within {}",
                s.host,
                channel.port(),
                s.connect_timeout
            ))
        })?
}

async fn sync_folder(
    session: &mut ImapSession,
    channel: &ImapChannel,
    ctx: &PollerContext,
    folder: &str,
    can_move: bool,
    cursors: &mut HashMap<String, FolderCursor>,
) -> Result<(), ConnectorError> {
    let mailbox = session.select(folder).await.map_err(imap_error)?;
    let uid_validity = mailbox.uid_validity.unwrap_or(0);
    let mut cursor = match cursors.get(folder) {
        Some(c) if c.uid_validity == uid_validity => *c,
        Some(old) => {
            // The server renumbered the folder: every UID is void. Rescan;
            // messages already stored are recognised by Message-ID (or
            // content hash) and not stored again.
            tracing::warn!(channel = %channel.id, folder, old = old.uid_validity, new = uid_validity, "UIDVALIDITY changed; rescanning the folder");
            FolderCursor {
                uid_validity,
                last_uid: 0,
            }
        }
        None => FolderCursor {
            uid_validity,
            last_uid: 0,
        },
    };
    if mailbox.exists == 0 {
        return Ok(());
    }
    // `n:*` always matches the highest UID even when it is below n
    // (RFC 3501 §6.4.8): filter on our side.
    let mut uids: Vec<u32> = session
        .uid_search(format!("UID {}:*", cursor.last_uid.saturating_add(1)))
        .await
        .map_err(imap_error)?
        .into_iter()
        .filter(|u| *u > cursor.last_uid)
        .collect();
    uids.sort_unstable();
    // One batch commits while the next is fetched and parsed: the writer
    // and the IMAP server work at the same time. Commits still happen one
    // after another, in UID order, so the stored cursor only moves forward
    // and post-processing follows each commit.
    let mut committing: Option<InFlight> = None;
    for chunk in uids.chunks(channel.settings.batch_size) {
        if ctx.shutdown.is_cancelled() {
            break;
        }
        let set = chunk
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let fetched: Vec<_> = session
            .uid_fetch(&set, "(UID INTERNALDATE BODY.PEEK[])")
            .await
            .map_err(imap_error)?
            .try_collect()
            .await
            .map_err(imap_error)?;
        let mut items = Vec::with_capacity(fetched.len());
        let mut highest = cursor.last_uid;
        for f in &fetched {
            let Some(uid) = f.uid else { continue };
            if uid <= cursor.last_uid || !chunk.contains(&uid) {
                continue;
            }
            highest = highest.max(uid);
            let received = f
                .internal_date()
                .map(|d| d.with_timezone(&Utc))
                .unwrap_or_else(Utc::now);
            let item = match f.body() {
                Some(raw) => parse_message(&ctx.channel, raw, received, &channel.settings.mail),
                None => {
                    let mut i = Inbound::new(
                        ctx.channel.clone(),
                        format!("uid:{uid_validity}:{uid}"),
                        received,
                    );
                    i.flags.push(Flag::Invalid(format!(
                        "the server sent no body for UID {uid}"
                    )));
                    i
                }
            };
            items.push(item);
        }
        // UIDs that vanished between SEARCH and FETCH (expunged) are passed.
        highest = highest.max(*chunk.last().unwrap_or(&0));
        let next = FolderCursor {
            uid_validity,
            last_uid: highest,
        };
        if let Some(previous) = committing.take() {
            cursor = previous.settle(session, channel, can_move).await?;
            cursors.insert(folder.to_owned(), cursor);
        }
        let sink = ctx.sink.clone();
        let batch = Batch {
            items,
            cursor: Some(CursorUpdate {
                key: cursor_key(folder),
                value: next.value(),
            }),
        };
        committing = Some(InFlight {
            commit: tokio::spawn(async move { sink.submit(batch).await }),
            set,
            cursor: next,
        });
    }
    if let Some(last) = committing.take() {
        cursor = last.settle(session, channel, can_move).await?;
    }
    cursors.insert(folder.to_owned(), cursor);
    Ok(())
}

/// A batch handed to the sink whose commit is not yet confirmed.
struct InFlight {
    commit: tokio::task::JoinHandle<Result<Vec<leadgate_connector::Receipt>, SinkError>>,
    /// Its UIDs, for post-processing.
    set: String,
    cursor: FolderCursor,
}

impl InFlight {
    /// Wait for the commit, then post-process its messages; the cursor it
    /// stored is where the folder now stands.
    async fn settle(
        self,
        session: &mut ImapSession,
        channel: &ImapChannel,
        can_move: bool,
    ) -> Result<FolderCursor, ConnectorError> {
        self.commit
            .await
            .map_err(|e| SinkError::Unavailable(format!("the commit task failed: {e}")))??;
        after_commit(session, channel, &self.set, can_move).await;
        Ok(self.cursor)
    }
}

/// Post-processing of committed messages. A failure here loses nothing (the
/// messages are stored and the cursor is past them); it is logged.
async fn after_commit(session: &mut ImapSession, channel: &ImapChannel, set: &str, can_move: bool) {
    let s = &channel.settings;
    let result = match s.after_commit {
        AfterCommit::Keep => return,
        AfterCommit::Seen => session
            .uid_store(set, "+FLAGS.SILENT (\\Seen)")
            .await
            .map(drop_stream),
        AfterCommit::Move => {
            let target = s.move_to.as_deref().unwrap_or("Processed");
            if can_move {
                session.uid_mv(set, target).await
            } else {
                move_by_copy(session, set, target).await
            }
        }
    };
    if let Err(e) = result {
        tracing::warn!(channel = %channel.id, error = %e, "post-processing after commit failed; messages are stored");
    }
}

fn drop_stream<T>(_: T) {}

async fn move_by_copy(
    session: &mut ImapSession,
    set: &str,
    target: &str,
) -> async_imap::error::Result<()> {
    session.uid_copy(set, target).await?;
    let flagged: Vec<_> = session
        .uid_store(set, "+FLAGS.SILENT (\\Deleted)")
        .await?
        .try_collect()
        .await?;
    drop(flagged);
    let expunged: Vec<_> = session.uid_expunge(set).await?.try_collect().await?;
    drop(expunged);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_values_round_trip_and_reject_garbage() {
        let c = FolderCursor {
            uid_validity: 1795418142,
            last_uid: 42,
        };
        assert_eq!(FolderCursor::parse(&c.value()), Some(c));
        assert_eq!(FolderCursor::parse("x:1"), None);
        assert_eq!(FolderCursor::parse("5"), None);
    }
}
