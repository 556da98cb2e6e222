//! Set-based application of a whole commit's items.
//!
//! The writer is the one serial part of leadgate, and each statement it runs
//! costs a round trip (to sqlx's SQLite thread or to PostgreSQL) that is far
//! dearer than the row it writes. So a transaction does not look up and
//! insert item by item: it reads what it needs for all items in a few
//! queries, decides each item in memory, in order, and inserts the rows of
//! the common cases (a new lead from a new contact, a duplicate, a refused
//! message) together. Items whose outcome depends on rows this method does
//! not preload (calls, replies in a thread, a returning contact) go through
//! the item-by-item path in `writer.rs`, after the rows decided so far are
//! written, so every decision sees exactly what a one-at-a-time writer
//! would.
//!
//! Rows get explicit ids from [`Tx::allocate_ids`] so an item's receipt and
//! a later duplicate of it can name them before they are inserted.

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use leadgate_connector::{
    CallDirection, CallPhase, Dedupe, Disposition, IdentityKind, Receipt, fields,
};

use super::assign::{Assigner, Assignment};
use super::tx::{NewCall, NewInbound, NewLead, StoredCall, Tx};
use super::writer::{apply, inbound_row, new_lead, receipt};
use crate::calls::CallRecord;
use crate::pipeline::Prepared;

type R<T> = sqlx::Result<T>;

/// Apply `items` in order inside the open transaction; one receipt each.
pub(super) async fn apply_all<T: Tx>(
    tx: &mut T,
    items: &[&Prepared],
    now: DateTime<Utc>,
) -> R<Vec<Receipt>> {
    let mut state = TxState {
        known: Known::load(tx, items).await?,
        ids: Ids::default(),
        assigner: Assigner::default(),
        now,
        remaining: items.len(),
    };
    let mut pending = Pending::default();
    let mut receipts = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        state.remaining = items.len() - i;
        let decided = match state.known.plan(item, now) {
            Plan::Complex => {
                pending.flush(tx, &mut state).await?;
                let applied = apply(tx, item, &mut state).await?;
                state.known.learn(item, &applied.receipt, applied.contact);
                applied.receipt
            }
            Plan::KnownDuplicate { inbound, lead } => {
                receipt(inbound, Disposition::Duplicate, lead)
            }
            Plan::Row {
                disposition,
                reason,
                lead,
            } => {
                let id = state.ids.take(tx, Table::Inbound, state.remaining).await?;
                let r = receipt(id, disposition, lead);
                state.known.learn(item, &r, None);
                pending
                    .rows
                    .push((id, item, disposition, reason, lead, None));
                r
            }
            Plan::NewLead { new_contact, call } => {
                let contact = match new_contact {
                    true => Some(state.ids.take(tx, Table::Contacts, state.remaining).await?),
                    false => None,
                };
                // No identity of the sender is known: nobody owned them.
                let assignment = state
                    .assigner
                    .assign(tx, item, state.now, false, true)
                    .await?;
                let lead = state.ids.take(tx, Table::Leads, state.remaining).await?;
                state.assigner.created(lead, &assignment, item, state.now);
                let id = state.ids.take(tx, Table::Inbound, state.remaining).await?;
                let r = receipt(id, Disposition::LeadCreated, Some(lead));
                state.known.learn(item, &r, contact);
                if let Some(contact) = contact {
                    pending.contacts.push((contact, item));
                }
                if let Some(record) = call {
                    pending.calls.push((
                        item,
                        StoredCall {
                            id: 0,
                            lead: Some(lead),
                            contact,
                            record,
                        },
                    ));
                }
                pending.leads.push((lead, item, contact, assignment));
                pending.rows.push((
                    id,
                    item,
                    Disposition::LeadCreated,
                    None,
                    Some(lead),
                    contact,
                ));
                r
            }
        };
        receipts.push(decided);
    }
    pending.flush(tx, &mut state).await?;
    state.assigner.save(tx).await?;
    Ok(receipts)
}

/// One transaction's working memory, shared by the set-based and the
/// item-by-item paths.
pub(super) struct TxState {
    known: Known,
    ids: Ids,
    pub(super) assigner: Assigner,
    pub(super) now: DateTime<Utc>,
    /// Items not yet applied, this one included: an upper bound on the ids
    /// of each table the transaction still needs.
    remaining: usize,
}

impl TxState {
    pub(super) async fn insert_inbound<T: Tx>(
        &mut self,
        tx: &mut T,
        row: NewInbound<'_>,
    ) -> R<i64> {
        let id = self.ids.take(tx, Table::Inbound, self.remaining).await?;
        tx.insert_inbounds(&[(id, row)]).await?;
        Ok(id)
    }

    pub(super) async fn insert_contact<T: Tx>(&mut self, tx: &mut T, name: Option<&str>) -> R<i64> {
        let id = self.ids.take(tx, Table::Contacts, self.remaining).await?;
        tx.insert_contacts(&[(id, name)], self.now).await?;
        Ok(id)
    }

    pub(super) async fn insert_lead<T: Tx>(&mut self, tx: &mut T, lead: NewLead<'_>) -> R<i64> {
        let id = self.ids.take(tx, Table::Leads, self.remaining).await?;
        tx.insert_leads(&[(id, lead)]).await?;
        tx.announce_leads(&[id]).await?;
        Ok(id)
    }
}

/// What the item-by-item path reports back so later items can be decided
/// in memory.
pub(super) struct Applied {
    pub receipt: Receipt,
    pub contact: Option<i64>,
}

enum Plan {
    /// Already stored under its `source_ref`: nothing to write.
    KnownDuplicate { inbound: i64, lead: Option<i64> },
    /// An inbound row only: a duplicate by content, or a verdict of the
    /// pure steps (spam, not a lead source, …).
    Row {
        disposition: Disposition,
        reason: Option<String>,
        lead: Option<i64>,
    },
    /// A new lead; its sender is a new contact unless it gave no identity.
    /// The first event of a new incoming call brings the call's record.
    NewLead {
        new_contact: bool,
        call: Option<CallRecord>,
    },
    /// Needs rows this module does not preload.
    Complex,
}

/// The rows this transaction's items can collide with: preloaded for all
/// items at once, then extended with every row the transaction adds.
#[derive(Default)]
struct Known {
    refs: HashMap<(String, String), (i64, Option<i64>)>,
    contents: HashMap<(String, String), Sightings>,
    identities: HashMap<(String, String), i64>,
    /// `(channel, call_id)` of the calls stored or being stored.
    calls: HashSet<(String, String)>,
}

impl Known {
    async fn load<T: Tx>(tx: &mut T, items: &[&Prepared]) -> R<Known> {
        let mut known = Known::default();
        let refs: Vec<(&str, &str)> = items
            .iter()
            .filter(|i| i.inbound.dedupe == Dedupe::SourceRef)
            .map(|i| (i.inbound.channel.as_str(), i.inbound.source_ref.as_str()))
            .collect();
        if !refs.is_empty() {
            for f in tx.find_inbounds(&refs).await? {
                known.refs.insert((f.channel, f.key), (f.id, f.lead));
            }
        }
        let contents: Vec<(&str, &str)> = items
            .iter()
            .filter_map(|i| Some((i.inbound.channel.as_str(), i.content_key.as_deref()?)))
            .collect();
        let since = items.iter().map(|i| i.dedupe_since).min();
        if let Some(since) = since.filter(|_| !contents.is_empty()) {
            for f in tx.find_contents(&contents, since).await? {
                known.contents.entry((f.channel, f.key)).or_default().push((
                    f.id,
                    f.lead,
                    f.received_at,
                ));
            }
        }
        let identities: Vec<(&str, &str)> = items
            .iter()
            .flat_map(|i| i.identities.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect();
        if !identities.is_empty() {
            for (kind, value, contact) in tx.find_contacts(&identities).await? {
                known.identities.insert((kind, value), contact);
            }
        }
        let calls: Vec<(&str, &str)> = items
            .iter()
            .filter_map(|i| {
                Some((
                    i.inbound.channel.as_str(),
                    i.inbound.call.as_ref()?.call_id.as_str(),
                ))
            })
            .collect();
        if !calls.is_empty() {
            known.calls.extend(tx.find_calls(&calls).await?);
        }
        Ok(known)
    }

    /// Decide an item as `writer::apply` would, where that needs only the
    /// preloaded rows.
    fn plan(&self, item: &Prepared, now: DateTime<Utc>) -> Plan {
        let inbound = &item.inbound;
        let channel = inbound.channel.as_str();
        if !inbound.thread_refs.is_empty() {
            return Plan::Complex;
        }
        // Only the first event of a new incoming call is decided here; a
        // known call, a call out and a recording read the calls table.
        if let Some(event) = &inbound.call
            && (event.direction == CallDirection::Outbound
                || event.phase == CallPhase::Recording
                || self
                    .calls
                    .contains(&(channel.to_owned(), event.call_id.clone())))
        {
            return Plan::Complex;
        }
        if inbound.dedupe == Dedupe::SourceRef
            && let Some(&(id, lead)) = self
                .refs
                .get(&(channel.to_owned(), inbound.source_ref.clone()))
        {
            return Plan::KnownDuplicate { inbound: id, lead };
        }
        if let Some(key) = &item.content_key
            && let Some(&(first, lead, _)) = self
                .contents
                .get(&(channel.to_owned(), key.clone()))
                .and_then(|rows| rows.iter().find(|r| r.2 >= item.dedupe_since))
        {
            return Plan::Row {
                disposition: Disposition::Duplicate,
                reason: Some(format!(
                    "same content as inbound #{first} within the dedupe window"
                )),
                lead,
            };
        }
        if let Some((disposition, reason)) = &item.verdict {
            return Plan::Row {
                disposition: *disposition,
                reason: Some(reason.clone()),
                lead: None,
            };
        }
        let any_known = item.identities.iter().any(|(k, v)| {
            self.identities
                .contains_key(&(k.as_str().to_owned(), v.clone()))
        });
        if any_known {
            return Plan::Complex;
        }
        let call = inbound.call.as_ref().map(|event| {
            let mut record = CallRecord::new(event.direction);
            record.merge(
                event,
                item.fields.get(fields::CALLED_LINE).map(String::as_str),
                now,
            );
            record
        });
        // A call already over and missed flags its lead: the
        // item-by-item path does that.
        if call.as_ref().is_some_and(CallRecord::missed) {
            return Plan::Complex;
        }
        Plan::NewLead {
            new_contact: !item.identities.is_empty(),
            call,
        }
    }

    /// Remember what an applied item stored.
    fn learn(&mut self, item: &Prepared, receipt: &Receipt, contact: Option<i64>) {
        let inbound = &item.inbound;
        let channel = inbound.channel.as_str();
        let ref_key = (channel.to_owned(), inbound.source_ref.clone());
        if self.refs.contains_key(&ref_key) {
            // A duplicate by source_ref stores nothing new.
            return;
        }
        self.refs
            .insert(ref_key, (receipt.inbound_id, receipt.lead_id));
        if let Some(key) = &item.content_key {
            self.contents
                .entry((channel.to_owned(), key.clone()))
                .or_default()
                .push((receipt.inbound_id, receipt.lead_id, inbound.received_at));
        }
        if let Some(event) = &inbound.call {
            self.calls
                .insert((channel.to_owned(), event.call_id.clone()));
        }
        if let Some(contact) = contact {
            for (k, v) in &item.identities {
                self.identities
                    .entry((k.as_str().to_owned(), v.clone()))
                    .or_insert(contact);
            }
        }
    }
}

/// `(inbound id, lead, received_at)` of the rows with one content key,
/// oldest first.
type Sightings = Vec<(i64, Option<i64>, DateTime<Utc>)>;

/// Rows decided in memory and not yet inserted, in decision order.
#[derive(Default)]
struct Pending<'a> {
    contacts: Vec<(i64, &'a Prepared)>,
    leads: Vec<(i64, &'a Prepared, Option<i64>, Assignment)>,
    calls: Vec<(&'a Prepared, StoredCall)>,
    rows: Vec<PendingRow<'a>>,
}

type PendingRow<'a> = (
    i64,
    &'a Prepared,
    Disposition,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

impl Pending<'_> {
    /// Insert everything decided so far, a few statements for all of it.
    async fn flush<T: Tx>(&mut self, tx: &mut T, state: &mut TxState) -> R<()> {
        let now = state.now;
        if !self.contacts.is_empty() {
            let contacts: Vec<(i64, Option<&str>)> = self
                .contacts
                .iter()
                .map(|(id, item)| (*id, item.name.as_deref()))
                .collect();
            tx.insert_contacts(&contacts, now).await?;
            let identities: Vec<(&str, &str, i64)> = self
                .contacts
                .iter()
                .flat_map(|(id, item)| {
                    item.identities
                        .iter()
                        .map(move |(k, v)| (k.as_str(), v.as_str(), *id))
                })
                .collect();
            tx.insert_identities(&identities, now).await?;
        }
        if !self.leads.is_empty() {
            let leads: Vec<(i64, NewLead<'_>)> = self
                .leads
                .iter()
                .map(|(id, item, contact, a)| (*id, new_lead(item, *contact, a, now)))
                .collect();
            tx.insert_leads(&leads).await?;
            let ids: Vec<i64> = self.leads.iter().map(|l| l.0).collect();
            tx.announce_leads(&ids).await?;
        }
        if !self.calls.is_empty() {
            let calls: Vec<NewCall<'_>> = self
                .calls
                .drain(..)
                .filter_map(|(item, call)| {
                    Some(NewCall {
                        channel: item.inbound.channel.as_str(),
                        call_id: item.inbound.call.as_ref()?.call_id.as_str(),
                        call,
                        client_phone: item.first(IdentityKind::Phone),
                    })
                })
                .collect();
            tx.insert_calls(&calls, now).await?;
        }
        if !self.rows.is_empty() {
            let rows: Vec<(i64, NewInbound<'_>)> = self
                .rows
                .iter()
                .map(|(id, item, disposition, reason, lead, contact)| {
                    (
                        *id,
                        inbound_row(item, now, *disposition, reason.as_deref(), *lead, *contact),
                    )
                })
                .collect();
            tx.insert_inbounds(&rows).await?;
        }
        self.contacts.clear();
        self.leads.clear();
        self.rows.clear();
        state.assigner.flushed(tx, now).await?;
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Table {
    Contacts,
    Leads,
    Inbound,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Contacts => "contacts",
            Table::Leads => "leads",
            Table::Inbound => "inbound_messages",
        }
    }
}

/// Ids handed out to the rows of one transaction. Each item inserts at most
/// one row per table, so one allocation of `remaining` ids per table lasts
/// the transaction (SQLite would otherwise hand out ids still pending).
#[derive(Default)]
struct Ids {
    free: HashMap<Table, VecDeque<i64>>,
}

impl Ids {
    async fn take<T: Tx>(&mut self, tx: &mut T, table: Table, remaining: usize) -> R<i64> {
        let free = self.free.entry(table).or_default();
        if free.is_empty() {
            free.extend(tx.allocate_ids(table.name(), remaining.max(1)).await?);
        }
        free.pop_front()
            .ok_or_else(|| sqlx::Error::Protocol(format!("no ids allocated for {}", table.name())))
    }
}
