//! VK API method calls: `POST {api_url}{method}` with `v` and
//! `access_token` in the form body (never in the URL, which error messages
//! and proxies show), through a per-channel rate limiter.
//!
//! VK answers HTTP 200 for API errors too, with
//! `{"error": {"error_code", "error_msg"}}`; [`ApiError::retryable`] says
//! which of them heal by waiting (6 too many requests, 9 flood control,
//! 10 internal error, 1 unknown) and [`ApiError::into_connector`] which
//! stop the channel (5 authorization failed).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use leadgate_connector::{ConnectorError, Secret};
use serde_json::Value;

use crate::config::{API_VERSION, VkChannel};

/// Slowest an API answer may be before it counts as a network failure.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Pauses before the retries of a call that failed with a retryable error.
const RETRY_PAUSES: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("VK API unreachable: {0}")]
    Network(String),
    #[error("VK API error {code}: {message}")]
    Vk { code: i64, message: String },
    #[error("VK API answer not understood: {0}")]
    Malformed(String),
}

impl ApiError {
    pub fn code(&self) -> Option<i64> {
        match self {
            ApiError::Vk { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the same call may succeed after a pause.
    pub fn retryable(&self) -> bool {
        match self {
            ApiError::Network(_) | ApiError::Malformed(_) => true,
            ApiError::Vk { code, .. } => matches!(code, 1 | 6 | 9 | 10),
        }
    }

    /// Authorization failed: a revoked or wrong token, or a community
    /// token used where it cannot be (27, 28).
    pub fn is_auth(&self) -> bool {
        matches!(self.code(), Some(5 | 27 | 28))
    }

    pub fn into_connector(self) -> ConnectorError {
        if self.is_auth() {
            ConnectorError::Auth(format!(
                "{self}; issue a new community token (community settings → API usage → Access tokens)"
            ))
        } else if self.retryable() {
            match self {
                ApiError::Network(_) => ConnectorError::Network(self.to_string()),
                _ => ConnectorError::Peer(self.to_string()),
            }
        } else {
            ConnectorError::Config(self.to_string())
        }
    }
}

/// The API as one channel's token sees it.
pub struct VkApi {
    http: reqwest::Client,
    base: String,
    token: Secret,
    limiter: DefaultDirectRateLimiter,
}

impl VkApi {
    /// `None` when the channel has no token.
    pub fn for_channel(channel: &VkChannel) -> Option<VkApi> {
        let token = channel.token.clone()?;
        let mut base = channel.settings.api_url.trim().to_owned();
        if !base.ends_with('/') {
            base.push('/');
        }
        let per_second = NonZeroU32::new(channel.settings.api_requests_per_second.max(1))
            .unwrap_or(NonZeroU32::MIN);
        // The long poll's own requests wait up to 90 s: they get their own
        // timeout, the client none.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("leadgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .ok()?;
        Some(VkApi {
            http,
            base,
            token,
            // No burst: VK counts per second, a burst of 3 in 10 ms
            // followed by more in the next 990 ms is already too many.
            limiter: RateLimiter::direct(
                Quota::per_second(per_second).allow_burst(NonZeroU32::MIN),
            ),
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// One call, once. `Ok` is the `response` member.
    pub async fn call_once(
        &self,
        method: &str,
        params: &[(&str, String)],
    ) -> Result<Value, ApiError> {
        self.limiter.until_ready().await;
        let mut form: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        form.push(("v", API_VERSION));
        form.push(("access_token", self.token.expose()));
        let response = self
            .http
            .post(format!("{}{method}", self.base))
            .form(&form)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| ApiError::Network(e.without_url().to_string()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| ApiError::Network(e.without_url().to_string()))?;
        if !status.is_success() {
            return Err(ApiError::Network(format!("{method}: HTTP {status}")));
        }
        parse_answer(method, &body)
    }

    /// A call retried after a pause while its error is retryable (6, 9,
    /// 10, network); the last error otherwise.
    pub async fn call(&self, method: &str, params: &[(&str, String)]) -> Result<Value, ApiError> {
        let mut pauses = RETRY_PAUSES.iter();
        loop {
            match self.call_once(method, params).await {
                Err(e) if e.retryable() => match pauses.next() {
                    Some(pause) => {
                        tracing::debug!(method, error = %e, retry_in = ?pause, "VK API call failed; retrying");
                        tokio::time::sleep(*pause).await;
                    }
                    None => return Err(e),
                },
                other => return other,
            }
        }
    }
}

/// Read `{"response": …}` or `{"error": {…}}`.
pub fn parse_answer(method: &str, body: &[u8]) -> Result<Value, ApiError> {
    let mut answer: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::Malformed(format!("{method}: not JSON: {e}")))?;
    if let Some(error) = answer.get("error") {
        let code = error.get("error_code").and_then(Value::as_i64).unwrap_or(0);
        let message = error
            .get("error_msg")
            .and_then(Value::as_str)
            .unwrap_or("no error_msg")
            .to_owned();
        return Err(ApiError::Vk {
            code,
            message: format!("{method}: {message}"),
        });
    }
    match answer.get_mut("response") {
        Some(response) => Ok(response.take()),
        None => Err(ApiError::Malformed(format!(
            "{method}: neither `response` nor `error`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_errors_are_told_apart() {
        let ok = parse_answer("users.get", br#"{"response":[{"id":1}]}"#).unwrap();
        assert_eq!(ok[0]["id"], 1);
        let six = parse_answer(
            "users.get",
            br#"{"error":{"error_code":6,"error_msg":"Too many requests per second","request_params":[]}}"#,
        )
        .unwrap_err();
        assert_eq!(six.code(), Some(6));
        assert!(six.retryable());
        assert!(!six.is_auth());
        assert!(six.clone().into_connector().is_transient());
        let five = ApiError::Vk {
            code: 5,
            message: "User authorization failed".into(),
        };
        assert!(five.is_auth() && !five.retryable());
        assert!(!five.into_connector().is_transient());
        let hundred = ApiError::Vk {
            code: 100,
            message: "bad param".into(),
        };
        assert!(!hundred.into_connector().is_transient());
        assert!(matches!(
            parse_answer("x", b"{\"response\":"),
            Err(ApiError::Malformed(_))
        ));
        assert!(matches!(
            parse_answer("x", b"{}"),
            Err(ApiError::Malformed(_))
        ));
    }
}
