use std::collections::HashMap;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use leadgate_connector::{ChannelId, urlencoded};
use leadgate_telephony::{
    Outcome, TelephonyChannel, TelephonyError, TelephonySettings, WebhookRequest, parse_webhook,
};
use sha2::{Digest, Sha256};

use crate::Verdict;
use crate::input::split_pbx_request;

/// The secrets the corpus is signed with (../shared/corpus/README.md).
const MANGO_KEY: &str = "test_key";
const MANGO_SALT: &str = "test_salt";
const ZADARMA_SECRET: &str = "test_secret";

/// The test channels a request line can name.
pub mod channel {
    /// Mango Office with the corpus key and salt: `sign` must match.
    pub const MANGO: &str = "mango";
    /// The same channel, but the harness signs the body's `json` before
    /// sending, so mutated JSON reaches the event parsers.
    pub const MANGO_RESIGNED: &str = "mango-resigned";
    /// Zadarma with the corpus secret: the `Signature` header must match.
    pub const ZADARMA: &str = "zadarma";
    /// Zadarma without a secret (signatures unchecked): every mutated
    /// field reaches the event parser.
    pub const ZADARMA_UNSIGNED: &str = "zadarma-unsigned";
    /// A templated PBX webhook with the default field names.
    pub const GENERIC: &str = "generic";
}

fn channels() -> &'static HashMap<&'static str, TelephonyChannel> {
    static CHANNELS: OnceLock<HashMap<&'static str, TelephonyChannel>> = OnceLock::new();
    CHANNELS.get_or_init(|| {
        let mango =
            format!("provider = \"mango\"\napi_key = \"{MANGO_KEY}\"\napi_salt = \"{MANGO_SALT}\"");
        let zadarma = format!("provider = \"zadarma\"\napi_secret = \"{ZADARMA_SECRET}\"");
        let build = |id: &str, toml_text: &str| {
            let settings: TelephonySettings =
                toml::from_str(toml_text).expect("test channel settings");
            TelephonyChannel::new(ChannelId(id.into()), settings).expect("a valid test channel")
        };
        HashMap::from([
            (channel::MANGO, build("mango", &mango)),
            (channel::MANGO_RESIGNED, build("mango", &mango)),
            (channel::ZADARMA, build("zadarma", &zadarma)),
            (
                channel::ZADARMA_UNSIGNED,
                build("zadarma", "provider = \"zadarma\""),
            ),
            (channel::GENERIC, build("generic", "provider = \"generic\"")),
        ])
    })
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("a valid time")
}

/// `body` with a valid `vpbx_api_key` and `sign` for its (last) `json`
/// field appended; a body that does not decode is returned as it is.
fn mango_resigned(body: &[u8]) -> Vec<u8> {
    let Ok(pairs) = urlencoded::decode_pairs(body, usize::MAX) else {
        return body.to_vec();
    };
    let json = pairs
        .iter()
        .rev()
        .find(|(name, _)| name == "json")
        .map_or("", |(_, v)| v.as_str());
    let sign = hex::encode(Sha256::digest(format!("{MANGO_KEY}{json}{MANGO_SALT}")));
    let mut out = body.to_vec();
    out.extend_from_slice(format!("&vpbx_api_key={MANGO_KEY}&sign={sign}").as_bytes());
    out
}

struct Request {
    channel: &'static TelephonyChannel,
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Request {
    fn read(data: &[u8]) -> Option<Request> {
        let r = split_pbx_request(data)?;
        let channel = channels().get(r.channel)?;
        let mut headers = HeaderMap::new();
        for (name, value) in &r.headers {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                headers.append(n, v);
            }
        }
        let body = if r.channel == channel::MANGO_RESIGNED {
            mango_resigned(r.body)
        } else {
            r.body.to_vec()
        };
        Some(Request {
            channel,
            method: Method::from_bytes(r.method.as_bytes()).ok()?,
            path: r.path.to_owned(),
            query: r.query.map(str::to_owned),
            headers,
            body,
        })
    }

    fn parse(&self) -> Result<Outcome, TelephonyError> {
        let request = WebhookRequest {
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
            body: &self.body,
        };
        parse_webhook(self.channel, &request, now())
    }
}

/// Lossy UTF-8 may triple a byte (U+FFFD); summaries add a line of text.
fn text_bound(input: usize) -> usize {
    3 * input + 4096
}

/// A PBX request (see [`crate::input::pbx_request`]) through
/// `parse_webhook`: signature checks, form and JSON decoding, the
/// provider's event reading.
pub fn telephony(data: &[u8]) -> Verdict {
    let Some(request) = Request::read(data) else {
        return Verdict::Refused;
    };
    let input = request.body.len() + request.query.as_ref().map_or(0, String::len);
    match request.parse() {
        Err(e) => {
            assert!(
                e.status().is_client_error(),
                "a bad request must be the client's error, got {} ({e})",
                e.status()
            );
            Verdict::Refused
        }
        Ok(Outcome::Echo(echo)) => {
            assert!(echo.len() <= 256, "a {}-byte echo", echo.len());
            assert!(!echo.chars().any(char::is_control), "control in {echo:?}");
            Verdict::Accepted
        }
        Ok(Outcome::Ignore(_)) => Verdict::Accepted,
        Ok(Outcome::Store(inbound)) => {
            assert!(inbound.call.is_some(), "a stored PBX event without a call");
            assert!(!inbound.source_ref.is_empty(), "no source_ref");
            let produced = inbound.raw.len()
                + inbound.text.as_ref().map_or(0, String::len)
                + inbound.source_ref.len()
                + inbound
                    .fields
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>();
            assert!(
                produced <= text_bound(input),
                "{produced} bytes out of a {input}-byte request"
            );
            Verdict::Accepted
        }
    }
}

/// For a request the channel accepts as signed (a valid corpus sample),
/// change one byte of its signature (`sign` for Mango, the `Signature`
/// header for Zadarma) at `pick` (taken modulo its length) to `replacement`
/// and check the request is refused. Returns `false`, checking nothing,
/// when the request is not a validly signed one of those channels, or when
/// the replacement would not change the signature as compared (the same
/// byte, or only its case for Mango's hex `sign`).
pub fn flipped_signature_is_refused(data: &[u8], pick: usize, replacement: u8) -> bool {
    let Some(mut request) = Request::read(data) else {
        return false;
    };
    let channel_name = split_pbx_request(data).map_or("", |r| r.channel);
    if !matches!(channel_name, channel::MANGO | channel::ZADARMA) || request.method != Method::POST
    {
        return false;
    }
    if !matches!(request.parse(), Ok(Outcome::Store(_) | Outcome::Ignore(_))) {
        return false;
    }
    let signature: &mut [u8] = if channel_name == channel::MANGO {
        let Some(span) = field_value_span(&request.body, b"sign") else {
            return false;
        };
        &mut request.body[span]
    } else {
        // Header values are stored as bytes only through HeaderValue; copy
        // the value out, change it, and put it back.
        return zadarma_flip(&mut request, pick, replacement);
    };
    if signature.is_empty() {
        return false;
    }
    let at = pick % signature.len();
    if signature[at].eq_ignore_ascii_case(&replacement) {
        return false;
    }
    signature[at] = replacement;
    assert_refused(&request, "sign");
    true
}

fn zadarma_flip(request: &mut Request, pick: usize, replacement: u8) -> bool {
    let Some(value) = request.headers.get("signature") else {
        return false;
    };
    let mut bytes = value.as_bytes().to_vec();
    if bytes.is_empty() {
        return false;
    }
    let at = pick % bytes.len();
    if bytes[at] == replacement {
        return false;
    }
    bytes[at] = replacement;
    let Ok(flipped) = HeaderValue::from_bytes(&bytes) else {
        // Not sendable as a header at all; no request could carry it.
        return false;
    };
    if String::from_utf8_lossy(&bytes).trim() == String::from_utf8_lossy(value.as_bytes()).trim() {
        // Only surrounding whitespace changed, which is not the signature.
        return false;
    }
    request.headers.insert("signature", flipped);
    assert_refused(request, "Signature");
    true
}

fn assert_refused(request: &Request, what: &str) {
    match request.parse() {
        Err(e) => assert!(
            e.status().is_client_error(),
            "a changed {what} must be refused as the client's error, got {} ({e})",
            e.status()
        ),
        Ok(outcome) => panic!("a request with a changed {what} was accepted: {outcome:?}"),
    }
}

/// Where the last `name=` value in a urlencoded body lies (the value the
/// form decoder takes).
fn field_value_span(body: &[u8], name: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut found = None;
    let mut start = 0;
    for pair in body.split(|b| *b == b'&') {
        let end = start + pair.len();
        if pair.len() > name.len() && pair.starts_with(name) && pair[name.len()] == b'=' {
            found = Some(start + name.len() + 1..end);
        }
        start = end + 1;
    }
    found
}
