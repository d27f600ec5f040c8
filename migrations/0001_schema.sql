-- cio-sync schema: the public tables of DESIGN §5 plus the worker's own bookkeeping.
-- Applied migrations are immutable: change the schema with a new numbered file.

create table roles (
    name        text primary key,
    protected   boolean not null default false,
    created_at  timestamptz not null default now()
);
insert into roles (name, protected) values
    ('subscriber', false),
    ('customer', false),
    ('administrator', true);

create table users (
    id             bigserial primary key,
    email          text not null,
    username       text not null,
    password_hash  text not null,
    role           text not null references roles (name),
    cio_id         text,
    customer_id    text,
    first_name     text,
    last_name      text,
    display_name   text,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now()
);
-- e-mail and username are unique regardless of case, as in WordPress.
create unique index users_email_key on users (lower(email));
create unique index users_username_key on users (lower(username));
create unique index users_cio_id_key on users (cio_id) where cio_id is not null;

create table user_meta (
    user_id     bigint not null references users (id) on delete cascade,
    meta_key    text not null,
    meta_value  text not null,
    primary key (user_id, meta_key)
);

-- The Customer.io segment catalogue (GET /v1/segments), refreshed when an unknown id appears.
create table segments (
    id           bigint primary key,
    name         text,
    description  text,
    type         text,
    updated_at   timestamptz not null default now()
);

create table user_segments (
    user_id     bigint not null references users (id) on delete cascade,
    segment_id  bigint not null,
    primary key (user_id, segment_id)
);
create index user_segments_segment_idx on user_segments (segment_id);

-- One row per webhook accepted by the ingress (keyed by the ingress's event id).
create table webhook_events (
    event_id           uuid primary key,
    action             text not null,
    email              text,
    status             text not null,
    attempts           integer not null default 0,
    received_at        timestamptz not null,
    finished_at        timestamptz,
    last_error         text,
    user_id            bigint,
    first_failed_at    timestamptz,
    last_failed_at     timestamptz,
    updated_at         timestamptz not null default now(),
    constraint webhook_events_status_check check (status in
        ('processing', 'succeeded', 'no_user', 'contact_not_found', 'rejected', 'retrying', 'dead'))
);
create index webhook_events_status_idx on webhook_events (status, received_at);
create index webhook_events_email_idx on webhook_events (lower(email));

-- The ordered, human-readable log of each event, in the spirit of WP Fusion's logs.
create table event_log (
    id        bigserial primary key,
    event_id  uuid not null,
    at        timestamptz not null default now(),
    level     text not null,
    message   text not null,
    context   jsonb
);
create index event_log_event_idx on event_log (event_id, id);

-- Side effects written in the same transaction as the user, delivered by the workers.
create table outbox (
    id               bigserial primary key,
    kind             text not null check (kind in ('password_return', 'welcome_email')),
    user_id          bigint not null references users (id) on delete cascade,
    event_id         uuid not null,
    recipient        text not null,
    -- password_return only: nonce || AEAD ciphertext of the generated password; erased once delivered.
    secret           bytea,
    status           text not null default 'pending'
                     check (status in ('pending', 'sent', 'dead', 'skipped')),
    attempts         integer not null default 0,
    next_attempt_at  timestamptz not null default now(),
    last_error       text,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    sent_at          timestamptz
);
-- At most one password return and one welcome e-mail per user, ever.
create unique index outbox_once_per_user on outbox (user_id, kind);
create index outbox_due_idx on outbox (next_attempt_at) where status = 'pending';

-- Token buckets shared by every worker (the Customer.io App API budget).
create table rate_limits (
    key            text primary key,
    tokens         double precision not null,
    updated_at     timestamptz not null default clock_timestamp(),
    blocked_until  timestamptz
);

-- Takes one token from the bucket `p_key` (refilled at p_rate per second up to p_capacity).
-- Returns 0 when the token was granted, else the seconds to wait before asking again.
-- The row lock makes the check-and-take atomic across every worker.
create function take_token(p_key text, p_rate double precision, p_capacity double precision)
returns double precision language plpgsql as $$
declare
    r       rate_limits%rowtype;
    now_ts  timestamptz := clock_timestamp();
    avail   double precision;
begin
    insert into rate_limits (key, tokens, updated_at) values (p_key, p_capacity, now_ts)
        on conflict (key) do nothing;
    select * into r from rate_limits where key = p_key for update;
    if r.blocked_until is not null and r.blocked_until > now_ts then
        return extract(epoch from (r.blocked_until - now_ts));
    end if;
    avail := least(p_capacity, r.tokens + greatest(0, extract(epoch from (now_ts - r.updated_at))) * p_rate);
    if avail >= 1 then
        update rate_limits set tokens = avail - 1, updated_at = now_ts where key = p_key;
        return 0;
    end if;
    update rate_limits set tokens = avail, updated_at = now_ts where key = p_key;
    return (1 - avail) / p_rate;
end
$$;

-- Pauses the bucket for everyone (a 429's Retry-After) and empties it.
create function block_bucket(p_key text, p_seconds double precision)
returns void language sql as $$
    insert into rate_limits (key, tokens, updated_at, blocked_until)
        values (p_key, 0, clock_timestamp(), clock_timestamp() + make_interval(secs => p_seconds))
    on conflict (key) do update
        set tokens = 0, updated_at = clock_timestamp(),
            blocked_until = greatest(coalesce(rate_limits.blocked_until, clock_timestamp()),
                                     clock_timestamp() + make_interval(secs => p_seconds));
$$;
