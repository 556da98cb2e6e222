//! Runs the poller channels (IMAP today; Telegram and VK long polling as
//! they land). Each runs under a lease, so with several instances on one
//! database exactly one polls it; each is restarted with backoff after a
//! transient error and retried slowly after a permanent one (a wrong
//! password does not heal by hammering the server). A reload restarts only
//! the channels whose settings changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leadgate_connector::{CancellationToken, ChannelId, ConnectorError, PollerContext, Sink};
use leadgate_imap::{ImapChannel, ImapSettings};
use leadgate_telegram::{TelegramChannel, TelegramSettings};
use leadgate_vk::{VkChannel, VkMode, VkSettings};
use tokio::task::JoinHandle;

use crate::config::{ChannelProtocol, Config};
use crate::store::{LeaseKeeper, Store};

const MAX_BACKOFF: Duration = Duration::from_secs(300);
const PERMANENT_RETRY: Duration = Duration::from_secs(600);

/// A polling channel's settings, compared on reload to decide what to
/// restart.
#[derive(Debug, Clone, PartialEq)]
enum PollerSettings {
    Imap(Box<ImapSettings>),
    /// A VK community read by Bots Long Poll (Callback channels are served
    /// by the HTTP endpoint instead).
    Vk(Box<VkSettings>),
    /// A Telegram bot: long polling, or in webhook mode the one task that
    /// registers the webhook (under the lease, so one instance does it).
    Telegram(Box<TelegramSettings>),
}

impl PollerSettings {
    fn of(protocol: &ChannelProtocol) -> Option<PollerSettings> {
        match protocol {
            ChannelProtocol::Imap(s) => Some(PollerSettings::Imap(s.clone())),
            ChannelProtocol::Vk(s) if s.mode == VkMode::LongPoll => {
                Some(PollerSettings::Vk(s.clone()))
            }
            ChannelProtocol::Telegram(s) => Some(PollerSettings::Telegram(s.clone())),
            _ => None,
        }
    }

    fn build(&self, id: ChannelId) -> Result<PollerChannel, String> {
        match self {
            PollerSettings::Imap(s) => ImapChannel::new(id, (**s).clone()).map(PollerChannel::Imap),
            PollerSettings::Vk(s) => VkChannel::new(id, (**s).clone()).map(PollerChannel::Vk),
            PollerSettings::Telegram(s) => {
                TelegramChannel::new(id, (**s).clone()).map(PollerChannel::Telegram)
            }
        }
    }
}

/// A polling channel ready to run: one session until it fails or stops.
enum PollerChannel {
    Imap(ImapChannel),
    Vk(VkChannel),
    Telegram(TelegramChannel),
}

impl PollerChannel {
    fn id(&self) -> &ChannelId {
        match self {
            PollerChannel::Imap(c) => &c.id,
            PollerChannel::Vk(c) => &c.id,
            PollerChannel::Telegram(c) => &c.id,
        }
    }

    async fn run(&self, ctx: &PollerContext) -> Result<(), ConnectorError> {
        match self {
            PollerChannel::Imap(c) => leadgate_imap::run(c, ctx).await,
            PollerChannel::Vk(c) => leadgate_vk::run(c, ctx).await,
            PollerChannel::Telegram(c) => leadgate_telegram::run(c, ctx).await,
        }
    }
}

struct Running {
    settings: PollerSettings,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

pub struct Pollers {
    store: Store,
    sink: Arc<dyn Sink>,
    owner: String,
    lease_ttl: Duration,
    running: HashMap<String, Running>,
}

/// Who this instance is in the leases table: stable across restarts of the
/// same instance, so a restarted daemon takes its leases back at once.
pub fn instance_name(config: &Config) -> String {
    if let Some(name) = config.main.instance.name.as_ref().filter(|n| !n.is_empty()) {
        return name.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", config.main.http.listen.port())
}

impl Pollers {
    pub fn new(store: Store, sink: Arc<dyn Sink>, owner: String, lease_ttl: Duration) -> Pollers {
        Pollers {
            store,
            sink,
            owner,
            lease_ttl,
            running: HashMap::new(),
        }
    }

    /// Make the running pollers match `config`.
    pub async fn apply(&mut self, config: &Config) {
        let wanted: HashMap<String, PollerSettings> = config
            .channels
            .iter()
            .filter(|c| c.enabled)
            .filter_map(|c| Some((c.id.0.clone(), PollerSettings::of(&c.protocol)?)))
            .collect();
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(id, r)| wanted.get(*id) != Some(&r.settings))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(r) = self.running.remove(&id) {
                r.stop.cancel();
                let _ = r.task.await;
                tracing::info!(channel = %id, "poller stopped");
            }
        }
        for (id, settings) in wanted {
            if self.running.contains_key(&id) {
                continue;
            }
            let channel = match settings.build(id.as_str().into()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(channel = %id, error = %e, "poller not started");
                    continue;
                }
            };
            let stop = CancellationToken::new();
            let task = self.spawn(channel, stop.clone());
            self.running.insert(
                id,
                Running {
                    settings,
                    stop,
                    task,
                },
            );
        }
    }

    fn spawn(&self, channel: PollerChannel, stop: CancellationToken) -> JoinHandle<()> {
        let keeper = LeaseKeeper {
            store: self.store.clone(),
            name: format!("poller:{}", channel.id()),
            owner: self.owner.clone(),
            ttl: self.lease_ttl,
        };
        let (store, sink) = (self.store.clone(), self.sink.clone());
        let channel = Arc::new(channel);
        tokio::spawn(async move {
            let workers = Arc::new(std::sync::Mutex::new(Vec::new()));
            let spawned = workers.clone();
            keeper
                .run(stop, move |held| {
                    let task = tokio::spawn(supervise(
                        channel.clone(),
                        store.clone(),
                        sink.clone(),
                        held,
                    ));
                    spawned.lock().unwrap_or_else(|e| e.into_inner()).push(task);
                })
                .await;
            let tasks = std::mem::take(&mut *workers.lock().unwrap_or_else(|e| e.into_inner()));
            for t in tasks {
                let _ = t.await;
            }
        })
    }

    /// Stop every poller; each finishes the batch it is committing.
    pub async fn stop_all(self) {
        for (_, r) in self.running {
            r.stop.cancel();
            let _ = r.task.await;
        }
    }
}

/// How long a poller session must last to count as having reached its
/// peer (see `supervise`).
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// A little spread so many channels do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d + d.mul_f64(f64::from(nanos % 500) / 1000.0)
}

async fn supervise(
    channel: Arc<PollerChannel>,
    store: Store,
    sink: Arc<dyn Sink>,
    held: CancellationToken,
) {
    let id = channel.id().clone();
    let mut backoff = Duration::from_secs(1);
    crate::metrics::set("leadgate_poller_up", &[("channel", id.as_str())], 0.0);
    while !held.is_cancelled() {
        let cursors = match store.cursors(id.as_str()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(channel = %id, error = %e, "cannot read the channel's cursor; retrying");
                if sleep_or_stop(jitter(backoff), &held).await {
                    break;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let ctx = PollerContext {
            channel: id.clone(),
            cursors,
            sink: sink.clone(),
            shutdown: held.clone(),
        };
        let started = Instant::now();
        crate::metrics::set("leadgate_poller_up", &[("channel", id.as_str())], 1.0);
        let result = channel.run(&ctx).await;
        crate::metrics::set("leadgate_poller_up", &[("channel", id.as_str())], 0.0);
        let Err(e) = result else { break };
        crate::metrics::inc(
            "leadgate_poller_errors_total",
            &[("channel", id.as_str())],
            1,
        );
        crate::metrics::set(
            "leadgate_channel_last_error_timestamp_seconds",
            &[("channel", id.as_str())],
            crate::metrics::now_seconds(),
        );
        let _ = store
            .record_channel_error(id.as_str(), &e.to_string())
            .await;
        // A session that outlived the wait before it reached its peer: the
        // next failure is news, not the same outage, so it starts from a
        // short wait again. (Between 10 s, so an instant failure never
        // resets, and a minute, so a long outage's wait is not the bar.)
        if started.elapsed() >= backoff.clamp(HEALTHY_SESSION, Duration::from_secs(60)) {
            backoff = Duration::from_secs(1);
        }
        let wait = if e.is_transient() {
            tracing::warn!(channel = %id, error = %e, retry_in = ?backoff, "poller session ended; reconnecting");
            let w = backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            w
        } else {
            tracing::error!(channel = %id, error = %e, retry_in = ?PERMANENT_RETRY, "poller failed; fix the channel's settings (retrying slowly)");
            PERMANENT_RETRY
        };
        if sleep_or_stop(jitter(wait), &held).await {
            break;
        }
    }
}

/// Sleep; true when stopped meanwhile.
async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.cancelled() => true,
    }
}
