//! The header and structure facts that mark mail as not written by a
//! person to the organisation: bounces, automatic replies, list mail
//! (protocols.md §1.6). Each check returns the reason it fired.

use super::headers::Headers;

/// Local parts of delivery-status senders.
const BOUNCE_LOCALS: &[&str] = &[
    "mailer-daemon",
    "mailerdaemon",
    "mailer_daemon",
    "mail-daemon",
    "postmaster",
    "mail-delivery-subsystem",
    "mdaemon",
];

/// Subjects MTAs give delivery-status notifications.
const BOUNCE_SUBJECTS: &[&str] = &[
    "undelivered mail",
    "undeliverable",
    "delivery status notification",
    "delivery failure",
    "delivery has failed",
    "mail delivery failed",
    "returned mail",
    "failure notice",
    "mail delivery failure",
    "message not delivered",
    "недоставленное сообщение",
    "не удалось доставить",
    "сообщение не доставлено",
    "ошибка доставки",
    "отчет о недоставке",
    "отчёт о недоставке",
];

/// Out-of-office and autoresponder subjects, lower case (`ё` as `е`).
const AUTO_REPLY_SUBJECTS: &[&str] = &[
    "автоответ",
    "автоматический ответ",
    "я в отпуске",
    "нахожусь в отпуске",
    "в отпуске до",
    "вне офиса",
    "отсутствую в офисе",
    "нахожусь на больничном",
    "out of office",
    "out of the office",
    "automatic reply",
    "auto reply",
    "autoreply",
    "auto-reply",
    "auto response",
    "autoresponse",
    "auto-response",
    "away from the office",
    "away from office",
    "on vacation until",
    "on leave until",
    "abwesenheitsnotiz",
    "automatische antwort",
    "réponse automatique",
    "respuesta automática",
];

/// What [`detect`] looks at.
pub(super) struct Facts<'a> {
    pub headers: &'a Headers,
    /// Decoded subject.
    pub subject: &'a str,
    /// The From address.
    pub from: Option<&'a str>,
    /// `type/subtype` of every MIME part (lower case), the root first,
    /// with the root's `report-type` parameter, if any.
    pub part_types: &'a [String],
    pub root_report_type: Option<&'a str>,
    /// The sender is a configured form sender: list headers that mail
    /// services add to everything they send are not held against it.
    pub trusted_form_sender: bool,
    /// The organisation's own domains: a list whose `List-Id` is one of
    /// them is the organisation's own distribution list (a Google Group
    /// behind `sales@`), which relays customers' mail, not list mail.
    pub own_domains: &'a [String],
    /// Extra out-of-office subject fragments from the channel's rules.
    pub extra_auto_reply_subjects: &'a [String],
}

/// The local part of an address, lower case, without a `+tag`.
pub(super) fn local_part(addr: &str) -> String {
    let local = addr.rsplit_once('@').map_or(addr, |(l, _)| l);
    local
        .split('+')
        .next()
        .unwrap_or(local)
        .trim_matches(['"', '<', ' '])
        .to_lowercase()
}

/// The domain of an address, lower case, without a trailing dot.
pub(super) fn domain_of(addr: &str) -> Option<String> {
    let (_, d) = addr.rsplit_once('@')?;
    let d = d.trim().trim_end_matches(['>', '.', ' ']).to_lowercase();
    (!d.is_empty()).then_some(d)
}

pub(super) fn is_bounce_sender(addr: &str) -> bool {
    BOUNCE_LOCALS.contains(&local_part(addr).as_str())
}

/// Addresses machines send from: `noreply@`, `robot@`, `notifications@`,
/// `wordpress@` … (not bounce senders, see [`is_bounce_sender`]).
pub(super) fn is_robot_sender(addr: &str) -> bool {
    let local = local_part(addr);
    let squashed: String = local.chars().filter(|c| c.is_alphanumeric()).collect();
    if [
        "noreply",
        "donotreply",
        "dontreply",
        "noanswer",
        "nereply",
        "neotvechat",
    ]
    .iter()
    .any(|p| squashed.contains(p))
    {
        return true;
    }
    let word = local
        .split(['.', '-', '_'])
        .next()
        .unwrap_or("")
        .trim_end_matches(|c: char| c.is_ascii_digit());
    matches!(
        word,
        "robot"
            | "robots"
            | "bot"
            | "mailbot"
            | "mailer"
            | "automailer"
            | "automated"
            | "auto"
            | "autoreply"
            | "autoresponder"
            | "notification"
            | "notifications"
            | "notify"
            | "notifier"
            | "alert"
            | "alerts"
            | "forms"
            | "form"
            | "webform"
            | "webforms"
            | "formmailer"
            | "wordpress"
            | "tilda"
            | "bitrix"
            | "system"
            | "daemon"
            | "cron"
    )
}

/// A delivery-status notification: `multipart/report;
/// report-type=delivery-status`, a `message/delivery-status` part, a
/// mailer-daemon/postmaster sender, `X-Failed-Recipients`, or a null
/// Return-Path `<>` with a bounce subject.
pub(super) fn bounce(f: &Facts<'_>) -> Option<String> {
    if let Some(rt) = f.root_report_type
        && (rt == "delivery-status" || rt == "global-delivery-status")
    {
        return Some(format!("multipart/report; report-type={rt}"));
    }
    if let Some(t) = f
        .part_types
        .iter()
        .find(|t| *t == "message/delivery-status" || *t == "message/global-delivery-status")
    {
        return Some(format!("{t} part"));
    }
    if let Some(from) = f.from
        && is_bounce_sender(from)
    {
        return Some(format!("sent by {from}"));
    }
    if f.headers.has("x-failed-recipients") {
        return Some("X-Failed-Recipients present".into());
    }
    let subject = f.subject.to_lowercase();
    if let Some(rp) = f.headers.text("return-path")
        && rp.trim().trim_matches(['<', '>', ' ']).is_empty()
        && BOUNCE_SUBJECTS.iter().any(|s| subject.contains(s))
    {
        return Some(format!("null Return-Path and subject {:?}", f.subject));
    }
    None
}

fn is_off(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "" | "no" | "false" | "0" | "off" | "none"
    )
}

/// Sent by a machine on someone's behalf: `Auto-Submitted` other than
/// `no` (RFC 3834: `Auto-Submitted: no` is a person), vendor autoreply
/// headers, `X-Auto-Response-Suppress` with OOF-like values,
/// `Precedence: auto_reply`, read receipts, out-of-office subjects.
pub(super) fn auto_reply(f: &Facts<'_>) -> Option<String> {
    if let Some(v) = f.headers.text("auto-submitted") {
        let token = v
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !token.is_empty() && token != "no" {
            return Some(format!("Auto-Submitted: {token}"));
        }
    }
    for (name, _) in f.headers.iter() {
        let vendor = name.contains("autorepl")
            || name.contains("autorespon")
            || name.contains("auto-reply")
            || name.contains("autogenerated")
            || name == "x-auto-generated";
        if vendor && name != "x-auto-response-suppress" {
            let v = f.headers.text(name).unwrap_or_default();
            if !is_off(&v) {
                return Some(format!("{name}: {}", short(&v)));
            }
        }
    }
    if let Some(v) = f.headers.text("x-auto-response-suppress") {
        let lower = v.to_ascii_lowercase();
        if lower
            .split([',', ' ', ';'])
            .any(|t| matches!(t.trim(), "oof" | "autoreply" | "all"))
        {
            return Some(format!("X-Auto-Response-Suppress: {}", short(&v)));
        }
    }
    if let Some(v) = f.headers.text("precedence") {
        let p = v.trim().to_ascii_lowercase();
        if p == "auto_reply" || p == "auto-reply" || p == "autoreply" {
            return Some(format!("Precedence: {p}"));
        }
    }
    if f.root_report_type == Some("disposition-notification")
        || f.part_types
            .iter()
            .any(|t| t == "message/disposition-notification")
    {
        return Some("read receipt (message disposition notification)".into());
    }
    let subject = f.subject.to_lowercase().replace('ё', "е");
    if let Some(s) = AUTO_REPLY_SUBJECTS.iter().find(|s| subject.contains(*s)) {
        return Some(format!("out-of-office subject ({s})"));
    }
    if subject.starts_with("auto:") {
        return Some("out-of-office subject (auto:)".into());
    }
    if let Some(s) = f
        .extra_auto_reply_subjects
        .iter()
        .map(|s| s.trim().to_lowercase().replace('ё', "е"))
        .find(|s| !s.is_empty() && subject.contains(s.as_str()))
    {
        return Some(format!("out-of-office subject ({s}, configured)"));
    }
    None
}

/// Bulk or list mail: `List-Id` (RFC 2919), `List-Unsubscribe`/`List-Post`
/// (RFC 2369), `Precedence: bulk | list | junk`.
pub(super) fn mailing_list(f: &Facts<'_>) -> Option<String> {
    if f.trusted_form_sender || own_list(f) {
        return None;
    }
    if let Some(v) = f.headers.text("precedence") {
        let p = v.trim().to_ascii_lowercase();
        if matches!(p.as_str(), "bulk" | "list" | "junk") {
            return Some(format!("Precedence: {p}"));
        }
    }
    for h in ["list-id", "list-unsubscribe", "list-post"] {
        if let Some(v) = f.headers.text(h)
            && !v.trim().is_empty()
        {
            return Some(format!("{}: {}", header_title(h), short(&v)));
        }
    }
    None
}

/// `List-Id: <sales.ourcompany.example>` with an own domain.
fn own_list(f: &Facts<'_>) -> bool {
    let Some(id) = f.headers.text("list-id") else {
        return false;
    };
    let id = match (id.rfind('<'), id.rfind('>')) {
        (Some(a), Some(b)) if a < b => &id[a + 1..b],
        _ => id.as_str(),
    };
    let id = id.trim().trim_end_matches('.').to_lowercase();
    f.own_domains.iter().any(|d| {
        let d = d
            .trim()
            .trim_start_matches('@')
            .trim_end_matches('.')
            .to_lowercase();
        !d.is_empty() && (id == d || id.ends_with(&format!(".{d}")))
    })
}

fn header_title(h: &str) -> &'static str {
    match h {
        "list-id" => "List-Id",
        "list-unsubscribe" => "List-Unsubscribe",
        _ => "List-Post",
    }
}

fn short(v: &str) -> String {
    super::decode::one_line(v, 120)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(headers: &'a Headers, subject: &'a str) -> Facts<'a> {
        Facts {
            headers,
            subject,
            from: Some("ivan@example.ru"),
            part_types: &[],
            root_report_type: None,
            trusted_form_sender: false,
            own_domains: &[],
            extra_auto_reply_subjects: &[],
        }
    }

    fn headers(list: &[(&str, &str)]) -> Headers {
        Headers::from_pairs(list)
    }

    #[test]
    fn auto_submitted_no_is_a_person() {
        let h = headers(&[("Auto-Submitted", "no")]);
        assert_eq!(auto_reply(&facts(&h, "Заявка")), None);
        let h = headers(&[("Auto-Submitted", " No ; comment")]);
        assert_eq!(auto_reply(&facts(&h, "Заявка")), None);
        for v in [
            "auto-replied",
            "auto-generated",
            "auto-notified",
            "Auto-Replied (vacation)",
        ] {
            let h = headers(&[("Auto-Submitted", v)]);
            assert!(auto_reply(&facts(&h, "Заявка")).is_some(), "{v}");
        }
    }

    #[test]
    fn vendor_autoreply_headers_and_subjects() {
        for (k, v) in [
            ("X-Autoreply", "yes"),
            ("X-Autorespond", "1"),
            ("X-Mailru-Autoreply", "true"),
            ("X-Auto-Response-Suppress", "All"),
            ("X-Auto-Response-Suppress", "DR, OOF, AutoReply"),
            ("Precedence", "auto_reply"),
            ("X-Autogenerated", "Reply"),
        ] {
            let h = headers(&[(k, v)]);
            assert!(auto_reply(&facts(&h, "x")).is_some(), "{k}: {v}");
        }
        for (k, v) in [
            ("X-Autoreply", "no"),
            ("X-Auto-Response-Suppress", "DR, RN"),
        ] {
            let h = headers(&[(k, v)]);
            assert_eq!(auto_reply(&facts(&h, "x")), None, "{k}: {v}");
        }
        let h = headers(&[]);
        for s in [
            "Автоответ: Я в отпуске",
            "Out of Office: quote",
            "Automatic reply: Заявка",
            "Я в отпуске",
            "AUTO: Re: price",
        ] {
            assert!(auto_reply(&facts(&h, s)).is_some(), "{s}");
        }
        for s in [
            "Заявка на отпускные путёвки",
            "Office chairs quote",
            "Re: Заказ",
        ] {
            assert_eq!(auto_reply(&facts(&h, s)), None, "{s}");
        }
        let extra = ["Временно не работаю".to_owned()];
        let mut f = facts(&h, "временно не работаю до 1.12");
        f.extra_auto_reply_subjects = &extra;
        assert!(auto_reply(&f).is_some());
    }

    #[test]
    fn lists_and_bounces() {
        let h = headers(&[("Precedence", "bulk")]);
        assert!(mailing_list(&facts(&h, "x")).is_some());
        let h = headers(&[("List-Unsubscribe", "<https://x.example/u>")]);
        let mut f = facts(&h, "x");
        assert!(mailing_list(&f).is_some());
        f.trusted_form_sender = true;
        assert_eq!(mailing_list(&f), None);
        // The organisation's own Google Group relaying a customer.
        let own = ["ourcompany.example".to_owned()];
        let h = headers(&[
            ("List-Id", "<sales.ourcompany.example>"),
            ("Precedence", "list"),
            (
                "List-Unsubscribe",
                "<mailto:googlegroups-manage+1+unsubscribe@googlegroups.com>",
            ),
        ]);
        let mut f = facts(&h, "Заявка");
        assert!(mailing_list(&f).is_some());
        f.own_domains = &own;
        assert_eq!(mailing_list(&f), None);
        let h = headers(&[("List-Id", "Digest <digest.lists.example.com>")]);
        let mut f = facts(&h, "x");
        f.own_domains = &own;
        assert!(mailing_list(&f).is_some());
        let h = headers(&[("Return-Path", "<>")]);
        assert!(bounce(&facts(&h, "Undeliverable: Заявка")).is_some());
        assert_eq!(bounce(&facts(&h, "Заявка")), None);
        let h = headers(&[]);
        let mut f = facts(&h, "x");
        f.from = Some("MAILER-DAEMON@mx.example.net");
        assert!(bounce(&f).is_some());
        let types = [
            "multipart/mixed".to_owned(),
            "message/delivery-status".to_owned(),
        ];
        let mut f = facts(&h, "x");
        f.part_types = &types;
        assert!(bounce(&f).is_some());
    }

    #[test]
    fn robot_senders() {
        for a in [
            "noreply@forms.example.com",
            "no-reply@x.ru",
            "do_not_reply@x.ru",
            "robot@example.ru",
            "robot2@example.ru",
            "notifications@github.example",
            "wordpress@site.ru",
            "NoReply+abc@x.ru",
        ] {
            assert!(is_robot_sender(a), "{a}");
        }
        for a in [
            "ivan@example.ru",
            "info@site.ru",
            "sales@x.ru",
            "roberta@x.ru",
            "formanov@x.ru",
        ] {
            assert!(!is_robot_sender(a), "{a}");
        }
        assert!(is_bounce_sender("MAILER-DAEMON@mx.ourcompany.example"));
        assert!(!is_robot_sender("postmaster@x.ru") || is_bounce_sender("postmaster@x.ru"));
    }
}
