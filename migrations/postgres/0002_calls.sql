-- Telephony: one row per call, merged from all its PBX events; leads carry
-- the missed-call flag a CRM sorts callbacks by, and the dialled line.

ALTER TABLE leads ADD COLUMN called_line TEXT;
ALTER TABLE leads ADD COLUMN missed BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE leads ADD COLUMN missed_wait_seconds INTEGER;
ALTER TABLE leads ADD COLUMN callback_at TIMESTAMPTZ;
CREATE INDEX leads_missed ON leads(missed) WHERE missed;

CREATE TABLE calls (
    id            BIGSERIAL PRIMARY KEY,
    channel_id    TEXT NOT NULL,
    call_id       TEXT NOT NULL,
    direction     TEXT NOT NULL,
    lead_id       BIGINT REFERENCES leads(id),
    contact_id    BIGINT REFERENCES contacts(id),
    client_phone  TEXT,
    line          TEXT,
    extension     TEXT,
    started_at    TIMESTAMPTZ,
    answered_at   TIMESTAMPTZ,
    ended_at      TIMESTAMPTZ,
    answered      BOOLEAN,
    missed        BOOLEAN NOT NULL DEFAULT FALSE,
    talk_seconds  INTEGER,
    wait_seconds  INTEGER,
    end_reason    TEXT,
    recording     TEXT,
    events        INTEGER NOT NULL DEFAULT 0,
    updated_at    TIMESTAMPTZ NOT NULL,
    UNIQUE (channel_id, call_id)
);
CREATE INDEX calls_lead ON calls(lead_id);
