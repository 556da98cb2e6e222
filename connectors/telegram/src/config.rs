use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use leadgate_connector::{ChannelId, HumanDuration, Secret, SecretSource};
use serde::Deserialize;

use crate::reply::Replier;

/// How updates reach leadgate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// leadgate asks Telegram (`getUpdates`) and confirms what it committed.
    #[default]
    Polling,
    /// Telegram posts each update to `POST /telegram/{channel}`.
    Webhook,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Polling => "polling",
            Mode::Webhook => "webhook",
        }
    }
}

/// The `[telegram]` table of a `kind = "telegram"` channel file.
///
/// Secrets may be given inline, as a file (`*_file`, relative to the
/// configuration folder) or as an environment variable (`*_env`); at most one
/// of the three per secret.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelegramSettings {
    /// The bot token from @BotFather (`123456:ABC…`).
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub token_env: Option<String>,

    #[serde(default)]
    pub mode: Mode,
    /// The Bot API server; another one for a local Bot API server or tests.
    #[serde(default = "default_api_url")]
    pub api_url: String,

    /// Polling: how long one `getUpdates` waits for updates (Telegram allows
    /// up to 50 s).
    #[serde(default = "default_poll_timeout")]
    pub poll_timeout: HumanDuration,
    /// Polling: updates asked for (and committed) at once, 1 to 100.
    #[serde(default = "default_batch_size")]
    pub batch_size: u8,

    /// Webhook: the public HTTPS address of this channel's endpoint
    /// (`https://leads.example.com/telegram/<channel>`). When set, leadgate
    /// registers it with `setWebhook` at start; when not, the admin does.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Webhook: the `secret_token` Telegram sends back in
    /// `X-Telegram-Bot-Api-Secret-Token` (1-256 of `A-Z a-z 0-9 _ -`).
    /// Required in webhook mode.
    #[serde(default)]
    pub webhook_secret: Option<Secret>,
    #[serde(default)]
    pub webhook_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub webhook_secret_env: Option<String>,
    /// Webhook: largest accepted body in bytes (413 above it).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,

    /// Messages in groups and supergroups become leads too (by default they
    /// are recorded as not leads).
    #[serde(default)]
    pub groups: bool,
    /// Posts in channels the bot administers become leads too.
    #[serde(default)]
    pub channel_posts: bool,

    /// A reply sent when a message starts a new lead.
    #[serde(default)]
    pub greeting: Option<String>,
    /// A keyboard button under the greeting that shares the user's phone
    /// (`request_contact`); needs `greeting`.
    #[serde(default)]
    pub share_phone_button: Option<String>,
    /// Replies per second for the whole bot (Telegram's limit is about 30).
    #[serde(default = "default_replies_per_second")]
    pub replies_per_second: u32,
}

fn default_api_url() -> String {
    "https://api.telegram.org".into()
}
fn default_poll_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(25))
}
fn default_batch_size() -> u8 {
    100
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}
fn default_replies_per_second() -> u32 {
    25
}

/// A Telegram channel ready to serve: settings validated, secrets resolved.
#[derive(Clone)]
pub struct TelegramChannel {
    pub id: ChannelId,
    pub settings: TelegramSettings,
    pub(crate) token: Secret,
    pub(crate) webhook_secret: Option<Secret>,
    pub(crate) api_url: reqwest::Url,
    /// Sends greetings within Telegram's limits; built on first use so
    /// validating a configuration starts nothing.
    pub(crate) replier: Arc<std::sync::OnceLock<Option<Arc<Replier>>>>,
}

impl std::fmt::Debug for TelegramChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramChannel")
            .field("id", &self.id)
            .field("mode", &self.settings.mode)
            .field("api_url", &self.api_url.as_str())
            .finish_non_exhaustive()
    }
}

/// Telegram's rule for `secret_token`.
fn valid_secret_token(s: &str) -> bool {
    (1..=256).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl TelegramChannel {
    pub fn new(id: ChannelId, settings: TelegramSettings) -> Result<Self, String> {
        let s = &settings;
        let token = SecretSource {
            value: s.token.clone(),
            file: s.token_file.clone(),
            env: s.token_env.clone(),
        }
        .resolve("token")?
        .ok_or("set `token`, `token_file` or `token_env` (the bot token from @BotFather)")?;
        // `<bot id>:<key>`; anything else cannot be a token and would only
        // be refused by Telegram later.
        let shape_ok = token.expose().split_once(':').is_some_and(|(bot, key)| {
            !bot.is_empty()
                && bot.bytes().all(|b| b.is_ascii_digit())
                && !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if !shape_ok {
            return Err(
                "`token`: not a bot token (expected `<digits>:<key>` as @BotFather gives it)"
                    .into(),
            );
        }
        let webhook_secret = SecretSource {
            value: s.webhook_secret.clone(),
            file: s.webhook_secret_file.clone(),
            env: s.webhook_secret_env.clone(),
        }
        .resolve("webhook_secret")?;
        if let Some(secret) = &webhook_secret
            && !valid_secret_token(secret.expose())
        {
            return Err(
                "`webhook_secret`: Telegram accepts 1 to 256 characters of A-Z, a-z, 0-9, _ and -"
                    .into(),
            );
        }
        match s.mode {
            Mode::Webhook if webhook_secret.is_none() => {
                return Err("`mode = \"webhook\"` needs `webhook_secret` (or `webhook_secret_file`, `webhook_secret_env`): without it anyone could post fake updates".into());
            }
            Mode::Polling if s.webhook_url.is_some() => {
                return Err("`webhook_url` is a setting of `mode = \"webhook\"`".into());
            }
            _ => {}
        }
        if let Some(url) = &s.webhook_url {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| format!("`webhook_url`: {url:?} is not a URL: {e}"))?;
            if parsed.scheme() != "https" && parsed.scheme() != "http" {
                return Err(format!("`webhook_url`: {url:?} is not an http(s) URL"));
            }
        }
        let api_url = reqwest::Url::parse(&s.api_url)
            .map_err(|e| format!("`api_url`: {:?} is not a URL: {e}", s.api_url))?;
        if api_url.cannot_be_a_base() || !matches!(api_url.scheme(), "http" | "https") {
            return Err(format!("`api_url`: {:?} is not an http(s) URL", s.api_url));
        }
        let timeout = s.poll_timeout.0;
        if timeout > Duration::from_secs(50) {
            return Err("`poll_timeout` must be at most 50s (Telegram's limit)".into());
        }
        if !(1..=100).contains(&s.batch_size) {
            return Err("`batch_size` must be between 1 and 100".into());
        }
        if s.max_body_bytes == 0 {
            return Err("`max_body_bytes` must be greater than 0".into());
        }
        if s.share_phone_button.is_some() && s.greeting.is_none() {
            return Err(
                "`share_phone_button` needs `greeting` (the message the button is sent under)"
                    .into(),
            );
        }
        for (field, text) in [
            ("greeting", &s.greeting),
            ("share_phone_button", &s.share_phone_button),
        ] {
            if let Some(t) = text
                && (t.trim().is_empty() || t.chars().count() > 4096)
            {
                return Err(format!("`{field}` must be 1 to 4096 characters"));
            }
        }
        if NonZeroU32::new(s.replies_per_second).is_none() || s.replies_per_second > 30 {
            return Err("`replies_per_second` must be between 1 and 30 (Telegram's limit)".into());
        }
        Ok(TelegramChannel {
            id,
            settings,
            token,
            webhook_secret,
            api_url,
            replier: Arc::default(),
        })
    }

    pub fn mode(&self) -> Mode {
        self.settings.mode
    }

    /// Whether the channel sends anything to its users.
    pub(crate) fn replies(&self) -> bool {
        self.settings.greeting.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml_text: &str) -> TelegramSettings {
        toml::from_str(toml_text).expect("settings parse")
    }

    #[test]
    fn validates_token_mode_and_limits() {
        let ok = settings("token = \"123:abc-DEF_9\"\n");
        assert!(TelegramChannel::new("bot".into(), ok).is_ok());
        let bad_token = settings("token = \"not a token\"\n");
        let err = TelegramChannel::new("bot".into(), bad_token).unwrap_err();
        assert!(
            err.contains("`token`") && !err.contains("not a token"),
            "{err}"
        );
        let webhook = settings("token = \"1:a\"\nmode = \"webhook\"\n");
        assert!(
            TelegramChannel::new("bot".into(), webhook)
                .unwrap_err()
                .contains("webhook_secret")
        );
        let bad_secret =
            settings("token = \"1:a\"\nmode = \"webhook\"\nwebhook_secret = \"has space\"\n");
        assert!(TelegramChannel::new("bot".into(), bad_secret).is_err());
        let long_poll = settings("token = \"1:a\"\npoll_timeout = \"60s\"\n");
        assert!(TelegramChannel::new("bot".into(), long_poll).is_err());
        let button = settings("token = \"1:a\"\nshare_phone_button = \"Share\"\n");
        assert!(TelegramChannel::new("bot".into(), button).is_err());
        let url_in_polling = settings("token = \"1:a\"\nwebhook_url = \"https://x.example/\"\n");
        assert!(TelegramChannel::new("bot".into(), url_in_polling).is_err());
        assert!(toml::from_str::<TelegramSettings>("token = \"1:a\"\nbogus = 1\n").is_err());
    }

    #[test]
    fn two_sources_for_one_secret_are_refused() {
        let s = settings("token = \"1:a\"\ntoken_env = \"X\"\n");
        assert!(TelegramChannel::new("bot".into(), s).is_err());
    }
}
