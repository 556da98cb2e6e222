use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use leadgate_connector::{ChannelId, HumanDuration, Secret, SecretSource};
use serde::Deserialize;

use crate::message::MailRules;

/// How the connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Implicit TLS (port 993).
    #[default]
    Tls,
    /// Plain connection upgraded with STARTTLS (port 143).
    Starttls,
    /// No encryption: only for a server on the same host or in tests.
    Plain,
}

/// How to log in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// IMAP LOGIN.
    #[default]
    Login,
    /// AUTHENTICATE PLAIN.
    Plain,
    /// AUTHENTICATE XOAUTH2 with a bearer token read from `oauth2_token_file`.
    Xoauth2,
}

/// What to do with a message once it is committed. Never before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterCommit {
    /// Leave it as it is (it stays unread for people: leadgate peeks).
    #[default]
    Keep,
    /// Mark it `\Seen`.
    Seen,
    /// Move it to `move_to` (MOVE, or COPY + EXPUNGE where MOVE is missing).
    Move,
}

/// The `[imap]` table of a `kind = "imap"` channel file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImapSettings {
    pub host: String,
    /// Default: 993 with `tls`, 143 otherwise.
    pub port: Option<u16>,
    #[serde(default)]
    pub security: Security,
    /// PEM file of CA certificates to trust besides the public web PKI
    /// roots: for a server whose certificate a private CA issued.
    pub ca_file: Option<PathBuf>,
    pub username: String,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    #[serde(default)]
    pub auth: AuthMethod,
    pub oauth2_token_file: Option<PathBuf>,
    /// Folders to read; default `["INBOX"]`.
    #[serde(default = "inbox")]
    pub folders: Vec<String>,
    #[serde(default)]
    pub after_commit: AfterCommit,
    pub move_to: Option<String>,
    /// How often to look for mail when the server has no IDLE, and as a
    /// safety net beside IDLE.
    #[serde(default = "poll_interval")]
    pub poll_interval: HumanDuration,
    /// IDLE is re-issued after this long (RFC 2177: under 29 minutes).
    #[serde(default = "idle_renewal")]
    pub idle_renewal: HumanDuration,
    /// Messages fetched and committed per transaction.
    #[serde(default = "batch_size")]
    pub batch_size: usize,
    #[serde(default = "connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// How mail is read: own domains, form-notification senders and labels.
    #[serde(default)]
    pub mail: MailRules,
}

fn inbox() -> Vec<String> {
    vec!["INBOX".into()]
}
fn poll_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn idle_renewal() -> HumanDuration {
    HumanDuration(Duration::from_secs(25 * 60))
}
fn batch_size() -> usize {
    100
}
fn connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(20))
}

/// Credentials, resolved.
#[derive(Debug, Clone)]
pub enum Credentials {
    Password(Secret),
    OAuth2Token(Secret),
}

/// An IMAP channel ready to run.
#[derive(Debug, Clone)]
pub struct ImapChannel {
    pub id: ChannelId,
    pub settings: ImapSettings,
    pub credentials: Credentials,
    pub tls: Arc<rustls::ClientConfig>,
}

impl ImapChannel {
    pub fn new(id: ChannelId, settings: ImapSettings) -> Result<Self, String> {
        if settings.host.trim().is_empty() {
            return Err("`host` is empty".into());
        }
        if settings.folders.is_empty() {
            return Err("`folders` needs at least one folder".into());
        }
        if settings.batch_size == 0 || settings.batch_size > 10_000 {
            return Err("`batch_size` must be between 1 and 10000".into());
        }
        if settings.idle_renewal.0 >= Duration::from_secs(29 * 60) {
            return Err("`idle_renewal` must be under 29 minutes (RFC 2177)".into());
        }
        if settings.after_commit == AfterCommit::Move
            && settings.move_to.as_deref().is_none_or(str::is_empty)
        {
            return Err("`after_commit = \"move\"` needs `move_to`".into());
        }
        let credentials = match settings.auth {
            AuthMethod::Xoauth2 => {
                let token = SecretSource {
                    file: settings.oauth2_token_file.clone(),
                    ..SecretSource::default()
                }
                .resolve("oauth2_token")?
                .ok_or("`auth = \"xoauth2\"` needs `oauth2_token_file`")?;
                Credentials::OAuth2Token(token)
            }
            AuthMethod::Login | AuthMethod::Plain => {
                let password = SecretSource {
                    value: settings.password.clone(),
                    file: settings.password_file.clone(),
                    env: settings.password_env.clone(),
                }
                .resolve("password")?
                .ok_or("set `password`, `password_file` or `password_env`")?;
                Credentials::Password(password)
            }
        };
        let tls = crate::stream::client_config(settings.ca_file.as_deref())?;
        Ok(ImapChannel {
            id,
            tls,
            settings,
            credentials,
        })
    }

    pub fn port(&self) -> u16 {
        self.settings.port.unwrap_or(match self.settings.security {
            Security::Tls => 993,
            Security::Starttls | Security::Plain => 143,
        })
    }
}
