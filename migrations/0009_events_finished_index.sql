-- no-transaction
-- Retention (`worker prune`, RETENTION_DAYS): finished events by the time they finished. Built
-- concurrently (outside a transaction, one index per migration) so that adding it to a large
-- table never blocks the workers' writes.
create index concurrently if not exists webhook_events_finished_idx
    on webhook_events (finished_at) where finished_at is not null;
