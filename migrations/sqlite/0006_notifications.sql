-- Notifications outbox (issue #10). A row per (event, recipient,
-- transport) is written in the transaction that assigns, releases or
-- escalates the lead, so a notification exists exactly when its cause was
-- committed; UNIQUE (event_key, recipient, transport) keeps a replayed
-- event from queueing it twice. The delivery task sends rows after commit:
-- it claims a row by moving next_attempt_at past now (a row lease), so two
-- instances never send the same row, and retries failures with backoff
-- until the row is older than notify.max_age (then failed_at is set).
-- Internal to leadgate: not part of the CRM contract.

CREATE TABLE notifications (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_key       TEXT NOT NULL,
    lead_id         INTEGER NOT NULL REFERENCES leads(id),
    event           TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    transport       TEXT NOT NULL,
    address         TEXT NOT NULL,
    note            TEXT,
    created_at      TEXT NOT NULL,
    next_attempt_at TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    sent_at         TEXT,
    failed_at       TEXT,
    UNIQUE (event_key, recipient, transport)
);
CREATE INDEX notifications_due ON notifications(next_attempt_at)
    WHERE sent_at IS NULL AND failed_at IS NULL;
