//! Sending one message: Telegram through teloxide-core's request API (like
//! connectors/telegram, no dispatcher), e-mail through lettre's SMTP client
//! (tokio, rustls).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use teloxide_core::prelude::Requester;
use teloxide_core::requests::{JsonRequest, Payload, Request};
use teloxide_core::types::ChatId;
use teloxide_core::{ApiError, Bot, RequestError};

use super::config::{EmailSettings, SmtpSecurity, TelegramSettings};

/// Why a send failed, and whether trying again can help.
#[derive(Debug)]
pub struct SendError {
    pub message: String,
    /// The peer refused the message for good (unknown chat, mailbox
    /// rejected with 5xx): retrying would only repeat it.
    pub permanent: bool,
    /// The peer asked to wait this long.
    pub retry_after: Option<Duration>,
}

impl SendError {
    fn transient(message: String) -> SendError {
        SendError {
            message,
            permanent: false,
            retry_after: None,
        }
    }
}

/// Telegram caps a message at 4096 characters.
const TELEGRAM_MAX_CHARS: usize = 4000;

/// `getMe` read as JSON: only the username matters, and teloxide's `Me`
/// refuses answers without the newer capability fields.
#[derive(Debug, Clone, serde::Serialize)]
struct GetMeJson {}

impl Payload for GetMeJson {
    type Output = serde_json::Value;
    const NAME: &'static str = "getMe";
}

pub struct TelegramSender {
    bot: Bot,
    token: String,
    /// Telegram's limits for a bot: about one message a second to one chat
    /// (short bursts pass) and about 30 a second in all. Pacing here keeps a
    /// burst of leads from turning into a burst of 429s.
    per_chat: DefaultKeyedRateLimiter<i64>,
    overall: DefaultDirectRateLimiter,
}

/// Messages to one chat sent at once before pacing starts.
const CHAT_BURST: u32 = 3;
/// Below Telegram's ~30 a second for a bot, with room for other use.
const BOT_PER_SECOND: u32 = 25;
/// Longest a send waits for its turn. A claimed row must be sent well
/// within its claim (twice the timeout plus 15 s), or another sender could
/// take it over; past this wait it is rescheduled instead.
const MAX_PACING_WAIT: Duration = Duration::from_secs(5);
/// Chats remembered by the pacer before the idle ones are dropped.
const PACED_CHATS: usize = 10_000;

impl TelegramSender {
    pub fn new(s: &TelegramSettings) -> Result<TelegramSender, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(s.timeout)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let burst = NonZeroU32::new(CHAT_BURST).unwrap_or(NonZeroU32::MIN);
        let overall = NonZeroU32::new(BOT_PER_SECOND).unwrap_or(NonZeroU32::MIN);
        Ok(TelegramSender {
            bot: Bot::with_client(s.token.expose(), client).set_api_url(s.api_url.clone()),
            token: s.token.expose().to_owned(),
            per_chat: RateLimiter::keyed(Quota::per_second(NonZeroU32::MIN).allow_burst(burst)),
            overall: RateLimiter::direct(Quota::per_second(overall)),
        })
    }

    /// Wait for this chat's turn (and the bot's), at most
    /// [`MAX_PACING_WAIT`]; a retry in a second when that is not enough.
    async fn paced(&self, chat: i64) -> Result<(), SendError> {
        if self.per_chat.len() > PACED_CHATS {
            self.per_chat.retain_recent();
        }
        let turn = async {
            self.per_chat.until_key_ready(&chat).await;
            self.overall.until_ready().await;
        };
        tokio::time::timeout(MAX_PACING_WAIT, turn)
            .await
            .map_err(|_| SendError {
                message: format!(
                    "paced: more messages for chat {chat} than Telegram takes (about one a second); \
                     sending later"
                ),
                permanent: false,
                retry_after: Some(Duration::from_secs(1)),
            })
    }

    pub async fn send(&self, chat: &str, text: &str) -> Result<(), SendError> {
        let chat: i64 = chat.parse().map_err(|_| SendError {
            message: format!("{chat:?} is not a Telegram chat id"),
            permanent: true,
            retry_after: None,
        })?;
        let text: String = text.chars().take(TELEGRAM_MAX_CHARS).collect();
        self.paced(chat).await?;
        match self.bot.send_message(ChatId(chat), text).send().await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.failure(e)),
        }
    }

    /// `getMe`: whether the token works; the bot's @username.
    pub async fn check(&self) -> Result<String, String> {
        match JsonRequest::new(self.bot.clone(), GetMeJson {})
            .send()
            .await
        {
            Ok(me) => Ok(format!(
                "@{}",
                me.get("username").and_then(|u| u.as_str()).unwrap_or("?")
            )),
            Err(e) => Err(self.failure(e).message),
        }
    }

    fn failure(&self, e: RequestError) -> SendError {
        // Transport errors may quote the URL, which holds the token.
        let message = e.to_string().replace(&self.token, "<token>");
        match e {
            RequestError::RetryAfter(after) => SendError {
                message,
                permanent: false,
                retry_after: Some(after.duration()),
            },
            // Telegram's own refusals (blocked by the user, chat not found,
            // …) do not change by asking again; an error it does not name
            // (a 5xx with a description) may.
            RequestError::Api(ApiError::Unknown(_)) => SendError::transient(message),
            RequestError::Api(_) => SendError {
                message,
                permanent: true,
                retry_after: None,
            },
            _ => SendError::transient(message),
        }
    }
}

pub struct EmailSender {
    smtp: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl EmailSender {
    pub fn new(s: &EmailSettings) -> Result<EmailSender, String> {
        // The public web PKI roots (webpki-roots) and the CAs of
        // `ca_file`; the certificate must name `host`.
        let tls = || {
            s.ca_certs
                .iter()
                .fold(TlsParameters::builder(s.host.clone()), |b, cert| {
                    b.add_root_certificate(cert.clone())
                })
                .build_rustls()
                .map_err(|e| format!("SMTP TLS setup: {e}"))
        };
        let builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host);
        let builder = match s.security {
            SmtpSecurity::Starttls => builder.tls(Tls::Required(tls()?)),
            SmtpSecurity::Tls => builder.tls(Tls::Wrapper(tls()?)),
            SmtpSecurity::Plain => builder,
        };
        let mut builder = builder.port(s.port).timeout(Some(s.timeout));
        if let Some((user, password)) = &s.credentials {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        Ok(EmailSender {
            smtp: builder.build(),
            from: s.from.clone(),
        })
    }

    /// Connect (TLS as configured), EHLO, log in if configured, QUIT.
    pub async fn check(&self) -> Result<(), String> {
        match self.smtp.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err("the server did not answer NOOP".into()),
            Err(e) => Err(format!("SMTP: {e}")),
        }
    }

    pub async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), SendError> {
        let permanent = |message: String| SendError {
            message,
            permanent: true,
            retry_after: None,
        };
        let to: Mailbox = to
            .parse()
            .map_err(|e| permanent(format!("{to:?} is not an address: {e}")))?;
        // A subject is one line.
        let subject: String = subject
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_owned())
            .map_err(|e| permanent(format!("cannot build the message: {e}")))?;
        match self.smtp.send(message).await {
            Ok(_) => Ok(()),
            Err(e) => Err(SendError {
                message: format!("SMTP: {e}"),
                permanent: e.is_permanent(),
                retry_after: None,
            }),
        }
    }
}
