-- Segment membership snapshots (issue 6), shared by every worker: one worker reads every
-- segment's paged membership from Customer.io, the others reuse it. A snapshot serves webhooks
-- received before it was taken (`taken_at`, database clock). Only the latest few are kept.

create table membership_snapshots (
    id             bigserial primary key,
    taken_at       timestamptz not null,
    segment_count  integer not null,
    calls          integer not null,
    created_at     timestamptz not null default now()
);

create table membership_snapshot_members (
    snapshot_id  bigint not null references membership_snapshots (id) on delete cascade,
    -- 'cio:<cio_id>' or 'email:<lower-case e-mail>'
    contact      text not null,
    segment_ids  bigint[] not null,
    primary key (snapshot_id, contact)
);
