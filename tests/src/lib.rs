//! Test kit for cio-sync: the Customer.io simulator, and the harness that gives each test its own
//! Postgres database and AMQP namespace on the machine's real services (never mocks of them).

pub mod bench;
pub mod broker;
pub mod browser;
pub mod cluster;
pub mod config_table;
pub mod console;
pub mod env;
pub mod metrics;
pub mod pipeline;
pub mod procs;
pub mod sim;
pub mod smtp;
pub mod wait;

pub use env::{send, TestEnv};
pub use wait::{wait_for, wait_until};
