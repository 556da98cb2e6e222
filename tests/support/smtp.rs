//! A small SMTP sink on a loopback port: enough of RFC 5321 for a client
//! to deliver (EHLO/HELO, MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP,
//! QUIT, and AUTH PLAIN, whose credentials it records). It records every
//! accepted message and can refuse the next ones with a 4xx on demand, as
//! a relay does when it is overloaded.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// Headers and body as sent, CRLF line ends, dots unstuffed.
    pub data: String,
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
    /// `(user, password)` of every AUTH PLAIN.
    logins: Vec<(String, String)>,
}

#[derive(Clone)]
pub struct SmtpSink {
    inner: Arc<Mutex<Inner>>,
    pub port: u16,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
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
                tokio::spawn(async move {
                    let _ = s.session(stream).await;
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

    pub async fn wait_for(&self, what: &str, within: Duration, done: impl Fn(&SmtpSink) -> bool) {
        let deadline = Instant::now() + within;
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn session(&self, stream: TcpStream) -> std::io::Result<()> {
        self.lock().connections += 1;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read);
        write.write_all(b"220 sink.test ESMTP ready\r\n").await?;
        let mut from = String::new();
        let mut to: Vec<String> = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let cmd = line.trim_end().to_owned();
            let upper = cmd.to_ascii_uppercase();
            let reply: &[u8] = if upper.starts_with("EHLO") {
                b"250-sink.test greets you\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-AUTH PLAIN\r\n250 OK\r\n"
            } else if upper.starts_with("HELO") {
                b"250 sink.test\r\n"
            } else if upper.starts_with("AUTH PLAIN") {
                let arg = cmd[10..].trim().to_owned();
                let arg = if arg.is_empty() {
                    write.write_all(b"334 \r\n").await?;
                    line.clear();
                    lines.read_line(&mut line).await?;
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
                    write.write_all(b"503 5.5.1 RCPT first\r\n").await?;
                    continue;
                }
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
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
                write.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            } else {
                b"502 5.5.2 Command not implemented\r\n"
            };
            write.write_all(reply).await?;
        }
    }
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
