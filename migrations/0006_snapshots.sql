-- Segment membership snapshots written page by page and read back per contact: one row per
-- membership, so that no process holds a whole snapshot in memory. They replace the tables that
-- held one row per contact, written in one INSERT and read back whole, and the coalescing key
-- under which those were claimed.

drop table membership_snapshot_members;
drop table membership_snapshots;
delete from contact_syncs where key = 'segment-membership-snapshot';

-- One attempt at a snapshot:
--   'writing'   — its pages are being stored (never read; deleted when the attempt fails);
--   'complete'  — every segment was read: it serves webhooks received before `taken_at`, less a
--                 margin for clock skew (only the latest few are kept);
--   'too_large' — the workspace had more memberships than the worker's limit (`members` counts
--                 those seen before it stopped); no members are kept, and workers read contacts
--                 one by one for a while instead.
create table segment_snapshots (
    id             bigserial primary key,
    state          text not null check (state in ('writing', 'complete', 'too_large')),
    -- When its reads started (database clock).
    taken_at       timestamptz not null,
    finished_at    timestamptz,
    members        bigint not null default 0,
    -- App API calls it cost.
    calls          integer not null default 0,
    -- The segment catalogue read with it: ids and names, in the same order.
    segment_ids    bigint[] not null default '{}',
    segment_names  text[] not null default '{}'
);

-- One row per membership: the person's cio_id and lower-cased e-mail as the membership listing
-- gave them (either may be missing). Read back for a batch's contacts by either.
create table segment_snapshot_members (
    snapshot_id  bigint not null references segment_snapshots (id) on delete cascade,
    segment_id   bigint not null,
    cio_id       text,
    email        text
);
create index segment_snapshot_members_cio_idx on segment_snapshot_members (snapshot_id, cio_id);
create index segment_snapshot_members_email_idx on segment_snapshot_members (snapshot_id, email);

-- Who is taking a snapshot: held until `expires_at`, renewed while the work runs; an expired
-- lease may be taken over.
create table snapshot_leases (
    key         text primary key,
    holder      uuid not null,
    taken_at    timestamptz not null,
    expires_at  timestamptz not null
);
