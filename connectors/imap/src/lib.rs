//! IMAP connector: each channel is one mailbox account with one or more
//! folders. New mail is fetched with `BODY.PEEK[]` (people still see it as
//! unread), turned into an [`Inbound`](leadgate_connector::Inbound) by
//! [`parse_message`], and the folder's `(UIDVALIDITY, last UID)` cursor is
//! committed in the same transaction as the messages it covers.
//!
//! This crate knows IMAP and RFC 5322 mail only: no routing, no SQL.

mod config;
mod message;
mod poller;
mod stream;

pub use config::{AfterCommit, AuthMethod, Credentials, ImapChannel, ImapSettings, Security};
pub use message::{FormLabels, MailRules, parse_message};
pub use poller::run;
