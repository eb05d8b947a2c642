//! The complete topology in parts. One `CompleteTopology` event for a large platform outgrows what
//! brokers carry (nats-server refuses messages over 1 MB by default; about 440 bytes per member), so
//! the controller publishes it as parts of one snapshot ([`split`]), each under a size bound, and
//! receivers put them back together ([`Assembler`]). Pure: no I/O, no clock.

use serde::{Deserialize, Serialize};

use crate::{Event, Topology};

/// Where a `CompleteTopology` event sits in its snapshot, when the snapshot comes in parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopologyPart {
    /// The snapshot the part belongs to (unique per publication).
    pub snapshot: u64,
    /// This part's position, from 0.
    pub index: u32,
    /// How many parts the snapshot has.
    pub count: u32,
}

/// The default bound on one part's JSON size: a quarter of nats-server's default message limit.
pub const PART_BYTES: usize = 256 * 1024;

/// The complete topology as `CompleteTopology` events: one whole event when its JSON fits in
/// `max_bytes`, otherwise parts of snapshot `snapshot`, each holding whole clusters or, for a
/// cluster too big for one part, the cluster with a share of its members (a part may exceed the
/// bound only by one member, or by one cluster without members). Takes the topology by value:
/// its clusters and members move into the parts.
pub fn split(mut topology: Topology, snapshot: u64, max_bytes: usize) -> Vec<Event> {
    if json_len(&topology) <= max_bytes {
        return vec![Event::CompleteTopology {
            topology,
            part: None,
        }];
    }
    let mut parts: Vec<Topology> = Vec::new();
    let mut current = Topology {
        suspended_tenants: std::mem::take(&mut topology.suspended_tenants),
        domain_routes: std::mem::take(&mut topology.domain_routes),
        tenant_signups: std::mem::take(&mut topology.tenant_signups),
        ..Topology::default()
    };
    let mut size = 0usize;
    for (cluster_id, mut shell) in topology.clusters {
        let members = std::mem::take(&mut shell.members);
        let shell_len = json_len(&shell) + cluster_id.len() + 4;
        if size + shell_len > max_bytes && !current.clusters.is_empty() {
            parts.push(std::mem::take(&mut current));
            size = 0;
        }
        current.clusters.insert(cluster_id.clone(), shell.clone());
        size += shell_len;
        for (id, member) in members {
            let member_len = json_len(&member) + id.len() + 4;
            // This cluster's shell alone in the part: the member goes in whatever its size.
            let alone = current.clusters.len() == 1
                && current
                    .clusters
                    .get(&cluster_id)
                    .is_some_and(|c| c.members.is_empty());
            if size + member_len > max_bytes && !alone {
                parts.push(std::mem::take(&mut current));
                current.clusters.insert(cluster_id.clone(), shell.clone());
                size = shell_len;
            }
            if let Some(c) = current.clusters.get_mut(&cluster_id) {
                c.members.insert(id, member);
            }
            size += member_len;
        }
    }
    if !current.clusters.is_empty() {
        parts.push(current);
    }
    let count = parts.len() as u32;
    parts
        .into_iter()
        .enumerate()
        .map(|(index, topology)| Event::CompleteTopology {
            topology,
            part: Some(TopologyPart {
                snapshot,
                index: index as u32,
                count,
            }),
        })
        .collect()
}

fn json_len<T: Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}

/// Most changes kept while a snapshot's parts arrive; past it the snapshot is given up (the next
/// one, or the changes themselves, bring the receiver up to date).
const MAX_BUFFERED: usize = 100_000;

/// Puts a snapshot's parts back together for a receiver of topology events.
///
/// [`Assembler::feed`] takes every topology event in the order received and returns what to apply
/// now, in order: a whole `CompleteTopology` passes through; the parts of a snapshot are held until
/// the last arrives, then come out as one whole `CompleteTopology` followed again by every change
/// received since the snapshot's first part (those changes are newer than the snapshot: the
/// publisher takes the snapshot before it publishes the first part, and one publisher's events
/// arrive in order). Changes also pass through at once, so the receiver stays current meanwhile.
/// A part of a newer snapshot abandons an unfinished one.
#[derive(Debug, Default)]
pub struct Assembler {
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    snapshot: u64,
    count: u32,
    received: Vec<bool>,
    topology: Topology,
    since: Vec<Event>,
}

impl Assembler {
    /// Feeds one received event; returns the events to apply now, in order.
    pub fn feed(&mut self, event: Event) -> Vec<Event> {
        match event {
            Event::CompleteTopology {
                topology,
                part: Some(part),
            } => self.part(topology, part),
            Event::CompleteTopology { part: None, .. } => {
                self.pending = None;
                vec![event]
            }
            change => {
                if let Some(p) = &mut self.pending {
                    if p.since.len() >= MAX_BUFFERED {
                        self.pending = None;
                    } else {
                        p.since.push(change.clone());
                    }
                }
                vec![change]
            }
        }
    }

    /// Whether a snapshot is being put together.
    pub fn assembling(&self) -> bool {
        self.pending.is_some()
    }

    fn part(&mut self, topology: Topology, part: TopologyPart) -> Vec<Event> {
        if part.count == 0 || part.index >= part.count {
            return Vec::new();
        }
        let fresh = match &self.pending {
            Some(p) => p.snapshot != part.snapshot,
            None => true,
        };
        if fresh {
            self.pending = Some(Pending {
                snapshot: part.snapshot,
                count: part.count,
                received: vec![false; part.count as usize],
                topology: Topology::default(),
                since: Vec::new(),
            });
        }
        let Some(p) = &mut self.pending else {
            return Vec::new();
        };
        if p.count != part.count {
            return Vec::new();
        }
        let Some(seen) = p.received.get_mut(part.index as usize) else {
            return Vec::new();
        };
        if *seen {
            return Vec::new();
        }
        *seen = true;
        p.topology
            .suspended_tenants
            .extend(topology.suspended_tenants);
        p.topology.domain_routes.extend(topology.domain_routes);
        p.topology.tenant_signups.extend(topology.tenant_signups);
        for (id, cluster) in topology.clusters {
            match p.topology.clusters.get_mut(&id) {
                Some(c) => c.members.extend(cluster.members),
                None => {
                    p.topology.clusters.insert(id, cluster);
                }
            }
        }
        if !p.received.iter().all(|r| *r) {
            return Vec::new();
        }
        let Some(done) = self.pending.take() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(1 + done.since.len());
        out.push(Event::CompleteTopology {
            topology: done.topology,
            part: None,
        });
        out.extend(done.since);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{Cluster, ClusterPort, Member, MemberChange, MemberPort, MemberStatus};

    fn member(cluster: &str, i: usize, status: MemberStatus) -> Member {
        Member {
            member_id: format!("{cluster}-m{i}"),
            cluster_id: cluster.into(),
            cluster_instance_id: "app-1".into(),
            service_name: "php".into(),
            application_id: "app".into(),
            network_partition_id: "np".into(),
            partition_id: "p".into(),
            status,
            default_private_ip: Some("127.0.0.1".into()),
            default_public_ip: None,
            ports: vec![MemberPort {
                name: "http".into(),
                protocol: "http".into(),
                port: 40000,
                proxy_port: Some(8280),
            }],
            init_time: 0,
            failure: None,
            properties: BTreeMap::new(),
        }
    }

    fn topology(clusters: usize, members: usize) -> Topology {
        let mut t = Topology::default();
        for c in 0..clusters {
            let id = format!("app.c{c}.php.domain");
            t.clusters.insert(
                id.clone(),
                Cluster {
                    cluster_id: id.clone(),
                    service_name: "php".into(),
                    application_id: "app".into(),
                    alias: format!("c{c}"),
                    host_names: vec![format!("c{c}.localhost")],
                    tenant_id: -1234,
                    ports: vec![ClusterPort {
                        name: "http".into(),
                        protocol: "http".into(),
                        port: 80,
                        proxy_port: Some(8280),
                    }],
                    deployment_policy: "d".into(),
                    autoscaling_policy: "a".into(),
                    instances: BTreeMap::new(),
                    members: (0..members)
                        .map(|i| {
                            let m = member(&id, i, MemberStatus::Active);
                            (m.member_id.clone(), m)
                        })
                        .collect(),
                },
            );
        }
        t
    }

    fn assemble(events: impl IntoIterator<Item = Event>) -> Vec<Event> {
        let mut a = Assembler::default();
        events.into_iter().flat_map(|e| a.feed(e)).collect()
    }

    #[test]
    fn a_small_topology_is_one_whole_event() {
        let t = topology(3, 2);
        let events = split(t.clone(), 7, PART_BYTES);
        assert_eq!(
            events,
            [Event::CompleteTopology {
                topology: t,
                part: None
            }]
        );
    }

    #[test]
    fn parts_respect_the_bound_and_put_back_together_give_the_topology() {
        // 4,000 members in one cluster and 50 small clusters: a cluster spans parts.
        let mut t = topology(50, 2);
        t.clusters.extend(topology(1, 4000).clusters);
        let bound = 64 * 1024;
        let events = split(t.clone(), 42, bound);
        assert!(events.len() > 10, "{} parts", events.len());
        let member_len = serde_json::to_vec(&member("app.c0.php.domain", 0, MemberStatus::Active))
            .unwrap()
            .len();
        for e in &events {
            let encoded = e.encode();
            assert!(
                encoded.len() <= bound + member_len + 200,
                "a part of {} bytes",
                encoded.len()
            );
            let Event::CompleteTopology { part: Some(p), .. } = e else {
                panic!("not a part: {e:?}");
            };
            assert_eq!((p.snapshot, p.count), (42, events.len() as u32));
        }
        let mut shuffled = events.clone();
        shuffled.reverse();
        shuffled.swap(0, 3);
        let out = assemble(shuffled);
        assert_eq!(
            out,
            [Event::CompleteTopology {
                topology: t,
                part: None
            }]
        );
    }

    #[test]
    fn changes_received_while_parts_arrive_are_applied_again_after_the_snapshot() {
        let t = topology(200, 10);
        let events = split(t.clone(), 1, 16 * 1024);
        assert!(events.len() >= 3);
        let change = Event::MemberTerminated(MemberChange {
            member: member("app.c0.php.domain", 0, MemberStatus::Terminated),
        });
        let mut a = Assembler::default();
        let mut out = a.feed(events[0].clone());
        assert!(out.is_empty());
        out = a.feed(change.clone());
        assert_eq!(
            out,
            std::slice::from_ref(&change),
            "changes pass through at once"
        );
        assert!(a.assembling());
        for e in &events[1..events.len() - 1] {
            assert!(a.feed(e.clone()).is_empty());
        }
        out = a.feed(events[events.len() - 1].clone());
        assert_eq!(out.len(), 2);
        assert!(matches!(out[0], Event::CompleteTopology { part: None, .. }));
        assert_eq!(out[1], change, "the change is newer than the snapshot");
        assert!(!a.assembling());
    }

    #[test]
    fn a_newer_snapshot_abandons_an_unfinished_one_and_duplicates_are_ignored() {
        let t = topology(200, 10);
        let old = split(t.clone(), 1, 16 * 1024);
        let mut newer_topology = t.clone();
        newer_topology.clusters.remove("app.c5.php.domain");
        let newer = split(newer_topology.clone(), 2, 16 * 1024);
        let mut a = Assembler::default();
        assert!(a.feed(old[0].clone()).is_empty());
        assert!(a.feed(old[1].clone()).is_empty());
        let mut out = Vec::new();
        for e in &newer {
            out.extend(a.feed(e.clone()));
            out.extend(a.feed(e.clone()));
        }
        // The old snapshot's remaining parts, late: they start an assembly that never finishes.
        for e in &old[2..] {
            out.extend(a.feed(e.clone()));
        }
        assert_eq!(
            out,
            [Event::CompleteTopology {
                topology: newer_topology,
                part: None
            }]
        );
    }

    #[test]
    fn a_malformed_part_is_ignored() {
        let mut a = Assembler::default();
        for part in [
            TopologyPart {
                snapshot: 1,
                index: 3,
                count: 3,
            },
            TopologyPart {
                snapshot: 1,
                index: 0,
                count: 0,
            },
        ] {
            assert!(
                a.feed(Event::CompleteTopology {
                    topology: Topology::default(),
                    part: Some(part),
                })
                .is_empty()
            );
        }
    }
}
