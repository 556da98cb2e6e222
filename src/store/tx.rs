//! The statements the writer runs inside its transaction, written once in
//! SQL both SQLite and PostgreSQL accept (`$n` parameters, `RETURNING`,
//! `ON CONFLICT`) and implemented for both connection types by one macro.

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::types::Json;

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
    fn find_contact(
        &mut self,
        kind: &str,
        value: &str,
    ) -> impl Future<Output = R<Option<i64>>> + Send;
    fn insert_contact(
        &mut self,
        name: Option<&str>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = R<i64>> + Send;
    fn insert_identity(
        &mut self,
        contact: i64,
        kind: &str,
        value: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = R<()>> + Send;
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
}

macro_rules! impl_tx {
    ($conn:ty) => {
        impl Tx for $conn {
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

            async fn find_contact(&mut self, kind: &str, value: &str) -> R<Option<i64>> {
                sqlx::query_scalar("SELECT contact_id FROM contact_identities WHERE kind = $1 AND value = $2")
                    .bind(kind)
                    .bind(value)
                    .fetch_optional(&mut *self)
                    .await
            }

            async fn insert_contact(&mut self, name: Option<&str>, now: DateTime<Utc>) -> R<i64> {
                sqlx::query_scalar("INSERT INTO contacts (name, created_at) VALUES ($1, $2) RETURNING id")
                    .bind(name)
                    .bind(now)
                    .fetch_one(&mut *self)
                    .await
            }

            async fn insert_identity(&mut self, contact: i64, kind: &str, value: &str, now: DateTime<Utc>) -> R<()> {
                sqlx::query(
                    "INSERT INTO contact_identities (kind, value, contact_id, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (kind, value) DO NOTHING",
                )
                .bind(kind)
                .bind(value)
                .bind(contact)
                .bind(now)
                .execute(&mut *self)
                .await
                .map(|_| ())
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
                     assignee_role, assigned_by, routing_note) \
                     VALUES ($1, $1, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                     $17, $18, $19, $20, $21, $22, $23) RETURNING id",
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
        }
    };
}

impl_tx!(sqlx::SqliteConnection);
impl_tx!(sqlx::PgConnection);
