//! The delivery task: claims due outbox rows, renders and sends them, and
//! records the outcome. Every instance runs it; the claim
//! (`Store::claim_due_notifications`) makes one of them send each row. A failed
//! send is retried with exponential backoff and jitter until the row is
//! older than `notify.max_age`, then given up with an error in the log.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::config::{NotifySettings, Transport};
use super::template::tidy;
use super::transport::{EmailSender, SendError, TelegramSender};
use crate::store::{NoticeOutcome, OutboxRow, Store};

/// The settings in force and the clients built from them.
struct Current {
    settings: Arc<NotifySettings>,
    telegram: Option<Arc<TelegramSender>>,
    email: Option<Arc<EmailSender>>,
}

/// Shared by the delivery task and the reload path.
pub struct Notifier {
    store: Store,
    current: RwLock<Arc<Current>>,
}

impl Notifier {
    pub fn new(store: Store, settings: Arc<NotifySettings>) -> Arc<Notifier> {
        Arc::new(Notifier {
            store,
            current: RwLock::new(Arc::new(build(settings))),
        })
    }

    /// Use new settings from the next round on (SIGHUP).
    pub fn replace(&self, settings: Arc<NotifySettings>) {
        let next = Arc::new(build(settings));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
    }

    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn build(settings: Arc<NotifySettings>) -> Current {
    let telegram = settings
        .telegram
        .as_ref()
        .and_then(|t| match TelegramSender::new(t) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                tracing::error!(error = %e, "Telegram notifications are off");
                None
            }
        });
    let email = settings
        .email
        .as_ref()
        .and_then(|e| match EmailSender::new(e) {
            Ok(s) => Some(Arc::new(s)),
            Err(err) => {
                tracing::error!(error = %err, "e-mail notifications are off");
                None
            }
        });
    Current {
        settings,
        telegram,
        email,
    }
}

const PRUNE_EVERY: Duration = Duration::from_secs(3_600);

/// Sends in flight at most; more due rows wait for a free slot.
const IN_FLIGHT: usize = 64;

/// Deliver until `shutdown`. Sends run as tasks of their own, so a slow
/// peer (teloxide waits 10s after a 5xx) holds up only its own rows.
pub async fn run(notifier: Arc<Notifier>, shutdown: CancellationToken) {
    let mut sending = JoinSet::new();
    let mut finished = Vec::new();
    // Delivered rows are kept a while (explain shows them), then pruned;
    // the first pass runs at start.
    let mut next_prune = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_prune {
            next_prune += PRUNE_EVERY;
            let keep = notifier.current().settings.keep;
            let before = Utc::now()
                .checked_sub_signed(span(keep))
                .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
            match notifier.store.prune_notifications(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "old notifications pruned"),
                Err(e) => tracing::warn!(error = %e, "cannot prune old notifications"),
            }
        }
        collect(&mut sending, &mut finished);
        record(&notifier, &mut finished).await;
        let every = notifier.current().settings.poll_every;
        match round(&notifier, &mut sending).await {
            Ok(taken) if taken > 0 && sending.len() < IN_FLIGHT => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "notification delivery round failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
            Some(done) = sending.join_next(), if !sending.is_empty() => joined(done, &mut finished),
        }
    }
    // What is being sent finishes (and is recorded) before the process
    // ends; a row not recorded is sent again after its claim runs out.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(done) = sending.join_next().await {
            joined(done, &mut finished);
        }
    })
    .await;
    record(&notifier, &mut finished).await;
}

/// Claim what is due (while slots are free) and start sending it. Returns
/// how many rows it took.
async fn round(
    notifier: &Arc<Notifier>,
    sending: &mut JoinSet<NoticeOutcome>,
) -> Result<usize, crate::store::StoreError> {
    let free = IN_FLIGHT.saturating_sub(sending.len());
    if free == 0 {
        return Ok(0);
    }
    let now = Utc::now();
    let current = notifier.current();
    let s = &current.settings;
    // Longer than any send may take, so a claim is never taken over while
    // its sender still works on it.
    let timeout = [
        s.telegram.as_ref().map(|t| t.timeout),
        s.email.as_ref().map(|e| e.timeout),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(Duration::from_secs(30));
    // teloxide waits 10s after a 5xx before it reports it.
    let until = later(
        now,
        timeout
            .saturating_mul(2)
            .saturating_add(Duration::from_secs(15)),
    );
    let claimed = notifier
        .store
        .claim_due_notifications(now, until, i64::try_from(free).unwrap_or(1))
        .await?;
    let taken = claimed.len();
    for row in claimed {
        let current = current.clone();
        sending.spawn(async move { attempt(&current, row).await });
    }
    Ok(taken)
}

/// Send one claimed row; the outcome is recorded by the delivery loop,
/// together with the others that finished meanwhile.
async fn attempt(current: &Current, row: OutboxRow) -> NoticeOutcome {
    let result = send(current, &row).await;
    let now = Utc::now();
    match result {
        Ok(()) => {
            tracing::info!(lead = row.lead_id, to = %row.recipient, transport = %row.transport,
                event = %row.event, attempts = row.attempts, "notification sent");
            crate::metrics::inc(
                "leadgate_notifications_total",
                &[("transport", &row.transport), ("outcome", "sent")],
                1,
            );
            NoticeOutcome::Sent {
                id: row.id,
                at: now,
            }
        }
        Err(e) => {
            let age = (now - row.created_at).to_std().unwrap_or_default();
            let give_up = e.permanent || age >= current.settings.max_age;
            crate::metrics::inc(
                "leadgate_notifications_total",
                &[
                    ("transport", &row.transport),
                    ("outcome", if give_up { "failed" } else { "retry" }),
                ],
                1,
            );
            if give_up {
                tracing::error!(lead = row.lead_id, to = %row.recipient, transport = %row.transport,
                    event = %row.event, attempts = row.attempts, error = %e.message,
                    "notification given up");
                NoticeOutcome::GaveUp {
                    id: row.id,
                    error: e.message,
                    at: now,
                }
            } else {
                let wait = e
                    .retry_after
                    .unwrap_or_else(|| backoff(&current.settings, row.attempts));
                tracing::warn!(lead = row.lead_id, to = %row.recipient, transport = %row.transport,
                    attempts = row.attempts, error = %e.message, retry_in_ms = wait.as_millis() as u64,
                    "notification not delivered; will retry");
                NoticeOutcome::Retry {
                    id: row.id,
                    error: e.message,
                    at: later(now, wait),
                }
            }
        }
    }
}

/// Record what finished; kept for the next round when the store refuses
/// (the rows' claims outlast a short outage). A row never recorded is
/// sent again when its claim runs out: at worst the person gets the
/// message twice, never not at all.
async fn record(notifier: &Notifier, finished: &mut Vec<NoticeOutcome>) {
    match notifier.store.record_notification_outcomes(finished).await {
        Ok(()) => finished.clear(),
        Err(e) => tracing::warn!(error = %e, rows = finished.len(),
            "cannot record notifications' outcomes; retrying"),
    }
}

/// Outcomes of the sends that have finished, without waiting.
fn collect(sending: &mut JoinSet<NoticeOutcome>, finished: &mut Vec<NoticeOutcome>) {
    while let Some(done) = sending.try_join_next() {
        joined(done, finished);
    }
}

fn joined(done: Result<NoticeOutcome, tokio::task::JoinError>, finished: &mut Vec<NoticeOutcome>) {
    match done {
        Ok(outcome) => finished.push(outcome),
        Err(e) => tracing::error!(error = %e, "a notification send task failed"),
    }
}

/// A configured duration as a time span, at most ten years (an admin's
/// `max_age = "99999999d"` must not overflow a timestamp).
fn span(d: Duration) -> chrono::Duration {
    let ten_years = Duration::from_secs(10 * 366 * 86_400);
    chrono::Duration::from_std(d.min(ten_years)).unwrap_or(chrono::Duration::days(3_660))
}

fn later(now: chrono::DateTime<Utc>, d: Duration) -> chrono::DateTime<Utc> {
    now.checked_add_signed(span(d)).unwrap_or(now)
}

/// `retry_first` doubled per earlier attempt, capped at `retry_max`, then
/// scaled by a random factor in [0.5, 1) so rows that failed together (a
/// peer outage) do not all come back at once.
fn backoff(s: &NotifySettings, attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(30);
    let base = s
        .retry_first
        .saturating_mul(1u32 << doublings)
        .min(s.retry_max);
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let factor = 0.5 + (random % 1_000) as f64 / 2_000.0;
    base.mul_f64(factor)
}

async fn send(current: &Current, row: &OutboxRow) -> Result<(), SendError> {
    let (headline, body) = render(&current.settings, row);
    let not_configured = |t: &str| SendError {
        message: format!("{t} notifications are not configured ([notify.{t}])"),
        permanent: true,
        retry_after: None,
    };
    match Transport::parse(&row.transport) {
        Some(Transport::Telegram) => {
            let Some(bot) = &current.telegram else {
                return Err(not_configured("telegram"));
            };
            let text = tidy(&format!("{headline}\n{body}"));
            bot.send(&row.address, &text).await
        }
        Some(Transport::Email) => {
            let Some(smtp) = &current.email else {
                return Err(not_configured("email"));
            };
            smtp.send(&row.address, &headline, &tidy(&body)).await
        }
        None => Err(SendError {
            message: format!("unknown transport {:?}", row.transport),
            permanent: true,
            retry_after: None,
        }),
    }
}

/// The first line (or subject) and the body of a row's message.
pub(crate) fn render(s: &NotifySettings, row: &OutboxRow) -> (String, String) {
    let mut v: BTreeMap<&'static str, String> = BTreeMap::new();
    v.insert("lead_id", row.lead_id.to_string());
    v.insert("event", row.event.clone());
    v.insert("note", row.note.clone().unwrap_or_default());
    if let Some(l) = &row.lead {
        let mut put = |k: &'static str, x: &Option<String>| {
            if let Some(x) = x {
                v.insert(k, x.clone());
            }
        };
        put("name", &l.name);
        put("phone", &l.phone);
        put("email", &l.email);
        put("messenger", &l.messenger);
        put("subject", &l.subject);
        put("message", &l.message);
        put("product", &l.product);
        put("region", &l.region);
        put("assignee", &l.assignee);
        v.insert("channel", l.channel.clone());
        v.insert("kind", l.kind.clone());
        let contact: Vec<&str> = [&l.name, &l.phone, &l.email, &l.messenger]
            .into_iter()
            .filter_map(|x| x.as_deref())
            .collect();
        v.insert("contact", contact.join(", "));
        let summary = l
            .subject
            .clone()
            .or_else(|| l.message.as_ref().map(|m| m.chars().take(300).collect()))
            .unwrap_or_default();
        v.insert("summary", summary);
    }
    let link = s.templates.link.render(&v);
    v.insert("link", link);
    let headline = match row.event.as_str() {
        "escalated" => &s.templates.escalated,
        "supervisor" => &s.templates.supervisor,
        _ => &s.templates.assigned,
    }
    .render(&v);
    (headline, s.templates.body.render(&v))
}
