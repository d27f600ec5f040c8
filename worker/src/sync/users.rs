//! Creating a user and refreshing an existing one, with WP Fusion's rules for usernames, roles
//! and protected users (DESIGN §4), and the outbox rows a new user brings.

use rand::Rng;
use secrecy::SecretString;
use shared::command::SyncV1;
use sqlx::PgConnection;

use super::{
    store::{self, NewOutboxRow, NewUser, UserChanges, UserRow},
    Failure, PreparedPassword, SyncCtx,
};
use crate::{
    cio::types::Customer,
    events::EventLog,
    fieldmap::{Mapped, UserField},
    password,
};

/// The password of a new user: the mapped `user_pass`, else a generated one; hashed off the runtime.
pub async fn prepare_password(ctx: &SyncCtx, mapped: &Mapped) -> Result<PreparedPassword, Failure> {
    let (plaintext, generated) = match mapped.get(UserField::UserPass) {
        Some(p) => (SecretString::from(p.to_string()), false),
        None => (password::generate(ctx.password_length), true),
    };
    let to_hash = plaintext.clone();
    let hash = tokio::task::spawn_blocking(move || password::hash(&to_hash))
        .await
        .map_err(|e| Failure::Transient {
            reason: format!("hashing task failed: {e}"),
            retry_after: None,
        })?
        .map_err(|e| Failure::Transient {
            reason: e.to_string(),
            retry_after: None,
        })?;
    Ok(PreparedPassword {
        plaintext,
        hash,
        generated,
    })
}

fn changed(new: Option<&str>, old: Option<&str>) -> Option<String> {
    match new {
        Some(n) if Some(n) != old => Some(n.to_string()),
        _ => None,
    }
}

/// Refreshes an existing user from the contact (the `update` path, also `add` for existing users).
#[allow(clippy::too_many_arguments)]
pub async fn refresh(
    conn: &mut PgConnection,
    cmd: &SyncV1,
    user: &UserRow,
    customer: &Customer,
    mapped: &Mapped,
    cio_id: Option<&str>,
    log: &mut EventLog,
) -> Result<(), Failure> {
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
    let new_email = mapped
        .get(UserField::Email)
        .map(str::to_string)
        .or_else(|| customer.email());
    if let Some(e) = new_email.filter(|e| !e.eq_ignore_ascii_case(&user.email)) {
        if user.protected {
            // already said above
        } else if shared::email::parse(&e).is_err() {
            log.warning(format!(
                "Customer.io e-mail {e:?} is not a valid address; e-mail of user #{} left unchanged",
                user.id
            ));
        } else if let Some(owner) = store::email_owner(conn, &e).await?.filter(|o| *o != user.id) {
            log.warning(format!(
                "E-mail {e} already belongs to user #{owner}; e-mail of user #{} left unchanged",
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
    if let Some(role) = cmd.role.as_deref().filter(|r| *r != user.role) {
        if !user.protected {
            match store::role(conn, role).await? {
                Some(false) => {
                    log.info(format!("Set role of user #{} to {role}", user.id));
                    c.role = Some(role.to_string());
                }
                Some(true) => log.warning(format!(
                    "Role {role} is protected and cannot be given by a webhook; user #{} keeps role {}",
                    user.id, user.role
                )),
                None => log.warning(format!(
                    "Role {role} is not a registered role; user #{} keeps role {}",
                    user.id, user.role
                )),
            }
        }
    }
    let what: Vec<&str> = [
        ("email", c.email.is_some()),
        ("role", c.role.is_some()),
        ("first_name", c.first_name.is_some()),
        ("last_name", c.last_name.is_some()),
        ("display_name", c.display_name.is_some()),
        ("cio_id", c.cio_id.is_some()),
        ("customer_id", c.customer_id.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, b)| b.then_some(n))
    .collect();
    store::update_user(conn, user.id, &c).await?;
    store::upsert_meta(conn, user.id, &mapped.meta).await?;
    if what.is_empty() {
        log.info(format!("User #{} fields are up to date", user.id));
    } else {
        log.info(format!("Updated user #{}: {}", user.id, what.join(", ")));
    }
    Ok(())
}

/// Picks the username: the mapped `user_login` (which must be free), else the e-mail, with a
/// suffix of digits while it is taken. `Err` is a rejection reason.
async fn choose_username(
    conn: &mut PgConnection,
    mapped: &Mapped,
    email: &str,
) -> Result<Result<String, String>, Failure> {
    if let Some(login) = mapped.get(UserField::UserLogin) {
        return Ok(match store::username_owner(conn, login).await? {
            Some(owner) => Err(format!(
                "user_login {login} from Customer.io belongs to another user (#{owner})"
            )),
            None => Ok(login.to_string()),
        });
    }
    if store::username_owner(conn, email).await?.is_none() {
        return Ok(Ok(email.to_string()));
    }
    for digits in [999u32, 999, 999, 9_999, 99_999, 999_999, 9_999_999] {
        let candidate = format!("{email}{}", rand::thread_rng().gen_range(1..=digits));
        if store::username_owner(conn, &candidate).await?.is_none() {
            return Ok(Ok(candidate));
        }
    }
    Err(Failure::Transient {
        reason: format!("no free username derived from {email}"),
        retry_after: None,
    })
}

/// The role for a new user: the URL's if registered and not protected, else the default.
async fn choose_role(
    conn: &mut PgConnection,
    ctx: &SyncCtx,
    cmd: &SyncV1,
    log: &mut EventLog,
) -> Result<String, Failure> {
    let Some(role) = cmd.role.as_deref() else {
        return Ok(ctx.default_role.clone());
    };
    Ok(match store::role(conn, role).await? {
        Some(false) => role.to_string(),
        Some(true) => {
            log.warning(format!(
                "Role {role} is protected and cannot be given by a webhook; the default role {} is used instead",
                ctx.default_role
            ));
            ctx.default_role.clone()
        }
        None => {
            log.warning(format!(
                "Role {role} is not a registered role; the default role {} is used instead",
                ctx.default_role
            ));
            ctx.default_role.clone()
        }
    })
}

/// Creates the user with its meta and outbox rows. `Ok(Err(reason))` rejects the command.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    conn: &mut PgConnection,
    ctx: &SyncCtx,
    cmd: &SyncV1,
    customer: &Customer,
    mapped: &Mapped,
    cio_id: Option<&str>,
    pw: PreparedPassword,
    log: &mut EventLog,
) -> Result<Result<i64, String>, Failure> {
    let email = mapped
        .get(UserField::Email)
        .filter(|e| shared::email::parse(e).is_ok())
        .unwrap_or(&cmd.contact.email)
        .to_string();
    let username = match choose_username(conn, mapped, &email).await? {
        Ok(u) => u,
        Err(reason) => return Ok(Err(reason)),
    };
    let role = choose_role(conn, ctx, cmd, log).await?;
    let first = mapped.get(UserField::FirstName);
    let last = mapped.get(UserField::LastName);
    let display = mapped
        .get(UserField::DisplayName)
        .map(str::to_string)
        .unwrap_or_else(|| {
            let full = [first, last].into_iter().flatten().collect::<Vec<_>>().join(" ");
            if full.is_empty() {
                username.clone()
            } else {
                full
            }
        });
    let customer_id = customer.customer_id();
    let new = NewUser {
        email: &email,
        username: &username,
        password_hash: &pw.hash,
        role: &role,
        cio_id,
        customer_id: customer_id.as_deref(),
        first_name: first,
        last_name: last,
        display_name: &display,
    };
    let id = match store::insert_user(conn, &new).await {
        Ok(id) => id,
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(Failure::Transient {
                reason: format!(
                    "a conflicting user appeared while creating {email} ({}); retrying",
                    e.constraint().unwrap_or("unique")
                ),
                retry_after: None,
            })
        }
        Err(e) => return Err(e.into()),
    };
    store::upsert_meta(conn, id, &mapped.meta).await?;
    let source = if pw.generated {
        "generated password"
    } else {
        "password from Customer.io"
    };
    log.info(format!(
        "Created user #{id} (role {role}, username {username}, {source})"
    ));

    let welcome = |user_id, status, note| NewOutboxRow {
        kind: "welcome_email",
        user_id,
        event_id: cmd.event_id,
        recipient: &email,
        secret: None,
        status,
        note,
    };
    if cmd.send_notification {
        if ctx.mail_enabled {
            store::insert_outbox(conn, welcome(id, "pending", None)).await?;
            log.info("Queued the welcome e-mail");
        } else {
            let note = "welcome e-mail is off (SMTP_URL is not set)";
            store::insert_outbox(conn, welcome(id, "skipped", Some(note))).await?;
            log.warning(format!("send_notification was requested but the {note}"));
        }
    }
    if let Some(pr) = &ctx.password_return {
        if pw.generated {
            let sealed = pr.secrets.seal(&pw.plaintext);
            let row = NewOutboxRow {
                kind: "password_return",
                user_id: id,
                event_id: cmd.event_id,
                recipient: &email,
                secret: Some(sealed),
                status: "pending",
                note: None,
            };
            store::insert_outbox(conn, row).await?;
            log.info(format!(
                "Queued the return of the generated password to Customer.io attribute {}",
                pr.field
            ));
        } else {
            log.info("Password came from Customer.io: nothing to return");
        }
    }
    Ok(Ok(id))
}
