//! Telephony connector: cloud-PBX webhooks to leadgate call events.
//!
//! Every channel lives under `/telephony/{channel}` and speaks one
//! provider's protocol:
//! - **Mango Office**: `POST …/events/call`, `…/events/summary`,
//!   `…/events/recording` (other `…/events/*` and `…/result/*` are verified
//!   and acknowledged), forms of `vpbx_api_key`, `sign`, `json`;
//! - **Zadarma**: `GET …/?zd_echo=X` answered with `X`, `POST …/` forms of
//!   `event=NOTIFY_*` signed in the `Signature` header;
//! - **generic**: `POST …` JSON or form (or `GET` with query parameters)
//!   read through a per-channel field mapping, for UIS, Sipuni and the like.
//!
//! Each accepted event becomes one [`Inbound`](leadgate_connector::Inbound)
//! whose `call` says, in provider-neutral terms, what the event tells about
//! one call ([`CallEvent`](leadgate_connector::CallEvent)): its id, direction,
//! phase, the outside party, line and extension, and, once it ended, whether
//! it was answered and for how long. The pipeline merges the events of a
//! call; whether a call was missed is its decision, made on the whole call.
//! A request is answered 200 only after the pipeline's
//! [`Sink`](leadgate_connector::Sink) has committed its item, 503 when the
//! store is unavailable (so the PBX retries), and 4xx with a JSON reason
//! when it is refused; a refused request never reaches the sink.
//!
//! `source_ref`s (stable across a provider's retries, distinct between
//! events): `mango:{entry_id}:{call_id}:{seq}:{call_state}`,
//! `mango:{entry_id}:summary`, `mango:{entry_id}:recording:{recording_id}`,
//! `zadarma:{pbx_call_id}:{event}[:{internal}]`,
//! `zadarma:{pbx_call_id}:NOTIFY_RECORD:{call_id_with_rec}`,
//! `generic:{call_id}:{event_id}` or, without an event id,
//! `generic:{call_id}:{phase}:{event}:{hash of the request}`.
//!
//! # Channel files
//!
//! The `[telephony]` table ([`TelephonySettings`]); secrets may also come
//! from `*_file` or `*_env`:
//!
//! ```toml
//! kind = "telephony"
//! [telephony]
//! provider = "mango"              # or "zadarma", "generic"
//! api_key_file = "secrets/mango.key"
//! api_salt_env = "MANGO_SALT"
//! internal_number_max_digits = 5  # numbers this short are extensions
//! max_body_bytes = 65536
//! ```
//!
//! ```toml
//! kind = "telephony"
//! [telephony]
//! provider = "zadarma"
//! api_secret_env = "ZADARMA_SECRET" # unset: signatures are not checked
//! time_offset = "+03:00"            # the account's time zone (call_start)
//! ```
//!
//! ```toml
//! kind = "telephony"
//! [telephony]
//! provider = "generic"
//! token_env = "PBX_TOKEN"           # in X-Leadgate-Key or ?token=
//! # hmac_secret_env = "PBX_HMAC"    # hex HMAC-SHA256 of the body
//! # hmac_header = "X-Signature"
//! [telephony.fields]                # names or JSON paths; "" turns one off
//! call_id = "call_session_id"
//! event = "notification_name"
//! caller = "contact.phone"
//! callee = "virtual_phone_number"
//! [telephony.values]
//! ringing = ["call_start"]
//! ended = ["call_end"]
//! answered_dispositions = ["subscriber_disconnects", "operator_disconnects"]
//! ```
//!
//! This crate knows the PBX protocols only: no routing, no SQL.

mod body;
mod call;
mod config;
mod endpoint;
mod error;
mod generic;
mod mango;
mod webhook;
mod zadarma;

#[cfg(test)]
mod tests;

pub use config::{
    GenericFields, GenericValues, TelephonyChannel, TelephonyProvider, TelephonySettings,
};
pub use endpoint::{TelephonyState, router};
pub use error::TelephonyError;
pub use webhook::{Outcome, WebhookRequest, parse_webhook};
