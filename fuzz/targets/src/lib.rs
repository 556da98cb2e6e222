//! One function per untrusted-input parser of leadgate, shared by the
//! cargo-fuzz targets in `fuzz/` and the stable property tests in
//! `tests/properties.rs`, so that what the fuzzer explores and what CI checks
//! are the same code.
//!
//! Each target takes one input as bytes (see [`input`] for how a form post,
//! a PBX request or a configuration folder is laid out in them), runs the
//! parser the daemon runs on it, and panics when a property is broken:
//! the parser panicked (the e-mail path catches its own panics, so that is
//! checked on its result), an error is not an error of the client's making
//! (a 5xx for a malformed request), or an output is larger than the crate's
//! documented limits. Hangs are the caller's to detect: libFuzzer's
//! `-timeout`, the property tests' watchdog.

pub mod corpus;
pub mod input;
pub mod mutate;

mod config;
mod email;
mod form_body;
mod messengers;
mod pipeline_check;
mod telephony;

pub use config::config;
pub use email::email;
pub use form_body::form_body;
pub use messengers::{telegram, vk};
pub use telephony::{flipped_signature_is_refused, telephony};

/// What a target made of one input, for tests that check their generators
/// reach past the first refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Parsed into something the daemon would store or act on.
    Accepted,
    /// Refused with an error (the expected answer to most mutations).
    Refused,
}

/// One input through one parser, as the fuzzers and the property tests
/// call it.
pub type Target = fn(&[u8]) -> Verdict;

/// Every target, by the name its fuzz binary and seed folder carry.
pub const TARGETS: &[(&str, Target)] = &[
    ("form_body", form_body),
    ("email", email),
    ("telephony", telephony),
    ("config", config),
    ("telegram", telegram),
    ("vk", vk),
];
