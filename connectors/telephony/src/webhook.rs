//! One request in, one decision out, with no I/O: the part of the endpoint
//! that tests and fuzzers drive directly.

use chrono::{DateTime, Utc};
use http::{HeaderMap, Method};
use leadgate_connector::Inbound;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{ChannelAuth, TelephonyChannel};
use crate::error::TelephonyError;
use crate::mango::MangoPath;
use crate::{generic, mango, zadarma};

/// A request to a channel, its path relative to `/telephony/{channel}`
/// (`/events/call`, `/`).
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// What to do with a request that passed verification.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Answer 200 with exactly this body and store nothing (Zadarma's URL
    /// check).
    Echo(String),
    /// Store this item; answer 200 once the pipeline has committed it.
    Store(Box<Inbound>),
    /// Authentic, but nothing leadgate keeps (an event type it does not
    /// track, a recording still in progress): answer 200, store nothing.
    Ignore(String),
}

/// Verify and read one request of a channel. Never panics; every refusal
/// is a [`TelephonyError`] with its HTTP status.
pub fn parse_webhook(
    channel: &TelephonyChannel,
    request: &WebhookRequest<'_>,
    now: DateTime<Utc>,
) -> Result<Outcome, TelephonyError> {
    let limit = channel.settings.max_body_bytes;
    if request.body.len() > limit {
        return Err(TelephonyError::TooLarge(limit));
    }
    match &channel.auth {
        ChannelAuth::Mango { key, salt } => {
            if request.method != Method::POST {
                return Err(match MangoPath::parse(request.path) {
                    Some(_) => TelephonyError::MethodNotAllowed(request.method.to_string()),
                    None => TelephonyError::UnknownPath(request.path.to_owned()),
                });
            }
            mango::handle(channel, key, salt, request.path, request.body, now)
        }
        ChannelAuth::Zadarma { secret } => zadarma::handle(channel, secret.as_ref(), request, now),
        ChannelAuth::Generic { token, hmac } => {
            generic::handle(channel, token.as_ref(), hmac.as_ref(), request, now)
        }
    }
}

/// Compare a credential in constant time, in its length too (the digests
/// have a fixed length).
pub(crate) fn digests_equal(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}
