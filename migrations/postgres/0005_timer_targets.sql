-- The pool or person a queued lead waits for (`user:<id>` or `role:<id>`),
-- so its release picks from the pool the rules chose when it arrived.
ALTER TABLE lead_timers ADD COLUMN target TEXT;
