//! Site-form connector.
//!
//! `POST /forms/{channel}` takes what website forms and form builders (Tilda
//! and the like) send: `application/x-www-form-urlencoded`,
//! `multipart/form-data` (files kept as metadata only) or JSON. The body is
//! parsed strictly ([`parse_body`]), fields are mapped to the shared
//! vocabulary ([`map_fields`]), and the request is answered only after the
//! pipeline's [`Sink`](leadgate_connector::Sink) has committed it.
//!
//! This crate knows HTTP and form conventions only: no routing, no SQL.

mod config;
mod endpoint;
mod limiter;
mod mapping;
mod parse;

pub use config::{FieldAliases, FormChannel, FormSettings};
pub use endpoint::{FormsState, router};
pub use mapping::{MappedForm, map_fields};
pub use parse::{FormError, ParsedBody, parse_body};
