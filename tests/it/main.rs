//! One integration-test binary for the whole workspace; each module is one feature.

mod actions;
mod binaries;
mod clean_start;
mod cluster;
mod console;
mod faults;
mod fuzz;
mod ingress;
mod ingress_admin;
mod ingress_keys;
mod ingress_limits;
mod ingress_slow_clients;
mod observability;
mod ops_check;
mod ops_cli;
mod outbox;
mod pipeline;
mod retention;
mod simulator;
mod snapshot;
mod throughput;
mod tls;
mod trust;
