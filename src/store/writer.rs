//! The group-commit writer: one task owns all writes. Requests queue while a
//! transaction commits; the next transaction takes everything queued (up to
//! `max_batch` items), so under load one fsync covers hundreds of items and
//! at low load nothing waits for a batch to fill.

use chrono::Utc;
use leadgate_connector::{
    ChannelId, CursorUpdate, Disposition, IdentityKind, Receipt, SinkError, fields,
};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::Store;
use super::tx::{NewInbound, NewLead, Tx};
use crate::pipeline::{Prepared, Route};
use crate::routing::Strategy;

struct WriteRequest {
    channel: Option<ChannelId>,
    items: Vec<Prepared>,
    cursor: Option<CursorUpdate>,
    reply: oneshot::Sender<Result<Vec<Receipt>, SinkError>>,
}

/// How connectors' items reach the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<WriteRequest>,
}

impl WriterHandle {
    pub async fn write(
        &self,
        channel: Option<ChannelId>,
        items: Vec<Prepared>,
        cursor: Option<CursorUpdate>,
    ) -> Result<Vec<Receipt>, SinkError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(WriteRequest {
                channel,
                items,
                cursor,
                reply,
            })
            .await
            .map_err(|_| SinkError::ShuttingDown)?;
        answer.await.map_err(|_| SinkError::ShuttingDown)?
    }
}

/// Start the writer; it runs until every [`WriterHandle`] is dropped and the
/// queue is drained, so in-flight work is committed on shutdown.
pub fn spawn(store: Store, max_batch: usize) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(max_batch.max(64) * 4);
    let task = tokio::spawn(run(store, rx, max_batch.max(1)));
    (WriterHandle { tx }, task)
}

async fn run(store: Store, mut rx: mpsc::Receiver<WriteRequest>, max_batch: usize) {
    while let Some(first) = rx.recv().await {
        let mut items = first.items.len();
        let mut batch = vec![first];
        while items < max_batch {
            match rx.try_recv() {
                Ok(next) => {
                    items += next.items.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        commit(&store, batch).await;
    }
    tracing::debug!("writer drained and stopped");
}

async fn commit(store: &Store, batch: Vec<WriteRequest>) {
    let started = std::time::Instant::now();
    match write_all(store, &batch).await {
        Ok(receipts) => {
            tracing::trace!(
                requests = batch.len(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "committed"
            );
            for (req, r) in batch.into_iter().zip(receipts) {
                let _ = req.reply.send(Ok(r));
            }
        }
        Err(e) if batch.len() > 1 && !is_unavailable(&e) => {
            // One request broke the transaction (a constraint, a race with
            // another instance): commit the others without it.
            tracing::warn!(error = %e, "batch failed; retrying its requests one by one");
            for req in batch {
                let result = write_all(store, std::slice::from_ref(&req)).await;
                let _ = req
                    .reply
                    .send(result.map(|mut r| r.remove(0)).map_err(|e| unavailable(&e)));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, requests = batch.len(), "commit failed; nothing acknowledged");
            let err = unavailable(&e);
            for req in batch {
                let _ = req.reply.send(Err(err.clone()));
            }
        }
    }
}

fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
    ) || e
        .as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| {
            // PostgreSQL: connection, resource and shutdown classes; SQLite:
            // busy, locked, full, read-only, I/O (extended codes keep the
            // primary code in the low byte).
            ["08", "53", "57"].iter().any(|c| code.starts_with(c))
                || code
                    .parse::<u32>()
                    .is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 8 | 10 | 13 | 14))
        })
}

fn unavailable(e: &sqlx::Error) -> SinkError {
    SinkError::Unavailable(e.to_string())
}

async fn write_all(store: &Store, batch: &[WriteRequest]) -> sqlx::Result<Vec<Vec<Receipt>>> {
    super::on_pool!(store, pool => {
        let mut tx = pool.begin().await?;
        let mut all = Vec::with_capacity(batch.len());
        for req in batch {
            let mut receipts = Vec::with_capacity(req.items.len());
            for item in &req.items {
                receipts.push(apply(&mut *tx, item).await?);
            }
            if let (Some(cursor), Some(channel)) = (&req.cursor, &req.channel) {
                tx.save_cursor(channel.as_str(), &cursor.key, &cursor.value, Utc::now()).await?;
            }
            all.push(receipts);
        }
        tx.commit().await?;
        Ok(all)
    })
}

/// identify → route → store for one item, inside the open transaction.
async fn apply<T: Tx>(tx: &mut T, item: &Prepared) -> sqlx::Result<Receipt> {
    let inbound = &item.inbound;
    let channel = inbound.channel.as_str();
    let now = Utc::now();

    if let Some((id, lead)) = tx.find_inbound(channel, &inbound.source_ref).await? {
        return Ok(Receipt {
            inbound_id: id,
            disposition: Disposition::Duplicate,
            lead_id: lead,
        });
    }
    let row = |disposition, reason, lead, contact| {
        inbound_row(item, now, disposition, reason, lead, contact)
    };
    let receipt = |inbound_id, disposition, lead_id| Receipt {
        inbound_id,
        disposition,
        lead_id,
    };

    if let Some(key) = &item.content_key
        && let Some((first, lead)) = tx
            .find_same_content(channel, key, item.dedupe_since)
            .await?
    {
        let reason = format!("same content as inbound #{first} within the dedupe window");
        let id = tx
            .insert_inbound(&row(Disposition::Duplicate, Some(&reason), lead, None))
            .await?;
        return Ok(receipt(id, Disposition::Duplicate, lead));
    }
    if let Some((disposition, reason)) = &item.verdict {
        let id = tx
            .insert_inbound(&row(*disposition, Some(reason), None, None))
            .await?;
        return Ok(receipt(id, *disposition, None));
    }

    let contact = identify(tx, item, now).await?;
    let mut open_lead = None;
    for reference in &inbound.thread_refs {
        if let Some(lead) = tx.find_lead_of(channel, reference).await? {
            open_lead = Some((lead, format!("continues {reference}")));
            break;
        }
    }
    if open_lead.is_none()
        && let Some(contact) = contact
        && let Some(lead) = tx
            .find_open_lead(contact, channel, item.activity_since)
            .await?
    {
        open_lead = Some((
            lead,
            format!("contact #{contact} has open lead #{lead} on this channel"),
        ));
    }
    if let Some((lead, reason)) = open_lead {
        let id = tx
            .insert_inbound(&row(
                Disposition::ActivityAdded,
                Some(&reason),
                Some(lead),
                contact,
            ))
            .await?;
        let summary = item.text.as_deref().or(inbound.subject.as_deref());
        tx.add_activity(lead, id, "message", summary, now).await?;
        return Ok(receipt(id, Disposition::ActivityAdded, Some(lead)));
    }

    let (user, role, note) = assign(tx, &item.route).await?;
    let assigned_by = item.assigned_by.to_string();
    let field = |k: &str| item.fields.get(k).map(String::as_str);
    let messenger = item.messenger();
    let mut custom = item.fields.clone();
    for k in [fields::PRODUCT, fields::REGION]
        .iter()
        .chain(fields::UTM_KEYS.iter())
    {
        custom.remove(*k);
    }
    let lead = tx
        .insert_lead(&NewLead {
            now,
            channel,
            kind: item.kind.as_str(),
            source_ref: &inbound.source_ref,
            contact,
            name: item.name.as_deref(),
            phone: item.first(IdentityKind::Phone),
            email: item.first(IdentityKind::Email),
            messenger: messenger.as_deref(),
            subject: inbound.subject.as_deref(),
            message: item.text.as_deref(),
            product: field(fields::PRODUCT),
            region: field(fields::REGION),
            utm: fields::UTM_KEYS.map(field),
            fields: json!(custom),
            assignee_user: user.as_deref(),
            assignee_role: role.as_deref(),
            assigned_by: &assigned_by,
            routing_note: note.as_deref(),
        })
        .await?;
    let id = tx
        .insert_inbound(&row(Disposition::LeadCreated, None, Some(lead), contact))
        .await?;
    Ok(receipt(id, Disposition::LeadCreated, Some(lead)))
}

fn inbound_row<'a>(
    item: &'a Prepared,
    now: chrono::DateTime<Utc>,
    disposition: Disposition,
    reason: Option<&'a str>,
    lead: Option<i64>,
    contact: Option<i64>,
) -> NewInbound<'a> {
    let inbound = &item.inbound;
    NewInbound {
        channel: inbound.channel.as_str(),
        kind: item.kind.as_str(),
        source_ref: &inbound.source_ref,
        received_at: inbound.received_at,
        stored_at: now,
        disposition: disposition.as_str(),
        reason,
        lead,
        contact,
        sender_name: item.name.as_deref(),
        sender_phone: item.first(IdentityKind::Phone),
        sender_email: item.first(IdentityKind::Email),
        subject: inbound.subject.as_deref(),
        text: item.text.as_deref(),
        fields: json!(item.fields),
        attachments: json!(item.attachments),
        content_key: item.content_key.as_deref(),
        raw: &inbound.raw,
    }
}

/// Find the sender's contact by any identity, or create one; record every
/// identity seen so later messages match by any of them.
async fn identify<T: Tx>(
    tx: &mut T,
    item: &Prepared,
    now: chrono::DateTime<Utc>,
) -> sqlx::Result<Option<i64>> {
    if item.identities.is_empty() {
        return Ok(None);
    }
    let mut contact = None;
    for (kind, value) in &item.identities {
        if let Some(c) = tx.find_contact(kind.as_str(), value).await? {
            contact = Some(c);
            break;
        }
    }
    let contact = match contact {
        Some(c) => c,
        None => tx.insert_contact(item.name.as_deref(), now).await?,
    };
    for (kind, value) in &item.identities {
        tx.insert_identity(contact, kind.as_str(), value, now)
            .await?;
    }
    Ok(Some(contact))
}

/// Resolve a route to `(user, role, note)`.
async fn assign<T: Tx>(
    tx: &mut T,
    route: &Route,
) -> sqlx::Result<(Option<String>, Option<String>, Option<String>)> {
    Ok(match route {
        Route::Nobody => (
            None,
            None,
            Some("no rule, channel responsible or default matched".into()),
        ),
        Route::User(u) => (Some(u.clone()), None, None),
        Route::Role { role, members, .. } if members.is_empty() => (
            None,
            Some(role.clone()),
            Some(format!(
                "role {role} has no active members; assigned to the role"
            )),
        ),
        Route::Role {
            role,
            members,
            strategy: Strategy::RoundRobin,
        } => {
            let turn = tx.next_turn(&format!("role:{role}")).await?;
            let pick = &members[((turn - 1).rem_euclid(members.len() as i64)) as usize];
            (
                Some(pick.clone()),
                Some(role.clone()),
                Some(format!(
                    "role {role}: round_robin turn {turn} of [{}]",
                    members.join(", ")
                )),
            )
        }
        Route::Role {
            role,
            members,
            strategy: Strategy::LeastLoaded,
        } => {
            let mut best: Option<(&String, i64)> = None;
            let mut loads = Vec::with_capacity(members.len());
            for m in members {
                let n = tx.open_lead_count(m).await?;
                loads.push(format!("{m}={n}"));
                if best.is_none_or(|(_, b)| n < b) {
                    best = Some((m, n));
                }
            }
            (
                best.map(|(m, _)| m.clone()),
                Some(role.clone()),
                Some(format!(
                    "role {role}: least_loaded open leads {}",
                    loads.join(", ")
                )),
            )
        }
    })
}
