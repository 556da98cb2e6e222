//! The pipeline: normalize → classify → (in the writer) identify → route →
//! store. The pure steps run on the caller's task, in parallel across
//! requests; the steps that read and write shared state run in the single
//! writer, inside the commit transaction.

mod classify;
pub mod normalize;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use leadgate_connector::{
    Attachment, Batch, BoxFuture, CallDirection, ChannelId, CursorUpdate, Dedupe, Disposition,
    IdentityKind, Inbound, Receipt, Sink, SinkError, fields,
};
use sha2::{Digest, Sha256};

pub use classify::classify;

use crate::config::{ChannelKind, Config};
use crate::routing::{AssignedBy, Assignee, LeadFacts, RoutingConfig, Strategy, TeamConfig};
use crate::store::WriterHandle;

/// What the writer needs to know about a channel.
#[derive(Debug, Clone)]
pub struct ChannelRules {
    pub kind: ChannelKind,
    pub lead_source: bool,
    pub responsible: Option<Assignee>,
    pub dedupe_window: Duration,
    pub activity_window: Duration,
}

/// The part of the configuration the pipeline reads; swapped whole on reload.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub channels: HashMap<String, ChannelRules>,
    pub routing: RoutingConfig,
    /// Shared with every prepared item: the writer decides by it.
    pub team: Arc<TeamConfig>,
    pub region: phonenumber::country::Id,
}

impl PipelineSettings {
    pub fn from_config(config: &Config) -> Self {
        let channels = config
            .channels
            .iter()
            .filter(|c| c.enabled)
            .map(|c| {
                (
                    c.id.0.clone(),
                    ChannelRules {
                        kind: c.kind,
                        lead_source: c.lead_source,
                        responsible: c.responsible.clone(),
                        dedupe_window: c.dedupe_window.0,
                        activity_window: c.activity_window.0,
                    },
                )
            })
            .collect();
        PipelineSettings {
            channels,
            routing: config.routing.clone(),
            team: Arc::new(config.team.clone()),
            region: crate::config::phone_region(&config.main.pipeline.default_region)
                .unwrap_or(phonenumber::country::Id::RU),
        }
    }
}

/// Where a new lead would go: a user directly, or a role whose member the
/// writer picks with the role's strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Nobody,
    User(String),
    Role {
        role: String,
        members: Vec<String>,
        strategy: Strategy,
    },
}

/// An inbound after the pure steps, ready for the writer.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub inbound: Inbound,
    pub kind: ChannelKind,
    pub name: Option<String>,
    /// Normalized `(kind, value)` identities, strongest first.
    pub identities: Vec<(IdentityKind, String)>,
    pub text: Option<String>,
    pub fields: BTreeMap<String, String>,
    pub attachments: Vec<Attachment>,
    /// A disposition decided without looking at the database.
    pub verdict: Option<(Disposition, String)>,
    pub content_key: Option<String>,
    pub dedupe_since: DateTime<Utc>,
    pub activity_since: DateTime<Utc>,
    pub route: Route,
    pub assigned_by: AssignedBy,
    /// The matched rule's sticky-owner and after-hours options.
    pub policy: crate::assign::Policy,
    /// The team (calendars, caps, weights) the writer decides the person by.
    pub team: Arc<TeamConfig>,
}

impl Prepared {
    pub fn first(&self, kind: IdentityKind) -> Option<&str> {
        self.identities
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_str())
    }

    pub fn messenger(&self) -> Option<String> {
        self.identities
            .iter()
            .find(|(k, _)| matches!(k, IdentityKind::Telegram | IdentityKind::Vk))
            .map(|(k, v)| format!("{}:{v}", k.as_str()))
    }
}

struct Facts<'a> {
    inbound: &'a Inbound,
    kind: ChannelKind,
    name: Option<&'a str>,
    identities: &'a [(IdentityKind, String)],
    text: Option<&'a str>,
    fields: &'a BTreeMap<String, String>,
}

impl LeadFacts for Facts<'_> {
    fn fact(&self, field: &str) -> Option<&str> {
        let first = |kind| {
            self.identities
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, v)| v.as_str())
        };
        match field {
            "channel" => Some(self.inbound.channel.as_str()),
            "kind" => Some(self.kind.as_str()),
            "name" => self.name,
            "phone" => first(IdentityKind::Phone),
            "email" => first(IdentityKind::Email),
            "text" => self.text,
            "subject" => self.inbound.subject.as_deref(),
            other => self.fields.get(other).map(String::as_str),
        }
    }
}

/// Run the pure steps on one inbound.
pub fn prepare(inbound: Inbound, settings: &PipelineSettings) -> Result<Prepared, SinkError> {
    let rules = settings
        .channels
        .get(inbound.channel.as_str())
        .ok_or_else(|| SinkError::UnknownChannel(inbound.channel.0.clone()))?;

    let name = inbound.sender.name.as_deref().and_then(normalize::name);
    let mut identities = Vec::new();
    for id in &inbound.sender.identities {
        let value = match id.kind {
            IdentityKind::Phone => normalize::phone(&id.value, settings.region),
            IdentityKind::Email => normalize::email(&id.value),
            IdentityKind::Telegram => normalize::telegram(&id.value),
            IdentityKind::Vk => Some(id.value.trim().to_owned()).filter(|v| !v.is_empty()),
        };
        if let Some(value) = value
            && !identities.iter().any(|(k, v)| *k == id.kind && *v == value)
        {
            identities.push((id.kind, value));
        }
    }
    let text = match (&inbound.text, &inbound.html) {
        (Some(t), _) if !t.trim().is_empty() => Some(t.trim().to_owned()),
        (_, Some(html)) => Some(normalize::html_to_text(html)).filter(|t| !t.is_empty()),
        _ => None,
    };
    let mut fields_map: BTreeMap<String, String> = inbound
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), v.trim().to_owned()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    normalize::lift_utm(&mut fields_map);
    if let Some(line) = fields_map.get_mut(fields::CALLED_LINE)
        && let Some(e164) = normalize::phone(line, settings.region)
    {
        *line = e164;
    }

    let verdict =
        classify(&inbound.flags, rules.lead_source, inbound.channel.as_str()).or_else(|| {
            inbound
                .call
                .as_ref()
                .filter(|c| c.direction == CallDirection::Internal)
                .map(|c| {
                    (
                        Disposition::InternalCall,
                        format!("call {} is between extensions", c.call_id),
                    )
                })
        });
    let content_key = matches!(inbound.dedupe, Dedupe::ContentWithinWindow)
        .then(|| content_key(&name, &identities, &text, &inbound.subject, &fields_map));

    let decision = settings.routing.decide(
        &Facts {
            inbound: &inbound,
            kind: rules.kind,
            name: name.as_deref(),
            identities: &identities,
            text: text.as_deref(),
            fields: &fields_map,
        },
        rules.responsible.as_ref(),
    );
    let route = match decision.target {
        None => Route::Nobody,
        Some(Assignee::User(u)) => Route::User(u),
        Some(Assignee::Role(role)) => Route::Role {
            members: settings
                .team
                .active_members(&role)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            strategy: decision
                .strategy
                .or_else(|| settings.team.roles.get(&role).map(|r| r.strategy))
                .unwrap_or_default(),
            role,
        },
    };
    let received = inbound.received_at;
    let since = |window: Duration| {
        received - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::days(36_500))
    };
    Ok(Prepared {
        kind: rules.kind,
        name,
        identities,
        text,
        fields: fields_map,
        attachments: inbound.attachments.clone(),
        verdict,
        content_key,
        dedupe_since: since(rules.dedupe_window),
        activity_since: since(rules.activity_window),
        route,
        assigned_by: decision.assigned_by,
        policy: decision.policy,
        team: settings.team.clone(),
        inbound,
    })
}

/// What makes two posts "the same" for double-click detection: everything
/// the person typed, normalized; not when or from where it was sent.
fn content_key(
    name: &Option<String>,
    identities: &[(IdentityKind, String)],
    text: &Option<String>,
    subject: &Option<String>,
    fields_map: &BTreeMap<String, String>,
) -> String {
    let mut h = Sha256::new();
    let mut put = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    put(name.as_deref().unwrap_or("").to_lowercase().as_str());
    let mut ids: Vec<String> = identities
        .iter()
        .map(|(k, v)| format!("{}:{v}", k.as_str()))
        .collect();
    ids.sort();
    for id in &ids {
        put(id);
    }
    put(text.as_deref().unwrap_or(""));
    put(subject.as_deref().unwrap_or(""));
    for (k, v) in fields_map {
        if k != fields::REFERER && k != fields::PAGE_URL {
            put(k);
            put(v);
        }
    }
    hex::encode(h.finalize())
}

/// The pipeline as connectors see it.
pub struct Pipeline {
    settings: RwLock<Arc<PipelineSettings>>,
    writer: WriterHandle,
}

impl Pipeline {
    pub fn new(settings: PipelineSettings, writer: WriterHandle) -> Self {
        Pipeline {
            settings: RwLock::new(Arc::new(settings)),
            writer,
        }
    }

    pub fn settings(&self) -> Arc<PipelineSettings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Apply a reloaded configuration to items submitted from now on.
    pub fn replace_settings(&self, settings: PipelineSettings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
    }
}

impl Sink for Pipeline {
    fn submit(&self, batch: Batch) -> BoxFuture<'_, Result<Vec<Receipt>, SinkError>> {
        Box::pin(async move {
            let settings = self.settings();
            let channel = batch.items.first().map(|i| i.channel.clone());
            let items = batch
                .items
                .into_iter()
                .map(|i| prepare(i, &settings))
                .collect::<Result<Vec<_>, _>>()?;
            self.writer.write(channel, items, batch.cursor).await
        })
    }

    fn save_cursor(
        &self,
        channel: ChannelId,
        cursor: CursorUpdate,
    ) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            if !self.settings().channels.contains_key(channel.as_str()) {
                return Err(SinkError::UnknownChannel(channel.0));
            }
            self.writer
                .write(Some(channel), Vec::new(), Some(cursor))
                .await
                .map(drop)
        })
    }
}
