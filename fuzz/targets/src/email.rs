use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use leadgate::config::ChannelKind;
use leadgate_connector::{ChannelId, Flag, IdentityKind};
use leadgate_imap::{MailRules, parse_message};

use crate::Verdict;
use crate::pipeline_check::{channel_of, prepare_checked};

/// The caps `leadgate_imap::parse_message` documents and keeps (the
/// constants in connectors/imap/src/message.rs); a message may never make
/// it produce more.
pub mod limits {
    pub const RAW: usize = 256 * 1024;
    pub const TEXT: usize = 64 * 1024;
    pub const HTML: usize = 128 * 1024;
    pub const SUBJECT: usize = 1024;
    pub const NAME: usize = 256;
    pub const ATTACHMENTS: usize = 64;
    pub const THREAD_REFS: usize = 64;
    pub const EMAILS: usize = 4;
    pub const PHONES: usize = 8;
}

/// What `parse_message` says when it had to catch a panic of its own.
const CAUGHT_PANIC: &str = "the message could not be parsed";

fn rules() -> &'static MailRules {
    static RULES: OnceLock<MailRules> = OnceLock::new();
    RULES.get_or_init(|| MailRules {
        own_domains: vec!["ourcompany.example".into()],
        ..MailRules::default()
    })
}

/// One raw message through `parse_message` (headers, MIME, charsets,
/// contacts, phones, form-notification labels, flags) and the pipeline's
/// pure steps (normalization, classification).
pub fn email(data: &[u8]) -> Verdict {
    let received = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).expect("a valid time");
    let inbound = parse_message(
        &ChannelId(channel_of(ChannelKind::Imap).into()),
        data,
        received,
        rules(),
    );

    if let Some(Flag::Invalid(why)) = inbound
        .flags
        .iter()
        .find(|f| matches!(f, Flag::Invalid(w) if w.starts_with(CAUGHT_PANIC)))
    {
        panic!("parse_message panicked inside: {why}");
    }
    assert!(!inbound.source_ref.is_empty(), "no source_ref");
    assert!(!inbound.raw.contains('\0'), "a NUL byte kept in raw");
    let within = |what: &str, len: usize, limit: usize| {
        assert!(len <= limit, "{what}: {len} over the limit of {limit}");
    };
    within("raw", inbound.raw.len(), limits::RAW);
    within(
        "text",
        inbound.text.as_ref().map_or(0, String::len),
        limits::TEXT,
    );
    within(
        "html",
        inbound.html.as_ref().map_or(0, String::len),
        limits::HTML,
    );
    within(
        "subject",
        inbound.subject.as_ref().map_or(0, String::len),
        limits::SUBJECT,
    );
    within(
        "name",
        inbound.sender.name.as_ref().map_or(0, String::len),
        limits::NAME,
    );
    within(
        "attachments",
        inbound.attachments.len(),
        limits::ATTACHMENTS,
    );
    within(
        "thread refs",
        inbound.thread_refs.len(),
        limits::THREAD_REFS,
    );
    let count = |kind| {
        inbound
            .sender
            .identities
            .iter()
            .filter(|i| i.kind == kind)
            .count()
    };
    within(
        "e-mail identities",
        count(IdentityKind::Email),
        limits::EMAILS,
    );
    within(
        "phone identities",
        count(IdentityKind::Phone),
        limits::PHONES,
    );
    // A text attachment's size is that of its UTF-8 text: a byte of a
    // legacy charset (or an undecodable one, U+FFFD) may take three.
    for file in &inbound.attachments {
        assert!(
            file.size <= 3 * data.len() as u64,
            "a {}-byte attachment in a {}-byte message",
            file.size,
            data.len()
        );
    }

    prepare_checked(inbound)
}
