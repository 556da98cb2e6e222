//! What the writer last did, for those who judge the daemon's health: the
//! systemd watchdog (is the writer still turning?), `/readyz` and
//! `leadgate status` (are commits failing right now?).
//!
//! A database that answers `SELECT 1` can still refuse every write (a full
//! disk, a filesystem turned read-only), so readiness needs the writer's
//! own word, not only a ping.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long after a failed commit the daemon counts as refusing. It
/// expires so that an idle daemon, which has nothing to commit and so
/// cannot learn that the store is back, turns ready again and lets traffic
/// find out; a failing store then fails the next commit and refusal starts
/// over.
pub const REFUSING_FOR: Duration = Duration::from_secs(10);

/// The writer idles at most this long without marking a turn, so a quiet
/// daemon is told from a stuck one.
pub const IDLE_TURN: Duration = Duration::from_secs(1);

/// Shared by the writer thread (which records) and the rest of the daemon.
#[derive(Debug)]
pub struct WriterHealth {
    epoch: Instant,
    /// Milliseconds since `epoch` of the writer's last turn: a commit that
    /// ended (either way), or an idle wait of [`IDLE_TURN`].
    last_turn_ms: AtomicU64,
    /// Milliseconds since `epoch` + 1 of the last failed commit, 0 when the
    /// last commit succeeded (or none ran yet).
    failed_at_ms: AtomicU64,
    /// The last failure's reason, as the refusals told it.
    failure: std::sync::Mutex<Option<String>>,
    stopped: AtomicBool,
}

impl Default for WriterHealth {
    fn default() -> Self {
        WriterHealth {
            epoch: Instant::now(),
            last_turn_ms: AtomicU64::new(0),
            failed_at_ms: AtomicU64::new(0),
            failure: std::sync::Mutex::new(None),
            stopped: AtomicBool::new(false),
        }
    }
}

impl WriterHealth {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn turned(&self) {
        self.last_turn_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn committed(&self) {
        self.turned();
        if self.failed_at_ms.swap(0, Ordering::Relaxed) != 0 {
            *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    pub fn failed(&self, why: &str) {
        self.turned();
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_owned());
        self.failed_at_ms
            .store(self.now_ms() + 1, Ordering::Relaxed);
    }

    pub fn stopped(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Whether the writer is still running and turned within `within`
    /// (never less than three idle turns, so an idle writer's beat is not
    /// taken for a stall): what the systemd watchdog pings for.
    pub fn alive_within(&self, within: Duration) -> bool {
        let within = within.max(IDLE_TURN * 3);
        !self.stopped.load(Ordering::Relaxed)
            && self
                .now_ms()
                .saturating_sub(self.last_turn_ms.load(Ordering::Relaxed))
                <= within.as_millis() as u64
    }

    /// The reason of the last commit, when it failed less than
    /// [`REFUSING_FOR`] ago and nothing committed since.
    pub fn refusing(&self) -> Option<String> {
        let failed = self.failed_at_ms.load(Ordering::Relaxed);
        if failed == 0 || self.now_ms().saturating_sub(failed - 1) > REFUSING_FOR.as_millis() as u64
        {
            return None;
        }
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_commit_refuses_until_one_succeeds() {
        let h = WriterHealth::default();
        assert_eq!(h.refusing(), None);
        h.failed("disk full");
        assert_eq!(h.refusing().as_deref(), Some("disk full"));
        h.committed();
        assert_eq!(h.refusing(), None);
    }

    #[test]
    fn refusal_expires_without_news() {
        let h = WriterHealth::default();
        h.failed("disk full");
        // As if the failure were older than REFUSING_FOR.
        h.failed_at_ms.store(1, Ordering::Relaxed);
        let h = WriterHealth {
            epoch: Instant::now() - REFUSING_FOR - Duration::from_secs(1),
            ..h
        };
        assert_eq!(h.refusing(), None);
    }

    #[test]
    fn a_writer_that_stopped_or_stalled_is_not_alive() {
        let h = WriterHealth::default();
        h.turned();
        assert!(h.alive_within(Duration::from_secs(1)));
        let stalled = WriterHealth {
            epoch: Instant::now() - Duration::from_secs(5),
            ..WriterHealth::default()
        };
        assert!(!stalled.alive_within(Duration::from_secs(1)));
        h.stopped();
        assert!(!h.alive_within(Duration::from_secs(1)));
    }
}
