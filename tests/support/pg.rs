//! A throwaway PostgreSQL server on a loopback port, owned by one test
//! process: initdb into a temp folder, pg_ctl start/stop. PostgreSQL refuses
//! to run as root, so under root every command runs as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use super::free_port;

pub struct PgServer {
    dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    as_postgres: bool,
}

fn find_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LEADGATE_TEST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

impl PgServer {
    /// Start a fresh server, or `None` when PostgreSQL is not installed.
    pub fn start() -> Option<PgServer> {
        let bin = find_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("leadgate-pg-")
            .tempdir()
            .ok()?;
        let as_postgres = is_root();
        if as_postgres {
            let out = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .output()
                .ok()?;
            assert!(
                out.status.success(),
                "chown postgres {}: {out:?}",
                dir.path().display()
            );
        }
        let pg = PgServer {
            port: free_port(),
            dir,
            bin,
            as_postgres,
        };
        let data = pg.data_dir();
        let out = pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.start_again();
        Some(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).current_dir(self.dir.path());
        cmd.output()
            .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()))
    }

    /// Start (or start again after [`stop`](Self::stop)) and wait until it
    /// accepts connections.
    pub fn start_again(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("pg.log");
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-o",
                &opts,
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stop at once, dropping every connection (what an outage looks like).
    pub fn stop(&self) {
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new empty database; returns its URL.
    pub fn create_database(&self) -> String {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "lg_{}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let out = self.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                &name,
            ],
        );
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ],
        );
    }
}

/// A server for this test process, or `None` (after saying so) when absent.
pub fn server() -> Option<PgServer> {
    let pg = PgServer::start();
    if pg.is_none() {
        super::skip_or_fail("PostgreSQL (Debian package postgresql)");
    }
    pg
}
