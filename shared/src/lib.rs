//! Types and plumbing shared by the ingress and the worker: the versioned command, the AMQP
//! topology and the confirmed publisher, configuration helpers, telemetry and the migrations.

#![forbid(unsafe_code)]

pub mod broker;
pub mod check;
pub mod command;
pub mod config;
pub mod email;
pub mod headers;
pub mod metrics;
pub mod publisher;
pub mod shutdown;
pub mod telemetry;
pub mod topology;

/// The sqlx migrations of `migrations/`, embedded so that `worker migrate` and tests apply them.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
