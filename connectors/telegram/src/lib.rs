//! Telegram connector: each channel is one bot; every message people send
//! it becomes an [`Inbound`](leadgate_connector::Inbound).
//!
//! Two ways in, chosen per bot with `mode`:
//! - **polling** ([`run`] under the daemon's poller lease): `getUpdates` in
//!   a loop whose `offset` moves only after the updates it confirms are
//!   committed, with the highest `update_id` stored as the channel's cursor
//!   in the same transaction;
//! - **webhook** ([`router`], `POST /telegram/{channel}`): each delivery
//!   is checked against the `X-Telegram-Bot-Api-Secret-Token` in constant
//!   time and answered 200 only after commit; [`run`] registers the webhook
//!   with `setWebhook` when `webhook_url` is set.
//!
//! What an update gives: text or caption, the sender (user id, username,
//! name), a contact the user shares about themselves as their phone (the
//! strongest identity), phones written in the text, photos, documents,
//! voice and other media as attachment metadata (file ids in
//! `telegram_files`), an edit as an activity on the edited message's lead,
//! a `/start <payload>` deep link as `utm_campaign`, an inline button's
//! `product:<x>` data as the product. Messages from bots, in groups and
//! channel posts are recorded as not leads unless `groups` /
//! `channel_posts` say otherwise. An update that cannot be read is recorded
//! with its error and never stops the channel.
//!
//! The Bot API is reached through teloxide's request layer
//! (`teloxide-core`), never its dispatcher, which keeps its own offset.
//!
//! # Channel files
//!
//! ```toml
//! kind = "telegram"
//! [telegram]
//! token_file = "secrets/shop-bot.token"
//! mode = "polling"                   # or "webhook"
//! # webhook_url = "https://leads.example.com/telegram/shop-bot"
//! # webhook_secret_file = "secrets/shop-bot.webhook"
//! # greeting = "Спасибо! Менеджер ответит в течение часа."
//! # share_phone_button = "Отправить номер телефона"
//! ```
//!
//! This crate knows the Bot API only: no routing, no SQL.

mod api;
mod config;
mod endpoint;
mod poller;
mod reply;
mod update;

pub use config::{Mode, TelegramChannel, TelegramSettings};
pub use endpoint::{SECRET_HEADER, TelegramError, TelegramState, router};
pub use poller::{CURSOR_KEY, check_online, run};
pub use update::{ChatPolicy, ParsedUpdate, json_error_message, parse_update, telegram_fields};
