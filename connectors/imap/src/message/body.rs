//! Reading a body's text: "Label: value" lines of site-form notifications,
//! the header block of a message forwarded inline, quoted replies, and
//! addresses.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use leadgate_connector::fields;
use regex::Regex;

use super::FormLabels;
use super::decode::one_line;
use leadgate_connector::phones::find_phones;

/// Longest value kept from one labelled line.
const MAX_FIELD_VALUE: usize = 4 * 1024;
/// At most this many fields are taken from one form.
const MAX_FIELDS: usize = 48;

/// An e-mail address in free text.
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[\p{L}\p{N}._%+\-']+@[\p{L}\p{N}\-]+(?:\.[\p{L}\p{N}\-]+)*\.\p{L}{2,}")
        .expect("static regex")
});

/// The line that starts a message forwarded inline, in the wordings of
/// Gmail, Outlook, Thunderbird, Apple Mail, Yandex and Mail.ru.
static FORWARD_MARKER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^[\s>]*-*\s*(?:forwarded message|original message|пересылаемое сообщение|пересланное сообщение|переадресованное сообщение|исходное сообщение|begin forwarded message|начало переадресованного сообщения|weitergeleitete nachricht|message transféré)\b",
    )
    .expect("static regex")
});

/// `From:` of a forwarded or quoted header block.
static FROM_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^[\s>*]*(?:from|от кого|от|von|de)\s*\**\s*:\s*\**\s*(.+)$")
        .expect("static regex")
});

/// The other lines of such a block (`Sent:`, `Дата:`, `Тема:` …).
static HEADER_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^[\s>*]*(?:sent|date|to|cc|subject|отправлено|дата|кому|копия|тема)\s*\**\s*:")
        .expect("static regex")
});

/// A reply's attribution line: everything after it is quoted.
static ATTRIBUTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(?:^\s*on\s.{0,200}\swrote:\s*$|\s(?:пишет|написал|написала|написал\(а\))\s*:\s*$|@[^\s<>]+>\s*:\s*$)",
    )
    .expect("static regex")
});

/// What one labelled line holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Name,
    Surname,
    Phone,
    Email,
    Field(&'static str),
}

/// Built-in labels, normalized (lower case, `ё` as `е`, no trailing `:`/`*`).
const NAME_LABELS: &[&str] = &[
    "имя",
    "ваше имя",
    "фио",
    "ф.и.о.",
    "ф.и.о",
    "имя и фамилия",
    "фамилия и имя",
    "фамилия имя",
    "фамилия имя отчество",
    "имя фамилия",
    "контактное лицо",
    "имя клиента",
    "клиент",
    "отправитель",
    "автор",
    "от",
    "от кого",
    "from",
    "name",
    "your name",
    "full name",
    "first name",
    "contact name",
    "contact person",
];
const SURNAME_LABELS: &[&str] = &["фамилия", "last name", "surname", "family name"];
const PHONE_LABELS: &[&str] = &[
    "телефон",
    "телефон автора",
    "тел",
    "тел.",
    "номер телефона",
    "ваш телефон",
    "ваш номер",
    "ваш номер телефона",
    "контактный телефон",
    "мобильный",
    "мобильный телефон",
    "моб",
    "моб.",
    "сотовый",
    "номер",
    "phone",
    "phone number",
    "your phone",
    "tel",
    "tel.",
    "telephone",
    "mobile",
    "whatsapp",
];
const EMAIL_LABELS: &[&str] = &[
    "e-mail",
    "email",
    "e-mail адрес",
    "email адрес",
    "эл. почта",
    "эл.почта",
    "электронная почта",
    "почта",
    "ваш e-mail",
    "ваш email",
    "ваша почта",
    "mail",
    "e-mail address",
    "email address",
    "your email",
    "your e-mail",
    "адрес электронной почты",
    "e-mail автора",
    "email автора",
    "почта автора",
];
const COMMENT_LABELS: &[&str] = &[
    "комментарий",
    "комментарии",
    "ваш комментарий",
    "сообщение",
    "ваше сообщение",
    "текст сообщения",
    "вопрос",
    "ваш вопрос",
    "текст",
    "примечание",
    "описание",
    "пожелания",
    "comment",
    "comments",
    "message",
    "your message",
    "question",
    "notes",
];
const PRODUCT_LABELS: &[&str] = &[
    "товар",
    "продукт",
    "услуга",
    "наименование",
    "наименование товара",
    "название товара",
    "модель",
    "тариф",
    "product",
    "service",
    "item",
];
const REGION_LABELS: &[&str] = &[
    "город",
    "регион",
    "область",
    "населенный пункт",
    "ваш город",
    "city",
    "region",
];
const PAGE_LABELS: &[&str] = &[
    "страница",
    "адрес страницы",
    "url страницы",
    "страница отправки",
    "page",
    "page url",
    "url",
    "source page",
];
const REFERER_LABELS: &[&str] = &["referer", "referrer", "реферер"];
const FORM_LABELS: &[&str] = &[
    "форма",
    "название формы",
    "id формы",
    "form",
    "form name",
    "form id",
];

/// What the labelled lines of a body say.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct FormData {
    pub name: Option<String>,
    /// Phones as written, label order.
    pub phones: Vec<String>,
    pub emails: Vec<String>,
    /// Known vocabulary (`product`, `region`, `comment`, `utm_*` …) and,
    /// for [`parse_form`]'s `keep_unknown`, other labels under their own
    /// name.
    pub fields: BTreeMap<String, String>,
    /// How many lines had a label this module knows.
    pub known_labels: usize,
}

impl FormData {
    pub fn has_contact(&self) -> bool {
        !self.phones.is_empty() || !self.emails.is_empty()
    }
}

fn normalize_label(label: &str) -> String {
    let l = label
        .trim()
        .trim_matches(|c: char| matches!(c, '*' | ':' | '"' | '\'' | '«' | '»' | '•' | '-'))
        .trim()
        .to_lowercase()
        .replace('ё', "е");
    l.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn target_of(label: &str, extra: &FormLabels) -> Option<Target> {
    let l = normalize_label(label);
    let has = |list: &[&str]| list.contains(&l.as_str());
    let extra_has = |list: &[String]| list.iter().any(|e| normalize_label(e) == l);
    if let Some(utm) = fields::UTM_KEYS.iter().find(|k| **k == l) {
        return Some(Target::Field(utm));
    }
    // Configured labels first: they may override a built-in meaning.
    let target = if extra_has(&extra.name) {
        Target::Name
    } else if extra_has(&extra.phone) {
        Target::Phone
    } else if extra_has(&extra.email) {
        Target::Email
    } else if extra_has(&extra.comment) {
        Target::Field(fields::COMMENT)
    } else if extra_has(&extra.product) {
        Target::Field(fields::PRODUCT)
    } else if extra_has(&extra.region) {
        Target::Field(fields::REGION)
    } else if has(NAME_LABELS) {
        Target::Name
    } else if has(SURNAME_LABELS) {
        Target::Surname
    } else if has(PHONE_LABELS) {
        Target::Phone
    } else if has(EMAIL_LABELS) {
        Target::Email
    } else if has(COMMENT_LABELS) {
        Target::Field(fields::COMMENT)
    } else if has(PRODUCT_LABELS) {
        Target::Field(fields::PRODUCT)
    } else if has(REGION_LABELS) {
        Target::Field(fields::REGION)
    } else if has(PAGE_LABELS) {
        Target::Field(fields::PAGE_URL)
    } else if has(REFERER_LABELS) {
        Target::Field(fields::REFERER)
    } else if has(FORM_LABELS) {
        Target::Field(fields::FORM_ID)
    } else {
        return None;
    };
    Some(target)
}

/// Splits `Label: value` (or `Label<TAB>value`, as HTML table cells read).
fn split_label(line: &str) -> Option<(&str, &str)> {
    let colon = line.find(':');
    let tab = line.find('\t');
    let at = match (colon, tab) {
        (Some(c), Some(t)) => c.min(t),
        (Some(c), None) => c,
        (None, Some(t)) => t,
        (None, None) => return None,
    };
    let label = line[..at].trim();
    let value = line[at + 1..].trim_start_matches([':', '\t', ' ']).trim();
    if label.is_empty() || label.chars().count() > 48 || label.contains("//") {
        return None;
    }
    Some((label, value))
}

/// A label worth keeping as its own field in a form: short, a few words,
/// no digits or URL.
fn plausible_unknown_label(label: &str) -> bool {
    label.split_whitespace().count() <= 5
        && !label.chars().any(|c| c.is_ascii_digit())
        && label.chars().any(char::is_alphabetic)
        && !label.contains('@')
        && !label.starts_with('>')
}

/// Reads `Label: value` lines. A known label alone on its line takes the
/// next non-empty line as its value. With `keep_unknown`, other labelled
/// lines of a body with at least two known labels become fields under
/// their label as written.
pub(super) fn parse_form(text: &str, extra: &FormLabels, keep_unknown: bool) -> FormData {
    let mut data = FormData::default();
    let mut surname: Option<String> = None;
    let mut unknown: Vec<(String, String)> = Vec::new();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start_matches(['*', '•', '-', '>', ' ']);
        i += 1;
        let Some((label, mut value)) = split_label(line) else {
            continue;
        };
        let target = target_of(label, extra);
        if value.is_empty() && target.is_some() {
            // `Имя:` then the value on the next line (HTML tables, some CMS).
            if let Some(next) = lines
                .get(i)
                .copied()
                .filter(|l| !l.is_empty() && split_label(l).is_none())
            {
                value = next;
                i += 1;
            }
        }
        if value.is_empty() {
            continue;
        }
        let value = one_line(value, MAX_FIELD_VALUE);
        match target {
            Some(t) => {
                data.known_labels += 1;
                match t {
                    Target::Name => {
                        // `От: Иван <ivan@example.ru>` (Contact Form 7).
                        let (name, email) = if value.contains('@') {
                            mailbox_from_text(&value)
                        } else {
                            (Some(value), None)
                        };
                        data.emails.extend(email);
                        if data.name.is_none() {
                            data.name = name;
                        }
                    }
                    Target::Surname => surname = surname.or(Some(value)),
                    Target::Phone => {
                        let found = find_phones(&format!("тел. {value}"));
                        if found.is_empty() {
                            if value.chars().filter(char::is_ascii_digit).count() >= 5 {
                                data.phones.push(value);
                            }
                        } else {
                            data.phones.extend(found);
                        }
                    }
                    Target::Email => data.emails.extend(find_emails(&value)),
                    Target::Field(key) => {
                        if data.fields.len() < MAX_FIELDS {
                            data.fields.entry(key.to_owned()).or_insert(value);
                        }
                    }
                }
            }
            None if keep_unknown && plausible_unknown_label(label) && !value.starts_with("//") => {
                unknown.push((one_line(label, 64), value));
            }
            None => {}
        }
    }
    // Other labels only count in a body that is a form (two known labels
    // at least), not in a sentence with a colon.
    if data.known_labels >= 2 {
        for (label, value) in unknown {
            if data.fields.len() < MAX_FIELDS {
                data.fields.entry(label).or_insert(value);
            }
        }
    }
    if let Some(surname) = surname {
        data.name = Some(match data.name.take() {
            Some(name) if !name.contains(&surname) => format!("{name} {surname}"),
            Some(name) => name,
            None => surname,
        });
    }
    data
}

/// E-mail addresses in free text, in order, without repeats.
pub(super) fn find_emails(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in EMAIL.find_iter(text) {
        let addr = m.as_str().trim_matches(['.', '\'', '-']);
        if !out.iter().any(|a| a.eq_ignore_ascii_case(addr)) {
            out.push(addr.to_owned());
        }
        if out.len() >= 8 {
            break;
        }
    }
    out
}

/// A display name and an address read from text like `Name <a@b>`,
/// `"Name" <a@b>`, `Name [mailto:a@b]`, `a@b (Name)` or `a@b`.
pub(super) fn mailbox_from_text(s: &str) -> (Option<String>, Option<String>) {
    let Some(m) = EMAIL.find(s) else {
        return (clean_name(s, None), None);
    };
    let addr = m.as_str().trim_matches(['.', '\'', '-']).to_owned();
    let before = s[..m.start()]
        .trim_end()
        .trim_end_matches(['<', '[', '('])
        .trim_end_matches("mailto:")
        .trim_end_matches(['<', '[', '(']);
    let after = s[m.end()..].trim_start_matches(['>', ']', ')', ' ']);
    let name = clean_name(before, Some(&addr)).or_else(|| {
        let paren = after.trim().strip_prefix('(')?.split(')').next()?;
        clean_name(paren, Some(&addr))
    });
    (name, Some(addr))
}

/// A usable display name: quotes and brackets trimmed, whitespace
/// collapsed; `None` when empty or just an address.
pub(super) fn clean_name(s: &str, addr: Option<&str>) -> Option<String> {
    let s = one_line(s, 256);
    let s = s
        .trim_matches(|c: char| {
            c.is_whitespace()
                || matches!(
                    c,
                    '"' | '\'' | '<' | '>' | '«' | '»' | ',' | ';' | '[' | ']'
                )
        })
        .trim();
    if s.is_empty() || !s.chars().any(char::is_alphabetic) {
        return None;
    }
    if addr.is_some_and(|a| s.eq_ignore_ascii_case(a)) || EMAIL.is_match(s) && !s.contains(' ') {
        return None;
    }
    Some(s.to_owned())
}

/// The original sender of a message forwarded inline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Forwarded {
    pub name: Option<String>,
    pub email: String,
    /// Byte offset in the text where the forwarded message's own text
    /// starts (after its header block).
    pub body: usize,
}

/// Finds the header block of a message forwarded inline (a forward marker
/// line, or a `From:` line followed by `Sent:`/`Subject:`-like lines) and
/// reads its `From:`.
pub(super) fn find_forwarded(text: &str) -> Option<Forwarded> {
    let mut offset = 0;
    let lines: Vec<(usize, &str)> = text
        .split('\n')
        .map(|l| {
            let at = offset;
            offset += l.len() + 1;
            (at, l)
        })
        .collect();
    for (idx, &(_, line)) in lines.iter().enumerate() {
        let marker = FORWARD_MARKER.is_match(line);
        let from_here = FROM_LINE.is_match(line)
            && lines
                .iter()
                .skip(idx + 1)
                .take(3)
                .any(|(_, l)| HEADER_LINE.is_match(l));
        if !marker && !from_here {
            continue;
        }
        let start = if marker { idx + 1 } else { idx };
        for (k, &(_, l)) in lines.iter().enumerate().skip(start).take(12) {
            let Some(c) = FROM_LINE.captures(l) else {
                continue;
            };
            let value = c.get(1).map_or("", |m| m.as_str());
            let (name, email) = mailbox_from_text(value);
            let email = email?;
            // The block's other lines (`Sent:`, `Тема:` …, wrapped
            // continuations) end at the first empty line.
            let body = lines
                .iter()
                .skip(k + 1)
                .take(12)
                .find(|(_, l)| l.trim().is_empty())
                .or_else(|| lines.get(k + 1))
                .map_or(text.len(), |&(o, _)| o);
            return Some(Forwarded { name, email, body });
        }
    }
    None
}

/// The text a sender wrote: lines quoted with `>` dropped, and everything
/// from a reply's attribution line or a forwarded/original-message block on
/// cut, so the quoted signature of the salesperson being answered is not
/// read as the customer's.
pub(super) fn own_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let lines: Vec<&str> = text.split('\n').collect();
    for (idx, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('>') {
            continue;
        }
        if FORWARD_MARKER.is_match(line) || ATTRIBUTION.is_match(line) {
            break;
        }
        if FROM_LINE.is_match(line)
            && lines
                .iter()
                .skip(idx + 1)
                .take(3)
                .any(|l| HEADER_LINE.is_match(l))
        {
            break;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_form_labels() {
        let text = "Новая заявка с сайта ourcompany.example\n\nИмя: Алексей Фёдоров\n\
                    Телефон: +7 (999) 222-33-44\nE-mail: a.fedorov@example.ru\nТовар: Станок ЧПУ 6090\n\
                    Комментарий: Перезвоните после 15:00\nutm_source: yandex\nutm_campaign: cnc_autumn\n\
                    Количество: 2\nhttps://example.ru/page?x=1\n";
        let f = parse_form(text, &FormLabels::default(), true);
        assert_eq!(f.name.as_deref(), Some("Алексей Фёдоров"));
        assert_eq!(f.phones, vec!["+7 (999) 222-33-44"]);
        assert_eq!(f.emails, vec!["a.fedorov@example.ru"]);
        assert_eq!(f.fields["product"], "Станок ЧПУ 6090");
        assert_eq!(f.fields["comment"], "Перезвоните после 15:00");
        assert_eq!(f.fields["utm_source"], "yandex");
        assert_eq!(f.fields["utm_campaign"], "cnc_autumn");
        assert_eq!(f.fields["Количество"], "2");
        assert_eq!(f.fields.len(), 5);
        assert!(f.has_contact());
    }

    #[test]
    fn table_cells_split_names_and_extra_labels() {
        let text = "Фамилия:\tИванова\nИмя\tАнна\nМобила:\t8 999 111 22 33\nГде:\tКазань\nКонтакт E-mail\n<anna@example.ru>\n";
        let extra = FormLabels {
            phone: vec!["Мобила".into()],
            region: vec!["где".into()],
            email: vec!["Контакт e-mail".into()],
            ..FormLabels::default()
        };
        let f = parse_form(text, &extra, false);
        assert_eq!(f.name.as_deref(), Some("Анна Иванова"));
        assert_eq!(f.phones, vec!["8 999 111 22 33"]);
        assert_eq!(f.fields["region"], "Казань");
        assert_eq!(
            f.emails,
            Vec::<String>::new(),
            "label without colon, value on next line is not read"
        );
        let f = parse_form("Контакт E-mail:\n<anna@example.ru>\n", &extra, false);
        assert_eq!(f.emails, vec!["anna@example.ru"]);
    }

    #[test]
    fn mailboxes() {
        assert_eq!(
            mailbox_from_text("Виктор Ершов <v.ershov@example.ru>"),
            (
                Some("Виктор Ершов".into()),
                Some("v.ershov@example.ru".into())
            )
        );
        assert_eq!(
            mailbox_from_text("\"Ivan\" [mailto:ivan@example.com]"),
            (Some("Ivan".into()), Some("ivan@example.com".into()))
        );
        assert_eq!(
            mailbox_from_text("ivan@example.com (Иван)"),
            (Some("Иван".into()), Some("ivan@example.com".into()))
        );
        assert_eq!(
            mailbox_from_text("ivan@example.com"),
            (None, Some("ivan@example.com".into()))
        );
        assert_eq!(
            mailbox_from_text("Сайт ourcompany <noreply@forms.example.com>"),
            (
                Some("Сайт ourcompany".into()),
                Some("noreply@forms.example.com".into())
            )
        );
    }

    #[test]
    fn forwarded_blocks() {
        let gmail = "Смотрите заявку\n---------- Пересылаемое сообщение ----------\nОт: Виктор Ершов <v.ershov@example.ru>\nТема: Монтаж\n\nТекст";
        let f = find_forwarded(gmail).unwrap();
        assert_eq!(f.email, "v.ershov@example.ru");
        assert_eq!(f.name.as_deref(), Some("Виктор Ершов"));
        assert_eq!(gmail[f.body..].trim(), "Текст");
        let outlook = "FYI\n\nFrom: John Smith [mailto:john@example.com]\nSent: Monday\nTo: sales\nSubject: quote\n\nBody";
        let f = find_forwarded(outlook).unwrap();
        assert_eq!(f.email, "john@example.com");
        assert_eq!(f.name.as_deref(), Some("John Smith"));
        assert!(find_forwarded("Коллеги, пересылаю счёт.").is_none());
        assert!(find_forwarded("От: меня\nпривет").is_none());
    }

    #[test]
    fn quotes_are_not_own_words() {
        let reply =
            "Уточню: нужен поворотный стол.\n\n> Прошу выслать КП\n> тел. 8 495 000-00-00\n";
        assert_eq!(own_words(reply).trim(), "Уточню: нужен поворотный стол.");
        let gmail = "Да, подходит. 89991234567\n\nпн, 16 нояб. 2026 г. в 10:15, Иван <ivan@ourcompany.example>:\nНаш телефон 8 495 111-11-11\n";
        assert_eq!(own_words(gmail).trim(), "Да, подходит. 89991234567");
        let en = "Sure\nOn Mon, Nov 16, 2026 at 10:15 AM Sales <s@x.example> wrote:\nold";
        assert_eq!(own_words(en).trim(), "Sure");
        let ru = "Ок\n16.11.2026 10:15, Менеджер пишет:\nстарое";
        assert_eq!(own_words(ru).trim(), "Ок");
    }
}
