//! Metering: instance-seconds per tenant, application and cartridge. A member counts from its
//! creation (`initTime`) to the moment it leaves the topology; the ended members' time is kept in
//! the controller's persisted state (so it outlives restarts and undeploys), the live members'
//! is added when asked. Pure: `now_ms` is given.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ControllerState;

/// The instance time of one (tenant, application, cartridge).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// The tenant.
    pub tenant_id: i64,
    /// The application (the tenant's own id).
    pub application_id: String,
    /// The cartridge type.
    pub cartridge: String,
    /// Milliseconds of members that ended.
    pub ended_ms: u64,
    /// Members that ended.
    pub ended_members: u64,
    /// Milliseconds of the members running now (set when asked, not kept).
    #[serde(default)]
    pub live_ms: u64,
    /// Members running now (set when asked).
    #[serde(default)]
    pub live_members: u64,
}

impl Usage {
    /// Instance-seconds in all, whole seconds (rounded down).
    pub fn instance_seconds(&self) -> u64 {
        (self.ended_ms + self.live_ms) / 1000
    }
}

/// The tenant of an application's runtime id (`<id>.t<tenant>`; the super tenant's otherwise)
/// and the tenant's own application id.
pub fn tenant_of(runtime_id: &str) -> (i64, String) {
    if let Some((id, t)) = runtime_id.rsplit_once(".t")
        && let Ok(tenant) = t.parse::<i64>()
    {
        return (tenant, id.to_owned());
    }
    (nubo_model::SUPER_TENANT_ID, runtime_id.to_owned())
}

fn key(tenant: i64, application: &str, cartridge: &str) -> String {
    format!("{tenant}|{application}|{cartridge}")
}

impl ControllerState {
    /// Counts a member's life, from its creation to `now_ms`, as it leaves the topology.
    pub(super) fn meter_ended(&mut self, now_ms: u64, member: &nubo_events::Member) {
        let (tenant, application) = tenant_of(&member.application_id);
        let row = self
            .usage
            .entry(key(tenant, &application, &member.service_name))
            .or_insert_with(|| Usage {
                tenant_id: tenant,
                application_id: application,
                cartridge: member.service_name.clone(),
                ..Usage::default()
            });
        row.ended_ms += now_ms.saturating_sub(member.init_time);
        row.ended_members += 1;
    }

    /// Each tenant's members now (every status but Terminated), counted per cluster: what its
    /// instance quota bounds.
    pub fn members_per_tenant(&self) -> BTreeMap<i64, u32> {
        let mut out = BTreeMap::new();
        for c in self.topology.clusters.values() {
            *out.entry(tenant_of(&c.application_id).0).or_default() += c.members.len() as u32;
        }
        out
    }

    /// The instance time of every (tenant, application, cartridge) until `now_ms`, the live
    /// members' included; `tenant`: one tenant's only.
    pub fn usage(&self, now_ms: u64, tenant: Option<i64>) -> Vec<Usage> {
        let mut rows: BTreeMap<String, Usage> = self
            .usage
            .iter()
            .filter(|(_, u)| tenant.is_none_or(|t| u.tenant_id == t))
            .map(|(k, u)| (k.clone(), u.clone()))
            .collect();
        for c in self.topology.clusters.values() {
            for m in c.members.values() {
                let (t, application) = tenant_of(&m.application_id);
                if tenant.is_some_and(|x| x != t) {
                    continue;
                }
                let row = rows
                    .entry(key(t, &application, &m.service_name))
                    .or_insert_with(|| Usage {
                        tenant_id: t,
                        application_id: application,
                        cartridge: m.service_name.clone(),
                        ..Usage::default()
                    });
                row.live_ms += now_ms.saturating_sub(m.init_time);
                row.live_members += 1;
            }
        }
        rows.into_values().collect()
    }
}
