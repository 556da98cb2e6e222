//! Calls to the Bot API through teloxide's request layer.
//!
//! `getUpdates` and `setWebhook` go through payloads of our own: updates
//! come back as raw JSON values (one unreadable update must not fail its
//! batch), and `setWebhook` is sent as JSON (teloxide's payload is built for
//! multipart certificate uploads).

use std::time::Duration;

use leadgate_connector::ConnectorError;
use serde::Serialize;
use serde_json::Value;
use teloxide_core::requests::{JsonRequest, Payload, Request};
use teloxide_core::types::True;
use teloxide_core::{ApiError, Bot, RequestError};

use crate::config::TelegramChannel;

/// How long a call other than a long poll may take.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A bot client for `channel` whose requests time out after `timeout`.
pub(crate) fn bot(channel: &TelegramChannel, timeout: Duration) -> Result<Bot, ConnectorError> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| ConnectorError::Config(format!("cannot build an HTTP client: {e}")))?;
    Ok(Bot::with_client(channel.token.expose(), client).set_api_url(channel.api_url.clone()))
}

/// `getUpdates` with the updates left as JSON.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RawGetUpdates {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    pub limit: u8,
    pub timeout: u32,
}

impl Payload for RawGetUpdates {
    type Output = Vec<Value>;
    const NAME: &'static str = "getUpdates";

    fn timeout_hint(&self) -> Option<Duration> {
        Some(Duration::from_secs(u64::from(self.timeout)))
    }
}

/// `setWebhook` as JSON.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SetWebhookJson {
    pub url: String,
    pub secret_token: String,
    pub drop_pending_updates: bool,
}

impl Payload for SetWebhookJson {
    type Output = True;
    const NAME: &'static str = "setWebhook";
}

/// `deleteWebhook` keeping the updates Telegram holds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeleteWebhookJson {
    pub drop_pending_updates: bool,
}

impl Payload for DeleteWebhookJson {
    type Output = True;
    const NAME: &'static str = "deleteWebhook";
}

/// `getMe`, read only for the bot's username.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GetMeJson {}

impl Payload for GetMeJson {
    type Output = Value;
    const NAME: &'static str = "getMe";
}

/// `getWebhookInfo`, read only for the URL.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GetWebhookInfoJson {}

impl Payload for GetWebhookInfoJson {
    type Output = Value;
    const NAME: &'static str = "getWebhookInfo";
}

pub(crate) async fn call<P>(bot: &Bot, payload: P) -> Result<P::Output, RequestError>
where
    P: Payload + Serialize + Send + 'static,
    P::Output: serde::de::DeserializeOwned + Send,
{
    JsonRequest::new(bot.clone(), payload).send().await
}

/// What went wrong with a call, as the poller must react to it.
#[derive(Debug)]
pub(crate) enum Failure {
    /// 429: wait this long, then repeat the same call.
    RetryAfter(Duration),
    /// 409 because a webhook is set while we poll.
    WebhookActive,
    /// Anything else, mapped for the supervisor.
    Stop(ConnectorError),
}

/// Telegram puts the token in the URL path, so transport errors that quote
/// the URL would print it; the token never leaves this function.
fn redact(text: &str, token: &str) -> String {
    if token.is_empty() {
        return text.to_owned();
    }
    text.replace(token, "<token>")
}

/// Map a teloxide error; `method` names the call in the message.
pub(crate) fn failure(e: RequestError, method: &str, token: &str) -> Failure {
    let stop = |e: ConnectorError| Failure::Stop(e);
    match e {
        RequestError::RetryAfter(s) => Failure::RetryAfter(s.duration()),
        RequestError::Api(ApiError::CantGetUpdates) => Failure::WebhookActive,
        RequestError::Api(ApiError::InvalidToken) => stop(ConnectorError::Auth(format!(
            "{method}: Telegram refused the bot token (401 Unauthorized); check `token` (revoked or mistyped?)"
        ))),
        RequestError::Api(ApiError::TerminatedByOtherGetUpdates) => {
            stop(ConnectorError::Config(format!(
                "{method}: 409 Conflict: another program polls this bot with getUpdates; only one consumer per bot token may run (stop the other one)"
            )))
        }
        RequestError::Api(
            e @ (ApiError::WebhookRequireHttps
            | ApiError::BadWebhookPort
            | ApiError::UnknownHost
            | ApiError::CantParseUrl),
        ) => stop(ConnectorError::Config(format!(
            "{method}: Telegram refused `webhook_url`: {e}"
        ))),
        RequestError::Api(ApiError::Unknown(description)) => {
            let description = redact(&description, token);
            if description.starts_with("Bad Request: bad webhook") {
                stop(ConnectorError::Config(format!(
                    "{method}: Telegram refused `webhook_url`: {description}"
                )))
            } else if description.starts_with("Conflict") {
                if description.contains("webhook") {
                    Failure::WebhookActive
                } else {
                    stop(ConnectorError::Config(format!(
                        "{method}: 409 {description}"
                    )))
                }
            } else if description.starts_with("Unauthorized") || description == "Not Found" {
                stop(ConnectorError::Auth(format!(
                    "{method}: Telegram refused the bot token ({description}); check `token`"
                )))
            } else {
                stop(ConnectorError::Peer(format!(
                    "{method}: Telegram answered {description:?}"
                )))
            }
        }
        RequestError::Api(other) => stop(ConnectorError::Peer(format!(
            "{method}: Telegram answered {:?}",
            redact(&other.to_string(), token)
        ))),
        RequestError::MigrateToChatId(_) => stop(ConnectorError::Peer(format!(
            "{method}: the chat moved to a supergroup"
        ))),
        RequestError::Network(e) => stop(ConnectorError::Network(format!(
            "{method}: {}",
            redact(&e.to_string(), token)
        ))),
        RequestError::InvalidJson { source, raw } => {
            let mut raw = redact(&raw, token);
            if raw.len() > 200 {
                let mut cut = 200;
                while !raw.is_char_boundary(cut) {
                    cut -= 1;
                }
                raw.truncate(cut);
                raw.push('…');
            }
            stop(ConnectorError::Peer(format!(
                "{method}: the answer is not a Bot API response ({source}): {raw:?}"
            )))
        }
        RequestError::Io(e) => stop(ConnectorError::Network(format!("{method}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_what_the_supervisor_needs() {
        let token = "123:secret";
        let auth = failure(RequestError::Api(ApiError::InvalidToken), "getMe", token);
        assert!(matches!(auth, Failure::Stop(ConnectorError::Auth(_))));
        let other = failure(
            RequestError::Api(ApiError::TerminatedByOtherGetUpdates),
            "getUpdates",
            token,
        );
        let Failure::Stop(e) = other else {
            panic!("a conflict stops the session")
        };
        assert!(e.is_permanent() && e.to_string().contains("409"), "{e}");
        assert!(matches!(
            failure(
                RequestError::Api(ApiError::CantGetUpdates),
                "getUpdates",
                token
            ),
            Failure::WebhookActive
        ));
        let unknown = failure(
            RequestError::Api(ApiError::Unknown("Bad Gateway 123:secret".into())),
            "getUpdates",
            token,
        );
        let Failure::Stop(e) = unknown else {
            panic!("unknown errors stop the session")
        };
        assert!(e.is_transient() && !e.to_string().contains("secret"), "{e}");
        let Failure::Stop(e) = failure(
            RequestError::Api(ApiError::WebhookRequireHttps),
            "setWebhook",
            token,
        ) else {
            panic!("a refused webhook URL stops the session")
        };
        assert!(
            e.is_permanent() && e.to_string().contains("webhook_url"),
            "{e}"
        );
    }
}
