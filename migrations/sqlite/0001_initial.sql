-- leadgate schema v1 (SQLite). The `leads` table is a public contract:
-- see docs/schema.md. Migrations are append-only once released.

CREATE TABLE contacts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT,
    created_at  TEXT NOT NULL
);

CREATE TABLE contact_identities (
    kind        TEXT NOT NULL,
    value       TEXT NOT NULL,
    contact_id  INTEGER NOT NULL REFERENCES contacts(id),
    created_at  TEXT NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE INDEX contact_identities_contact ON contact_identities(contact_id);

CREATE TABLE leads (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    channel_id       TEXT NOT NULL,
    channel_kind     TEXT NOT NULL,
    source_ref       TEXT NOT NULL,
    contact_id       INTEGER REFERENCES contacts(id),
    name             TEXT,
    phone            TEXT,
    email            TEXT,
    messenger        TEXT,
    subject          TEXT,
    message          TEXT,
    product          TEXT,
    region           TEXT,
    utm_source       TEXT,
    utm_medium       TEXT,
    utm_campaign     TEXT,
    utm_term         TEXT,
    utm_content      TEXT,
    fields           TEXT NOT NULL DEFAULT '{}',
    assignee_user    TEXT,
    assignee_role    TEXT,
    assigned_by      TEXT NOT NULL,
    routing_note     TEXT,
    status           TEXT NOT NULL DEFAULT 'new'
                     CHECK (status IN ('new', 'in_progress', 'converted', 'rejected')),
    status_reason    TEXT,
    crm_ref          TEXT,
    last_activity_at TEXT NOT NULL
);
CREATE INDEX leads_created ON leads(created_at);
CREATE INDEX leads_contact_channel ON leads(contact_id, channel_id, status);
CREATE INDEX leads_assignee_status ON leads(assignee_user, status);

CREATE TABLE inbound_messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id   TEXT NOT NULL,
    channel_kind TEXT NOT NULL,
    source_ref   TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    stored_at    TEXT NOT NULL,
    disposition  TEXT NOT NULL,
    reason       TEXT,
    lead_id      INTEGER REFERENCES leads(id),
    contact_id   INTEGER REFERENCES contacts(id),
    sender_name  TEXT,
    sender_phone TEXT,
    sender_email TEXT,
    subject      TEXT,
    text         TEXT,
    fields       TEXT NOT NULL DEFAULT '{}',
    attachments  TEXT NOT NULL DEFAULT '[]',
    content_key  TEXT,
    raw          TEXT NOT NULL DEFAULT '',
    UNIQUE (channel_id, source_ref)
);
CREATE INDEX inbound_content ON inbound_messages(channel_id, content_key, received_at)
    WHERE content_key IS NOT NULL;
CREATE INDEX inbound_lead ON inbound_messages(lead_id);

CREATE TABLE activities (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    lead_id     INTEGER NOT NULL REFERENCES leads(id),
    inbound_id  INTEGER REFERENCES inbound_messages(id),
    created_at  TEXT NOT NULL,
    kind        TEXT NOT NULL,
    summary     TEXT
);
CREATE INDEX activities_lead ON activities(lead_id);

CREATE TABLE channel_state (
    channel_id  TEXT NOT NULL,
    cursor_key  TEXT NOT NULL,
    value       TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (channel_id, cursor_key)
);

CREATE TABLE routing_state (
    pool     TEXT PRIMARY KEY,
    counter  INTEGER NOT NULL
);
