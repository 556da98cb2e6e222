//! VK connector: messages to a VK community (and, by choice, comments and
//! other community events) to leadgate inbound items.
//!
//! Two ways in, one per channel (`mode`):
//! - **Callback API**: VK POSTs each event to `/vk/{channel}`. The
//!   `confirmation` event is answered with the configured string; every
//!   other event must carry the channel's `secret` (compared in constant
//!   time) and is answered `ok` only after the pipeline's
//!   [`Sink`](leadgate_connector::Sink) has committed it, 503 when the store
//!   is down so VK delivers again.
//! - **Bots Long Poll**: leadgate asks VK (see [`run`]); each answer's events
//!   are committed together with the `ts` that follows them.
//!
//! Both read the same event shape ([`parse_event`]). A message keeps one
//! `source_ref`, `msg:{peer_id}:{conversation_message_id}`, however often
//! and by whichever way it arrives, so retries and a message seen by both
//! ways are one item. Other events use `{type}:{owner_id}:{id}` or
//! `event:{event_id}`.
//!
//! A message from a user may become a lead (or an activity on the sender's
//! open lead; the pipeline decides). Replies by the community
//! (`message_reply`, `out = 1`, negative `from_id`) are flagged outgoing,
//! edits and group chats not leads, and event types not in the channel's
//! `lead_events` are recorded but not leads. A product card (`market`
//! attachment, what "write to the seller" sends) fills `product`,
//! `product_id` (`{owner_id}_{id}`), `price` (`450000.00`), `currency`
//! (`RUB`) and `product_url`; links fill `page_url` (so their `utm_*` are
//! read) and `links`. Sender names and profile links come from `users.get`
//! ([`Profiles`]), cached and rate limited.
//!
//! # Channel files
//!
//! ```toml
//! kind = "vk"
//! [vk]
//! group_id = 229000001
//! mode = "callback"
//! confirmation = "a1b2c3d4"
//! secret_file = "secrets/vk-shop.secret"
//! token_file = "secrets/vk-shop.token"   # for sender names
//! ```
//!
//! ```toml
//! kind = "vk"
//! [vk]
//! group_id = 229000001
//! mode = "long_poll"
//! token_file = "secrets/vk-shop.token"
//! lead_events = ["message_new", "wall_reply_new"]
//! ```
//!
//! This crate knows the VK protocol only: no routing, no SQL.

mod api;
mod config;
mod endpoint;
mod error;
mod event;
mod longpoll;
mod profiles;

#[cfg(test)]
mod tests;

pub use api::{ApiError, VkApi, parse_answer};
pub use config::{API_VERSION, DEFAULT_API_URL, VkChannel, VkMode, VkSettings};
pub use endpoint::{VkState, router};
pub use error::VkError;
pub use event::{VkEvent, parse_event, vk_fields};
pub use longpoll::{CURSOR_KEY, run};
pub use profiles::{Profile, Profiles};
