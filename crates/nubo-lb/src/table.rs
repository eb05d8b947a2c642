//! The routing table: (host name, proxy port) → the cluster's active members on the matching port.
//! Built from the topology, updated by topology events. Pure.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use nubo_events::{Cluster, Event, MemberStatus, Topology};

/// One member that can take traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Member id.
    pub member_id: String,
    /// Where to send requests.
    pub addr: SocketAddr,
    /// The member's cluster instance, and its network partition (requests in flight are
    /// counted per instance).
    pub instance: (String, String),
}

/// Where one host name and port go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Cluster.
    pub cluster_id: String,
    /// Network partition of the members (for statistics).
    pub network_partition_id: String,
    /// Active members, ordered by id.
    pub backends: Vec<Backend>,
    /// The tenant whose domain this is (a domain mapping): told to the members in
    /// `X-Tenant-Domain`.
    pub tenant: Option<String>,
    /// The route's tenant: the cluster's for its own host names, the mapping's for a mapped
    /// domain (what a load balancer serving a subset of tenants selects by).
    pub tenant_id: i64,
    /// On a multi-tenant application's own host names: the tenants signed up to it, whose
    /// requests come as `/t/<tenant-domain>/…` (id, domain).
    pub path_tenants: Vec<(i64, String)>,
    /// Plain HTTP requests get a redirect to HTTPS on the same port: an `https` port mapping's
    /// routes, and a domain mapped with `redirectHttps`.
    pub redirect_https: bool,
    /// A domain mapping's context path (without a trailing `/`; `None` for `/`): the domain's
    /// root is this path of the application, put before every request's path.
    pub context_path: Option<String>,
    /// ACME HTTP-01 challenges answered for the domain (token, key authorization).
    pub acme_challenges: Vec<(String, String)>,
}

/// The tenants a load balancer serves (`--tenants`): `*` (all), or a comma-separated list of
/// tenant ids, ranges `A-B`, and `super` (the super tenant, -1234), as WSO2 Stratos' tenant-aware
/// load balancers were given theirs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantSet {
    all: bool,
    ranges: Vec<(i64, i64)>,
}

impl TenantSet {
    /// Every tenant.
    pub fn all() -> Self {
        TenantSet {
            all: true,
            ranges: Vec::new(),
        }
    }

    /// Reads `*`, or a list of `N`, `A-B` and `super`; what is wrong, said.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "*" {
            return Ok(Self::all());
        }
        let mut ranges = Vec::new();
        for item in text.split(',').map(str::trim) {
            let bad = || format!("`{item}`: a tenant id, a range A-B, `super` or `*`");
            if item == "super" {
                let s = nubo_model_super();
                ranges.push((s, s));
            } else if let Some((a, b)) = item.split_once('-') {
                let (a, b): (i64, i64) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                if a > b || a < 0 {
                    return Err(bad());
                }
                ranges.push((a, b));
            } else {
                let n: i64 = item.parse().map_err(|_| bad())?;
                ranges.push((n, n));
            }
        }
        if ranges.is_empty() {
            return Err("no tenant given".into());
        }
        Ok(TenantSet { all: false, ranges })
    }

    /// Whether the set holds `tenant`.
    pub fn contains(&self, tenant: i64) -> bool {
        self.all || self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&tenant))
    }
}

/// The super tenant's id (Stratos' -1234).
const fn nubo_model_super() -> i64 {
    -1234
}

/// The table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routes {
    /// By (lower-case host, proxy port).
    pub by_host: HashMap<(String, u16), Route>,
}

/// The member property that says an Active member is unhealthy (and why).
pub const UNHEALTHY: &str = "unhealthy";

/// The routes of one cluster: one per (lower-case host name, proxy port) of its HTTP(S) port
/// mappings, to its Active members on the matching port; and one per tenant's domain mapped
/// onto it (the topology's `domain_routes`), naming the tenant.
pub fn cluster_routes(t: &Topology, c: &Cluster) -> Vec<((String, u16), Route)> {
    let mut out = Vec::new();
    for port in &c.ports {
        let Some(proxy) = port.proxy_port else {
            continue;
        };
        if port.protocol != "http" && port.protocol != "https" {
            continue;
        }
        let mut backends: Vec<Backend> = c
            .members
            .values()
            // Active, and answering its health checks (an unhealthy member gets no request
            // until it recovers, or is replaced).
            .filter(|m| m.status == MemberStatus::Active && !m.properties.contains_key(UNHEALTHY))
            .filter_map(|m| {
                let ip = m.default_private_ip.as_deref()?.parse().ok()?;
                let mp = m.ports.iter().find(|p| p.name == port.name)?;
                Some(Backend {
                    member_id: m.member_id.clone(),
                    addr: SocketAddr::new(ip, mp.port),
                    instance: (
                        m.cluster_instance_id.clone(),
                        m.network_partition_id.clone(),
                    ),
                })
            })
            .collect();
        backends.sort_by(|a, b| a.member_id.cmp(&b.member_id));
        let np = c
            .instances
            .values()
            .next()
            .map(|i| i.network_partition_id.clone())
            .unwrap_or_default();
        for h in &c.host_names {
            out.push((
                (h.to_ascii_lowercase(), proxy),
                Route {
                    cluster_id: c.cluster_id.clone(),
                    network_partition_id: np.clone(),
                    backends: backends.clone(),
                    tenant: None,
                    tenant_id: c.tenant_id,
                    path_tenants: t
                        .tenant_signups
                        .iter()
                        .filter(|s| s.application_id == c.application_id)
                        .map(|s| (s.tenant_id, s.tenant_domain.clone()))
                        .collect(),
                    redirect_https: port.protocol == "https",
                    context_path: None,
                    acme_challenges: Vec::new(),
                },
            ));
        }
        for d in t
            .domain_routes
            .iter()
            .filter(|d| d.application_id == c.application_id && d.alias == c.alias)
        {
            out.push((
                (d.domain.to_ascii_lowercase(), proxy),
                Route {
                    cluster_id: c.cluster_id.clone(),
                    network_partition_id: np.clone(),
                    backends: backends.clone(),
                    tenant: Some(d.tenant_domain.clone()),
                    tenant_id: d.tenant_id,
                    path_tenants: Vec::new(),
                    redirect_https: d.redirect_https || port.protocol == "https",
                    context_path: Some(d.context_path.trim_end_matches('/'))
                        .filter(|c| c.starts_with('/'))
                        .map(str::to_owned),
                    acme_challenges: d
                        .acme_challenges
                        .iter()
                        .map(|(t, k)| (t.clone(), k.clone()))
                        .collect(),
                },
            ));
        }
    }
    out
}

impl Routes {
    /// Builds the table from a topology: only Active members get traffic.
    pub fn from_topology(t: &Topology) -> Self {
        Routes {
            by_host: t
                .clusters
                .values()
                .filter(|c| t.routed(c))
                .flat_map(|c| cluster_routes(t, c))
                .collect(),
        }
    }

    /// The route for a `Host` header value (port stripped) on a proxy port.
    pub fn lookup(&self, host: &str, port: u16) -> Option<&Route> {
        let name = host
            .rsplit_once(':')
            .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
            .map_or(host, |(h, _)| h);
        self.by_host
            .get(&(name.trim_end_matches('.').to_ascii_lowercase(), port))
    }

    /// Every proxy port in use.
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.by_host.keys().map(|(_, p)| *p).collect();
        p.sort_unstable();
        p.dedup();
        p
    }
}

/// What a topology event changed, as far as routes go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Change {
    /// Nothing.
    #[default]
    None,
    /// These clusters (added, changed or removed).
    Clusters(BTreeSet<String>),
}

impl Change {
    /// Both changes.
    pub fn merge(&mut self, other: Change) {
        match (&mut *self, other) {
            (_, Change::None) => {}
            (Change::None, o) => *self = o,
            (Change::Clusters(a), Change::Clusters(b)) => a.extend(b),
        }
    }

    fn cluster(id: &str) -> Change {
        Change::Clusters(BTreeSet::from([id.to_owned()]))
    }
}

/// Applies a topology event to the load balancer's copy of the topology; returns which clusters
/// changed (a complete topology is compared cluster by cluster, so an unchanged periodic one
/// changes nothing). Parts of a complete topology must be put together first
/// ([`nubo_events::Assembler`]); a part on its own is ignored.
pub fn apply(t: &mut Topology, e: &Event) -> Change {
    match e {
        Event::CompleteTopology {
            topology,
            part: None,
        } => {
            let mut changed = BTreeSet::new();
            for (id, c) in &topology.clusters {
                let routing = t.routed(c) != topology.routed(c);
                if routing || t.clusters.get(id) != Some(c) {
                    changed.insert(id.clone());
                }
            }
            for id in t.clusters.keys() {
                if !topology.clusters.contains_key(id) {
                    changed.insert(id.clone());
                }
            }
            if changed.is_empty() {
                return Change::None;
            }
            t.clone_from(topology);
            Change::Clusters(changed)
        }
        Event::CompleteTopology { part: Some(_), .. } => Change::None,
        Event::DomainRoutes { routes, signups } => {
            if t.domain_routes == *routes && t.tenant_signups == *signups {
                return Change::None;
            }
            // The clusters of the routes and signups that went and of those that came.
            let changed: BTreeSet<String> = t
                .clusters
                .values()
                .filter(|c| {
                    t.domain_routes
                        .iter()
                        .chain(routes.iter())
                        .any(|d| d.application_id == c.application_id && d.alias == c.alias)
                        || t.tenant_signups
                            .iter()
                            .chain(signups.iter())
                            .any(|s| s.application_id == c.application_id)
                })
                .map(|c| c.cluster_id.clone())
                .collect();
            t.domain_routes.clone_from(routes);
            t.tenant_signups.clone_from(signups);
            Change::Clusters(changed)
        }
        Event::TenantRouting {
            tenant_id,
            suspended,
        } => {
            let was = t.suspended_tenants.contains(tenant_id);
            if was == *suspended {
                return Change::None;
            }
            if *suspended {
                t.suspended_tenants.insert(*tenant_id);
            } else {
                t.suspended_tenants.remove(tenant_id);
            }
            Change::Clusters(
                t.clusters
                    .values()
                    .filter(|c| c.tenant_id == *tenant_id)
                    .map(|c| c.cluster_id.clone())
                    .collect(),
            )
        }
        Event::ApplicationClustersCreated { clusters, .. } => {
            let mut changed = BTreeSet::new();
            for c in clusters {
                if let std::collections::btree_map::Entry::Vacant(v) =
                    t.clusters.entry(c.cluster_id.clone())
                {
                    v.insert(c.clone());
                    changed.insert(c.cluster_id.clone());
                }
            }
            Change::Clusters(changed)
        }
        Event::ApplicationClustersRemoved { cluster_ids, .. } => Change::Clusters(
            cluster_ids
                .iter()
                .filter(|c| t.clusters.remove(*c).is_some())
                .cloned()
                .collect(),
        ),
        Event::ClusterInstanceCreated {
            cluster_id,
            instance,
        } => match t.clusters.get_mut(cluster_id) {
            Some(c) => {
                c.instances
                    .insert(instance.instance_id.clone(), instance.clone());
                Change::cluster(cluster_id)
            }
            None => Change::None,
        },
        Event::MemberCreated(m)
        | Event::MemberInitialized(m)
        | Event::MemberStarted(m)
        | Event::MemberActivated(m)
        | Event::MemberMaintenanceMode(m)
        | Event::MemberHealthChanged(m)
        | Event::MemberReadyToShutdown(m)
        | Event::MemberTerminated(m) => {
            let Some(c) = t.clusters.get_mut(&m.member.cluster_id) else {
                return Change::None;
            };
            if m.member.status == MemberStatus::Terminated {
                c.members.remove(&m.member.member_id);
            } else {
                c.members
                    .insert(m.member.member_id.clone(), m.member.clone());
            }
            Change::cluster(&m.member.cluster_id)
        }
        _ => Change::None,
    }
}

/// A topology from static routes `HOST:PROXY_PORT=ADDR[,ADDR...]` (for `nubo lb --route`, and
/// benchmarks): one cluster per route, every member Active.
pub fn static_topology(routes: &[String]) -> Result<Topology, String> {
    use nubo_events::{ClusterPort, Member, MemberPort};
    let mut t = Topology::default();
    for (i, r) in routes.iter().enumerate() {
        let bad = || format!("`{r}` is not HOST:PROXY_PORT=ADDR[,ADDR...]");
        let (front, back) = r.split_once('=').ok_or_else(bad)?;
        let (host, proxy) = front.rsplit_once(':').ok_or_else(bad)?;
        let proxy: u16 = proxy.parse().map_err(|_| bad())?;
        let cluster_id = format!("static-{i}");
        let mut members = std::collections::BTreeMap::new();
        for (j, addr) in back.split(',').enumerate() {
            let addr: SocketAddr = addr.trim().parse().map_err(|_| bad())?;
            let id = format!("{cluster_id}-{j}");
            members.insert(
                id.clone(),
                Member {
                    member_id: id,
                    cluster_id: cluster_id.clone(),
                    cluster_instance_id: "static".into(),
                    service_name: "static".into(),
                    application_id: "static".into(),
                    network_partition_id: "static".into(),
                    partition_id: "static".into(),
                    status: MemberStatus::Active,
                    default_private_ip: Some(addr.ip().to_string()),
                    default_public_ip: None,
                    ports: vec![MemberPort {
                        name: "http".into(),
                        protocol: "http".into(),
                        port: addr.port(),
                        proxy_port: Some(proxy),
                    }],
                    init_time: 0,
                    failure: None,
                    properties: Default::default(),
                },
            );
        }
        t.clusters.insert(
            cluster_id.clone(),
            Cluster {
                cluster_id,
                service_name: "static".into(),
                application_id: "static".into(),
                alias: "static".into(),
                host_names: vec![host.to_owned()],
                tenant_id: 0,
                ports: vec![ClusterPort {
                    name: "http".into(),
                    protocol: "http".into(),
                    port: 0,
                    proxy_port: Some(proxy),
                }],
                deployment_policy: String::new(),
                autoscaling_policy: String::new(),
                instances: Default::default(),
                members,
            },
        );
    }
    Ok(t)
}

/// How to pick a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// In turn.
    #[default]
    RoundRobin,
    /// The member with the fewest requests in flight (round robin among equals).
    LeastOutstanding,
}

/// Picks the index of the next backend, skipping `excluded` ones; `outstanding[i]` is backend i's
/// requests in flight. `None` when every backend is excluded.
pub fn choose(
    strategy: Strategy,
    turn: usize,
    outstanding: &[i64],
    excluded: &[bool],
) -> Option<usize> {
    let n = outstanding.len();
    let order = (0..n)
        .map(|k| (turn + k) % n)
        .filter(|i| !excluded.get(*i).copied().unwrap_or(false));
    match strategy {
        Strategy::RoundRobin => order.into_iter().next(),
        Strategy::LeastOutstanding => order.min_by_key(|i| outstanding[*i]),
    }
}

#[cfg(test)]
mod tenant_set_tests {
    use super::*;

    #[test]
    fn tenant_sets_read_ranges_lists_and_the_super_tenant() {
        let s = TenantSet::parse("1-100, 250,super").unwrap();
        assert!(s.contains(1) && s.contains(100) && s.contains(250) && s.contains(-1234));
        assert!(!s.contains(101) && !s.contains(0) && !s.contains(249));
        assert!(TenantSet::parse("*").unwrap().contains(77));
        for bad in ["", "a", "5-2", "-3-4", "1,,2"] {
            assert!(TenantSet::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use nubo_events::{Cluster, ClusterPort, Member, MemberChange, MemberPort};

    use super::*;

    fn member(id: &str, status: MemberStatus, port: u16) -> Member {
        Member {
            member_id: id.into(),
            cluster_id: "c".into(),
            cluster_instance_id: "a-1".into(),
            service_name: "s".into(),
            application_id: "a".into(),
            network_partition_id: "np".into(),
            partition_id: "p".into(),
            status,
            default_private_ip: Some("127.0.0.1".into()),
            default_public_ip: None,
            ports: vec![MemberPort {
                name: "http".into(),
                protocol: "http".into(),
                port,
                proxy_port: Some(8280),
            }],
            init_time: 0,
            failure: None,
            properties: BTreeMap::new(),
        }
    }

    fn topology() -> Topology {
        let mut members = BTreeMap::new();
        for (id, st, port) in [
            ("m1", MemberStatus::Active, 1001),
            ("m2", MemberStatus::Starting, 1002),
            ("m3", MemberStatus::Active, 1003),
        ] {
            members.insert(id.to_owned(), member(id, st, port));
        }
        let c = Cluster {
            cluster_id: "c".into(),
            service_name: "s".into(),
            application_id: "a".into(),
            alias: "web".into(),
            host_names: vec!["a.web.localhost".into()],
            tenant_id: -1234,
            ports: vec![ClusterPort {
                name: "http".into(),
                protocol: "http".into(),
                port: 80,
                proxy_port: Some(8280),
            }],
            deployment_policy: "d".into(),
            autoscaling_policy: "x".into(),
            instances: BTreeMap::new(),
            members,
        };
        Topology {
            clusters: BTreeMap::from([("c".to_owned(), c)]),
            suspended_tenants: Default::default(),
            domain_routes: Vec::new(),
            tenant_signups: Vec::new(),
        }
    }

    #[test]
    fn only_active_members_are_routed_and_hosts_match_loosely() {
        let r = Routes::from_topology(&topology());
        let route = r.lookup("A.Web.Localhost:8280", 8280).unwrap();
        let ports: Vec<u16> = route.backends.iter().map(|b| b.addr.port()).collect();
        assert_eq!(ports, [1001, 1003]);
        assert!(r.lookup("a.web.localhost", 9999).is_none());
        assert!(r.lookup("other", 8280).is_none());
        assert_eq!(r.ports(), [8280]);
    }

    #[test]
    fn a_suspended_tenant_gets_no_routes_until_it_is_routed_again() {
        let mut t = topology();
        let tenant = t.clusters["c"].tenant_id;
        let suspend = |suspended| Event::TenantRouting {
            tenant_id: tenant,
            suspended,
        };
        assert_eq!(
            apply(&mut t, &suspend(true)),
            Change::Clusters(BTreeSet::from(["c".to_owned()]))
        );
        assert!(
            Routes::from_topology(&t)
                .lookup("a.web.localhost", 8280)
                .is_none()
        );
        assert_eq!(apply(&mut t, &suspend(true)), Change::None, "no change");
        // Another tenant's suspension changes nothing here.
        let other = Event::TenantRouting {
            tenant_id: tenant + 1,
            suspended: true,
        };
        assert_eq!(apply(&mut t, &other), Change::Clusters(BTreeSet::new()));
        apply(&mut t, &suspend(false));
        assert!(
            Routes::from_topology(&t)
                .lookup("a.web.localhost", 8280)
                .is_some()
        );
        // A complete topology that says it is suspended is a change of its clusters.
        let mut complete = t.clone();
        complete.suspended_tenants.insert(tenant);
        let e = Event::CompleteTopology {
            topology: complete,
            part: None,
        };
        assert_eq!(
            apply(&mut t, &e),
            Change::Clusters(BTreeSet::from(["c".to_owned()]))
        );
        assert!(
            Routes::from_topology(&t)
                .lookup("a.web.localhost", 8280)
                .is_none()
        );
    }

    #[test]
    fn member_events_move_members_in_and_out() {
        let mut t = topology();
        assert_eq!(
            apply(
                &mut t,
                &Event::MemberActivated(MemberChange {
                    member: member("m2", MemberStatus::Active, 1002)
                })
            ),
            Change::Clusters(BTreeSet::from(["c".to_owned()]))
        );
        assert_eq!(
            Routes::from_topology(&t)
                .lookup("a.web.localhost", 8280)
                .unwrap()
                .backends
                .len(),
            3
        );
        apply(
            &mut t,
            &Event::MemberMaintenanceMode(MemberChange {
                member: member("m1", MemberStatus::InMaintenance, 1001),
            }),
        );
        apply(
            &mut t,
            &Event::MemberTerminated(MemberChange {
                member: member("m3", MemberStatus::Terminated, 1003),
            }),
        );
        let r = Routes::from_topology(&t);
        let ids: Vec<&str> = r
            .lookup("a.web.localhost", 8280)
            .unwrap()
            .backends
            .iter()
            .map(|b| b.member_id.as_str())
            .collect();
        assert_eq!(ids, ["m2"], "a member leaving Active gets no more traffic");
        apply(
            &mut t,
            &Event::ApplicationClustersRemoved {
                application_id: "a".into(),
                cluster_ids: vec!["c".into()],
            },
        );
        assert!(
            Routes::from_topology(&t)
                .lookup("a.web.localhost", 8280)
                .is_none()
        );
    }

    #[test]
    fn a_complete_topology_changes_only_the_clusters_that_differ() {
        let mut t = topology();
        let mut other = t.clusters["c"].clone();
        other.cluster_id = "d".into();
        other.host_names = vec!["d.localhost".into()];
        t.clusters.insert("d".into(), other);
        let same = Event::CompleteTopology {
            topology: t.clone(),
            part: None,
        };
        let mut copy = t.clone();
        assert_eq!(
            apply(&mut copy, &same),
            Change::None,
            "a periodic copy changes nothing"
        );
        let mut next = t.clone();
        next.clusters.get_mut("d").unwrap().members.remove("m1");
        next.clusters.remove("c");
        let changed = apply(
            &mut copy,
            &Event::CompleteTopology {
                topology: next.clone(),
                part: None,
            },
        );
        assert_eq!(
            changed,
            Change::Clusters(BTreeSet::from(["c".to_owned(), "d".to_owned()]))
        );
        assert_eq!(copy, next);
        let part = Event::CompleteTopology {
            topology: Topology::default(),
            part: Some(nubo_events::TopologyPart {
                snapshot: 1,
                index: 0,
                count: 2,
            }),
        };
        assert_eq!(
            apply(&mut copy, &part),
            Change::None,
            "a part alone is ignored"
        );
        assert_eq!(copy, next);
        let mut merged = Change::None;
        merged.merge(Change::Clusters(BTreeSet::from(["x".to_owned()])));
        merged.merge(Change::None);
        merged.merge(Change::Clusters(BTreeSet::from(["y".to_owned()])));
        assert_eq!(
            merged,
            Change::Clusters(BTreeSet::from(["x".to_owned(), "y".to_owned()]))
        );
    }

    #[test]
    fn static_routes() {
        let t =
            static_topology(&["example.com:8080=127.0.0.1:9000,127.0.0.1:9001".into()]).unwrap();
        let r = Routes::from_topology(&t);
        assert_eq!(r.lookup("example.com", 8080).unwrap().backends.len(), 2);
        assert!(static_topology(&["nonsense".into()]).is_err());
    }

    #[test]
    fn choosing_members() {
        assert_eq!(choose(Strategy::RoundRobin, 0, &[0, 0, 0], &[]), Some(0));
        assert_eq!(choose(Strategy::RoundRobin, 4, &[0, 0, 0], &[]), Some(1));
        assert_eq!(
            choose(Strategy::RoundRobin, 1, &[0, 0, 0], &[false, true, false]),
            Some(2),
            "skips the excluded"
        );
        assert_eq!(
            choose(Strategy::RoundRobin, 0, &[0, 0], &[true, true]),
            None
        );
        assert_eq!(
            choose(Strategy::LeastOutstanding, 0, &[3, 1, 2], &[]),
            Some(1)
        );
        assert_eq!(
            choose(Strategy::LeastOutstanding, 2, &[1, 1, 1], &[]),
            Some(2),
            "ties go round robin"
        );
        assert_eq!(
            choose(
                Strategy::LeastOutstanding,
                0,
                &[3, 1, 2],
                &[false, true, false]
            ),
            Some(2)
        );
        assert_eq!(choose(Strategy::LeastOutstanding, 0, &[], &[]), None);
    }
}
