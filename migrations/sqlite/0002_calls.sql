-- Telephony: one row per call, merged from all its PBX events; leads carry
-- the missed-call flag a CRM sorts callbacks by, and the dialled line.

ALTER TABLE leads ADD COLUMN called_line TEXT;
ALTER TABLE leads ADD COLUMN missed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE leads ADD COLUMN missed_wait_seconds INTEGER;
ALTER TABLE leads ADD COLUMN callback_at TEXT;
CREATE INDEX leads_missed ON leads(missed) WHERE missed = 1;

CREATE TABLE calls (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id    TEXT NOT NULL,
    call_id       TEXT NOT NULL,
    direction     TEXT NOT NULL,
    lead_id       INTEGER REFERENCES leads(id),
    contact_id    INTEGER REFERENCES contacts(id),
    client_phone  TEXT,
    line          TEXT,
    extension     TEXT,
    started_at    TEXT,
    answered_at   TEXT,
    ended_at      TEXT,
    answered      INTEGER,
    missed        INTEGER NOT NULL DEFAULT 0,
    talk_seconds  INTEGER,
    wait_seconds  INTEGER,
    end_reason    TEXT,
    recording     TEXT,
    events        INTEGER NOT NULL DEFAULT 0,
    updated_at    TEXT NOT NULL,
    UNIQUE (channel_id, call_id)
);
CREATE INDEX calls_lead ON calls(lead_id);
