-- Assignment by the team calendar and response deadlines (issue #10).
-- A lead nobody could take is queued: assignee_user stays NULL and
-- queued_until says when it is assigned (to whoever is on shift then).
-- Deadlines and queue releases are rows of lead_timers, found by the sweep
-- through the partial index on due_at, so a sweep never reads all leads.

ALTER TABLE leads ADD COLUMN queued_until TEXT;
ALTER TABLE leads ADD COLUMN respond_by TEXT;
ALTER TABLE leads ADD COLUMN overdue INTEGER NOT NULL DEFAULT 0;
ALTER TABLE leads ADD COLUMN escalation TEXT;

CREATE TABLE lead_timers (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    lead_id     INTEGER NOT NULL REFERENCES leads(id),
    kind        TEXT NOT NULL,
    due_at      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    fired_at    TEXT,
    outcome     TEXT,
    UNIQUE (lead_id, kind)
);
CREATE INDEX lead_timers_due ON lead_timers(due_at) WHERE fired_at IS NULL;
