//! The IaaS provider trait: how the controller starts and stops members. Implementations: the
//! `local` node supervisor (`nubo-node`), and later `mock`, `docker`, `kubernetes`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use nubo_events::{ClusterPort, Member, MemberPort};

/// A member to start.
#[derive(Debug, Clone, PartialEq)]
pub struct StartRequest {
    /// The member (status Created).
    pub member: Member,
    /// The image id for this provider (for `local`: the workload's command line).
    pub image: String,
    /// The cluster's ports.
    pub ports: Vec<ClusterPort>,
    /// Payload for the agent (`KEY → VALUE`, Stratos' launch parameters and Nubo's own).
    pub payload: BTreeMap<String, String>,
}

/// What the provider reports once the member runs.
#[derive(Debug, Clone, PartialEq)]
pub struct StartedMember {
    /// Its address.
    pub ip: String,
    /// Its ports.
    pub ports: Vec<MemberPort>,
}

/// Why a provider call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IaasError {
    /// The member could not be started; the reason is for the user.
    #[error("{0}")]
    Failed(String),
    /// No such member.
    #[error("no member `{0}` on this provider")]
    NotFound(String),
}

/// An IaaS provider. Exits of members are reported on the bus (`MemberProcessExited`).
#[async_trait]
pub trait IaasProvider: Send + Sync + 'static {
    /// Starts a member.
    async fn start(&self, req: StartRequest) -> Result<StartedMember, IaasError>;
    /// Stops a member (its exit is then reported on the bus).
    async fn terminate(&self, member_id: &str) -> Result<(), IaasError>;
    /// Member ids this provider runs now (to reconcile after a restart); an error when it cannot
    /// tell (a remote node that has not answered): its members are then left as they are.
    async fn running(&self) -> Result<Vec<String>, IaasError>;
}
