//! ../shared/corpus: samples and their manifest expectations.

use std::path::PathBuf;

use serde_json::Value;

pub fn dir() -> PathBuf {
    std::env::var_os("LEADGATE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus"))
}

/// Manifest entries of one channel, in file-name order.
pub fn entries(channel: &str) -> Vec<Value> {
    let path = dir().join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the corpus manifest {} is required: {e}", path.display()));
    let all: Vec<Value> = serde_json::from_str(&text).expect("manifest.json is JSON");
    let mut mine: Vec<Value> = all
        .into_iter()
        .filter(|e| e["channel"] == channel)
        .collect();
    mine.sort_by(|a, b| a["file"].as_str().cmp(&b["file"].as_str()));
    mine
}

pub fn sample(file: &str) -> Value {
    let path = dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The exact body bytes of an HTTP sample (`body`, `body_base64` or
/// `generate`).
pub fn body(sample: &Value) -> Vec<u8> {
    if let Some(b) = sample["body"].as_str() {
        return b.as_bytes().to_vec();
    }
    if let Some(b) = sample["body_base64"].as_str() {
        return base64_decode(b);
    }
    if let Some(g) = sample.get("generate") {
        let field = g["field"].as_str().unwrap_or("comment");
        let repeat = g["repeat"].as_str().unwrap_or("x");
        let bytes = g["bytes"].as_u64().unwrap_or(1024) as usize;
        let mut body = format!("name=A&phone=89990000000&{field}=").into_bytes();
        while body.len() < bytes {
            body.extend_from_slice(repeat.as_bytes());
        }
        return body;
    }
    Vec::new()
}

fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let Some(v) = ALPHABET.iter().position(|a| *a == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
