use leadgate::pipeline::normalize;
use leadgate_forms::{FieldAliases, map_fields, parse_body};

use crate::Verdict;
use crate::input::split_form_post;

/// The forms crate's limit on fields and files per post (`MAX_FIELDS` in
/// connectors/forms/src/parse.rs, not exported).
const MAX_FIELDS: usize = 200;

/// Re-serialised JSON values may outgrow their source (`1e9` is written
/// back as `1000000000.0`), so the decoded text is allowed a few times the
/// body's size, never more.
const TEXT_GROWTH: usize = 8;

thread_local! {
    // `parse_body` is async only because multipart bodies are read as a
    // stream; a runtime per thread keeps each execution cheap.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
}

/// A form post (see [`crate::input::form_post`]) through body parsing, the
/// field mapping and the normalization of the contacts found.
pub fn form_body(data: &[u8]) -> Verdict {
    let (content_type, body) = split_form_post(data);
    let parsed = RUNTIME.with(|rt| rt.block_on(parse_body(content_type, body)));
    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            assert!(
                e.status().is_client_error(),
                "a malformed body must be the client's error, got {} ({e})",
                e.status()
            );
            return Verdict::Refused;
        }
    };
    assert!(
        parsed.fields.len() + parsed.attachments.len() <= MAX_FIELDS,
        "{} fields and {} files passed the limit of {MAX_FIELDS}",
        parsed.fields.len(),
        parsed.attachments.len()
    );
    let text: usize = parsed.fields.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(
        text <= TEXT_GROWTH * body.len(),
        "{text} bytes of fields from a {}-byte body",
        body.len()
    );
    for file in &parsed.attachments {
        assert!(
            file.size <= body.len() as u64,
            "a {}-byte file in a {}-byte body",
            file.size,
            body.len()
        );
    }

    let honeypots = ["website".to_owned()];
    let form = map_fields(&parsed, &FieldAliases::default(), &honeypots);
    let mapped = form.phones.len() + form.emails.len() + form.telegram.len() + form.fields.len();
    assert!(
        mapped <= parsed.fields.len(),
        "{mapped} mapped values from {} fields",
        parsed.fields.len()
    );
    for phone in &form.phones {
        if let Some(normalized) = normalize::phone(phone, phonenumber::country::Id::RU) {
            crate::pipeline_check::assert_phone_shape(&normalized);
        }
    }
    for email in &form.emails {
        if let Some(e) = normalize::email(email) {
            assert!(e.contains('@'), "{e:?} is not an address");
        }
    }
    for tg in &form.telegram {
        let _ = normalize::telegram(tg);
    }
    if let Some(name) = &form.name {
        let _ = normalize::name(name);
    }
    Verdict::Accepted
}
