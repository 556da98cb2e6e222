//! `leadgate run`: wire configuration, store, pipeline and connectors
//! together, and stop without losing what was acknowledged.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use leadgate_forms::{FormChannel, FormsState};
use leadgate_telegram::{TelegramChannel, TelegramState};
use leadgate_telephony::{TelephonyChannel, TelephonyState};
use leadgate_vk::{VkChannel, VkState};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::{self, ChannelProtocol, Config};
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::pollers::Pollers;
use crate::store::{self, Store};

pub fn form_channels(config: &Config) -> Vec<FormChannel> {
    config
        .channels
        .iter()
        .filter(|c| c.enabled)
        .filter_map(|c| match &c.protocol {
            ChannelProtocol::Form(settings) => {
                FormChannel::new(c.id.clone(), (**settings).clone()).ok()
            }
            _ => None,
        })
        .collect()
}

pub fn telephony_channels(config: &Config) -> Vec<TelephonyChannel> {
    config
        .channels
        .iter()
        .filter(|c| c.enabled)
        .filter_map(|c| match &c.protocol {
            ChannelProtocol::Telephony(settings) => {
                TelephonyChannel::new(c.id.clone(), (**settings).clone()).ok()
            }
            _ => None,
        })
        .collect()
}

/// Every enabled VK channel: the Callback endpoint serves those in
/// callback mode and refuses requests for the long-poll ones by name.
pub fn vk_channels(config: &Config) -> Vec<VkChannel> {
    config
        .channels
        .iter()
        .filter(|c| c.enabled)
        .filter_map(|c| match &c.protocol {
            ChannelProtocol::Vk(settings) => {
                VkChannel::new(c.id.clone(), (**settings).clone()).ok()
            }
            _ => None,
        })
        .collect()
}

/// Every enabled Telegram channel: the webhook endpoint serves those in
/// webhook mode and refuses deliveries for the polling ones by name.
pub fn telegram_channels(config: &Config) -> Vec<TelegramChannel> {
    config
        .channels
        .iter()
        .filter(|c| c.enabled)
        .filter_map(|c| match &c.protocol {
            ChannelProtocol::Telegram(settings) => {
                TelegramChannel::new(c.id.clone(), (**settings).clone()).ok()
            }
            _ => None,
        })
        .collect()
}

pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let url =
        config::database_url(&config.main.database, &config.dir).map_err(anyhow::Error::msg)?;
    let store = Store::connect(&url, &config.main.database)
        .await
        .with_context(|| format!("cannot open {}", store::describe_url(&url)))?;
    store
        .migrate()
        .await
        .with_context(|| format!("cannot migrate {}", store::describe_url(&url)))?;
    Ok(store)
}

pub async fn run(config_dir: &Path, config: Config) -> anyhow::Result<()> {
    crate::server::raise_open_files_limit_logged();
    let store = open_store(&config).await?;
    let url =
        config::database_url(&config.main.database, &config.dir).map_err(anyhow::Error::msg)?;
    let (writer, writer_task) = store::spawn_writer(store.clone(), config.main.pipeline.max_batch);
    let writer_health = writer.health();
    let pipeline = Arc::new(Pipeline::new(
        PipelineSettings::from_config(&config),
        writer,
    ));
    let forms = FormsState::new(pipeline.clone(), form_channels(&config));
    let telephony = TelephonyState::new(pipeline.clone(), telephony_channels(&config));
    let vk = VkState::new(pipeline.clone(), vk_channels(&config));
    let telegram = TelegramState::new(pipeline.clone(), telegram_channels(&config));
    let mut pollers = Pollers::new(
        store.clone(),
        pipeline.clone(),
        crate::pollers::instance_name(&config),
        config.main.instance.lease_ttl.0,
    );

    let listener = tokio::net::TcpListener::bind(config.main.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.main.http.listen))?;
    let app = crate::server::app(
        store.clone(),
        writer_health.clone(),
        vec![
            leadgate_forms::router(forms.clone()),
            leadgate_telephony::router(telephony.clone()),
            leadgate_vk::router(vk.clone()),
            leadgate_telegram::router(telegram.clone()),
        ],
    );
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(crate::server::serve(
        listener,
        app,
        config.main.http.request_timeout.0,
        config.main.http.trusted_proxies.clone(),
        shutdown.clone(),
    ));
    pollers.apply(&config).await;
    // Lead timers (queue releases, response deadlines) fire on the one
    // instance holding the `timers` lease.
    let timers = tokio::spawn({
        let (store, pipeline) = (store.clone(), pipeline.clone());
        let keeper = store::LeaseKeeper {
            store: store.clone(),
            name: "timers".into(),
            owner: crate::pollers::instance_name(&config),
            ttl: config.main.instance.lease_ttl.0,
        };
        keeper.run(shutdown.clone(), move |held| {
            tokio::spawn(store::sweep_timers(store.clone(), pipeline.clone(), held));
        })
    });
    // Notifications go out from every instance: each outbox row is claimed
    // by one sender before it is sent.
    let outbox = crate::notify::Notifier::new(store.clone(), config.notify.clone());
    let delivery = tokio::spawn(crate::notify::deliver(outbox.clone(), shutdown.clone()));
    let notifier = Arc::new(crate::systemd::Notifier::from_env());
    let channels_running = config.channels.iter().filter(|c| c.enabled).count();
    notifier.notify(&format!(
        "READY=1\nSTATUS=serving {channels_running} channel(s) on {}, store {}",
        config.main.http.listen,
        store.backend()
    ));
    if let Some(period) = notifier.watchdog_period() {
        // Alive means the writer still turns: it commits, or it idles and
        // says so every second. A writer stuck for the whole watchdog
        // interval gets the daemon restarted.
        let (notifier, shutdown, writer) =
            (notifier.clone(), shutdown.clone(), writer_health.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            while !shutdown.is_cancelled() {
                tick.tick().await;
                if writer.alive_within(period * 2) {
                    notifier.notify("WATCHDOG=1");
                }
            }
        });
    }
    tracing::info!(
        listen = %config.main.http.listen,
        store = %store::describe_url(&url),
        channels = config.channels.iter().filter(|c| c.enabled).count(),
        "leadgate running"
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut log_level = config.main.log.level.clone();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match config::load(config_dir) {
                Ok(new) => {
                    // First, so that this reload's own lines follow it.
                    if new.main.log.level != log_level {
                        match crate::logging::set_level(&new.main.log.level) {
                            Ok(()) => {
                                log_level = new.main.log.level.clone();
                                tracing::info!(level = %log_level, "log level changed");
                            }
                            Err(e) => tracing::warn!(error = %e, level = %new.main.log.level, "log level not changed"),
                        }
                    }
                    pipeline.replace_settings(PipelineSettings::from_config(&new));
                    forms.set_channels(form_channels(&new));
                    telephony.set_channels(telephony_channels(&new));
                    vk.set_channels(vk_channels(&new));
                    telegram.set_channels(telegram_channels(&new));
                    pollers.apply(&new).await;
                    outbox.replace(new.notify.clone());
                    tracing::info!(channels = new.channels.len(), "configuration reloaded");
                    let pending = config.main.changed_until_restart(&new.main);
                    if !pending.is_empty() {
                        tracing::warn!(
                            settings = %pending.join(", "),
                            "changed settings apply at the next restart (systemctl restart leadgate); the running ones stay"
                        );
                    }
                    notifier.notify(&format!("STATUS=reloaded: serving {} channel(s)", new.channels.iter().filter(|c| c.enabled).count()));
                }
                Err(e) => {
                    for p in &e.problems {
                        tracing::error!(problem = %p, "reload rejected; the running configuration stays");
                    }
                }
            },
        }
    }

    tracing::info!("shutting down: finishing requests in flight");
    pollers.stop_all().await;
    notifier.notify("STOPPING=1\nSTATUS=stopping: finishing requests in flight");
    shutdown.cancel();
    timers.await.ok();
    delivery.await.ok();
    match server.await {
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP server stopped with an error"),
        Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
        Ok(Ok(())) => {}
    }
    // The last handles go with the pipeline; the writer drains its queue,
    // commits, and ends.
    drop(forms);
    drop(telephony);
    drop(vk);
    drop(telegram);
    drop(pipeline);
    writer_task.await.ok();
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}
