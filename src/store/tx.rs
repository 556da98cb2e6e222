//! The statements the writer runs inside its transaction, written once in
//! SQL both SQLite and PostgreSQL accept (`$n` parameters, `RETURNING`,
//! `ON CONFLICT`) and implemented for both connection types by one macro.

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::types::Json;

use crate::calls::{CallRecord, direction_str, parse_direction};

/// A call as stored, with the lead it belongs to.
pub struct StoredCall {
    pub id: i64,
    pub lead: Option<i64>,
    pub contact: Option<i64>,
    pub record: CallRecord,
}

/// A new row of `leads`.
pub struct NewLead<'a> {
    pub now: DateTime<Utc>,
    pub channel: &'a str,
    pub kind: &'a str,
    pub source_ref: &'a str,
    pub contact: Option<i64>,
    pub name: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub email: Option<&'a str>,
    pub messenger: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub message: Option<&'a str>,
    pub product: Option<&'a str>,
    pub region: Option<&'a str>,
    pub utm: [Option<&'a str>; 5],
    pub called_line: Option<&'a str>,
    pub fields: serde_json::Value,
    pub assignee_user: Option<&'a str>,
    pub assignee_role: Option<&'a str>,
    pub assigned_by: &'a str,
    pub routing_note: Option<&'a str>,
}

/// A new row of `inbound_messages`.
pub struct NewInbound<'a> {
    pub channel: &'a str,
    pub kind: &'a str,
    pub source_ref: &'a str,
    pub received_at: DateTime<Utc>,
    pub stored_at: DateTime<Utc>,
    pub disposition: &'a str,
    pub reason: Option<&'a str>,
    pub lead: Option<i64>,
    pub contact: Option<i64>,
    pub sender_name: Option<&'a str>,
    pub sender_phone: Option<&'a str>,
    pub sender_email: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub text: Option<&'a str>,
    pub fields: serde_json::Value,
    pub attachments: serde_json::Value,
    pub content_key: Option<&'a str>,
    pub raw: &'a str,
}

type R<T> = sqlx::Result<T>;

pub trait Tx: Send {
    /// `(id, lead_id)` of the inbound stored under this key.
    fn find_inbound(
        &mut self,
        channel: &str,
        source_ref: &str,
    ) -> impl Future<Output = R<Option<(i64, Option<i64>)>>> + Send;
    fn find_same_content(
        &mut self,
        channel: &str,
        key: &str,
        since: DateTime<Utc>,
    ) -> impl Future<Output = R<Option<(i64, Option<i64>)>>> + Send;
    /// The contacts of these `(kind, value)` identities, in one query.
    fn find_contacts(
        &mut self,
        ids: &[(&str, &str)],
    ) -> impl Future<Output = R<Vec<(String, String, i64)>>> + Send;
    /// Record identities for a contact in one statement; ones already
    /// bound to a contact stay where they are.
    fn insert_identities(
        &mut self,
        contact: i64,
        ids: &[(&str, &str)],
        now: DateTime<Utc>,
    ) -> impl Future<Output = R<()>> + Send;
    /// Whether the contact already has an identity of this kind.
    fn contact_has_kind(
        &mut self,
        contact: i64,
        kind: &str,
    ) -> impl Future<Output = R<bool>> + Send;
    fn insert_contact(
        &mut self,
        name: Option<&str>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = R<i64>> + Send;
    /// The lead of an earlier inbound on the channel with this `source_ref`.
    fn find_lead_of(
        &mut self,
        channel: &str,
        source_ref: &str,
    ) -> impl Future<Output = R<Option<i64>>> + Send;
    fn find_open_lead(
        &mut self,
        contact: i64,
        channel: &str,
        since: DateTime<Utc>,
    ) -> impl Future<Output = R<Option<i64>>> + Send;
    /// Advance a round-robin pool and return its new counter (1, 2, …).
    fn next_turn(&mut self, pool: &str) -> impl Future<Output = R<i64>> + Send;
    fn open_lead_count(&mut self, user: &str) -> impl Future<Output = R<i64>> + Send;
    fn insert_lead(&mut self, lead: &NewLead<'_>) -> impl Future<Output = R<i64>> + Send;
    fn insert_inbound(&mut self, row: &NewInbound<'_>) -> impl Future<Output = R<i64>> + Send;
    fn add_activity(
        &mut self,
        lead: i64,
        inbound: i64,
        kind: &str,
        summary: Option<&str>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = R<()>> + Send;
    fn save_cursor(
        &mut self,
        channel: &str,
        key: &str,
        value: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = R<()>> + Send;
    fn find_call(
        &mut self,
        channel: &str,
        call_id: &str,
    ) -> impl Future<Output = R<Option<StoredCall>>> + Send;
    fn insert_call(
        &mut self,
        channel: &str,
        call_id: &str,
        call: &StoredCall,
        client_phone: Option<&str>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = R<i64>> + Send;
    fn update_call(
        &mut self,
        call: &StoredCall,
        now: DateTime<Utc>,
    ) -> impl Future<Output = R<()>> + Send;
    fn set_lead_missed(
        &mut self,
        lead: i64,
        missed: bool,
        wait_seconds: Option<i32>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = R<()>> + Send;
    /// A callback reached the contact: their missed leads are handled.
    fn clear_missed(
        &mut self,
        contact: i64,
        now: DateTime<Utc>,
    ) -> impl Future<Output = R<()>> + Send;
    /// The contact's most relevant lead: the newest open one, else the newest.
    fn latest_lead_of(&mut self, contact: i64) -> impl Future<Output = R<Option<i64>>> + Send;
    /// Tell listening CRMs about a new lead; delivered on commit, dropped on
    /// rollback (PostgreSQL `NOTIFY leadgate_leads`; nothing on SQLite).
    fn announce_lead(&mut self, lead: i64) -> impl Future<Output = R<()>> + Send;
}

macro_rules! impl_tx {
    ($conn:ty, $announce:expr) => {
        impl Tx for $conn {
            async fn announce_lead(&mut self, lead: i64) -> R<()> {
                let sql: Option<&str> = $announce;
                if let Some(sql) = sql {
                    sqlx::query(sql).bind(lead.to_string()).execute(&mut *self).await?;
                }
                Ok(())
            }

            async fn find_inbound(&mut self, channel: &str, source_ref: &str) -> R<Option<(i64, Option<i64>)>> {
                let row = sqlx::query("SELECT id, lead_id FROM inbound_messages WHERE channel_id = $1 AND source_ref = $2")
                    .bind(channel)
                    .bind(source_ref)
                    .fetch_optional(&mut *self)
                    .await?;
                row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
            }

            async fn find_same_content(
                &mut self,
                channel: &str,
                key: &str,
                since: DateTime<Utc>,
            ) -> R<Option<(i64, Option<i64>)>> {
                let row = sqlx::query(
                    "SELECT id, lead_id FROM inbound_messages \
                     WHERE channel_id = $1 AND content_key = $2 AND received_at >= $3 \
                     ORDER BY id LIMIT 1",
                )
                .bind(channel)
                .bind(key)
                .bind(since)
                .fetch_optional(&mut *self)
                .await?;
                row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
            }

            async fn find_contacts(&mut self, ids: &[(&str, &str)]) -> R<Vec<(String, String, i64)>> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut sql = String::from("SELECT kind, value, contact_id FROM contact_identities WHERE ");
                for i in 0..ids.len() {
                    if i > 0 {
                        sql.push_str(" OR ");
                    }
                    sql.push_str(&format!("(kind = ${} AND value = ${})", 2 * i + 1, 2 * i + 2));
                }
                let mut q = sqlx::query(&sql);
                for (kind, value) in ids {
                    q = q.bind(*kind).bind(*value);
                }
                let rows = q.fetch_all(&mut *self).await?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                    .collect()
            }

            async fn insert_identities(&mut self, contact: i64, ids: &[(&str, &str)], now: DateTime<Utc>) -> R<()> {
                if ids.is_empty() {
                    return Ok(());
                }
                let mut sql = String::from("INSERT INTO contact_identities (kind, value, contact_id, created_at) VALUES ");
                for i in 0..ids.len() {
                    if i > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&format!("(${}, ${}, $1, $2)", 2 * i + 3, 2 * i + 4));
                }
                sql.push_str(" ON CONFLICT (kind, value) DO NOTHING");
                let mut q = sqlx::query(&sql).bind(contact).bind(now);
                for (kind, value) in ids {
                    q = q.bind(*kind).bind(*value);
                }
                q.execute(&mut *self).await.map(|_| ())
            }

            async fn contact_has_kind(&mut self, contact: i64, kind: &str) -> R<bool> {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM contact_identities WHERE contact_id = $1 AND kind = $2",
                )
                .bind(contact)
                .bind(kind)
                .fetch_one(&mut *self)
                .await?;
                Ok(n > 0)
            }

            async fn insert_contact(&mut self, name: Option<&str>, now: DateTime<Utc>) -> R<i64> {
                sqlx::query_scalar("INSERT INTO contacts (name, created_at) VALUES ($1, $2) RETURNING id")
                    .bind(name)
                    .bind(now)
                    .fetch_one(&mut *self)
                    .await
            }

            async fn find_lead_of(&mut self, channel: &str, source_ref: &str) -> R<Option<i64>> {
                let lead: Option<Option<i64>> = sqlx::query_scalar(
                    "SELECT lead_id FROM inbound_messages WHERE channel_id = $1 AND source_ref = $2",
                )
                .bind(channel)
                .bind(source_ref)
                .fetch_optional(&mut *self)
                .await?;
                Ok(lead.flatten())
            }

            async fn find_open_lead(&mut self, contact: i64, channel: &str, since: DateTime<Utc>) -> R<Option<i64>> {
                sqlx::query_scalar(
                    "SELECT id FROM leads WHERE contact_id = $1 AND channel_id = $2 \
                     AND status IN ('new', 'in_progress') AND created_at >= $3 \
                     ORDER BY id DESC LIMIT 1",
                )
                .bind(contact)
                .bind(channel)
                .bind(since)
                .fetch_optional(&mut *self)
                .await
            }

            async fn next_turn(&mut self, pool: &str) -> R<i64> {
                sqlx::query_scalar(
                    "INSERT INTO routing_state (pool, counter) VALUES ($1, 1) \
                     ON CONFLICT (pool) DO UPDATE SET counter = routing_state.counter + 1 \
                     RETURNING counter",
                )
                .bind(pool)
                .fetch_one(&mut *self)
                .await
            }

            async fn open_lead_count(&mut self, user: &str) -> R<i64> {
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM leads WHERE assignee_user = $1 AND status IN ('new', 'in_progress')",
                )
                .bind(user)
                .fetch_one(&mut *self)
                .await
            }

            async fn insert_lead(&mut self, l: &NewLead<'_>) -> R<i64> {
                sqlx::query_scalar(
                    "INSERT INTO leads (created_at, updated_at, last_activity_at, channel_id, channel_kind, \
                     source_ref, contact_id, name, phone, email, messenger, subject, message, product, region, \
                     utm_source, utm_medium, utm_campaign, utm_term, utm_content, fields, assignee_user, \
                     assignee_role, assigned_by, routing_note, called_line) \
                     VALUES ($1, $1, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                     $17, $18, $19, $20, $21, $22, $23, $24) RETURNING id",
                )
                .bind(l.now)
                .bind(l.channel)
                .bind(l.kind)
                .bind(l.source_ref)
                .bind(l.contact)
                .bind(l.name)
                .bind(l.phone)
                .bind(l.email)
                .bind(l.messenger)
                .bind(l.subject)
                .bind(l.message)
                .bind(l.product)
                .bind(l.region)
                .bind(l.utm[0])
                .bind(l.utm[1])
                .bind(l.utm[2])
                .bind(l.utm[3])
                .bind(l.utm[4])
                .bind(Json(&l.fields))
                .bind(l.assignee_user)
                .bind(l.assignee_role)
                .bind(l.assigned_by)
                .bind(l.routing_note)
                .bind(l.called_line)
                .fetch_one(&mut *self)
                .await
            }

            async fn insert_inbound(&mut self, m: &NewInbound<'_>) -> R<i64> {
                sqlx::query_scalar(
                    "INSERT INTO inbound_messages (channel_id, channel_kind, source_ref, received_at, stored_at, \
                     disposition, reason, lead_id, contact_id, sender_name, sender_phone, sender_email, subject, \
                     text, fields, attachments, content_key, raw) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
                     RETURNING id",
                )
                .bind(m.channel)
                .bind(m.kind)
                .bind(m.source_ref)
                .bind(m.received_at)
                .bind(m.stored_at)
                .bind(m.disposition)
                .bind(m.reason)
                .bind(m.lead)
                .bind(m.contact)
                .bind(m.sender_name)
                .bind(m.sender_phone)
                .bind(m.sender_email)
                .bind(m.subject)
                .bind(m.text)
                .bind(Json(&m.fields))
                .bind(Json(&m.attachments))
                .bind(m.content_key)
                .bind(m.raw)
                .fetch_one(&mut *self)
                .await
            }

            async fn add_activity(
                &mut self,
                lead: i64,
                inbound: i64,
                kind: &str,
                summary: Option<&str>,
                now: DateTime<Utc>,
            ) -> R<()> {
                sqlx::query(
                    "INSERT INTO activities (lead_id, inbound_id, created_at, kind, summary) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(lead)
                .bind(inbound)
                .bind(now)
                .bind(kind)
                .bind(summary)
                .execute(&mut *self)
                .await?;
                sqlx::query("UPDATE leads SET last_activity_at = $1, updated_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(lead)
                    .execute(&mut *self)
                    .await
                    .map(|_| ())
            }

            async fn save_cursor(&mut self, channel: &str, key: &str, value: &str, now: DateTime<Utc>) -> R<()> {
                sqlx::query(
                    "INSERT INTO channel_state (channel_id, cursor_key, value, updated_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (channel_id, cursor_key) DO UPDATE SET value = $3, updated_at = $4",
                )
                .bind(channel)
                .bind(key)
                .bind(value)
                .bind(now)
                .execute(&mut *self)
                .await
                .map(|_| ())
            }

            async fn find_call(&mut self, channel: &str, call_id: &str) -> R<Option<StoredCall>> {
                let Some(r) = sqlx::query(
                    "SELECT id, lead_id, contact_id, direction, started_at, answered_at, ended_at, answered, \
                     talk_seconds, wait_seconds, end_reason, recording, line, extension, events \
                     FROM calls WHERE channel_id = $1 AND call_id = $2",
                )
                .bind(channel)
                .bind(call_id)
                .fetch_optional(&mut *self)
                .await?
                else {
                    return Ok(None);
                };
                let direction: String = r.try_get(3)?;
                Ok(Some(StoredCall {
                    id: r.try_get(0)?,
                    lead: r.try_get(1)?,
                    contact: r.try_get(2)?,
                    record: CallRecord {
                        direction: parse_direction(&direction),
                        started_at: r.try_get(4)?,
                        answered_at: r.try_get(5)?,
                        ended_at: r.try_get(6)?,
                        answered: r.try_get(7)?,
                        talk_seconds: r.try_get(8)?,
                        reported_wait_seconds: r.try_get(9)?,
                        end_reason: r.try_get(10)?,
                        recording: r.try_get(11)?,
                        line: r.try_get(12)?,
                        extension: r.try_get(13)?,
                        events: r.try_get(14)?,
                    },
                }))
            }

            async fn insert_call(
                &mut self,
                channel: &str,
                call_id: &str,
                call: &StoredCall,
                client_phone: Option<&str>,
                now: DateTime<Utc>,
            ) -> R<i64> {
                let c = &call.record;
                sqlx::query_scalar(
                    "INSERT INTO calls (channel_id, call_id, direction, lead_id, contact_id, client_phone, line, \
                     extension, started_at, answered_at, ended_at, answered, missed, talk_seconds, wait_seconds, \
                     end_reason, recording, events, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) \
                     RETURNING id",
                )
                .bind(channel)
                .bind(call_id)
                .bind(direction_str(c.direction))
                .bind(call.lead)
                .bind(call.contact)
                .bind(client_phone)
                .bind(c.line.as_deref())
                .bind(c.extension.as_deref())
                .bind(c.started_at)
                .bind(c.answered_at)
                .bind(c.ended_at)
                .bind(c.answered)
                .bind(c.missed())
                .bind(c.talk_seconds)
                .bind(c.wait_seconds())
                .bind(c.end_reason.as_deref())
                .bind(c.recording.as_deref())
                .bind(c.events)
                .bind(now)
                .fetch_one(&mut *self)
                .await
            }

            async fn update_call(&mut self, call: &StoredCall, now: DateTime<Utc>) -> R<()> {
                let c = &call.record;
                sqlx::query(
                    "UPDATE calls SET started_at = $2, answered_at = $3, ended_at = $4, answered = $5, missed = $6, \
                     talk_seconds = $7, wait_seconds = $8, end_reason = $9, recording = $10, line = $11, \
                     extension = $12, events = $13, updated_at = $14 WHERE id = $1",
                )
                .bind(call.id)
                .bind(c.started_at)
                .bind(c.answered_at)
                .bind(c.ended_at)
                .bind(c.answered)
                .bind(c.missed())
                .bind(c.talk_seconds)
                .bind(c.wait_seconds())
                .bind(c.end_reason.as_deref())
                .bind(c.recording.as_deref())
                .bind(c.line.as_deref())
                .bind(c.extension.as_deref())
                .bind(c.events)
                .bind(now)
                .execute(&mut *self)
                .await
                .map(|_| ())
            }

            async fn set_lead_missed(&mut self, lead: i64, missed: bool, wait_seconds: Option<i32>, now: DateTime<Utc>) -> R<()> {
                sqlx::query("UPDATE leads SET missed = $2, missed_wait_seconds = $3, updated_at = $4 WHERE id = $1")
                    .bind(lead)
                    .bind(missed)
                    .bind(wait_seconds.filter(|_| missed))
                    .bind(now)
                    .execute(&mut *self)
                    .await
                    .map(|_| ())
            }

            async fn clear_missed(&mut self, contact: i64, now: DateTime<Utc>) -> R<()> {
                sqlx::query(
                    "UPDATE leads SET missed = $2, callback_at = $3, updated_at = $3 WHERE contact_id = $1 AND missed = $4",
                )
                .bind(contact)
                .bind(false)
                .bind(now)
                .bind(true)
                .execute(&mut *self)
                .await
                .map(|_| ())
            }

            async fn latest_lead_of(&mut self, contact: i64) -> R<Option<i64>> {
                sqlx::query_scalar(
                    "SELECT id FROM leads WHERE contact_id = $1 \
                     ORDER BY CASE WHEN status IN ('new', 'in_progress') THEN 0 ELSE 1 END, id DESC LIMIT 1",
                )
                .bind(contact)
                .fetch_optional(&mut *self)
                .await
            }
        }
    };
}

impl_tx!(sqlx::SqliteConnection, None);
impl_tx!(
    sqlx::PgConnection,
    Some("SELECT pg_notify('leadgate_leads', $1)")
);
