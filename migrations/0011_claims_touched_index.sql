-- no-transaction
-- Retention: coalescing rows by the last time anything happened to them. Built concurrently, so
-- that it never blocks writes.
create index concurrently if not exists contact_syncs_touched_idx
    on contact_syncs (greatest(last_started_at, running_started_at, running_until));
