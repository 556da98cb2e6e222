use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The configured name of a channel (`site`, `sales-mailbox`, …): the file
/// name of its `channels.d/*.toml`, unique within one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChannelId(pub String);

impl ChannelId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ChannelId {
    fn from(s: &str) -> Self {
        ChannelId(s.to_owned())
    }
}

/// Well-known keys of [`Inbound::fields`]. Connectors put what their protocol
/// carries under these names so routing rules and the lead table see one
/// vocabulary whatever the channel; anything else keeps its own name.
pub mod fields {
    pub const COMMENT: &str = "comment";
    pub const PRODUCT: &str = "product";
    pub const REGION: &str = "region";
    pub const PAGE_URL: &str = "page_url";
    pub const REFERER: &str = "referer";
    pub const FORM_ID: &str = "form_id";
    /// The organisation's phone line a call came in on (or went out by).
    pub const CALLED_LINE: &str = "called_line";
    pub const UTM_SOURCE: &str = "utm_source";
    pub const UTM_MEDIUM: &str = "utm_medium";
    pub const UTM_CAMPAIGN: &str = "utm_campaign";
    pub const UTM_TERM: &str = "utm_term";
    pub const UTM_CONTENT: &str = "utm_content";
    pub const UTM_KEYS: [&str; 5] = [UTM_SOURCE, UTM_MEDIUM, UTM_CAMPAIGN, UTM_TERM, UTM_CONTENT];
}

/// What kind of address an [`Identity`] is; contacts are matched across
/// channels by `(kind, normalized value)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    Phone,
    Email,
    Telegram,
    Vk,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Phone => "phone",
            IdentityKind::Email => "email",
            IdentityKind::Telegram => "telegram",
            IdentityKind::Vk => "vk",
        }
    }
}

/// One way to reach the sender, as the peer gave it (raw); the pipeline
/// normalizes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub kind: IdentityKind,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    pub name: Option<String>,
    pub identities: Vec<Identity>,
}

impl Sender {
    pub fn push(&mut self, kind: IdentityKind, value: impl Into<String>) {
        let value = value.into();
        if !value.trim().is_empty() {
            self.identities.push(Identity { kind, value });
        }
    }
}

/// An attachment's metadata. Content is never carried through the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub name: Option<String>,
    pub content_type: Option<String>,
    pub size: u64,
}

/// Protocol-level facts a connector observed that bear on whether the item is
/// a lead. The connector states facts; the pipeline's classifier decides the
/// disposition (together with the channel's `lead_source` flag and rules).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "flag", content = "reason", rename_all = "snake_case")]
pub enum Flag {
    /// A spam trap fired (honeypot field filled, …).
    Spam(String),
    /// Sent by a machine on someone's behalf (out-of-office, autoresponder).
    AutoReply(String),
    /// A delivery status notification.
    Bounce(String),
    /// Bulk or list mail.
    MailingList(String),
    /// From inside the organisation (own mail domain, internal extension).
    Internal(String),
    /// Something the organisation sent, not received.
    Outgoing(String),
    /// The payload could not be understood; it is recorded with this error
    /// so nothing is lost, and the channel moves on.
    Invalid(String),
    /// Not a lead for a protocol reason not covered above (a group chat, an
    /// event type the channel does not treat as a lead).
    NotLead(String),
}

/// How duplicates of this item are recognised beyond the `source_ref` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dedupe {
    /// The `source_ref` is the provider's own stable id; nothing more needed.
    SourceRef,
    /// The peer has no stable id (a form posted twice by a double click):
    /// an item whose normalized content equals an earlier one's on the same
    /// channel within the channel's dedupe window is a duplicate. The
    /// pipeline computes the content key after normalization, so `8 999…`
    /// and `+7999…` compare equal.
    ContentWithinWindow,
}

/// One inbound communication as a connector hands it over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inbound {
    pub channel: ChannelId,
    /// Unique within the channel and stable across redeliveries.
    pub source_ref: String,
    pub received_at: DateTime<Utc>,
    pub sender: Sender,
    pub subject: Option<String>,
    pub text: Option<String>,
    /// An HTML body when the peer sent no plain text; the pipeline turns it
    /// into text.
    pub html: Option<String>,
    /// Structured fields; see [`fields`] for the shared vocabulary.
    pub fields: BTreeMap<String, String>,
    pub attachments: Vec<Attachment>,
    pub flags: Vec<Flag>,
    pub dedupe: Dedupe,
    /// `source_ref`s of earlier items this one continues (e-mail
    /// References, a reply-to message id) so it can join their lead.
    pub thread_refs: Vec<String>,
    /// The payload as received, kept for audit and replay.
    pub raw: String,
    /// Set by telephony connectors: what this event says about one call.
    /// Events sharing a `call_id` merge into one call record.
    pub call: Option<CallEvent>,
}

/// Which way a call goes, as the PBX reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallDirection {
    /// An outside number calling the organisation.
    Inbound,
    /// An employee calling an outside number.
    Outbound,
    /// Extension to extension; never a lead.
    Internal,
}

/// Where in its life a call is, as of this event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallPhase {
    /// Ringing: in IVR, a queue or at an extension.
    Ringing,
    /// Someone picked up.
    Answered,
    /// Hung up; `answered`, `talk_seconds`, `wait_seconds` say how it went.
    Ended,
    /// A recording became available.
    Recording,
}

/// One PBX event about one call, in provider-neutral terms. Numbers are as
/// the PBX sent them (`79991234567`, `101`); the pipeline normalizes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallEvent {
    /// The provider's id of the whole call across legs and transfers
    /// (Mango `entry_id`, Zadarma `pbx_call_id`).
    pub call_id: String,
    pub direction: CallDirection,
    pub phase: CallPhase,
    /// The outside party: the caller of an inbound call, the callee of an
    /// outbound one. `None` for internal calls.
    pub client_number: Option<String>,
    /// The organisation's line that was dialled (inbound) or used (outbound).
    pub line: Option<String>,
    /// The employee's extension involved, if known.
    pub extension: Option<String>,
    /// When the event happened, per the PBX.
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Known once the call ended: whether anyone answered.
    pub answered: Option<bool>,
    pub talk_seconds: Option<u32>,
    /// Time the caller waited (ring, IVR, queue) before answer or hang-up.
    pub wait_seconds: Option<u32>,
    /// The provider's end reason as sent (`no answer`, `busy`, `1100`, …).
    pub end_reason: Option<String>,
    /// Recording URL or provider id.
    pub recording: Option<String>,
}

impl Inbound {
    pub fn new(
        channel: ChannelId,
        source_ref: impl Into<String>,
        received_at: DateTime<Utc>,
    ) -> Self {
        Inbound {
            channel,
            source_ref: source_ref.into(),
            received_at,
            sender: Sender::default(),
            subject: None,
            text: None,
            html: None,
            fields: BTreeMap::new(),
            attachments: Vec::new(),
            flags: Vec::new(),
            dedupe: Dedupe::SourceRef,
            thread_refs: Vec::new(),
            raw: String::new(),
            call: None,
        }
    }

    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}
