//! One Bot API `Update` to one [`Inbound`].
//!
//! Updates are read from `serde_json::Value` rather than typed structs so
//! that a malformed or unfamiliar update becomes a recorded item with its
//! error instead of failing a whole `getUpdates` batch. Every update gives
//! exactly one item; what is not a lead says why in its flags.
//!
//! `source_ref`s, stable across Telegram's redeliveries:
//! - a message (also a channel post, a business message):
//!   `{chat id}:{message id}`;
//! - an edit: `{chat id}:{message id}:edit:{edit_date}`;
//! - a button press: `callback:{callback query id}`;
//! - any other update: `update:{update_id}`;
//! - an update without a usable `update_id` that cannot be read either:
//!   `invalid:{sha256 of the payload}`.

use chrono::{DateTime, TimeZone, Utc};
use leadgate_connector::{Attachment, ChannelId, Flag, IdentityKind, Inbound, fields};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use leadgate_connector::phones::find_phones;

/// Names of the fields this connector adds beside the shared vocabulary.
pub mod telegram_fields {
    /// The `/start` deep-link payload as sent.
    pub const START_PAYLOAD: &str = "start_payload";
    /// The data of an inline button the user pressed.
    pub const CALLBACK_DATA: &str = "callback_data";
    /// One line per attachment: `{type} {file_id}` (fetch with `getFile`).
    pub const FILES: &str = "telegram_files";
    /// A contact card the user sent that is not their own: name and phone.
    pub const SHARED_CONTACT: &str = "shared_contact";
    /// `latitude,longitude` of a shared location.
    pub const LOCATION: &str = "location";
    /// Data a Web App sent with `sendData`.
    pub const WEB_APP_DATA: &str = "web_app_data";
    /// The chat's title (groups, channels).
    pub const CHAT_TITLE: &str = "chat_title";
}

use telegram_fields as tf;

/// Which chats are lead sources besides private chats.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatPolicy {
    pub groups: bool,
    pub channel_posts: bool,
}

/// An update read into an item.
#[derive(Debug, Clone)]
pub struct ParsedUpdate {
    /// `None` when the update has no integer `update_id` (it cannot be
    /// confirmed, only recorded).
    pub update_id: Option<i64>,
    pub inbound: Inbound,
    /// The private chat a greeting may go to if this item starts a lead.
    pub reply_chat: Option<i64>,
}

/// Read one update. `raw` is kept as the item's payload.
pub fn parse_update(
    channel: &ChannelId,
    policy: ChatPolicy,
    value: &Value,
    raw: String,
    now: DateTime<Utc>,
) -> ParsedUpdate {
    let update_id = value.get("update_id").and_then(Value::as_i64);
    match read_update(channel, policy, value, now) {
        Ok((mut inbound, reply_chat)) => {
            inbound.raw = raw;
            ParsedUpdate {
                update_id,
                inbound,
                reply_chat,
            }
        }
        Err(error) => ParsedUpdate {
            update_id,
            inbound: invalid(channel, update_id, &error, raw, now),
            reply_chat: None,
        },
    }
}

/// A payload that is not JSON at all (a webhook body cut off in transit).
pub fn json_error_message(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Eof => format!("truncated JSON: {e}"),
        _ => format!("malformed JSON: {e}"),
    }
}

/// An item that records an unreadable update with its error.
pub fn invalid(
    channel: &ChannelId,
    update_id: Option<i64>,
    error: &str,
    raw: String,
    now: DateTime<Utc>,
) -> Inbound {
    let source_ref = match update_id {
        Some(id) => format!("update:{id}"),
        None => format!("invalid:{}", hex::encode(Sha256::digest(raw.as_bytes()))),
    };
    let mut inbound = Inbound::new(channel.clone(), source_ref, now);
    inbound.flags.push(Flag::Invalid(error.to_owned()));
    inbound.raw = raw;
    inbound
}

/// What is wrong with a value at `path`, worded for the admin.
fn wrong(path: &str, v: &Value, want: &str) -> String {
    let got = match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("wrong field types: `{path}` is {got}, not {want}")
}

fn obj<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object().ok_or_else(|| wrong(path, v, "an object"))
}

fn req<'a>(o: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a Value, String> {
    o.get(key).ok_or_else(|| format!("missing {path}.{key}"))
}

fn int(o: &Map<String, Value>, key: &str, path: &str) -> Result<i64, String> {
    let v = req(o, key, path)?;
    v.as_i64()
        .ok_or_else(|| wrong(&format!("{path}.{key}"), v, "an integer"))
}

fn opt_int(o: &Map<String, Value>, key: &str, path: &str) -> Result<Option<i64>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| wrong(&format!("{path}.{key}"), v, "an integer")),
    }
}

fn opt_str<'a>(
    o: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| wrong(&format!("{path}.{key}"), v, "a string")),
    }
}

fn unix_time(secs: Option<i64>, now: DateTime<Utc>) -> DateTime<Utc> {
    secs.and_then(|s| Utc.timestamp_opt(s, 0).single())
        .unwrap_or(now)
}

/// The update kinds that carry a message, and how each is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageKind {
    Message,
    Edited,
    ChannelPost,
    EditedChannelPost,
    Business,
    EditedBusiness,
}

const MESSAGE_KEYS: [(&str, MessageKind); 6] = [
    ("message", MessageKind::Message),
    ("edited_message", MessageKind::Edited),
    ("channel_post", MessageKind::ChannelPost),
    ("edited_channel_post", MessageKind::EditedChannelPost),
    ("business_message", MessageKind::Business),
    ("edited_business_message", MessageKind::EditedBusiness),
];

fn read_update(
    channel: &ChannelId,
    policy: ChatPolicy,
    value: &Value,
    now: DateTime<Utc>,
) -> Result<(Inbound, Option<i64>), String> {
    let update = obj(value, "the update")?;
    let update_id = match update.get("update_id") {
        None => return Err("missing update_id".into()),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| wrong("update_id", v, "an integer"))?,
    };
    for (key, kind) in MESSAGE_KEYS {
        if let Some(message) = update.get(key) {
            return read_message(channel, policy, kind, key, message, now);
        }
    }
    if let Some(query) = update.get("callback_query") {
        return read_callback(channel, policy, query, now);
    }
    let kind = update
        .keys()
        .find(|k| *k != "update_id")
        .map_or("empty", String::as_str);
    let mut inbound = Inbound::new(channel.clone(), format!("update:{update_id}"), now);
    inbound.flags.push(Flag::NotLead(format!(
        "a {kind} update carries no message from a customer"
    )));
    Ok((inbound, None))
}

/// The person behind a `User` object: name, then ids.
fn read_user(inbound: &mut Inbound, user: &Map<String, Value>, path: &str) -> Result<i64, String> {
    let id = int(user, "id", path)?;
    let first = opt_str(user, "first_name", path)?.unwrap_or("");
    let last = opt_str(user, "last_name", path)?.unwrap_or("");
    let name = format!("{first} {last}");
    if !name.trim().is_empty() {
        inbound.sender.name = Some(name.trim().to_owned());
    }
    inbound.sender.push(IdentityKind::Telegram, id.to_string());
    if let Some(username) = opt_str(user, "username", path)? {
        inbound.sender.push(IdentityKind::Telegram, username);
    }
    Ok(id)
}

fn read_message(
    channel: &ChannelId,
    policy: ChatPolicy,
    kind: MessageKind,
    key: &str,
    message: &Value,
    now: DateTime<Utc>,
) -> Result<(Inbound, Option<i64>), String> {
    let m = obj(message, key)?;
    let message_id = int(m, "message_id", key)?;
    let chat_path = format!("{key}.chat");
    let chat = obj(req(m, "chat", key)?, &chat_path)?;
    let chat_id = int(chat, "id", &chat_path)?;
    let chat_type = opt_str(chat, "type", &chat_path)?.unwrap_or("private");
    let date = opt_int(m, "date", key)?;
    let edit_date = opt_int(m, "edit_date", key)?;
    let edited = matches!(
        kind,
        MessageKind::Edited | MessageKind::EditedChannelPost | MessageKind::EditedBusiness
    );
    let base_ref = format!("{chat_id}:{message_id}");
    let (source_ref, received_at) = if edited {
        let edit = edit_date
            .map(|d| d.to_string())
            .unwrap_or_else(|| format!("u{}", hash_of(message)));
        (
            format!("{base_ref}:edit:{edit}"),
            unix_time(edit_date.or(date), now),
        )
    } else {
        (base_ref.clone(), unix_time(date, now))
    };
    let mut inbound = Inbound::new(channel.clone(), source_ref, received_at);
    if edited {
        // An edit belongs to the lead of the message it changes.
        inbound.thread_refs.push(base_ref);
    }
    if let Some(reply) = m.get("reply_to_message").and_then(Value::as_object)
        && let Some(id) = reply.get("message_id").and_then(Value::as_i64)
    {
        inbound.thread_refs.push(format!("{chat_id}:{id}"));
    }

    // Who wrote it. A channel post has no `from`; the channel speaks.
    let from = match m.get("from") {
        None | Some(Value::Null) => None,
        Some(v) => Some(obj(v, &format!("{key}.from"))?),
    };
    let mut from_id = None;
    let mut from_bot = false;
    if let Some(user) = from {
        from_bot = user.get("is_bot").and_then(Value::as_bool) == Some(true);
        from_id = Some(read_user(&mut inbound, user, &format!("{key}.from"))?);
    } else if let Some(title) = opt_str(chat, "title", &chat_path)? {
        inbound.sender.name = Some(title.to_owned());
    }
    if let Some(title) = opt_str(chat, "title", &chat_path)? {
        inbound
            .fields
            .insert(tf::CHAT_TITLE.into(), title.to_owned());
    }

    let text = opt_str(m, "text", key)?.or(opt_str(m, "caption", key)?);
    read_content(&mut inbound, m, key, text, from_id)?;

    let private = chat_type == "private";
    let business = matches!(kind, MessageKind::Business | MessageKind::EditedBusiness);
    if from_bot {
        inbound
            .flags
            .push(Flag::NotLead("sent by a bot, not a person".into()));
    } else if matches!(
        kind,
        MessageKind::ChannelPost | MessageKind::EditedChannelPost
    ) || chat_type == "channel"
    {
        if !policy.channel_posts {
            inbound.flags.push(Flag::NotLead(
                "a channel post, not a private chat (set `channel_posts = true` to take them as leads)".into(),
            ));
        }
    } else if !private {
        if !policy.groups {
            inbound.flags.push(Flag::NotLead(format!(
                "a message in a {chat_type} chat, not a private chat (set `groups = true` to take them as leads)"
            )));
        }
    } else if business && from_id.is_some_and(|id| id != chat_id) {
        // In a private chat the chat id is the customer's user id: a
        // business message from anyone else is the business answering.
        inbound.flags.push(Flag::Outgoing(
            "sent by the business account in its chat with the customer".into(),
        ));
    }
    // Greetings go to people who wrote to the bot itself in private.
    let reply_chat =
        (private && !business && !edited && inbound.flags.is_empty()).then_some(chat_id);
    Ok((inbound, reply_chat))
}

/// Text, commands, contacts, media and the like.
fn read_content(
    inbound: &mut Inbound,
    m: &Map<String, Value>,
    key: &str,
    text: Option<&str>,
    from_id: Option<i64>,
) -> Result<(), String> {
    if let Some(text) = text {
        match start_payload(text) {
            Some(payload) => {
                // The user pressed Start: the words are the bot's, the
                // payload is the link's campaign.
                if !payload.is_empty() {
                    inbound
                        .fields
                        .insert(tf::START_PAYLOAD.into(), payload.to_owned());
                    inbound
                        .fields
                        .insert(fields::UTM_CAMPAIGN.into(), payload.to_owned());
                }
            }
            None => {
                inbound.text = Some(text.to_owned());
                for phone in find_phones(text) {
                    inbound.sender.push(IdentityKind::Phone, phone);
                }
            }
        }
    }
    if let Some(contact) = m.get("contact") {
        let path = format!("{key}.contact");
        let c = obj(contact, &path)?;
        let phone = opt_str(c, "phone_number", &path)?.unwrap_or("");
        let owner = opt_int(c, "user_id", &path)?;
        if from_id.is_some() && owner == from_id {
            // Shared with the "request contact" button: the sender's own
            // number, the strongest identity there is.
            inbound.sender.identities.insert(
                0,
                leadgate_connector::Identity {
                    kind: IdentityKind::Phone,
                    value: phone.to_owned(),
                },
            );
            inbound
                .sender
                .identities
                .retain(|i| !i.value.trim().is_empty());
        } else {
            let first = opt_str(c, "first_name", &path)?.unwrap_or("");
            let last = opt_str(c, "last_name", &path)?.unwrap_or("");
            let card = format!("{first} {last} {phone}");
            inbound.fields.insert(
                tf::SHARED_CONTACT.into(),
                card.split_whitespace().collect::<Vec<_>>().join(" "),
            );
        }
    }
    if let Some(location) = m.get("location").and_then(Value::as_object) {
        let lat = location.get("latitude").and_then(Value::as_f64);
        let lon = location.get("longitude").and_then(Value::as_f64);
        if let (Some(lat), Some(lon)) = (lat, lon) {
            inbound
                .fields
                .insert(tf::LOCATION.into(), format!("{lat},{lon}"));
        }
    }
    if let Some(data) = m
        .get("web_app_data")
        .and_then(|w| w.get("data"))
        .and_then(Value::as_str)
    {
        inbound
            .fields
            .insert(tf::WEB_APP_DATA.into(), data.to_owned());
        if inbound.text.is_none() {
            inbound.text = Some(data.to_owned());
        }
    }
    read_media(inbound, m, key)
}

/// `/start payload` (or `/start@bot payload`): the payload, possibly empty.
fn start_payload(text: &str) -> Option<&str> {
    let rest = text.trim().strip_prefix("/start")?;
    let rest = match rest.strip_prefix('@') {
        Some(r) => r.split_once(char::is_whitespace).map_or("", |(_, p)| p),
        None if rest.is_empty() || rest.starts_with(char::is_whitespace) => rest,
        None => return None,
    };
    Some(rest.trim())
}

/// Media kinds kept as metadata, with the content type a file of that kind
/// has when Telegram names none.
const MEDIA: [(&str, Option<&str>); 8] = [
    ("document", None),
    ("voice", Some("audio/ogg")),
    ("audio", None),
    ("video", Some("video/mp4")),
    ("video_note", Some("video/mp4")),
    ("animation", Some("video/mp4")),
    ("sticker", Some("image/webp")),
    ("photo", Some("image/jpeg")),
];

fn read_media(inbound: &mut Inbound, m: &Map<String, Value>, key: &str) -> Result<(), String> {
    let mut files = Vec::new();
    for (kind, default_type) in MEDIA {
        let Some(v) = m.get(kind) else { continue };
        // Telegram repeats an animation as `document` for old clients: one
        // file, one attachment.
        if kind == "document" && m.contains_key("animation") {
            continue;
        }
        let path = format!("{key}.{kind}");
        // A photo comes in several sizes, largest last: keep the largest.
        let file = match v {
            Value::Array(sizes) => match sizes.last() {
                Some(last) => obj(last, &path)?,
                None => continue,
            },
            other => obj(other, &path)?,
        };
        let file_id = opt_str(file, "file_id", &path)?.unwrap_or("");
        let name = opt_str(file, "file_name", &path)?;
        let mime = opt_str(file, "mime_type", &path)?;
        let size = opt_int(file, "file_size", &path)?.unwrap_or(0);
        inbound.attachments.push(Attachment {
            name: Some(name.unwrap_or(kind).to_owned()),
            content_type: mime.or(default_type).map(str::to_owned),
            size: u64::try_from(size).unwrap_or(0),
        });
        if !file_id.is_empty() {
            files.push(format!("{kind} {file_id}"));
        }
    }
    if !files.is_empty() {
        inbound.fields.insert(tf::FILES.into(), files.join("\n"));
    }
    Ok(())
}

fn read_callback(
    channel: &ChannelId,
    policy: ChatPolicy,
    query: &Value,
    now: DateTime<Utc>,
) -> Result<(Inbound, Option<i64>), String> {
    let q = obj(query, "callback_query")?;
    let id = match req(q, "id", "callback_query")? {
        Value::String(s) => s.clone(),
        other => return Err(wrong("callback_query.id", other, "a string")),
    };
    let mut inbound = Inbound::new(channel.clone(), format!("callback:{id}"), now);
    let from = obj(req(q, "from", "callback_query")?, "callback_query.from")?;
    read_user(&mut inbound, from, "callback_query.from")?;
    if let Some(message) = q.get("message").and_then(Value::as_object)
        && let Some(chat) = message.get("chat").and_then(Value::as_object)
        && let Some(chat_id) = chat.get("id").and_then(Value::as_i64)
    {
        // The button sits under one of the bot's messages in that chat.
        if let Some(message_id) = message.get("message_id").and_then(Value::as_i64) {
            inbound.thread_refs.push(format!("{chat_id}:{message_id}"));
        }
        let chat_type = chat
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("private");
        if chat_type != "private" && !policy.groups {
            inbound.flags.push(Flag::NotLead(format!(
                "a button pressed in a {chat_type} chat, not a private chat"
            )));
        }
    }
    if let Some(data) = opt_str(q, "data", "callback_query")? {
        inbound
            .fields
            .insert(tf::CALLBACK_DATA.into(), data.to_owned());
        // Buttons built as `product:<name>` (or `region:`, `utm_*:`) name
        // what the customer chose in the shared vocabulary.
        if let Some((name, value)) = data.split_once(':') {
            let known = [fields::PRODUCT, fields::REGION]
                .iter()
                .chain(fields::UTM_KEYS.iter())
                .find(|k| **k == name);
            if let Some(key) = known
                && !value.trim().is_empty()
            {
                inbound
                    .fields
                    .insert((*key).into(), value.trim().to_owned());
            }
        }
    }
    Ok((inbound, None))
}

fn hash_of(v: &Value) -> String {
    let digest = Sha256::digest(v.to_string().as_bytes());
    hex::encode(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> ParsedUpdate {
        let raw = v.to_string();
        parse_update(&"bot".into(), ChatPolicy::default(), &v, raw, Utc::now())
    }

    fn invalid_reason(p: &ParsedUpdate) -> Option<&str> {
        p.inbound.flags.iter().find_map(|f| match f {
            Flag::Invalid(e) => Some(e.as_str()),
            _ => None,
        })
    }

    fn private(id: i64, message: Value) -> Value {
        let mut m = json!({"message_id": 1, "date": 1763283300,
            "from": {"id": id, "is_bot": false, "first_name": "A"},
            "chat": {"id": id, "type": "private"}});
        if let (Some(m), Some(extra)) = (m.as_object_mut(), message.as_object()) {
            m.extend(extra.clone());
        }
        json!({"update_id": 1, "message": m})
    }

    #[test]
    fn start_payloads() {
        assert_eq!(start_payload("/start cnc_autumn"), Some("cnc_autumn"));
        assert_eq!(start_payload("/start"), Some(""));
        assert_eq!(start_payload("/start@shop_bot abc"), Some("abc"));
        assert_eq!(start_payload("/starting now"), None);
        assert_eq!(start_payload("hello"), None);
    }

    #[test]
    fn a_private_message_names_its_sender_and_phones() {
        let p = parse(private(
            7,
            json!({"text": "Позвоните 8 999 222-11-00", "from": {"id": 7, "first_name": "Анна", "last_name": "Ли", "username": "anna_li"}}),
        ));
        assert_eq!(p.update_id, Some(1));
        assert_eq!(p.inbound.source_ref, "7:1");
        assert_eq!(p.inbound.sender.name.as_deref(), Some("Анна Ли"));
        let ids: Vec<_> = p
            .inbound
            .sender
            .identities
            .iter()
            .map(|i| (i.kind, i.value.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                (IdentityKind::Telegram, "7"),
                (IdentityKind::Telegram, "anna_li"),
                (IdentityKind::Phone, "8 999 222-11-00")
            ]
        );
        assert!(p.inbound.flags.is_empty());
        assert_eq!(p.reply_chat, Some(7));
    }

    #[test]
    fn only_the_senders_own_contact_is_an_identity() {
        let own = parse(private(
            7,
            json!({"contact": {"phone_number": "79991234500", "user_id": 7}}),
        ));
        assert_eq!(own.inbound.sender.identities[0].kind, IdentityKind::Phone);
        assert_eq!(own.inbound.sender.identities[0].value, "79991234500");
        let other = parse(private(
            7,
            json!({"contact": {"phone_number": "79991234501", "first_name": "Б", "user_id": 8}}),
        ));
        assert!(
            other
                .inbound
                .sender
                .identities
                .iter()
                .all(|i| i.kind != IdentityKind::Phone)
        );
        assert_eq!(
            other.inbound.field(tf::SHARED_CONTACT),
            Some("Б 79991234501")
        );
    }

    #[test]
    fn malformed_updates_are_items_with_their_error() {
        let missing = parse(json!({"message": {"message_id": 1}}));
        assert_eq!(missing.update_id, None);
        assert_eq!(invalid_reason(&missing), Some("missing update_id"));
        assert!(missing.inbound.source_ref.starts_with("invalid:"));
        let wrong_types = parse(
            json!({"update_id":"abc","message":{"message_id":"x","from":5,"chat":null,"date":"yesterday","text":12}}),
        );
        assert!(
            invalid_reason(&wrong_types)
                .unwrap()
                .contains("wrong field types")
        );
        let bad_chat = parse(json!({"update_id": 5, "message": {"message_id": 1, "chat": null}}));
        assert_eq!(bad_chat.inbound.source_ref, "update:5");
        assert!(invalid_reason(&bad_chat).unwrap().contains("message.chat"));
        for v in [json!(null), json!([1]), json!("x"), json!({})] {
            assert!(invalid_reason(&parse(v)).is_some());
        }
        let truncated = serde_json::from_str::<Value>("{\"update_id\": 1, \"mess").unwrap_err();
        assert!(json_error_message(&truncated).starts_with("truncated JSON"));
    }

    #[test]
    fn bots_groups_and_other_updates_are_not_leads() {
        let bot = parse(private(
            9,
            json!({"text": "buy", "from": {"id": 9, "is_bot": true, "first_name": "B"}}),
        ));
        assert!(matches!(bot.inbound.flags[..], [Flag::NotLead(_)]));
        assert_eq!(bot.reply_chat, None);
        let member = parse(json!({"update_id": 3, "my_chat_member": {}}));
        assert_eq!(member.inbound.source_ref, "update:3");
        assert!(matches!(member.inbound.flags[..], [Flag::NotLead(_)]));
    }

    /// Every corpus sample, and every prefix of it that is still JSON, and
    /// each of its values replaced by values of other types, gives exactly
    /// one item with a key, without panicking.
    #[test]
    fn corpus_samples_and_their_mutations_never_panic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/corpus/telegram");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!("no corpus at {}: skipped", dir.display());
            return;
        };
        let replacements = [
            json!(null),
            json!(-1),
            json!(1.5),
            json!("x"),
            json!([]),
            json!({}),
            json!(true),
            json!(i64::MAX),
        ];
        for entry in entries.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let mut cut = 0;
            while cut < text.len() {
                if text.is_char_boundary(cut)
                    && let Ok(v) = serde_json::from_str::<Value>(&text[..cut])
                {
                    assert!(!parse(v).inbound.source_ref.is_empty());
                }
                cut += 1;
            }
            let Ok(value) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let mut paths = Vec::new();
            collect_paths(&value, &mut Vec::new(), &mut paths);
            for path in paths {
                for replacement in &replacements {
                    let mut mutated = value.clone();
                    if let Some(slot) = pointer_mut(&mut mutated, &path) {
                        *slot = replacement.clone();
                    }
                    let p = parse(mutated);
                    assert!(!p.inbound.source_ref.is_empty(), "{path:?}");
                }
            }
        }
    }

    fn collect_paths(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(at.clone());
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    at.push(k.clone());
                    collect_paths(child, at, out);
                    at.pop();
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    at.push(i.to_string());
                    collect_paths(child, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }

    fn pointer_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
        let pointer: String = path.iter().map(|p| format!("/{p}")).collect();
        v.pointer_mut(&pointer)
    }

    #[test]
    fn media_are_metadata_with_file_ids() {
        let p = parse(private(
            7,
            json!({"caption": "gif", "animation": {"file_id": "A1", "file_size": 5, "mime_type": "video/mp4"},
                   "document": {"file_id": "A1", "file_name": "x.gif.mp4"},
                   "video_note": {"file_id": "V1", "file_size": 7}}),
        ));
        assert_eq!(
            p.inbound.attachments.len(),
            2,
            "{:?}",
            p.inbound.attachments
        );
        assert_eq!(
            p.inbound.field(tf::FILES),
            Some("video_note V1\nanimation A1")
        );
        assert_eq!(p.inbound.text.as_deref(), Some("gif"));
    }

    #[test]
    fn business_answers_are_outgoing() {
        let v = json!({"update_id": 4, "business_message": {"message_id": 2, "date": 1,
            "from": {"id": 100, "first_name": "Shop"}, "chat": {"id": 7, "type": "private"}, "text": "Hi"}});
        assert!(matches!(parse(v).inbound.flags[..], [Flag::Outgoing(_)]));
    }
}
