//! What the pipeline needs, built once per worker and shared by all its batches.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::Notify;

use super::snapshot::Snapshots;
use crate::{cio::CioClient, fieldmap::FieldMap, outbox::PasswordReturn, password::Hasher};

/// Everything the pipeline needs, shared by all batches of a worker.
pub struct SyncCtx {
    pub pool: PgPool,
    pub cio: CioClient,
    pub field_map: FieldMap,
    pub default_role: String,
    pub password_length: usize,
    pub password_return: Option<PasswordReturn>,
    pub mail_enabled: bool,
    /// Whether a changed Customer.io e-mail changes the user's (`SYNC_EMAIL_CHANGES`).
    pub email_changes: bool,
    /// Woken after a commit that queued outbox rows, so that delivery starts at once.
    pub outbox_wakeup: Arc<Notify>,
    /// Segment membership snapshots (batched segment reads).
    pub snapshots: Snapshots,
    /// Password hashing, at most one per core at a time.
    pub hasher: Hasher,
    /// Customer.io calls one batch makes at once when it reads contact by contact.
    pub parallel: usize,
    /// Attempts of an `add` or `update` whose contact Customer.io does not know (404) before it
    /// ends `contact_not_found`.
    pub not_found_attempts: u32,
    /// Attempts of one command before it is dead-lettered.
    pub max_attempts: u32,
}
