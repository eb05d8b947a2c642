//! Nubo's integration tests: one binary, a module per area.

mod agent;
mod api;
mod architecture;
mod autoscale;
mod bus;
mod cli;
mod containers;
mod gitserver;
mod ha;
mod kubernetes;
mod lb;
mod mock;
mod node;
mod runtime;
mod samples;
mod server;
mod store;
mod support;
mod tenancy;
mod trust;
