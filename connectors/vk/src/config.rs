use std::path::PathBuf;
use std::time::Duration;

use leadgate_connector::{ChannelId, HumanDuration, Secret, SecretSource};
use serde::Deserialize;

/// The API version every request names and every event is read as.
pub const API_VERSION: &str = "5.199";
/// The VK API's method endpoint.
pub const DEFAULT_API_URL: &str = "https://api.vk.com/method/";

/// How VK reaches leadgate for this community.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VkMode {
    /// VK POSTs each event to `/vk/{channel}` (community settings → API
    /// usage → Callback API).
    #[default]
    Callback,
    /// leadgate pulls events with the Bots Long Poll API (community
    /// settings → API usage → Long Poll API); needs no public URL.
    LongPoll,
}

impl VkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            VkMode::Callback => "callback",
            VkMode::LongPoll => "long_poll",
        }
    }
}

/// The `[vk]` table of a `kind = "vk"` channel file.
///
/// Secrets may be given inline, as a file (`*_file`, relative to the
/// configuration folder) or as an environment variable (`*_env`); at most one
/// of the three per secret.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VkSettings {
    /// The community's numeric id (positive, without the minus sign).
    pub group_id: u64,
    #[serde(default)]
    pub mode: VkMode,

    /// The community access token (community settings → API usage →
    /// Access tokens) with the "messages" right. Long poll needs it; in
    /// callback mode it is used only to look up sender names.
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub token_env: Option<String>,

    /// Callback: the string VK expects back for its `confirmation` event.
    #[serde(default)]
    pub confirmation: Option<String>,
    /// Callback: the "secret key" set beside the server URL; every event
    /// carries it in its `secret` field.
    #[serde(default)]
    pub secret: Option<Secret>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_env: Option<String>,

    /// Base URL of the API methods; only tests point it elsewhere.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// Long poll: how long one `a_check` waits for events (1s–90s).
    #[serde(default = "default_wait")]
    pub wait: HumanDuration,
    /// Most API calls per second with this token. VK allows a community
    /// token 20 per second (some accounts report 3); other programs using
    /// the same token share that budget.
    #[serde(default = "default_api_rate")]
    pub api_requests_per_second: u32,
    /// Look up sender names and profile links with `users.get`.
    #[serde(default = "yes")]
    pub fetch_names: bool,
    /// Event types that may become leads. A message from a user is always
    /// one; add e.g. `wall_reply_new` or `market_comment_new` to make
    /// comments leads too. Every other event is recorded, not a lead.
    #[serde(default = "default_lead_events")]
    pub lead_events: Vec<String>,
    /// Largest accepted Callback body in bytes (413 above it).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

fn yes() -> bool {
    true
}
fn default_api_url() -> String {
    DEFAULT_API_URL.into()
}
fn default_wait() -> HumanDuration {
    HumanDuration(Duration::from_secs(25))
}
fn default_api_rate() -> u32 {
    3
}
fn default_lead_events() -> Vec<String> {
    vec!["message_new".into()]
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}

/// A VK channel ready to serve: settings validated, secrets resolved.
#[derive(Debug, Clone)]
pub struct VkChannel {
    pub id: ChannelId,
    pub settings: VkSettings,
    pub(crate) token: Option<Secret>,
    pub(crate) secret: Option<Secret>,
}

impl VkChannel {
    pub fn new(id: ChannelId, settings: VkSettings) -> Result<Self, String> {
        let s = &settings;
        if s.group_id == 0 {
            return Err("`group_id` must be the community's numeric id (without a minus)".into());
        }
        let api = s.api_url.trim();
        if !(api.starts_with("https://") || api.starts_with("http://")) {
            return Err(format!(
                "`api_url`: {api:?} is not an http(s) URL (default {DEFAULT_API_URL})"
            ));
        }
        let wait = s.wait.0;
        if wait < Duration::from_secs(1) || wait > Duration::from_secs(90) {
            return Err("`wait` must be between 1s and 90s (VK's limit)".into());
        }
        if s.api_requests_per_second == 0 || s.api_requests_per_second > 20 {
            return Err("`api_requests_per_second` must be between 1 and 20".into());
        }
        if s.max_body_bytes == 0 {
            return Err("`max_body_bytes` must be greater than 0".into());
        }
        if let Some(bad) = s.lead_events.iter().find(|e| !is_event_name(e)) {
            return Err(format!(
                "`lead_events`: {bad:?} is not a VK event type such as \"wall_reply_new\""
            ));
        }
        let token = SecretSource {
            value: s.token.clone(),
            file: s.token_file.clone(),
            env: s.token_env.clone(),
        }
        .resolve("token")?;
        let secret = SecretSource {
            value: s.secret.clone(),
            file: s.secret_file.clone(),
            env: s.secret_env.clone(),
        }
        .resolve("secret")?;
        match s.mode {
            VkMode::LongPoll => {
                if token.is_none() {
                    return Err(
                        "`mode = \"long_poll\"` needs the community token: set `token_file` (or `token`, `token_env`)"
                            .into(),
                    );
                }
                if s.confirmation.is_some() || secret.is_some() {
                    return Err(
                        "`confirmation` and `secret` are Callback API settings; this channel has `mode = \"long_poll\"`"
                            .into(),
                    );
                }
            }
            VkMode::Callback => {
                if s.confirmation
                    .as_deref()
                    .is_none_or(|c| c.trim().is_empty())
                {
                    return Err(
                        "`confirmation` is required in callback mode: the string shown in the community's Callback API settings"
                            .into(),
                    );
                }
                if s.fetch_names && token.is_none() {
                    return Err(
                        "`fetch_names` needs the community token: set `token_file` (or `token`, `token_env`), or `fetch_names = false`"
                            .into(),
                    );
                }
            }
        }
        Ok(VkChannel {
            id,
            settings,
            token,
            secret,
        })
    }

    pub fn mode(&self) -> VkMode {
        self.settings.mode
    }

    /// Whether Callback requests are checked against a secret key.
    pub fn verifies_requests(&self) -> bool {
        self.secret.is_some()
    }

    pub(crate) fn is_lead_event(&self, event_type: &str) -> bool {
        self.settings.lead_events.iter().any(|e| e == event_type)
    }
}

fn is_event_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml_text: &str) -> VkSettings {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn callback_defaults_and_required_fields() {
        let s =
            settings("group_id = 1\nconfirmation = \"abc\"\nsecret = \"s\"\nfetch_names = false\n");
        assert_eq!(s.mode, VkMode::Callback);
        assert_eq!(s.api_url, DEFAULT_API_URL);
        assert_eq!(s.wait.0, Duration::from_secs(25));
        assert_eq!(s.lead_events, vec!["message_new".to_owned()]);
        let c = VkChannel::new("vk".into(), s).unwrap();
        assert!(c.verifies_requests());

        let no_confirmation = settings("group_id = 1\nfetch_names = false\n");
        let e = VkChannel::new("vk".into(), no_confirmation).unwrap_err();
        assert!(e.contains("`confirmation`"), "{e}");

        let names_without_token = settings("group_id = 1\nconfirmation = \"x\"\n");
        let e = VkChannel::new("vk".into(), names_without_token).unwrap_err();
        assert!(e.contains("`fetch_names`"), "{e}");
    }

    #[test]
    fn long_poll_needs_a_token_and_no_callback_settings() {
        let e = VkChannel::new(
            "vk".into(),
            settings("group_id = 1\nmode = \"long_poll\"\n"),
        )
        .unwrap_err();
        assert!(e.contains("token_file"), "{e}");
        let e = VkChannel::new(
            "vk".into(),
            settings("group_id = 1\nmode = \"long_poll\"\ntoken = \"t\"\nconfirmation = \"c\"\n"),
        )
        .unwrap_err();
        assert!(e.contains("`confirmation`"), "{e}");
        let ok = VkChannel::new(
            "vk".into(),
            settings("group_id = 1\nmode = \"long_poll\"\ntoken = \"t\"\n"),
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn limits_are_checked_and_unknown_keys_refused() {
        let bad_wait =
            settings("group_id = 1\nmode = \"long_poll\"\ntoken = \"t\"\nwait = \"91s\"\n");
        assert!(
            VkChannel::new("vk".into(), bad_wait)
                .unwrap_err()
                .contains("`wait`")
        );
        let bad_rate = settings(
            "group_id = 1\nmode = \"long_poll\"\ntoken = \"t\"\napi_requests_per_second = 0\n",
        );
        assert!(
            VkChannel::new("vk".into(), bad_rate)
                .unwrap_err()
                .contains("api_requests_per_second")
        );
        let bad_event = settings(
            "group_id = 1\nmode = \"long_poll\"\ntoken = \"t\"\nlead_events = [\"Wall Reply\"]\n",
        );
        assert!(
            VkChannel::new("vk".into(), bad_event)
                .unwrap_err()
                .contains("lead_events")
        );
        assert!(toml::from_str::<VkSettings>("group_id = 1\ngroupid = 2\n").is_err());
    }
}
