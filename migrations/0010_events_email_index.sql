-- no-transaction
-- Erasure (`worker erase`) and `worker events list --email`: events by the folded e-mail, the way
-- users are matched (`fold_email`). Built concurrently, so that it never blocks writes.
create index concurrently if not exists webhook_events_fold_email_idx
    on webhook_events (fold_email(email));
