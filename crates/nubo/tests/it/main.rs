//! Nubo's integration tests: one binary, a module per area.

mod api;
mod cli;
mod runtime;
mod samples;
mod server;
mod support;
