-- The set-based worker pipeline: which labelled access key sent each webhook.

-- The label of the access key the webhook came with (`ACCESS_KEYS=label:key`), from the command's
-- `x-cio-key-label` header; null for unlabelled keys and for events accepted before labels existed.
alter table webhook_events add column key_label text;
create index webhook_events_key_label_idx on webhook_events (key_label, received_at) where key_label is not null;

-- Starts (p_record) or re-claims a batch of commands in one round trip. For each command, in the
-- order of its coalescing key (so that workers claiming overlapping batches lock rows in the same
-- order and never deadlock): record the attempt in webhook_events (p_record) or read its status,
-- and unless the event already finished, take one step of the coalescing protocol (claim_sync).
-- o_idx is the command's 1-based position in the arrays.
create function start_events(
    p_events uuid[], p_actions text[], p_emails text[], p_received timestamptz[], p_labels text[],
    p_keys text[], p_margin interval, p_lease double precision, p_final text[], p_record boolean)
returns table (o_idx integer, o_status text, o_attempts integer, o_verdict text, o_by_event uuid,
               o_by_status text, o_started_at timestamptz)
language plpgsql as $$
declare
    i integer;
    s text;
    a integer;
begin
    for i in select t.n::integer from unnest(p_keys) with ordinality as t(k, n) order by t.k, t.n loop
        if p_record then
            insert into webhook_events as w (event_id, action, email, status, attempts, received_at, key_label)
            values (p_events[i], p_actions[i], p_emails[i], 'processing', 1, p_received[i], p_labels[i])
            on conflict (event_id) do update set
                attempts = w.attempts + case when w.status = any(p_final) then 0 else 1 end,
                status = case when w.status = any(p_final) then w.status else 'processing' end,
                key_label = coalesce(w.key_label, excluded.key_label),
                updated_at = now()
            returning w.status, w.attempts into s, a;
        else
            select w.status, w.attempts into s, a from webhook_events w where w.event_id = p_events[i];
        end if;
        if s = any(p_final) then
            return query select i, s, a, null::text, null::uuid, null::text, null::timestamptz;
            continue;
        end if;
        return query select i, s, a, c.verdict, c.event_id, c.status, c.started_at
                     from claim_sync(p_keys[i], p_received[i] + p_margin, p_lease, p_events[i]) as c;
    end loop;
end
$$;

-- Serialises every writer of the given contacts until the transaction ends (many `add`s for one
-- contact on many workers give one user). Locks are taken in one global order: no deadlocks.
create function lock_contacts(p_keys text[]) returns void language plpgsql as $$
declare
    k text;
begin
    for k in select distinct lower(x) from unnest(p_keys) as x order by 1 loop
        perform pg_advisory_xact_lock(hashtextextended('cio-sync contact ' || k, 0));
    end loop;
end
$$;
