//! What the messenger benchmarks (`telegram`, `vk`) share: knobs from the
//! environment, and a release daemon started on a throw-away configuration
//! that dies with the bench.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub fn env_num<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

pub struct Daemon {
    child: Child,
    pub port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Write `leadgate.toml` (SQLite in `dir`, warn-level log), a one-seller
/// team and its routing; the caller adds `channels.d/*.toml`.
pub fn write_base_config(dir: &Path, port: u16) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("channels.d"))?;
    std::fs::write(
        dir.join("leadgate.toml"),
        format!(
            "[database]\nurl = \"sqlite://{}/leads.db\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[log]\nformat = \"plain\"\nlevel = \"warn\"\n",
            dir.display()
        ),
    )?;
    std::fs::write(
        dir.join("team.toml"),
        "[users.olga]\nname = \"Olga\"\n[roles.sales]\nmembers = [\"olga\"]\n",
    )?;
    std::fs::write(dir.join("routing.toml"), "default = \"role:sales\"\n")?;
    Ok(())
}

/// Run the release daemon on `dir` and wait until it listens on `port`.
pub fn spawn_daemon(dir: &Path, port: u16) -> anyhow::Result<Daemon> {
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leadgate"));
    cmd.arg("--config")
        .arg(dir)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("start leadgate")?;
    let daemon = Daemon { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("the daemon did not listen within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(daemon)
}

/// The `p` quantile of sorted samples, in milliseconds.
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}
