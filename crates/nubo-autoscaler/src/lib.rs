//! The autoscaler's decisions and the event processor's windows (`stratos.md` §7, §8), as pure
//! functions over plain numbers: no clock (time is passed in), no I/O. The runtime that feeds them
//! statistics from the bus and acts on their decisions comes with the autoscaling issue.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod cep;
pub mod rules;
