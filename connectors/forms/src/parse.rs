use http::StatusCode;
use leadgate_connector::{Attachment, urlencoded};
use thiserror::Error;

/// Most fields a form post may carry; more is abuse, not a form.
pub const MAX_FIELDS: usize = 200;

/// Everything a form request can be refused for. Each maps to one HTTP
/// status and a message that names the problem for the integrator.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FormError {
    #[error("empty body")]
    EmptyBody,
    #[error("invalid UTF-8 in {0}")]
    InvalidUtf8(String),
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("malformed JSON: the body must be a JSON object of fields")]
    JsonNotObject,
    #[error("malformed multipart body: {0}")]
    MalformedMultipart(String),
    #[error(
        "unsupported content type {0:?}; send application/x-www-form-urlencoded, multipart/form-data or application/json"
    )]
    UnsupportedContentType(String),
    #[error("body too large: the limit is {0} bytes")]
    TooLarge(usize),
    #[error("the body was cut off: {0}")]
    Interrupted(String),
    #[error("too many fields: the limit is {MAX_FIELDS}")]
    TooManyFields,
    #[error("no phone, email or messenger contact in the form")]
    NoContact,
    #[error("missing API key: send it in the X-Leadgate-Key header")]
    MissingKey,
    #[error("wrong API key")]
    WrongKey,
    #[error("origin {0:?} is not allowed to post to this form")]
    OriginNotAllowed(String),
    #[error("too many requests; retry later")]
    RateLimited,
    #[error("unknown form channel {0:?}")]
    UnknownChannel(String),
    #[error("store unavailable; retry later")]
    Unavailable,
}

impl FormError {
    pub fn status(&self) -> StatusCode {
        match self {
            FormError::EmptyBody
            | FormError::InvalidUtf8(_)
            | FormError::MalformedJson(_)
            | FormError::JsonNotObject
            | FormError::MalformedMultipart(_)
            | FormError::Interrupted(_) => StatusCode::BAD_REQUEST,
            FormError::UnsupportedContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            FormError::TooLarge(_) | FormError::TooManyFields => StatusCode::PAYLOAD_TOO_LARGE,
            FormError::NoContact => StatusCode::UNPROCESSABLE_ENTITY,
            FormError::MissingKey => StatusCode::UNAUTHORIZED,
            FormError::WrongKey | FormError::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            FormError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            FormError::UnknownChannel(_) => StatusCode::NOT_FOUND,
            FormError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            FormError::EmptyBody => "empty_body",
            FormError::InvalidUtf8(_) => "invalid_utf8",
            FormError::MalformedJson(_) | FormError::JsonNotObject => "malformed_json",
            FormError::MalformedMultipart(_) => "malformed_multipart",
            FormError::UnsupportedContentType(_) => "unsupported_content_type",
            FormError::TooLarge(_) | FormError::TooManyFields => "body_too_large",
            FormError::Interrupted(_) => "body_interrupted",
            FormError::NoContact => "no_contact",
            FormError::MissingKey => "missing_key",
            FormError::WrongKey => "wrong_key",
            FormError::OriginNotAllowed(_) => "origin_not_allowed",
            FormError::RateLimited => "rate_limited",
            FormError::UnknownChannel(_) => "unknown_channel",
            FormError::Unavailable => "unavailable",
        }
    }
}

/// A form body decoded into ordered `(name, value)` pairs and file metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedBody {
    pub fields: Vec<(String, String)>,
    pub attachments: Vec<Attachment>,
}

enum BodyKind {
    UrlEncoded,
    Multipart(String),
    Json,
}

fn body_kind(content_type: Option<&str>, body: &[u8]) -> Result<BodyKind, FormError> {
    let raw = content_type.unwrap_or("").trim();
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/x-www-form-urlencoded" => Ok(BodyKind::UrlEncoded),
        "application/json" => Ok(BodyKind::Json),
        _ if essence.starts_with("application/") && essence.ends_with("+json") => {
            Ok(BodyKind::Json)
        }
        "multipart/form-data" => multer::parse_boundary(raw)
            .map(BodyKind::Multipart)
            .map_err(|e| FormError::MalformedMultipart(e.to_string())),
        // No label, or text/plain (what navigator.sendBeacon and "simple"
        // CORS posts use): take JSON when it looks like JSON.
        "" | "text/plain" => {
            let first = body.iter().find(|b| !b.is_ascii_whitespace());
            Ok(if first == Some(&b'{') {
                BodyKind::Json
            } else {
                BodyKind::UrlEncoded
            })
        }
        _ => Err(FormError::UnsupportedContentType(essence)),
    }
}

/// Decode a form body. Strict where leniency would corrupt a lead (bytes
/// that are not UTF-8 are refused, not replaced); never panics.
pub async fn parse_body(content_type: Option<&str>, body: &[u8]) -> Result<ParsedBody, FormError> {
    let kind = body_kind(content_type, body)?;
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(FormError::EmptyBody);
    }
    let parsed = match kind {
        BodyKind::UrlEncoded => parse_urlencoded(body)?,
        BodyKind::Json => parse_json(body)?,
        BodyKind::Multipart(boundary) => parse_multipart(body, boundary).await?,
    };
    if parsed.fields.len() + parsed.attachments.len() > MAX_FIELDS {
        return Err(FormError::TooManyFields);
    }
    Ok(parsed)
}

fn parse_urlencoded(body: &[u8]) -> Result<ParsedBody, FormError> {
    let fields = urlencoded::decode_pairs(body, MAX_FIELDS + 1).map_err(|e| match e {
        urlencoded::UrlencodedError::InvalidUtf8(what) => FormError::InvalidUtf8(what),
        urlencoded::UrlencodedError::TooManyFields(_) => FormError::TooManyFields,
    })?;
    Ok(ParsedBody {
        fields,
        attachments: Vec::new(),
    })
}

fn parse_json(body: &[u8]) -> Result<ParsedBody, FormError> {
    let text =
        std::str::from_utf8(body).map_err(|_| FormError::InvalidUtf8("the JSON body".into()))?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| FormError::MalformedJson(e.to_string()))?;
    let serde_json::Value::Object(map) = value else {
        return Err(FormError::JsonNotObject);
    };
    let mut fields = Vec::new();
    if !flatten_json("", &map, 0, &mut fields) {
        // Too many values once unnested: keep the top level as it is.
        if map.len() > MAX_FIELDS {
            return Err(FormError::TooManyFields);
        }
        fields = map
            .into_iter()
            .filter_map(|(name, value)| Some((name, json_text(&value)?)))
            .collect();
    }
    Ok(ParsedBody {
        fields,
        attachments: Vec::new(),
    })
}

/// Builders that post JSON nest the answers (Webflow's `data`, Marquiz's
/// `contacts`, UTM tags under `utm`): an object's values become fields
/// named by their path (`data.Email`), which the mapping reads by their
/// last keys. Lists of plain values (checkbox groups) and lists of objects
/// (a quiz's answers) stay one readable field. False when the body holds
/// more than [`MAX_FIELDS`] values or nests deeper than a form would.
fn flatten_json(
    prefix: &str,
    map: &serde_json::Map<String, serde_json::Value>,
    depth: usize,
    out: &mut Vec<(String, String)>,
) -> bool {
    const MAX_DEPTH: usize = 8;
    for (key, value) in map {
        let name = match prefix {
            "" => key.clone(),
            _ => format!("{prefix}.{key}"),
        };
        match value {
            serde_json::Value::Object(inner) if depth < MAX_DEPTH => {
                if !flatten_json(&name, inner, depth + 1, out) {
                    return false;
                }
            }
            serde_json::Value::Object(_) => return false,
            other => {
                if let Some(text) = json_text(other) {
                    if out.len() == MAX_FIELDS {
                        return false;
                    }
                    out.push((name, text));
                }
            }
        }
    }
    true
}

/// A JSON value as a form field's text; `null` is no field.
fn json_text(value: &serde_json::Value) -> Option<String> {
    Some(match value {
        serde_json::Value::Null => return None,
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Array(items) if items.iter().all(is_plain) => items
            .iter()
            .filter_map(json_text)
            .collect::<Vec<_>>()
            .join(", "),
        // Nested blocks: keep them readable.
        other @ (serde_json::Value::Array(_) | serde_json::Value::Object(_)) => other.to_string(),
    })
}

fn is_plain(value: &serde_json::Value) -> bool {
    !matches!(
        value,
        serde_json::Value::Array(_) | serde_json::Value::Object(_)
    )
}

async fn parse_multipart(body: &[u8], boundary: String) -> Result<ParsedBody, FormError> {
    let bytes = bytes::Bytes::copy_from_slice(body);
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut parsed = ParsedBody::default();
    let malformed = |e: multer::Error| FormError::MalformedMultipart(e.to_string());
    while let Some(mut field) = multipart.next_field().await.map_err(malformed)? {
        if parsed.fields.len() + parsed.attachments.len() > MAX_FIELDS {
            return Err(FormError::TooManyFields);
        }
        let name = field.name().unwrap_or("").to_owned();
        if let Some(file_name) = field.file_name().map(str::to_owned) {
            let content_type = field.content_type().map(|m| m.essence_str().to_owned());
            let mut size = 0u64;
            while let Some(chunk) = field.chunk().await.map_err(malformed)? {
                size += chunk.len() as u64;
            }
            parsed.attachments.push(Attachment {
                name: Some(file_name),
                content_type,
                size,
            });
        } else {
            let data = field.bytes().await.map_err(malformed)?;
            let value = String::from_utf8(data.to_vec())
                .map_err(|_| FormError::InvalidUtf8(format!("field {name:?}")))?;
            parsed.fields.push((name, value));
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_bytes_that_are_not_utf8() {
        let err = parse_body(Some("application/x-www-form-urlencoded"), b"name=%FF")
            .await
            .unwrap_err();
        assert_eq!(err, FormError::InvalidUtf8("field \"name\"".into()));
    }

    #[tokio::test]
    async fn json_values_become_text() {
        let body = br#"{"name":"A","age":3,"ok":true,"skip":null,"tags":["x","y"]}"#;
        let parsed = parse_body(Some("application/json; charset=utf-8"), body)
            .await
            .unwrap();
        assert_eq!(
            parsed.fields,
            vec![
                ("age".into(), "3".into()),
                ("name".into(), "A".into()),
                ("ok".into(), "true".into()),
                ("tags".into(), "x, y".into()),
            ]
        );
    }

    #[tokio::test]
    async fn nested_json_objects_become_fields_named_by_their_path() {
        let body = r#"{"payload":{"name":"Contact","data":{"Email":"a@b.ru","Phone":"8999"}},
            "answers":[{"q":"Кухня?","a":"Угловая"}],"extra":{"utm":{"source":"ya"}}}"#;
        let parsed = parse_body(Some("application/json"), body.as_bytes())
            .await
            .unwrap();
        assert_eq!(
            parsed.fields,
            vec![
                ("answers".into(), r#"[{"a":"Угловая","q":"Кухня?"}]"#.into()),
                ("extra.utm.source".into(), "ya".into()),
                ("payload.data.Email".into(), "a@b.ru".into()),
                ("payload.data.Phone".into(), "8999".into()),
                ("payload.name".into(), "Contact".into()),
            ]
        );
    }

    #[tokio::test]
    async fn json_too_wide_or_deep_to_unnest_keeps_its_top_level() {
        let wide: serde_json::Map<String, serde_json::Value> = (0..MAX_FIELDS + 1)
            .map(|i| (format!("f{i}"), serde_json::Value::from(i)))
            .collect();
        let body = serde_json::json!({"phone": "8999", "rest": wide}).to_string();
        let parsed = parse_body(Some("application/json"), body.as_bytes())
            .await
            .unwrap();
        assert_eq!(parsed.fields.len(), 2);
        assert_eq!(parsed.fields[0], ("phone".into(), "8999".into()));

        let deep = (0..20).fold(serde_json::json!("x"), |v, _| serde_json::json!({ "a": v }));
        let body = serde_json::json!({"email": "a@b.ru", "deep": deep}).to_string();
        let parsed = parse_body(Some("application/json"), body.as_bytes())
            .await
            .unwrap();
        assert_eq!(parsed.fields.len(), 2);
        assert_eq!(parsed.fields[1], ("email".into(), "a@b.ru".into()));
    }

    #[tokio::test]
    async fn unlabelled_bodies_are_sniffed() {
        let parsed = parse_body(None, b"phone=1").await.unwrap();
        assert_eq!(parsed.fields, vec![("phone".into(), "1".into())]);
        let parsed = parse_body(Some("text/plain"), br#" {"phone":"1"}"#)
            .await
            .unwrap();
        assert_eq!(parsed.fields, vec![("phone".into(), "1".into())]);
    }
}
