//! Bots Long Poll: `groups.getLongPollServer` gives `server`, `key` and
//! `ts`; `GET {server}?act=a_check&key=…&ts=…&wait=25` answers with the
//! events after `ts` and the `ts` to ask with next. Each answer's events are
//! committed together with that next `ts` (one transaction), so a restart
//! resumes exactly after the last committed events: nothing skipped, and
//! nothing stored twice (a re-fetched event has the same `source_ref`).
//!
//! `{"failed": n}` answers:
//! - 1: the history at `ts` is gone in part; go on with the `ts` in the
//!   answer (events in the gap cannot be fetched any more);
//! - 2: the key expired; take a new key and keep our `ts`, so no event that
//!   can still be fetched is skipped;
//! - 3: key and history lost; take a new key and `ts`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use leadgate_connector::{Batch, ConnectorError, CursorUpdate, PollerContext, SinkError};
use serde_json::Value;

use crate::api::{ApiError, VkApi};
use crate::config::VkChannel;
use crate::event::{VkEvent, parse_event};
use crate::profiles::Profiles;

/// The cursor key of a VK channel in `channel_state`.
pub const CURSOR_KEY: &str = "ts";

/// Extra time beyond `wait` before an `a_check` counts as hung.
const POLL_GRACE: Duration = Duration::from_secs(15);
const STORE_RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
struct PollServer {
    server: String,
    key: String,
    ts: String,
}

/// What one `a_check` answered.
#[derive(Debug, Clone, PartialEq)]
enum Poll {
    Events { ts: String, updates: Vec<Value> },
    Failed { code: i64, ts: Option<String> },
}

/// Run the channel until `ctx.shutdown`. Returns an error only when the
/// session failed; the caller decides on backoff by `is_transient` (a
/// refused token, error 5, is permanent).
pub async fn run(channel: &VkChannel, ctx: &PollerContext) -> Result<(), ConnectorError> {
    let api = Arc::new(VkApi::for_channel(channel).ok_or_else(|| {
        ConnectorError::Config(
            "a long-poll channel needs `token_file` (or `token`, `token_env`)".into(),
        )
    })?);
    let profiles = channel
        .settings
        .fetch_names
        .then(|| Profiles::spawn(api.clone()));
    let saved = ctx
        .cursors
        .iter()
        .find(|c| c.key == CURSOR_KEY)
        .map(|c| c.value.clone());
    let Some(server) = until_stopped(ctx, long_poll_server(&api, channel)).await else {
        return Ok(());
    };
    let mut server = server?;
    // First start: from now on, and that position is stored before any
    // event is read, so a crash before the first commit does not skip the
    // events that arrive meanwhile. Later: right after the last commit.
    let mut ts = match saved {
        Some(ts) => ts,
        None => {
            if !save_position(channel, ctx, &server.ts).await? {
                return Ok(());
            }
            server.ts.clone()
        }
    };
    tracing::info!(channel = %channel.id, ts, "VK long poll started");
    let wait = channel.settings.wait.0;
    loop {
        let Some(poll) = until_stopped(ctx, a_check(&api, &server, &ts, wait)).await else {
            return Ok(());
        };
        match poll? {
            Poll::Events { ts: next, updates } => {
                if !updates.is_empty() {
                    let stored = store(channel, ctx, profiles.as_ref(), updates, &next).await?;
                    if !stored {
                        return Ok(());
                    }
                }
                ts = next;
            }
            Poll::Failed {
                code: 1,
                ts: Some(next),
            } => {
                tracing::warn!(channel = %channel.id, old = ts, new = next, "VK long poll history outdated (failed 1): events in between could not be fetched");
                remember_position(channel, ctx, &next).await;
                ts = next;
            }
            Poll::Failed { code: 2, .. } => {
                tracing::info!(channel = %channel.id, "VK long poll key expired (failed 2); new key, same ts");
                let Some(fresh) = until_stopped(ctx, long_poll_server(&api, channel)).await else {
                    return Ok(());
                };
                server = fresh?;
            }
            Poll::Failed {
                code: code @ (1 | 3),
                ..
            } => {
                let Some(fresh) = until_stopped(ctx, long_poll_server(&api, channel)).await else {
                    return Ok(());
                };
                server = fresh?;
                tracing::warn!(channel = %channel.id, failed = code, old = ts, new = server.ts, "VK long poll history lost; new key and ts (events in between could not be fetched)");
                ts = server.ts.clone();
                remember_position(channel, ctx, &ts).await;
            }
            Poll::Failed { code, .. } => {
                return Err(ConnectorError::Peer(format!(
                    "VK long poll answered failed={code}, which this version does not know"
                )));
            }
        }
    }
}

/// `None` when shutdown came first.
async fn until_stopped<T>(ctx: &PollerContext, work: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        r = work => Some(r),
        _ = ctx.shutdown.cancelled() => None,
    }
}

async fn long_poll_server(api: &VkApi, channel: &VkChannel) -> Result<PollServer, ConnectorError> {
    let answer = api
        .call(
            "groups.getLongPollServer",
            &[("group_id", channel.settings.group_id.to_string())],
        )
        .await
        .map_err(|e| match e.code() {
            // "Long Poll is disabled" and the like: the community settings.
            Some(100 | 15) => ConnectorError::Config(format!(
                "{e}; enable Long Poll API in the community (Manage → API usage → Long Poll API)"
            )),
            _ => e.into_connector(),
        })?;
    let text = |k: &str| {
        answer.get(k).and_then(scalar).ok_or_else(|| {
            ConnectorError::Peer(format!(
                "groups.getLongPollServer: `response.{k}` is missing"
            ))
        })
    };
    let mut server = text("server")?;
    if !server.starts_with("https://") && !server.starts_with("http://") {
        server = format!("https://{server}");
    }
    Ok(PollServer {
        server,
        key: text("key")?,
        ts: text("ts")?,
    })
}

async fn a_check(
    api: &VkApi,
    server: &PollServer,
    ts: &str,
    wait: Duration,
) -> Result<Poll, ConnectorError> {
    let response = api
        .http()
        .get(&server.server)
        .query(&[
            ("act", "a_check"),
            ("key", server.key.as_str()),
            ("ts", ts),
            ("wait", &wait.as_secs().to_string()),
        ])
        .timeout(wait + POLL_GRACE)
        .send()
        .await
        .map_err(|e| ConnectorError::Network(format!("VK long poll: {}", e.without_url())))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| ConnectorError::Network(format!("VK long poll: {}", e.without_url())))?;
    if !status.is_success() {
        return Err(ConnectorError::Network(format!(
            "VK long poll: HTTP {status}"
        )));
    }
    parse_poll(&body).map_err(|e| ConnectorError::Peer(format!("VK long poll: {e}")))
}

fn parse_poll(body: &[u8]) -> Result<Poll, String> {
    let answer: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(failed) = answer.get("failed") {
        let code = failed.as_i64().ok_or("`failed` is not a number")?;
        return Ok(Poll::Failed {
            code,
            ts: answer.get("ts").and_then(scalar),
        });
    }
    let ts = answer.get("ts").and_then(scalar).ok_or("`ts` is missing")?;
    let updates = match answer.get("updates") {
        Some(Value::Array(list)) => list.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err("`updates` is not an array".into()),
    };
    Ok(Poll::Events { ts, updates })
}

/// `ts` and `key` come as strings or numbers depending on the server.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Commit one answer's events with the `ts` after them. Retries while the
/// store is down (the long poll pauses meanwhile); `false` when stopped
/// before the commit.
async fn store(
    channel: &VkChannel,
    ctx: &PollerContext,
    profiles: Option<&Profiles>,
    updates: Vec<Value>,
    next_ts: &str,
) -> Result<bool, ConnectorError> {
    let now = Utc::now();
    let mut events: Vec<VkEvent> = updates
        .iter()
        .map(|u| parse_event(channel, u, u.to_string(), now))
        .collect();
    if let Some(profiles) = profiles {
        add_names(channel, profiles, &mut events).await?;
    }
    let batch = Batch {
        items: events.into_iter().map(|e| e.inbound).collect(),
        cursor: Some(cursor(next_ts)),
    };
    let mut pause = Duration::from_millis(250);
    loop {
        match ctx.sink.submit(batch.clone()).await {
            Ok(receipts) => {
                tracing::debug!(channel = %channel.id, events = receipts.len(), ts = next_ts, "VK events stored");
                return Ok(true);
            }
            Err(e @ SinkError::Unavailable(_)) => {
                tracing::warn!(channel = %channel.id, error = %e, retry_in = ?pause, "VK events not stored; long poll paused");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = ctx.shutdown.cancelled() => return Ok(false),
                }
                pause = (pause * 2).min(STORE_RETRY_MAX);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn cursor(ts: &str) -> CursorUpdate {
    CursorUpdate {
        key: CURSOR_KEY.into(),
        value: ts.to_owned(),
    }
}

/// Store the position alone, retrying while the store is down; `false`
/// when stopped first.
async fn save_position(
    channel: &VkChannel,
    ctx: &PollerContext,
    ts: &str,
) -> Result<bool, ConnectorError> {
    let mut pause = Duration::from_millis(250);
    loop {
        match ctx.sink.save_cursor(ctx.channel.clone(), cursor(ts)).await {
            Ok(()) => return Ok(true),
            Err(e @ SinkError::Unavailable(_)) => {
                tracing::warn!(channel = %channel.id, error = %e, retry_in = ?pause, "VK long poll position not stored; waiting for the store");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = ctx.shutdown.cancelled() => return Ok(false),
                }
                pause = (pause * 2).min(STORE_RETRY_MAX);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Store a position VK moved us to (failed 1 or 3) so a restart does not
/// ask for the lost history again; the next commit carries it anyway, so a
/// failure here only costs that repeat.
async fn remember_position(channel: &VkChannel, ctx: &PollerContext, ts: &str) {
    if let Err(e) = ctx.sink.save_cursor(ctx.channel.clone(), cursor(ts)).await {
        tracing::debug!(channel = %channel.id, error = %e, "VK long poll position kept in memory only");
    }
}

async fn add_names(
    channel: &VkChannel,
    profiles: &Profiles,
    events: &mut [VkEvent],
) -> Result<(), ConnectorError> {
    let mut ids: Vec<i64> = events.iter().filter_map(|e| e.user_id).collect();
    ids.sort_unstable();
    ids.dedup();
    match profiles.lookup(ids).await {
        Ok(found) => {
            for event in events.iter_mut() {
                if let Some(p) = event.user_id.and_then(|id| found.get(&id)) {
                    p.apply(&mut event.inbound);
                }
            }
            Ok(())
        }
        Err(e) if e.is_auth() => Err(e.into_connector()),
        Err(e @ (ApiError::Network(_) | ApiError::Malformed(_) | ApiError::Vk { .. })) => {
            tracing::warn!(channel = %channel.id, error = %e, "sender names not found; storing the events without them");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_of_a_check() {
        let batch = parse_poll(br#"{"ts":"1843","updates":[{"type":"message_new"}]}"#).unwrap();
        assert!(
            matches!(batch, Poll::Events { ref ts, ref updates } if ts == "1843" && updates.len() == 1)
        );
        assert_eq!(
            parse_poll(br#"{"failed": 1, "ts": 1850}"#).unwrap(),
            Poll::Failed {
                code: 1,
                ts: Some("1850".into())
            }
        );
        assert_eq!(
            parse_poll(br#"{"failed": 2}"#).unwrap(),
            Poll::Failed { code: 2, ts: None }
        );
        assert_eq!(
            parse_poll(br#"{"ts": 7}"#).unwrap(),
            Poll::Events {
                ts: "7".into(),
                updates: vec![]
            }
        );
        assert!(parse_poll(br#"{"updates": []}"#).is_err());
        assert!(parse_poll(br#"{"ts": "1", "updates": {}}"#).is_err());
        assert!(parse_poll(br#"{"ts": "1", "upd"#).is_err());
    }
}
