//! The member's view of its own application, for the hooks of other members' events (Stratos'
//! `MemberInitializedEvent`, `MemberStartedEvent`, `MemberActivatedEvent`,
//! `MemberTerminatedEvent`, and `CompleteTopologyEvent`). Kept only when the cartridge has such a
//! hook, and limited to the member's own application: a hook never sees another application's
//! (or tenant's) members.
//!
//! A member cannot check the platform's topology events (they are proved with the platform's key,
//! which members do not hold), so they are only a hint that something changed: the facts come
//! from the platform's API, read with the member's token ([`fetch`]). A forged event makes the
//! agent read the API once more, nothing else. The view is pure: member lists in, hooks out.

use std::collections::BTreeMap;
use std::time::Duration;

use nubo_events::MemberStatus;
use nubo_events::view::MemberRow;
use nubo_iaas::AgentPayload;

/// The hooks this view can ask for.
pub const HOOKS: [&str; 5] = [
    "MemberInitializedEvent",
    "MemberStartedEvent",
    "MemberActivatedEvent",
    "MemberTerminatedEvent",
    "CompleteTopologyEvent",
];

/// The application's members, as the platform's API gives them (`GET /agent/api/members`).
pub async fn fetch(p: &AgentPayload) -> anyhow::Result<Vec<MemberRow>> {
    crate::artifacts::agent_api_get(p, "members", "the member list", Duration::from_secs(10)).await
}

/// Whether `me` commits its cluster's changes back (one committer per cluster, so that members
/// never push over each other): the Active member of its cluster (`alias`) with the lowest id, as
/// the API lists them. Every member of the cluster decides the same from the same list; while
/// lists differ (a member just came or went) two may push, and git refuses the later push until
/// it is rebased.
pub fn is_committer(rows: &[MemberRow], me: &str, alias: &str) -> bool {
    rows.iter()
        .filter(|r| r.alias == alias && r.member.status == MemberStatus::Active)
        .map(|r| r.member.member_id.as_str())
        .min()
        == Some(me)
}

/// Whether the member's cartridge commits its changes back (`commitEnabled`).
pub fn commits_back(p: &AgentPayload) -> bool {
    p.parameters.get("COMMIT_ENABLED").map(String::as_str) == Some("true")
}

/// Whether this member is its cluster's committer now ([`is_committer`] over the API's member
/// list; `false` when the API cannot say).
pub async fn am_committer(p: &AgentPayload) -> bool {
    let alias = p
        .parameters
        .get("CARTRIDGE_ALIAS")
        .map_or("", String::as_str);
    match fetch(p).await {
        Ok(rows) => is_committer(&rows, &p.member_id, alias),
        Err(_) => false,
    }
}

/// The application's members last seen, by id.
pub struct AppView {
    me: String,
    members: BTreeMap<String, MemberRow>,
    /// The member list the last `CompleteTopologyEvent` hook was given.
    last_list: Option<String>,
}

fn hook_of(status: MemberStatus) -> Option<&'static str> {
    match status {
        MemberStatus::Initialized => Some("MemberInitializedEvent"),
        MemberStatus::Starting => Some("MemberStartedEvent"),
        MemberStatus::Active => Some("MemberActivatedEvent"),
        MemberStatus::Terminated => Some("MemberTerminatedEvent"),
        _ => None,
    }
}

impl AppView {
    /// An empty view, for member `me`.
    pub fn new(me: &str) -> Self {
        AppView {
            me: me.to_owned(),
            members: BTreeMap::new(),
            last_list: None,
        }
    }

    /// Takes the application's member list now; returns the hooks to run (event, values), for
    /// each other member whose status changed (or that is gone), then the complete topology's
    /// when anything changed.
    pub fn update(
        &mut self,
        rows: Vec<MemberRow>,
    ) -> Vec<(&'static str, BTreeMap<String, String>)> {
        let now: BTreeMap<String, MemberRow> = rows
            .into_iter()
            .map(|r| (r.member.member_id.clone(), r))
            .collect();
        let list = serde_json::to_string(&now.values().collect::<Vec<_>>())
            .unwrap_or_else(|_| "[]".into());
        let mut fired = Vec::new();
        let mut changes: Vec<(&'static str, &MemberRow)> = Vec::new();
        for (id, row) in &now {
            let before = self.members.get(id).map(|r| r.member.status);
            if before != Some(row.member.status)
                && id != &self.me
                && let Some(h) = hook_of(row.member.status)
            {
                changes.push((h, row));
            }
        }
        for (id, row) in &self.members {
            if !now.contains_key(id) && id != &self.me {
                changes.push(("MemberTerminatedEvent", row));
            }
        }
        for (hook, row) in changes {
            let m = &row.member;
            let mut env = BTreeMap::new();
            for (k, v) in [
                ("EVENT_MEMBER_ID", m.member_id.clone()),
                ("EVENT_CLUSTER_ALIAS", row.alias.clone()),
                (
                    "EVENT_MEMBER_IP",
                    m.default_private_ip.clone().unwrap_or_default(),
                ),
                (
                    "EVENT_MEMBER_PORTS",
                    m.ports
                        .iter()
                        .map(|p| format!("{}:{}", p.name, p.port))
                        .collect::<Vec<_>>()
                        .join("|"),
                ),
                ("MEMBER_LIST_JSON", list.clone()),
            ] {
                env.insert(k.to_owned(), v);
            }
            fired.push((hook, env));
        }
        if self.last_list.as_deref() != Some(list.as_str()) {
            let mut env = BTreeMap::new();
            env.insert("MEMBER_LIST_JSON".to_owned(), list.clone());
            env.insert("TOPOLOGY_JSON".to_owned(), list.clone());
            fired.push(("CompleteTopologyEvent", env));
            self.last_list = Some(list);
        }
        self.members = now;
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_events::MemberPort;
    use nubo_events::view::MemberView;

    fn row(alias: &str, id: &str, status: MemberStatus) -> MemberRow {
        MemberRow {
            application_id: "shop".into(),
            alias: alias.into(),
            cluster_instance_id: "shop-1".into(),
            member: MemberView {
                member_id: id.into(),
                status,
                default_private_ip: Some("127.0.0.1".into()),
                default_public_ip: None,
                network_partition_id: "np".into(),
                partition_id: "p1".into(),
                ports: vec![MemberPort {
                    name: "sql".into(),
                    protocol: "tcp".into(),
                    port: 5432,
                    proxy_port: None,
                }],
                failure: None,
                artifact_commit: None,
                artifact_error: None,
                unhealthy: None,
                init_time: 0,
            },
        }
    }

    fn hooks(fired: &[(&'static str, BTreeMap<String, String>)]) -> Vec<&'static str> {
        fired.iter().map(|(h, _)| *h).collect()
    }

    #[test]
    fn one_committer_per_cluster_the_lowest_active_id() {
        let rows = vec![
            row("web", "shop.web-2", MemberStatus::Active),
            row("web", "shop.web-1", MemberStatus::Starting),
            row("web", "shop.web-3", MemberStatus::Active),
            row("db", "shop.db-1", MemberStatus::Active),
        ];
        assert!(is_committer(&rows, "shop.web-2", "web"));
        assert!(!is_committer(&rows, "shop.web-3", "web"));
        assert!(!is_committer(&rows, "shop.web-1", "web"), "not Active");
        assert!(is_committer(&rows, "shop.db-1", "db"));
        assert!(!is_committer(&[], "shop.web-2", "web"));
    }

    #[test]
    fn hooks_fire_for_the_other_members_changes_and_the_topology_when_it_changed() {
        let mut v = AppView::new("shop.web-1");
        let me = row("web", "shop.web-1", MemberStatus::Active);
        let fired = v.update(vec![me.clone()]);
        assert_eq!(hooks(&fired), ["CompleteTopologyEvent"], "not for itself");
        assert!(v.update(vec![me.clone()]).is_empty(), "nothing changed");
        let db = row("db", "shop.db-1", MemberStatus::Starting);
        assert_eq!(
            hooks(&v.update(vec![me.clone(), db.clone()])),
            ["MemberStartedEvent", "CompleteTopologyEvent"]
        );
        let active = row("db", "shop.db-1", MemberStatus::Active);
        let fired = v.update(vec![me.clone(), active]);
        assert_eq!(
            hooks(&fired),
            ["MemberActivatedEvent", "CompleteTopologyEvent"]
        );
        let env = &fired[0].1;
        assert_eq!(env["EVENT_MEMBER_ID"], "shop.db-1");
        assert_eq!(env["EVENT_CLUSTER_ALIAS"], "db");
        assert_eq!(env["EVENT_MEMBER_IP"], "127.0.0.1");
        assert_eq!(env["EVENT_MEMBER_PORTS"], "sql:5432");
        let list: serde_json::Value = serde_json::from_str(&env["MEMBER_LIST_JSON"]).unwrap();
        assert_eq!(list.as_array().unwrap().len(), 2);
        // Gone from the list: terminated.
        let fired = v.update(vec![me]);
        assert_eq!(
            hooks(&fired),
            ["MemberTerminatedEvent", "CompleteTopologyEvent"]
        );
        assert_eq!(fired[0].1["EVENT_MEMBER_ID"], "shop.db-1");
    }
}
