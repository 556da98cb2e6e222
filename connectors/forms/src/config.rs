use leadgate_connector::{ChannelId, Secret, SecretSource};
use serde::Deserialize;

/// The `[form]` table of a `kind = "form"` channel file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FormSettings {
    /// Shared secret a server-to-server caller sends in `X-Leadgate-Key`
    /// (or `?token=` where the sender cannot set headers). Unset: open form.
    pub api_key: Option<Secret>,
    pub api_key_file: Option<std::path::PathBuf>,
    pub api_key_env: Option<String>,
    /// Origins allowed to post from a browser (`https://shop.example`).
    pub cors_origins: Vec<String>,
    /// Hidden fields a human never fills; a filled one marks the post spam.
    pub honeypot_fields: Vec<String>,
    /// Largest accepted body in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Posts per minute from one client address; 0 turns the limit off.
    pub rate_limit_per_minute: u32,
    /// Where to send a browser after a classic (non-fetch) form post.
    pub success_redirect: Option<String>,
    /// Extra field names, per target, on top of the built-in aliases.
    pub fields: FieldAliases,
}

impl Default for FormSettings {
    fn default() -> Self {
        FormSettings {
            api_key: None,
            api_key_file: None,
            api_key_env: None,
            cors_origins: Vec::new(),
            honeypot_fields: vec!["website".into(), "company_url".into(), "hp".into()],
            max_body_bytes: 64 * 1024,
            rate_limit_per_minute: 60,
            success_redirect: None,
            fields: FieldAliases::default(),
        }
    }
}

/// Per-channel additions to the field-name aliases, e.g.
/// `phone = ["Ваш номер"]`. Matching is case-insensitive.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FieldAliases {
    pub name: Vec<String>,
    pub phone: Vec<String>,
    pub email: Vec<String>,
    pub telegram: Vec<String>,
    pub comment: Vec<String>,
    pub product: Vec<String>,
    pub region: Vec<String>,
    pub page_url: Vec<String>,
    /// Field names to drop entirely (cookies, tokens, captcha responses).
    pub ignore: Vec<String>,
}

/// A form channel ready to serve: settings with secrets resolved.
#[derive(Debug, Clone)]
pub struct FormChannel {
    pub id: ChannelId,
    pub settings: FormSettings,
    pub api_key: Option<Secret>,
}

impl FormChannel {
    pub fn new(id: ChannelId, settings: FormSettings) -> Result<Self, String> {
        let api_key = SecretSource {
            value: settings.api_key.clone(),
            file: settings.api_key_file.clone(),
            env: settings.api_key_env.clone(),
        }
        .resolve("api_key")?;
        if settings.max_body_bytes == 0 {
            return Err("`max_body_bytes` must be greater than 0".into());
        }
        for origin in &settings.cors_origins {
            if origin == "*" {
                return Err("`cors_origins`: list exact origins; `*` is not allowed".into());
            }
            if !(origin.starts_with("https://") || origin.starts_with("http://")) {
                return Err(format!(
                    "`cors_origins`: {origin:?} is not an origin (scheme://host[:port])"
                ));
            }
        }
        Ok(FormChannel {
            id,
            settings,
            api_key,
        })
    }
}
