//! Test harness: the real daemon binary on a loopback port with a temporary
//! configuration, a throwaway PostgreSQL, and the shared corpus.
#![allow(dead_code)]

pub mod corpus;
pub mod daemon;
pub mod db;
pub mod disk;
pub mod dovecot;
pub mod metrics;
pub mod pg;
pub mod procfs;
pub mod proxy;
pub mod site;
pub mod smtp;
pub mod telegram;
pub mod tls;
pub mod vk;

use std::net::TcpListener;

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Under CI (and the README's test command) a missing peer is a failure;
/// a developer's plain `cargo test` skips it loudly.
pub fn peers_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("LEADGATE_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

pub fn skip_or_fail(what: &str) {
    if peers_required() {
        panic!("{what} is required under CI but is not available");
    }
    eprintln!(
        "\n*** SKIPPED: {what} is not available on this machine (install it or run .ci/run) ***\n"
    );
}
