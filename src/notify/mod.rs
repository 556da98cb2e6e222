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

/// `leadgate check --online`: whether the notifier bot's token works and
/// the SMTP server takes a connection (and the login); `(field, outcome)`.
pub async fn check_online(
    settings: &NotifySettings,
) -> Vec<(&'static str, Result<String, String>)> {
    let mut out = Vec::new();
    if let Some(t) = &settings.telegram {
        let result = match transport::TelegramSender::new(t) {
            Ok(bot) => bot.check().await.map(|name| format!("token OK ({name})")),
            Err(e) => Err(e),
        };
        out.push(("notify.telegram", result));
    }
    if let Some(e) = &settings.email {
        let result = match transport::EmailSender::new(e) {
            Ok(smtp) => smtp
                .check()
                .await
                .map(|()| format!("{}:{} answers", e.host, e.port)),
            Err(err) => Err(err),
        };
        out.push(("notify.email", result));
    }
    out
}
