//! The contract between Nubo's components on the bus (as in Apache Stratos 4.1): the topology domain
//! (services → clusters → cluster instances → members) with the member state machine, and every
//! event, defined once, serialized as `{"v":1,"event":"Name","body":{…}}` on its category's topic
//! `nubo/v1/<category>` (one topic per category keeps events in order). Wire compatibility with
//! Stratos' agents is not a goal.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

mod events;
pub mod parts;
mod topology;
pub mod view;

pub use events::*;
pub use nubo_plan::{ClusterPort, DeploymentPlan, DeploymentStatus, RunAs};
pub use parts::{Assembler, TopologyPart};
pub use topology::*;

/// The version of the event format; bumped on any incompatible change.
pub const EVENT_VERSION: u32 = 1;

/// The prefix of every Nubo topic.
pub const TOPIC_PREFIX: &str = "nubo/v1";
