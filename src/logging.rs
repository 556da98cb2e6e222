use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Log to stderr: colours on a terminal, plain lines under systemd
/// (journald adds its own timestamps), JSON when asked.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let format = match cfg.format {
        LogFormat::Auto if std::io::stderr().is_terminal() => LogFormat::Pretty,
        LogFormat::Auto => LogFormat::Plain,
        f => f,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
        LogFormat::Plain if under_journald => builder.with_ansi(false).without_time().try_init(),
        LogFormat::Plain => builder.with_ansi(false).try_init(),
        LogFormat::Pretty | LogFormat::Auto => builder.with_ansi(true).try_init(),
    };
}
