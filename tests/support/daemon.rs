use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A configuration folder for a test daemon.
pub struct TestConfig {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub db_url: String,
}

pub const TEAM: &str = r#"
[users.olga]
name = "Olga"
[users.ivan]
name = "Ivan"
[users.anna]
name = "Anna"
[users.pavel]
name = "Pavel"
[roles.sales]
members = ["olga", "ivan", "anna"]
[roles.kazan]
members = ["pavel"]
"#;

pub const ROUTING: &str = r#"
default = "role:sales"
[[rules]]
name = "kazan"
when.region = "Казань"
assign = "role:kazan"
"#;

/// The form channels the corpus expectations assume (see
/// ../shared/corpus/README.md: `partner` key, `vendors` not a lead source).
pub const CORPUS_CHANNELS: &[(&str, &str)] = &[
    (
        "site",
        r#"kind = "form"
responsible = "role:sales"
[form]
cors_origins = ["https://ourcompany.example"]
honeypot_fields = ["website"]
rate_limit_per_minute = 0
"#,
    ),
    (
        "partner",
        r#"kind = "form"
responsible = "user:ivan"
[form]
api_key = "form_test_key"
rate_limit_per_minute = 0
"#,
    ),
    (
        "vendors",
        r#"kind = "form"
lead_source = false
[form]
rate_limit_per_minute = 0
"#,
    ),
];

impl TestConfig {
    /// `db_url`: `None` for an SQLite file inside the folder.
    pub fn new(
        db_url: Option<String>,
        channels: &[(&str, &str)],
        team: &str,
        routing: &str,
    ) -> TestConfig {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let db_url =
            db_url.unwrap_or_else(|| format!("sqlite://{}/leads.db", dir.path().display()));
        let cfg = TestConfig { dir, port, db_url };
        cfg.write_main("");
        std::fs::create_dir_all(cfg.dir.path().join("channels.d")).unwrap();
        for (name, body) in channels {
            cfg.write(&format!("channels.d/{name}.toml"), body);
        }
        cfg.write("team.toml", team);
        cfg.write("routing.toml", routing);
        cfg
    }

    pub fn corpus(db_url: Option<String>) -> TestConfig {
        TestConfig::new(db_url, CORPUS_CHANNELS, TEAM, ROUTING)
    }

    /// (Re)write leadgate.toml; `extra` is appended (more sections).
    pub fn write_main(&self, extra: &str) {
        self.write(
            "leadgate.toml",
            &format!(
                "[database]\nurl = \"{}\"\nacquire_timeout = \"1s\"\n[http]\nlisten = \"127.0.0.1:{}\"\n[log]\nlevel = \"info\"\n{extra}",
                self.db_url, self.port
            ),
        );
    }

    pub fn write(&self, name: &str, body: &str) {
        std::fs::write(self.dir.path().join(name), body).unwrap();
    }

    /// Rewrite every channel file's `poll_interval`.
    pub fn with_poll_interval(self, every: &str) -> TestConfig {
        let dir = self.dir.path().join("channels.d");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let text: String = text
                .lines()
                .map(|l| {
                    if l.starts_with("poll_interval") {
                        format!("poll_interval = \"{every}\"")
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            std::fs::write(&path, text + "\n").unwrap();
        }
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The daemon as a child process; killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    env: Vec<(String, String)>,
    pub log: PathBuf,
    starts: u32,
    config: PathBuf,
    port: u16,
    /// A soft `RLIMIT_NOFILE` to start the daemon with (the hard limit
    /// stays the test's), as a shell's default of 1024 would.
    nofile_soft: Option<u64>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_leadgate")
}

impl Daemon {
    pub fn start(cfg: &TestConfig) -> Daemon {
        Daemon::start_with_env(cfg, &[])
    }

    pub fn start_with_env(cfg: &TestConfig, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with(cfg, env, None)
    }

    /// Start with `env` and, if given, this soft `RLIMIT_NOFILE`.
    pub fn start_with(cfg: &TestConfig, env: &[(&str, &str)], nofile_soft: Option<u64>) -> Daemon {
        let mut d = Daemon {
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: cfg.path().join("daemon.log"),
            starts: 0,
            config: cfg.path().to_owned(),
            port: cfg.port,
            nofile_soft,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(binary());
        command
            .args(["--config", self.config.to_str().unwrap(), "run"])
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(soft) = self.nofile_soft {
            use std::os::unix::process::CommandExt;
            // SAFETY: getrlimit and setrlimit are async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    lim.rlim_cur = soft.min(lim.rlim_max);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().expect("start leadgate");
        self.child = Some(child);
        self.wait_ready();
    }

    /// How the process ended, once it has (exited or crashed since it was
    /// last started); `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "leadgate exited during start ({status}):\n{}",
                    self.log_text()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "leadgate did not start listening within 30 s:\n{}",
            self.log_text()
        );
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send a signal (SIGHUP to reload).
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().expect("wait for leadgate")
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- leadgate log ---\n{}", self.log_text());
        }
    }
}

/// Run `leadgate <args>` against a config folder; (exit code, stdout, stderr).
pub fn cli(cfg: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .expect("run leadgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
