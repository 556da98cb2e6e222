use http::StatusCode;
use thiserror::Error;

/// Everything a Callback request can be refused for. Each maps to one HTTP
/// status and a stable code; VK redelivers anything not answered `ok`, so
/// only what may succeed later (the store) or is not VK's (a forged
/// request) is refused: an event VK really sent but that cannot be read is
/// stored as invalid and answered `ok`. Messages never carry secrets.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum VkError {
    #[error("unknown vk channel {0:?}")]
    UnknownChannel(String),
    #[error("this channel reads VK by long poll; it takes no Callback requests")]
    NotCallback,
    #[error("body too large: the limit is {0} bytes")]
    TooLarge(usize),
    #[error("the body was cut off: {0}")]
    Interrupted(String),
    #[error("truncated JSON: {0}")]
    TruncatedJson(String),
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("secret mismatch")]
    SecretMismatch,
    #[error("group_id mismatch: this channel reads community {expected}")]
    GroupMismatch { expected: u64 },
    #[error("store unavailable; retry later")]
    Unavailable,
}

impl VkError {
    pub fn status(&self) -> StatusCode {
        match self {
            VkError::UnknownChannel(_) => StatusCode::NOT_FOUND,
            VkError::NotCallback => StatusCode::CONFLICT,
            VkError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            VkError::Interrupted(_) | VkError::TruncatedJson(_) | VkError::InvalidJson(_) => {
                StatusCode::BAD_REQUEST
            }
            VkError::SecretMismatch | VkError::GroupMismatch { .. } => StatusCode::FORBIDDEN,
            VkError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            VkError::UnknownChannel(_) => "unknown_channel",
            VkError::NotCallback => "not_callback",
            VkError::TooLarge(_) => "body_too_large",
            VkError::Interrupted(_) => "body_interrupted",
            VkError::TruncatedJson(_) | VkError::InvalidJson(_) => "malformed_json",
            VkError::SecretMismatch => "secret_mismatch",
            VkError::GroupMismatch { .. } => "group_mismatch",
            VkError::Unavailable => "unavailable",
        }
    }
}
