//! A message's header fields as raw bytes (so charsets can be repaired),
//! and message ids.

use mail_parser::Message;
use sha2::{Digest, Sha256};

use super::decode::decode_header;

/// Header fields kept from one message; beyond this it is junk or attack.
const MAX_HEADERS: usize = 2000;
/// One raw value is read this far.
const MAX_VALUE: usize = 16 * 1024;
/// A message id longer than this is kept as its hash (in both the
/// message's own `source_ref` and the references to it, so they still
/// match).
const MAX_MSGID: usize = 512;

/// Fields of which at least one must be present for bytes to be mail.
const MAIL_FIELDS: &[&str] = &[
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "received",
    "return-path",
    "content-type",
    "mime-version",
    "in-reply-to",
    "references",
    "delivered-to",
    "x-mailer",
    "user-agent",
];

/// Lower-cased field names with their raw (undecoded, folded) values.
#[derive(Debug, Default)]
pub(super) struct Headers {
    items: Vec<(String, Vec<u8>)>,
}

impl Headers {
    /// The top-level fields of `msg`, read from its raw bytes.
    pub fn from_message(msg: &Message<'_>) -> Headers {
        let raw = msg.raw_message();
        let Some(root) = msg.parts.first() else {
            return Headers::default();
        };
        let items = root
            .headers
            .iter()
            .take(MAX_HEADERS)
            .map(|h| {
                let start = h.offset_start() as usize;
                let end = (h.offset_end() as usize).min(start.saturating_add(MAX_VALUE));
                let value = raw.get(start..end).unwrap_or_default().to_vec();
                (h.name().to_ascii_lowercase(), value)
            })
            .collect();
        Headers { items }
    }

    #[cfg(test)]
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Headers {
        Headers {
            items: pairs
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.items.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    pub fn has(&self, name: &str) -> bool {
        self.items.iter().any(|(k, _)| k == name)
    }

    /// The first value of a field, raw.
    pub fn raw(&self, name: &str) -> Option<&[u8]> {
        self.items
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of a field, raw.
    pub fn all_raw<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.items
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of a field, decoded to one line of text.
    pub fn text(&self, name: &str) -> Option<String> {
        self.raw(name).map(decode_header)
    }

    /// Whether any field a mail message has is present.
    pub fn looks_like_mail(&self) -> bool {
        self.items
            .iter()
            .any(|(k, _)| MAIL_FIELDS.contains(&k.as_str()))
    }
}

/// The ids in a `Message-ID`, `In-Reply-To` or `References` value:
/// every `<…>`, or, when a sloppy mailer left the brackets out, the tokens
/// with an `@`.
pub(super) fn msg_ids(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let mut ids = Vec::new();
    let mut rest = text.as_ref();
    while let Some(lt) = rest.find('<') {
        let after = &rest[lt + 1..];
        let Some(gt) = after.find('>') else {
            break;
        };
        push_id(&mut ids, &after[..gt]);
        rest = &after[gt + 1..];
    }
    if ids.is_empty() {
        let tokens: Vec<&str> = text
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|t| !t.is_empty())
            .collect();
        if tokens.len() == 1 {
            push_id(&mut ids, tokens[0]);
        } else {
            for t in tokens.iter().filter(|t| t.contains('@')) {
                push_id(&mut ids, t);
            }
        }
    }
    ids
}

fn push_id(ids: &mut Vec<String>, id: &str) {
    let id: String = id
        .trim_matches(['<', '>'])
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .collect();
    if !id.is_empty() && !ids.contains(&id) {
        ids.push(id);
    }
}

/// `msgid:<id>`: the `source_ref` of a message with this id, and the
/// thread reference to it.
pub(super) fn msgid_ref(id: &str) -> String {
    if id.len() > MAX_MSGID {
        format!(
            "msgid:sha256:{}",
            hex::encode(Sha256::digest(id.as_bytes()))
        )
    } else {
        format!("msgid:{id}")
    }
}

/// `hash:<sha256 of the raw bytes>`: the `source_ref` of a message without
/// a usable Message-ID, stable across re-fetches and folder rescans.
pub(super) fn hash_ref(raw: &[u8]) -> String {
    format!("hash:{}", hex::encode(Sha256::digest(raw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(
            msg_ids(b" <lead-001@example.ru>\r\n"),
            vec!["lead-001@example.ru"]
        );
        assert_eq!(
            msg_ids(b" <a@x>\r\n <b@x> <a@x>"),
            vec!["a@x".to_owned(), "b@x".to_owned()]
        );
        assert_eq!(msg_ids(b" bare-id@example.ru "), vec!["bare-id@example.ru"]);
        assert_eq!(msg_ids(b" a@x b@x junk"), vec!["a@x", "b@x"]);
        assert_eq!(msg_ids(b" <> "), Vec::<String>::new());
        assert_eq!(msg_ids(b""), Vec::<String>::new());
        assert_eq!(msg_ids(b"<unterminated@x"), vec!["unterminated@x"]);
        assert_eq!(msgid_ref("a@x"), "msgid:a@x");
        assert!(msgid_ref(&"x".repeat(600)).starts_with("msgid:sha256:"));
        assert_eq!(hash_ref(b"x"), hash_ref(b"x"));
        assert!(hash_ref(b"x").starts_with("hash:"));
    }
}
