//! What a sync does to a user, with WP Fusion's rules for usernames, roles and protected users:
//! the changes to an existing user, or the user to create. Decisions read [`Facts`] gathered for a
//! whole batch in a few statements, and say what they decided in the event log; nothing here writes.

use std::collections::HashMap;

use rand::RngExt;
use shared::command::SyncV1;
use sqlx::PgConnection;

use super::{
    outcome::Failure,
    store::{self, NewUser, RoleRules, UserChanges, UserRow},
};
use crate::{
    cio::types::Customer,
    events::EventLog,
    fieldmap::{Mapped, UserField},
};

/// What the database says, for every decision of one write round.
#[derive(Debug, Default)]
pub struct Facts {
    /// Registered roles and what they allow.
    pub roles: HashMap<String, RoleRules>,
    /// Owners of the addresses users would change to: lower-cased e-mail → user id.
    pub email_owners: HashMap<String, i64>,
    /// Usernames taken (lower-cased) → their user, `None` for one chosen earlier in this round.
    pub taken_usernames: HashMap<String, Option<i64>>,
}

fn changed(new: Option<&str>, old: Option<&str>) -> Option<String> {
    match new {
        Some(n) if Some(n) != old => Some(n.to_string()),
        _ => None,
    }
}

/// The e-mail Customer.io has for the contact (the mapped field, else its identifier).
pub fn customer_email(customer: &Customer, mapped: &Mapped) -> Option<String> {
    mapped
        .get(UserField::Email)
        .map(str::to_string)
        .or_else(|| customer.email())
}

/// The address an existing user would change to, if Customer.io has another one.
pub fn email_change(user: &UserRow, customer: &Customer, mapped: &Mapped) -> Option<String> {
    customer_email(customer, mapped).filter(|e| shared::email::fold(e) != shared::email::fold(&user.email))
}

/// Why a webhook's `role=` is refused, if it is: only registered, assignable, unprotected roles
/// may be given by a webhook.
fn refused_role(role: &str, facts: &Facts) -> Option<&'static str> {
    match facts.roles.get(role) {
        None => Some("is not a registered role"),
        Some(r) if r.protected => Some("is protected and cannot be given by a webhook"),
        Some(r) if !r.assignable => Some("is not assignable by webhooks (an operator marks it `assignable` in roles)"),
        Some(_) => None,
    }
}

/// The changes that refresh an existing user from the contact (`update`, and `add` for a user
/// that exists). `email_changes`: whether a changed Customer.io e-mail may change the user's.
#[allow(clippy::too_many_arguments)]
pub fn refresh(
    cmd: &SyncV1,
    user: &UserRow,
    customer: &Customer,
    mapped: &Mapped,
    cio_id: Option<&str>,
    email_changes: bool,
    facts: &Facts,
    log: &mut EventLog,
) -> UserChanges {
    let mut c = UserChanges {
        first_name: changed(mapped.get(UserField::FirstName), user.first_name.as_deref()),
        last_name: changed(mapped.get(UserField::LastName), user.last_name.as_deref()),
        display_name: changed(mapped.get(UserField::DisplayName), user.display_name.as_deref()),
        cio_id: changed(cio_id, user.cio_id.as_deref()),
        customer_id: changed(customer.customer_id().as_deref(), user.customer_id.as_deref()),
        ..Default::default()
    };
    if user.protected {
        log.notice(format!(
            "User #{} has the protected role {}: its role, e-mail, username and password are not changed by webhooks",
            user.id, user.role
        ));
    }
    if let Some(e) = email_change(user, customer, mapped).filter(|_| !user.protected) {
        if shared::email::parse(&e).is_err() {
            log.warning(format!(
                "Customer.io e-mail {e:?} is not a valid address; e-mail of user #{} left unchanged",
                user.id
            ));
        } else if let Some(owner) = facts.email_owners.get(&e.to_lowercase()).filter(|o| **o != user.id) {
            log.warning(format!(
                "E-mail {e} already belongs to user #{owner}; e-mail of user #{} left unchanged",
                user.id
            ));
        } else if !email_changes {
            log.notice(format!(
                "Customer.io has the e-mail {e}; e-mail of user #{} left unchanged (SYNC_EMAIL_CHANGES=false)",
                user.id
            ));
        } else {
            log.info(format!(
                "Changed e-mail of user #{} from {} to {e}",
                user.id, user.email
            ));
            c.email = Some(e);
        }
    }
    if let Some(role) = cmd.role.as_deref().filter(|r| *r != user.role && !user.protected) {
        match refused_role(role, facts) {
            None => {
                log.info(format!("Set role of user #{} to {role}", user.id));
                c.role = Some(role.to_string());
            }
            Some(why) => log.warning(format!("Role {role} {why}; user #{} keeps role {}", user.id, user.role)),
        }
    }
    let columns = c.columns();
    if columns.is_empty() {
        log.info(format!("User #{} fields are up to date", user.id));
    } else {
        log.info(format!("Updated user #{}: {}", user.id, columns.join(", ")));
    }
    c
}

/// The address a new user gets: the mapped one if it is a valid address, else the webhook's.
pub fn new_user_email(cmd: &SyncV1, mapped: &Mapped) -> String {
    mapped
        .get(UserField::Email)
        .filter(|e| shared::email::parse(e).is_ok())
        .unwrap_or(cmd.contact.email.as_str())
        .to_string()
}

/// The username a new user would want first: the mapped `user_login`, else the e-mail.
pub fn wanted_username(cmd: &SyncV1, mapped: &Mapped) -> String {
    mapped
        .get(UserField::UserLogin)
        .map(str::to_string)
        .unwrap_or_else(|| new_user_email(cmd, mapped))
}

/// Picks the username: the mapped `user_login` (which must be free), else the e-mail, with a
/// suffix of digits while it is taken. `Ok(Err(reason))` rejects the command.
async fn choose_username(
    conn: &mut PgConnection,
    mapped: &Mapped,
    email: &str,
    facts: &mut Facts,
) -> Result<Result<String, String>, Failure> {
    if let Some(login) = mapped.get(UserField::UserLogin) {
        return Ok(match facts.taken_usernames.get(&login.to_lowercase()) {
            Some(Some(owner)) => Err(format!(
                "user_login {login} from Customer.io belongs to another user (#{owner})"
            )),
            Some(None) => Err(format!(
                "user_login {login} from Customer.io is wanted by another contact created at the same time"
            )),
            None => {
                facts.taken_usernames.insert(login.to_lowercase(), None);
                Ok(login.to_string())
            }
        });
    }
    if let std::collections::hash_map::Entry::Vacant(free) = facts.taken_usernames.entry(email.to_lowercase()) {
        free.insert(None);
        return Ok(Ok(email.to_string()));
    }
    for digits in [999u32, 999, 999, 9_999, 99_999, 999_999, 9_999_999] {
        let candidate = format!("{email}{}", rand::rng().random_range(1..=digits));
        let lowered = candidate.to_lowercase();
        if !facts.taken_usernames.contains_key(&lowered)
            && store::taken_usernames(conn, std::slice::from_ref(&candidate))
                .await?
                .is_empty()
        {
            facts.taken_usernames.insert(lowered, None);
            return Ok(Ok(candidate));
        }
    }
    Err(Failure::Transient {
        reason: format!("no free username derived from {email}"),
        retry_after: None,
    })
}

/// The role for a new user: the URL's if a webhook may give it, else the default.
fn choose_role(cmd: &SyncV1, default_role: &str, facts: &Facts, log: &mut EventLog) -> String {
    let Some(role) = cmd.role.as_deref() else {
        return default_role.to_string();
    };
    match refused_role(role, facts) {
        None => role.to_string(),
        Some(why) => {
            log.warning(format!(
                "Role {role} {why}; the default role {default_role} is used instead"
            ));
            default_role.to_string()
        }
    }
}

/// The user an `add` creates (without its password hash, filled in by the caller).
/// `Ok(Err(reason))` rejects the command.
#[allow(clippy::too_many_arguments)]
pub async fn new_user(
    conn: &mut PgConnection,
    cmd: &SyncV1,
    customer: &Customer,
    mapped: &Mapped,
    cio_id: Option<&str>,
    default_role: &str,
    facts: &mut Facts,
    log: &mut EventLog,
) -> Result<Result<NewUser, String>, Failure> {
    let email = new_user_email(cmd, mapped);
    let username = match choose_username(conn, mapped, &email, facts).await? {
        Ok(u) => u,
        Err(reason) => return Ok(Err(reason)),
    };
    let role = choose_role(cmd, default_role, facts, log);
    let first = mapped.get(UserField::FirstName).map(str::to_string);
    let last = mapped.get(UserField::LastName).map(str::to_string);
    let display_name = mapped
        .get(UserField::DisplayName)
        .map(str::to_string)
        .unwrap_or_else(|| {
            let full = [first.as_deref(), last.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            if full.is_empty() {
                username.clone()
            } else {
                full
            }
        });
    Ok(Ok(NewUser {
        email,
        username,
        password_hash: String::new(),
        role,
        cio_id: cio_id.map(str::to_string),
        customer_id: customer.customer_id(),
        first_name: first,
        last_name: last,
        display_name,
    }))
}
