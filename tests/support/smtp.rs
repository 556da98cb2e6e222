//! A small SMTP sink on a loopback port: enough of RFC 5321 for a client
//! to deliver (EHLO/HELO, MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP,
//! QUIT, and AUTH PLAIN, whose credentials it records). It records every
//! accepted message and can refuse the next ones with a 4xx on demand, as
//! a relay does when it is overloaded. It speaks plain SMTP, implicit TLS
//! (port-465 style, [`SmtpSink::start_tls`]) or STARTTLS
//! ([`SmtpSink::start_starttls`], then it refuses mail before the upgrade),
//! with a certificate from a throwaway CA (tests/support/tls.rs).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::tls::TestCertificate;

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// Headers and body as sent, CRLF line ends, dots unstuffed.
    pub data: String,
    /// It came over TLS (implicit or after STARTTLS).
    pub tls: bool,
}

impl Mail {
    /// The value of a header (first occurrence, unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = &mut value {
                if line.starts_with([' ', '\t']) {
                    v.push_str(line.trim_start());
                    continue;
                }
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case(name)
            {
                value = Some(v.trim().to_owned());
            }
        }
        value
    }

    pub fn body(&self) -> String {
        self.data
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Inner {
    mails: Vec<Mail>,
    /// Answer the next this many DATA ends (message transfers) with 451.
    refuse: usize,
    refused: usize,
    connections: usize,
    /// TLS handshakes that failed (a client that did not trust the
    /// certificate hangs up in the middle of one).
    handshake_failures: usize,
    /// `(user, password)` of every AUTH PLAIN.
    logins: Vec<(String, String)>,
}

#[derive(Clone)]
pub struct SmtpSink {
    inner: Arc<Mutex<Inner>>,
    pub port: u16,
}

/// How the sink speaks TLS.
#[derive(Clone)]
enum Security {
    Plain,
    /// TLS from the first byte.
    Tls(TlsAcceptor),
    /// Plain, upgraded by STARTTLS; mail only after the upgrade.
    Starttls(TlsAcceptor),
}

impl SmtpSink {
    /// Plain SMTP.
    pub async fn start() -> SmtpSink {
        SmtpSink::start_with(Security::Plain).await
    }

    /// Implicit TLS (as on port 465) with `cert`.
    pub async fn start_tls(cert: &TestCertificate) -> SmtpSink {
        SmtpSink::start_with(Security::Tls(TlsAcceptor::from(cert.server_config()))).await
    }

    /// STARTTLS (as on port 587) with `cert`.
    pub async fn start_starttls(cert: &TestCertificate) -> SmtpSink {
        SmtpSink::start_with(Security::Starttls(TlsAcceptor::from(cert.server_config()))).await
    }

    async fn start_with(security: Security) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sink = SmtpSink {
            inner: Arc::default(),
            port,
        };
        let s = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                let security = security.clone();
                tokio::spawn(async move {
                    let _ = s.serve(stream, security).await;
                });
            }
        });
        sink
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuse the next `n` messages with `451 4.3.0` (try again later).
    pub fn refuse_next(&self, n: usize) {
        self.lock().refuse = n;
    }

    pub fn refused(&self) -> usize {
        self.lock().refused
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.lock().mails.clone()
    }

    pub fn logins(&self) -> Vec<(String, String)> {
        self.lock().logins.clone()
    }

    pub fn connections(&self) -> usize {
        self.lock().connections
    }

    pub fn handshake_failures(&self) -> usize {
        self.lock().handshake_failures
    }

    pub async fn wait_for(&self, what: &str, within: Duration, done: impl Fn(&SmtpSink) -> bool) {
        let deadline = Instant::now() + within;
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn serve(&self, tcp: TcpStream, security: Security) -> std::io::Result<()> {
        self.lock().connections += 1;
        match security {
            Security::Plain => {
                self.session(tcp, Phase::Plain).await?;
            }
            Security::Tls(acceptor) => {
                let tls = self.handshake(&acceptor, tcp).await?;
                self.session(tls, Phase::Tls { greet: true }).await?;
            }
            Security::Starttls(acceptor) => {
                if let Some(tcp) = self.session(tcp, Phase::BeforeStarttls).await? {
                    let tls = self.handshake(&acceptor, tcp).await?;
                    // No new greeting: the client starts over with EHLO.
                    self.session(tls, Phase::Tls { greet: false }).await?;
                }
            }
        }
        Ok(())
    }

    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        acceptor: &TlsAcceptor,
        stream: S,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<S>> {
        acceptor.accept(stream).await.inspect_err(|_| {
            self.lock().handshake_failures += 1;
        })
    }

    /// One SMTP conversation on `stream`. Before STARTTLS it offers the
    /// upgrade, and returns the stream when the client takes it.
    async fn session<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        phase: Phase,
    ) -> std::io::Result<Option<S>> {
        let mut io = BufReader::new(stream);
        if !matches!(phase, Phase::Tls { greet: false }) {
            send(&mut io, b"220 sink.test ESMTP ready\r\n").await?;
        }
        let tls = matches!(phase, Phase::Tls { .. });
        let mut from = String::new();
        let mut to: Vec<String> = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if io.read_line(&mut line).await? == 0 {
                return Ok(None);
            }
            let cmd = line.trim_end().to_owned();
            let upper = cmd.to_ascii_uppercase();
            let reply: &[u8] = if upper.starts_with("EHLO") {
                if phase == Phase::BeforeStarttls {
                    b"250-sink.test greets you\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-STARTTLS\r\n250-AUTH PLAIN\r\n250 OK\r\n"
                } else {
                    b"250-sink.test greets you\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-AUTH PLAIN\r\n250 OK\r\n"
                }
            } else if upper == "STARTTLS" {
                if phase != Phase::BeforeStarttls {
                    send(&mut io, b"503 5.5.1 TLS already active\r\n").await?;
                    continue;
                }
                send(&mut io, b"220 2.0.0 Ready to start TLS\r\n").await?;
                return Ok(Some(io.into_inner()));
            } else if phase == Phase::BeforeStarttls
                && (upper.starts_with("MAIL") || upper.starts_with("AUTH"))
            {
                b"530 5.7.0 Must issue a STARTTLS command first\r\n"
            } else if upper.starts_with("HELO") {
                b"250 sink.test\r\n"
            } else if upper.starts_with("AUTH PLAIN") {
                let arg = cmd[10..].trim().to_owned();
                let arg = if arg.is_empty() {
                    send(&mut io, b"334 \r\n").await?;
                    line.clear();
                    io.read_line(&mut line).await?;
                    line.trim().to_owned()
                } else {
                    arg
                };
                let decoded = base64_decode(&arg).unwrap_or_default();
                let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
                match parts.as_slice() {
                    [_, user, pass] => {
                        self.lock().logins.push((
                            String::from_utf8_lossy(user).into_owned(),
                            String::from_utf8_lossy(pass).into_owned(),
                        ));
                        b"235 2.7.0 Authentication successful\r\n"
                    }
                    _ => b"501 5.5.2 Cannot decode\r\n",
                }
            } else if upper.starts_with("MAIL FROM:") {
                from = address(&cmd[10..]);
                to.clear();
                b"250 2.1.0 OK\r\n"
            } else if upper.starts_with("RCPT TO:") {
                to.push(address(&cmd[8..]));
                b"250 2.1.5 OK\r\n"
            } else if upper == "DATA" {
                if to.is_empty() {
                    send(&mut io, b"503 5.5.1 RCPT first\r\n").await?;
                    continue;
                }
                send(&mut io, b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if io.read_line(&mut line).await? == 0 {
                        return Ok(None);
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let l = line.strip_prefix('.').unwrap_or(&line);
                    data.push_str(l);
                }
                let refuse = {
                    let mut inner = self.lock();
                    if inner.refuse > 0 {
                        inner.refuse -= 1;
                        inner.refused += 1;
                        true
                    } else {
                        inner.mails.push(Mail {
                            from: from.clone(),
                            to: to.clone(),
                            data,
                            tls,
                        });
                        false
                    }
                };
                to.clear();
                if refuse {
                    b"451 4.3.0 Temporary failure, try again later\r\n"
                } else {
                    b"250 2.0.0 Queued\r\n"
                }
            } else if upper == "RSET" {
                from.clear();
                to.clear();
                b"250 OK\r\n"
            } else if upper == "NOOP" {
                b"250 OK\r\n"
            } else if upper == "QUIT" {
                send(&mut io, b"221 2.0.0 Bye\r\n").await?;
                return Ok(None);
            } else {
                b"502 5.5.2 Command not implemented\r\n"
            };
            send(&mut io, reply).await?;
        }
    }
}

/// Where a conversation is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Plain SMTP, no TLS offered.
    Plain,
    /// Plain, STARTTLS offered and required before mail.
    BeforeStarttls,
    /// Inside TLS; `greet`: implicit TLS greets, after STARTTLS it does not.
    Tls { greet: bool },
}

async fn send<S: AsyncWrite + Unpin>(io: &mut S, reply: &[u8]) -> std::io::Result<()> {
    io.write_all(reply).await?;
    io.flush().await
}

/// `<a@b>` (with any parameters after it) → `a@b`.
fn address(arg: &str) -> String {
    let arg = arg.trim();
    match (arg.find('<'), arg.find('>')) {
        (Some(a), Some(b)) if a < b => arg[a + 1..b].to_owned(),
        _ => arg.split_whitespace().next().unwrap_or("").to_owned(),
    }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ABC.iter().position(|a| *a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}
