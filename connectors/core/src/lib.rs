//! The contract between leadgate's channel connectors and its pipeline.
//!
//! A connector knows one protocol. It turns what its peer sends into
//! [`Inbound`] items and hands them to a [`Sink`]; the sink answers only after
//! the items (and, for pollers, the cursor that covers them) are durably
//! committed. That single rule is the delivery promise: a connector
//! acknowledges to its peer (HTTP 2xx, IMAP flag, Telegram offset, VK ts)
//! only with a [`Receipt`] in hand, so a crash before commit means the peer
//! delivers again, and the `(channel, source_ref)` key makes the redelivery
//! harmless.
//!
//! Two shapes of connector exist:
//! - push receivers (site forms, webhooks) call [`Sink::submit`] with one
//!   item per request and answer their HTTP client from the result;
//! - pollers (IMAP, long polls) own a cursor; they submit a [`Batch`] whose
//!   `cursor` is stored in the same transaction as its items, and resume from
//!   [`PollerContext::cursor`] after a restart.
//!
//! Connector crates depend on this crate only: never on the core, never on
//! each other.

pub mod body;
mod ca_file;
mod duration;
mod error;
mod inbound;
mod live;
pub mod phones;
mod secret;
mod sink;
pub mod urlencoded;

pub use ca_file::read_ca_file;
pub use duration::HumanDuration;
pub use error::{ConnectorError, SinkError};
pub use inbound::{
    Attachment, CallDirection, CallEvent, CallPhase, ChannelId, Dedupe, Flag, Identity,
    IdentityKind, Inbound, Sender, fields,
};
pub use live::LiveChannels;
pub use secret::{
    Secret, SecretSource, read_secret_file, resolve_config_path, set_secret_base_dir,
};
pub use sink::{Batch, BoxFuture, CursorUpdate, Disposition, PollerContext, Receipt, Sink};
pub use tokio_util::sync::CancellationToken;
