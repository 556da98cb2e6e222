//! The sd_notify protocol (`Type=notify`): datagrams like `READY=1` to the
//! socket named by `$NOTIFY_SOCKET`. Without that variable every call is a
//! no-op, so the daemon runs the same outside systemd.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_str()?.to_owned();
            let addr = if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            } else {
                std::os::unix::net::SocketAddr::from_pathname(&path).ok()?
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        Notifier { socket }
    }

    pub fn is_active(&self) -> bool {
        self.socket.is_some()
    }

    /// Send one state line set, e.g. `READY=1\nSTATUS=…`. Failures are
    /// logged, never fatal: systemd may have gone away during shutdown.
    pub fn notify(&self, state: &str) {
        if let Some((sock, addr)) = &self.socket
            && let Err(e) = sock.send_to_addr(state.as_bytes(), addr)
        {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    /// Half the watchdog interval systemd asked for, if it asked.
    pub fn watchdog_period(&self) -> Option<Duration> {
        if !self.is_active() {
            return None;
        }
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Some(pid) = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            && pid != std::process::id()
        {
            return None;
        }
        Some(Duration::from_micros(usec / 2).max(Duration::from_millis(100)))
    }
}
