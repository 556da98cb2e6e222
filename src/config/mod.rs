//! Configuration: one main file, one file per channel, the team and the
//! routing rules, all TOML in one directory:
//!
//! ```text
//! leadgate.toml        database, HTTP listener, logging, pipeline defaults
//! channels.d/*.toml    one channel per file; the file name is the channel id
//! team.toml            users and roles
//! routing.toml         ordered routing rules and the global default
//! ```
//!
//! Loading is all-or-nothing and reports every problem at once, each with
//! the file, the line where the TOML parser knows it, and the field, so
//! `leadgate check` works like `nginx -t`. Environment variables
//! `LEADGATE__SECTION__KEY` override the main file.

mod files;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use leadgate_connector::{ChannelId, Secret};
use leadgate_forms::FormSettings;
use leadgate_imap::ImapSettings;
use leadgate_telegram::TelegramSettings;
use leadgate_telephony::TelephonySettings;
use leadgate_vk::VkSettings;
use serde::Deserialize;

pub use files::{load, phone_region};
pub use leadgate_connector::HumanDuration;

use crate::routing::{Assignee, RoutingConfig, TeamConfig};

/// Where the packaged daemon keeps its database when the main file names
/// none.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:///var/lib/leadgate/leadgate.db";

/// One problem in the configuration, located as precisely as known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found while loading; the configuration is unusable if there
/// is at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    pub main: MainConfig,
    pub channels: Vec<ChannelConfig>,
    pub team: TeamConfig,
    pub routing: RoutingConfig,
    /// `[notify]` resolved: transports with their secrets, templates.
    pub notify: std::sync::Arc<crate::notify::NotifySettings>,
}

impl Config {
    pub fn channel(&self, id: &str) -> Option<&ChannelConfig> {
        self.channels.iter().find(|c| c.id.as_str() == id)
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MainConfig {
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub pipeline: PipelineConfig,
    pub instance: InstanceConfig,
    /// Telling salespeople about their leads (Telegram, e-mail).
    pub notify: crate::notify::NotifyConfig,
}

impl MainConfig {
    /// The settings of `self` (what the daemon started with) that `new`
    /// changes and a reload cannot apply: the database and its pool, the
    /// listening socket and its limits, logging, the instance's identity and
    /// lease, the writer's batch size. Named as in the file.
    pub fn changed_until_restart(&self, new: &MainConfig) -> Vec<&'static str> {
        [
            ("[database]", self.database != new.database),
            ("[http]", self.http != new.http),
            ("[log] format", self.log.format != new.log.format),
            ("[instance]", self.instance != new.instance),
            (
                "pipeline.max_batch",
                self.pipeline.max_batch != new.pipeline.max_batch,
            ),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
    }
}

/// Who this instance is when several share one database.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InstanceConfig {
    /// Its name in the `leases` table; default `<hostname>:<http port>`,
    /// stable across restarts so a restarted instance takes its pollers
    /// back at once.
    pub name: Option<String>,
    /// How long a poller lease lasts without renewal: how soon another
    /// instance takes over the pollers of one that died.
    pub lease_ttl: HumanDuration,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig {
            name: None,
            lease_ttl: HumanDuration(std::time::Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/file.db` (relative to the working directory) or
    /// `postgres://user@host/db`. May carry a password: never logged.
    pub url: Option<Secret>,
    /// Read the URL from this file instead (for passwords).
    pub url_file: Option<PathBuf>,
    pub max_connections: u32,
    /// How long a request waits for a database connection before the store
    /// counts as unavailable (webhooks then answer 503).
    pub acquire_timeout: HumanDuration,
    /// SQLite `synchronous`: `full` (default: a commit survives power loss)
    /// or `normal` (survives a process crash; faster).
    pub sqlite_synchronous: SqliteSynchronous,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            url_file: None,
            max_connections: 8,
            acquire_timeout: HumanDuration(std::time::Duration::from_secs(3)),
            sqlite_synchronous: SqliteSynchronous::Full,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    #[default]
    Full,
    Normal,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address for webhooks, forms, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
    /// Longest time a client may take to send a request's headers and body.
    pub request_timeout: HumanDuration,
    /// Reverse proxies (addresses or networks) whose `X-Forwarded-For`
    /// names the client: per-address limits then apply to visitors, not to
    /// the proxy. Empty: every request's client is its peer.
    pub trusted_proxies: Vec<AddressRange>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            request_timeout: HumanDuration(std::time::Duration::from_secs(30)),
            trusted_proxies: Vec::new(),
        }
    }
}

/// An address (`10.0.0.5`, `::1`) or a network in CIDR notation
/// (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct AddressRange {
    network: std::net::IpAddr,
    prefix: u8,
}

impl AddressRange {
    pub fn contains(&self, address: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        // An IPv4 peer may arrive as an IPv4-mapped IPv6 address.
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        let bits = |a: IpAddr| match a {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        };
        let ((net, width), (addr, addr_width)) = (bits(self.network), bits(address));
        if width != addr_width {
            return false;
        }
        let host_bits = u32::from(width - self.prefix);
        net.checked_shr(host_bits).unwrap_or(0) == addr.checked_shr(host_bits).unwrap_or(0)
    }
}

impl TryFrom<String> for AddressRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.as_str(), None),
        };
        let network: std::net::IpAddr = address.trim().parse().map_err(|_| {
            format!("{text:?} is not an address or a network (e.g. \"10.0.0.5\", \"10.0.0.0/8\")")
        })?;
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {width}"))?,
        };
        Ok(AddressRange { network, prefix })
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `auto` (pretty on a terminal, plain otherwise), `pretty`, `plain`
    /// (no colours: journald), or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `leadgate=debug,info`; the
    /// `RUST_LOG` variable wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Auto,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Auto,
    Pretty,
    Plain,
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Region for phone numbers written without a country code (ISO 3166
    /// alpha-2).
    pub default_region: String,
    /// A message from a contact with an open lead on the same channel
    /// created within this window joins that lead as an activity.
    pub activity_window: HumanDuration,
    /// Posts without a provider id whose normalized content repeats an
    /// earlier one within this window are duplicates (double clicks).
    pub dedupe_window: HumanDuration,
    /// Most items committed in one transaction.
    pub max_batch: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            default_region: "RU".into(),
            activity_window: HumanDuration(std::time::Duration::from_secs(30 * 86_400)),
            dedupe_window: HumanDuration(std::time::Duration::from_secs(600)),
            max_batch: 512,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Form,
    Imap,
    Telegram,
    Vk,
    Telephony,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Form => "form",
            ChannelKind::Imap => "imap",
            ChannelKind::Telegram => "telegram",
            ChannelKind::Vk => "vk",
            ChannelKind::Telephony => "telephony",
        }
    }
}

/// A channel as the pipeline sees it; the protocol settings go to its
/// connector.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    pub id: ChannelId,
    pub kind: ChannelKind,
    pub file: PathBuf,
    pub enabled: bool,
    /// Whether this channel's messages become leads; when false they are
    /// recorded with disposition `not_lead_source`.
    pub lead_source: bool,
    /// Who gets the channel's leads when no routing rule matches.
    pub responsible: Option<Assignee>,
    pub dedupe_window: HumanDuration,
    pub activity_window: HumanDuration,
    pub protocol: ChannelProtocol,
}

#[derive(Debug, Clone)]
pub enum ChannelProtocol {
    Form(Box<FormSettings>),
    Imap(Box<ImapSettings>),
    Telephony(Box<TelephonySettings>),
    Vk(Box<VkSettings>),
    Telegram(Box<TelegramSettings>),
}

/// Resolve the database URL: `url`, else `url_file`, else the packaged
/// default.
pub fn database_url(db: &DatabaseConfig, dir: &Path) -> Result<Secret, String> {
    match (&db.url, &db.url_file) {
        (Some(_), Some(_)) => Err("set only one of `url` and `url_file`".into()),
        (Some(url), None) => Ok(url.clone()),
        (None, Some(file)) => {
            let path = if file.is_relative() {
                dir.join(file)
            } else {
                file.clone()
            };
            let text = leadgate_connector::read_secret_file(&path)
                .map_err(|e| format!("`url_file`: cannot read {}: {e}", path.display()))?;
            match text.trim() {
                "" => Err(format!("`url_file`: {} is empty", path.display())),
                url => Ok(Secret::new(url)),
            }
        }
        (None, None) => Ok(Secret::new(DEFAULT_DATABASE_URL)),
    }
}

/// Fields the admin may use in routing rules beyond custom form fields.
pub fn known_lead_fields() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("channel", "the channel id"),
        (
            "kind",
            "the channel kind (form, imap, telegram, vk, telephony)",
        ),
        ("name", "the sender's name"),
        ("phone", "the first phone, E.164"),
        ("email", "the first e-mail, lower case"),
        ("product", "product named by the form or message"),
        ("region", "region or city"),
        ("text", "the message text"),
        ("subject", "the subject line"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_url_file_is_read_boundedly_and_must_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("leadgate-url-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("db.url"), "postgres://lg@db/leads\n").unwrap();
        std::fs::write(dir.join("empty.url"), "\n").unwrap();
        let from = |file: &str| {
            let db = DatabaseConfig {
                url_file: Some(PathBuf::from(file)),
                ..DatabaseConfig::default()
            };
            database_url(&db, &dir).map(|s| s.expose().to_owned())
        };
        assert_eq!(from("db.url").unwrap(), "postgres://lg@db/leads");
        assert!(from("empty.url").unwrap_err().contains("is empty"));
        // A device never ends: refused, not read until memory runs out.
        assert!(from("/dev/zero").unwrap_err().contains("not a secret"));
        assert!(
            from("missing.url")
                .unwrap_err()
                .starts_with("`url_file`: cannot read")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_log_level_that_is_no_filter_is_a_problem_naming_the_field() {
        let dir = std::env::temp_dir().join(format!("leadgate-log-level-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("leadgate.toml"),
            "[log]\nlevel = \"leadgate=loud\"\n",
        )
        .unwrap();
        let problems = load(&dir).unwrap_err().problems;
        std::fs::write(
            dir.join("leadgate.toml"),
            "[log]\nlevel = \"leadgate=debug,info\"\n",
        )
        .unwrap();
        let accepted = load(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field.as_deref(), Some("log.level"));
        assert!(
            problems[0].message.contains("leadgate=loud"),
            "{problems:?}"
        );
        assert!(accepted.is_ok(), "{:?}", accepted.err().map(|e| e.problems));
    }
}
