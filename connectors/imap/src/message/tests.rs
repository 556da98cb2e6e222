//! `parse_message` end to end: the shared corpus replayed against its
//! manifest, hand-made messages for the rules the corpus does not cover,
//! and thousands of mutated messages that must never panic.

use std::collections::HashMap;
use std::path::PathBuf;

use chrono::TimeZone;
use leadgate_connector::{Dedupe, Identity};
use serde_json::Value;

use super::*;

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 16, 7, 15, 0).unwrap()
}

fn channel() -> ChannelId {
    ChannelId::from("sales-mailbox")
}

/// The settings the corpus expectations assume.
fn corpus_rules() -> MailRules {
    MailRules {
        own_domains: vec!["ourcompany.example".into()],
        ..MailRules::default()
    }
}

fn parse(raw: &[u8], rules: &MailRules) -> Inbound {
    parse_message(&channel(), raw, at(), rules)
}

fn parse_str(raw: &str) -> Inbound {
    parse(raw.replace('\n', "\r\n").as_bytes(), &corpus_rules())
}

fn corpus_dir() -> PathBuf {
    std::env::var_os("LEADGATE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/corpus"
            ))
        })
}

/// The manifest's e-mail entries, in file order, with their bytes.
fn email_samples() -> Vec<(String, Value, Vec<u8>)> {
    let dir = corpus_dir();
    let manifest = std::fs::read_to_string(dir.join("manifest.json"))
        .unwrap_or_else(|e| panic!("corpus manifest in {}: {e}", dir.display()));
    let entries: Vec<Value> = serde_json::from_str(&manifest).expect("manifest is JSON");
    let mut samples: Vec<(String, Value, Vec<u8>)> = entries
        .into_iter()
        .filter(|e| e["channel"] == "email")
        .map(|e| {
            let file = e["file"].as_str().expect("file").to_owned();
            let raw = std::fs::read(dir.join(&file)).unwrap_or_else(|err| panic!("{file}: {err}"));
            (file, e["expect"].clone(), raw)
        })
        .collect();
    samples.sort_by(|a, b| a.0.cmp(&b.0));
    samples
}

/// A tiny stand-in for the pipeline's phone normalizer, enough to compare
/// this crate's raw numbers with the manifest's E.164.
fn e164(raw: &str) -> String {
    let lower = raw.to_lowercase();
    let cut = ["доб", "ext", "#", ","]
        .iter()
        .filter_map(|m| lower.find(m))
        .min()
        .unwrap_or(lower.len());
    let number = lower[..cut].trim();
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    if number.starts_with('+') {
        format!("+{digits}")
    } else if digits.len() == 11 && (digits.starts_with('8') || digits.starts_with('7')) {
        format!("+7{}", &digits[1..])
    } else if digits.len() == 10 && digits.starts_with('9') {
        format!("+7{digits}")
    } else {
        digits
    }
}

fn ids(inbound: &Inbound, kind: IdentityKind) -> Vec<String> {
    inbound
        .sender
        .identities
        .iter()
        .filter(|i| i.kind == kind)
        .map(|i| i.value.clone())
        .collect()
}

fn flag_name(f: &Flag) -> &'static str {
    match f {
        Flag::Spam(_) => "spam",
        Flag::AutoReply(_) => "auto_reply",
        Flag::Bounce(_) => "bounce",
        Flag::MailingList(_) => "mailing_list",
        Flag::Internal(_) => "internal_sender",
        Flag::Outgoing(_) => "outgoing",
        Flag::Invalid(_) => "invalid",
        Flag::NotLead(_) => "not_lead",
    }
}

/// What the sample's manifest entry says this level must show; one line
/// per mismatch.
fn check_sample(
    file: &str,
    expect: &Value,
    inbound: &Inbound,
    seen: &HashMap<String, Inbound>,
) -> Vec<String> {
    let mut errors = Vec::new();
    let mut fail = |what: String| errors.push(format!("{file}: {what}"));
    let first_flag = inbound.flags.first().map(flag_name);
    let lead = expect["lead"].as_bool().unwrap_or(false);
    let disposition = expect["disposition"].as_str();
    match (lead, disposition) {
        (true, _) | (false, Some("activity_added")) => {
            if !inbound.flags.is_empty() {
                fail(format!(
                    "expected no flag (a lead or a reply), got {:?}",
                    inbound.flags
                ));
            }
        }
        (false, Some(d)) => {
            let want = match d {
                "invalid" | "invalid_or_no_contact" => "invalid",
                other => other,
            };
            if first_flag != Some(want) {
                fail(format!(
                    "expected disposition {d} (flag {want} first), got flags {:?}",
                    inbound.flags
                ));
            }
        }
        (false, None) => fail("manifest: not a lead but no disposition".into()),
    }
    if let Some(name) = expect["name"].as_str()
        && inbound.sender.name.as_deref() != Some(name)
    {
        fail(format!(
            "name: expected {name:?}, got {:?}",
            inbound.sender.name
        ));
    }
    if let Some(email) = expect["email"].as_str() {
        let got: Vec<String> = ids(inbound, IdentityKind::Email)
            .iter()
            .map(|e| e.to_lowercase())
            .collect();
        if got.first().map(String::as_str) != Some(email) {
            fail(format!("email: expected {email:?} first, got {got:?}"));
        }
    }
    let phones: Vec<String> = ids(inbound, IdentityKind::Phone)
        .iter()
        .map(|p| e164(p))
        .collect();
    if let Some(phone) = expect["phone"].as_str()
        && phones.first().map(String::as_str) != Some(phone)
    {
        fail(format!(
            "phone: expected {phone:?} first, got {phones:?} (raw {:?})",
            ids(inbound, IdentityKind::Phone)
        ));
    }
    if let Some(want) = expect["phones"].as_array() {
        let want: Vec<&str> = want.iter().filter_map(Value::as_str).collect();
        if phones != want {
            fail(format!("phones: expected {want:?}, got {phones:?}"));
        }
    }
    if let Some(subject) = expect["subject"].as_str()
        && inbound.subject.as_deref() != Some(subject)
    {
        fail(format!(
            "subject: expected {subject:?}, got {:?}",
            inbound.subject
        ));
    }
    for key in [
        "product",
        "region",
        "utm_source",
        "utm_medium",
        "utm_campaign",
    ] {
        if let Some(v) = expect[key].as_str()
            && inbound.field(key) != Some(v)
        {
            fail(format!(
                "fields[{key}]: expected {v:?}, got {:?}",
                inbound.field(key)
            ));
        }
    }
    if let Some(want) = expect["attachments"].as_array() {
        let want: Vec<(Option<&str>, Option<&str>)> = want
            .iter()
            .map(|a| (a["name"].as_str(), a["type"].as_str()))
            .collect();
        let got: Vec<(Option<&str>, Option<&str>)> = inbound
            .attachments
            .iter()
            .map(|a| (a.name.as_deref(), a.content_type.as_deref()))
            .collect();
        if got != want {
            fail(format!("attachments: expected {want:?}, got {got:?}"));
        }
        if inbound.attachments.iter().any(|a| a.size == 0) {
            fail(format!(
                "attachments: a size is 0: {:?}",
                inbound.attachments
            ));
        }
    }
    if let Some(parent) = expect["thread_of"].as_str() {
        match seen.get(parent) {
            Some(p) if inbound.thread_refs.contains(&p.source_ref) => {}
            Some(p) => fail(format!(
                "thread_refs {:?} miss {parent}'s source_ref {:?}",
                inbound.thread_refs, p.source_ref
            )),
            None => fail(format!("thread_of {parent} was not replayed before")),
        }
    }
    // Every sample, whatever it is.
    if inbound.source_ref.is_empty() || inbound.raw.contains('\0') {
        fail("empty source_ref or NUL in raw".into());
    }
    for s in [
        &inbound.text,
        &inbound.html,
        &inbound.subject,
        &inbound.sender.name,
    ]
    .into_iter()
    .flatten()
    {
        if s.contains('\0') {
            fail(format!("NUL in {s:?}"));
        }
    }
    errors
}

#[test]
fn corpus_email_samples_meet_the_manifest() {
    let samples = email_samples();
    assert!(
        samples.len() >= 31,
        "expected the e-mail corpus, found {} samples",
        samples.len()
    );
    let rules = corpus_rules();
    let mut seen: HashMap<String, Inbound> = HashMap::new();
    let mut errors = Vec::new();
    for (file, expect, raw) in &samples {
        let inbound = parse(raw, &rules);
        println!(
            "{file}: flags={:?} name={:?} ids={:?} fields={:?} refs={:?}",
            inbound.flags.iter().map(flag_name).collect::<Vec<_>>(),
            inbound.sender.name,
            inbound
                .sender
                .identities
                .iter()
                .map(|i| &i.value)
                .collect::<Vec<_>>(),
            inbound.fields,
            inbound.thread_refs
        );
        errors.extend(check_sample(file, expect, &inbound, &seen));
        seen.insert(file.clone(), inbound);
    }
    assert!(
        errors.is_empty(),
        "{} mismatch(es):\n{}",
        errors.len(),
        errors.join("\n")
    );
}

#[test]
fn corpus_specific_readings() {
    let samples = email_samples();
    let get = |prefix: &str| {
        let (_, _, raw) = samples
            .iter()
            .find(|(f, _, _)| f.contains(prefix))
            .unwrap_or_else(|| panic!("sample {prefix}"));
        parse(raw, &corpus_rules())
    };
    let s001 = get("001_");
    assert_eq!(s001.source_ref, "msgid:lead-001@example.ru");
    assert_eq!(s001.dedupe, Dedupe::SourceRef);
    assert_eq!(s001.received_at, at());
    assert_eq!(s001.subject.as_deref(), Some("Запрос цены на станок ЧПУ"));
    assert!(
        s001.text
            .as_deref()
            .unwrap()
            .contains("тел. 8 (999) 123-45-67")
    );
    assert_eq!(get("010_").thread_refs, vec!["msgid:lead-001@example.ru"]);

    let html = get("007_");
    assert!(html.text.is_none(), "empty text/plain is not the text");
    assert!(html.html.as_deref().unwrap().contains("тарифу Бизнес"));

    let form = get("016_");
    assert_eq!(form.field("comment"), Some("Перезвоните после 15:00"));
    assert!(
        !ids(&form, IdentityKind::Email)
            .iter()
            .any(|e| e.contains("noreply"))
    );

    let missing = get("018_");
    assert!(missing.source_ref.starts_with("hash:"));
    assert_eq!(
        missing.source_ref,
        get("018_").source_ref,
        "stable across re-reads"
    );

    let cp1251 = get("021_");
    assert_eq!(
        cp1251.text.as_deref(),
        Some("Добрый день, нужен счёт на 10 коробок. Василий 89997778899")
    );
    let koi = get("005_");
    assert_eq!(
        koi.text.as_deref(),
        Some("Хочу заказать оборудование. Телефон +7 (999) 567-89-01")
    );
    let wrong = get("028_");
    assert_eq!(wrong.sender.name.as_deref(), Some("Борис"));
    assert_eq!(wrong.subject.as_deref(), Some("Заказ"));
    assert_eq!(wrong.text.as_deref(), Some("Нужен счёт, 89990001122"));

    let nul = get("023_");
    assert_eq!(nul.subject.as_deref(), Some("Hello World"));
    assert!(!nul.text.as_deref().unwrap().contains('\0'));

    let long = get("024_");
    assert!(long.text.as_deref().unwrap().len() <= MAX_TEXT);
    assert!(long.raw.len() <= MAX_RAW);

    let truncated = get("022_");
    assert_eq!(
        truncated.text.as_deref(),
        Some("Нужна консультация, 89998889900")
    );
    assert_eq!(truncated.attachments.len(), 1);

    let fwd = get("029_");
    assert_eq!(
        fwd.field("forwarded_by"),
        Some("reception@ourcompany.example")
    );

    let not_mail = get("031_");
    assert!(not_mail.source_ref.starts_with("hash:"));
    assert!(not_mail.raw.starts_with("this is not an email at all"));
    assert!(!not_mail.raw.contains('\0'));
}

#[test]
fn auto_submitted_no_is_a_person_end_to_end() {
    let human = parse_str(
        "From: Кирилл <k@example.ru>\nTo: sales@ourcompany.example\nSubject: Заявка\n\
         Message-ID: <h@example.ru>\nAuto-Submitted: no\n\nНужна бумага. 89991112233\n",
    );
    assert!(human.flags.is_empty(), "{:?}", human.flags);
    let robot = parse_str(
        "From: Кирилл <k@example.ru>\nSubject: Заявка\nAuto-Submitted: auto-generated\n\nx\n",
    );
    assert!(matches!(robot.flags.first(), Some(Flag::AutoReply(_))));
}

#[test]
fn source_ref_and_thread_refs() {
    let a = parse_str("From: a@x.ru\nMessage-ID:   < id-1@x.ru >  \nSubject: s\n\nbody\n");
    assert_eq!(a.source_ref, "msgid:id-1@x.ru");
    let b = parse_str(
        "From: a@x.ru\nMessage-ID: <id-3@x.ru>\nIn-Reply-To: <id-2@x.ru>\n\
         References: <id-1@x.ru>\n <id-2@x.ru>\nSubject: Re: s\n\nok\n",
    );
    assert_eq!(b.thread_refs, vec!["msgid:id-2@x.ru", "msgid:id-1@x.ru"]);
    let no_id = "From: a@x.ru\nSubject: s\n\nbody\n";
    let c1 = parse_str(no_id);
    let c2 = parse_str(no_id);
    let c3 = parse_str("From: a@x.ru\nSubject: s\n\nbody 2\n");
    assert!(c1.source_ref.starts_with("hash:"));
    assert_eq!(c1.source_ref, c2.source_ref);
    assert_ne!(c1.source_ref, c3.source_ref);
    let empty_id = parse_str("From: a@x.ru\nMessage-ID: <>\n\nbody\n");
    assert!(empty_id.source_ref.starts_with("hash:"));
    let long_refs: String = (0..500).map(|i| format!(" <r{i}@x>")).collect();
    let d = parse_str(&format!("From: a@x.ru\nReferences:{long_refs}\n\nx\n"));
    assert_eq!(d.thread_refs.len(), MAX_THREAD_REFS);
    assert_eq!(d.thread_refs[0], "msgid:r0@x");
    assert_eq!(d.thread_refs.last().unwrap(), "msgid:r499@x");
}

#[test]
fn legacy_charsets_in_headers_and_bodies() {
    let mut raw =
        b"From: =?windows-1251?B?yOLg7SDP5fLw7uI=?= <ivan@example.ru>\r\nSubject: ".to_vec();
    raw.extend_from_slice(&[0xC7, 0xE0, 0xEA, 0xE0, 0xE7]); // raw 8-bit "Заказ"
    raw.extend_from_slice(b"\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n");
    raw.extend_from_slice(b"=CD=F3=E6=E5=ED =F1=F7=B8=F2, =F2=E5=EB. 8 999 123-45-67\r\n");
    let inbound = parse(&raw, &corpus_rules());
    assert_eq!(inbound.sender.name.as_deref(), Some("Иван Петров"));
    assert_eq!(inbound.subject.as_deref(), Some("Заказ"));
    assert_eq!(
        inbound.text.as_deref(),
        Some("Нужен счёт, тел. 8 999 123-45-67")
    );
    assert_eq!(ids(&inbound, IdentityKind::Phone), vec!["8 999 123-45-67"]);
}

#[test]
fn html_only_form_with_a_table() {
    let html = "<html><body><h3>Заявка с сайта</h3><table>\
        <tr><td><b>Имя:</b></td><td>Анна Кузьмина</td></tr>\
        <tr><td>Телефон:</td><td>+7&nbsp;(999)&nbsp;765-43-21</td></tr>\
        <tr><td>Email:</td><td><a href=\"mailto:anna@example.org\">anna@example.org</a></td></tr>\
        <tr><td>Город</td><td>Казань</td></tr></table></body></html>";
    let raw = format!(
        "From: Tilda <robot@tilda.ws>\nTo: sales@ourcompany.example\nSubject: Lead\nMessage-ID: <t@tilda.ws>\n\
         Content-Type: text/html; charset=utf-8\n\n{html}\n"
    );
    let inbound = parse_str(&raw);
    assert!(inbound.flags.is_empty(), "{:?}", inbound.flags);
    assert_eq!(inbound.sender.name.as_deref(), Some("Анна Кузьмина"));
    assert_eq!(ids(&inbound, IdentityKind::Email), vec!["anna@example.org"]);
    assert_eq!(
        ids(&inbound, IdentityKind::Phone),
        vec!["+7 (999) 765-43-21"]
    );
    assert_eq!(inbound.field("region"), Some("Казань"));
    assert!(inbound.text.is_none());
    assert!(inbound.html.as_deref().unwrap().contains("<table>"));
}

#[test]
fn own_domain_form_robot_versus_colleague() {
    let form = parse_str(
        "From: Site <noreply@ourcompany.example>\nSubject: Заявка\n\n\
         Имя: Олег\nТелефон: 8 999 555 44 33\n",
    );
    assert!(
        form.flags.is_empty(),
        "the site's own form robot: {:?}",
        form.flags
    );
    assert_eq!(form.sender.name.as_deref(), Some("Олег"));
    assert!(
        ids(&form, IdentityKind::Email).is_empty(),
        "the robot's address is not the customer's"
    );
    let system = parse_str("From: noreply@ourcompany.example\nSubject: Backup done\n\nOK\n");
    assert!(
        matches!(system.flags.first(), Some(Flag::Internal(_))),
        "{:?}",
        system.flags
    );
    let colleague = parse_str(
        "From: Петрова <petrova@ourcompany.example>\nSubject: клиент\n\n\
         Имя: Олег\nТелефон: 8 999 555 44 33\n",
    );
    assert!(matches!(colleague.flags.first(), Some(Flag::Internal(_))));
    let mut rules = corpus_rules();
    rules.form_senders = vec!["petrova@OurCompany.example".into()];
    let listed = parse(
        b"From: Petrova <petrova@ourcompany.example>\r\nSubject: x\r\n\r\nName: Oleg\r\nPhone: +7 999 555 44 33\r\n",
        &rules,
    );
    assert!(listed.flags.is_empty(), "{:?}", listed.flags);
    assert_eq!(listed.sender.name.as_deref(), Some("Oleg"));
}

#[test]
fn own_domain_callback_robot_and_site_named_senders() {
    let callback = parse_str(
        "From: robot@ourcompany.example\nSubject: Обратный звонок\n\nКлиент заказал звонок на номер 8 999 321-00-11\n",
    );
    assert!(callback.flags.is_empty(), "{:?}", callback.flags);
    assert_eq!(ids(&callback, IdentityKind::Phone), vec!["8 999 321-00-11"]);
    assert!(ids(&callback, IdentityKind::Email).is_empty());
    let site = parse_str(
        "From: Сайт Ромашка <info@romashka.example>\nSubject: Заявка\n\n\
         Имя: Ольга\nE-mail: olga@example.com\nТелефон: +7 999 100-20-30\n",
    );
    assert!(site.flags.is_empty(), "{:?}", site.flags);
    assert_eq!(site.sender.name.as_deref(), Some("Ольга"));
    assert_eq!(ids(&site, IdentityKind::Email), vec!["olga@example.com"]);
}

#[test]
fn cms_notifications() {
    // 1C-Bitrix's feedback form, sent from the site's ordinary address.
    let bitrix = parse_str(
        "From: info@romashka.example\nSubject: Ромашка: Сообщение из формы обратной связи\n\n\
         Информационное сообщение сайта Ромашка\n------------------------------------------\n\n\
         Вам было отправлено сообщение через форму обратной связи\n\nАвтор: Иван Петров\n\
         E-mail автора: ivan@example.com\n\nТекст сообщения:\nИнтересует доставка, тел 8 916 123-45-67\n\n\
         Сообщение сгенерировано автоматически.\n",
    );
    assert!(bitrix.flags.is_empty(), "{:?}", bitrix.flags);
    assert_eq!(bitrix.sender.name.as_deref(), Some("Иван Петров"));
    assert_eq!(ids(&bitrix, IdentityKind::Email), vec!["ivan@example.com"]);
    assert_eq!(ids(&bitrix, IdentityKind::Phone), vec!["8 916 123-45-67"]);
    assert_eq!(
        bitrix.field("comment"),
        Some("Интересует доставка, тел 8 916 123-45-67")
    );
    // WordPress Contact Form 7's default template.
    let cf7 = parse_str(
        "From: WordPress <wordpress@romashka.example>\nReply-To: olga@example.org\nSubject: Сайт \"Ромашка\" \"Вопрос\"\n\n\
         От: Ольга Смирнова <olga@example.org>\nТема: Вопрос\n\nСообщение:\nПерезвоните: +7 (999) 888-77-66\n\n\
         -- \nЭто сообщение отправлено с сайта Ромашка\n",
    );
    assert!(cf7.flags.is_empty(), "{:?}", cf7.flags);
    assert_eq!(cf7.sender.name.as_deref(), Some("Ольга Смирнова"));
    assert_eq!(ids(&cf7, IdentityKind::Email), vec!["olga@example.org"]);
    assert_eq!(ids(&cf7, IdentityKind::Phone), vec!["+7 (999) 888-77-66"]);
}

#[test]
fn own_google_group_relays_customers() {
    let inbound = parse_str(
        "From: Ivan <ivan@example.ru>\nTo: sales@ourcompany.example\nList-Id: <sales.ourcompany.example>\n\
         Precedence: list\nList-Unsubscribe: <mailto:googlegroups-manage+1+unsubscribe@googlegroups.com>\n\
         Subject: Заявка\n\nНужен станок, 89991234567\n",
    );
    assert!(inbound.flags.is_empty(), "{:?}", inbound.flags);
}

#[test]
fn html_reply_quotes_are_not_the_customer_phone() {
    let inbound = parse_str(
        "From: Ivan <ivan@example.ru>\nSubject: Re: КП\nContent-Type: text/html; charset=utf-8\n\n\
         <div>Подходит, звоните 8 999 222-11-00</div><blockquote type=\"cite\"><div>Высылаю КП.<br>\
         Петрова, тел. 8 (495) 000-11-22</div></blockquote>\n",
    );
    assert_eq!(ids(&inbound, IdentityKind::Phone), vec!["8 999 222-11-00"]);
}

#[test]
fn listed_form_sender_with_service_headers() {
    let mut rules = corpus_rules();
    rules.form_senders = vec!["@forms.example.net".into()];
    rules.form_labels.product = vec!["Что купить".into()];
    rules.form_labels.name = vec!["Как к вам обращаться".into()];
    let raw = "From: Forms <leads@mx.forms.example.net>\r\nReply-To: <buyer@example.com>\r\n\
        List-Unsubscribe: <https://forms.example.net/u>\r\nSubject: New lead\r\n\r\n\
        Как к вам обращаться: Пётр\r\nЧто купить: X200\r\nТелефон: 8 (912) 345-67-89\r\n"
        .as_bytes();
    let inbound = parse(raw, &rules);
    assert!(inbound.flags.is_empty(), "{:?}", inbound.flags);
    assert_eq!(inbound.sender.name.as_deref(), Some("Пётр"));
    assert_eq!(inbound.field("product"), Some("X200"));
    assert_eq!(
        ids(&inbound, IdentityKind::Email),
        vec!["buyer@example.com"]
    );
    assert_eq!(
        ids(&inbound, IdentityKind::Phone),
        vec!["8 (912) 345-67-89"]
    );
    // Not listed: the same headers from anyone else are list mail.
    let other = parse(raw, &corpus_rules());
    assert!(
        other
            .flags
            .iter()
            .any(|f| matches!(f, Flag::MailingList(_)))
    );
}

#[test]
fn a_person_with_a_different_reply_to_stays_the_sender() {
    let inbound = parse_str(
        "From: Ivan <ivan@work.example>\nReply-To: ivan.home@example.com\nSubject: quote\n\nCall me 89991234567\n",
    );
    assert_eq!(inbound.sender.name.as_deref(), Some("Ivan"));
    assert_eq!(
        ids(&inbound, IdentityKind::Email),
        vec!["ivan@work.example"]
    );
    assert_eq!(inbound.field("reply_to"), Some("ivan.home@example.com"));
}

#[test]
fn quoted_salesperson_signature_is_not_the_customer_phone() {
    let inbound = parse_str(
        "From: Ivan <ivan@example.ru>\nSubject: Re: КП\nIn-Reply-To: <kp-1@ourcompany.example>\n\n\
         Спасибо, мой мобильный 8 999 111-22-33\n\n\
         16.11.2026 10:15, Менеджер Петрова пишет:\n> Высылаю КП.\n> Петрова, тел. 8 (495) 000-11-22\n",
    );
    assert_eq!(ids(&inbound, IdentityKind::Phone), vec!["8 999 111-22-33"]);
    assert_eq!(inbound.thread_refs, vec!["msgid:kp-1@ourcompany.example"]);
    let signature = parse_str(
        "From: Ivan <ivan@example.ru>\nSubject: Re: КП\n\nСогласны.\nГород: Казань\nТел.: 8 999 111-22-33\n\n\
         > Петрова\n> Тел.: 8 (495) 000-11-22\n> E-mail: petrova@ourcompany.example\n> Товар: X200\n",
    );
    assert_eq!(
        ids(&signature, IdentityKind::Email),
        vec!["ivan@example.ru"]
    );
    assert_eq!(
        ids(&signature, IdentityKind::Phone),
        vec!["8 999 111-22-33"]
    );
    assert_eq!(signature.field("region"), Some("Казань"));
    assert_eq!(signature.field("product"), None);
}

#[test]
fn forwarded_as_attachment_by_a_colleague() {
    let raw = "From: Reception <reception@ourcompany.example>\nSubject: Fwd: заявка\nMessage-ID: <f@ourcompany.example>\n\
        MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b\"\n\n--b\nContent-Type: text/plain; charset=utf-8\n\n\
        Передаю клиента.\n--b\nContent-Type: message/rfc822\n\n\
        From: =?utf-8?B?0JjQstCw0L0g0JjQstCw0L3QvtCy?= <ivanov@example.com>\nSubject: Заявка\nContent-Type: text/plain; charset=utf-8\n\n\
        Нужен монтаж. Тел. +7 912 000-11-22\n--b--\n";
    let inbound = parse_str(raw);
    assert!(inbound.flags.is_empty(), "{:?}", inbound.flags);
    assert_eq!(inbound.sender.name.as_deref(), Some("Иван Иванов"));
    assert_eq!(
        ids(&inbound, IdentityKind::Email),
        vec!["ivanov@example.com"]
    );
    assert_eq!(ids(&inbound, IdentityKind::Phone), vec!["+7 912 000-11-22"]);
    assert_eq!(
        inbound.field("forwarded_by"),
        Some("reception@ourcompany.example")
    );
    let text = inbound.text.unwrap();
    assert!(text.starts_with("Передаю клиента."), "{text}");
    assert!(text.contains("Нужен монтаж."), "{text}");
}

#[test]
fn bounces_lists_and_read_receipts() {
    let dsn = parse_str(
        "From: postmaster@mx.example.net\nReturn-Path: <>\nSubject: Undeliverable: Заявка\n\nfailed\n",
    );
    assert!(matches!(dsn.flags.first(), Some(Flag::Bounce(_))));
    let mdn = parse_str(
        "From: Ivan <ivan@example.ru>\nSubject: Read: КП\nMIME-Version: 1.0\n\
         Content-Type: multipart/report; report-type=disposition-notification; boundary=\"r\"\n\n\
         --r\nContent-Type: text/plain\n\nread\n--r\nContent-Type: message/disposition-notification\n\n\
         Final-Recipient: rfc822; ivan@example.ru\nDisposition: manual-action/MDN-sent-manually; displayed\n--r--\n",
    );
    assert!(
        matches!(mdn.flags.first(), Some(Flag::AutoReply(_))),
        "{:?}",
        mdn.flags
    );
    let list =
        parse_str("From: news@example.com\nList-Id: <news.example.com>\nSubject: news\n\nhi\n");
    assert!(matches!(list.flags.first(), Some(Flag::MailingList(_))));
    let ooo = parse_str("From: Olga <olga@example.ru>\nSubject: Out of Office: КП\n\naway\n");
    assert!(matches!(ooo.flags.first(), Some(Flag::AutoReply(_))));
}

#[test]
fn not_mail_is_invalid_and_kept() {
    for raw in [
        &b""[..],
        b"\r\n\r\n",
        b"\x00\x01\x02\xff\xfe binary",
        b"just some words\r\nand more\r\n",
        b"Hello: world\r\n\r\nnot really mail\r\n",
    ] {
        let inbound = parse(raw, &corpus_rules());
        assert!(
            matches!(inbound.flags.as_slice(), [Flag::Invalid(_)]),
            "{raw:?}: {:?}",
            inbound.flags
        );
        assert!(inbound.source_ref.starts_with("hash:"));
        assert!(!inbound.raw.contains('\0'));
    }
}

#[test]
fn sizes_are_capped() {
    let body = "Позвоните 89991234567. ".repeat(20_000);
    let inbound = parse_str(&format!(
        "From: a@example.ru\nSubject: {}\nContent-Type: text/plain; charset=utf-8\n\n{body}\n",
        "тема ".repeat(1000)
    ));
    assert!(inbound.text.as_ref().unwrap().len() <= MAX_TEXT);
    assert!(inbound.subject.as_ref().unwrap().len() <= MAX_SUBJECT);
    assert!(inbound.raw.len() <= MAX_RAW);
    assert_eq!(ids(&inbound, IdentityKind::Phone).len(), 1);
}

#[test]
fn rules_deserialize_with_defaults_and_reject_typos() {
    let rules: MailRules = serde_json::from_str(
        r#"{"own_domains": ["ourcompany.example"], "form_labels": {"phone": ["Мобила"]}}"#,
    )
    .unwrap();
    assert_eq!(rules.own_domains, vec!["ourcompany.example"]);
    assert_eq!(rules.form_labels.phone, vec!["Мобила"]);
    assert!(rules.form_senders.is_empty() && rules.auto_reply_subjects.is_empty());
    assert_eq!(
        serde_json::from_str::<MailRules>("{}").unwrap(),
        MailRules::default()
    );
    assert!(serde_json::from_str::<MailRules>(r#"{"own_domain": []}"#).is_err());
    assert!(serde_json::from_str::<MailRules>(r#"{"form_labels": {"phones": []}}"#).is_err());
    assert!(rules.is_own("a@OurCompany.Example"));
    assert!(rules.is_own("MAILER-DAEMON@mx.ourcompany.example"));
    assert!(!rules.is_own("a@notourcompany.example"));
}

/// xorshift64*: deterministic mutations without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, raw: &[u8], other: &[u8]) -> Vec<u8> {
    let mut m = raw.to_vec();
    let header_end = m
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(m.len());
    for _ in 0..=rng.below(3) {
        match rng.below(9) {
            0 => {
                for _ in 0..=rng.below(10) {
                    let i = rng.below(m.len());
                    if let Some(b) = m.get_mut(i) {
                        *b ^= 1 << rng.below(8);
                    }
                }
            }
            1 => {
                let cut = rng.below(m.len() + 1);
                m.truncate(cut);
            }
            2 => {
                // Duplicate a header line many times.
                let head = &m[..header_end.min(m.len())];
                let lines: Vec<&[u8]> = head.split(|&b| b == b'\n').collect();
                let line = lines[rng.below(lines.len())].to_vec();
                let times = 1 + rng.below(50);
                let mut insert = Vec::new();
                for _ in 0..times {
                    insert.extend_from_slice(&line);
                    insert.push(b'\n');
                }
                let at = rng.below(header_end.min(m.len()) + 1);
                m.splice(at..at, insert);
            }
            3 => {
                let i = rng.below(m.len() + 1);
                let special = [
                    0u8, 0xFF, b'\r', b'\n', b'=', b'?', b'<', b'>', b':', b'"', b'-', 0xD0,
                ];
                for _ in 0..=rng.below(8) {
                    m.insert(i.min(m.len()), special[rng.below(special.len())]);
                }
            }
            4 => {
                let a = rng.below(m.len() + 1);
                let b = (a + rng.below(200)).min(m.len());
                m.drain(a..b);
            }
            5 => {
                // Splice a piece of another message in.
                let a = rng.below(other.len() + 1);
                let b = (a + rng.below(2000)).min(other.len());
                let at = rng.below(m.len() + 1);
                m.splice(at..at, other[a..b].iter().copied());
            }
            6 => {
                let i = rng.below(m.len());
                if let Some(b) = m.get_mut(i) {
                    *b = [0u8, 0x80, 0xFF, b'\n'][rng.below(4)];
                }
            }
            7 => {
                // A second copy of the whole header block.
                let head = m[..header_end.min(m.len())].to_vec();
                m.splice(0..0, head);
            }
            _ => {
                // Boundaries and encodings turned hostile.
                let text = String::from_utf8_lossy(&m).into_owned();
                let swapped = match rng.below(4) {
                    0 => text.replacen("boundary=", "boundary=\"\"", 1),
                    1 => text.replacen("base64", "quoted-printable", 1),
                    2 => text.replacen("charset=", "charset=x-nonsense-", 1),
                    _ => text.replacen("text/plain", "message/rfc822", 1),
                };
                m = swapped.into_bytes();
            }
        }
    }
    m
}

fn assert_well_formed(inbound: &Inbound, what: &str) {
    assert!(
        inbound.source_ref.starts_with("msgid:") || inbound.source_ref.starts_with("hash:"),
        "{what}: source_ref {:?}",
        inbound.source_ref
    );
    assert_eq!(inbound.channel, channel(), "{what}");
    assert_eq!(inbound.received_at, at(), "{what}");
    assert!(
        inbound.raw.len() <= MAX_RAW && !inbound.raw.contains('\0'),
        "{what}: raw"
    );
    assert!(
        inbound
            .text
            .as_ref()
            .is_none_or(|t| t.len() <= MAX_TEXT && !t.contains('\0')),
        "{what}: text"
    );
    assert!(
        inbound
            .html
            .as_ref()
            .is_none_or(|t| t.len() <= MAX_HTML && !t.contains('\0')),
        "{what}: html"
    );
    assert!(
        inbound
            .subject
            .as_ref()
            .is_none_or(|t| t.len() <= MAX_SUBJECT && !t.contains('\0')),
        "{what}: subject"
    );
    assert!(
        inbound
            .sender
            .name
            .as_ref()
            .is_none_or(|t| t.len() <= MAX_NAME && !t.contains('\0'))
    );
    assert!(
        inbound
            .sender
            .identities
            .iter()
            .all(|Identity { value, .. }| !value.contains('\0'))
    );
    assert!(
        inbound.fields.values().all(|v| !v.contains('\0')),
        "{what}: fields"
    );
    assert!(
        inbound.attachments.len() <= MAX_ATTACHMENTS,
        "{what}: attachments"
    );
    assert!(
        inbound.thread_refs.len() <= MAX_THREAD_REFS,
        "{what}: thread_refs"
    );
    assert!(
        !inbound.flags.iter().any(
            |f| matches!(f, Flag::Invalid(r) if r.starts_with("the message could not be parsed"))
        ),
        "{what}: the parser panicked: {:?}",
        inbound.flags
    );
}

#[test]
fn thousands_of_mutated_messages_never_panic() {
    let samples = email_samples();
    let rules = MailRules {
        form_senders: vec!["@forms.example.com".into()],
        ..corpus_rules()
    };
    let seed = std::env::var("LEADGATE_MUTATION_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    let mut rng = Rng(seed | 1);
    let mut count = 0;
    for (n, (file, _, raw)) in samples.iter().enumerate() {
        let other = &samples[(n + 7) % samples.len()].2;
        // The 270 KB sample gets fewer rounds: it only repeats itself.
        // LEADGATE_MUTATION_ROUNDS runs a longer campaign.
        let base: usize = std::env::var("LEADGATE_MUTATION_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(110);
        let rounds = if raw.len() > 100_000 { base / 5 } else { base };
        for round in 0..rounds {
            let mutated = mutate(&mut rng, raw, other);
            let what = format!("{file} mutation {round}");
            let inbound = parse(&mutated, &rules);
            assert_well_formed(&inbound, &what);
            if round % 10 == 0 {
                assert_eq!(
                    inbound,
                    parse(&mutated, &rules),
                    "{what}: not deterministic"
                );
            }
            count += 1;
        }
    }
    assert!(count >= 3000, "only {count} mutations");
}

/// Any folder of `.eml` files (`LEADGATE_EXTRA_MAIL=/path`), for example
/// mail-parser's own `resources/eml` corpus: every file must read without a
/// panic and with well-formed output. Prints a one-line summary per file.
#[test]
#[ignore = "needs LEADGATE_EXTRA_MAIL"]
fn extra_mail_folder_reads_cleanly() {
    let Some(dir) = std::env::var_os("LEADGATE_EXTRA_MAIL") else {
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("LEADGATE_EXTRA_MAIL is a folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let rules = corpus_rules();
    for path in files {
        let raw = std::fs::read(&path).expect("readable");
        let inbound = parse(&raw, &rules);
        let what = path.display().to_string();
        assert_well_formed(&inbound, &what);
        println!(
            "{what}: flags={:?} name={:?} ids={:?} subject={:?} text={:?}",
            inbound.flags.iter().map(flag_name).collect::<Vec<_>>(),
            inbound.sender.name,
            inbound
                .sender
                .identities
                .iter()
                .map(|i| &i.value)
                .collect::<Vec<_>>(),
            inbound.subject,
            inbound
                .text
                .as_deref()
                .map(|t| t.chars().take(60).collect::<String>()),
        );
    }
}
