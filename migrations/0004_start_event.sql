-- One round trip to start processing a command: record the attempt in webhook_events and,
-- unless the event already finished, take a step of the coalescing protocol (claim_sync).
create function start_event(
    p_event uuid, p_action text, p_email text, p_received timestamptz, p_final text[],
    p_key text, p_claim_received timestamptz, p_lease double precision)
returns table (o_status text, o_attempts integer, o_verdict text, o_by_event uuid, o_by_status text, o_started_at timestamptz)
language plpgsql as $$
declare
    s text;
    a integer;
begin
    insert into webhook_events as w (event_id, action, email, status, attempts, received_at)
    values (p_event, p_action, p_email, 'processing', 1, p_received)
    on conflict (event_id) do update set
        attempts = w.attempts + case when w.status = any(p_final) then 0 else 1 end,
        status = case when w.status = any(p_final) then w.status else 'processing' end,
        updated_at = now()
    returning w.status, w.attempts into s, a;
    if s = any(p_final) then
        return query select s, a, null::text, null::uuid, null::text, null::timestamptz;
        return;
    end if;
    return query select s, a, c.verdict, c.event_id, c.status, c.started_at
                 from claim_sync(p_key, p_claim_received, p_lease, p_event) as c;
end
$$;
