//! The pipeline's pure steps (normalization, classification) on what a
//! connector produced, with the properties every channel shares.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use leadgate::config::ChannelKind;
use leadgate::pipeline::{ChannelRules, PipelineSettings, prepare};
use leadgate_connector::{Disposition, Flag, IdentityKind, Inbound};

use crate::Verdict;

/// The channel id each kind's test items carry.
pub fn channel_of(kind: ChannelKind) -> &'static str {
    match kind {
        ChannelKind::Imap => "mail",
        ChannelKind::Telegram => "telegram",
        ChannelKind::Vk => "vk",
        ChannelKind::Form => "site",
        ChannelKind::Telephony => "pbx",
    }
}

fn settings() -> &'static PipelineSettings {
    static SETTINGS: OnceLock<PipelineSettings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let kinds = [
            ChannelKind::Imap,
            ChannelKind::Telegram,
            ChannelKind::Vk,
            ChannelKind::Form,
            ChannelKind::Telephony,
        ];
        PipelineSettings {
            channels: kinds
                .into_iter()
                .map(|kind| {
                    (
                        channel_of(kind).to_owned(),
                        ChannelRules {
                            kind,
                            lead_source: true,
                            responsible: None,
                            dedupe_window: Duration::from_secs(600),
                            activity_window: Duration::from_secs(30 * 86_400),
                        },
                    )
                })
                .collect::<HashMap<_, _>>(),
            // No rules, no team: routing is not what these targets test.
            // (`Default` also fits whichever sharing the fields use.)
            routing: Default::default(),
            team: Default::default(),
            region: phonenumber::country::Id::RU,
        }
    })
}

/// A normalized phone is E.164 or, for numbers the metadata does not
/// know, `+digits` or bare digits (`leadgate::pipeline::normalize::phone`):
/// never empty, never anything else.
pub fn assert_phone_shape(phone: &str) {
    let digits = phone.strip_prefix('+').unwrap_or(phone);
    assert!(
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
        "normalized phone {phone:?} is not +digits"
    );
}

/// Run `prepare` on a connector's item: an item flagged invalid must be
/// classified invalid, normalized identities must have their shapes.
/// `Refused` for an invalid item.
pub fn prepare_checked(inbound: Inbound) -> Verdict {
    let invalid = inbound.flags.iter().any(|f| matches!(f, Flag::Invalid(_)));
    let prepared = prepare(inbound, settings()).expect("the test channel is configured");
    if invalid {
        assert_eq!(
            prepared.verdict.as_ref().map(|(d, _)| *d),
            Some(Disposition::Invalid),
            "an item flagged invalid must be classified invalid"
        );
        return Verdict::Refused;
    }
    for (kind, value) in &prepared.identities {
        match kind {
            IdentityKind::Phone => assert_phone_shape(value),
            IdentityKind::Email => assert!(value.contains('@'), "e-mail {value:?} has no @"),
            IdentityKind::Telegram | IdentityKind::Vk => {
                assert!(!value.trim().is_empty(), "an empty {kind:?} identity")
            }
        }
    }
    Verdict::Accepted
}
