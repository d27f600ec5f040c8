//! The write side of the pipeline: the users, meta, segments and outbox rows of a whole batch, its
//! event logs and outcomes, in one transaction of a few set-based statements.
//!
//! A round holds at most one command per contact (two commands for one contact, say an `add` and
//! an `update`, go in successive rounds), so that no statement touches a row twice. The round's
//! contacts are locked first (advisory locks, taken in one global order) and their users' rows
//! next, so that concurrent `add`s for one contact on any number of workers create one user. If a
//! round's transaction fails, its commands are written one by one, and only the one at fault fails.

use std::collections::{BTreeMap, HashMap, HashSet};

use shared::command::Action;

use super::{
    context::SyncCtx,
    job::Job,
    ledger::{self, Closing},
    outcome::{Failure, Outcome},
    store::{self, NewOutboxRow, NewUser, UserChanges},
    users::{self, Facts},
};
use crate::{
    fieldmap::UserField,
    outbox::OutboxKind,
    password::{Origin, Prepared},
};

/// Writes the jobs that reached the write phase.
pub(super) async fn users(ctx: &SyncCtx, jobs: &mut [Job], ready: &[usize]) {
    for round in rounds(jobs, ready) {
        match round_once(ctx, jobs, &round).await {
            Ok(()) => {}
            Err(f) if round.len() == 1 => jobs[round[0]].fail(f),
            Err(f) => {
                tracing::warn!(
                    commands = round.len(),
                    "writing the batch failed ({}); writing its commands one by one",
                    f.reason()
                );
                for &i in &round {
                    if let Err(f) = round_once(ctx, jobs, &[i]).await {
                        jobs[i].fail(f);
                    }
                }
            }
        }
    }
}

/// Splits the jobs into rounds in which no two share a contact (cio_id or an address).
fn rounds(jobs: &[Job], ready: &[usize]) -> Vec<Vec<usize>> {
    let mut rounds: Vec<(Vec<usize>, HashSet<String>)> = Vec::new();
    for &i in ready {
        let ids: Vec<String> = jobs[i]
            .cio_id
            .iter()
            .map(|c| format!("cio:{c}"))
            .chain(jobs[i].emails.iter().map(|e| format!("email:{e}")))
            .collect();
        match rounds
            .iter_mut()
            .find(|(_, taken)| !ids.iter().any(|id| taken.contains(id)))
        {
            Some((members, taken)) => {
                members.push(i);
                taken.extend(ids);
            }
            None => rounds.push((vec![i], ids.into_iter().collect())),
        }
    }
    rounds.into_iter().map(|(members, _)| members).collect()
}

/// One round in one transaction. On failure nothing of it is kept, log lines included.
async fn round_once(ctx: &SyncCtx, jobs: &mut [Job], round: &[usize]) -> Result<(), Failure> {
    let marks: Vec<usize> = round.iter().map(|&i| jobs[i].log.mark()).collect();
    match write_round(ctx, jobs, round).await {
        Ok(ends) => {
            // New users and e-mail changes queue outbox rows.
            let created = ends.iter().any(|(_, e)| matches!(e, Ok(Outcome::Succeeded { .. })));
            for (i, end) in ends {
                jobs[i].end = Some(end);
                jobs[i].unwritten = false;
            }
            if created {
                ctx.outbox_wakeup.notify_waiters();
            }
            Ok(())
        }
        Err(f) => {
            for (&i, mark) in round.iter().zip(marks) {
                jobs[i].log.truncate(mark);
            }
            Err(f)
        }
    }
}

/// A user this round creates.
struct Creating {
    job: usize,
    user: NewUser,
    password: Prepared,
}

/// Writes one round; returns each job's end (committed).
async fn write_round(
    ctx: &SyncCtx,
    jobs: &mut [Job],
    round: &[usize],
) -> Result<Vec<(usize, Result<Outcome, Failure>)>, Failure> {
    let mut tx = ctx.pool.begin().await?;
    let keys: Vec<String> = round
        .iter()
        .map(|&i| {
            jobs[i]
                .cio_id
                .clone()
                .unwrap_or_else(|| jobs[i].cmd().contact.email.folded())
        })
        .collect();
    store::lock_contacts(&mut tx, &keys).await?;
    let lookups: Vec<store::Lookup> = round.iter().map(|&i| jobs[i].lookup()).collect();
    let found = store::find_users(&mut tx, &lookups, true).await?;

    let mut facts = Facts {
        roles: store::roles(&mut tx).await?,
        ..Default::default()
    };
    let mut new_emails = Vec::new();
    let mut usernames = Vec::new();
    for (&i, user) in round.iter().zip(&found) {
        let job = &jobs[i];
        match (job.cmd().action, user) {
            (Action::UpdateTags, _) => {}
            (_, Some(u)) => new_emails.extend(users::email_change(u, &job.customer, &job.mapped)),
            (Action::Add, None) => usernames.push(users::wanted_username(job.cmd(), &job.mapped)),
            (Action::Update, None) => {}
        }
    }
    facts.email_owners = store::email_owners(&mut tx, &new_emails).await?;
    let known: Vec<i64> = found.iter().flatten().map(|u| u.id).collect();
    let url_states = store::url_states(&mut tx, &known).await?;
    facts.taken_usernames = store::taken_usernames(&mut tx, &usernames).await?;

    // Decide, job by job (no statement but the rare username retry).
    let mut ends: HashMap<usize, Result<Outcome, Failure>> = HashMap::new();
    let mut outbox = Vec::new();
    let mut segment_owner: HashMap<usize, i64> = HashMap::new();
    let mut changes: Vec<(i64, UserChanges)> = Vec::new();
    let mut creating: Vec<Creating> = Vec::new();
    for (&i, user) in round.iter().zip(found) {
        let job = &mut jobs[i];
        let action = job.cmd().action;
        let carries_url_state = job.cmd().tags.is_some() || job.cmd().role.is_some();
        if let Some(u) = user.as_ref().filter(|_| carries_url_state) {
            if let Some((at, by)) = url_states.get(&u.id).filter(|(at, _)| *at > job.cmd().received_at) {
                job.log.notice(format!(
                    "Skipped: event {by} (received {at}) already applied newer URL state (tags, role) to user #{}; this older command would undo it",
                    u.id
                ));
                ends.insert(
                    i,
                    Ok(Outcome::Satisfied {
                        by: *by,
                        status: ledger::EventStatus::Succeeded,
                    }),
                );
                continue;
            }
        }
        match (action, user) {
            (Action::UpdateTags, Some(u)) => {
                segment_owner.insert(i, u.id);
                ends.insert(
                    i,
                    Ok(Outcome::Succeeded {
                        user_id: u.id,
                        created: false,
                    }),
                );
            }
            (Action::UpdateTags | Action::Update, None) => {
                job.no_user_line();
                ends.insert(i, Ok(Outcome::NoUser));
            }
            (Action::Update | Action::Add, Some(u)) => {
                if let Some(reason) = replaced_cio_id(&u, job.cio_id.as_deref()) {
                    job.log.error(format!("Rejected: {reason}"));
                    ends.insert(i, Ok(Outcome::Rejected(reason)));
                    continue;
                }
                let old_email = u.email.clone();
                let c = users::refresh(
                    &job.inc.cmd,
                    &u,
                    &job.customer,
                    &job.mapped,
                    job.cio_id.as_deref(),
                    ctx.email_changes,
                    &facts,
                    &mut job.log,
                );
                if c.email.is_some() {
                    outbox.extend(email_change_notice(ctx, job, u.id, &old_email));
                }
                if action == Action::Add {
                    job.log.info(format!(
                        "User #{} already exists: updated it (no new password, e-mail or password return)",
                        u.id
                    ));
                }
                changes.push((u.id, c));
                segment_owner.insert(i, u.id);
                ends.insert(
                    i,
                    Ok(Outcome::Succeeded {
                        user_id: u.id,
                        created: false,
                    }),
                );
            }
            (Action::Add, None) => {
                let planned = users::new_user(
                    &mut tx,
                    &job.inc.cmd,
                    &job.customer,
                    &job.mapped,
                    job.cio_id.as_deref(),
                    &ctx.default_role,
                    &mut facts,
                    &mut job.log,
                )
                .await;
                match planned {
                    Ok(Ok(mut user)) => {
                        let password = match job.password.take() {
                            Some(p) => p,
                            // Hashed in the read phase unless the user it found then is gone, or an
                            // earlier try of this round was rolled back: hash now (rare).
                            None => ctx
                                .hasher
                                .prepare(job.mapped.get(UserField::UserPass), ctx.password_length)
                                .await
                                .map_err(|e| Failure::Transient {
                                    reason: e.to_string(),
                                    retry_after: None,
                                })?,
                        };
                        user.password_hash = password.hash.clone();
                        creating.push(Creating { job: i, user, password });
                    }
                    Ok(Err(reason)) => {
                        job.log.error(format!("Rejected: {reason}"));
                        ends.insert(i, Ok(Outcome::Rejected(reason)));
                    }
                    Err(f) => {
                        ends.insert(i, Err(f));
                    }
                }
            }
        }
    }

    // Write, a statement per table for the whole round.
    let new_users: Vec<NewUser> = creating.iter().map(|c| c.user.clone()).collect();
    let ids = store::insert_users(&mut tx, &new_users).await.map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => Failure::Transient {
            reason: format!(
                "a conflicting user appeared while creating a user ({}); retrying",
                d.constraint().unwrap_or("unique")
            ),
            retry_after: None,
        },
        _ => Failure::from(e),
    })?;
    for (c, id) in creating.iter().zip(&ids) {
        let job = &mut jobs[c.job];
        let source = match c.password.origin {
            Origin::Generated => "generated password",
            Origin::FromCustomerIo => "password from Customer.io",
        };
        job.log.info(format!(
            "Created user #{id} (role {}, username {}, {source})",
            c.user.role, c.user.username
        ));
        outbox.extend(outbox_rows(ctx, job, *id, &c.user.email, &c.password));
        segment_owner.insert(c.job, *id);
        ends.insert(
            c.job,
            Ok(Outcome::Succeeded {
                user_id: *id,
                created: true,
            }),
        );
    }
    store::update_users(&mut tx, &changes).await?;
    // Commands carrying URL state that were applied: a newer one's time is kept per user.
    let applied_url_state: Vec<_> = round
        .iter()
        .filter_map(|&i| {
            let cmd = jobs[i].cmd();
            match ends.get(&i) {
                Some(Ok(Outcome::Succeeded { user_id, .. })) if cmd.tags.is_some() || cmd.role.is_some() => {
                    Some((*user_id, cmd.received_at, cmd.event_id))
                }
                _ => None,
            }
        })
        .collect();
    store::record_url_states(&mut tx, &applied_url_state).await?;
    let meta: Vec<(i64, &BTreeMap<String, String>)> = segment_owner
        .iter()
        .map(|(&i, &user)| (user, &jobs[i].mapped.meta))
        .collect();
    store::upsert_meta(&mut tx, &meta).await?;
    let sets: Vec<(i64, &std::collections::BTreeSet<i64>)> = segment_owner
        .iter()
        .map(|(&i, &user)| (user, &jobs[i].segments))
        .collect();
    let counts = store::replace_segments(&mut tx, &sets).await?;
    for (&i, user) in &segment_owner {
        let job = &mut jobs[i];
        let mut msg = format!("Loaded segment(s): {}", job.segment_label);
        if let Some((added, removed)) = counts.get(user).filter(|(a, r)| *a > 0 || *r > 0) {
            msg.push_str(&format!(" ({added} added, {removed} removed)"));
        }
        job.log.info(msg);
    }
    store::insert_outbox(&mut tx, &outbox).await?;

    let mut closing: Vec<Closing> = Vec::new();
    for (i, job) in jobs.iter_mut().enumerate() {
        let Some(Ok(outcome)) = ends.get(&i) else { continue };
        closing.push(Closing {
            log: &mut job.log,
            status: outcome.status(),
            user_id: match outcome {
                Outcome::Succeeded { user_id, .. } => Some(*user_id),
                _ => None,
            },
            error: match outcome {
                Outcome::Rejected(reason) => Some(reason.clone()),
                _ => None,
            },
            claim: job.claim.as_ref(),
            data_from: job.data_from,
        });
    }
    ledger::finish(&mut tx, &mut closing).await?;
    tx.commit().await?;
    Ok(ends.into_iter().collect())
}

/// Why a command may not touch this user: it would replace the user's stored `cio_id` by another
/// one (a user stays tied to the Customer.io profile it was first synced with).
fn replaced_cio_id(user: &store::UserRow, cio_id: Option<&str>) -> Option<String> {
    match (user.cio_id.as_deref(), cio_id) {
        (Some(stored), Some(new)) if stored != new => Some(format!(
            "user #{} is tied to Customer.io profile {stored}, and this contact is profile {new}; the stored cio_id is never replaced",
            user.id
        )),
        _ => None,
    }
}

/// The notice to a user's old address after its login e-mail changed (when mail is on).
fn email_change_notice(ctx: &SyncCtx, job: &mut Job, user_id: i64, old_email: &str) -> Option<NewOutboxRow> {
    if !ctx.mail_enabled {
        return None;
    }
    job.log
        .info("Queued the notice of the e-mail change to the old address");
    Some(NewOutboxRow {
        kind: OutboxKind::EmailChangeNotice,
        user_id,
        event_id: job.inc.cmd.event_id,
        recipient: old_email.to_string(),
        secret: None,
        skipped: None,
    })
}

/// The outbox rows a new user brings, with their log lines.
fn outbox_rows(ctx: &SyncCtx, job: &mut Job, user_id: i64, email: &str, pw: &Prepared) -> Vec<NewOutboxRow> {
    let mut rows = Vec::new();
    let row = |kind, secret, skipped| NewOutboxRow {
        kind,
        user_id,
        event_id: job.inc.cmd.event_id,
        recipient: email.to_string(),
        secret,
        skipped,
    };
    if job.inc.cmd.send_notification {
        if ctx.mail_enabled {
            rows.push(row(OutboxKind::WelcomeEmail, None, None));
            job.log.info("Queued the welcome e-mail");
        } else {
            let note = "welcome e-mail is off (SMTP_URL is not set)";
            rows.push(row(OutboxKind::WelcomeEmail, None, Some(note)));
            job.log
                .warning(format!("send_notification was requested but the {note}"));
        }
    }
    if let Some(pr) = &ctx.password_return {
        if pw.origin == Origin::Generated {
            rows.push(row(
                OutboxKind::PasswordReturn,
                Some(pr.secrets.seal(&pw.plaintext)),
                None,
            ));
            job.log.info(format!(
                "Queued the return of the generated password to Customer.io attribute {}",
                pr.field
            ));
        } else {
            job.log.info("Password came from Customer.io: nothing to return");
        }
    }
    rows
}

/// Writes the outcomes of the given jobs that ended without a user write (satisfied duplicates,
/// contacts Customer.io does not know, updates without a user), in one transaction.
pub(super) async fn close_remaining(ctx: &SyncCtx, jobs: &mut [Job], among: &[usize]) {
    let todo: HashSet<usize> = among.iter().copied().filter(|&i| jobs[i].unwritten).collect();
    if todo.is_empty() {
        return;
    }
    let result: Result<(), sqlx::Error> = async {
        let mut tx = ctx.pool.begin().await?;
        let mut closing: Vec<Closing> = Vec::new();
        for (i, job) in jobs.iter_mut().enumerate() {
            if !todo.contains(&i) {
                continue;
            }
            let Some(Ok(outcome)) = &job.end else { continue };
            closing.push(Closing {
                status: outcome.status(),
                user_id: None,
                error: match outcome {
                    Outcome::Rejected(reason) => Some(reason.clone()),
                    _ => None,
                },
                claim: job.claim.as_ref(),
                data_from: job.data_from,
                log: &mut job.log,
            });
        }
        ledger::finish(&mut tx, &mut closing).await?;
        tx.commit().await
    }
    .await;
    for &i in &todo {
        match &result {
            Ok(()) => jobs[i].unwritten = false,
            Err(e) => jobs[i].fail(Failure::Transient {
                reason: format!("database error: {e}"),
                retry_after: None,
            }),
        }
    }
}
