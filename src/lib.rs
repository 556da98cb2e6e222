//! leadgate: an omnichannel lead-ingestion daemon.
//!
//! Connectors (in `connectors/`) turn each channel's protocol into
//! [`Inbound`](leadgate_connector::Inbound) items; this crate is the core
//! they deliver to: configuration, the pipeline (normalize → classify →
//! identify → route → store), the group-commit store, the HTTP server and
//! the CLI.
//!
//! Error policy: concrete error enums where a caller must react (the
//! connector contract's `SinkError`, config `Problem`s, `StoreError`);
//! `anyhow` only at the binary's edge.

pub mod assign;
pub mod audit;
pub mod calls;
pub mod config;
pub mod daemon;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod pollers;
pub mod routing;
pub mod server;
pub mod store;
pub mod systemd;
