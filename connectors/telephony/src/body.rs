//! Request bodies: `application/x-www-form-urlencoded` (Mango, Zadarma,
//! most templated webhooks) and JSON (generic webhooks). Strict where
//! leniency would corrupt data (bytes that are not UTF-8 are refused, not
//! replaced); never panics.

use leadgate_connector::urlencoded;
use serde_json::Value;

use crate::error::TelephonyError;

/// Most fields a webhook may carry; more is abuse, not a PBX.
pub const MAX_FIELDS: usize = 200;

/// Decoded form fields in the order sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    /// Decode `a=1&b=2`. The same decoding serves query strings.
    pub fn parse(body: &[u8]) -> Result<Form, TelephonyError> {
        let pairs = urlencoded::decode_pairs(body, MAX_FIELDS).map_err(|e| match e {
            urlencoded::UrlencodedError::InvalidUtf8(what) => TelephonyError::InvalidUtf8(what),
            urlencoded::UrlencodedError::TooManyFields(n) => TelephonyError::TooManyFields(n),
        })?;
        Ok(Form { pairs })
    }

    /// The field's value exactly as sent (what signatures are computed
    /// over). A repeated field gives its last value, as PHP's `$_POST`
    /// (which the providers' reference code reads) does.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The field's value trimmed, `None` when absent or blank.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.raw(name).map(str::trim).filter(|v| !v.is_empty())
    }
}

/// A generic webhook's fields, from a form or a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Form(Form),
    Json(Value),
}

impl Payload {
    /// The text of a field: a form name, or a dotted JSON path (`call.id`,
    /// `legs.0.number`). Numbers and booleans read as text; blank, null,
    /// objects and arrays as nothing. Form names match exactly first, then
    /// case-insensitively.
    pub fn get(&self, name: &str) -> Option<String> {
        let name = name.trim();
        if name.is_empty() {
            return None;
        }
        let text = match self {
            Payload::Form(form) => form.raw(name).map(str::to_owned).or_else(|| {
                form.pairs
                    .iter()
                    .rev()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            }),
            Payload::Json(value) => {
                // A key that itself contains dots wins over the path reading.
                let found = match value.get(name) {
                    Some(v) => Some(v),
                    None => name.split('.').try_fold(value, |v, seg| match v {
                        Value::Object(map) => map.get(seg),
                        Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
                        _ => None,
                    }),
                };
                match found? {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    Value::Null | Value::Array(_) | Value::Object(_) => None,
                }
            }
        }?;
        let trimmed = text.trim();
        (!trimmed.is_empty()).then(|| trimmed.to_owned())
    }
}

/// Decode a generic webhook body by its content type (sniffing JSON when
/// unlabelled).
pub fn parse_payload(content_type: Option<&str>, body: &[u8]) -> Result<Payload, TelephonyError> {
    let essence = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = match essence.as_str() {
        "application/json" => true,
        e if e.starts_with("application/") && e.ends_with("+json") => true,
        "application/x-www-form-urlencoded" => false,
        "" | "text/plain" => body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
        other => return Err(TelephonyError::UnsupportedContentType(other.to_owned())),
    };
    if !json {
        return Form::parse(body).map(Payload::Form);
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| TelephonyError::InvalidUtf8("the JSON body".into()))?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| TelephonyError::InvalidJsonBody(e.to_string()))?;
    if !value.is_object() {
        return Err(TelephonyError::InvalidJsonBody(
            "expected a JSON object".into(),
        ));
    }
    Ok(Payload::Json(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_keep_the_last_value_and_refuse_bad_utf8() {
        let form = Form::parse(b"a=1&b=&a=2&c").unwrap();
        assert_eq!(form.raw("a"), Some("2"));
        assert_eq!(form.raw("b"), Some(""));
        assert_eq!(form.value("b"), None);
        assert_eq!(form.raw("c"), Some(""));
        assert!(matches!(
            Form::parse(b"a=%FF"),
            Err(TelephonyError::InvalidUtf8(_))
        ));
        let many = "a=1&".repeat(MAX_FIELDS + 1);
        assert!(matches!(
            Form::parse(many.as_bytes()),
            Err(TelephonyError::TooManyFields(_))
        ));
    }

    #[test]
    fn json_paths_reach_nested_values() {
        let p = parse_payload(
            Some("application/json"),
            br#"{"call":{"id":7,"legs":[{"n":"101"}]},"a.b":"dotted","ok":true,"no":null}"#,
        )
        .unwrap();
        assert_eq!(p.get("call.id").as_deref(), Some("7"));
        assert_eq!(p.get("call.legs.0.n").as_deref(), Some("101"));
        assert_eq!(p.get("a.b").as_deref(), Some("dotted"));
        assert_eq!(p.get("ok").as_deref(), Some("true"));
        assert_eq!(p.get("no"), None);
        assert_eq!(p.get("call"), None);
        assert_eq!(p.get("call.legs.9.n"), None);
        assert_eq!(p.get(""), None);
    }

    #[test]
    fn payload_kinds() {
        assert!(matches!(
            parse_payload(None, b" {\"a\":1}"),
            Ok(Payload::Json(_))
        ));
        assert!(matches!(parse_payload(None, b"a=1"), Ok(Payload::Form(_))));
        assert!(matches!(
            parse_payload(Some("application/json"), b"[1]"),
            Err(TelephonyError::InvalidJsonBody(_))
        ));
        assert!(matches!(
            parse_payload(Some("multipart/form-data; boundary=x"), b""),
            Err(TelephonyError::UnsupportedContentType(_))
        ));
        let form = parse_payload(Some("application/x-www-form-urlencoded"), b"Caller=79").unwrap();
        assert_eq!(form.get("caller").as_deref(), Some("79"));
    }
}
