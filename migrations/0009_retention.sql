-- Retention and erasure: the indexes that let `worker prune` and `worker erase` (and `worker events
-- list --email`) find their rows without reading whole tables. Pruning deletes in small batches,
-- each of which finds its rows through these.

-- Finished events by the time they finished.
create index webhook_events_finished_idx on webhook_events (finished_at) where finished_at is not null;

-- Events by the folded e-mail, the way users are matched (`fold_email`).
create index webhook_events_fold_email_idx on webhook_events (fold_email(email));

-- Coalescing rows by the last time anything happened to them.
create index contact_syncs_touched_idx on contact_syncs
    (greatest(last_started_at, running_started_at, running_until));
