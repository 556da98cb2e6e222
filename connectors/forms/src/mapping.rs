use std::collections::BTreeMap;

use leadgate_connector::fields;

use crate::config::FieldAliases;
use crate::parse::ParsedBody;

/// Built-in field names, compared after [`fold`]. Covers the common form
/// builders (Tilda, Contact Form 7, Elementor, Bitrix, Webflow, Marquiz,
/// hand-written forms) in Russian and English; a channel adds its own with
/// `[form.fields]`.
const NAME: &[&str] = &[
    "name",
    "fio",
    "фио",
    "имя",
    "full_name",
    "fullname",
    "your_name",
    "your_full_name",
    "contact_name",
    "contact_person",
    "client_name",
    "ваше_имя",
    "имя_и_фамилия",
    "имя_фамилия",
    "контактное_лицо",
];
const FIRST_NAME: &[&str] = &["first_name", "firstname", "fname", "given_name"];
const MIDDLE_NAME: &[&str] = &["middle_name", "middlename", "patronymic", "отчество"];
const LAST_NAME: &[&str] = &[
    "last_name",
    "lastname",
    "lname",
    "surname",
    "family_name",
    "фамилия",
];
const PHONE: &[&str] = &[
    "phone",
    "tel",
    "telephone",
    "phone_number",
    "phonenumber",
    "mobile",
    "mobile_phone",
    "mobilephone",
    "phone_mobile",
    "cell",
    "cellphone",
    "contact_phone",
    "your_phone",
    "your_tel",
    "whatsapp",
    "телефон",
    "тел",
    "номер",
    "номер_телефона",
    "ваш_номер",
    "ваш_телефон",
    "мобильный",
    "мобильный_телефон",
    "контактный_телефон",
    "телефон_для_связи",
];
const EMAIL: &[&str] = &[
    "email",
    "e_mail",
    "mail",
    "email_address",
    "emailaddress",
    "your_email",
    "your_e_mail",
    "почта",
    "электронная_почта",
    "адрес_электронной_почты",
    "ваш_email",
    "ваш_e_mail",
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
    "notes",
    "сообщение",
    "комментарий",
    "вопрос",
    "примечание",
    "textarea",
];
const PRODUCT: &[&str] = &[
    "product",
    "product_name",
    "товар",
    "продукт",
    "item",
    "service",
    "услуга",
    "model",
];
const REGION: &[&str] = &["region", "city", "город", "регион", "область"];
const PAGE_URL: &[&str] = &[
    "page_url",
    "pageurl",
    "page",
    "href",
    "landing",
    "landing_page",
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

/// The names a field may be known by, most specific first, each folded:
/// the whole name; for a nested name (`form_fields[email]` from Elementor,
/// `data.Email` from a flattened JSON body) its last key and its last two
/// keys joined (`utm[source]` is `utm_source`), a last key `value` left
/// out (`fields[email][value]`); and each of these without
/// the number a builder appends (Contact Form 7's `tel-435`, `phone2`).
fn candidates(name: &str) -> Vec<String> {
    let full = fold(name);
    let mut keys: Vec<&str> = full
        .split(['[', ']', '.'])
        .filter(|k| !k.is_empty())
        .collect();
    // Elementor's webhook with "advanced data" posts `fields[email][value]`.
    if keys.len() > 2 && keys.last() == Some(&"value") {
        keys.pop();
    }
    let mut names = vec![full.clone()];
    if keys.len() > 1 {
        names.push(format!("{}_{}", keys[keys.len() - 2], keys[keys.len() - 1]));
        names.push(keys[keys.len() - 1].to_owned());
    }
    for i in 0..names.len() {
        let unnumbered = names[i]
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .trim_end_matches('_');
        if !unnumbered.is_empty() && unnumbered.len() < names[i].len() {
            names.push(unnumbered.to_owned());
        }
    }
    names.dedup();
    names
}

/// How many keys deep a field's name is: 1 for `email`, 3 for `a.b[c]`.
fn depth(name: &str) -> usize {
    name.split(['[', ']', '.'])
        .filter(|k| !k.is_empty())
        .count()
        .max(1)
}

fn is_one_of(folded: &str, builtin: &[&str], extra: &[String]) -> bool {
    builtin.contains(&folded) || extra.iter().any(|e| fold(e) == folded)
}

/// What a form field means to the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Meaning {
    Ignored,
    Name,
    FirstName,
    MiddleName,
    LastName,
    Phone,
    Email,
    Telegram,
    /// One of the shared-vocabulary fields, under its shared name.
    Field(&'static str),
    Utm(String),
    ProviderId,
}

impl Meaning {
    /// The meaning of the most specific of `name`'s candidates that has one.
    fn of(name: &str, aliases: &FieldAliases) -> Option<Meaning> {
        candidates(name)
            .iter()
            .find_map(|candidate| Meaning::of_folded(candidate, aliases))
    }

    fn of_folded(name: &str, aliases: &FieldAliases) -> Option<Meaning> {
        let meaning = if is_one_of(name, IGNORED, &aliases.ignore) {
            Meaning::Ignored
        } else if is_one_of(name, NAME, &aliases.name) {
            Meaning::Name
        } else if is_one_of(name, PHONE, &aliases.phone) {
            Meaning::Phone
        } else if is_one_of(name, EMAIL, &aliases.email) {
            Meaning::Email
        } else if is_one_of(name, TELEGRAM, &aliases.telegram) {
            Meaning::Telegram
        } else if is_one_of(name, COMMENT, &aliases.comment) {
            Meaning::Field(fields::COMMENT)
        } else if is_one_of(name, PRODUCT, &aliases.product) {
            Meaning::Field(fields::PRODUCT)
        } else if is_one_of(name, REGION, &aliases.region) {
            Meaning::Field(fields::REGION)
        } else if is_one_of(name, PAGE_URL, &aliases.page_url) {
            Meaning::Field(fields::PAGE_URL)
        } else if FIRST_NAME.contains(&name) {
            Meaning::FirstName
        } else if MIDDLE_NAME.contains(&name) {
            Meaning::MiddleName
        } else if LAST_NAME.contains(&name) {
            Meaning::LastName
        } else if PROVIDER_ID.contains(&name) {
            Meaning::ProviderId
        } else if FORM_ID.contains(&name) {
            Meaning::Field(fields::FORM_ID)
        } else if fields::UTM_KEYS.contains(&name) {
            Meaning::Utm(name.to_owned())
        } else {
            return None;
        };
        Some(meaning)
    }
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

/// A name given in parts (`first_name`, `last_name`, "Имя" and "Фамилия").
#[derive(Default)]
struct NameParts {
    first: Option<String>,
    middle: Option<String>,
    last: Option<String>,
}

impl NameParts {
    /// The whole name: the given or full name, then the middle and last
    /// names unless the full name already holds them.
    fn join(self, name: Option<String>) -> Option<String> {
        let given = name.or(self.first);
        let mut whole = given.clone().unwrap_or_default();
        for part in [self.middle, self.last].into_iter().flatten() {
            if given.as_deref().is_some_and(|g| g.contains(part.as_str())) {
                continue;
            }
            if !whole.is_empty() {
                whole.push(' ');
            }
            whole.push_str(&part);
        }
        (!whole.is_empty()).then_some(whole)
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
    let mut parts = NameParts::default();
    let mut name_depth = 0;
    for (raw_name, value) in &body.fields {
        let value = value.trim();
        let name = fold(raw_name);
        if honeypots.iter().any(|h| fold(h) == name) {
            if !value.is_empty() {
                form.honeypot = Some(raw_name.clone());
            }
            continue;
        }
        if value.is_empty() {
            continue;
        }
        let first = |slot: &mut Option<String>| {
            slot.get_or_insert_with(|| value.to_owned());
        };
        match Meaning::of(raw_name, aliases) {
            Some(Meaning::Ignored) => {}
            // A JSON body may name its form or quiz (`payload.name`) beside
            // the sender (`payload.data.Name`): the deeper one is the answer.
            Some(Meaning::Name) if depth(raw_name) > name_depth => {
                name_depth = depth(raw_name);
                form.name = Some(value.to_owned());
            }
            Some(Meaning::Name) => {}
            Some(Meaning::FirstName) => first(&mut parts.first),
            Some(Meaning::MiddleName) => first(&mut parts.middle),
            Some(Meaning::LastName) => first(&mut parts.last),
            Some(Meaning::Phone) => form.phones.push(value.to_owned()),
            Some(Meaning::Email) => form.emails.push(value.to_owned()),
            Some(Meaning::Telegram) => form.telegram.push(value.to_owned()),
            Some(Meaning::Field(key)) => add(key, value, &mut form),
            Some(Meaning::Utm(key)) => add(&key, value, &mut form),
            Some(Meaning::ProviderId) => first(&mut form.provider_id),
            None => add(raw_name.trim(), value, &mut form),
        }
    }
    form.name = parts.join(form.name.take());
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
    fn builders_nested_and_numbered_names_are_understood() {
        let form = map_fields(
            &body(&[
                // Elementor
                ("form_fields[name]", "Ия"),
                ("form_fields[email]", "i@x.ru"),
                ("form_fields[field_1a2b]", "зелёный"),
                // Contact Form 7 numbers its fields
                ("tel-435", "8 999 000 11 22"),
                ("your-subject", "Кухня"),
                // flattened JSON (Webflow, Marquiz)
                ("payload.data.Message", "перезвоните"),
                ("extra.utm.source", "vk"),
                ("utm[campaign]", "autumn"),
                ("extra.href", "https://site.example/kitchen"),
                ("form_id", "f1"),
            ]),
            &FieldAliases::default(),
            &[],
        );
        assert_eq!(form.name.as_deref(), Some("Ия"));
        assert_eq!(form.emails, vec!["i@x.ru"]);
        assert_eq!(form.phones, vec!["8 999 000 11 22"]);
        assert_eq!(form.fields["comment"], "перезвоните");
        assert_eq!(form.fields["utm_source"], "vk");
        assert_eq!(form.fields["utm_campaign"], "autumn");
        assert_eq!(form.fields["page_url"], "https://site.example/kitchen");
        assert_eq!(form.fields["form_id"], "f1");
        assert_eq!(form.fields["form_fields[field_1a2b]"], "зелёный");
        assert_eq!(form.fields["your-subject"], "Кухня");
    }

    #[test]
    fn the_senders_name_is_the_deepest_name() {
        let form = map_fields(
            &body(&[
                ("payload.data.Name", "Олег"),
                ("payload.name", "Contact Form"),
                ("quiz.name", "Квиз"),
            ]),
            &FieldAliases::default(),
            &[],
        );
        assert_eq!(form.name.as_deref(), Some("Олег"));
        let form = map_fields(
            &body(&[("name", "Зоя"), ("имя", "Зоя К.")]),
            &FieldAliases::default(),
            &[],
        );
        assert_eq!(form.name.as_deref(), Some("Зоя"));
    }

    #[test]
    fn a_name_given_in_parts_is_joined() {
        let name =
            |pairs: &[(&str, &str)]| map_fields(&body(pairs), &FieldAliases::default(), &[]).name;
        assert_eq!(
            name(&[("firstname", "Ann"), ("lastname", "Lee"), ("email", "a@x")]).as_deref(),
            Some("Ann Lee")
        );
        assert_eq!(
            name(&[
                ("Фамилия", "Зуева"),
                ("Имя", "Зоя"),
                ("Отчество", "Ивановна")
            ])
            .as_deref(),
            Some("Зоя Ивановна Зуева")
        );
        assert_eq!(
            name(&[("name", "Зоя Зуева"), ("surname", "Зуева")]).as_deref(),
            Some("Зоя Зуева")
        );
        assert_eq!(name(&[("last_name", "Lee")]).as_deref(), Some("Lee"));
        assert_eq!(name(&[("email", "a@x")]), None);
    }

    #[test]
    fn candidates_run_from_the_whole_name_to_its_last_key() {
        assert_eq!(candidates("Name"), vec!["name"]);
        assert_eq!(candidates("tel-435"), vec!["tel_435", "tel"]);
        assert_eq!(
            candidates("utm[source]"),
            vec!["utm[source]", "utm_source", "source"]
        );
        assert_eq!(
            candidates("a.b2"),
            vec!["a.b2", "a_b2", "b2", "a.b", "a_b", "b"]
        );
        assert_eq!(candidates("2"), vec!["2"]);
        assert_eq!(
            candidates("fields[Email][value]"),
            vec!["fields[email][value]", "fields_email", "email"]
        );
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
