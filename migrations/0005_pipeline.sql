-- The set-based worker pipeline: which labelled access key sent each webhook.

-- The label of the access key the webhook came with (`ACCESS_KEYS=label:key`), from the command's
-- `x-cio-key-label` header; null for unlabelled keys and for events accepted before labels existed.
alter table webhook_events add column key_label text;
create index webhook_events_key_label_idx on webhook_events (key_label, received_at) where key_label is not null;
