//! The IaaS provider contract: how the controller starts and stops members, whatever runs them.
//! Implementations: the `local` node supervisor (`nubo-node`, and `NodeProvider` for one in another
//! process), the `mock` IaaS (`nubo-mock`), and the container providers to come. The agent's
//! payload ([`AgentPayload`]) and the `/proc` facts ([`proc`]) are here too, so that a provider and
//! the agent share them without depending on the controller.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::collections::BTreeMap;

use async_trait::async_trait;
use nubo_events::{ClusterPort, Member, MemberPort};

pub mod payload;
pub mod proc;

pub use payload::{API_CA_PARAMETER, AgentPayload, AgentRecord, base_environment, record_agent};

/// A member to start: everything a provider needs, and nothing of the plan it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberSpec {
    /// The member (status Created).
    pub member: Member,
    /// The image id for this provider (for `local`: the workload's command line).
    pub image: String,
    /// The cluster's ports.
    pub ports: Vec<ClusterPort>,
    /// The bus the member's agent reports on.
    pub bus_url: String,
    /// Stratos' launch parameters (`KEY → VALUE`), exported to the workload's environment.
    pub parameters: BTreeMap<String, String>,
    /// Who its processes run as (its partition's setting; `None`: the provider's own user).
    pub run_as: Option<nubo_events::RunAs>,
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

/// An IaaS provider (the controller's view of one). Exits of members are reported on the bus
/// (`MemberProcessExited`).
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Starts a member.
    async fn start(&self, spec: MemberSpec) -> Result<StartedMember, IaasError>;
    /// Starts several members (what one controller step placed on this provider); the answers
    /// in the order of `specs`. By default one after another; a provider that can start many
    /// at once (one request, one lock, one write) does so.
    async fn start_many(&self, specs: Vec<MemberSpec>) -> Vec<Result<StartedMember, IaasError>> {
        let mut out = Vec::with_capacity(specs.len());
        for spec in specs {
            out.push(self.start(spec).await);
        }
        out
    }
    /// Stops a member (its exit is then reported on the bus).
    async fn terminate(&self, member_id: &str) -> Result<(), IaasError>;
    /// Member ids this provider runs now (to reconcile after a restart); an error when it cannot
    /// tell (a remote node that has not answered): its members are then left as they are.
    async fn running(&self) -> Result<Vec<String>, IaasError>;
}

/// The environment variable name for a port mapping name: upper-cased, other characters as `_`.
pub fn port_env_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        s.push('_');
    }
    format!("PORT_{s}")
}
