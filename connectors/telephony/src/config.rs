use std::fmt;
use std::path::PathBuf;

use chrono::FixedOffset;
use http::HeaderName;
use leadgate_connector::{ChannelId, Secret, SecretSource};
use serde::Deserialize;

/// Which PBX speaks to the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TelephonyProvider {
    /// Mango Office VPBX: `POST {base}/events/call|summary|recording`,
    /// form fields `vpbx_api_key`, `sign`, `json`.
    Mango,
    /// Zadarma: `POST {base}/` form fields `event=NOTIFY_*`, `Signature`
    /// header; `GET {base}/?zd_echo=…` when the URL is saved.
    Zadarma,
    /// Any other PBX (UIS, Sipuni, Beeline, …): a templated JSON or form
    /// webhook read through `[telephony.fields]` and `[telephony.values]`.
    Generic,
}

impl TelephonyProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            TelephonyProvider::Mango => "mango",
            TelephonyProvider::Zadarma => "zadarma",
            TelephonyProvider::Generic => "generic",
        }
    }
}

impl fmt::Display for TelephonyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `[telephony]` table of a `kind = "telephony"` channel file.
///
/// Secrets may be given inline, as a file (`*_file`, relative to the
/// configuration folder) or as an environment variable (`*_env`); at most one
/// of the three per secret.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelephonySettings {
    pub provider: TelephonyProvider,

    /// Mango: the VPBX API key (`vpbx_api_key`) every request carries.
    #[serde(default)]
    pub api_key: Option<Secret>,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Mango: the API salt (signature key) `sign` is computed with.
    #[serde(default)]
    pub api_salt: Option<Secret>,
    #[serde(default)]
    pub api_salt_file: Option<PathBuf>,
    #[serde(default)]
    pub api_salt_env: Option<String>,

    /// Zadarma: the API secret the `Signature` header is an HMAC with.
    /// Zadarma signs only when an API key pair exists in the account; unset
    /// here, signatures are not checked (a warning is logged).
    #[serde(default)]
    pub api_secret: Option<Secret>,
    #[serde(default)]
    pub api_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub api_secret_env: Option<String>,

    /// Generic: a shared token the PBX sends in `token_header` (or as
    /// `?token=` in the URL when its template cannot set headers).
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub token_env: Option<String>,
    /// Generic: header carrying the token; default `X-Leadgate-Key`.
    #[serde(default)]
    pub token_header: Option<String>,
    /// Generic: key of an HMAC-SHA256 over the raw body, sent hex-encoded
    /// (optionally prefixed `sha256=`) in `hmac_header`.
    #[serde(default)]
    pub hmac_secret: Option<Secret>,
    #[serde(default)]
    pub hmac_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub hmac_secret_env: Option<String>,
    /// Generic: header carrying the HMAC; default `X-Signature`.
    #[serde(default)]
    pub hmac_header: Option<String>,

    /// Numbers of at most this many digits are the PBX's own extensions,
    /// not outside phone numbers.
    #[serde(default = "default_internal_number_max_digits")]
    pub internal_number_max_digits: usize,
    /// Largest accepted body in bytes (413 above it).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// UTC offset of wall-clock times the PBX sends without one (Zadarma's
    /// `call_start` is in the account's time zone; generic templates), e.g.
    /// `"+03:00"`. Default `"+00:00"`.
    #[serde(default)]
    pub time_offset: Option<String>,

    /// Generic: which request fields hold what.
    #[serde(default)]
    pub fields: Option<GenericFields>,
    /// Generic: which values mean what.
    #[serde(default)]
    pub values: Option<GenericValues>,
}

fn default_internal_number_max_digits() -> usize {
    5
}

fn default_max_body_bytes() -> usize {
    64 * 1024
}

/// `[telephony.fields]`: the names of the request fields (form names or
/// JSON paths, `call.id` for nested objects, `legs.0.id` for arrays) that
/// hold each fact. An empty name turns a field off.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GenericFields {
    /// The PBX's id of the whole call (required in every request).
    pub call_id: String,
    /// A unique id of this event, if the PBX sends one (dedupe key).
    pub event_id: String,
    /// What happened (mapped through `values.ringing`/`answered`/…).
    pub event: String,
    /// Which way the call goes (mapped through `values.inbound`/…).
    pub direction: String,
    pub caller: String,
    pub callee: String,
    /// The organisation's line dialled or used.
    pub line: String,
    /// The employee's extension.
    pub extension: String,
    /// When this event happened.
    pub timestamp: String,
    pub start_time: String,
    pub answer_time: String,
    pub end_time: String,
    /// Talk time in whole seconds.
    pub duration: String,
    /// How the call ended (`answered`, `busy`, …).
    pub disposition: String,
    pub recording_url: String,
}

impl Default for GenericFields {
    fn default() -> Self {
        GenericFields {
            call_id: "call_id".into(),
            event_id: "event_id".into(),
            event: "event".into(),
            direction: "direction".into(),
            caller: "caller".into(),
            callee: "callee".into(),
            line: "line".into(),
            extension: "extension".into(),
            timestamp: "timestamp".into(),
            start_time: "start_time".into(),
            answer_time: "answer_time".into(),
            end_time: "end_time".into(),
            duration: "duration".into(),
            disposition: "disposition".into(),
            recording_url: "recording_url".into(),
        }
    }
}

/// `[telephony.values]`: field values (compared case-insensitively) that
/// mean each direction and phase.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GenericValues {
    pub inbound: Vec<String>,
    pub outbound: Vec<String>,
    pub internal: Vec<String>,
    pub ringing: Vec<String>,
    pub answered: Vec<String>,
    pub ended: Vec<String>,
    pub recording: Vec<String>,
    /// `disposition` values of a call someone answered; any other
    /// disposition of an ended call means it was not answered.
    pub answered_dispositions: Vec<String>,
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

impl Default for GenericValues {
    fn default() -> Self {
        GenericValues {
            inbound: strings(&["in", "inbound", "incoming", "1"]),
            outbound: strings(&["out", "outbound", "outgoing", "2"]),
            internal: strings(&["internal", "local", "0"]),
            ringing: strings(&[
                "ringing",
                "ring",
                "start",
                "call_start",
                "appeared",
                "incoming",
            ]),
            answered: strings(&["answered", "answer", "connected", "call_answered"]),
            ended: strings(&[
                "ended",
                "end",
                "hangup",
                "call_end",
                "disconnected",
                "completed",
            ]),
            recording: strings(&["recording", "record", "record_ready"]),
            answered_dispositions: strings(&["answered", "answer", "success", "completed"]),
        }
    }
}

/// How requests of a channel prove they come from its PBX.
#[derive(Debug, Clone)]
pub(crate) enum ChannelAuth {
    Mango {
        key: Secret,
        salt: Secret,
    },
    Zadarma {
        secret: Option<Secret>,
    },
    Generic {
        token: Option<(HeaderName, Secret)>,
        hmac: Option<(HeaderName, Secret)>,
    },
}

/// A telephony channel ready to serve: settings validated, secrets resolved.
#[derive(Debug, Clone)]
pub struct TelephonyChannel {
    pub id: ChannelId,
    pub settings: TelephonySettings,
    pub(crate) auth: ChannelAuth,
    pub(crate) time_offset: FixedOffset,
    pub(crate) fields: GenericFields,
    pub(crate) values: GenericValues,
}

fn source(value: &Option<Secret>, file: &Option<PathBuf>, env: &Option<String>) -> SecretSource {
    SecretSource {
        value: value.clone(),
        file: file.clone(),
        env: env.clone(),
    }
}

fn is_set(value: &Option<Secret>, file: &Option<PathBuf>, env: &Option<String>) -> bool {
    value.is_some() || file.is_some() || env.is_some()
}

/// Parse `+03:00`, `-0530`, `+3`, `Z` or `UTC`.
pub(crate) fn parse_offset(text: &str) -> Option<FixedOffset> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("z") || t.eq_ignore_ascii_case("utc") {
        return FixedOffset::east_opt(0);
    }
    let (sign, rest) = match t.as_bytes().first()? {
        b'+' => (1, &t[1..]),
        b'-' => (-1, &t[1..]),
        _ => return None,
    };
    if !rest.is_ascii() {
        return None;
    }
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        None if rest.len() == 4 => rest.split_at(2),
        None => (rest, "0"),
    };
    let digits = |s: &str| (1..=2).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || !digits(m) {
        return None;
    }
    let h: i32 = h.parse().ok()?;
    let m: i32 = m.parse().ok()?;
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

fn header_name(field: &str, value: &Option<String>, default: &str) -> Result<HeaderName, String> {
    let name = value.as_deref().unwrap_or(default).trim();
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{field}`: {name:?} is not a valid HTTP header name"))
}

impl TelephonyChannel {
    pub fn new(id: ChannelId, settings: TelephonySettings) -> Result<Self, String> {
        let provider = settings.provider;
        let s = &settings;
        // Settings of another provider are a mistake worth naming (a Zadarma
        // secret put on a Mango channel would otherwise be silently unused).
        let foreign: &[(&str, bool, TelephonyProvider)] = &[
            (
                "api_key",
                is_set(&s.api_key, &s.api_key_file, &s.api_key_env),
                TelephonyProvider::Mango,
            ),
            (
                "api_salt",
                is_set(&s.api_salt, &s.api_salt_file, &s.api_salt_env),
                TelephonyProvider::Mango,
            ),
            (
                "api_secret",
                is_set(&s.api_secret, &s.api_secret_file, &s.api_secret_env),
                TelephonyProvider::Zadarma,
            ),
            (
                "token",
                is_set(&s.token, &s.token_file, &s.token_env),
                TelephonyProvider::Generic,
            ),
            (
                "token_header",
                s.token_header.is_some(),
                TelephonyProvider::Generic,
            ),
            (
                "hmac_secret",
                is_set(&s.hmac_secret, &s.hmac_secret_file, &s.hmac_secret_env),
                TelephonyProvider::Generic,
            ),
            (
                "hmac_header",
                s.hmac_header.is_some(),
                TelephonyProvider::Generic,
            ),
            ("fields", s.fields.is_some(), TelephonyProvider::Generic),
            ("values", s.values.is_some(), TelephonyProvider::Generic),
        ];
        for (field, set, owner) in foreign {
            if *set && *owner != provider {
                return Err(format!(
                    "`{field}` is a setting of provider \"{owner}\", but this channel's provider is \"{provider}\""
                ));
            }
        }
        if s.max_body_bytes == 0 {
            return Err("`max_body_bytes` must be greater than 0".into());
        }
        if !(2..=10).contains(&s.internal_number_max_digits) {
            return Err("`internal_number_max_digits` must be between 2 and 10".into());
        }
        let time_offset = match &s.time_offset {
            None => FixedOffset::east_opt(0).ok_or("`time_offset`: internal error")?,
            Some(text) => parse_offset(text).ok_or_else(|| {
                format!("`time_offset`: {text:?} is not a UTC offset such as \"+03:00\"")
            })?,
        };

        let auth = match provider {
            TelephonyProvider::Mango => {
                let key = source(&s.api_key, &s.api_key_file, &s.api_key_env)
                    .resolve("api_key")?
                    .ok_or("`api_key` (or `api_key_file`, `api_key_env`) is required for provider \"mango\"")?;
                let salt = source(&s.api_salt, &s.api_salt_file, &s.api_salt_env)
                    .resolve("api_salt")?
                    .ok_or("`api_salt` (or `api_salt_file`, `api_salt_env`) is required for provider \"mango\"")?;
                ChannelAuth::Mango { key, salt }
            }
            TelephonyProvider::Zadarma => ChannelAuth::Zadarma {
                secret: source(&s.api_secret, &s.api_secret_file, &s.api_secret_env)
                    .resolve("api_secret")?,
            },
            TelephonyProvider::Generic => {
                let token = source(&s.token, &s.token_file, &s.token_env).resolve("token")?;
                let hmac = source(&s.hmac_secret, &s.hmac_secret_file, &s.hmac_secret_env)
                    .resolve("hmac_secret")?;
                if token.is_none() && s.token_header.is_some() {
                    return Err(
                        "`token_header` is set but `token` (or `token_file`, `token_env`) is not"
                            .into(),
                    );
                }
                if hmac.is_none() && s.hmac_header.is_some() {
                    return Err(
                        "`hmac_header` is set but `hmac_secret` (or `hmac_secret_file`, `hmac_secret_env`) is not".into(),
                    );
                }
                let token = match token {
                    Some(t) => Some((
                        header_name("token_header", &s.token_header, "x-leadgate-key")?,
                        t,
                    )),
                    None => None,
                };
                let hmac = match hmac {
                    Some(h) => Some((
                        header_name("hmac_header", &s.hmac_header, "x-signature")?,
                        h,
                    )),
                    None => None,
                };
                ChannelAuth::Generic { token, hmac }
            }
        };
        let fields = s.fields.clone().unwrap_or_default();
        if provider == TelephonyProvider::Generic && fields.call_id.trim().is_empty() {
            return Err("`fields.call_id` must name the field holding the call id".into());
        }
        let values = s.values.clone().unwrap_or_default();
        Ok(TelephonyChannel {
            id,
            settings,
            auth,
            time_offset,
            fields,
            values,
        })
    }

    pub fn provider(&self) -> TelephonyProvider {
        self.settings.provider
    }

    /// Whether requests are checked at all (a Zadarma channel without a
    /// secret, a generic one without token or HMAC, accept anyone).
    pub fn verifies_requests(&self) -> bool {
        match &self.auth {
            ChannelAuth::Mango { .. } => true,
            ChannelAuth::Zadarma { secret } => secret.is_some(),
            ChannelAuth::Generic { token, hmac } => token.is_some() || hmac.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::support::settings;

    #[test]
    fn offsets_parse() {
        assert_eq!(parse_offset("+03:00"), FixedOffset::east_opt(3 * 3600));
        assert_eq!(
            parse_offset("-0530"),
            FixedOffset::east_opt(-(5 * 3600 + 30 * 60))
        );
        assert_eq!(parse_offset("+3"), FixedOffset::east_opt(3 * 3600));
        assert_eq!(parse_offset("Z"), FixedOffset::east_opt(0));
        for bad in [
            "", "3", "+", "+25:00", "+03:99", "+003:00", "+ab", "+03:", "+é",
        ] {
            assert_eq!(parse_offset(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn mango_needs_key_and_salt() {
        let mut s = settings(TelephonyProvider::Mango);
        s.api_key = Some(Secret::new("k"));
        let err = TelephonyChannel::new("m".into(), s.clone()).unwrap_err();
        assert!(err.contains("`api_salt`"), "{err}");
        s.api_salt = Some(Secret::new("s"));
        assert!(TelephonyChannel::new("m".into(), s).is_ok());
    }

    #[test]
    fn foreign_settings_are_named() {
        let mut s = settings(TelephonyProvider::Zadarma);
        s.api_salt = Some(Secret::new("s"));
        let err = TelephonyChannel::new("z".into(), s).unwrap_err();
        assert!(err.contains("`api_salt`") && err.contains("mango"), "{err}");
        let mut s = settings(TelephonyProvider::Mango);
        s.fields = Some(GenericFields::default());
        let err = TelephonyChannel::new("m".into(), s).unwrap_err();
        assert!(err.contains("`fields`"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_their_field() {
        let mut s = settings(TelephonyProvider::Zadarma);
        s.time_offset = Some("Moscow".into());
        assert!(
            TelephonyChannel::new("z".into(), s)
                .unwrap_err()
                .contains("`time_offset`")
        );
        let mut s = settings(TelephonyProvider::Zadarma);
        s.internal_number_max_digits = 0;
        assert!(
            TelephonyChannel::new("z".into(), s)
                .unwrap_err()
                .contains("`internal_number_max_digits`")
        );
        let mut s = settings(TelephonyProvider::Generic);
        s.token = Some(Secret::new("t"));
        s.token_header = Some("bad header".into());
        assert!(
            TelephonyChannel::new("g".into(), s)
                .unwrap_err()
                .contains("`token_header`")
        );
        let mut s = settings(TelephonyProvider::Generic);
        s.hmac_header = Some("X-Sig".into());
        assert!(
            TelephonyChannel::new("g".into(), s)
                .unwrap_err()
                .contains("`hmac_secret`")
        );
    }

    /// The examples of the crate documentation, as an admin writes them.
    #[test]
    fn documented_channel_files_parse() {
        #[derive(Deserialize)]
        struct File {
            #[allow(dead_code)]
            kind: String,
            telephony: TelephonySettings,
        }
        let docs = include_str!("lib.rs");
        let mut blocks = Vec::new();
        let mut current: Option<String> = None;
        for line in docs.lines() {
            let text = line
                .strip_prefix("//!")
                .map(|l| l.strip_prefix(' ').unwrap_or(l));
            match (text, &mut current) {
                (Some("```toml"), None) => current = Some(String::new()),
                (Some("```"), Some(block)) => {
                    blocks.push(std::mem::take(block));
                    current = None;
                }
                (Some(l), Some(block)) => {
                    block.push_str(l);
                    block.push('\n');
                }
                _ => {}
            }
        }
        assert_eq!(blocks.len(), 3);
        for block in blocks {
            let file: File = toml::from_str(&block).unwrap_or_else(|e| panic!("{block}\n{e}"));
            let mut s = file.telephony;
            // No such files or variables here: put inline secrets instead.
            if s.api_key_file.take().is_some() {
                s.api_key = Some(Secret::new("k"));
            }
            if s.api_salt_env.take().is_some() {
                s.api_salt = Some(Secret::new("s"));
            }
            if s.api_secret_env.take().is_some() {
                s.api_secret = Some(Secret::new("z"));
            }
            if s.token_env.take().is_some() {
                s.token = Some(Secret::new("t"));
            }
            let settings = s;
            TelephonyChannel::new("doc".into(), settings)
                .unwrap_or_else(|e| panic!("{block}\n{e}"));
        }
    }

    #[test]
    fn settings_deserialize_strictly() {
        let toml_like = serde_json::json!({
            "provider": "generic",
            "token": "t",
            "fields": {"call_id": "id", "caller": "from"},
            "values": {"inbound": ["in"]}
        });
        let s: TelephonySettings = serde_json::from_value(toml_like).unwrap();
        assert_eq!(s.max_body_bytes, 65536);
        assert_eq!(s.internal_number_max_digits, 5);
        let f = s.fields.unwrap();
        assert_eq!(f.caller, "from");
        assert_eq!(f.callee, "callee");
        let unknown = serde_json::json!({"provider": "mango", "api_kye": "x"});
        assert!(serde_json::from_value::<TelephonySettings>(unknown).is_err());
        let unknown = serde_json::json!({"provider": "sipuni"});
        assert!(serde_json::from_value::<TelephonySettings>(unknown).is_err());
    }
}
