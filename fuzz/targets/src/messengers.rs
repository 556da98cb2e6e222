//! Telegram updates and VK events: JSON from the messenger (a webhook body,
//! a `getUpdates` or long-poll answer) through the connector's parser and
//! the pipeline's pure steps.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use leadgate::config::ChannelKind;
use leadgate_connector::{ChannelId, Inbound};
use leadgate_telegram::{ChatPolicy, parse_update};
use leadgate_vk::{VkChannel, VkSettings, parse_answer, parse_event};
use serde_json::Value;

use crate::Verdict;
use crate::pipeline_check::{channel_of, prepare_checked};

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("a valid time")
}

/// Parsers keep the payload as `raw` and read text out of it: nothing may
/// come out larger than what went in, give or take escapes and a line of
/// text (an update with `\u0436`-style escapes decodes shorter, never longer).
fn assert_bounded(inbound: &Inbound, input: usize) {
    let produced = inbound.text.as_ref().map_or(0, String::len)
        + inbound.subject.as_ref().map_or(0, String::len)
        + inbound.sender.name.as_ref().map_or(0, String::len)
        + inbound
            .fields
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    assert!(
        produced <= 3 * input + 4096,
        "{produced} bytes of text out of a {input}-byte payload"
    );
    assert!(!inbound.source_ref.is_empty(), "no source_ref");
}

/// Each update of a payload: the update itself, or every element of a
/// `getUpdates` / long-poll answer's list (`result`, `updates`).
fn items<'a>(value: &'a Value, list: &str) -> Vec<&'a Value> {
    match value.get(list).and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![value],
    }
}

/// A Telegram webhook body or `getUpdates` answer through `parse_update`.
pub fn telegram(data: &[u8]) -> Verdict {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return Verdict::Refused;
    };
    let channel = ChannelId(channel_of(ChannelKind::Telegram).into());
    let policy = ChatPolicy::default();
    for update in items(&value, "result") {
        let raw = update.to_string();
        let parsed = parse_update(&channel, policy, update, raw.clone(), now());
        assert_eq!(parsed.inbound.raw, raw, "raw is not the update as received");
        assert_bounded(&parsed.inbound, raw.len());
        prepare_checked(parsed.inbound);
    }
    // Past the JSON decoding the parser always makes an item (an unreadable
    // update is recorded as invalid): every JSON input reached it.
    Verdict::Accepted
}

fn vk_channel() -> &'static VkChannel {
    static CHANNEL: OnceLock<VkChannel> = OnceLock::new();
    CHANNEL.get_or_init(|| {
        // The corpus's community (../shared/corpus/README.md).
        let settings: VkSettings = toml::from_str(
            "group_id = 229000001\nconfirmation = \"a1b2c3d4\"\nsecret = \"vk_test_secret\"\nfetch_names = false\n",
        )
        .expect("test VK settings");
        VkChannel::new(ChannelId(channel_of(ChannelKind::Vk).into()), settings)
            .expect("a valid test VK channel")
    })
}

/// A VK Callback body, long-poll answer or API answer through
/// `parse_answer` and `parse_event`.
pub fn vk(data: &[u8]) -> Verdict {
    // API answers (`users.get`, errors) are read by the same untrusted path.
    let _ = parse_answer("users.get", data);
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return Verdict::Refused;
    };
    for event in items(&value, "updates") {
        let raw = event.to_string();
        let parsed = parse_event(vk_channel(), event, raw.clone(), now());
        assert_bounded(&parsed.inbound, raw.len());
        prepare_checked(parsed.inbound);
    }
    Verdict::Accepted
}
