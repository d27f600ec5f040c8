-- Trust boundaries: what a webhook may change, in what order, and side effects that survive
-- long outages.

-- E-mail addresses and usernames fold case the same way everywhere: Unicode lower case (ICU's
-- root locale), whatever the database's or the column's collation. The worker folds with Rust's
-- `to_lowercase`, which gives the same result.
create function fold_email(text) returns text
    language sql immutable strict parallel safe
    as $$ select lower($1 collate "und-x-icu") $$;

drop index users_email_key;
drop index users_username_key;
create unique index users_email_key on users (fold_email(email));
create unique index users_username_key on users (fold_email(username));

-- A webhook may give only the roles an operator marked assignable; a new role is not.
alter table roles add column assignable boolean not null default false;
update roles set assignable = true where name in ('subscriber', 'customer');

-- The newest command carrying URL state (`tags=`, `role=`) applied to each user, so that an older
-- one (a delayed retry) never undoes it.
create table user_url_state (
    user_id      bigint primary key references users (id) on delete cascade,
    received_at  timestamptz not null,
    event_id     uuid not null
);

-- The notice to the old address after an e-mail change; any number per user.
alter table outbox drop constraint outbox_kind_check;
alter table outbox add constraint outbox_kind_check
    check (kind in ('password_return', 'welcome_email', 'email_change_notice'));
drop index outbox_once_per_user;
-- At most one password return and one welcome e-mail per user, ever.
create unique index outbox_once_per_user on outbox (user_id, kind)
    where kind in ('password_return', 'welcome_email');
-- Undelivered rows give up by age, counted from here (`worker outbox replay` restarts it).
alter table outbox add column pending_since timestamptz;
update outbox set pending_since = created_at;
alter table outbox alter column pending_since set not null;
alter table outbox alter column pending_since set default now();
