//! Artifact updates: when a cluster's repository changed (its webhook was called), its Active
//! members fetch the latest commit one after another, so that the cluster keeps serving
//! throughout. Each member's agent reports the commit it runs, which the runtime view shows.

use nubo_events::{Event, InstanceRef, MemberStatus};
use serde::{Deserialize, Serialize};

use super::{Action, ControllerState};

/// How long one member may take to update before the next one goes anyway.
pub const ARTIFACT_UPDATE_TIMEOUT_MS: u64 = 120_000;
/// The member property holding the commit its agent checked out.
pub const COMMIT_PROPERTY: &str = "artifactCommit";
/// The member property holding why its last update failed.
pub const ARTIFACT_ERROR_PROPERTY: &str = "artifactError";

/// An update of one cluster's members, one after another.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Members still to update, in order.
    pub pending: Vec<String>,
    /// The member updating now, and since when (ms).
    pub current: Option<(String, u64)>,
}

impl ControllerState {
    /// Queues an update of `clusters` of `application_id`: each Active member, in id order. A
    /// member already queued stays where it is; the one updating now updates again at the end
    /// (it may have fetched before the change that asked for this update).
    pub(super) fn update_artifacts(
        &mut self,
        application_id: &str,
        clusters: &[String],
        out: &mut Vec<Action>,
    ) {
        let Some(d) = self.deployments.get_mut(application_id) else {
            return;
        };
        if d.status != nubo_plan::DeploymentStatus::Deployed {
            return;
        }
        for cluster_id in clusters {
            if !d.plan.clusters.iter().any(|c| &c.cluster_id == cluster_id) {
                continue;
            }
            let active: Vec<String> = self
                .topology
                .clusters
                .get(cluster_id)
                .into_iter()
                .flat_map(|c| c.members.values())
                .filter(|m| m.status == MemberStatus::Active)
                .map(|m| m.member_id.clone())
                .collect();
            let r = d.rollouts.entry(cluster_id.clone()).or_default();
            for m in active {
                if !r.pending.contains(&m) {
                    r.pending.push(m);
                }
            }
            if let Some((m, _)) = &r.current
                && !r.pending.contains(m)
            {
                r.pending.push(m.clone());
            }
            tracing::info!(
                application = application_id,
                cluster = %cluster_id,
                members = r.pending.len(),
                "artifact update: the members fetch the latest commit, one after another"
            );
        }
        out.push(Action::Persist);
    }

    /// A member's agent reports the commit it runs (or why its update failed): kept on the
    /// member, and the cluster's update goes on with the next member.
    pub(super) fn artifact_updated(
        &mut self,
        r: &InstanceRef,
        commit: Option<String>,
        error: Option<String>,
        out: &mut Vec<Action>,
    ) {
        let Some(m) = self.member_mut(&r.member_id) else {
            return;
        };
        if let Some(c) = commit {
            m.properties.insert(COMMIT_PROPERTY.to_owned(), c);
        }
        match error {
            Some(e) => {
                tracing::warn!(member = %r.member_id, error = %e, "artifact update failed: the member keeps what it had");
                m.properties.insert(ARTIFACT_ERROR_PROPERTY.to_owned(), e);
            }
            None => {
                m.properties.remove(ARTIFACT_ERROR_PROPERTY);
            }
        }
        let app = m.application_id.clone();
        if let Some(ro) = self
            .deployments
            .get_mut(&app)
            .and_then(|d| d.rollouts.get_mut(&r.cluster_id))
            && ro.current.as_ref().is_some_and(|(m, _)| *m == r.member_id)
        {
            ro.current = None;
        }
        out.push(Action::Persist);
    }

    /// Moves each update of `app` on: the next member goes when the current one reported, left
    /// Active (it ended, or drains) or ran out of time; a finished update is dropped.
    pub(super) fn advance_rollouts(&mut self, now_ms: u64, app: &str, out: &mut Vec<Action>) {
        let Some(d) = self.deployments.get_mut(app) else {
            return;
        };
        if d.rollouts.is_empty() {
            return;
        }
        let topology = &self.topology;
        let active = |cluster: &str, member: &str| {
            topology
                .clusters
                .get(cluster)
                .and_then(|c| c.members.get(member))
                .is_some_and(|m| m.status == MemberStatus::Active)
        };
        let mut finished = Vec::new();
        for (cluster_id, r) in d.rollouts.iter_mut() {
            if let Some((m, since)) = &r.current {
                let alive = active(cluster_id, m);
                if alive && now_ms.saturating_sub(*since) < ARTIFACT_UPDATE_TIMEOUT_MS {
                    continue;
                }
                if alive {
                    tracing::warn!(member = %m, "artifact update: no answer in time; the next member goes");
                }
                r.current = None;
            }
            // The next member still Active.
            while !r.pending.is_empty() {
                let m = r.pending.remove(0);
                if active(cluster_id, &m) {
                    out.push(Action::Publish(Event::InstanceArtifactUpdate {
                        member_id: m.clone(),
                    }));
                    r.current = Some((m, now_ms));
                    break;
                }
            }
            if r.current.is_none() {
                finished.push(cluster_id.clone());
            }
            out.push(Action::Persist);
        }
        for c in finished {
            tracing::info!(cluster = %c, "artifact update done");
            d.rollouts.remove(&c);
        }
    }
}
