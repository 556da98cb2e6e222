//! `leadgate audit`: the delivery promise checked on a database. Each
//! [`Check`] is one query that returns the rows breaking one invariant, so
//! an empty result means the invariant holds; the same statements run on
//! SQLite and PostgreSQL.
//!
//! What is checked: every inbound message is stored once per
//! `(channel_id, source_ref)`; every lead has the inbound message that
//! created it and no inbound message created two leads; every activity,
//! call and inbound message points at a lead that exists; IMAP folder
//! cursors are not ahead of the mail stored for their channel (the only
//! cursors whose position can be compared with stored rows: Telegram
//! offsets and VK `ts` values start at arbitrary numbers).

use std::fmt;

use sqlx::{Column, Row};

use crate::store::{Store, StoreError, on_pool};

/// One invariant and the query that finds the rows breaking it. Every
/// query returns its evidence as text columns, named for the report.
pub struct Check {
    pub name: &'static str,
    /// The invariant, as the report states it when broken.
    pub invariant: &'static str,
    sql: &'static str,
}

/// Offending rows shown per broken invariant; the count is always exact.
const SHOWN: usize = 20;

pub const CHECKS: &[Check] = &[
    Check {
        name: "inbound_unique",
        invariant: "each (channel_id, source_ref) is stored once in inbound_messages",
        sql: "SELECT channel_id, source_ref, CAST(COUNT(*) AS TEXT) AS copies \
              FROM inbound_messages GROUP BY channel_id, source_ref HAVING COUNT(*) > 1 \
              ORDER BY channel_id, source_ref",
    },
    Check {
        name: "lead_has_inbound",
        invariant: "every lead has the inbound message it was created from \
                    (same channel_id and source_ref, lead_id pointing at it)",
        sql: "SELECT CAST(l.id AS TEXT) AS lead_id, l.channel_id, l.source_ref FROM leads l \
              WHERE NOT EXISTS (SELECT 1 FROM inbound_messages i WHERE i.lead_id = l.id \
              AND i.channel_id = l.channel_id AND i.source_ref = l.source_ref) ORDER BY l.id",
    },
    Check {
        name: "one_lead_per_inbound",
        invariant: "no two leads come from the same inbound message",
        sql: "SELECT channel_id, source_ref, CAST(COUNT(*) AS TEXT) AS leads FROM leads \
              GROUP BY channel_id, source_ref HAVING COUNT(*) > 1 ORDER BY channel_id, source_ref",
    },
    Check {
        name: "lead_created_once",
        invariant: "a lead is created by one inbound message (disposition lead_created)",
        sql: "SELECT CAST(lead_id AS TEXT) AS lead_id, CAST(COUNT(*) AS TEXT) AS creators \
              FROM inbound_messages WHERE disposition = 'lead_created' AND lead_id IS NOT NULL \
              GROUP BY lead_id HAVING COUNT(*) > 1 ORDER BY lead_id",
    },
    Check {
        name: "inbound_lead_exists",
        invariant: "an inbound message that created or joined a lead points at a lead that exists",
        sql: "SELECT CAST(i.id AS TEXT) AS inbound_id, i.channel_id, i.source_ref, i.disposition, \
              COALESCE(CAST(i.lead_id AS TEXT), 'none') AS lead_id FROM inbound_messages i \
              WHERE (i.lead_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM leads l WHERE l.id = i.lead_id)) \
              OR (i.disposition IN ('lead_created', 'activity_added') AND i.lead_id IS NULL) \
              ORDER BY i.id",
    },
    Check {
        name: "activity_has_lead",
        invariant: "every activity belongs to a lead that exists (and its inbound message, if named, exists)",
        sql: "SELECT CAST(a.id AS TEXT) AS activity_id, CAST(a.lead_id AS TEXT) AS lead_id, \
              COALESCE(CAST(a.inbound_id AS TEXT), 'none') AS inbound_id FROM activities a \
              WHERE NOT EXISTS (SELECT 1 FROM leads l WHERE l.id = a.lead_id) \
              OR (a.inbound_id IS NOT NULL AND NOT EXISTS \
                  (SELECT 1 FROM inbound_messages i WHERE i.id = a.inbound_id)) \
              ORDER BY a.id",
    },
    Check {
        name: "call_has_lead",
        invariant: "every call that names a lead names one that exists",
        sql: "SELECT CAST(c.id AS TEXT) AS call_row, c.channel_id, c.call_id, \
              CAST(c.lead_id AS TEXT) AS lead_id FROM calls c WHERE c.lead_id IS NOT NULL \
              AND NOT EXISTS (SELECT 1 FROM leads l WHERE l.id = c.lead_id) ORDER BY c.id",
    },
    // An IMAP poller starts a folder at UID 0 and stores every message it
    // fetches in the transaction that moves the cursor, so a cursor past 0
    // means mail of that channel was stored no later than the cursor.
    Check {
        name: "cursor_not_ahead",
        invariant: "an IMAP folder cursor past UID 0 is not ahead of the mail stored for its channel",
        sql: "SELECT s.channel_id, s.cursor_key, s.value FROM channel_state s \
              WHERE s.cursor_key LIKE 'folder:%' AND s.value NOT LIKE '%:0' \
              AND NOT EXISTS (SELECT 1 FROM inbound_messages i WHERE i.channel_id = s.channel_id \
              AND i.stored_at <= s.updated_at) ORDER BY s.channel_id, s.cursor_key",
    },
];

/// The rows breaking one invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub check: &'static str,
    pub invariant: &'static str,
    /// Exact number of offending rows.
    pub count: usize,
    /// The first [`SHOWN`] of them, `column=value` pairs.
    pub rows: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "BROKEN {}: {} ({} row(s))",
            self.check, self.invariant, self.count
        )?;
        for row in &self.rows {
            writeln!(f, "    {row}")?;
        }
        if self.count > self.rows.len() {
            writeln!(f, "    … and {} more", self.count - self.rows.len())?;
        }
        Ok(())
    }
}

/// Run every check; the violations found, empty when the database keeps
/// every invariant.
pub async fn audit(store: &Store) -> Result<Vec<Violation>, StoreError> {
    let mut violations = Vec::new();
    for check in CHECKS {
        let rows: Vec<Vec<(String, Option<String>)>> = on_pool!(store, pool => {
            let rows = sqlx::query(check.sql).fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    (0..row.len())
                        .map(|i| {
                            let name = row.columns()[i].name().to_owned();
                            row.try_get::<Option<String>, _>(i).map(|v| (name, v))
                        })
                        .collect::<sqlx::Result<Vec<_>>>()
                })
                .collect::<sqlx::Result<Vec<_>>>()?
        });
        if rows.is_empty() {
            continue;
        }
        violations.push(Violation {
            check: check.name,
            invariant: check.invariant,
            count: rows.len(),
            rows: rows
                .iter()
                .take(SHOWN)
                .map(|cols| {
                    cols.iter()
                        .map(|(name, value)| {
                            format!("{name}={}", value.as_deref().unwrap_or("NULL"))
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect(),
        });
    }
    Ok(violations)
}
