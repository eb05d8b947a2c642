//! What an agent reads at start (`<workdir>/payload.json`), and the record it writes of itself
//! (`agent.json`), shared by the providers that run agents and the agent itself.

use std::collections::BTreeMap;
use std::path::Path;

use nubo_events::MemberPort;
use serde::{Deserialize, Serialize};

use crate::{MemberSpec, proc};

/// The payload parameter that carries the platform API's certificate (PEM): the agent writes it
/// to a file and gives the workload that file's path (`METADATA_SERVICE_CA`), never the text.
pub const API_CA_PARAMETER: &str = "NUBO_API_CA_PEM";

/// What the agent reads at start: `<workdir>/payload.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentPayload {
    /// Member id.
    pub member_id: String,
    /// Cluster.
    pub cluster_id: String,
    /// Cluster instance.
    pub cluster_instance_id: String,
    /// Application.
    pub application_id: String,
    /// Cartridge type.
    pub service_name: String,
    /// Network partition.
    pub network_partition_id: String,
    /// Partition.
    pub partition_id: String,
    /// The workload's command line (run with `sh -c`).
    pub command: String,
    /// The member's ports (the first is `$PORT`).
    pub ports: Vec<MemberPort>,
    /// The bus to report on.
    pub bus_url: String,
    /// Stratos' launch parameters and the rest, exported to the workload's environment.
    pub parameters: BTreeMap<String, String>,
    /// The member's own bus key (64 hex digits), derived from the platform's: the agent proves
    /// its messages with it, and can check only what the platform addresses to its member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus_key: Option<String>,
}

impl AgentPayload {
    /// The payload of a member to start, with the ports the provider gave it.
    pub fn new(spec: &MemberSpec, ports: Vec<MemberPort>) -> Self {
        let m = &spec.member;
        AgentPayload {
            member_id: m.member_id.clone(),
            cluster_id: m.cluster_id.clone(),
            cluster_instance_id: m.cluster_instance_id.clone(),
            application_id: m.application_id.clone(),
            service_name: m.service_name.clone(),
            network_partition_id: m.network_partition_id.clone(),
            partition_id: m.partition_id.clone(),
            command: spec.image.clone(),
            ports,
            bus_url: spec.bus_url.clone(),
            parameters: spec.parameters.clone(),
            bus_key: None,
        }
    }
}

/// Where programs are when the platform's `PATH` is unset.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The environment a platform process hands to what it starts (an agent, a workload): where
/// programs are and the locale, nothing else: never the platform's settings or secrets
/// (`NUBO_ADMIN_PASSWORD`, `NUBO_STORE`, `NUBO_BUS`, …). Whoever starts a process clears its
/// environment and gives it this, plus what that process needs.
pub fn base_environment() -> Vec<(String, String)> {
    let mut env = vec![(
        "PATH".to_owned(),
        std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned()),
    )];
    for k in ["LANG", "LC_ALL", "TZ"] {
        if let Ok(v) = std::env::var(k) {
            env.push((k.to_owned(), v));
        }
    }
    env
}

/// What an agent writes in its directory as it starts (`agent.json`): the supervisor's own record
/// is written just after the spawn, and a supervisor killed in between would otherwise leave an
/// agent nobody knows of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRecord {
    /// The agent's pid.
    pub pid: i32,
    /// Its start time (clock ticks since boot), to tell it from a process that reused the pid.
    pub start_time: u64,
}

/// Called by the agent as it starts, in its directory: records its pid and start time, so that a
/// restarted supervisor finds it even if its own record was never written.
pub fn record_agent(workdir: &Path) -> std::io::Result<()> {
    let pid = std::process::id() as i32;
    let rec = AgentRecord {
        pid,
        start_time: proc::start_time(pid).unwrap_or(0),
    };
    let text = serde_json::to_vec(&rec).map_err(std::io::Error::other)?;
    let tmp = workdir.join("agent.json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, workdir.join("agent.json"))
}
