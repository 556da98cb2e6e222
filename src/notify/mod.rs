//! Notifications: telling the responsible person about a lead — on
//! assignment, on release from the queue, on escalation — by Telegram (a
//! notifier bot) and e-mail (SMTP).
//!
//! The events are written to the `notifications` outbox inside the
//! transaction that causes them (`store::assign`, `store::timers`), so a
//! notification exists exactly when its cause was committed and at most
//! once per (event, recipient, transport). [`deliver`] sends them after
//! commit, with retries; a failing peer never holds up ingestion, it only
//! delays its own rows.

pub mod config;
mod deliver;
pub mod template;
mod transport;

pub use config::{NotifyConfig, NotifySettings, Transport};
pub use deliver::{Notifier, run as deliver};
