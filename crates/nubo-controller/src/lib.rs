//! The cloud controller: the only writer of the topology. [`plan`] turns an application into the
//! clusters to create; [`state`] is the pure state machine that keeps members at their minimum,
//! follows agents' lifecycle reports and undeploys; [`runtime`] runs it against the bus, the store
//! and the IaaS providers.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod control;
pub mod deploy;
pub mod journal;

pub mod runtime;
pub mod state;
pub mod view;

pub use control::{
    AlreadyLeading, CONTROLLER_LEASE, ControlError, ControlPlane, ControlRole, DeploymentSummary,
    MemberIdentity, RemoteControl, RepositoryCluster, SwitchableControl, normalize_repository_url,
};
pub use deploy::{DeployError, Deployments};
pub use nubo_plan::{
    DeploymentPlan, DeploymentStatus, PlanError, PlanInputs, Planner, Thresholds, Timeouts,
    runtime_id,
};
pub use runtime::{
    Controller, ControllerConfig, ControllerHandle, Fence, OpenSecrets, PlatformApi,
};
pub use state::{Action, ControllerState, Input};
