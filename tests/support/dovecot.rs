//! A throwaway Dovecot on a loopback port (protocols.md §7.2): passwd-file
//! users, maildir in a temp folder, running as the invoking user. Owned by
//! one test; killed by its master PID on drop, never by name.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub const USER: &str = "lead@example.test";
pub const PASSWORD: &str = "secret";

pub struct Dovecot {
    dir: tempfile::TempDir,
    /// Plain IMAP (and STARTTLS when TLS is on).
    pub port: u16,
    /// Implicit TLS (imaps), when started with [`Dovecot::start_tls`].
    pub tls_port: Option<u16>,
    master: Option<Child>,
}

fn binary() -> Option<PathBuf> {
    ["/usr/sbin/dovecot", "/usr/local/sbin/dovecot"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn whoami(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Dovecot {
    /// Start one, or `None` (after saying so) when Dovecot is not installed.
    pub fn start() -> Option<Dovecot> {
        Dovecot::start_with(false)
    }

    /// Start one that speaks TLS on `tls_port` and STARTTLS on `port`, with
    /// a certificate from a throwaway CA ([`Dovecot::ca_file`]).
    pub fn start_tls() -> Option<Dovecot> {
        Dovecot::start_with(true)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn start_with(tls: bool) -> Option<Dovecot> {
        let Some(bin) = binary() else {
            super::skip_or_fail("Dovecot (Debian package dovecot-imapd)");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("leadgate-dovecot-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        for sub in ["run", "state", "log", "mail"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        // Dovecot runs its login and mail processes unprivileged: as the
        // invoking user, or under root as its own users with the mail owned
        // by `nobody`.
        let root = whoami("-u") == "0";
        let (uid, gid, user, group) = if root {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
            let mail = d.join("mail");
            let ok = Command::new("chown")
                .args(["-R", "nobody:nogroup"])
                .arg(&mail)
                .status()
                .unwrap();
            assert!(ok.success(), "chown the test maildir");
            (
                "65534".to_owned(),
                "65534".to_owned(),
                "dovenull".to_owned(),
                "dovecot".to_owned(),
            )
        } else {
            (whoami("-u"), whoami("-g"), whoami("-un"), whoami("-gn"))
        };
        std::fs::write(
            d.join("users"),
            format!(
                "{USER}:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{}/mail/{USER}\n",
                d.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let tls_port = tls.then(free_port);
        let ssl = match tls {
            true => {
                super::tls::TestCertificate::issue().write_to(d);
                format!(
                    "ssl = yes\nssl_cert = <{0}/cert.pem\nssl_key = <{0}/key.pem",
                    d.display()
                )
            }
            false => "ssl = no".to_owned(),
        };
        let conf = format!(
            r#"protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = leadgate-test-{port}
default_login_user = {user}
default_internal_user = {internal}
default_internal_group = {group}
first_valid_uid = 1
log_path = {d}/log/dovecot.log
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {d}/users
}}
userdb {{
  driver = passwd-file
  args = {d}/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
"#,
            d = d.display(),
            internal = if root { "dovecot" } else { user.as_str() },
            imaps = tls_port.unwrap_or(0),
        );
        std::fs::write(d.join("dovecot.conf"), conf).unwrap();
        let mut dovecot = Dovecot {
            dir,
            port,
            tls_port,
            master: None,
        };
        dovecot.spawn(&bin);
        Some(dovecot)
    }

    fn spawn(&mut self, bin: &PathBuf) {
        use std::os::unix::process::CommandExt;
        let child = Command::new(bin)
            // Its own process group: a kill takes the children (and their
            // client connections) down with the master.
            .process_group(0)
            .args(["-F", "-c"])
            .arg(self.dir.path().join("dovecot.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dovecot");
        self.master = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "dovecot did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the server (connections drop), as a crash or a network cut would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.master.take() {
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
            // Children notice their master is gone and exit; give them a moment.
            std::thread::sleep(Duration::from_millis(300));
            let _ = std::fs::remove_file(self.dir.path().join("run/master.pid"));
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn(&binary().unwrap());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/dovecot.log")).unwrap_or_default()
    }

    /// The maildir of the test user (to break things on purpose).
    pub fn maildir(&self) -> PathBuf {
        self.dir.path().join("mail").join(USER).join("Maildir")
    }

    /// The `[imap]` table of a channel reading this server.
    pub fn channel_toml(&self, extra: &str) -> String {
        format!(
            "kind = \"imap\"\n[imap]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\npoll_interval = \"1s\"\n{extra}",
            self.port
        )
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A deliberately small IMAP client for putting test mail in through the
/// protocol (APPEND), and for folder surgery.
pub struct ImapClient {
    stream: std::io::BufReader<std::net::TcpStream>,
    tag: u32,
}

impl ImapClient {
    pub fn login(port: u16) -> ImapClient {
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to dovecot");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = ImapClient {
            stream: std::io::BufReader::new(tcp),
            tag: 0,
        };
        c.line();
        c.command(&format!("LOGIN \"{USER}\" \"{PASSWORD}\""));
        c
    }

    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut l = String::new();
        self.stream.read_line(&mut l).expect("read from dovecot");
        l
    }

    fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.get_mut().write_all(bytes).unwrap();
    }

    /// Run a command; returns the untagged lines; panics unless OK.
    pub fn command(&mut self, cmd: &str) -> Vec<String> {
        self.tag += 1;
        let tag = format!("t{}", self.tag);
        self.send(format!("{tag} {cmd}\r\n").as_bytes());
        self.until_tagged(&tag)
    }

    fn until_tagged(&mut self, tag: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let l = self.line();
            assert!(!l.is_empty(), "dovecot closed the connection");
            if let Some(rest) = l.strip_prefix(&format!("{tag} ")) {
                assert!(rest.starts_with("OK"), "{tag}: {l}");
                return lines;
            }
            lines.push(l);
        }
    }

    /// APPEND a raw message; returns its UID (from APPENDUID).
    pub fn append(&mut self, folder: &str, raw: &[u8]) -> u32 {
        self.tag += 1;
        let tag = format!("t{}", self.tag);
        self.send(format!("{tag} APPEND \"{folder}\" {{{}}}\r\n", raw.len()).as_bytes());
        let cont = self.line();
        assert!(cont.starts_with('+'), "APPEND continuation: {cont}");
        self.send(raw);
        self.send(b"\r\n");
        use std::io::BufRead;
        loop {
            let mut l = String::new();
            self.stream.read_line(&mut l).unwrap();
            if let Some(rest) = l.strip_prefix(&format!("{tag} ")) {
                assert!(rest.starts_with("OK"), "APPEND: {l}");
                // t3 OK [APPENDUID 1795418142 7] Append completed.
                return rest
                    .split_whitespace()
                    .nth(3)
                    .and_then(|u| u.trim_end_matches(']').parse().ok())
                    .unwrap_or(0);
            }
        }
    }

    /// Flags of every message in a folder, by UID.
    pub fn flags(&mut self, folder: &str) -> Vec<(u32, String)> {
        self.command(&format!("SELECT \"{folder}\""));
        self.command("UID FETCH 1:* (UID FLAGS)")
            .into_iter()
            .filter_map(|l| {
                let uid = l
                    .split("UID ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .trim_end_matches(')')
                    .parse()
                    .ok()?;
                let flags = l.split("FLAGS (").nth(1)?.split(')').next()?.to_owned();
                Some((uid, flags))
            })
            .collect()
    }

    pub fn count(&mut self, folder: &str) -> u32 {
        self.command(&format!("STATUS \"{folder}\" (MESSAGES)"))
            .iter()
            .find_map(|l| {
                l.split("MESSAGES ")
                    .nth(1)?
                    .trim_end()
                    .trim_end_matches(')')
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }
}
