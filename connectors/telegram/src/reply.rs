//! The optional greeting (with a "share your phone" button) sent when a
//! message starts a new lead. Replies are paced under Telegram's limits
//! (about 30 messages a second per bot, one a second per chat) and a 429's
//! `retry_after` is waited out; a reply that still fails is logged, never
//! retried forever: the lead is already stored, the greeting is a courtesy.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use teloxide_core::Bot;
use teloxide_core::payloads::SendMessageSetters;
use teloxide_core::requests::{Request, Requester};
use teloxide_core::types::{ButtonRequest, ChatId, KeyboardButton, KeyboardMarkup};

use crate::api::{CALL_TIMEOUT, Failure, bot, failure};
use crate::config::TelegramChannel;

/// Attempts per reply when Telegram keeps answering 429.
const ATTEMPTS: u32 = 3;
/// Chats remembered by the per-chat limiter before old ones are dropped.
const REMEMBERED_CHATS: usize = 10_000;

pub(crate) struct Replier {
    bot: Bot,
    token: String,
    overall: DefaultDirectRateLimiter,
    per_chat: DefaultKeyedRateLimiter<i64>,
    greeting: String,
    button: Option<String>,
}

impl Replier {
    fn new(channel: &TelegramChannel) -> Option<Replier> {
        let greeting = channel.settings.greeting.clone()?;
        let bot = match bot(channel, CALL_TIMEOUT) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(channel = %channel.id, error = %e, "greetings disabled");
                return None;
            }
        };
        let per_second = NonZeroU32::new(channel.settings.replies_per_second)?;
        Some(Replier {
            bot,
            token: channel.token.expose().to_owned(),
            overall: RateLimiter::direct(Quota::per_second(per_second)),
            per_chat: RateLimiter::keyed(Quota::per_second(NonZeroU32::MIN)),
            greeting,
            button: channel.settings.share_phone_button.clone(),
        })
    }

    async fn greet(&self, channel: &str, chat: i64) {
        if self.per_chat.len() > REMEMBERED_CHATS {
            self.per_chat.retain_recent();
        }
        for attempt in 1..=ATTEMPTS {
            self.per_chat.until_key_ready(&chat).await;
            self.overall.until_ready().await;
            let mut request = self.bot.send_message(ChatId(chat), self.greeting.clone());
            if let Some(label) = &self.button {
                let button = KeyboardButton::new(label.clone()).request(ButtonRequest::Contact);
                request = request.reply_markup(
                    KeyboardMarkup::new(vec![vec![button]])
                        .resize_keyboard()
                        .one_time_keyboard(),
                );
            }
            match request.send().await {
                Ok(_) => {
                    tracing::debug!(channel, chat, "greeting sent");
                    return;
                }
                Err(e) => match failure(e, "sendMessage", &self.token) {
                    Failure::RetryAfter(wait) if attempt < ATTEMPTS => {
                        tracing::info!(channel, chat, retry_after = ?wait, "Telegram asks to slow down; greeting waits");
                        tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
                    }
                    Failure::RetryAfter(wait) => {
                        tracing::warn!(channel, chat, retry_after = ?wait, "greeting not sent: Telegram kept answering 429");
                        return;
                    }
                    Failure::WebhookActive => return,
                    Failure::Stop(e) => {
                        tracing::warn!(channel, chat, error = %e, "greeting not sent");
                        return;
                    }
                },
            }
        }
    }
}

/// Greet `chat` in the background; returns at once.
pub(crate) fn greet(channel: &TelegramChannel, chat: i64) {
    if !channel.replies() {
        return;
    }
    let Some(replier) = channel
        .replier
        .get_or_init(|| Replier::new(channel).map(Arc::new))
        .clone()
    else {
        return;
    };
    let id = channel.id.0.clone();
    tokio::spawn(async move { replier.greet(&id, chat).await });
}
