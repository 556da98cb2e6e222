//! Corpus loading, test channels and a recording sink.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use leadgate_connector::{
    Batch, BoxFuture, Disposition, Inbound, Receipt, Secret, Sink, SinkError,
};
use serde_json::Value;

use crate::config::{TelephonyChannel, TelephonyProvider, TelephonySettings};
use crate::webhook::WebhookRequest;

pub fn corpus_dir() -> PathBuf {
    std::env::var_os("LEADGATE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/corpus"
            ))
        })
}

/// One telephony sample with its manifest expectation.
#[derive(Debug, Clone)]
pub struct Sample {
    pub file: String,
    pub kind: String,
    pub method: Method,
    /// Relative to the channel's base, without the query.
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub expect: Value,
}

impl Sample {
    pub fn is_mango(&self) -> bool {
        self.file.contains("/mango_")
    }

    pub fn channel(&self) -> &'static str {
        if self.is_mango() { "mango" } else { "zadarma" }
    }

    pub fn request(&self) -> WebhookRequest<'_> {
        WebhookRequest {
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
            body: &self.body,
        }
    }

    pub fn uri(&self) -> String {
        let mut uri = format!("/telephony/{}{}", self.channel(), self.path);
        if let Some(q) = &self.query {
            uri.push('?');
            uri.push_str(q);
        }
        uri
    }

    pub fn http_request(&self) -> http::Request<axum::body::Body> {
        let mut builder = http::Request::builder()
            .method(self.method.clone())
            .uri(self.uri());
        for (k, v) in &self.headers {
            builder = builder.header(k, v);
        }
        builder
            .body(axum::body::Body::from(self.body.clone()))
            .expect("a valid request")
    }

    pub fn is_bad_signature(&self) -> bool {
        self.kind == "bad_signature"
    }

    /// Answered 200 and stored (not refused, not the URL check).
    pub fn is_stored(&self) -> bool {
        self.expect["http_status"].is_null()
            && self.expect["http_status_in"].is_null()
            && self.expect["response_body"].is_null()
    }
}

/// The telephony samples in file-name order (the order they are meant to
/// be replayed in).
pub fn samples() -> Vec<Sample> {
    let dir = corpus_dir();
    let manifest = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap_or_else(|e| {
        panic!(
            "the corpus manifest {} is required: {e}",
            manifest.display()
        )
    });
    let all: Vec<Value> = serde_json::from_str(&text).expect("manifest.json is JSON");
    let mut entries: Vec<Value> = all
        .into_iter()
        .filter(|e| e["channel"] == "telephony")
        .collect();
    entries.sort_by(|a, b| a["file"].as_str().cmp(&b["file"].as_str()));
    assert!(
        !entries.is_empty(),
        "no telephony samples in {}",
        manifest.display()
    );
    entries
        .into_iter()
        .map(|entry| {
            let file = entry["file"].as_str().expect("file").to_owned();
            let path = dir.join(&file);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let raw: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let full_path = raw["path"].as_str().unwrap_or("/");
            let (path, query) = match full_path.split_once('?') {
                Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                None => (full_path.to_owned(), None),
            };
            let mut headers = HeaderMap::new();
            if let Some(map) = raw["headers"].as_object() {
                for (k, v) in map {
                    headers.insert(
                        HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                        HeaderValue::from_str(v.as_str().unwrap_or("")).expect("header value"),
                    );
                }
            }
            if let Some(ct) = raw["content_type"].as_str().filter(|c| !c.is_empty()) {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_str(ct).expect("content type"),
                );
            }
            let body = if let Some(b) = raw["body"].as_str() {
                b.as_bytes().to_vec()
            } else if let Some(b) = raw["body_base64"].as_str() {
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .expect("body_base64")
            } else {
                Vec::new()
            };
            Sample {
                kind: entry["kind"].as_str().unwrap_or("").to_owned(),
                method: Method::from_bytes(raw["method"].as_str().unwrap_or("POST").as_bytes())
                    .expect("method"),
                path,
                query,
                headers,
                body,
                expect: entry["expect"].clone(),
                file,
            }
        })
        .collect()
}

pub fn settings(provider: TelephonyProvider) -> TelephonySettings {
    TelephonySettings {
        provider,
        api_key: None,
        api_key_file: None,
        api_key_env: None,
        api_salt: None,
        api_salt_file: None,
        api_salt_env: None,
        api_secret: None,
        api_secret_file: None,
        api_secret_env: None,
        token: None,
        token_file: None,
        token_env: None,
        token_header: None,
        hmac_secret: None,
        hmac_secret_file: None,
        hmac_secret_env: None,
        hmac_header: None,
        internal_number_max_digits: 5,
        max_body_bytes: 64 * 1024,
        time_offset: None,
        fields: None,
        values: None,
    }
}

/// The Mango channel the corpus assumes (`test_key` / `test_salt`).
pub fn mango_channel() -> TelephonyChannel {
    let mut s = settings(TelephonyProvider::Mango);
    s.api_key = Some(Secret::new("test_key"));
    s.api_salt = Some(Secret::new("test_salt"));
    TelephonyChannel::new("mango".into(), s).expect("mango channel")
}

/// The Zadarma channel the corpus assumes (`test_secret`).
pub fn zadarma_channel() -> TelephonyChannel {
    let mut s = settings(TelephonyProvider::Zadarma);
    s.api_secret = Some(Secret::new("test_secret"));
    TelephonyChannel::new("zadarma".into(), s).expect("zadarma channel")
}

pub fn channel_for(sample: &Sample) -> TelephonyChannel {
    if sample.is_mango() {
        mango_channel()
    } else {
        zadarma_channel()
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn urlencode(value: &[u8]) -> String {
    let mut out = String::new();
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn form_body(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k.as_bytes()), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

/// A Mango body for `json` (any bytes), signed with the test key and salt.
pub fn signed_mango_body(json: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"test_key");
    h.update(json);
    h.update(b"test_salt");
    let sign = hex::encode(h.finalize());
    form_body(&[
        ("vpbx_api_key", b"test_key"),
        ("sign", sign.as_bytes()),
        ("json", json),
    ])
}

/// The Zadarma `Signature` of `concat` with the test secret.
pub fn zadarma_signature(concat: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"test_secret").expect("hmac key");
    mac.update(concat);
    base64::engine::general_purpose::STANDARD.encode(hex::encode(mac.finalize().into_bytes()))
}

/// What the recording sink answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkMode {
    Accept,
    Unavailable,
    ShuttingDown,
    UnknownChannel,
}

/// A test double of the pipeline: keeps what it is given, answers receipts.
pub struct RecordingSink {
    pub items: Mutex<Vec<Inbound>>,
    pub mode: Mutex<SinkMode>,
}

impl RecordingSink {
    pub fn new() -> Arc<Self> {
        Arc::new(RecordingSink {
            items: Mutex::new(Vec::new()),
            mode: Mutex::new(SinkMode::Accept),
        })
    }

    pub fn set_mode(&self, mode: SinkMode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn len(&self) -> usize {
        self.items.lock().unwrap().len()
    }

    pub fn items(&self) -> Vec<Inbound> {
        self.items.lock().unwrap().clone()
    }
}

impl Sink for RecordingSink {
    fn submit(&self, batch: Batch) -> BoxFuture<'_, Result<Vec<Receipt>, SinkError>> {
        Box::pin(async move {
            match *self.mode.lock().unwrap() {
                SinkMode::Accept => {}
                SinkMode::Unavailable => {
                    return Err(SinkError::Unavailable("database down".into()));
                }
                SinkMode::ShuttingDown => return Err(SinkError::ShuttingDown),
                SinkMode::UnknownChannel => return Err(SinkError::UnknownChannel("gone".into())),
            }
            let mut items = self.items.lock().unwrap();
            let mut receipts = Vec::new();
            for item in batch.items {
                items.push(item);
                receipts.push(Receipt {
                    inbound_id: items.len() as i64,
                    disposition: Disposition::CallUpdated,
                    lead_id: None,
                });
            }
            Ok(receipts)
        })
    }
}
