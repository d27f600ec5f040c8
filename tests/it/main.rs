//! One integration-test binary for the whole workspace; each module is one feature.

mod actions;
mod binaries;
mod ingress;
mod pipeline;
mod simulator;
