//! The autoscaler's decisions and the event processor's windows (as in Apache Stratos 4.1): `cep` and
//! `rules` are pure functions over plain numbers (no clock, no I/O); `monitor` is the runtime that
//! feeds them the health statistics and requests in flight from the bus and asks the controller to
//! scale.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod cep;
pub mod faults;
pub mod monitor;
pub mod rules;

#[cfg(test)]
mod split_tests;
