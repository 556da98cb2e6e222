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

/// A new row of `calls`.
pub struct NewCall<'a> {
    pub channel: &'a str,
    pub call_id: &'a str,
    pub call: StoredCall,
    pub client_phone: Option<&'a str>,
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
    pub messenger: Option<String>,
    pub subject: Option<&'a str>,
    pub message: Option<&'a str>,
    pub product: Option<&'a str>,
    pub region: Option<&'a str>,
    pub utm: [Option<&'a str>; 5],
    pub called_line: Option<&'a str>,
    pub fields: serde_json::Value,
    pub assignee_user: Option<&'a str>,
    pub assignee_role: Option<&'a str>,
    pub assigned_by: String,
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

/// An inbound row found by its `(channel, source_ref)` or
/// `(channel, content_key)`; `key` is whichever was looked up.
pub struct FoundInbound {
    pub channel: String,
    pub key: String,
    pub id: i64,
    pub lead: Option<i64>,
    pub received_at: DateTime<Utc>,
}

pub trait Tx: Send + super::assign::AssignTx {
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
    /// The inbounds stored under any of these `(channel, source_ref)`
    /// keys, in one query.
    fn find_inbounds(
        &mut self,
        keys: &[(&str, &str)],
    ) -> impl Future<Output = R<Vec<FoundInbound>>> + Send;
    /// The inbounds with any of these `(channel, content_key)` keys
    /// received since `since`, oldest first.
    fn find_contents(
        &mut self,
        keys: &[(&str, &str)],
        since: DateTime<Utc>,
    ) -> impl Future<Output = R<Vec<FoundInbound>>> + Send;
    /// `n` unused ids of `table` (contacts, leads or inbound_messages) for
    /// rows this transaction will insert with explicit ids.
    fn allocate_ids(&mut self, table: &str, n: usize) -> impl Future<Output = R<Vec<i64>>> + Send;
    /// The contacts of these `(kind, value)` identities, in one query.
    fn find_contacts(
        &mut self,
        ids: &[(&str, &str)],
    ) -> impl Future<Output = R<Vec<(String, String, i64)>>> + Send;
    /// Record `(kind, value, contact)` identities; ones already bound to a
    /// contact stay where they are.
    fn insert_identities(
        &mut self,
        ids: &[(&str, &str, i64)],
        now: DateTime<Utc>,
    ) -> impl Future<Output = R<()>> + Send;
    /// Whether the contact already has an identity of this kind.
    fn contact_has_kind(
        &mut self,
        contact: i64,
        kind: &str,
    ) -> impl Future<Output = R<bool>> + Send;
    /// `(id, name)` contacts with ids from [`Tx::allocate_ids`].
    fn insert_contacts(
        &mut self,
        contacts: &[(i64, Option<&str>)],
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
    /// A round-robin pool's counter (0 before its first turn).
    fn current_turn(&mut self, pool: &str) -> impl Future<Output = R<i64>> + Send;
    fn save_turn(&mut self, pool: &str, counter: i64) -> impl Future<Output = R<()>> + Send;
    /// `(id, lead)` rows with ids from [`Tx::allocate_ids`].
    fn insert_leads(&mut self, leads: &[(i64, NewLead<'_>)]) -> impl Future<Output = R<()>> + Send;
    /// `(id, row)` rows with ids from [`Tx::allocate_ids`].
    fn insert_inbounds(
        &mut self,
        rows: &[(i64, NewInbound<'_>)],
    ) -> impl Future<Output = R<()>> + Send;
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
    /// Which of these `(channel, call_id)` calls are stored, in one query.
    fn find_calls(
        &mut self,
        keys: &[(&str, &str)],
    ) -> impl Future<Output = R<Vec<(String, String)>>> + Send;
    /// Insert the first records of several calls in one statement.
    fn insert_calls(
        &mut self,
        calls: &[NewCall<'_>],
        now: DateTime<Utc>,
    ) -> impl Future<Output = R<()>> + Send;
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
    /// Tell listening CRMs about new leads; delivered on commit, dropped on
    /// rollback (PostgreSQL `NOTIFY leadgate_leads`; nothing on SQLite).
    fn announce_leads(&mut self, leads: &[i64]) -> impl Future<Output = R<()>> + Send;
}

/// Bind parameters per statement: under both SQLite's (32,766) and
/// PostgreSQL's (65,535) limits.
const MAX_PARAMS: usize = 30_000;
const LEAD_COLUMNS: usize = 27;
const INBOUND_COLUMNS: usize = 19;
const CALL_COLUMNS: usize = 19;

/// How a dialect writes the `n`-th (1-based) bind parameter of a long,
/// generated statement. SQLite gets anonymous `?`: sqlx binds numbered
/// parameters by looking each one's name up, and SQLite's lookup scans the
/// statement's parameter list, so a 900-parameter insert cost ~800,000
/// steps (a profile had `sqlite3_bind_parameter_name` at 15% of the daemon).
type Placeholder = fn(usize) -> String;

fn anonymous(_: usize) -> String {
    "?".to_owned()
}

fn numbered(n: usize) -> String {
    format!("${n}")
}

/// How many rows (or keys) a generated statement for `n` is written for.
///
/// Each distinct statement text is parsed and planned again, which cost
/// SQLite as much as running it (a 32-row insert: a third of its time; a
/// 32-key lookup: three quarters); sqlx caches prepared statements by text.
/// So SQLite gets a few sizes, about 1.5x apart, and the rest is padding:
/// lookups repeat their last key, inserts add all-NULL rows that a `WHERE`
/// drops. PostgreSQL keeps the exact size (its typed parameters would need
/// casts in a padded form).
fn padded(pad: bool, n: usize, max: usize) -> usize {
    if !pad || n <= 2 {
        return n;
    }
    let mut size = 2;
    while size < n {
        // 2, 3, 4, 6, 8, 12, 16, 24, …
        size = if size.is_power_of_two() {
            size + size / 2
        } else {
            size / 3 * 4
        };
    }
    size.min(max).max(n)
}

/// `head VALUES ($1, …), (…) suffix` for `rows` rows of `cols` parameters;
/// with `real < rows`, the rows after the first `real` are padding (bound
/// to NULL) that `WHERE column1 IS NOT NULL` drops: the first column of
/// every such insert is never NULL.
fn values_sql(
    p: Placeholder,
    head: &str,
    (real, rows): (usize, usize),
    cols: usize,
    suffix: &str,
) -> String {
    let mut sql = String::with_capacity(head.len() + rows * cols * 5 + suffix.len() + 64);
    sql.push_str(head);
    let filtered = real < rows;
    sql.push_str(match filtered {
        true => " SELECT * FROM (VALUES ",
        false => " VALUES ",
    });
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for col in 0..cols {
            if col > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&p(row * cols + col + 1));
        }
        sql.push(')');
    }
    if filtered {
        sql.push_str(") WHERE column1 IS NOT NULL");
    }
    sql.push_str(suffix);
    sql
}

/// One statement of a keyed lookup: the `WHERE` condition and its bind
/// values in order.
struct KeyedLookup<'k> {
    condition: String,
    binds: Vec<&'k str>,
}

/// `a = $k AND b IN ($k+1, …)` per distinct `a` of `(a, b)` keys (numbering
/// after `offset`), so that the index on `(a, b, …)` is probed by both
/// columns whatever the planner's statistics say. An `OR` of `(a = … AND
/// b = …)` pairs let PostgreSQL factor the shared `a` out and scan every
/// row of a fast-growing, not yet analyzed table for it. When padding
/// (SQLite), the last `b` repeats up to a cached statement size.
fn keyed_lookups<'k>(
    p: Placeholder,
    pad: bool,
    (a, b): (&str, &str),
    keys: &[(&'k str, &'k str)],
    offset: usize,
) -> Vec<KeyedLookup<'k>> {
    let mut groups: Vec<(&'k str, Vec<&'k str>)> = Vec::new();
    for &(ka, kb) in keys {
        match groups.iter_mut().find(|(g, _)| *g == ka) {
            Some((_, bs)) => bs.push(kb),
            None => groups.push((ka, vec![kb])),
        }
    }
    let per_statement = MAX_PARAMS - offset - 1;
    let mut lookups = Vec::new();
    for (ka, bs) in groups {
        for chunk in bs.chunks(per_statement) {
            let size = padded(pad, chunk.len(), per_statement);
            let mut binds = Vec::with_capacity(size + 1);
            binds.push(ka);
            binds.extend_from_slice(chunk);
            binds.resize(size + 1, chunk[chunk.len() - 1]);
            let list: Vec<String> = (0..size).map(|i| p(offset + i + 2)).collect();
            lookups.push(KeyedLookup {
                condition: format!("{a} = {} AND {b} IN ({})", p(offset + 1), list.join(", ")),
                binds,
            });
        }
    }
    lookups
}

fn found_inbound<Row: sqlx::Row>(r: &Row) -> R<FoundInbound>
where
    usize: sqlx::ColumnIndex<Row>,
    for<'r> String: sqlx::Decode<'r, Row::Database> + sqlx::Type<Row::Database>,
    for<'r> i64: sqlx::Decode<'r, Row::Database> + sqlx::Type<Row::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, Row::Database> + sqlx::Type<Row::Database>,
{
    Ok(FoundInbound {
        channel: r.try_get(0)?,
        key: r.try_get(1)?,
        id: r.try_get(2)?,
        lead: r.try_get(3)?,
        received_at: r.try_get(4)?,
    })
}

macro_rules! impl_tx {
    ($conn:ty, $announce:expr, $allocate:path, $placeholder:expr, $pad:expr) => {
        impl Tx for $conn {
            async fn announce_leads(&mut self, leads: &[i64]) -> R<()> {
                let sql: Option<&str> = $announce;
                let Some(call) = sql else { return Ok(()) };
                for chunk in leads.chunks(MAX_PARAMS) {
                    let calls: Vec<String> = (1..=chunk.len()).map(|i| call.replace("$1", &format!("${i}"))).collect();
                    let sql = format!("SELECT {}", calls.join(", "));
                    let mut q = sqlx::query(&sql);
                    for lead in chunk {
                        q = q.bind(lead.to_string());
                    }
                    q.execute(&mut *self).await?;
                }
                Ok(())
            }

            async fn find_inbounds(&mut self, keys: &[(&str, &str)]) -> R<Vec<FoundInbound>> {
                let mut found = Vec::new();
                for l in keyed_lookups($placeholder, $pad, ("channel_id", "source_ref"), keys, 0) {
                    let sql = format!(
                        "SELECT channel_id, source_ref, id, lead_id, received_at FROM inbound_messages WHERE {}",
                        l.condition
                    );
                    let mut q = sqlx::query(&sql);
                    for v in l.binds {
                        q = q.bind(v);
                    }
                    for r in q.fetch_all(&mut *self).await? {
                        found.push(found_inbound(&r)?);
                    }
                }
                Ok(found)
            }

            async fn find_contents(
                &mut self,
                keys: &[(&str, &str)],
                since: DateTime<Utc>,
            ) -> R<Vec<FoundInbound>> {
                let mut found = Vec::new();
                for l in keyed_lookups($placeholder, $pad, ("channel_id", "content_key"), keys, 1) {
                    let sql = format!(
                        "SELECT channel_id, content_key, id, lead_id, received_at FROM inbound_messages \
                         WHERE received_at >= {} AND {}",
                        ($placeholder)(1),
                        l.condition
                    );
                    let mut q = sqlx::query(&sql).bind(since);
                    for v in l.binds {
                        q = q.bind(v);
                    }
                    for r in q.fetch_all(&mut *self).await? {
                        found.push(found_inbound(&r)?);
                    }
                }
                found.sort_by_key(|f| f.id);
                Ok(found)
            }

            async fn allocate_ids(&mut self, table: &str, n: usize) -> R<Vec<i64>> {
                if n == 0 {
                    return Ok(Vec::new());
                }
                $allocate(self, table, n).await
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
                let mut found = Vec::new();
                for l in keyed_lookups($placeholder, $pad, ("kind", "value"), ids, 0) {
                    let sql = format!(
                        "SELECT kind, value, contact_id FROM contact_identities WHERE {}",
                        l.condition
                    );
                    let mut q = sqlx::query(&sql);
                    for v in l.binds {
                        q = q.bind(v);
                    }
                    for r in q.fetch_all(&mut *self).await? {
                        found.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
                    }
                }
                Ok(found)
            }

            async fn insert_identities(&mut self, ids: &[(&str, &str, i64)], now: DateTime<Utc>) -> R<()> {
                for chunk in ids.chunks(MAX_PARAMS / 4) {
                    let rows = padded($pad, chunk.len(), MAX_PARAMS / 4);
                    let sql = values_sql(
                        $placeholder,
                        "INSERT INTO contact_identities (kind, value, contact_id, created_at)",
                        (chunk.len(), rows),
                        4,
                        " ON CONFLICT (kind, value) DO NOTHING",
                    );
                    let mut q = sqlx::query(&sql);
                    for (kind, value, contact) in chunk {
                        q = q.bind(*kind).bind(*value).bind(*contact).bind(now);
                    }
                    for _ in chunk.len()..rows {
                        for _ in 0..4 {
                            q = q.bind(None::<i64>);
                        }
                    }
                    q.execute(&mut *self).await?;
                }
                Ok(())
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

            async fn insert_contacts(&mut self, contacts: &[(i64, Option<&str>)], now: DateTime<Utc>) -> R<()> {
                for chunk in contacts.chunks(MAX_PARAMS / 3) {
                    let rows = padded($pad, chunk.len(), MAX_PARAMS / 3);
                    let sql = values_sql(
                        $placeholder,
                        "INSERT INTO contacts (id, name, created_at)",
                        (chunk.len(), rows),
                        3,
                        "",
                    );
                    let mut q = sqlx::query(&sql);
                    for (id, name) in chunk {
                        q = q.bind(*id).bind(*name).bind(now);
                    }
                    for _ in chunk.len()..rows {
                        for _ in 0..3 {
                            q = q.bind(None::<i64>);
                        }
                    }
                    q.execute(&mut *self).await?;
                }
                Ok(())
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

            async fn current_turn(&mut self, pool: &str) -> R<i64> {
                let counter: Option<i64> = sqlx::query_scalar("SELECT counter FROM routing_state WHERE pool = $1")
                    .bind(pool)
                    .fetch_optional(&mut *self)
                    .await?;
                Ok(counter.unwrap_or(0))
            }

            async fn save_turn(&mut self, pool: &str, counter: i64) -> R<()> {
                sqlx::query(
                    "INSERT INTO routing_state (pool, counter) VALUES ($1, $2) \
                     ON CONFLICT (pool) DO UPDATE SET counter = $2",
                )
                .bind(pool)
                .bind(counter)
                .execute(&mut *self)
                .await
                .map(|_| ())
            }

            async fn insert_leads(&mut self, leads: &[(i64, NewLead<'_>)]) -> R<()> {
                for chunk in leads.chunks(MAX_PARAMS / LEAD_COLUMNS) {
                    let rows = padded($pad, chunk.len(), MAX_PARAMS / LEAD_COLUMNS);
                    let sql = values_sql(
                        $placeholder,
                        "INSERT INTO leads (id, created_at, updated_at, last_activity_at, channel_id, channel_kind, \
                         source_ref, contact_id, name, phone, email, messenger, subject, message, product, region, \
                         utm_source, utm_medium, utm_campaign, utm_term, utm_content, fields, assignee_user, \
                         assignee_role, assigned_by, routing_note, called_line)",
                        (chunk.len(), rows),
                        LEAD_COLUMNS,
                        "",
                    );
                    let mut q = sqlx::query(&sql);
                    for (id, l) in chunk {
                        q = q
                            .bind(*id)
                            .bind(l.now)
                            .bind(l.now)
                            .bind(l.now)
                            .bind(l.channel)
                            .bind(l.kind)
                            .bind(l.source_ref)
                            .bind(l.contact)
                            .bind(l.name)
                            .bind(l.phone)
                            .bind(l.email)
                            .bind(l.messenger.as_deref())
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
                            .bind(l.assigned_by.as_str())
                            .bind(l.routing_note)
                            .bind(l.called_line);
                    }
                    for _ in chunk.len()..rows {
                        for _ in 0..LEAD_COLUMNS {
                            q = q.bind(None::<i64>);
                        }
                    }
                    q.execute(&mut *self).await?;
                }
                Ok(())
            }

            async fn insert_inbounds(&mut self, rows: &[(i64, NewInbound<'_>)]) -> R<()> {
                for chunk in rows.chunks(MAX_PARAMS / INBOUND_COLUMNS) {
                    let rows = padded($pad, chunk.len(), MAX_PARAMS / INBOUND_COLUMNS);
                    let sql = values_sql(
                        $placeholder,
                        "INSERT INTO inbound_messages (id, channel_id, channel_kind, source_ref, received_at, stored_at, \
                         disposition, reason, lead_id, contact_id, sender_name, sender_phone, sender_email, subject, \
                         text, fields, attachments, content_key, raw)",
                        (chunk.len(), rows),
                        INBOUND_COLUMNS,
                        "",
                    );
                    let mut q = sqlx::query(&sql);
                    for (id, m) in chunk {
                        q = q
                            .bind(*id)
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
                            .bind(m.raw);
                    }
                    for _ in chunk.len()..rows {
                        for _ in 0..INBOUND_COLUMNS {
                            q = q.bind(None::<i64>);
                        }
                    }
                    q.execute(&mut *self).await?;
                }
                Ok(())
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

            async fn find_calls(&mut self, keys: &[(&str, &str)]) -> R<Vec<(String, String)>> {
                let mut found = Vec::new();
                for l in keyed_lookups($placeholder, $pad, ("channel_id", "call_id"), keys, 0) {
                    let sql = format!("SELECT channel_id, call_id FROM calls WHERE {}", l.condition);
                    let mut q = sqlx::query(&sql);
                    for v in l.binds {
                        q = q.bind(v);
                    }
                    for r in q.fetch_all(&mut *self).await? {
                        found.push((r.try_get(0)?, r.try_get(1)?));
                    }
                }
                Ok(found)
            }

            async fn insert_calls(&mut self, calls: &[NewCall<'_>], now: DateTime<Utc>) -> R<()> {
                for chunk in calls.chunks(MAX_PARAMS / CALL_COLUMNS) {
                    let rows = padded($pad, chunk.len(), MAX_PARAMS / CALL_COLUMNS);
                    let sql = values_sql(
                        $placeholder,
                        "INSERT INTO calls (channel_id, call_id, direction, lead_id, contact_id, client_phone, line, \
                         extension, started_at, answered_at, ended_at, answered, missed, talk_seconds, wait_seconds, \
                         end_reason, recording, events, updated_at)",
                        (chunk.len(), rows),
                        CALL_COLUMNS,
                        "",
                    );
                    let mut q = sqlx::query(&sql);
                    for n in chunk {
                        let c = &n.call.record;
                        q = q
                            .bind(n.channel)
                            .bind(n.call_id)
                            .bind(direction_str(c.direction))
                            .bind(n.call.lead)
                            .bind(n.call.contact)
                            .bind(n.client_phone)
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
                            .bind(now);
                    }
                    for _ in chunk.len()..rows {
                        for _ in 0..CALL_COLUMNS {
                            q = q.bind(None::<i64>);
                        }
                    }
                    q.execute(&mut *self).await?;
                }
                Ok(())
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

/// SQLite: the writer holds the write lock (BEGIN IMMEDIATE), so the ids
/// after the table's AUTOINCREMENT sequence are free until it commits.
async fn allocate_sqlite(conn: &mut sqlx::SqliteConnection, table: &str, n: usize) -> R<Vec<i64>> {
    let top: i64 =
        sqlx::query_scalar("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = ?), 0)")
            .bind(table)
            .fetch_one(conn)
            .await?;
    Ok((1..=i64::try_from(n).unwrap_or(i64::MAX))
        .map(|i| top + i)
        .collect())
}

/// PostgreSQL: the table's sequence hands them out, concurrency-safe across
/// instances; ids a transaction does not use are gaps, as after a rollback.
async fn allocate_postgres(conn: &mut sqlx::PgConnection, table: &str, n: usize) -> R<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT nextval(pg_get_serial_sequence($1, 'id')) FROM generate_series(1, $2::bigint)",
    )
    .bind(table)
    .bind(i64::try_from(n).unwrap_or(i64::MAX))
    .fetch_all(conn)
    .await
}

impl_tx!(
    sqlx::SqliteConnection,
    None,
    allocate_sqlite,
    anonymous,
    true
);
impl_tx!(
    sqlx::PgConnection,
    Some("pg_notify('leadgate_leads', $1)"),
    allocate_postgres,
    numbered,
    false
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_lookups_probe_both_columns_per_distinct_first_column() {
        let keys = [("tg", "1"), ("site", "a"), ("tg", "2"), ("tg", "3")];
        let pg = keyed_lookups(numbered, false, ("channel_id", "source_ref"), &keys, 1);
        let got: Vec<_> = pg
            .iter()
            .map(|l| (l.condition.as_str(), l.binds.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "channel_id = $2 AND source_ref IN ($3, $4, $5)",
                    vec!["tg", "1", "2", "3"]
                ),
                ("channel_id = $2 AND source_ref IN ($3)", vec!["site", "a"]),
            ]
        );

        // SQLite pads to a cached size (3 → 3, 5 → 6) by repeating the last key.
        let five: Vec<_> = ["1", "2", "3", "4", "5"]
            .iter()
            .map(|k| ("tg", *k))
            .collect();
        let sqlite = keyed_lookups(anonymous, true, ("channel_id", "call_id"), &five, 0);
        assert_eq!(sqlite.len(), 1);
        assert_eq!(
            sqlite[0].condition,
            "channel_id = ? AND call_id IN (?, ?, ?, ?, ?, ?)"
        );
        assert_eq!(sqlite[0].binds, ["tg", "1", "2", "3", "4", "5", "5"]);
    }
}
