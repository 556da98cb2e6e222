//! `[notify]` of `leadgate.toml`: the transports that tell a salesperson
//! about a lead (a Telegram notifier bot, SMTP), the message templates and
//! the retry policy. Who gets what is in `team.toml` (`telegram_chat_id`,
//! `email`, `notify`).
//!
//! ```toml
//! [notify]
//! max_age = "24h"                 # give up on a notification this old
//! supervisors = ["head"]          # told when a lead is flagged for a supervisor
//! [notify.telegram]
//! token_file = "secrets/notifier-bot.token"
//! [notify.email]
//! host = "smtp.ourcompany.example"
//! security = "starttls"
//! # ca_file = "certs/smtp-ca.pem"  # a private CA besides the public roots
//! username = "leadgate@ourcompany.example"
//! password_file = "secrets/smtp.password"
//! from = "leadgate <leadgate@ourcompany.example>"
//! [notify.templates]
//! link = "https://crm.example/leads/{lead_id}"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use leadgate_connector::{HumanDuration, Secret, SecretSource};
use serde::Deserialize;

use super::template::Template;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// How often the delivery task looks for due notifications.
    pub poll_every: HumanDuration,
    /// The first retry waits this long; each next one twice as long.
    pub retry_first: HumanDuration,
    pub retry_max: HumanDuration,
    /// A notification still not delivered this long after its event is
    /// given up (logged as an error, `failed_at` set).
    pub max_age: HumanDuration,
    /// Sent and given-up rows are deleted this long after.
    pub keep: HumanDuration,
    /// Users told when a lead is flagged for a supervisor.
    pub supervisors: Vec<String>,
    pub telegram: Option<TelegramFile>,
    pub email: Option<EmailFile>,
    pub templates: TemplatesFile,
}

fn secs(s: u64) -> HumanDuration {
    HumanDuration(Duration::from_secs(s))
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            poll_every: secs(1),
            retry_first: secs(5),
            retry_max: secs(600),
            max_age: secs(86_400),
            keep: secs(30 * 86_400),
            supervisors: Vec::new(),
            telegram: None,
            email: None,
            templates: TemplatesFile::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelegramFile {
    /// The notifier bot's token (a bot of its own, not a lead channel's).
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    #[serde(default = "default_api_url")]
    pub api_url: String,
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

fn default_api_url() -> String {
    "https://api.telegram.org/".into()
}

fn default_timeout() -> HumanDuration {
    secs(30)
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: only for a relay on this host (port 25).
    Plain,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmailFile {
    pub host: String,
    pub port: Option<u16>,
    #[serde(default)]
    pub security: SmtpSecurity,
    /// PEM file of CA certificates to trust besides the public web PKI
    /// roots (relative to the configuration folder), as an IMAP channel's
    /// `ca_file`: for a relay whose certificate a private CA issued.
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// `Name <address>` or an address.
    pub from: String,
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TemplatesFile {
    /// The first line (Telegram) and the subject (e-mail), per event.
    pub assigned: String,
    pub escalated: String,
    pub supervisor: String,
    /// The message under the first line.
    pub body: String,
    /// The CRM card of the lead; `{link}` in the other templates.
    pub link: String,
}

impl Default for TemplatesFile {
    fn default() -> Self {
        TemplatesFile {
            assigned: "New lead #{lead_id} for you: {contact}".into(),
            escalated: "Overdue lead #{lead_id} is now yours: {contact}".into(),
            supervisor: "Lead #{lead_id} still not taken by {assignee}: {contact}".into(),
            body: "{summary}\nChannel: {channel} ({kind})\nContact: {contact}\n{note}\n{link}"
                .into(),
            link: String::new(),
        }
    }
}

/// A transport a notification goes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Telegram,
    Email,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Telegram, Transport::Email];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Telegram => "telegram",
            Transport::Email => "email",
        }
    }

    pub fn parse(s: &str) -> Option<Transport> {
        Transport::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// The Telegram notifier, resolved.
#[derive(Debug, Clone)]
pub struct TelegramSettings {
    pub token: Secret,
    pub api_url: reqwest::Url,
    pub timeout: Duration,
}

/// The SMTP relay, resolved.
#[derive(Debug, Clone)]
pub struct EmailSettings {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    /// Trusted besides the public roots: the certificates of `ca_file`.
    pub ca_certs: Vec<lettre::transport::smtp::client::Certificate>,
    pub credentials: Option<(String, Secret)>,
    pub from: lettre::message::Mailbox,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Templates {
    pub assigned: Template,
    pub escalated: Template,
    pub supervisor: Template,
    pub body: Template,
    pub link: Template,
}

/// `[notify]`, validated, with its secrets read.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub poll_every: Duration,
    pub retry_first: Duration,
    pub retry_max: Duration,
    pub max_age: Duration,
    pub keep: Duration,
    pub telegram: Option<TelegramSettings>,
    pub email: Option<EmailSettings>,
    pub templates: Templates,
}

impl NotifySettings {
    pub fn enabled(&self, t: Transport) -> bool {
        match t {
            Transport::Telegram => self.telegram.is_some(),
            Transport::Email => self.email.is_some(),
        }
    }
}

impl Default for NotifySettings {
    fn default() -> Self {
        // The defaults are valid templates; `resolve` of the default file
        // cannot fail.
        NotifyConfig::default()
            .resolve()
            .unwrap_or_else(|_| unreachable_defaults())
    }
}

fn unreachable_defaults() -> NotifySettings {
    let t = Template::literal("");
    NotifySettings {
        poll_every: Duration::from_secs(1),
        retry_first: Duration::from_secs(5),
        retry_max: Duration::from_secs(600),
        max_age: Duration::from_secs(86_400),
        keep: Duration::from_secs(30 * 86_400),
        telegram: None,
        email: None,
        templates: Templates {
            assigned: t.clone(),
            escalated: t.clone(),
            supervisor: t.clone(),
            body: t.clone(),
            link: t,
        },
    }
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_matches(['[', ']']);
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl NotifyConfig {
    /// Check everything `[notify]` says on its own; problems are
    /// `(field, message)`, the field under `notify.`.
    pub fn resolve(&self) -> Result<NotifySettings, Vec<(String, String)>> {
        let mut problems: Vec<(String, String)> = Vec::new();
        let mut p = |field: &str, msg: String| problems.push((format!("notify.{field}"), msg));
        for (field, d) in [
            ("poll_every", self.poll_every),
            ("retry_first", self.retry_first),
        ] {
            if d.0 < Duration::from_millis(10) {
                p(field, "must be at least 10ms".into());
            }
        }
        if self.retry_max.0 < self.retry_first.0 {
            p("retry_max", "must not be shorter than retry_first".into());
        }
        let telegram = self.telegram.as_ref().and_then(|t| {
            let token = SecretSource {
                value: t.token.clone(),
                file: t.token_file.clone(),
                env: t.token_env.clone(),
            }
            .resolve("token");
            let token = match token {
                Ok(Some(token)) => token,
                Ok(None) => {
                    p(
                        "telegram.token_file",
                        "set `token_file` (or `token`, `token_env`): the notifier bot's token from @BotFather".into(),
                    );
                    return None;
                }
                Err(e) => {
                    p("telegram", e);
                    return None;
                }
            };
            if !token
                .expose()
                .split_once(':')
                .is_some_and(|(id, key)| {
                    !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && !key.is_empty()
                })
            {
                p(
                    "telegram.token",
                    "not a bot token (expected `<digits>:<key>` as @BotFather gives it)".into(),
                );
                return None;
            }
            let api_url = match reqwest::Url::parse(&t.api_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => u,
                _ => {
                    p(
                        "telegram.api_url",
                        format!("{:?} is not an http(s) URL", t.api_url),
                    );
                    return None;
                }
            };
            Some(TelegramSettings {
                token,
                api_url,
                timeout: t.timeout.0,
            })
        });
        let email = self.email.as_ref().and_then(|e| {
            if e.host.trim().is_empty() {
                p("email.host", "must name the SMTP server".into());
                return None;
            }
            let from = match e.from.parse::<lettre::message::Mailbox>() {
                Ok(m) => m,
                Err(err) => {
                    p(
                        "email.from",
                        format!("{:?} is not an address ({err})", e.from),
                    );
                    return None;
                }
            };
            let password = SecretSource {
                value: e.password.clone(),
                file: e.password_file.clone(),
                env: e.password_env.clone(),
            }
            .resolve("password");
            let credentials = match (&e.username, password) {
                (_, Err(err)) => {
                    p("email", err);
                    return None;
                }
                (Some(u), Ok(Some(pw))) => Some((u.clone(), pw)),
                (None, Ok(None)) => None,
                (Some(_), Ok(None)) => {
                    p(
                        "email.password_file",
                        "`username` needs `password_file` (or `password`, `password_env`)"
                            .into(),
                    );
                    return None;
                }
                (None, Ok(Some(_))) => {
                    p("email.username", "a password needs a `username`".into());
                    return None;
                }
            };
            if e.security == SmtpSecurity::Plain && !is_loopback(&e.host) {
                p(
                    "email.security",
                    "\"plain\" sends mail (and the password) unencrypted: only for a relay on this host; use \"starttls\" or \"tls\"".into(),
                );
                return None;
            }
            let ca_certs = match (&e.ca_file, e.security) {
                (None, _) => Vec::new(),
                (Some(_), SmtpSecurity::Plain) => {
                    p(
                        "email.ca_file",
                        "only used with security = \"starttls\" or \"tls\"".into(),
                    );
                    return None;
                }
                (Some(file), _) => {
                    let certs = leadgate_connector::read_ca_file(file).and_then(|certs| {
                        certs
                            .into_iter()
                            .map(|der| {
                                lettre::transport::smtp::client::Certificate::from_der(
                                    der.to_vec(),
                                )
                                .map_err(|err| format!("a certificate is unusable: {err}"))
                            })
                            .collect::<Result<Vec<_>, _>>()
                    });
                    match certs {
                        Ok(certs) => certs,
                        Err(err) => {
                            p("email.ca_file", err);
                            return None;
                        }
                    }
                }
            };
            let port = e.port.unwrap_or(match e.security {
                SmtpSecurity::Starttls => 587,
                SmtpSecurity::Tls => 465,
                SmtpSecurity::Plain => 25,
            });
            Some(EmailSettings {
                host: e.host.trim().to_owned(),
                port,
                security: e.security,
                ca_certs,
                credentials,
                from,
                timeout: e.timeout.0,
            })
        });
        let mut template = |field: &str, text: &str| match Template::parse(text) {
            Ok(t) => Some(t),
            Err(e) => {
                p(&format!("templates.{field}"), e);
                None
            }
        };
        let t = &self.templates;
        let templates = (
            template("assigned", &t.assigned),
            template("escalated", &t.escalated),
            template("supervisor", &t.supervisor),
            template("body", &t.body),
            template("link", &t.link),
        );
        if let (Some(_), true) = (&templates.4, t.link.contains("{link}")) {
            p("templates.link", "cannot contain {link} itself".into());
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let (Some(assigned), Some(escalated), Some(supervisor), Some(body), Some(link)) = templates
        else {
            return Err(vec![("notify.templates".into(), "invalid".into())]);
        };
        Ok(NotifySettings {
            poll_every: self.poll_every.0,
            retry_first: self.retry_first.0,
            retry_max: self.retry_max.0,
            max_age: self.max_age.0,
            keep: self.keep.0,
            telegram,
            email,
            templates: Templates {
                assigned,
                escalated,
                supervisor,
                body,
                link,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(toml_text: &str) -> Vec<String> {
        let c: NotifyConfig = toml::from_str(toml_text).unwrap();
        match c.resolve() {
            Ok(_) => Vec::new(),
            Err(p) => p.into_iter().map(|(f, m)| format!("{f}: {m}")).collect(),
        }
    }

    #[test]
    fn transports_are_checked_without_printing_secrets() {
        assert!(problems("").is_empty());
        let ok = "[email]\nhost = \"smtp.example.com\"\nusername = \"u\"\npassword = \"pw-secret\"\nfrom = \"Leads <l@example.com>\"\n";
        assert!(problems(ok).is_empty(), "{:?}", problems(ok));
        let c: NotifyConfig = toml::from_str(ok).unwrap();
        let email = c.resolve().unwrap().email.unwrap();
        assert_eq!((email.port, email.security), (587, SmtpSecurity::Starttls));

        let plain_remote = "[email]\nhost = \"smtp.example.com\"\nsecurity = \"plain\"\nfrom = \"l@example.com\"\n";
        assert!(problems(plain_remote)[0].starts_with("notify.email.security: "));
        let plain_local =
            "[email]\nhost = \"127.0.0.1\"\nsecurity = \"plain\"\nfrom = \"l@example.com\"\n";
        assert!(problems(plain_local).is_empty());
        let no_password =
            "[email]\nhost = \"h.example\"\nusername = \"u\"\nfrom = \"l@example.com\"\n";
        assert!(problems(no_password)[0].starts_with("notify.email.password_file: "));
        let bad_from = "[email]\nhost = \"h.example\"\nfrom = \"not an address\"\n";
        assert!(problems(bad_from)[0].starts_with("notify.email.from: "));

        let bad_token = "[telegram]\ntoken = \"pw-secret\"\n";
        let p = problems(bad_token);
        assert!(p[0].starts_with("notify.telegram.token: "), "{p:?}");
        assert!(!p[0].contains("pw-secret"));
        let no_token = "[telegram]\n";
        assert!(problems(no_token)[0].starts_with("notify.telegram.token_file: "));
        let bad_url = "[telegram]\ntoken = \"1:a\"\napi_url = \"ftp://x\"\n";
        assert!(problems(bad_url)[0].starts_with("notify.telegram.api_url: "));
        let link = "[templates]\nlink = \"{link}\"\n";
        assert!(problems(link)[0].starts_with("notify.templates.link: "));
    }

    #[test]
    fn a_ca_file_is_read_for_tls_and_refused_for_plain() {
        let missing = "[email]\nhost = \"smtp.example.com\"\nsecurity = \"tls\"\nca_file = \"/nonexistent/leadgate-ca.pem\"\nfrom = \"l@example.com\"\n";
        let p = problems(missing);
        assert!(
            p[0].starts_with("notify.email.ca_file: cannot read /nonexistent/leadgate-ca.pem"),
            "{p:?}"
        );
        let plain = "[email]\nhost = \"127.0.0.1\"\nsecurity = \"plain\"\nca_file = \"ca.pem\"\nfrom = \"l@example.com\"\n";
        let p = problems(plain);
        assert!(
            p[0].starts_with("notify.email.ca_file: only used with"),
            "{p:?}"
        );
        let none = "[email]\nhost = \"smtp.example.com\"\nfrom = \"l@example.com\"\n";
        let c: NotifyConfig = toml::from_str(none).unwrap();
        assert!(c.resolve().unwrap().email.unwrap().ca_certs.is_empty());
    }
}
