//! The seeds: `../shared/corpus` samples (and the repository's example
//! configuration) laid out as each target's input.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::Value;

use crate::input::{config_folder, form_post, pbx_request};
use crate::telephony::channel;

/// One seed input of a target.
#[derive(Debug, Clone)]
pub struct Seed {
    /// A file name for the seed folder, unique within the target.
    pub name: String,
    pub data: Vec<u8>,
}

/// `LEADGATE_CORPUS`, or `../shared/corpus` beside the repository.
pub fn corpus_dir() -> PathBuf {
    std::env::var_os("LEADGATE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_dir().join("../shared/corpus"))
}

fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The seeds of the target called `target` (a name in
/// [`crate::TARGETS`]). Panics when the corpus is missing: a property test
/// without its seeds would test nothing.
pub fn seeds(target: &str) -> Vec<Seed> {
    let seeds = match target {
        "form_body" => form_seeds(),
        "email" => email_seeds(),
        "telephony" => telephony_seeds(),
        "config" => config_seeds(),
        "telegram" => json_seeds("telegram"),
        "vk" => json_seeds("vk"),
        other => panic!("no target called {other:?}"),
    };
    assert!(
        !seeds.is_empty(),
        "no seeds for {target} (corpus at {})",
        corpus_dir().display()
    );
    seeds
}

fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("the corpus folder {} is required: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == extension))
        .collect();
    paths.sort();
    paths
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("seed")
        .to_owned()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The exact body of an HTTP sample: `body`, `body_base64`, or `generate`
/// (the corpus README's oversized-post recipe).
fn http_body(sample: &Value) -> Vec<u8> {
    if let Some(b) = sample["body"].as_str() {
        return b.as_bytes().to_vec();
    }
    if let Some(b) = sample["body_base64"].as_str() {
        return base64::engine::general_purpose::STANDARD
            .decode(b)
            .expect("body_base64 is base64");
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

fn form_seeds() -> Vec<Seed> {
    files(&corpus_dir().join("forms"), "json")
        .iter()
        .map(|path| {
            let sample = read_json(path);
            Seed {
                name: stem(path),
                data: form_post(sample["content_type"].as_str(), &http_body(&sample)),
            }
        })
        .collect()
}

/// Messenger samples are the payloads themselves.
fn json_seeds(folder: &str) -> Vec<Seed> {
    files(&corpus_dir().join(folder), "json")
        .iter()
        .map(|path| Seed {
            name: stem(path),
            data: read(path),
        })
        .collect()
}

fn email_seeds() -> Vec<Seed> {
    files(&corpus_dir().join("email"), "eml")
        .iter()
        .map(|path| Seed {
            name: stem(path),
            data: read(path),
        })
        .collect()
}

/// Each sample as its own provider's channel would get it, and again on
/// the channels that let mutations past the signature, and on the generic
/// channel (which reads any form).
fn telephony_seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    for path in files(&corpus_dir().join("telephony"), "json") {
        let sample = read_json(&path);
        let name = stem(&path);
        let mut headers: Vec<(String, String)> = sample["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
            .collect();
        if let Some(ct) = sample["content_type"].as_str().filter(|c| !c.is_empty()) {
            headers.push(("Content-Type".into(), ct.into()));
        }
        let method = sample["method"].as_str().unwrap_or("POST");
        let target = sample["path"].as_str().unwrap_or("/");
        let body = http_body(&sample);
        let channels: &[&str] = if name.starts_with("mango") {
            &[channel::MANGO, channel::MANGO_RESIGNED, channel::GENERIC]
        } else {
            &[
                channel::ZADARMA,
                channel::ZADARMA_UNSIGNED,
                channel::GENERIC,
            ]
        };
        for ch in channels {
            // The generic channel lives at its base path, like Zadarma.
            let target = if *ch == channel::GENERIC { "/" } else { target };
            seeds.push(Seed {
                name: format!("{name}.{ch}"),
                data: pbx_request(ch, method, target, &headers, &body),
            });
        }
    }
    seeds
}

/// The example configuration of the repository: the main, team and
/// routing files with each channel file in turn.
fn config_seeds() -> Vec<Seed> {
    let dir = repo_dir().join("config");
    let main = read(&dir.join("leadgate.toml"));
    let team = read(&dir.join("team.toml"));
    let routing = read(&dir.join("routing.toml"));
    files(&dir.join("channels.d"), "toml")
        .iter()
        .map(|path| {
            let channel = read(path);
            Seed {
                name: stem(path),
                data: config_folder(&[Some(&main), Some(&channel), Some(&team), Some(&routing)]),
            }
        })
        .collect()
}
