use thiserror::Error;

/// Why the sink could not take an item. Connectors map this to their peer:
/// a webhook answers 503 so the provider retries, a poller backs off without
/// moving its cursor.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SinkError {
    /// The store cannot commit right now (database down, disk full, pool
    /// exhausted). Nothing was acknowledged; delivering again later is safe.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The daemon is shutting down and takes no new work.
    #[error("shutting down")]
    ShuttingDown,
    /// The channel is not configured (or was removed by a reload).
    #[error("unknown channel {0:?}")]
    UnknownChannel(String),
}

impl SinkError {
    /// Whether delivering the same item again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Unavailable(_) | SinkError::ShuttingDown)
    }

    /// Log an item a connector submitted and the sink refused. A store
    /// outage refuses every request, hundreds a second on a busy site, and
    /// the store logs its cause itself, sparingly; so a transient refusal
    /// is a debug line (the sender delivers again), anything else a warning.
    pub fn log_refused(
        &self,
        channel: &impl std::fmt::Display,
        item: &'static str,
        source_ref: Option<&str>,
    ) {
        let source_ref = source_ref.unwrap_or("-");
        if self.is_transient() {
            tracing::debug!(channel = %channel, item, source_ref, error = %self, "not stored; the sender is answered to deliver again");
        } else {
            tracing::warn!(channel = %channel, item, source_ref, error = %self, "not stored");
        }
    }
}

/// What stops or pauses a poller. The supervisor asks [`is_transient`] to
/// decide between backing off and retrying, or stopping the channel and
/// reporting the error (a revoked token does not heal by retrying).
///
/// [`is_transient`]: ConnectorError::is_transient
#[derive(Debug, Error)]
pub enum ConnectorError {
    #[error("network: {0}")]
    Network(String),
    #[error("peer error: {0}")]
    Peer(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl ConnectorError {
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectorError::Network(_) | ConnectorError::Peer(_) => true,
            ConnectorError::Auth(_) | ConnectorError::Config(_) => false,
            ConnectorError::Sink(e) => e.is_transient(),
        }
    }

    pub fn is_permanent(&self) -> bool {
        !self.is_transient()
    }
}
