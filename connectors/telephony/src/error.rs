use http::StatusCode;
use thiserror::Error;

/// Everything a telephony webhook can be refused for. Each maps to one HTTP
/// status and a message naming the problem, so a PBX integrator reading the
/// provider's delivery log sees what to fix. Messages never carry secrets.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TelephonyError {
    #[error("unknown telephony channel {0:?}")]
    UnknownChannel(String),
    #[error("no such endpoint: {0}")]
    UnknownPath(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("body too large: the limit is {0} bytes")]
    TooLarge(usize),
    #[error("the body was cut off: {0}")]
    Interrupted(String),
    #[error("too many fields: the limit is {0}")]
    TooManyFields(usize),
    /// The request is not from the PBX (wrong key, sign, signature or
    /// token, or none at all).
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("invalid UTF-8 in {0}")]
    InvalidUtf8(String),
    /// Mango's `json` form field does not parse.
    #[error("json field is not valid JSON: {0}")]
    InvalidJsonField(String),
    /// A JSON request body does not parse.
    #[error("body is not valid JSON: {0}")]
    InvalidJsonBody(String),
    #[error(
        "unsupported content type {0:?}; send application/x-www-form-urlencoded or application/json"
    )]
    UnsupportedContentType(String),
    #[error("missing field `{0}`")]
    MissingField(String),
    #[error("field `{field}` {problem}")]
    InvalidField { field: String, problem: String },
    #[error("store unavailable; retry later")]
    Unavailable,
}

impl TelephonyError {
    pub fn status(&self) -> StatusCode {
        match self {
            TelephonyError::UnknownChannel(_) | TelephonyError::UnknownPath(_) => {
                StatusCode::NOT_FOUND
            }
            TelephonyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            TelephonyError::TooLarge(_) | TelephonyError::TooManyFields(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            TelephonyError::BadSignature(_) => StatusCode::UNAUTHORIZED,
            TelephonyError::InvalidUtf8(_)
            | TelephonyError::Interrupted(_)
            | TelephonyError::InvalidJsonField(_)
            | TelephonyError::InvalidJsonBody(_)
            | TelephonyError::MissingField(_)
            | TelephonyError::InvalidField { .. } => StatusCode::BAD_REQUEST,
            TelephonyError::UnsupportedContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            TelephonyError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            TelephonyError::UnknownChannel(_) => "unknown_channel",
            TelephonyError::UnknownPath(_) => "unknown_path",
            TelephonyError::MethodNotAllowed(_) => "method_not_allowed",
            TelephonyError::TooLarge(_) | TelephonyError::TooManyFields(_) => "body_too_large",
            TelephonyError::BadSignature(_) => "bad_signature",
            TelephonyError::InvalidUtf8(_) => "invalid_utf8",
            TelephonyError::InvalidJsonField(_) | TelephonyError::InvalidJsonBody(_) => {
                "malformed_json"
            }
            TelephonyError::UnsupportedContentType(_) => "unsupported_content_type",
            TelephonyError::Interrupted(_) => "body_interrupted",
            TelephonyError::MissingField(_) => "missing_field",
            TelephonyError::InvalidField { .. } => "invalid_field",
            TelephonyError::Unavailable => "unavailable",
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        TelephonyError::InvalidField {
            field: field.into(),
            problem: problem.into(),
        }
    }
}
