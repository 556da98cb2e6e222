use std::collections::BTreeMap;

use leadgate_connector::fields;

use crate::config::FieldAliases;
use crate::parse::ParsedBody;

/// Built-in field names, compared after [`fold`]. Covers the common form
/// builders (Tilda, Contact Form 7, Bitrix, hand-written forms) in Russian
/// and English; a channel adds its own with `[form.fields]`.
const NAME: &[&str] = &[
    "name",
    "fio",
    "фио",
    "имя",
    "full_name",
    "fullname",
    "your_name",
    "contact_name",
    "client_name",
    "ваше_имя",
    "имя_и_фамилия",
];
const PHONE: &[&str] = &[
    "phone",
    "tel",
    "telephone",
    "phone_number",
    "phonenumber",
    "mobile",
    "your_phone",
    "телефон",
    "тел",
    "номер_телефона",
    "ваш_телефон",
    "мобильный",
];
const EMAIL: &[&str] = &[
    "email",
    "e_mail",
    "mail",
    "your_email",
    "почта",
    "электронная_почта",
    "ваш_email",
];
const TELEGRAM: &[&str] = &["telegram", "tg", "телеграм", "telegram_username"];
const COMMENT: &[&str] = &[
    "comment",
    "comments",
    "message",
    "msg",
    "text",
    "question",
    "your_message",
    "сообщение",
    "комментарий",
    "вопрос",
    "textarea",
];
const PRODUCT: &[&str] = &[
    "product",
    "товар",
    "продукт",
    "item",
    "service",
    "услуга",
    "model",
];
const REGION: &[&str] = &["region", "city", "город", "регион"];
const PAGE_URL: &[&str] = &[
    "page_url",
    "pageurl",
    "page",
    "landing",
    "url_page",
    "source_url",
];
/// Provider transaction ids: a stable id for the same submission retried.
const PROVIDER_ID: &[&str] = &["tranid"];
const FORM_ID: &[&str] = &["formid", "form_id", "formname", "form_name"];
/// Fields that carry secrets or browser state, never worth keeping.
const IGNORED: &[&str] = &[
    "cookies",
    "g_recaptcha_response",
    "smart_token",
    "csrf_token",
    "_token",
];

/// Case-insensitive comparison key: lower case, `-` and spaces as `_`.
fn fold(name: &str) -> String {
    name.trim()
        .chars()
        .map(|c| {
            if c == '-' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .flat_map(char::to_lowercase)
        .collect()
}

fn is_one_of(folded: &str, builtin: &[&str], extra: &[String]) -> bool {
    builtin.contains(&folded) || extra.iter().any(|e| fold(e) == folded)
}

/// A form's fields sorted into what the pipeline understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MappedForm {
    pub name: Option<String>,
    pub phones: Vec<String>,
    pub emails: Vec<String>,
    pub telegram: Vec<String>,
    /// Shared-vocabulary fields (comment, product, utm_*, …) and every
    /// unrecognised field under its own name.
    pub fields: BTreeMap<String, String>,
    /// The provider's id for this submission (Tilda `tranid`).
    pub provider_id: Option<String>,
    /// The honeypot field that was filled, if any.
    pub honeypot: Option<String>,
    /// Tilda's webhook check (`test=test` and nothing else).
    pub is_handshake: bool,
}

impl MappedForm {
    pub fn has_contact(&self) -> bool {
        !(self.phones.is_empty() && self.emails.is_empty() && self.telegram.is_empty())
    }
}

pub fn map_fields(body: &ParsedBody, aliases: &FieldAliases, honeypots: &[String]) -> MappedForm {
    let mut form = MappedForm {
        is_handshake: body.fields.len() == 1
            && body.fields[0].0.eq_ignore_ascii_case("test")
            && body.fields[0].1.eq_ignore_ascii_case("test"),
        ..MappedForm::default()
    };
    let add = |key: &str, value: &str, form: &mut MappedForm| {
        form.fields
            .entry(key.to_owned())
            .and_modify(|v| {
                v.push('\n');
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    };
    for (raw_name, value) in &body.fields {
        let value = value.trim();
        let name = fold(raw_name);
        if honeypots.iter().any(|h| fold(h) == name) {
            if !value.is_empty() {
                form.honeypot = Some(raw_name.clone());
            }
            continue;
        }
        if value.is_empty() || is_one_of(&name, IGNORED, &aliases.ignore) {
            continue;
        }
        if is_one_of(&name, NAME, &aliases.name) {
            form.name.get_or_insert_with(|| value.to_owned());
        } else if is_one_of(&name, PHONE, &aliases.phone) {
            form.phones.push(value.to_owned());
        } else if is_one_of(&name, EMAIL, &aliases.email) {
            form.emails.push(value.to_owned());
        } else if is_one_of(&name, TELEGRAM, &aliases.telegram) {
            form.telegram.push(value.to_owned());
        } else if is_one_of(&name, COMMENT, &aliases.comment) {
            add(fields::COMMENT, value, &mut form);
        } else if is_one_of(&name, PRODUCT, &aliases.product) {
            add(fields::PRODUCT, value, &mut form);
        } else if is_one_of(&name, REGION, &aliases.region) {
            add(fields::REGION, value, &mut form);
        } else if is_one_of(&name, PAGE_URL, &aliases.page_url) {
            add(fields::PAGE_URL, value, &mut form);
        } else if PROVIDER_ID.contains(&name.as_str()) {
            form.provider_id.get_or_insert_with(|| value.to_owned());
        } else if FORM_ID.contains(&name.as_str()) {
            add(fields::FORM_ID, value, &mut form);
        } else if fields::UTM_KEYS.contains(&name.as_str()) {
            add(&name, value, &mut form);
        } else {
            add(raw_name.trim(), value, &mut form);
        }
    }
    form
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(pairs: &[(&str, &str)]) -> ParsedBody {
        ParsedBody {
            fields: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            attachments: Vec::new(),
        }
    }

    #[test]
    fn maps_russian_and_english_names_case_insensitively() {
        let form = map_fields(
            &body(&[
                ("Имя", " Зоя "),
                ("Телефон", "+7 999"),
                ("E-mail", "z@x.ru"),
                ("Сообщение", "hi"),
                ("UTM_Source", "ya"),
                ("Color", "red"),
            ]),
            &FieldAliases::default(),
            &[],
        );
        assert_eq!(form.name.as_deref(), Some("Зоя"));
        assert_eq!(form.phones, vec!["+7 999"]);
        assert_eq!(form.emails, vec!["z@x.ru"]);
        assert_eq!(form.fields["comment"], "hi");
        assert_eq!(form.fields["utm_source"], "ya");
        assert_eq!(form.fields["Color"], "red");
    }

    #[test]
    fn channel_aliases_extend_the_builtin_ones() {
        let aliases = FieldAliases {
            phone: vec!["Ваш номер".into()],
            ..FieldAliases::default()
        };
        let form = map_fields(&body(&[("ваш номер", "8999")]), &aliases, &[]);
        assert_eq!(form.phones, vec!["8999"]);
    }

    #[test]
    fn honeypot_and_handshake_are_recognised() {
        let hp = vec!["website".to_string()];
        assert_eq!(
            map_fields(
                &body(&[("website", "http://x")]),
                &FieldAliases::default(),
                &hp
            )
            .honeypot,
            Some("website".into())
        );
        assert_eq!(
            map_fields(&body(&[("website", "")]), &FieldAliases::default(), &hp).honeypot,
            None
        );
        assert!(map_fields(&body(&[("test", "test")]), &FieldAliases::default(), &hp).is_handshake);
    }
}
