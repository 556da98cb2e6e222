//! One raw RFC 5322 message to one [`Inbound`].
//!
//! Parsing is best effort and total: whatever the bytes, [`parse_message`]
//! returns an `Inbound`; what cannot be understood carries
//! [`Flag::Invalid`] with the reason, and the raw text is always kept.
//!
//! # Who the customer is
//! - **A person's mail**: the From name and address, phones found in what
//!   they wrote (their signature included; `>` quotes, `<blockquote>`,
//!   reply attributions and forwarded blocks excluded, since those hold
//!   the salesperson's own signature). A different `Reply-To` is kept in
//!   `fields["reply_to"]`.
//! - **A form notification**: the sender is listed in
//!   [`MailRules::form_senders`]; or is a robot address (`noreply@`,
//!   `robot@`, `notifications@`, `wordpress@` …); or its display name is a
//!   site's or a form's (`Сайт …`, `Форма обратной связи`, `Website`) and
//!   the mail has labelled contacts or a different `Reply-To`; or the body
//!   has labelled contacts and a different `Reply-To` (or there is no
//!   From). The customer comes from the body's `Label: value` lines
//!   (built-in Russian and English labels plus [`MailRules::form_labels`];
//!   HTML tables read as labelled lines), then an outside `Reply-To`, then
//!   addresses and phones in the body. The robot's own address is never
//!   the customer's. Labelled comment, product, region, page, form and
//!   `utm_*` go to `fields`, other labels of a real form under their own
//!   name.
//! - **A message forwarded by a colleague** (From in
//!   [`MailRules::own_domains`], with an inline `From:`/`От:` block of an
//!   outside sender, or an attached `message/rfc822` from one): the
//!   original sender is the customer, `fields["forwarded_by"]` names the
//!   colleague, and the message is not internal. (A partner outside the
//!   organisation who forwards something stays the sender.)
//!
//! # Flags (strongest first)
//! `Invalid` (not mail at all) › `Bounce` › `AutoReply` › `MailingList` ›
//! `Internal`; the pipeline takes the first. The header rules are in the
//! `flags` submodule. List markers are ignored for listed form senders and
//! for the organisation's own distribution lists (a `List-Id` under an
//! own domain: a Google Group behind `sales@` relays customers).
//!
//! `Internal` is raised for From in `own_domains` unless: the sender is a
//! listed form sender; or the mail is a form notification (robot address,
//! site name …) that carries a customer (labelled contacts, an outside
//! `Reply-To`, or, from a robot address, a phone or outside address in its
//! text: the site's own form or callback widget); or a colleague forwards
//! an outside sender's message. Own-domain mail from a person with labelled
//! lines but no outside `Reply-To` stays internal (a colleague passing
//! details on): list such senders in `form_senders`.

mod body;
mod decode;
mod flags;
mod headers;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;

use chrono::{DateTime, Utc};
use leadgate_connector::{Attachment, ChannelId, Flag, IdentityKind, Inbound};
use mail_parser::{Encoding, Message, MessageParser, MessagePart, MimeHeaders, PartType};
use serde::Deserialize;

use self::body::{
    clean_name, find_emails, find_forwarded, mailbox_from_text, own_words, parse_form,
};
use self::decode::{
    clean_text, decode_bytes, decode_header, html_to_text, needs_redecode, one_line, truncate,
};
use self::flags::{Facts, domain_of, is_bounce_sender, is_robot_sender};
use self::headers::{Headers, hash_ref, msg_ids, msgid_ref};
use leadgate_connector::phones::{self, find_phones, phone_key};

/// `raw` keeps at most this much of the message.
const MAX_RAW: usize = 256 * 1024;
/// `text` keeps at most this much of the body.
const MAX_TEXT: usize = 64 * 1024;
/// `html` keeps at most this much (it is only set when there is no text).
const MAX_HTML: usize = 128 * 1024;
const MAX_SUBJECT: usize = 1024;
const MAX_NAME: usize = 256;
const MAX_ATTACHMENTS: usize = 64;
/// References beyond this many keep their oldest and newest ids.
const MAX_THREAD_REFS: usize = 64;
/// A body part is decoded again (charset repair) from at most this much.
const MAX_REDECODE: usize = 1024 * 1024;
/// E-mail identities taken from one message.
const MAX_EMAILS: usize = 4;

/// Per-channel rules for reading mail (`[mail]` in a channel file).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailRules {
    /// The organisation's mail domains (`ourcompany.example`; a leading `@`
    /// is allowed; subdomains match). Mail From these is
    /// [`Flag::Internal`], except form notifications and forwarded customer
    /// mail (see the rules in this module's docs). Default: none.
    pub own_domains: Vec<String>,
    /// Senders whose mail is a site-form notification: an address
    /// (`forms@site.example`, exact, any case) or a domain (`@tilda.ws` or
    /// `tilda.ws`, subdomains included). Their mail is read for labelled
    /// fields; the customer is in the body or `Reply-To`, never the sender;
    /// list headers their mail service adds (`List-Unsubscribe`, `List-Id`)
    /// are ignored, and they are never internal. Robot addresses
    /// (`noreply@` …) are treated this way without being listed.
    /// Default: none.
    pub form_senders: Vec<String>,
    /// Extra labels per target, on top of the built-in Russian and English
    /// ones (`Имя`, `Телефон`, `E-mail`, `Комментарий`, `Товар`, `Город`,
    /// `Name`, `Phone` …); compared case-insensitively, a trailing `:` or
    /// `*` ignored. Default: none.
    pub form_labels: FormLabels,
    /// Extra subject fragments (case-insensitive) that mark an automatic
    /// out-of-office reply, on top of the built-in ones (`Автоответ`,
    /// `Я в отпуске`, `Out of Office`, `Automatic reply` …).
    /// Default: none.
    pub auto_reply_subjects: Vec<String>,
}

/// Extra `Label:` spellings for each target of a form notification.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FormLabels {
    /// The customer's name (`sender.name`).
    pub name: Vec<String>,
    /// A phone (`IdentityKind::Phone`).
    pub phone: Vec<String>,
    /// An e-mail address (`IdentityKind::Email`).
    pub email: Vec<String>,
    /// `fields["comment"]`.
    pub comment: Vec<String>,
    /// `fields["product"]`.
    pub product: Vec<String>,
    /// `fields["region"]`.
    pub region: Vec<String>,
}

impl MailRules {
    fn is_own(&self, addr: &str) -> bool {
        domain_of(addr).is_some_and(|d| self.own_domains.iter().any(|o| domain_matches(&d, o)))
    }

    fn is_form_sender(&self, addr: &str) -> bool {
        let addr = addr.trim();
        self.form_senders.iter().any(|entry| {
            let entry = entry.trim();
            match entry.split_once('@') {
                Some((local, _)) if !local.is_empty() => entry.eq_ignore_ascii_case(addr),
                _ => domain_of(addr).is_some_and(|d| domain_matches(&d, entry)),
            }
        })
    }
}

/// `domain` is `pattern` or a subdomain of it.
fn domain_matches(domain: &str, pattern: &str) -> bool {
    let p = pattern
        .trim()
        .trim_start_matches('@')
        .trim_end_matches('.')
        .to_lowercase();
    !p.is_empty() && (domain == p || domain.ends_with(&format!(".{p}")))
}

/// Turn one raw RFC 5322 message into an [`Inbound`]. Never panics; a
/// message that cannot be understood still yields an `Inbound` carrying
/// [`Flag::Invalid`] (with the reason) and the raw text, so nothing is lost.
///
/// `source_ref` is `msgid:<Message-ID>` or, without one, `hash:<sha256 of
/// the bytes>`; `thread_refs` are the `msgid:` refs of In-Reply-To and
/// References.
pub fn parse_message(
    channel: &ChannelId,
    raw: &[u8],
    received_at: DateTime<Utc>,
    rules: &MailRules,
) -> Inbound {
    match std::panic::catch_unwind(AssertUnwindSafe(|| read(channel, raw, received_at, rules))) {
        Ok(inbound) => inbound,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::warn!(channel = %channel, error = %why, "mail parser failed; message kept as invalid");
            let mut inbound = Inbound::new(channel.clone(), hash_ref(raw), received_at);
            inbound.raw = raw_text(raw);
            inbound.flags.push(Flag::Invalid(format!(
                "the message could not be parsed: {why}"
            )));
            inbound
        }
    }
}

/// The raw message as storable text: lossy UTF-8, no NUL, capped.
fn raw_text(raw: &[u8]) -> String {
    let head = &raw[..raw.len().min(MAX_RAW)];
    let mut s = String::from_utf8_lossy(head).replace('\0', "");
    truncate(&mut s, MAX_RAW);
    s
}

fn read(channel: &ChannelId, raw: &[u8], received_at: DateTime<Utc>, rules: &MailRules) -> Inbound {
    let mut inbound = Inbound::new(channel.clone(), String::new(), received_at);
    inbound.raw = raw_text(raw);
    let parsed = if raw.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        MessageParser::default().parse(raw)
    };
    let headers = parsed.as_ref().map(Headers::from_message);
    let (Some(msg), Some(headers)) = (parsed, headers) else {
        inbound.source_ref = hash_ref(raw);
        inbound.flags.push(Flag::Invalid(
            "not a mail message: no RFC 5322 header section".into(),
        ));
        return inbound;
    };
    if !headers.looks_like_mail() {
        inbound.source_ref = hash_ref(raw);
        inbound.flags.push(Flag::Invalid(
            "not a mail message: none of the fields From, To, Subject, Date, Message-ID, Received, Content-Type".into(),
        ));
        return inbound;
    }

    inbound.source_ref = headers
        .raw("message-id")
        .and_then(|v| msg_ids(v).into_iter().next())
        .map(|id| msgid_ref(&id))
        .unwrap_or_else(|| hash_ref(raw));
    inbound.thread_refs = thread_refs(&headers, &inbound.source_ref);
    let subject = headers
        .raw("subject")
        .map(|v| one_line(&decode_header(v), MAX_SUBJECT))
        .filter(|s| !s.is_empty());
    inbound.subject.clone_from(&subject);
    let subject = subject.unwrap_or_default();

    let bodies = Bodies::of(&msg);
    inbound.attachments = attachments(&msg);
    let analysis = bodies.analysis_text();

    let customer = Customer::identify(&headers, &msg, &analysis, &subject, rules);
    inbound.flags = mail_flags(&headers, &subject, &bodies, &customer, rules);
    customer.people.fill(&mut inbound);
    inbound.fields.extend(customer.fields);

    // What it says.
    let plain = clean_text(&bodies.plain);
    let attached = customer.attached_text;
    if !plain.trim().is_empty() {
        let mut text = plain.trim_end().to_owned();
        if let Some(extra) = attached {
            text = format!("{text}\n\n{extra}");
        }
        truncate(&mut text, MAX_TEXT);
        inbound.text = Some(text);
    } else if let Some(html) = &bodies.html {
        let mut html = clean_text(html);
        truncate(&mut html, MAX_HTML);
        inbound.html = Some(html);
    } else {
        inbound.text = attached;
    }
    tracing::debug!(
        source_ref = %inbound.source_ref,
        form_notification = customer.form_mode,
        flags = ?inbound.flags,
        "mail read"
    );
    inbound
}

/// Who the mail is from, as far as sales is concerned (see the module
/// docs), and facts the flags need.
struct Customer {
    people: People,
    fields: BTreeMap<String, String>,
    from_addr: Option<String>,
    /// The sender is listed in `form_senders`.
    listed: bool,
    /// Read as a site-form notification.
    form_mode: bool,
    /// From the own domain and not speaking for a customer.
    internal: bool,
    /// A forwarded `message/rfc822`'s text, to add to the item's text.
    attached_text: Option<String>,
}

impl Customer {
    fn identify(
        headers: &Headers,
        msg: &Message<'_>,
        analysis: &str,
        subject: &str,
        rules: &MailRules,
    ) -> Customer {
        let from = mailbox(headers, msg, "from").or_else(|| mailbox(headers, msg, "sender"));
        let reply_to = mailbox(headers, msg, "reply-to");
        let from_addr = from.as_ref().and_then(|m| m.addr.clone());
        let from_is = |e: &str| {
            from_addr
                .as_deref()
                .is_some_and(|f| f.eq_ignore_ascii_case(e))
        };
        let bounce_sender = from_addr.as_deref().is_some_and(is_bounce_sender);
        let robot = !bounce_sender && from_addr.as_deref().is_some_and(is_robot_sender);
        let listed = from_addr
            .as_deref()
            .is_some_and(|a| rules.is_form_sender(a));
        let from_own = from_addr.as_deref().is_some_and(|a| rules.is_own(a));
        // An outside person's address in Reply-To (not the sender's own).
        let reply_other = reply_to
            .as_ref()
            .and_then(|r| r.addr.as_deref())
            .filter(|r| {
                !from_is(r) && !is_robot_sender(r) && !is_bounce_sender(r) && !rules.is_own(r)
            })
            .map(str::to_owned);
        let outside = |e: &String| {
            !rules.is_own(e)
                && !is_robot_sender(e)
                && !is_bounce_sender(e)
                && !rules.is_form_sender(e)
                && !from_is(e)
        };

        // A form notification is read whole; a person's mail only where
        // they wrote it (a quoted signature of ours has labelled lines too).
        let form = parse_form(analysis, &rules.form_labels, true);
        let written = own_words(analysis);
        let site_sender = from
            .as_ref()
            .and_then(|m| m.name.as_deref())
            .is_some_and(looks_like_site_name)
            || looks_like_notification(subject, analysis);
        let form_mode = listed
            || robot
            || (form.has_contact() && (reply_other.is_some() || from_addr.is_none()))
            || (site_sender && (reply_other.is_some() || form.has_contact()));
        let scanned = if form_mode {
            analysis
        } else {
            written.as_str()
        };
        let body_phones = find_phones(scanned);
        let body_emails: Vec<String> = find_emails(scanned).into_iter().filter(outside).collect();
        // A robot of the own domain (the site's form or callback widget)
        // speaks for a customer when its text holds a phone or an address.
        let carries_customer = form.has_contact()
            || reply_other.is_some()
            || (robot && (!body_phones.is_empty() || !body_emails.is_empty()));
        let forwarded = (from_own && !form_mode && !bounce_sender)
            .then(|| forwarded_customer(msg, analysis, rules))
            .flatten();
        let internal =
            from_own && !listed && !(form_mode && carries_customer) && forwarded.is_none();

        let mut people = People::default();
        let mut fields = BTreeMap::new();
        let mut attached_text = None;
        if form_mode {
            people.name = form.name.clone().or_else(|| {
                reply_other
                    .as_ref()
                    .and(reply_to.as_ref())
                    .and_then(|r| r.name.clone())
            });
            people
                .emails
                .extend(form.emails.iter().filter(|e| !rules.is_own(e)).cloned());
            people.emails.extend(reply_other.iter().cloned());
            if people.emails.is_empty() {
                people.emails.extend(body_emails);
            }
            if form.phones.is_empty() {
                people.phones.extend(body_phones);
            } else {
                people.phones.extend(form.phones.iter().cloned());
            }
            fields.extend(form.fields);
        } else if let Some(f) = forwarded {
            people.name = f.name;
            people.emails.push(f.email);
            people.phones.extend(find_phones(&own_words(&f.text)));
            fields.extend(from_addr.clone().map(|by| ("forwarded_by".to_owned(), by)));
            attached_text = f.attached_text;
        } else {
            people.name = from.as_ref().and_then(|m| m.name.clone());
            if !bounce_sender {
                people.emails.extend(from_addr.clone());
            }
            let own_form = parse_form(&written, &rules.form_labels, false);
            if own_form.known_labels >= 2 {
                // A person who typed their details as labelled lines.
                if people.name.is_none() {
                    people.name = own_form.name.clone();
                }
                people
                    .emails
                    .extend(own_form.emails.iter().filter(|e| !rules.is_own(e)).cloned());
                fields.extend(own_form.fields.into_iter().filter(|(k, _)| known_field(k)));
            }
            match (&from_addr, &reply_to, &reply_other) {
                (None, Some(r), _) => {
                    people.name = people.name.or_else(|| r.name.clone());
                    people.emails.extend(r.addr.clone());
                }
                (Some(_), _, Some(other)) => {
                    fields.insert("reply_to".to_owned(), other.clone());
                }
                _ => {}
            }
            people.phones.extend(body_phones);
        }
        people.phones.extend(find_phones(subject));
        Customer {
            people,
            fields,
            from_addr,
            listed,
            form_mode,
            internal,
            attached_text,
        }
    }
}

/// The flags of one message, strongest first: bounce, automatic reply,
/// list mail, internal sender.
fn mail_flags(
    headers: &Headers,
    subject: &str,
    bodies: &Bodies,
    customer: &Customer,
    rules: &MailRules,
) -> Vec<Flag> {
    let facts = Facts {
        headers,
        subject,
        from: customer.from_addr.as_deref(),
        part_types: &bodies.part_types,
        root_report_type: bodies.root_report_type.as_deref(),
        trusted_form_sender: customer.listed,
        own_domains: &rules.own_domains,
        extra_auto_reply_subjects: &rules.auto_reply_subjects,
    };
    let mut out = Vec::new();
    out.extend(flags::bounce(&facts).map(Flag::Bounce));
    out.extend(flags::auto_reply(&facts).map(Flag::AutoReply));
    out.extend(flags::mailing_list(&facts).map(Flag::MailingList));
    if customer.internal {
        let from = customer.from_addr.as_deref().unwrap_or_default();
        out.push(Flag::Internal(format!(
            "sent from the organisation's own domain ({from})"
        )));
    }
    out
}

/// Field keys a person's own labelled lines may set.
fn known_field(key: &str) -> bool {
    use leadgate_connector::fields;
    key == fields::PRODUCT
        || key == fields::REGION
        || key == fields::PAGE_URL
        || key == fields::FORM_ID
        || fields::UTM_KEYS.contains(&key)
}

/// A From display name that is a website's or a form's, not a person's.
fn looks_like_site_name(name: &str) -> bool {
    let n = name.to_lowercase();
    [
        "форма",
        "с сайта",
        "сайт",
        "website",
        "web form",
        "webform",
        "contact form",
        "робот",
        "robot",
        "no-reply",
        "noreply",
        "уведомлен",
        "notification",
        "обратн",
        "заявк",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// A subject or opening lines that say a website wrote this mail
/// ("Новая заявка с сайта", "Сообщение из формы обратной связи",
/// Bitrix's "Информационное сообщение сайта", "New form submission").
fn looks_like_notification(subject: &str, text: &str) -> bool {
    const SUBJECT: &[&str] = &[
        "с сайта",
        "из формы",
        "форма обратной связи",
        "формы обратной связи",
        "обратный звонок",
        "обратного звонка",
        "новая заявка",
        "новый лид",
        "form submission",
        "website form",
        "contact form",
        "new lead",
        "new submission",
    ];
    const BODY: &[&str] = &[
        "информационное сообщение сайта",
        "сообщение сгенерировано автоматически",
        "письмо сгенерировано автоматически",
        "отправлено с сайта",
        "отправлено из формы",
        "через форму обратной связи",
        "заявка с сайта",
        "sent from the contact form",
        "submitted via",
    ];
    let subject = subject.to_lowercase();
    let mut head = text.to_owned();
    truncate(&mut head, 4096);
    let head = head.to_lowercase();
    SUBJECT.iter().any(|w| subject.contains(w)) || BODY.iter().any(|w| head.contains(w))
}

/// The customer's name, addresses and phones, in order of strength.
#[derive(Default)]
struct People {
    name: Option<String>,
    emails: Vec<String>,
    phones: Vec<String>,
}

impl People {
    fn fill(self, inbound: &mut Inbound) {
        inbound.sender.name = self
            .name
            .map(|n| one_line(&n, MAX_NAME))
            .filter(|n| !n.is_empty());
        let mut seen: Vec<String> = Vec::new();
        for e in self.emails {
            let key = e.trim().to_lowercase();
            if !key.contains('@') || seen.contains(&key) || seen.len() >= MAX_EMAILS {
                continue;
            }
            seen.push(key);
            inbound.sender.push(IdentityKind::Email, one_line(&e, 320));
        }
        let mut keys: Vec<String> = Vec::new();
        for p in self.phones {
            let key = phone_key(&p);
            if key.is_empty() || keys.contains(&key) || keys.len() >= phones::MAX_PHONES {
                continue;
            }
            keys.push(key);
            inbound.sender.push(IdentityKind::Phone, one_line(&p, 64));
        }
    }
}

/// A display name and address from one address field.
#[derive(Debug, Clone)]
struct Mailbox {
    name: Option<String>,
    addr: Option<String>,
}

/// Reads `From`, `Sender` or `Reply-To`. mail-parser's address is used when
/// it has one; otherwise (a whole `Name <addr>` inside one encoded word,
/// as some form robots send) the decoded text is read for it. The display
/// name comes from this crate's decoding whenever the raw value is encoded
/// or 8-bit, so a wrongly labelled charset is repaired.
fn mailbox(headers: &Headers, msg: &Message<'_>, field: &str) -> Option<Mailbox> {
    let raw = headers.raw(field)?;
    let parsed = match field {
        "from" => msg.from(),
        "sender" => msg.sender(),
        _ => msg.reply_to(),
    };
    let first = parsed.and_then(|a| {
        a.iter()
            .find(|a| a.address().is_some_and(|x| x.contains('@')))
    });
    let decoded = decode_header(raw);
    let (text_name, text_addr) = mailbox_from_text(&decoded);
    let addr = first
        .and_then(|a| a.address())
        .and_then(clean_addr)
        .or_else(|| text_addr.as_deref().and_then(clean_addr));
    let encoded = !raw.is_ascii() || raw.windows(2).any(|w| w == b"=?");
    let parser_name = first.and_then(|a| a.name()).map(str::to_owned);
    let name = if encoded || parser_name.is_none() {
        text_name.or(parser_name)
    } else {
        parser_name
    };
    let name = name.and_then(|n| clean_name(&n, addr.as_deref()));
    (name.is_some() || addr.is_some()).then_some(Mailbox { name, addr })
}

/// An address without the whitespace, controls, quotes and brackets a
/// broken header leaves around it; `None` unless it has an `@`.
fn clean_addr(a: &str) -> Option<String> {
    let a: String = a
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control() && !matches!(c, '<' | '>' | '"'))
        .collect();
    let a = a.trim_matches(['\'', '.', ',', ';']).to_owned();
    (a.contains('@') && a.len() <= 320).then_some(a)
}

fn thread_refs(headers: &Headers, own: &str) -> Vec<String> {
    let in_reply_to: Vec<String> = headers
        .all_raw("in-reply-to")
        .flat_map(msg_ids)
        .take(8)
        .collect();
    let mut references: Vec<String> = headers.all_raw("references").flat_map(msg_ids).collect();
    let room = MAX_THREAD_REFS.saturating_sub(in_reply_to.len());
    if references.len() > room {
        let newest = room.saturating_sub(8);
        let tail = references.split_off(references.len() - newest);
        references.truncate(8);
        references.extend(tail);
    }
    let mut out: Vec<String> = Vec::new();
    for id in in_reply_to.iter().chain(references.iter()) {
        let r = msgid_ref(id);
        if r != own && !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// The readable parts of a message.
#[derive(Debug, Default)]
struct Bodies {
    /// Non-empty text/plain parts, joined.
    plain: String,
    /// text/html parts, joined.
    html: Option<String>,
    /// `type/subtype` of every part, the root first.
    part_types: Vec<String>,
    /// The root's `report-type` when it is `multipart/report`.
    root_report_type: Option<String>,
}

impl Bodies {
    fn of(msg: &Message<'_>) -> Bodies {
        let mut b = Bodies::default();
        let mut html = String::new();
        // A mail may have hundreds of thousands of parts: a flag per part
        // keeps this pass linear.
        let mut seen = vec![false; msg.parts.len()];
        for &id in msg.text_body.iter().chain(msg.html_body.iter()) {
            let Some(part) = msg.parts.get(id as usize) else {
                continue;
            };
            if std::mem::replace(&mut seen[id as usize], true) {
                continue;
            }
            match &part.body {
                PartType::Text(t) if b.plain.len() < MAX_TEXT => {
                    let t = part_text(msg, part, t);
                    if !t.trim().is_empty() {
                        if !b.plain.is_empty() {
                            b.plain.push_str("\n\n");
                        }
                        b.plain.push_str(t.trim_end());
                    }
                }
                PartType::Html(h) if html.len() < MAX_HTML => {
                    let h = part_text(msg, part, h);
                    if !h.trim().is_empty() {
                        html.push_str(&h);
                        html.push('\n');
                    }
                }
                _ => {}
            }
        }
        b.html = (!html.trim().is_empty()).then_some(html);
        for (i, part) in msg.parts.iter().enumerate() {
            let Some(ct) = part.content_type() else {
                continue;
            };
            let t = format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")).to_ascii_lowercase();
            if i == 0 && t == "multipart/report" {
                b.root_report_type = ct
                    .attribute("report-type")
                    .map(|r| r.trim().to_ascii_lowercase());
            }
            b.part_types.push(t);
        }
        b
    }

    /// The text contacts and labels are read from: the plain body, or the
    /// HTML's text when the plain one is empty; capped.
    fn analysis_text(&self) -> String {
        let mut text = if self.plain.trim().is_empty() {
            self.html.as_deref().map(html_to_text).unwrap_or_default()
        } else {
            self.plain.clone()
        };
        truncate(&mut text, MAX_TEXT);
        clean_text(&text)
    }
}

/// A text part's content, decoded again from its bytes when the charset
/// label is missing, wrong or suspicious.
fn part_text(msg: &Message<'_>, part: &MessagePart<'_>, decoded: &str) -> String {
    let label = part.content_type().and_then(|ct| ct.attribute("charset"));
    if needs_redecode(label, decoded)
        && let Some(bytes) = transfer_decoded(msg, part)
    {
        return decode_bytes(&bytes, label);
    }
    decoded.to_owned()
}

/// A part's body with its transfer encoding undone, before charset
/// decoding.
fn transfer_decoded(msg: &Message<'_>, part: &MessagePart<'_>) -> Option<Vec<u8>> {
    let start = part.offset_body as usize;
    let end = (part.offset_end as usize).min(start.saturating_add(MAX_REDECODE));
    let raw = msg.raw_message().get(start..end)?;
    Some(match part.encoding {
        Encoding::Base64 => decode::base64_lenient(raw),
        Encoding::QuotedPrintable => decode::quoted_printable_lenient(raw, false),
        Encoding::None => raw.to_vec(),
    })
}

fn attachments(msg: &Message<'_>) -> Vec<Attachment> {
    msg.attachments()
        .take(MAX_ATTACHMENTS)
        .map(|part| {
            let name = part.attachment_name().and_then(|n| {
                let n = n.rsplit(['/', '\\']).next().unwrap_or(n);
                let n = one_line(&clean_text(n), 255);
                (!n.is_empty()).then_some(n)
            });
            let content_type = part.content_type().map(|ct| {
                match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_owned(),
                }
                .to_ascii_lowercase()
            });
            Attachment {
                name,
                content_type,
                size: part.len() as u64,
            }
        })
        .collect()
}

/// The outside sender of a message a colleague forwarded.
struct ForwardedCustomer {
    name: Option<String>,
    email: String,
    /// The forwarded part's text, where the customer's phones are.
    text: String,
    /// The text of a forwarded `message/rfc822` attachment, added to the
    /// item's text.
    attached_text: Option<String>,
}

fn forwarded_customer(
    msg: &Message<'_>,
    analysis: &str,
    rules: &MailRules,
) -> Option<ForwardedCustomer> {
    let outside =
        |addr: &str| !rules.is_own(addr) && !is_robot_sender(addr) && !is_bounce_sender(addr);
    if let Some(f) = find_forwarded(analysis).filter(|f| outside(&f.email)) {
        let text = analysis.get(f.body..).unwrap_or_default().to_owned();
        return Some(ForwardedCustomer {
            name: f.name,
            email: f.email,
            text,
            attached_text: None,
        });
    }
    for part in msg.parts.iter() {
        let PartType::Message(nested) = &part.body else {
            continue;
        };
        let headers = Headers::from_message(nested);
        let Some(from) = mailbox(&headers, nested, "from") else {
            continue;
        };
        let Some(email) = from.addr.filter(|a| outside(a)) else {
            continue;
        };
        let bodies = Bodies::of(nested);
        let text = bodies.analysis_text();
        let subject = headers.text("subject").unwrap_or_default();
        let mut attached = format!(
            "---------- Forwarded message ----------\nFrom: {email}\nSubject: {subject}\n\n{text}"
        );
        truncate(&mut attached, MAX_TEXT);
        return Some(ForwardedCustomer {
            name: from.name,
            email,
            text,
            attached_text: Some(attached),
        });
    }
    None
}
