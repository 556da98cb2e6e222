//! The long-poll loop, and the webhook registration that stands in for it
//! in webhook mode.
//!
//! `getUpdates` confirms every update below the `offset` it is called with.
//! So the loop asks with `offset = last committed update_id + 1`, commits a
//! batch together with its highest `update_id` (the cursor, in the same
//! transaction), and only then asks again. A crash before the commit means
//! Telegram sends the batch again; a crash after it means the next session
//! starts from the stored cursor, which confirms the batch. Either way every
//! update is stored once (and the `chat:message` key makes a repeat
//! harmless).

use std::time::Duration;

use chrono::Utc;
use leadgate_connector::{Batch, ConnectorError, CursorUpdate, Disposition, PollerContext};
use teloxide_core::Bot;

use crate::api::{
    CALL_TIMEOUT, DeleteWebhookJson, Failure, GetMeJson, GetWebhookInfoJson, RawGetUpdates,
    SetWebhookJson, bot, call, failure,
};
use crate::config::{Mode, TelegramChannel};
use crate::reply::greet;
use crate::update::{ChatPolicy, ParsedUpdate, parse_update};

/// The channel's cursor in `channel_state`: the highest committed
/// `update_id`.
pub const CURSOR_KEY: &str = "updates";

/// Margin of the HTTP timeout over the long poll's own timeout.
const POLL_SLACK: Duration = Duration::from_secs(10);
/// Pause after a batch that confirmed nothing (every update lacked an
/// `update_id`), so a peer repeating it cannot make the loop spin.
const NOTHING_CONFIRMED_PAUSE: Duration = Duration::from_secs(1);

/// Run the channel until `ctx.shutdown`. Returns an error only when the
/// session failed; the caller decides on backoff by `is_transient`.
pub async fn run(channel: &TelegramChannel, ctx: &PollerContext) -> Result<(), ConnectorError> {
    let calls = bot(channel, CALL_TIMEOUT)?;
    let token = channel.token.expose();
    let Some(me) = retrying(ctx, token, "getMe", || call(&calls, GetMeJson {})).await? else {
        return Ok(());
    };
    let username = me
        .get("username")
        .and_then(|u| u.as_str())
        .unwrap_or("?")
        .to_owned();
    match channel.mode() {
        Mode::Polling => poll(channel, ctx, &calls, &username).await,
        Mode::Webhook => register_webhook(channel, ctx, &calls, &username).await,
    }
}

/// Ask Telegram whether the token works (`getMe`): the bot's username, or
/// what is wrong, for `leadgate check --online`.
pub async fn check_online(channel: &TelegramChannel) -> Result<String, String> {
    let calls = bot(channel, CALL_TIMEOUT).map_err(|e| e.to_string())?;
    match call(&calls, GetMeJson {}).await {
        Ok(me) => Ok(format!(
            "@{}",
            me.get("username").and_then(|u| u.as_str()).unwrap_or("?")
        )),
        Err(e) => Err(match failure(e, "getMe", channel.token.expose()) {
            Failure::RetryAfter(wait) => format!("getMe: Telegram asks to wait {wait:?} (429)"),
            Failure::WebhookActive => "getMe: 409 Conflict".into(),
            Failure::Stop(e) => e.to_string(),
        }),
    }
}

/// Repeat `make()` after each 429 until it succeeds or fails otherwise;
/// `None` when stopped meanwhile.
async fn retrying<T, F, Fut>(
    ctx: &PollerContext,
    token: &str,
    method: &str,
    make: F,
) -> Result<Option<T>, ConnectorError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, teloxide_core::RequestError>>,
{
    loop {
        let result = tokio::select! {
            r = make() => r,
            _ = ctx.shutdown.cancelled() => return Ok(None),
        };
        match result {
            Ok(v) => return Ok(Some(v)),
            Err(e) => match failure(e, method, token) {
                Failure::RetryAfter(wait) => {
                    tracing::info!(channel = %ctx.channel, method, retry_after = ?wait, "Telegram asks to slow down (429)");
                    if sleep_or_stop(wait, ctx).await {
                        return Ok(None);
                    }
                }
                Failure::WebhookActive => {
                    return Err(ConnectorError::Peer(format!(
                        "{method}: 409 Conflict: a webhook is set for this bot"
                    )));
                }
                Failure::Stop(e) => return Err(e),
            },
        }
    }
}

/// Sleep; true when stopped meanwhile.
async fn sleep_or_stop(d: Duration, ctx: &PollerContext) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = ctx.shutdown.cancelled() => true,
    }
}

/// Webhook mode: register the webhook once (when `webhook_url` is set), then
/// hold the lease until stopped; deliveries arrive at the HTTP endpoint.
async fn register_webhook(
    channel: &TelegramChannel,
    ctx: &PollerContext,
    calls: &Bot,
    username: &str,
) -> Result<(), ConnectorError> {
    let token = channel.token.expose();
    if let (Some(url), Some(secret)) = (&channel.settings.webhook_url, &channel.webhook_secret) {
        let set = retrying(ctx, token, "setWebhook", || {
            call(
                calls,
                SetWebhookJson {
                    url: url.clone(),
                    secret_token: secret.expose().to_owned(),
                    drop_pending_updates: false,
                },
            )
        })
        .await?;
        if set.is_none() {
            return Ok(());
        }
        tracing::info!(channel = %channel.id, bot = username, url, "Telegram webhook set");
    } else {
        tracing::info!(channel = %channel.id, bot = username, "webhook mode: expecting the webhook to be set outside leadgate");
    }
    ctx.shutdown.cancelled().await;
    Ok(())
}

/// Remove a webhook left from webhook mode, keeping its pending updates:
/// Telegram refuses `getUpdates` while one is set.
async fn delete_webhook(
    channel: &TelegramChannel,
    ctx: &PollerContext,
    calls: &Bot,
) -> Result<bool, ConnectorError> {
    let deleted = retrying(ctx, channel.token.expose(), "deleteWebhook", || {
        call(
            calls,
            DeleteWebhookJson {
                drop_pending_updates: false,
            },
        )
    })
    .await?;
    Ok(deleted.is_some())
}

async fn poll(
    channel: &TelegramChannel,
    ctx: &PollerContext,
    calls: &Bot,
    username: &str,
) -> Result<(), ConnectorError> {
    let token = channel.token.expose();
    let settings = &channel.settings;
    let timeout = settings.poll_timeout.0;
    let poller = bot(channel, timeout + POLL_SLACK)?;
    let info = retrying(ctx, token, "getWebhookInfo", || {
        call(calls, GetWebhookInfoJson {})
    })
    .await?;
    let Some(info) = info else { return Ok(()) };
    if info
        .get("url")
        .and_then(|u| u.as_str())
        .is_some_and(|u| !u.is_empty())
    {
        tracing::warn!(channel = %channel.id, "a webhook is set for this bot but the channel polls: deleting the webhook (pending updates are kept)");
        if !delete_webhook(channel, ctx, calls).await? {
            return Ok(());
        }
    }
    let mut offset = ctx
        .cursors
        .iter()
        .find(|c| c.key == CURSOR_KEY)
        .and_then(|c| c.value.parse::<i64>().ok())
        .map(|last| last.saturating_add(1));
    let policy = ChatPolicy {
        groups: settings.groups,
        channel_posts: settings.channel_posts,
    };
    let mut deleted_webhook = false;
    tracing::info!(channel = %channel.id, bot = username, ?offset, "Telegram long polling");
    loop {
        if ctx.shutdown.is_cancelled() {
            return Ok(());
        }
        let request = RawGetUpdates {
            offset,
            limit: settings.batch_size,
            timeout: u32::try_from(timeout.as_secs()).unwrap_or(50),
        };
        let result = tokio::select! {
            r = call(&poller, request) => r,
            // Nothing fetched here is confirmed: Telegram sends it again.
            _ = ctx.shutdown.cancelled() => return Ok(()),
        };
        let updates = match result {
            Ok(updates) => updates,
            Err(e) => match failure(e, "getUpdates", token) {
                Failure::RetryAfter(wait) => {
                    tracing::info!(channel = %channel.id, retry_after = ?wait, "Telegram asks to slow down (429)");
                    if sleep_or_stop(wait, ctx).await {
                        return Ok(());
                    }
                    continue;
                }
                Failure::WebhookActive if !deleted_webhook => {
                    deleted_webhook = true;
                    tracing::warn!(channel = %channel.id, "409: a webhook was set while polling; deleting it (pending updates are kept)");
                    if !delete_webhook(channel, ctx, calls).await? {
                        return Ok(());
                    }
                    continue;
                }
                Failure::WebhookActive => {
                    return Err(ConnectorError::Config(
                        "getUpdates: 409 Conflict: a webhook keeps being set for this bot while the channel polls; another program uses this token in webhook mode (stop it, or set `mode = \"webhook\"`)".into(),
                    ));
                }
                Failure::Stop(e) => return Err(e),
            },
        };
        if updates.is_empty() {
            continue;
        }
        let now = Utc::now();
        let parsed: Vec<ParsedUpdate> = updates
            .iter()
            .map(|v| parse_update(&channel.id, policy, v, v.to_string(), now))
            .collect();
        // Telegram's ids only grow while updates keep coming; after a quiet
        // week it may start elsewhere, so the batch's own maximum is the
        // position, not a comparison with the stored one.
        let highest = parsed.iter().filter_map(|p| p.update_id).max();
        let reply_chats: Vec<Option<i64>> = parsed.iter().map(|p| p.reply_chat).collect();
        let batch = Batch {
            items: parsed.into_iter().map(|p| p.inbound).collect(),
            cursor: highest.map(|id| CursorUpdate {
                key: CURSOR_KEY.into(),
                value: id.to_string(),
            }),
        };
        let count = batch.items.len();
        // Not raced against shutdown: a batch handed over is committed and
        // its cursor with it.
        let receipts = ctx.sink.submit(batch).await?;
        tracing::debug!(channel = %channel.id, updates = count, ?highest, "telegram updates committed");
        for (receipt, chat) in receipts.iter().zip(reply_chats) {
            if receipt.disposition == Disposition::LeadCreated
                && let Some(chat) = chat
            {
                greet(channel, chat);
            }
        }
        match highest {
            Some(id) => offset = Some(id.saturating_add(1)),
            None => {
                if sleep_or_stop(NOTHING_CONFIRMED_PAUSE, ctx).await {
                    return Ok(());
                }
            }
        }
    }
}
