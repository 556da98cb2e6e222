//! One VK event (a Callback body or a long-poll update; they share one
//! shape) to one [`Inbound`]. Never fails: what cannot be understood is
//! returned flagged [`Flag::Invalid`] with the reason, so it is recorded and
//! the channel moves on.

use chrono::{DateTime, TimeZone, Utc};
use leadgate_connector::{Attachment, Flag, IdentityKind, Inbound, fields};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::VkChannel;

/// `peer_id`s from here on are group chats (`2000000000 + chat id`).
const CHAT_PEER_BASE: i64 = 2_000_000_000;

/// Keys of [`Inbound::fields`] this connector fills beyond the shared
/// vocabulary.
pub mod vk_fields {
    /// `{owner_id}_{id}` of the product card, as in `vk.com/product{…}`.
    pub const PRODUCT_ID: &str = "product_id";
    /// The product's price in major units with two decimals (`450000.00`).
    pub const PRICE: &str = "price";
    /// ISO 4217 code of the price (`RUB`).
    pub const CURRENCY: &str = "currency";
    pub const PRODUCT_URL: &str = "product_url";
    /// Every link the message carried, one per line.
    pub const LINKS: &str = "links";
    /// The sender's VK profile page.
    pub const PROFILE_URL: &str = "vk_profile";
    pub const EVENT_TYPE: &str = "vk_event";
    pub const EVENT_ID: &str = "vk_event_id";
    pub const PEER_ID: &str = "vk_peer_id";
    pub const MESSAGE_ID: &str = "vk_message_id";
    pub const CONVERSATION_MESSAGE_ID: &str = "vk_conversation_message_id";
    /// Deep-link source (`vk.me/club1?ref=…`).
    pub const REF: &str = "vk_ref";
    pub const REF_SOURCE: &str = "vk_ref_source";
    /// A keyboard button's payload.
    pub const PAYLOAD: &str = "vk_payload";
}

/// An event turned into an item, with the VK user whose name is worth
/// looking up (a person who wrote to the community).
#[derive(Debug, Clone)]
pub struct VkEvent {
    pub inbound: Inbound,
    pub user_id: Option<i64>,
}

/// Read one event. `raw` is what is kept for audit (the Callback body
/// without its secret, or the update as received).
pub fn parse_event(channel: &VkChannel, event: &Value, raw: String, now: DateTime<Utc>) -> VkEvent {
    let fallback_ref = event_ref(event, &raw);
    let mut inbound = Inbound::new(channel.id.clone(), fallback_ref, now);
    inbound.raw = raw;
    let user_id = match read_event(channel, event, &mut inbound) {
        Ok(user) => user,
        Err(problem) => {
            inbound.flags.push(Flag::Invalid(problem));
            None
        }
    };
    VkEvent { inbound, user_id }
}

/// The ref of an event that has nothing more stable: its `event_id`, or a
/// hash of its bytes (older API versions send no event id).
fn event_ref(event: &Value, raw: &str) -> String {
    match event.get("event_id") {
        Some(Value::String(id)) if !id.trim().is_empty() => format!("event:{}", id.trim()),
        Some(Value::Number(id)) => format!("event:{id}"),
        _ => {
            let digest = Sha256::digest(raw.as_bytes());
            format!("event:sha256:{}", hex::encode(&digest[..16]))
        }
    }
}

fn read_event(
    channel: &VkChannel,
    event: &Value,
    inbound: &mut Inbound,
) -> Result<Option<i64>, String> {
    let event = event.as_object().ok_or("the event is not a JSON object")?;
    let kind = match event.get("type") {
        None | Some(Value::Null) => return Err("missing type".into()),
        Some(Value::String(t)) if !t.trim().is_empty() => t.trim().to_owned(),
        Some(_) => return Err("field `type` is not a non-empty string".into()),
    };
    inbound
        .fields
        .insert(vk_fields::EVENT_TYPE.into(), kind.clone());
    if let Some(id) = event.get("event_id").and_then(scalar_text) {
        inbound.fields.insert(vk_fields::EVENT_ID.into(), id);
    }
    if let Some(group) = event.get("group_id") {
        let group = group
            .as_u64()
            .ok_or("field `group_id` is not a positive number")?;
        if group != channel.settings.group_id {
            return Err(format!(
                "the event is for community {group}, this channel reads community {}",
                channel.settings.group_id
            ));
        }
    }
    let object = match event.get("object") {
        Some(Value::Object(o)) => o,
        None | Some(Value::Null) => return Err("missing object".into()),
        Some(_) => return Err("field `object` is not a JSON object".into()),
    };
    match kind.as_str() {
        "message_new" | "message_reply" | "message_edit" => {
            read_message(channel, &kind, object, inbound)
        }
        _ => read_other(channel, &kind, object, inbound),
    }
}

fn read_message(
    channel: &VkChannel,
    kind: &str,
    object: &Map<String, Value>,
    inbound: &mut Inbound,
) -> Result<Option<i64>, String> {
    // Since 5.103 `message_new` wraps the message with `client_info`;
    // `message_reply`/`message_edit` (and older versions) send it bare.
    let (message, path) = match object.get("message") {
        Some(Value::Object(m)) => (m, "object.message"),
        Some(_) => return Err("field `object.message` is not a JSON object".into()),
        None => (object, "object"),
    };
    let from_id = int_field(message, path, "from_id")?
        .ok_or_else(|| format!("missing field `{path}.from_id`"))?;
    let peer_id = int_field(message, path, "peer_id")?.unwrap_or(from_id);
    let cmid = int_field(message, path, "conversation_message_id")?.filter(|c| *c > 0);
    let message_id = int_field(message, path, "id")?.filter(|i| *i > 0);
    let out = int_field(message, path, "out")?.unwrap_or(0) == 1;
    if let Some(date) = int_field(message, path, "date")?.and_then(unix_time) {
        inbound.received_at = date;
    }
    let base_ref = match (cmid, message_id) {
        (Some(c), _) => Some(format!("msg:{peer_id}:{c}")),
        (None, Some(id)) => Some(format!("msg:id:{id}")),
        (None, None) => None,
    };
    match (kind, base_ref) {
        // An edit repeats the message's ids; it is its own item.
        ("message_edit", Some(r)) => {
            let version = int_field(message, path, "update_time")?
                .map(|t| t.to_string())
                .or_else(|| inbound.fields.get(vk_fields::EVENT_ID).cloned())
                .unwrap_or_default();
            inbound.source_ref = format!("edit:{r}:{version}");
        }
        ("message_edit", None) => {}
        // The same message by Callback and by long poll, or delivered
        // twice, has one ref.
        (_, Some(r)) => inbound.source_ref = r,
        (_, None) => {}
    }
    let f = &mut inbound.fields;
    f.insert(vk_fields::PEER_ID.into(), peer_id.to_string());
    if let Some(id) = message_id {
        f.insert(vk_fields::MESSAGE_ID.into(), id.to_string());
    }
    if let Some(c) = cmid {
        f.insert(vk_fields::CONVERSATION_MESSAGE_ID.into(), c.to_string());
    }
    for (key, field) in [
        ("ref", vk_fields::REF),
        ("ref_source", vk_fields::REF_SOURCE),
        ("payload", vk_fields::PAYLOAD),
    ] {
        if let Some(v) = message.get(key).and_then(scalar_text) {
            f.insert(field.into(), v);
        }
    }
    inbound.text = text_field(message, path, "text")?;
    read_attachments(message, path, inbound)?;

    let from_community = from_id < 0;
    if kind == "message_reply" || out || from_community {
        inbound.flags.push(Flag::Outgoing(format!(
            "{kind} sent by the community to peer {peer_id}"
        )));
        return Ok(None);
    }
    if from_id == 0 {
        return Err(format!("field `{path}.from_id` is 0"));
    }
    inbound.sender.push(IdentityKind::Vk, from_id.to_string());
    if kind == "message_edit" {
        inbound.flags.push(Flag::NotLead(format!(
            "an edit of message {}",
            cmid.map_or_else(|| "?".into(), |c| c.to_string())
        )));
    } else if peer_id >= CHAT_PEER_BASE {
        inbound.flags.push(Flag::NotLead(format!(
            "a message in group chat {}",
            peer_id - CHAT_PEER_BASE
        )));
    } else if !channel.is_lead_event(kind) {
        inbound.flags.push(not_lead_event(kind));
    }
    Ok(Some(from_id))
}

fn not_lead_event(kind: &str) -> Flag {
    Flag::NotLead(format!(
        "event {kind} is not a lead source on this channel (see lead_events)"
    ))
}

/// Comments, joins, likes…: recorded, and leads only where the channel
/// lists the event type in `lead_events`.
fn read_other(
    channel: &VkChannel,
    kind: &str,
    object: &Map<String, Value>,
    inbound: &mut Inbound,
) -> Result<Option<i64>, String> {
    let user = match int_field(object, "object", "from_id")? {
        Some(id) => Some(id),
        None => int_field(object, "object", "user_id")?,
    };
    if let Some(id) = int_field(object, "object", "id")? {
        let owner = ["owner_id", "post_owner_id", "market_owner_id"]
            .iter()
            .find_map(|k| object.get(*k).and_then(Value::as_i64))
            .unwrap_or(0);
        inbound.source_ref = format!("{kind}:{owner}:{id}");
    }
    if let Some(date) = int_field(object, "object", "date")?.and_then(unix_time) {
        inbound.received_at = date;
    }
    inbound.text = text_field(object, "object", "text")?;
    read_attachments(object, "object", inbound)?;
    match user {
        Some(id) if id < 0 => {
            inbound
                .flags
                .push(Flag::Outgoing(format!("{kind} by the community")));
            return Ok(None);
        }
        Some(id) if id > 0 => inbound.sender.push(IdentityKind::Vk, id.to_string()),
        _ => {}
    }
    if !channel.is_lead_event(kind) {
        inbound.flags.push(not_lead_event(kind));
    } else if user.is_none_or(|id| id <= 0) {
        inbound
            .flags
            .push(Flag::NotLead(format!("event {kind} names no VK user")));
    }
    Ok(user.filter(|id| *id > 0))
}

fn read_attachments(
    message: &Map<String, Value>,
    path: &str,
    inbound: &mut Inbound,
) -> Result<(), String> {
    let list = match message.get("attachments") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(format!("field `{path}.attachments` is not an array")),
    };
    let mut links = Vec::new();
    let mut products = 0;
    for (i, item) in list.iter().enumerate() {
        let at = format!("{path}.attachments[{i}]");
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("field `{at}.type` is missing or not a string"))?;
        let body = item.get(kind).and_then(Value::as_object);
        match (kind, body) {
            ("market", Some(card)) => {
                products += 1;
                if products == 1 {
                    read_product(card, &format!("{at}.market"), inbound)?;
                }
            }
            ("link", Some(link)) => {
                if let Some(url) = link.get("url").and_then(Value::as_str) {
                    links.push(url.trim().to_owned());
                }
                // A link to a product page stands in for a missing card.
                if link.get("product").is_some_and(Value::is_object)
                    && !inbound.fields.contains_key(fields::PRODUCT)
                    && let Some(title) = link.get("title").and_then(Value::as_str)
                {
                    let title = title.trim();
                    if !title.is_empty() {
                        inbound
                            .fields
                            .insert(fields::PRODUCT.into(), title.to_owned());
                        if let Some(price) = link.get("product").and_then(|p| p.get("price")) {
                            read_price(price, inbound);
                        }
                    }
                }
            }
            (other, body) => inbound.attachments.push(Attachment {
                name: body.map(|b| attachment_name(other, b)),
                content_type: Some(format!("vk/{other}")),
                size: body
                    .and_then(|b| b.get("size"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
            }),
        }
    }
    links.retain(|l| !l.is_empty());
    if let Some(first) = links.first() {
        inbound
            .fields
            .entry(fields::PAGE_URL.into())
            .or_insert_with(|| first.clone());
        inbound
            .fields
            .insert(vk_fields::LINKS.into(), links.join("\n"));
    }
    Ok(())
}

/// `photo-1_456`, the way VK names media; a document's title when it has one.
fn attachment_name(kind: &str, body: &Map<String, Value>) -> String {
    if let Some(title) = body.get("title").and_then(Value::as_str)
        && !title.trim().is_empty()
    {
        return title.trim().to_owned();
    }
    let owner = body.get("owner_id").and_then(Value::as_i64);
    let id = body.get("id").and_then(Value::as_i64);
    match (owner, id) {
        (Some(o), Some(i)) => format!("{kind}{o}_{i}"),
        _ => kind.to_owned(),
    }
}

fn read_product(card: &Map<String, Value>, at: &str, inbound: &mut Inbound) -> Result<(), String> {
    let title = card
        .get("title")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("field `{at}.title` is missing or not a string"))?;
    inbound
        .fields
        .insert(fields::PRODUCT.into(), title.to_owned());
    let id = card.get("id").and_then(Value::as_i64);
    let owner = card.get("owner_id").and_then(Value::as_i64);
    if let (Some(id), Some(owner)) = (id, owner) {
        inbound
            .fields
            .insert(vk_fields::PRODUCT_ID.into(), format!("{owner}_{id}"));
        inbound.fields.insert(
            vk_fields::PRODUCT_URL.into(),
            format!("https://vk.com/product{owner}_{id}"),
        );
    }
    if let Some(price) = card.get("price") {
        read_price(price, inbound);
    }
    Ok(())
}

/// VK prices: `{amount: "45000000", currency: {name: "RUB"}, text: "450 000 ₽"}`
/// with `amount` in hundredths. An amount that does not read as a number
/// leaves the price out rather than guess; `text` is kept either way.
fn read_price(price: &Value, inbound: &mut Inbound) {
    let amount = match price.get("amount") {
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(Value::Number(n)) => n.as_i64(),
        _ => None,
    };
    if let Some(minor) = amount.filter(|a| *a >= 0) {
        inbound.fields.insert(
            vk_fields::PRICE.into(),
            format!("{}.{:02}", minor / 100, minor % 100),
        );
    }
    let currency = match price.get("currency") {
        Some(Value::Object(c)) => c.get("name").and_then(Value::as_str),
        Some(Value::String(c)) => Some(c.as_str()),
        _ => None,
    };
    if let Some(code) = currency.map(str::trim).filter(|c| !c.is_empty()) {
        inbound
            .fields
            .insert(vk_fields::CURRENCY.into(), code.to_owned());
    }
    if let Some(text) = price.get("text").and_then(Value::as_str)
        && !text.trim().is_empty()
    {
        inbound
            .fields
            .insert("price_text".into(), text.trim().to_owned());
    }
}

/// An integer field; VK sends ids as numbers, but a numeric string is read
/// too. Anything else names the field.
fn int_field(obj: &Map<String, Value>, path: &str, key: &str) -> Result<Option<i64>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("field `{path}.{key}` is not an integer")),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("field `{path}.{key}` is not an integer")),
        Some(_) => Err(format!("field `{path}.{key}` is not an integer")),
    }
}

fn text_field(obj: &Map<String, Value>, path: &str, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone()).filter(|s| !s.trim().is_empty())),
        Some(_) => Err(format!("field `{path}.{key}` is not a string")),
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn unix_time(secs: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(secs, 0).single().filter(|_| secs > 0)
}
