use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

type ReplaceFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Swaps the running filter; set once by [`init`].
static RELOAD: OnceLock<ReplaceFilter> = OnceLock::new();

/// Log to stderr: colours on a terminal, plain lines under systemd
/// (journald adds its own timestamps), JSON when asked.
pub fn init(cfg: &LogConfig) {
    let filter = environment_filter()
        .or_else(|| EnvFilter::try_new(&cfg.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let format = match cfg.format {
        LogFormat::Auto if std::io::stderr().is_terminal() => LogFormat::Pretty,
        LogFormat::Auto => LogFormat::Plain,
        f => f,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Each format is its own subscriber type, and so is its reload handle.
    macro_rules! start {
        ($builder:expr) => {{
            let builder = $builder.with_filter_reloading();
            let handle = builder.reload_handle();
            let _ = RELOAD.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
            builder.try_init()
        }};
    }
    let _ = match format {
        LogFormat::Json => start!(builder.json().with_current_span(false)),
        LogFormat::Plain if under_journald => start!(builder.with_ansi(false).without_time()),
        LogFormat::Plain => start!(builder.with_ansi(false)),
        LogFormat::Pretty | LogFormat::Auto => start!(builder.with_ansi(true)),
    };
}

/// Why a configured log level did not replace the running one.
#[derive(Debug, thiserror::Error)]
pub enum LevelNotApplied {
    #[error("RUST_LOG is set and wins over [log] level")]
    EnvironmentWins,
    #[error("logging was not started by this process")]
    NotStarted,
    #[error("{0}")]
    Invalid(String),
}

/// Apply `[log] level` to the running daemon (a reload).
pub fn set_level(level: &str) -> Result<(), LevelNotApplied> {
    if environment_filter().is_some() {
        return Err(LevelNotApplied::EnvironmentWins);
    }
    let filter = EnvFilter::try_new(level).map_err(|e| LevelNotApplied::Invalid(e.to_string()))?;
    let reload = RELOAD.get().ok_or(LevelNotApplied::NotStarted)?;
    reload(filter).map_err(LevelNotApplied::Invalid)
}

/// `RUST_LOG` when set to a valid filter; empty counts as unset, so a unit
/// file can clear an inherited value with `Environment=RUST_LOG=`.
fn environment_filter() -> Option<EnvFilter> {
    let value = std::env::var("RUST_LOG").ok()?;
    if value.trim().is_empty() {
        return None;
    }
    EnvFilter::try_new(value).ok()
}

/// Whether `level` is a filter [`init`] and [`set_level`] accept.
pub fn check_level(level: &str) -> Result<(), String> {
    EnvFilter::try_new(level)
        .map(drop)
        .map_err(|e| e.to_string())
}
