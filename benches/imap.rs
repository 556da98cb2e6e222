//! IMAP benchmark of the real daemon against a local Dovecot:
//! `cargo bench --bench imap`.
//!
//! Phases (`LEADGATE_BENCH_PHASES`, default `backlog,idle,memory`):
//!
//! 1. `backlog`: N realistic messages (`LEADGATE_BENCH_BACKLOG`, 10,000),
//!    generated from the shapes of ../shared/corpus/email/*.eml (each copy
//!    with its own Message-ID, phone and e-mail address), are put in one
//!    Dovecot INBOX with MULTIAPPEND. The daemon is started on a fresh
//!    SQLite database and timed from process start to the moment the N-th
//!    `inbound_messages` row is visible (COUNT(*) polled every 20 ms). A raw
//!    baseline in the same run: one plain IMAP connection that does LOGIN,
//!    SELECT INBOX, `UID FETCH 1:* BODY.PEEK[]` and discards every byte
//!    (run before and after the daemon). The daemon runs once per value of
//!    `LEADGATE_BENCH_SYNC` (default `full,normal`: `sqlite_synchronous`).
//! 2. `idle`: the daemon idles on an empty folder (`poll_interval = "1h"`,
//!    so only IDLE can deliver); `LEADGATE_BENCH_IDLE_COUNT` (200) messages
//!    are APPENDed one at a time, `LEADGATE_BENCH_IDLE_GAP_MS` (50) apart;
//!    latency = tagged OK of the APPEND -> the row visible in the database
//!    (polled every 2 ms).
//! 3. `memory`: `LEADGATE_BENCH_CHANNELS` (100) IMAP channels, one Dovecot
//!    user each, all sessions in IDLE (Dovecot's process titles say so);
//!    then the daemon's VmRSS. Compared with the same configuration
//!    without channel files.
//! 4. `parse` (not in the default list; needs no Dovecot and no daemon):
//!    the same N backlog messages are parsed in this process with
//!    `leadgate_imap::parse_message` and the mail rules of the backlog's
//!    channel, on one thread and then split in halves over two threads;
//!    wall and CPU time of each. Next to the 1.2× raw-FETCH budget of
//!    issue #4 when `backlog` ran earlier in the same run
//!    (`LEADGATE_BENCH_PHASES=backlog,parse`), else next to the last
//!    known raw FETCH figure. Only parse: `LEADGATE_BENCH_PHASES=parse`.
//!
//! Other knobs: `LEADGATE_BENCH_DIR` (parent of the temp directory; keep it
//! on a real disk), `LEADGATE_BENCH_LIMIT` (seconds a daemon run may take,
//! 900), `LEADGATE_BENCH_KEEP=1` (keep the temp directory and its logs),
//! `LEADGATE_CORPUS` (the shared corpus folder).
//!
//! Everything talks only to 127.0.0.1 and is bounded in time. The daemon
//! and Dovecot (its whole process group) are stopped at the end, on error
//! (guards' `Drop`) and when this process dies (`PR_SET_PDEATHSIG`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use sqlx::ConnectOptions;
use tokio::runtime::Runtime;

// The daemon's allocator (src/main.rs), so that the `parse` phase measures
// the parser as the daemon runs it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PASSWORD: &str = "secret";
const MAIL_RULES: &str = "[imap.mail]\nown_domains = [\"ourcompany.example\"]\n";
const TEAM: &str = "[users.olga]\nname = \"Olga\"\n[users.ivan]\nname = \"Ivan\"\n\
                    [roles.sales]\nmembers = [\"olga\", \"ivan\"]\n";
const ROUTING: &str = "default = \"role:sales\"\n";

// ---------------------------------------------------------------- settings

struct Settings {
    phases: Vec<String>,
    backlog: usize,
    syncs: Vec<String>,
    idle_count: usize,
    idle_gap: Duration,
    channels: usize,
    limit: Duration,
    dir: Option<PathBuf>,
    keep: bool,
    corpus: PathBuf,
}

fn env_num<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            phases: env_list("LEADGATE_BENCH_PHASES", "backlog,idle,memory"),
            backlog: env_num("LEADGATE_BENCH_BACKLOG", 10_000usize).clamp(1, 200_000),
            syncs: env_list("LEADGATE_BENCH_SYNC", "full,normal"),
            idle_count: env_num("LEADGATE_BENCH_IDLE_COUNT", 200usize).clamp(1, 10_000),
            idle_gap: Duration::from_millis(env_num("LEADGATE_BENCH_IDLE_GAP_MS", 50u64)),
            channels: env_num("LEADGATE_BENCH_CHANNELS", 100usize).clamp(1, 1000),
            limit: Duration::from_secs(env_num("LEADGATE_BENCH_LIMIT", 900u64).clamp(10, 7200)),
            dir: std::env::var_os("LEADGATE_BENCH_DIR").map(PathBuf::from),
            keep: std::env::var("LEADGATE_BENCH_KEEP").is_ok_and(|v| v == "1"),
            corpus: std::env::var_os("LEADGATE_CORPUS")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus")
                }),
        }
    }
}

// ------------------------------------------------------- message generator

/// One corpus sample and what a copy of it should become.
struct Template {
    file: String,
    raw: Vec<u8>,
    lead: bool,
    disposition: String,
    /// National significant numbers (10 digits) of the contact's phones.
    phones: Vec<Vec<u8>>,
    /// The contact's e-mail addresses, lower case.
    emails: Vec<Vec<u8>>,
    has_message_id: bool,
}

/// Realistic mail: copy `n` is sample `n % 31` of round `n / 31`, with the
/// round written into every Message-ID (and the In-Reply-To/References
/// pointing at them), every contact e-mail address (`local.rR@domain`) and
/// every contact phone (the last 7 digits), so each copy is a new message
/// from a new person and a reply still joins the lead of its round.
struct Corpus {
    templates: Vec<Template>,
    /// Every Message-ID of the corpus, with brackets.
    ids: Vec<Vec<u8>>,
    /// Every contact phone of the corpus (its index makes the new number).
    all_phones: Vec<Vec<u8>>,
}

fn national(e164: &str) -> Option<Vec<u8>> {
    let rest = e164
        .strip_prefix("+7")
        .or_else(|| e164.strip_prefix("+44"))?;
    (rest.len() == 10 && rest.bytes().all(|b| b.is_ascii_digit())).then(|| rest.as_bytes().to_vec())
}

fn header_end(raw: &[u8]) -> usize {
    find(raw, b"\r\n\r\n").map_or(raw.len(), |p| p + 2)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn find_ci(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if hay.len() < needle.len() + from {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
        .map(|p| p + from)
}

impl Corpus {
    fn load(dir: &Path) -> anyhow::Result<Corpus> {
        let manifest = dir.join("manifest.json");
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("the corpus manifest {}", manifest.display()))?;
        let all: Vec<Value> = serde_json::from_str(&text)?;
        let mut entries: Vec<&Value> = all.iter().filter(|e| e["channel"] == "email").collect();
        entries.sort_by(|a, b| a["file"].as_str().cmp(&b["file"].as_str()));
        let mut templates = Vec::new();
        let mut ids = Vec::new();
        let mut all_phones: Vec<Vec<u8>> = Vec::new();
        for e in entries {
            let file = e["file"].as_str().unwrap_or_default().to_owned();
            let raw = std::fs::read(dir.join(&file)).with_context(|| file.clone())?;
            let exp = &e["expect"];
            let mut phones = Vec::new();
            for p in exp["phone"].as_str().into_iter().chain(
                exp["phones"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str),
            ) {
                if let Some(n) = national(p)
                    && !phones.contains(&n)
                {
                    if !all_phones.contains(&n) {
                        all_phones.push(n.clone());
                    }
                    phones.push(n);
                }
            }
            let emails = exp["email"]
                .as_str()
                .map(|m| vec![m.to_ascii_lowercase().into_bytes()])
                .unwrap_or_default();
            let head = &raw[..header_end(&raw)];
            let mut has_message_id = false;
            let mut at = 0;
            while let Some(p) = find_ci(head, b"\nmessage-id:", at) {
                at = p + 1;
                let line_end = find(&head[p + 1..], b"\r\n").map_or(head.len(), |q| p + 1 + q);
                let line = &head[p..line_end];
                if let (Some(a), Some(b)) = (
                    line.iter().position(|&c| c == b'<'),
                    line.iter().position(|&c| c == b'>'),
                ) && a < b
                {
                    ids.push(line[a..=b].to_vec());
                    has_message_id = true;
                }
            }
            templates.push(Template {
                file,
                raw,
                lead: exp["lead"] == true,
                disposition: exp["disposition"]
                    .as_str()
                    .unwrap_or(if exp["lead"] == true {
                        "lead_created"
                    } else {
                        "?"
                    })
                    .to_owned(),
                phones,
                emails,
                has_message_id,
            });
        }
        // A reply is from the person it answers: it carries their address.
        for e in all.iter().filter(|e| e["channel"] == "email") {
            let (Some(file), Some(of)) = (e["file"].as_str(), e["expect"]["thread_of"].as_str())
            else {
                continue;
            };
            let Some(parent) = templates.iter().position(|t| t.file == of) else {
                continue;
            };
            let (phones, emails) = (
                templates[parent].phones.clone(),
                templates[parent].emails.clone(),
            );
            if let Some(t) = templates.iter_mut().find(|t| t.file == file) {
                for p in phones {
                    if !t.phones.contains(&p) {
                        t.phones.push(p);
                    }
                }
                for m in emails {
                    if !t.emails.contains(&m) {
                        t.emails.push(m);
                    }
                }
            }
        }
        if templates.is_empty() {
            bail!("no e-mail samples in {}", manifest.display());
        }
        Ok(Corpus {
            templates,
            ids,
            all_phones,
        })
    }

    fn template(&self, n: usize) -> &Template {
        &self.templates[n % self.templates.len()]
    }

    fn message(&self, n: usize) -> Vec<u8> {
        let t = self.template(n);
        let round = n / self.templates.len();
        let phones: Vec<(&[u8], Vec<u8>)> = t
            .phones
            .iter()
            .map(|p| {
                let idx = self.all_phones.iter().position(|q| q == p).unwrap_or(0);
                // Starts with 1: never one of the corpus' own numbers.
                let last7 = format!("{:07}", 1_000_000 + (round * 64 + idx) % 9_000_000);
                (p.as_slice(), last7.into_bytes())
            })
            .collect();
        let suffix = format!(".r{round}");
        let subst = |buf: &[u8]| -> Vec<u8> {
            let mut out = buf.to_vec();
            for e in &t.emails {
                out = replace_email(&out, e, suffix.as_bytes());
            }
            for (digits, last7) in &phones {
                replace_phone(&mut out, digits, last7);
            }
            out
        };
        // Message-IDs (and the references to them) in the header.
        let raw = &t.raw;
        let split = header_end(raw);
        let mut head = raw[..split].to_vec();
        for id in &self.ids {
            let new = format!("<r{round}.{}", String::from_utf8_lossy(&id[1..]));
            head = replace_all(&head, id, new.as_bytes());
        }
        let top_b64 = {
            let lower = head.to_ascii_lowercase();
            find(&lower, b"content-transfer-encoding: base64").is_some()
        };
        let mut out = subst(&head);
        out.extend_from_slice(&subst_body(&raw[split..], top_b64, &subst));
        if !t.has_message_id {
            // Without a Message-ID the source is a hash of the raw bytes:
            // make every copy differ.
            if !out.ends_with(b"\r\n") {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(format!("copy {round}\r\n").as_bytes());
        }
        out
    }
}

fn replace_all(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while let Some(p) = find(&hay[i..], from) {
        out.extend_from_slice(&hay[i..i + p]);
        out.extend_from_slice(to);
        i += p + from.len();
    }
    out.extend_from_slice(&hay[i..]);
    out
}

/// `local@domain` (any case) -> `local<suffix>@domain`.
fn replace_email(hay: &[u8], email: &[u8], suffix: &[u8]) -> Vec<u8> {
    let Some(at) = email.iter().position(|&c| c == b'@') else {
        return hay.to_vec();
    };
    let mut out = Vec::with_capacity(hay.len() + 16);
    let mut i = 0;
    while let Some(p) = find_ci(hay, email, i) {
        out.extend_from_slice(&hay[i..p + at]);
        out.extend_from_slice(suffix);
        out.extend_from_slice(&hay[p + at..p + email.len()]);
        i = p + email.len();
    }
    out.extend_from_slice(&hay[i..]);
    out
}

const SEPARATORS: &[&[u8]] = &[
    b" ",
    b"-",
    b"(",
    b")",
    b".",
    b"\xc2\xa0",
    b"&nbsp;",
    b"=\r\n",
];

/// Overwrite the last 7 digits of every written form of `digits` (10
/// digits, with spaces, dashes, brackets, NBSP or soft breaks between them).
fn replace_phone(buf: &mut [u8], digits: &[u8], last7: &[u8]) {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] != digits[0] {
            i += 1;
            continue;
        }
        let mut pos = Vec::with_capacity(digits.len());
        let mut j = i;
        while pos.len() < digits.len() && j < buf.len() {
            if buf[j] == digits[pos.len()] {
                pos.push(j);
                j += 1;
            } else if let Some(s) = SEPARATORS.iter().find(|s| buf[j..].starts_with(s)) {
                j += s.len();
            } else {
                break;
            }
        }
        let whole = pos.len() == digits.len() && !buf.get(j).is_some_and(u8::is_ascii_digit);
        if whole {
            for (k, p) in pos[digits.len() - last7.len()..].iter().enumerate() {
                buf[*p] = last7[k];
            }
            i = j;
        } else {
            i += 1;
        }
    }
}

/// Apply `subst` to a body, looking inside base64 parts too (decoded,
/// changed, re-encoded; untouched parts keep their bytes). `top_b64`: the
/// message header said the whole body is base64. The body starts with the
/// blank line that ends the header.
fn subst_body(body: &[u8], top_b64: bool, subst: &dyn Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let lines: Vec<&[u8]> = body.split_inclusive(|&c| c == b'\n').collect();
    let is_b64 = |l: &[u8]| {
        let t = l.trim_ascii_end();
        !t.is_empty()
            && t.iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/' || *c == b'=')
    };
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut pending = top_b64;
    let mut plain_from = 0;
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let lower = l.to_ascii_lowercase();
        if find(&lower, b"content-transfer-encoding:").is_some()
            && find(&lower, b"base64").is_some()
        {
            pending = true;
        }
        if pending && l.trim_ascii().is_empty() {
            // A base64 run follows the blank line that ends a part header.
            let first = i + 1;
            let mut end = first;
            while end < lines.len() && is_b64(lines[end]) {
                end += 1;
            }
            out.extend_from_slice(&subst(&lines[plain_from..first].concat()));
            let encoded: Vec<u8> = lines[first..end]
                .iter()
                .flat_map(|x| x.trim_ascii_end().iter().copied())
                .collect();
            let decoded = base64_decode(&encoded);
            let changed = subst(&decoded);
            if changed != decoded {
                out.extend_from_slice(&base64_encode_lines(&changed));
            } else {
                out.extend_from_slice(&lines[first..end].concat());
            }
            pending = false;
            plain_from = end;
            i = end;
            continue;
        }
        i += 1;
    }
    out.extend_from_slice(&subst(&lines[plain_from..].concat()));
    out
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in s {
        let Some(v) = B64.iter().position(|a| *a == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn base64_encode_lines(data: &[u8]) -> Vec<u8> {
    let mut text = Vec::with_capacity(data.len() * 4 / 3 + 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                text.push(B64[(n >> (18 - 6 * k) & 63) as usize]);
            } else {
                text.push(b'=');
            }
        }
    }
    let mut out = Vec::with_capacity(text.len() + text.len() / 38 + 2);
    for line in text.chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

// --------------------------------------------------------- raw IMAP client

/// A deliberately small IMAP client over a blocking TcpStream: commands,
/// responses read up to the tagged line with server literals (`{n}`)
/// skipped by size, MULTIAPPEND.
struct Imap {
    r: BufReader<TcpStream>,
    tag: u32,
    literal_plus: bool,
    seg: Vec<u8>,
}

/// What came back for one command.
struct Reply {
    lines: Vec<String>,
    bytes: u64,
    status: String,
}

fn literal_len(seg: &[u8]) -> Option<u64> {
    let s = seg.strip_suffix(b"}\r\n")?;
    let open = s.iter().rposition(|&c| c == b'{')?;
    let n = std::str::from_utf8(&s[open + 1..]).ok()?;
    n.trim_end_matches('+').parse().ok()
}

impl Imap {
    fn connect(port: u16, timeout: Duration) -> anyhow::Result<Imap> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).context("connect to dovecot")?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_nodelay(true)?;
        let mut c = Imap {
            r: BufReader::with_capacity(256 * 1024, tcp),
            tag: 0,
            literal_plus: false,
            seg: Vec::with_capacity(4096),
        };
        c.read_segment()?;
        let greeting = String::from_utf8_lossy(&c.seg).into_owned();
        if !greeting.starts_with("* OK") {
            bail!("unexpected greeting: {greeting}");
        }
        c.literal_plus = greeting.contains("LITERAL+");
        Ok(c)
    }

    fn login(port: u16, user: &str, timeout: Duration) -> anyhow::Result<Imap> {
        let mut c = Imap::connect(port, timeout)?;
        let r = c.command(&format!("LOGIN \"{user}\" \"{PASSWORD}\""))?;
        if r.status.contains("LITERAL+") {
            c.literal_plus = true;
        }
        if !c.literal_plus {
            let caps = c.command("CAPABILITY")?;
            c.literal_plus = caps.lines.iter().any(|l| l.contains("LITERAL+"));
        }
        Ok(c)
    }

    fn read_segment(&mut self) -> anyhow::Result<usize> {
        self.seg.clear();
        let n = self.r.read_until(b'\n', &mut self.seg)?;
        if n == 0 {
            bail!("dovecot closed the connection");
        }
        Ok(n)
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.r.get_mut().write_all(bytes)
    }

    fn next_tag(&mut self) -> String {
        self.tag += 1;
        format!("b{}", self.tag)
    }

    /// Read up to the tagged line; untagged lines kept only when `keep`.
    fn read_reply(&mut self, tag: &str, keep: bool) -> anyhow::Result<Reply> {
        let mut reply = Reply {
            lines: Vec::new(),
            bytes: 0,
            status: String::new(),
        };
        let prefix = format!("{tag} ");
        let mut line_start = true;
        let mut sink = io::sink();
        loop {
            let n = self.read_segment()?;
            reply.bytes += n as u64;
            if line_start && self.seg.starts_with(prefix.as_bytes()) {
                let status = String::from_utf8_lossy(&self.seg[prefix.len()..])
                    .trim_end()
                    .to_owned();
                if !status.starts_with("OK") {
                    bail!("{tag}: {status}");
                }
                reply.status = status;
                return Ok(reply);
            }
            if keep && line_start {
                reply
                    .lines
                    .push(String::from_utf8_lossy(&self.seg).trim_end().to_owned());
            }
            if let Some(len) = literal_len(&self.seg) {
                let copied = io::copy(&mut (&mut self.r).take(len), &mut sink)?;
                if copied != len {
                    bail!("dovecot closed the connection inside a literal");
                }
                reply.bytes += len;
                line_start = false;
            } else {
                line_start = true;
            }
        }
    }

    fn command(&mut self, cmd: &str) -> anyhow::Result<Reply> {
        let tag = self.next_tag();
        self.send(format!("{tag} {cmd}\r\n").as_bytes())?;
        self.read_reply(&tag, true)
    }

    /// Run a command whose (large) answer is counted and discarded.
    fn command_discard(&mut self, cmd: &str) -> anyhow::Result<Reply> {
        let tag = self.next_tag();
        self.send(format!("{tag} {cmd}\r\n").as_bytes())?;
        self.read_reply(&tag, false)
    }

    fn wait_continuation(&mut self) -> anyhow::Result<()> {
        self.read_segment()?;
        if !self.seg.starts_with(b"+") {
            bail!(
                "expected a continuation, got {}",
                String::from_utf8_lossy(&self.seg).trim_end()
            );
        }
        Ok(())
    }

    /// APPEND one or more messages in one command (MULTIAPPEND, RFC 3502).
    fn append(&mut self, folder: &str, msgs: &[&[u8]]) -> anyhow::Result<Reply> {
        let tag = self.next_tag();
        let plus = if self.literal_plus { "+" } else { "" };
        let mut buf = Vec::new();
        write!(buf, "{tag} APPEND \"{folder}\"")?;
        for m in msgs {
            write!(buf, " {{{}{plus}}}\r\n", m.len())?;
            if !self.literal_plus {
                self.send(&buf)?;
                buf.clear();
                self.wait_continuation()?;
            }
            buf.extend_from_slice(m);
        }
        buf.extend_from_slice(b"\r\n");
        self.send(&buf)?;
        self.read_reply(&tag, false)
    }

    fn logout(mut self) {
        let _ = self.send(b"z LOGOUT\r\n");
    }
}

// ------------------------------------------------------- /proc and process

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Fields after the command name of /proc/<pid>/stat (field 3 is index 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = s.rfind(')')?;
    Some(
        s[close + 1..]
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

/// CPU seconds of a process (utime + stime, plus its reaped children's
/// when `children`).
fn cpu_seconds(pid: u32, children: bool) -> f64 {
    let Some(f) = stat_fields(pid) else {
        return 0.0;
    };
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let mut ticks = get(11) + get(12);
    if children {
        ticks += get(13) + get(14);
    }
    ticks as f64 / clk_tck()
}

/// CPU seconds per thread name (digits and dashes at the end dropped),
/// largest first: "tokio-runtime-w 3.10 s, sqlx-sqlite-wor 2.00 s".
fn thread_cpu(pid: u32) -> String {
    let mut groups: BTreeMap<String, f64> = BTreeMap::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = stat[open + 1..close]
                .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '_')
                .to_owned();
            let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            *groups.entry(name).or_default() += (get(11) + get(12)) as f64 / clk_tck();
        }
    }
    let mut v: Vec<_> = groups.into_iter().filter(|(_, t)| *t > 0.0).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.iter()
        .map(|(n, t)| format!("{n} {t:.2} s"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Processes of a process group: (pid, comm, cmdline).
fn group_processes(pgid: u32) -> Vec<(u32, String, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.get(2).and_then(|v| v.parse::<u32>().ok()) != Some(pgid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.push((pid, comm, cmdline));
    }
    out
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("no free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// Die with us: the child gets SIGKILL when this process goes away.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

// ------------------------------------------------------------------ Dovecot

/// A throwaway Dovecot on a loopback port: passwd-file users, maildir in
/// the temp folder; under root its mail processes run as `nobody`. Its
/// process group is killed on drop.
struct Dovecot {
    dir: PathBuf,
    port: u16,
    master: Option<Child>,
}

fn user_name(i: usize) -> String {
    if i == 0 {
        "lead@example.test".to_owned()
    } else {
        format!("lead{i}@example.test")
    }
}

impl Dovecot {
    fn start(dir: &Path, users: usize) -> anyhow::Result<Dovecot> {
        let bin = ["/usr/sbin/dovecot", "/usr/local/sbin/dovecot"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .context("Dovecot is not installed (Debian package dovecot-imapd)")?;
        for sub in ["run", "state", "log", "mail"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let root = is_root();
        let (uid, gid, login_user, internal, group) = if root {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
            let ok = Command::new("chown")
                .args(["-R", "nobody:nogroup"])
                .arg(dir.join("mail"))
                .status()?;
            if !ok.success() {
                bail!("chown the maildir");
            }
            (
                "65534".to_owned(),
                "65534".to_owned(),
                "dovenull".to_owned(),
                "dovecot".to_owned(),
                "dovecot".to_owned(),
            )
        } else {
            let id = |f: &str| -> anyhow::Result<String> {
                let out = Command::new("id").arg(f).output()?;
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            };
            let user = id("-un")?;
            (id("-u")?, id("-g")?, user.clone(), user, id("-gn")?)
        };
        let mut passwd = String::new();
        for i in 0..users.max(1) {
            let u = user_name(i);
            writeln!(
                passwd,
                "{u}:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{}/mail/{u}",
                dir.display()
            )?;
        }
        std::fs::write(dir.join("users"), passwd)?;
        let port = free_port()?;
        let conf = format!(
            r#"protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = leadgate-bench-{port}
default_login_user = {login_user}
default_internal_user = {internal}
default_internal_group = {group}
first_valid_uid = 1
log_path = {d}/log/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
verbose_proctitle = yes
default_process_limit = 400
default_client_limit = 2000
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {d}/users
}}
userdb {{
  driver = passwd-file
  args = {d}/users
}}
protocol imap {{
  mail_max_userip_connections = 400
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
"#,
            d = dir.display(),
        );
        std::fs::write(dir.join("dovecot.conf"), conf)?;
        let mut cmd = Command::new(&bin);
        cmd.process_group(0)
            .args(["-F", "-c"])
            .arg(dir.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let master = cmd.spawn().context("start dovecot")?;
        let d = Dovecot {
            dir: dir.to_owned(),
            port,
            master: Some(master),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("dovecot did not listen within 15 s:\n{}", d.log_tail(20));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    fn pid(&self) -> u32 {
        self.master.as_ref().map_or(0, Child::id)
    }

    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("log/dovecot.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Warnings and errors in its log (count, first few).
    fn problems(&self) -> (usize, Vec<String>) {
        let text = std::fs::read_to_string(self.dir.join("log/dovecot.log")).unwrap_or_default();
        problems(&text, &["Warning:", "Error:", "Fatal:", "Panic:"], 16)
    }

    /// CPU seconds of the whole server: the master, its reaped children
    /// and the live ones.
    fn cpu_seconds(&self) -> f64 {
        let pid = self.pid();
        let mut total = cpu_seconds(pid, true);
        for (p, _, _) in group_processes(pid) {
            if p != pid {
                total += cpu_seconds(p, false);
            }
        }
        total
    }

    /// Live `imap` processes, and how many of them are in IDLE.
    fn imap_sessions(&self) -> (usize, usize) {
        let procs: Vec<_> = group_processes(self.pid())
            .into_iter()
            .filter(|(_, comm, _)| comm == "imap")
            .collect();
        let idle = procs.iter().filter(|(_, _, c)| c.contains("IDLE")).count();
        (procs.len(), idle)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.master.take() {
            let pgid = c.id() as libc::pid_t;
            // SAFETY: kill(2) on the process group we created.
            unsafe { libc::kill(pgid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // SAFETY: as above; takes down whatever of the group is left.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

fn problems(text: &str, markers: &[&str], skip: usize) -> (usize, Vec<String>) {
    let mut first: Vec<String> = Vec::new();
    let mut n = 0;
    for l in text.lines() {
        if markers.iter().any(|m| l.contains(m)) {
            n += 1;
            // Skip the timestamp so repeats look alike.
            let short: String = l.chars().skip(skip).take(220).collect();
            if first.len() < 5 && !first.contains(&short) {
                first.push(short);
            }
        }
    }
    (n, first)
}

// ------------------------------------------------------------------- daemon

/// The daemon with a configuration folder of its own; killed on drop.
struct Daemon {
    child: Option<Child>,
    pid: u32,
    port: u16,
    log: PathBuf,
    db: PathBuf,
    started: Instant,
}

struct DaemonConfig<'a> {
    sync: Option<&'a str>,
    level: &'a str,
    /// Channel files: (id, body).
    channels: Vec<(String, String)>,
}

fn imap_channel(port: u16, user: &str, poll: &str) -> String {
    format!(
        "kind = \"imap\"\nresponsible = \"role:sales\"\n[imap]\nhost = \"127.0.0.1\"\nport = {port}\n\
         security = \"plain\"\nusername = \"{user}\"\npassword = \"{PASSWORD}\"\n\
         poll_interval = \"{poll}\"\nbatch_size = 100\n{MAIL_RULES}"
    )
}

impl Daemon {
    fn start(dir: &Path, cfg: &DaemonConfig) -> anyhow::Result<Daemon> {
        let bin = env!("CARGO_BIN_EXE_leadgate");
        let port = free_port()?;
        let db = dir.join("leads.db");
        std::fs::create_dir_all(dir.join("channels.d"))?;
        std::fs::write(
            dir.join("leadgate.toml"),
            format!(
                "[database]\nurl = \"sqlite://{}\"\n{}[http]\nlisten = \"127.0.0.1:{port}\"\n\
                 [log]\nformat = \"plain\"\nlevel = \"{}\"\n",
                db.display(),
                cfg.sync
                    .map_or(String::new(), |s| format!("sqlite_synchronous = \"{s}\"\n")),
                cfg.level
            ),
        )?;
        std::fs::write(dir.join("team.toml"), TEAM)?;
        std::fs::write(dir.join("routing.toml"), ROUTING)?;
        for (id, body) in &cfg.channels {
            std::fs::write(dir.join(format!("channels.d/{id}.toml")), body)?;
        }
        let log = dir.join("daemon.log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(dir)
            .arg("run")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("LEADGATE_") || k == "RUST_LOG" || k == "NOTIFY_SOCKET" {
                cmd.env_remove(&*k);
            }
        }
        die_with_parent(&mut cmd);
        let started = Instant::now();
        let child = cmd.spawn().with_context(|| format!("cannot start {bin}"))?;
        Ok(Daemon {
            pid: child.id(),
            child: Some(child),
            port,
            log,
            db,
            started,
        })
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            self.child = None;
            bail!(
                "the daemon exited ({status}); its log:\n{}",
                self.log_tail(30)
            );
        }
        Ok(())
    }

    fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<Duration> {
        while self.started.elapsed() < limit {
            self.check_alive()?;
            if let Ok((200, _)) = http_get(self.port, "/readyz") {
                return Ok(self.started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!(
            "the daemon was not ready after {limit:?}; its log:\n{}",
            self.log_tail(30)
        )
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn problems(&self) -> (usize, Vec<String>) {
        problems(&self.log_text(), &[" WARN ", " ERROR "], 28)
    }

    /// SIGTERM and at most 30 s for the graceful stop.
    fn stop(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return "not running".into();
        };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = child.try_wait() {
                return format!("{status} after {:.2} s", t.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        "did not stop within 30 s of SIGTERM; killed".into()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn http_get(port: u16, path: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    Ok((status, body))
}

/// (commits, items committed, seconds committing) from /metrics.
fn commit_metrics(port: u16) -> Option<(f64, f64, f64)> {
    let (status, text) = http_get(port, "/metrics").ok()?;
    if status != 200 {
        return None;
    }
    let get = |name: &str| -> f64 {
        text.lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter_map(|rest| rest.rsplit(' ').next()?.trim().parse::<f64>().ok())
            .sum()
    };
    Some((
        get("leadgate_commit_batch_items_count"),
        get("leadgate_commit_batch_items_sum"),
        get("leadgate_commit_seconds_sum"),
    ))
}

// ----------------------------------------------------------------- database

struct Db {
    conn: sqlx::sqlite::SqliteConnection,
}

impl Db {
    /// Open the daemon's database once it exists and has its tables.
    async fn open(path: &Path, limit: Duration) -> anyhow::Result<Db> {
        let t = Instant::now();
        loop {
            if path.exists() {
                let conn = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(false)
                    .busy_timeout(Duration::from_secs(10))
                    .connect()
                    .await;
                if let Ok(conn) = conn {
                    let mut db = Db { conn };
                    if db
                        .int("SELECT COUNT(*) FROM inbound_messages")
                        .await
                        .is_ok()
                    {
                        return Ok(db);
                    }
                }
            }
            if t.elapsed() > limit {
                bail!(
                    "{} has no inbound_messages table after {limit:?}",
                    path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn int(&mut self, sql: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(sql).fetch_one(&mut self.conn).await?)
    }

    async fn histogram(&mut self) -> anyhow::Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT disposition, COUNT(*) FROM inbound_messages GROUP BY disposition ORDER BY 2 DESC",
        )
        .fetch_all(&mut self.conn)
        .await?)
    }
}

// ----------------------------------------------------------------- report

#[derive(Default)]
struct Report {
    sections: Vec<String>,
    failures: Vec<String>,
    /// The backlog phase's best raw `UID FETCH 1:* BODY.PEEK[]`, for the
    /// `parse` phase's comparison.
    raw_fetch: Option<RawFetch>,
}

struct RawFetch {
    wall: Duration,
    bytes: u64,
    messages: usize,
}

fn fmt_s(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

fn kb_mib(kb: Option<u64>) -> String {
    kb.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_once(':'))
            .map_or("?".to_owned(), |(_, v)| v.trim().to_owned())
    };
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .flatten()
        .and_then(|k| k.parse::<u64>().ok())
        .map_or("?".into(), |k| format!("{:.1} GiB", k as f64 / 1_048_576.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dovecot = Command::new("dovecot")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "- date: {}\n- nproc: {}; CPU: {} ({} MHz, {} logical CPUs in /proc/cpuinfo)\n\
         - memory: {mem}; kernel {}; Dovecot {dovecot}\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        field("model name"),
        field("cpu MHz"),
        cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count(),
        kernel.trim(),
    )
}

// ------------------------------------------------------------------- phases

struct Baseline {
    wall: Duration,
    bytes: u64,
    dovecot_cpu: f64,
    own_cpu: f64,
}

fn baseline(dovecot: &Dovecot, user: &str) -> anyhow::Result<Baseline> {
    // Sessions closed just before are reaped into the master's count first.
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = dovecot.cpu_seconds();
    let own0 = cpu_seconds(std::process::id(), false);
    let t = Instant::now();
    let mut c = Imap::login(dovecot.port, user, Duration::from_secs(120))?;
    c.command("SELECT INBOX")?;
    let r = c.command_discard("UID FETCH 1:* BODY.PEEK[]")?;
    let wall = t.elapsed();
    c.logout();
    // Let the server's process exit and be reaped into the master's count.
    std::thread::sleep(Duration::from_millis(300));
    Ok(Baseline {
        wall,
        bytes: r.bytes,
        dovecot_cpu: dovecot.cpu_seconds() - cpu0,
        own_cpu: cpu_seconds(std::process::id(), false) - own0,
    })
}

struct DaemonRun {
    sync: String,
    ready: Duration,
    first_row: Duration,
    last_row: Duration,
    rows: i64,
    leads: i64,
    histogram: Vec<(String, i64)>,
    daemon_cpu: f64,
    threads: String,
    dovecot_cpu: f64,
    max_rss_kb: Option<u64>,
    commits: String,
    problems: (usize, Vec<String>),
    stop: String,
}

fn backlog_daemon_run(
    rt: &Runtime,
    s: &Settings,
    base: &Path,
    dovecot: &Dovecot,
    n: usize,
    sync: &str,
) -> anyhow::Result<DaemonRun> {
    let dir = base.join(format!("daemon-backlog-{sync}"));
    let cfg = DaemonConfig {
        sync: (sync != "default").then_some(sync),
        level: "warn",
        channels: vec![(
            "sales".into(),
            imap_channel(dovecot.port, &user_name(0), "60s"),
        )],
    };
    let dovecot_cpu0 = dovecot.cpu_seconds();
    let mut d = Daemon::start(&dir, &cfg)?;
    let started = d.started;
    let mut db = rt.block_on(Db::open(&d.db, Duration::from_secs(30)))?;
    let mut ready = None;
    let mut first_row = None;
    let mut max_rss = None::<u64>;
    let mut last_print = Instant::now();
    let want = n as i64;
    let last_row = loop {
        let count = rt.block_on(db.int("SELECT COUNT(*) FROM inbound_messages"))?;
        let now = started.elapsed();
        if count > 0 && first_row.is_none() {
            first_row = Some(now);
        }
        if count >= want {
            break now;
        }
        if ready.is_none() && matches!(http_get(d.port, "/readyz"), Ok((200, _))) {
            ready = Some(started.elapsed());
        }
        if let Some(rss) = proc_status_kb(d.pid, "VmRSS:") {
            max_rss = Some(max_rss.unwrap_or(0).max(rss));
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            eprintln!("  [{sync}] {count}/{want} rows after {}", fmt_s(now));
            last_print = Instant::now();
        }
        if now > s.limit {
            bail!(
                "only {count} of {want} rows after {}; daemon log tail:\n{}",
                fmt_s(now),
                d.log_tail(20)
            );
        }
        d.check_alive()?;
        std::thread::sleep(Duration::from_millis(20));
    };
    let daemon_cpu = cpu_seconds(d.pid, false);
    let threads = thread_cpu(d.pid);
    let dovecot_cpu = dovecot.cpu_seconds() - dovecot_cpu0;
    // A moment for anything still in flight (there should be nothing).
    std::thread::sleep(Duration::from_millis(500));
    let commits = match commit_metrics(d.port) {
        Some((c, items, secs)) if c > 0.0 => format!(
            "{c:.0} commits, {:.1} items/commit, {:.2} s committing ({:.1} ms/commit)",
            items / c,
            secs,
            secs / c * 1000.0
        ),
        _ => "no commit metrics".into(),
    };
    let rows = rt.block_on(db.int("SELECT COUNT(*) FROM inbound_messages"))?;
    let leads = rt.block_on(db.int("SELECT COUNT(*) FROM leads"))?;
    let histogram = rt.block_on(db.histogram())?;
    let ready = match ready {
        Some(r) => r,
        None => d.wait_ready(Duration::from_secs(30))?,
    };
    let stop = d.stop();
    Ok(DaemonRun {
        sync: sync.to_owned(),
        ready,
        first_row: first_row.unwrap_or(last_row),
        last_row,
        rows,
        leads,
        histogram,
        daemon_cpu,
        threads,
        dovecot_cpu,
        max_rss_kb: max_rss,
        commits,
        problems: d.problems(),
        stop,
    })
}

fn phase_backlog(
    rt: &Runtime,
    s: &Settings,
    base: &Path,
    corpus: &Corpus,
    report: &mut Report,
) -> anyhow::Result<()> {
    let n = s.backlog;
    eprintln!("backlog: generating {n} messages");
    let t = Instant::now();
    let msgs: Vec<Vec<u8>> = (0..n).map(|i| corpus.message(i)).collect();
    let total: u64 = msgs.iter().map(|m| m.len() as u64).sum();
    let gen_time = t.elapsed();
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    let mut expected_leads = 0;
    for i in 0..n {
        let tpl = corpus.template(i);
        expected_leads += usize::from(tpl.lead);
        *expected.entry(tpl.disposition.clone()).or_default() += 1;
    }

    let dovecot = Dovecot::start(&base.join("dovecot-backlog"), 1)?;
    eprintln!(
        "backlog: appending {} ({n} messages) to Dovecot",
        mib(total)
    );
    let t = Instant::now();
    let mut c = Imap::login(dovecot.port, &user_name(0), Duration::from_secs(120))?;
    let mut chunk: Vec<&[u8]> = Vec::new();
    let mut chunk_bytes = 0;
    for m in &msgs {
        chunk.push(m);
        chunk_bytes += m.len();
        if chunk.len() >= 250 || chunk_bytes >= 8 << 20 {
            c.append("INBOX", &chunk)?;
            chunk.clear();
            chunk_bytes = 0;
        }
    }
    if !chunk.is_empty() {
        c.append("INBOX", &chunk)?;
    }
    let stored = c
        .command("STATUS INBOX (MESSAGES)")?
        .lines
        .iter()
        .find_map(|l| {
            l.split("MESSAGES ")
                .nth(1)?
                .trim_end_matches(')')
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0);
    // Warm the folder's index once so neither side pays for building it.
    c.command("SELECT INBOX")?;
    c.command_discard("UID FETCH 1:* (UID RFC822.SIZE)")?;
    c.logout();
    let fill_time = t.elapsed();
    if stored != n {
        bail!("Dovecot holds {stored} messages, not {n}");
    }
    drop(msgs);

    eprintln!("backlog: raw baseline (before)");
    let b1 = baseline(&dovecot, &user_name(0))?;
    let mut runs = Vec::new();
    for sync in &s.syncs {
        eprintln!("backlog: leadgate, sqlite_synchronous = {sync}");
        match backlog_daemon_run(rt, s, base, &dovecot, n, sync) {
            Ok(r) => runs.push(r),
            Err(e) => {
                report
                    .failures
                    .push(format!("backlog, synchronous={sync}: {e:#}"));
                eprintln!("backlog run failed: {e:#}");
            }
        }
    }
    eprintln!("backlog: raw baseline (after)");
    let b2 = baseline(&dovecot, &user_name(0))?;
    let best = if b1.wall <= b2.wall { &b1 } else { &b2 };
    report.raw_fetch = Some(RawFetch {
        wall: best.wall,
        bytes: best.bytes,
        messages: n,
    });

    let mut out = String::new();
    writeln!(
        out,
        "### 1. Backlog: {n} messages already in the folder\n\n\
         Mail: {n} copies of the {} corpus shapes (round robin), {} in total \
         (mean {:.1} KiB, generated in {}); put in with MULTIAPPEND in {} (Dovecot `MESSAGES` = {stored}).\n",
        corpus.templates.len(),
        mib(total),
        total as f64 / n as f64 / 1024.0,
        fmt_s(gen_time),
        fmt_s(fill_time)
    )?;
    writeln!(
        out,
        "| run | wall | messages/s | MiB/s | vs best baseline | CPU of the client side | Dovecot CPU |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    )?;
    for (label, b) in [("raw baseline, before", &b1), ("raw baseline, after", &b2)] {
        writeln!(
            out,
            "| {label} (`UID FETCH 1:* BODY.PEEK[]`, {} read) | {} | {:.0} | {:.1} | {:.2}× | {:.2} s (bench) | {:.2} s |",
            mib(b.bytes),
            fmt_s(b.wall),
            n as f64 / b.wall.as_secs_f64(),
            b.bytes as f64 / 1_048_576.0 / b.wall.as_secs_f64(),
            b.wall.as_secs_f64() / best.wall.as_secs_f64(),
            b.own_cpu,
            b.dovecot_cpu
        )?;
    }
    for r in &runs {
        writeln!(
            out,
            "| leadgate, sqlite_synchronous = {} (process start → row {n} visible) | {} | {:.0} | {:.1} | **{:.2}×** | {:.2} s (daemon, {:.2} ms/message) | {:.2} s |",
            r.sync,
            fmt_s(r.last_row),
            n as f64 / r.last_row.as_secs_f64(),
            total as f64 / 1_048_576.0 / r.last_row.as_secs_f64(),
            r.last_row.as_secs_f64() / best.wall.as_secs_f64(),
            r.daemon_cpu,
            r.daemon_cpu / n as f64 * 1000.0,
            r.dovecot_cpu
        )?;
    }
    writeln!(out)?;
    let exp_hist = expected
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    for r in &runs {
        let hist = r
            .histogram
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(
            out,
            "- synchronous = {}: ready (`/readyz` 200) after {}, first row after {}, last after {}; \
             drain rate after the first row {:.0} msg/s; daemon CPU by thread: {}; daemon max VmRSS {}; {}; \
             rows {} of {n}, leads {} (expected {expected_leads}); dispositions: {hist} \
             (expected from the manifest: {exp_hist}); {} WARN/ERROR log lines{}; stop: {}",
            r.sync,
            fmt_s(r.ready),
            fmt_s(r.first_row),
            fmt_s(r.last_row),
            (n.saturating_sub(1)) as f64 / (r.last_row - r.first_row).as_secs_f64().max(1e-6),
            r.threads,
            kb_mib(r.max_rss_kb),
            r.commits,
            r.rows,
            r.leads,
            r.problems.0,
            if r.problems.1.is_empty() {
                String::new()
            } else {
                format!(" (first: `{}`)", r.problems.1.join("` / `"))
            },
            r.stop
        )?;
    }
    let (dn, dfirst) = dovecot.problems();
    writeln!(
        out,
        "- Dovecot log: {dn} warnings/errors{}\n",
        if dfirst.is_empty() {
            String::new()
        } else {
            format!(" (first: `{}`)", dfirst.join("` / `"))
        }
    )?;
    report.sections.push(out);
    Ok(())
}

/// CPU time of the calling thread.
fn thread_cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Parse every message as the poller does, each `Inbound` dropped right
/// after; returns this thread's CPU time for it.
fn parse_all(
    channel: &leadgate_connector::ChannelId,
    msgs: &[Vec<u8>],
    received: chrono::DateTime<chrono::Utc>,
    rules: &leadgate_imap::MailRules,
) -> Duration {
    let cpu0 = thread_cpu_now();
    for raw in msgs {
        let inbound = leadgate_imap::parse_message(
            channel,
            std::hint::black_box(raw.as_slice()),
            received,
            rules,
        );
        std::hint::black_box(&inbound);
        drop(inbound);
    }
    thread_cpu_now().saturating_sub(cpu0)
}

/// Last known raw FETCH figure (BENCHMARKS.md, IMAP section): used when the
/// backlog phase did not run in this process.
const LAST_RAW_FETCH: &str = "0.39 s for 10,000 messages / 105 MiB";
/// 1.2× those 0.39 s.
const LAST_BUDGET_S: f64 = 1.2 * 0.39;

fn phase_parse(s: &Settings, corpus: &Corpus, report: &mut Report) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct ChannelFile {
        imap: leadgate_imap::ImapSettings,
    }
    // The rules the daemon reads from the backlog channel's file.
    let file: ChannelFile = toml::from_str(&imap_channel(143, &user_name(0), "60s"))
        .context("the backlog channel file")?;
    let rules = file.imap.mail;
    let channel = leadgate_connector::ChannelId("sales".into());
    let received = chrono::Utc::now();

    let n = s.backlog;
    eprintln!("parse: generating {n} messages");
    let t = Instant::now();
    let msgs: Vec<Vec<u8>> = (0..n).map(|i| corpus.message(i)).collect();
    let total: u64 = msgs.iter().map(|m| m.len() as u64).sum();
    let gen_time = t.elapsed();
    let total_mib = total as f64 / 1_048_576.0;

    let nice = stat_fields(std::process::id())
        .and_then(|f| f.get(16).cloned())
        .unwrap_or_else(|| "?".into());
    let load = std::fs::read_to_string("/proc/loadavg").map_or("?".into(), |l| {
        l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    });
    // Warm-up, not timed: one message of each shape (lazily built regexes
    // and tables, the allocator's first pages).
    let warm = n.min(corpus.templates.len());
    parse_all(&channel, &msgs[..warm], received, &rules);

    eprintln!("parse: 1 thread");
    let t = Instant::now();
    let cpu1 = parse_all(&channel, &msgs, received, &rules);
    let wall1 = t.elapsed();

    eprintln!("parse: 2 threads");
    let (first, second) = msgs.split_at(n / 2);
    let t = Instant::now();
    let cpus: Vec<(Duration, Duration)> = std::thread::scope(|scope| {
        let handles: Vec<_> = [first, second]
            .into_iter()
            .map(|half| {
                let (channel, rules) = (&channel, &rules);
                scope.spawn(move || {
                    let cpu = parse_all(channel, half, received, rules);
                    (cpu, t.elapsed())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a parse thread panicked"))
            .collect()
    });
    let wall2 = t.elapsed();
    let cpu2: Duration = cpus.iter().map(|c| c.0).sum();
    let cpu2_max = cpus.iter().map(|c| c.0).max().unwrap_or_default();

    let mut out = String::new();
    writeln!(
        out,
        "### Parse only: {n} backlog messages through `leadgate_imap::parse_message`\n\n\
         No Dovecot, no daemon, no database: the backlog's {n} messages ({} in total, \
         mean {:.1} KiB, generated in {}), parsed in this process (mimalloc, as the daemon) \
         with the backlog channel's mail rules (`own_domains = [\"ourcompany.example\"]`); \
         each `Inbound` dropped as soon as it is made. One untimed warm-up pass over the \
         first {warm} messages first. Wall = first message → last `Inbound` (for 2 threads: \
         spawn → both joined); CPU = the parsing threads' own CPU time \
         (`CLOCK_THREAD_CPUTIME_ID`). The machine is not reserved: this process ran at \
         niceness {nice}; load average before the timed runs: {load}.\n",
        mib(total),
        total as f64 / n as f64 / 1024.0,
        fmt_s(gen_time),
    )?;
    writeln!(
        out,
        "| run | wall | messages/s | MiB/s | CPU of the parsing threads | CPU per message | cores busy (CPU / wall) |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    )?;
    for (label, wall, cpu) in [
        ("1 thread".to_owned(), wall1, cpu1),
        (
            format!("2 threads ({} + {} messages)", first.len(), second.len()),
            wall2,
            cpu2,
        ),
    ] {
        let w = wall.as_secs_f64().max(1e-9);
        writeln!(
            out,
            "| {label} | {} | {:.0} | {:.1} | {} | {:.3} ms | {:.2} |",
            fmt_s(wall),
            n as f64 / w,
            total_mib / w,
            fmt_s(cpu),
            cpu.as_secs_f64() / n as f64 * 1000.0,
            cpu.as_secs_f64() / w,
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "- 2 threads: per thread CPU {} (wall until each finished: {}); the slower \
         half's CPU ({}) is the wall time two otherwise idle cores would need",
        cpus.iter()
            .map(|c| fmt_s(c.0))
            .collect::<Vec<_>>()
            .join(" + "),
        cpus.iter()
            .map(|c| fmt_s(c.1))
            .collect::<Vec<_>>()
            .join(", "),
        fmt_s(cpu2_max),
    )?;
    match &report.raw_fetch {
        Some(raw) => {
            let budget = raw.wall.mul_f64(1.2);
            // Scaled to this phase's message count when they differ.
            let budget_here = budget.mul_f64(n as f64 / raw.messages.max(1) as f64);
            writeln!(
                out,
                "- issue #4 budget (1.2× this run's best raw `UID FETCH 1:* BODY.PEEK[]`, \
                 {} for {} messages / {}): {}{}; parsing alone took {} on 1 thread \
                 ({:.2}× the budget) and {} on 2 threads ({:.2}×); parse CPU {} \
                 ({:.2}× the budget)",
                fmt_s(raw.wall),
                raw.messages,
                mib(raw.bytes),
                fmt_s(budget),
                if raw.messages == n {
                    String::new()
                } else {
                    format!(" ({} scaled to {n} messages)", fmt_s(budget_here))
                },
                fmt_s(wall1),
                wall1.as_secs_f64() / budget_here.as_secs_f64().max(1e-9),
                fmt_s(wall2),
                wall2.as_secs_f64() / budget_here.as_secs_f64().max(1e-9),
                fmt_s(cpu2),
                cpu2.as_secs_f64() / budget_here.as_secs_f64().max(1e-9),
            )?;
        }
        None => writeln!(
            out,
            "- issue #4 budget (1.2× the raw `UID FETCH 1:* BODY.PEEK[]`): unknown in this run \
             (the backlog phase did not run before this one); the last known raw FETCH figure \
             (BENCHMARKS.md) is {LAST_RAW_FETCH}, i.e. a budget of ≈ 0.47 s for 10,000 messages; \
             parsing alone took {} on 1 thread and {} on 2 threads ({} CPU) for {n} messages \
             ({:.2}×, {:.2}× and {:.2}× that budget)",
            fmt_s(wall1),
            fmt_s(wall2),
            fmt_s(cpu2),
            wall1.as_secs_f64() / LAST_BUDGET_S,
            wall2.as_secs_f64() / LAST_BUDGET_S,
            cpu2.as_secs_f64() / LAST_BUDGET_S,
        )?,
    }
    writeln!(out)?;
    report.sections.push(out);
    Ok(())
}

fn phase_idle(
    rt: &Runtime,
    s: &Settings,
    base: &Path,
    corpus: &Corpus,
    report: &mut Report,
) -> anyhow::Result<()> {
    let dovecot = Dovecot::start(&base.join("dovecot-idle"), 1)?;
    let cfg = DaemonConfig {
        sync: None,
        level: "info",
        channels: vec![(
            "sales".into(),
            imap_channel(dovecot.port, &user_name(0), "1h"),
        )],
    };
    let mut d = Daemon::start(&base.join("daemon-idle"), &cfg)?;
    d.wait_ready(Duration::from_secs(30))?;
    let mut db = rt.block_on(Db::open(&d.db, Duration::from_secs(30)))?;
    // Wait for the session to sit in IDLE.
    let t = Instant::now();
    loop {
        d.check_alive()?;
        if d.log_text().contains("IMAP session open") && dovecot.imap_sessions().1 >= 1 {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!(
                "the daemon's IMAP session is not in IDLE after 30 s; log:\n{}\nDovecot:\n{}",
                d.log_tail(20),
                dovecot.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let idle_line = d
        .log_text()
        .lines()
        .find(|l| l.contains("IMAP session open"))
        .unwrap_or_default()
        .to_owned();
    let mut c = Imap::login(dovecot.port, &user_name(0), Duration::from_secs(30))?;
    let n = s.idle_count;
    // The raw reference first, in a folder of its own so that neither
    // session's activity wakes the other: a plain IMAP session idling on
    // it; APPEND tagged OK -> its untagged EXISTS is Dovecot's push alone.
    eprintln!("idle: raw IDLE reference, {n} APPENDs to folder Raw");
    let raw_latencies = raw_idle_reference(&mut c, dovecot.port, corpus, n, s.idle_gap)?;
    eprintln!("idle: {n} single APPENDs, {:?} apart", s.idle_gap);
    let mut latencies = Vec::with_capacity(n);
    let mut appends = Vec::with_capacity(n);
    let mut misses = 0;
    let cpu0 = cpu_seconds(d.pid, false);
    let wall0 = Instant::now();
    for i in 0..n {
        let msg = corpus.message(i);
        let t0 = Instant::now();
        c.append("INBOX", &[&msg])?;
        let appended = Instant::now();
        appends.push(appended - t0);
        let want = i as i64 + 1;
        loop {
            let count = rt.block_on(db.int("SELECT COUNT(*) FROM inbound_messages"))?;
            if count >= want {
                latencies.push(appended.elapsed());
                break;
            }
            if appended.elapsed() > Duration::from_secs(10) {
                misses += 1;
                eprintln!("idle: message {i} not stored within 10 s");
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if misses >= 3 {
            bail!(
                "{misses} messages were not stored within 10 s; daemon log tail:\n{}",
                d.log_tail(20)
            );
        }
        let next = t0 + s.idle_gap;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let wall = wall0.elapsed();
    let cpu = cpu_seconds(d.pid, false) - cpu0;
    c.logout();
    std::thread::sleep(Duration::from_millis(300));
    let rows = rt.block_on(db.int("SELECT COUNT(*) FROM inbound_messages"))?;
    let leads = rt.block_on(db.int("SELECT COUNT(*) FROM leads"))?;
    let expected_leads = (0..n).filter(|i| corpus.template(*i).lead).count();
    let stop = d.stop();
    let (pn, pfirst) = d.problems();
    latencies.sort_unstable();
    appends.sort_unstable();

    let mean = latencies.iter().sum::<Duration>() / latencies.len().max(1) as u32;
    let mut out = String::new();
    writeln!(
        out,
        "### 2. IDLE latency: one message at a time into an idle mailbox\n\n\
         {n} messages (the corpus shapes in turn), APPENDed one by one over a second IMAP \
         connection at most every {} ms (the next waits for the previous row); \
         `poll_interval = \"1h\"`, so only IDLE delivers. Latency: APPEND's tagged OK → the \
         row visible in `inbound_messages` (COUNT(*) polled every 2 ms).\n",
        s.idle_gap.as_millis()
    )?;
    writeln!(
        out,
        "| measured | samples | p50 | p90 | p99 | max | mean |\n|---|---:|---:|---:|---:|---:|---:|"
    )?;
    writeln!(
        out,
        "| APPEND tagged OK → row visible | {} | {} | {} | **{}** | {} | {} |",
        latencies.len(),
        ms(pct(&latencies, 50.0)),
        ms(pct(&latencies, 90.0)),
        ms(pct(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
        ms(mean)
    )?;
    writeln!(
        out,
        "| reference: raw IMAP session in IDLE (own folder, same messages and pacing): APPEND tagged OK → `* n EXISTS` | {} | {} | {} | {} | {} | {} |",
        raw_latencies.len(),
        ms(pct(&raw_latencies, 50.0)),
        ms(pct(&raw_latencies, 90.0)),
        ms(pct(&raw_latencies, 99.0)),
        ms(raw_latencies.last().copied().unwrap_or_default()),
        ms(raw_latencies.iter().sum::<Duration>() / raw_latencies.len().max(1) as u32)
    )?;
    writeln!(
        out,
        "| (APPEND itself, for scale) | {} | {} | {} | {} | {} | |\n",
        appends.len(),
        ms(pct(&appends, 50.0)),
        ms(pct(&appends, 90.0)),
        ms(pct(&appends, 99.0)),
        ms(appends.last().copied().unwrap_or_default()),
    )?;
    writeln!(
        out,
        "- target p99 < 1 s: {}; leadgate's own share at the median (row visible minus the raw session's EXISTS): {}; not stored within 10 s: {misses}; rows {rows} of {n}, leads {leads} \
         (expected {expected_leads}); daemon CPU {cpu:.2} s over {} ({:.2} ms per message); \
         session: `{}`; {pn} WARN/ERROR log lines{}; stop: {stop}\n",
        if pct(&latencies, 99.0) < Duration::from_secs(1) && misses == 0 {
            "met"
        } else {
            "MISSED"
        },
        ms(pct(&latencies, 50.0).saturating_sub(pct(&raw_latencies, 50.0))),
        fmt_s(wall),
        cpu / n as f64 * 1000.0,
        idle_line.chars().skip(28).collect::<String>(),
        if pfirst.is_empty() {
            String::new()
        } else {
            format!(" (first: `{}`)", pfirst.join("` / `"))
        }
    )?;
    report.sections.push(out);
    Ok(())
}

/// A raw IMAP session idling on INBOX; sends (arrival time, n) for every
/// `* n EXISTS`. Returns a handle on its socket (shut it down to stop).
#[allow(clippy::type_complexity)]
fn raw_idle_watcher(
    port: u16,
    folder: &str,
) -> anyhow::Result<(
    TcpStream,
    std::sync::mpsc::Receiver<(Instant, usize)>,
    std::thread::JoinHandle<()>,
)> {
    let mut w = Imap::login(port, &user_name(0), Duration::from_secs(600))?;
    w.command(&format!("SELECT \"{folder}\""))?;
    w.send(b"w IDLE\r\n")?;
    w.wait_continuation()?;
    let stream = w.r.get_ref().try_clone()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let mut line = Vec::new();
        loop {
            line.clear();
            match w.r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let at = Instant::now();
            let text = String::from_utf8_lossy(&line);
            if let Some(n) = text
                .strip_prefix("* ")
                .and_then(|r| r.trim_end().strip_suffix(" EXISTS"))
                .and_then(|n| n.parse::<usize>().ok())
                && tx.send((at, n)).is_err()
            {
                return;
            }
        }
    });
    Ok((stream, rx, handle))
}

/// APPEND `n` messages to folder `Raw` while a raw session idles on it;
/// the sorted APPEND tagged OK -> `* n EXISTS` times.
fn raw_idle_reference(
    c: &mut Imap,
    port: u16,
    corpus: &Corpus,
    n: usize,
    gap: Duration,
) -> anyhow::Result<Vec<Duration>> {
    c.command("CREATE Raw")?;
    let (stream, rx, watcher) = raw_idle_watcher(port, "Raw")?;
    let mut out = Vec::with_capacity(n);
    let result = (|| -> anyhow::Result<()> {
        for i in 0..n {
            let msg = corpus.message(i);
            let t0 = Instant::now();
            c.append("Raw", &[&msg])?;
            let appended = Instant::now();
            loop {
                match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok((at, count)) if count > i => {
                        out.push(at.saturating_duration_since(appended));
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => bail!("no EXISTS for message {i} within 10 s"),
                }
            }
            if let Some(wait) = (t0 + gap).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        Ok(())
    })();
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = watcher.join();
    result?;
    out.sort_unstable();
    Ok(out)
}

struct MemSample {
    label: String,
    rss_kb: Option<u64>,
    hwm_kb: Option<u64>,
    threads: Option<u64>,
    fds: usize,
    note: String,
}

fn sample_memory(d: &Daemon, label: &str, note: String) -> MemSample {
    // A few samples over 3 s; keep the largest VmRSS.
    let mut rss = None::<u64>;
    for _ in 0..6 {
        if let Some(r) = proc_status_kb(d.pid, "VmRSS:") {
            rss = Some(rss.unwrap_or(0).max(r));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    MemSample {
        label: label.to_owned(),
        rss_kb: rss,
        hwm_kb: proc_status_kb(d.pid, "VmHWM:"),
        threads: proc_status_kb(d.pid, "Threads:"),
        fds: std::fs::read_dir(format!("/proc/{}/fd", d.pid)).map_or(0, |r| r.count()),
        note,
    }
}

fn phase_memory(s: &Settings, base: &Path, report: &mut Report) -> anyhow::Result<()> {
    let k = s.channels;
    let dovecot = Dovecot::start(&base.join("dovecot-memory"), k + 1)?;
    let mut samples = Vec::new();

    // The same configuration without channel files.
    eprintln!("memory: daemon without channels");
    let mut d0 = Daemon::start(
        &base.join("daemon-mem-0"),
        &DaemonConfig {
            sync: None,
            level: "info",
            channels: Vec::new(),
        },
    )?;
    let ready = d0.wait_ready(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_secs(3));
    samples.push(sample_memory(
        &d0,
        "0 channels",
        format!("ready after {}, sampled 3–6 s later", fmt_s(ready)),
    ));
    let stop0 = d0.stop();

    eprintln!("memory: daemon with {k} IMAP channels");
    let channels = (1..=k)
        .map(|i| {
            (
                format!("mail{i:03}"),
                imap_channel(dovecot.port, &user_name(i), "60s"),
            )
        })
        .collect();
    let mut d = Daemon::start(
        &base.join("daemon-mem-imap"),
        &DaemonConfig {
            sync: None,
            level: "info",
            channels,
        },
    )?;
    d.wait_ready(Duration::from_secs(30))?;
    let t = Instant::now();
    let (opened, idle) = loop {
        d.check_alive()?;
        let opened = d.log_text().matches("IMAP session open").count();
        let (_, idle) = dovecot.imap_sessions();
        if opened >= k && idle >= k {
            break (opened, idle);
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!(
                "after 120 s: {opened} sessions opened, {idle} in IDLE of {k}; daemon log:\n{}\nDovecot:\n{}",
                d.log_tail(15),
                dovecot.log_tail(15)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let all_idle = t.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let (procs, idle_now) = dovecot.imap_sessions();
    samples.push(sample_memory(
        &d,
        &format!("{k} IMAP channels"),
        format!(
            "{opened} \"IMAP session open\" log lines; all {idle} Dovecot imap processes in IDLE {} \
             after process start; at sampling {procs} imap processes, {idle_now} in IDLE",
            fmt_s(all_idle + (t - d.started))
        ),
    ));
    let stop = d.stop();
    let (pn, pfirst) = d.problems();
    let (dn, dfirst) = dovecot.problems();

    let mut out = String::new();
    writeln!(
        out,
        "### 3. Memory: {k} IMAP channels idling\n\n\
         {k} channel files, one Dovecot user each (`mail_max_userip_connections` and the process \
         limits raised for the test server); log level info; VmRSS = the largest of 6 samples over 3 s.\n"
    )?;
    writeln!(
        out,
        "| daemon | VmRSS | VmHWM | threads | open fds | notes |\n|---|---:|---:|---:|---:|---|"
    )?;
    for m in &samples {
        writeln!(
            out,
            "| {} | **{}** | {} | {} | {} | {} |",
            m.label,
            kb_mib(m.rss_kb),
            kb_mib(m.hwm_kb),
            m.threads.map_or("?".into(), |t| t.to_string()),
            m.fds,
            m.note
        )?;
    }
    let with = samples.last().and_then(|m| m.rss_kb).unwrap_or(0);
    let without = samples.first().and_then(|m| m.rss_kb).unwrap_or(0);
    writeln!(
        out,
        "\n- target < 60 MB with {k} channels: {} ({} MB = {:.1} MiB); {:.0} KiB per channel over the \
         channel-less daemon; {pn} WARN/ERROR log lines{}; Dovecot: {dn} warnings/errors{}; \
         stops: {stop0} / {stop}\n",
        if with > 0 && (with * 1024) < 60_000_000 {
            "met"
        } else {
            "MISSED"
        },
        with * 1024 / 1_000_000,
        with as f64 / 1024.0,
        (with as f64 - without as f64) / k as f64,
        if pfirst.is_empty() {
            String::new()
        } else {
            format!(" (first: `{}`)", pfirst.join("` / `"))
        },
        if dfirst.is_empty() {
            String::new()
        } else {
            format!(" (first: `{}`)", dfirst.join("` / `"))
        }
    )?;
    report.sections.push(out);
    Ok(())
}

// --------------------------------------------------------------------- main

fn run(s: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut builder = tempfile::Builder::new();
    builder.prefix("leadgate-bench-imap-");
    let tmp = match &s.dir {
        Some(d) => builder.tempdir_in(d)?,
        None => builder.tempdir()?,
    };
    let base = tmp.path().to_owned();
    let corpus = Corpus::load(&s.corpus)?;
    if let Some(dump) = std::env::var_os("LEADGATE_BENCH_DUMP") {
        // Look at what the generator makes: the first two rounds as files.
        let dump = PathBuf::from(dump);
        std::fs::create_dir_all(&dump)?;
        for n in 0..corpus.templates.len() * 2 {
            let name = format!("{n:03}-{}", corpus.template(n).file.replace('/', "_"));
            std::fs::write(dump.join(name), corpus.message(n))?;
        }
        eprintln!("generated samples written to {}", dump.display());
    }
    for phase in &s.phases {
        let t = Instant::now();
        let result = match phase.as_str() {
            "backlog" => phase_backlog(&rt, s, &base, &corpus, report),
            "idle" => phase_idle(&rt, s, &base, &corpus, report),
            "memory" => phase_memory(s, &base, report),
            "parse" => phase_parse(s, &corpus, report),
            other => Err(anyhow::anyhow!("unknown phase {other:?}")),
        };
        eprintln!("phase {phase}: {:.1} s", t.elapsed().as_secs_f64());
        if let Err(e) = result {
            eprintln!("phase {phase} failed: {e:#}");
            report.failures.push(format!("{phase}: {e:#}"));
        }
    }
    if s.keep {
        let kept = tmp.keep();
        eprintln!("kept {}", kept.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let s = Settings::from_env();
    let mut report = Report::default();
    let result = run(&s, &mut report);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## IMAP benchmark (`cargo bench --bench imap`)\n\n{}\
         - phases: {}; backlog {} messages; IDLE {} messages; {} channels for memory\n",
        machine(),
        s.phases.join(","),
        s.backlog,
        s.idle_count,
        s.channels
    );
    for section in &report.sections {
        out.push_str(section);
        out.push('\n');
    }
    if let Err(e) = &result {
        report.failures.push(format!("{e:#}"));
    }
    if !report.failures.is_empty() {
        let _ = writeln!(out, "### Failures\n");
        for f in &report.failures {
            let _ = writeln!(out, "- {}", f.replace('\n', "\n  "));
        }
    }
    println!("{out}");
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
