-- The operator console lists events newest first, keyset-paged on (received_at, event_id), and
-- counts them per minute over the last hour: both read this index instead of the whole table.
create index webhook_events_received_idx on webhook_events (received_at, event_id);
