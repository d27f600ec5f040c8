//! One integration-test binary for the whole workspace; each module is one feature.

mod actions;
mod ingress;
mod simulator;
