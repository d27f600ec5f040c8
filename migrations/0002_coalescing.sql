-- Coalescing (issue 6): one row per distinct command for a contact, remembering when its last
-- finished sync started. A webhook received before that moment is already satisfied by it, so
-- duplicates waiting in the queue spend no Customer.io calls.

create table contact_syncs (
    key                 text primary key,
    last_started_at     timestamptz,
    last_event_id       uuid,
    last_status         text,
    running_started_at  timestamptz,
    running_until       timestamptz,
    running_event_id    uuid
);

-- One step of the coalescing protocol for a webhook received at p_received:
--   'satisfied' — a sync that started at or after p_received has finished (its event and status);
--   'busy'      — another sync of this key is running now (its start time);
--   'claimed'   — this caller runs the sync; started_at is the claim time (lease of p_lease seconds).
-- A redelivered event takes over its own claim at once (its worker died holding it).
create function claim_sync(p_key text, p_received timestamptz, p_lease double precision, p_event uuid)
returns table (verdict text, event_id uuid, status text, started_at timestamptz)
language plpgsql as $$
declare
    r       contact_syncs%rowtype;
    now_ts  timestamptz := clock_timestamp();
begin
    insert into contact_syncs (key) values (p_key) on conflict do nothing;
    select * into r from contact_syncs c where c.key = p_key for update;
    if r.last_started_at is not null and r.last_started_at >= p_received then
        return query select 'satisfied'::text, r.last_event_id, r.last_status, r.last_started_at;
        return;
    end if;
    if r.running_until is not null and r.running_until > now_ts and r.running_event_id is distinct from p_event then
        return query select 'busy'::text, null::uuid, null::text, r.running_started_at;
        return;
    end if;
    update contact_syncs c set running_started_at = now_ts,
                               running_until = now_ts + make_interval(secs => p_lease),
                               running_event_id = p_event
     where c.key = p_key;
    return query select 'claimed'::text, null::uuid, null::text, now_ts;
end
$$;
