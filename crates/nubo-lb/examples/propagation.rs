//! Topology propagation benchmark (`bench/propagation.sh` runs it): the time for a topology change
//! published on the bus to reach 1, 4 and 16 load balancers, i.e. until each of them routes by it.
//!
//! For each bus and each number N of load balancers, in a fresh tokio runtime (dropped afterwards,
//! which closes every connection it made): N [`LoadBalancer`]s in this one process, `bench-lb-0` …
//! `bench-lb-<N-1>`, **each with its own bus connection** (`connect_url`) and following the
//! topology exactly as `nubo lb` does (`LoadBalancer::follow`); each listens on the same proxy port
//! on its own loopback address (127.0.0.1, 127.0.0.2, …) so that they do not collide. A "controller"
//! connection publishes the topology: an application cluster (`ApplicationClustersCreated`,
//! `ClusterInstanceCreated`, one member `MemberActivated`) and `--clusters` more clusters of
//! `--members` Active members each (to give the table a size), then waits until every load balancer
//! routes all of it.
//!
//! Then, `--reps` times per round: a new member of the application cluster is published as
//! Starting (`MemberStarted`, not timed; the harness waits until every load balancer has applied
//! it), then **Active** (`MemberActivated`, as the controller publishes it when the agent reports
//! its ports open): timed from just before the publish call until each load balancer's table
//! routes the member (the table is watched through [`LoadBalancer::watch_routes`], so the time is
//! taken when the proxy starts routing by the new table, not by polling). "first" is the first load
//! balancer to route it, "last" the last one (when the change has reached every load balancer).
//! Then the member is removed (`MemberTerminated`), timed the same way until no load balancer
//! routes it any more. Rounds go over every bus and N in turn (this machine's speed drifts); the
//! samples of all rounds are pooled. The Markdown table printed shows, per bus and N, the median,
//! p99 (nearest rank) and maximum of "first" and "last" for the activation, and the median and p99
//! of "last" for the removal. Before the table, a line gives a load balancer's own work per change
//! on the same topology without any bus (`LoadBalancer::update` timed directly): what part of
//! the times is the table, what part the bus; the load balancers share this machine's cores, so with
//! N of them a change costs N times that work before the last one has it.
//!
//! ```sh
//! propagation [--mqtt URL] [--nats URL] [--lbs 1,4,16] [--rounds R] [--reps N] [--clusters C] [--members M]
//! ```
//! The embedded broker (rumqttd, started here on a free port, in this process) always runs;
//! Mosquitto and NATS when their URLs are given.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use nubo_bus::EventBus;
use nubo_events::{
    Cluster, ClusterInstance, ClusterPort, Event, InstanceStatus, Member, MemberChange, MemberPort,
    MemberStatus, Topology,
};
use nubo_lb::{LbConfig, LoadBalancer, Table};
use tokio::sync::mpsc;

struct Options {
    mqtt: Option<String>,
    nats: Option<String>,
    lbs: Vec<usize>,
    rounds: usize,
    reps: usize,
    clusters: usize,
    members: usize,
    /// Messages neither proved nor checked (to compare with the platform's signed bus).
    unsigned: bool,
}

fn options() -> Options {
    let mut o = Options {
        mqtt: None,
        nats: None,
        lbs: vec![1, 4, 16],
        rounds: 2,
        reps: 50,
        clusters: 0,
        members: 10,
        unsigned: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--mqtt" => o.mqtt = Some(v()),
            "--nats" => o.nats = Some(v()),
            "--lbs" => {
                o.lbs = v()
                    .split(',')
                    .map(|n| n.trim().parse::<usize>().unwrap().max(1))
                    .collect()
            }
            "--rounds" => o.rounds = v().parse::<usize>().unwrap().max(1),
            "--reps" => o.reps = v().parse::<usize>().unwrap().max(1),
            "--clusters" => o.clusters = v().parse().unwrap(),
            "--members" => o.members = v().parse().unwrap(),
            "--unsigned" => o.unsigned = true,
            "-h" | "--help" => {
                println!(
                    "propagation [--mqtt URL] [--nats URL] [--lbs 1,4,16] [--rounds R] [--reps N] [--clusters C] [--members M] [--unsigned]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

const APP: &str = "bench";
const CLUSTER: &str = "bench.web.php.domain";
const HOST: &str = "bench.web.example";
/// How long one load balancer may take before the change counts as lost for it.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long the load balancers may take to get the initial topology.
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn cluster(id: &str, host: &str, proxy_port: u16) -> Cluster {
    Cluster {
        cluster_id: id.into(),
        service_name: "php".into(),
        application_id: APP.into(),
        alias: "web".into(),
        host_names: vec![host.into()],
        tenant_id: -1234,
        ports: vec![ClusterPort {
            name: "http".into(),
            protocol: "http".into(),
            port: 8080,
            proxy_port: Some(proxy_port),
        }],
        deployment_policy: "dp".into(),
        autoscaling_policy: "ap".into(),
        instances: BTreeMap::new(),
        members: BTreeMap::new(),
    }
}

fn instance() -> ClusterInstance {
    ClusterInstance {
        instance_id: format!("{APP}-1"),
        network_partition_id: "np1".into(),
        status: InstanceStatus::Active,
        min_members: 1,
        max_members: 100,
    }
}

/// A member of `cluster_id` in `status`, "listening" on 127.0.0.1:`port` (nothing is sent to it).
fn member(cluster_id: &str, n: usize, status: MemberStatus, port: u16, proxy_port: u16) -> Member {
    Member {
        member_id: format!("{cluster_id}-{n}"),
        cluster_id: cluster_id.into(),
        cluster_instance_id: format!("{APP}-1"),
        service_name: "php".into(),
        application_id: APP.into(),
        network_partition_id: "np1".into(),
        partition_id: "p1".into(),
        status,
        default_private_ip: Some("127.0.0.1".into()),
        default_public_ip: None,
        ports: vec![MemberPort {
            name: "http".into(),
            protocol: "http".into(),
            port,
            proxy_port: Some(proxy_port),
        }],
        init_time: nubo_bus::now_ms(),
        failure: None,
        properties: BTreeMap::new(),
    }
}

/// The `--clusters` other clusters, each with `--members` Active members.
fn other_clusters(o: &Options, proxy_port: u16) -> Vec<Cluster> {
    (0..o.clusters)
        .map(|c| {
            let id = format!("other-{c}.web.php.domain");
            let mut other = cluster(&id, &format!("other-{c}.web.example"), proxy_port);
            other.instances.insert(format!("{APP}-1"), instance());
            for m in 0..o.members {
                let mb = member(&id, m, MemberStatus::Active, 41000 + m as u16, proxy_port);
                other.members.insert(mb.member_id.clone(), mb);
            }
            other
        })
        .collect()
}

/// At most this many clusters per `ApplicationClustersCreated` when setting up (NATS refuses
/// messages above 1 MB by default).
const CLUSTERS_PER_EVENT: usize = 50;

fn change(m: &Member) -> MemberChange {
    MemberChange { member: m.clone() }
}

fn routes_member(routes: &Table, port: u16, member_id: &str) -> bool {
    routes
        .lookup(HOST, port)
        .is_some_and(|r| r.backends.iter().any(|b| b.member_id == member_id))
}

/// Per repetition: (first, last) load balancer, or `None` when one of them missed the change.
type Sample = Option<(Duration, Duration)>;

#[derive(Default)]
struct Samples {
    activated: Vec<Sample>,
    removed: Vec<Sample>,
}

/// The load balancers' tables as they change: (load balancer, when, table).
struct Tables {
    rx: mpsc::UnboundedReceiver<(usize, Instant, Table)>,
    latest: Vec<Table>,
    changes: Vec<u64>,
}

impl Tables {
    /// Waits until every load balancer's table satisfies `done`; returns for each the time (since
    /// `since`) of its first table that did, `None` for those that did not within [`TIMEOUT`].
    async fn wait_all(
        &mut self,
        since: Instant,
        timeout: Duration,
        done: impl Fn(&Table) -> bool,
    ) -> Vec<Option<Duration>> {
        let mut at: Vec<Option<Duration>> = self
            .latest
            .iter()
            .map(|r| done(r).then_some(Duration::ZERO))
            .collect();
        let deadline = tokio::time::Instant::from_std(since + timeout);
        while at.iter().any(Option::is_none) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((i, when, routes))) => {
                    self.changes[i] += 1;
                    if at[i].is_none() && done(&routes) {
                        at[i] = Some(when.saturating_duration_since(since));
                    }
                    self.latest[i] = routes;
                }
                _ => break,
            }
        }
        at
    }

    /// Waits until every load balancer has applied `k` more changes.
    async fn wait_changes(&mut self, k: u64) -> bool {
        let target: Vec<u64> = self.changes.iter().map(|c| c + k).collect();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while self.changes.iter().zip(&target).any(|(c, t)| c < t) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((i, _, routes))) => {
                    self.changes[i] += 1;
                    self.latest[i] = routes;
                }
                _ => return false,
            }
        }
        true
    }
}

fn first_last(at: &[Option<Duration>]) -> Sample {
    let at: Option<Vec<Duration>> = at.iter().copied().collect();
    let at = at?;
    Some((*at.iter().min()?, *at.iter().max()?))
}

/// One configuration: `n` load balancers on the bus at `url`, `o.reps` repetitions.
async fn run(bus_name: &str, url: &str, n: usize, o: &Options, out: &mut Samples) {
    let proxy_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let controller = nubo_bus::connect_url(url, "bench-controller")
        .await
        .unwrap();
    controller
        .wait_connected(Duration::from_secs(15))
        .await
        .unwrap();
    // The platform's bus proves every message (nubo-envelope): the benchmark signs and checks
    // as the controller and the load balancers do.
    let key = nubo_bus::BusKey::generate();
    let auth = || match o.unsigned {
        true => nubo_bus::BusAuth::Open,
        false => nubo_bus::BusAuth::Platform(key.clone()),
    };
    let controller = EventBus::with_auth(controller, auth());

    let (tx, rx) = mpsc::unbounded_channel();
    let mut binds = Vec::new();
    for i in 0..n {
        let id = format!("bench-lb-{i}");
        let bus = nubo_bus::connect_url(url, &id).await.unwrap();
        bus.wait_connected(Duration::from_secs(15)).await.unwrap();
        // 127.0.0.1, 127.0.0.2, …: every load balancer has the proxy port on its own address.
        let bind = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::LOCALHOST) + i as u32));
        binds.push(SocketAddr::new(bind, proxy_port));
        let lb = LoadBalancer::new(LbConfig {
            bind,
            id,
            ..LbConfig::default()
        });
        let mut watch = lb.watch_routes();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(routes) = watch.changed().await {
                let at = Instant::now();
                if tx.send((i, at, routes)).is_err() {
                    break;
                }
            }
        });
        lb.follow(EventBus::with_auth(bus, auth())).await.unwrap();
    }
    drop(tx);
    let mut tables = Tables {
        rx,
        latest: (0..n).map(|_| Table::default()).collect(),
        changes: vec![0; n],
    };

    // The topology, as the controller publishes it.
    controller
        .publish(&Event::ApplicationClustersCreated {
            application_id: APP.into(),
            clusters: vec![cluster(CLUSTER, HOST, proxy_port)],
        })
        .await
        .unwrap();
    controller
        .publish(&Event::ClusterInstanceCreated {
            cluster_id: CLUSTER.into(),
            instance: instance(),
        })
        .await
        .unwrap();
    let base = member(CLUSTER, 0, MemberStatus::Active, 40000, proxy_port);
    controller
        .publish(&Event::MemberActivated(change(&base)))
        .await
        .unwrap();
    // Other clusters, created with their members already Active, several per event (not what the
    // controller does, but quick to set up; the load balancer applies it the same way).
    for batch in other_clusters(o, proxy_port).chunks(CLUSTERS_PER_EVENT) {
        controller
            .publish(&Event::ApplicationClustersCreated {
                application_id: APP.into(),
                clusters: batch.to_vec(),
            })
            .await
            .unwrap();
    }
    let (clusters, members) = (o.clusters, o.members);
    let started = Instant::now();
    let ready = tables
        .wait_all(started, SETUP_TIMEOUT, |r| {
            r.len() == 1 + clusters
                && routes_member(r, proxy_port, &base.member_id)
                && r.routes()
                    .by_host
                    .values()
                    .all(|route| route.cluster_id == CLUSTER || route.backends.len() == members)
        })
        .await;
    let missing = ready.iter().filter(|r| r.is_none()).count();
    assert_eq!(
        missing, 0,
        "{bus_name}: {missing} load balancers never got the topology"
    );
    if o.clusters > 0 {
        eprintln!(
            "{bus_name}, {n} LB: the topology reached every load balancer in {:.0} ms",
            ms(started.elapsed())
        );
    }
    // Every proxy listens (on its own address): nothing collided.
    for addr in &binds {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            eprintln!("warning: {bus_name}: no proxy listening on {addr}");
        }
    }

    let settle = Duration::from_millis(10);
    for rep in 0..o.reps {
        let k = rep + 1;
        let mut m = member(
            CLUSTER,
            k,
            MemberStatus::Starting,
            40000 + k as u16,
            proxy_port,
        );
        controller
            .publish(&Event::MemberStarted(change(&m)))
            .await
            .unwrap();
        assert!(
            tables.wait_changes(1).await,
            "{bus_name}: MemberStarted did not reach every load balancer"
        );
        tokio::time::sleep(settle).await;

        m.status = MemberStatus::Active;
        let event = Event::MemberActivated(change(&m));
        let t0 = Instant::now();
        controller.publish(&event).await.unwrap();
        let at = tables
            .wait_all(t0, TIMEOUT, |r| routes_member(r, proxy_port, &m.member_id))
            .await;
        out.activated.push(first_last(&at));
        tokio::time::sleep(settle).await;

        m.status = MemberStatus::Terminated;
        let event = Event::MemberTerminated(change(&m));
        let t1 = Instant::now();
        controller.publish(&event).await.unwrap();
        let at = tables
            .wait_all(t1, TIMEOUT, |r| !routes_member(r, proxy_port, &m.member_id))
            .await;
        out.removed.push(first_last(&at));
        tokio::time::sleep(settle).await;
    }
}

/// The load balancer's own work per change, without a bus: `LoadBalancer::update` of the changed
/// cluster (what `follow` does for each topology event) on the benchmark's topology, a member
/// added then removed, 2 × 50 times, each after 10 ms idle; returns the sorted times, those of
/// `LoadBalancer::set_topology` (the whole table rebuilt, as every change cost before the update
/// became incremental) for comparison, and the size of this topology as a `CompleteTopology`
/// event on the bus.
async fn table_update(o: &Options) -> (Vec<Duration>, Vec<Duration>, usize) {
    let proxy_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let lb = LoadBalancer::new(LbConfig::default());
    let mut t = Topology::default();
    let mut app = cluster(CLUSTER, HOST, proxy_port);
    app.instances.insert(format!("{APP}-1"), instance());
    let base = member(CLUSTER, 0, MemberStatus::Active, 40000, proxy_port);
    app.members.insert(base.member_id.clone(), base);
    t.clusters.insert(CLUSTER.into(), app);
    for c in other_clusters(o, proxy_port) {
        t.clusters.insert(c.cluster_id.clone(), c);
    }
    let size = Event::CompleteTopology {
        topology: t.clone(),
        part: None,
    }
    .encode()
    .len();
    lb.set_topology(&t).await; // opens the proxy port
    let changed = std::collections::BTreeSet::from([CLUSTER.to_owned()]);
    let mut times = Vec::new();
    let mut rebuild = Vec::new();
    for k in 1..=50 {
        let m = member(
            CLUSTER,
            k,
            MemberStatus::Active,
            40000 + k as u16,
            proxy_port,
        );
        let id = m.member_id.clone();
        t.clusters
            .get_mut(CLUSTER)
            .unwrap()
            .members
            .insert(id.clone(), m);
        // Idle first, as between the benchmark's changes (back to back, the caches stay warm and
        // a change costs a half to a third of this).
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t0 = Instant::now();
        lb.update(&t, &changed).await;
        times.push(t0.elapsed());
        assert!(routes_member(&lb.table(), proxy_port, &id));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t0 = Instant::now();
        lb.set_topology(&t).await;
        rebuild.push(t0.elapsed());
        t.clusters.get_mut(CLUSTER).unwrap().members.remove(&id);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t0 = Instant::now();
        lb.update(&t, &changed).await;
        times.push(t0.elapsed());
        assert!(!routes_member(&lb.table(), proxy_port, &id));
    }
    times.sort();
    rebuild.sort();
    (times, rebuild, size)
}

/// Nearest-rank percentile.
fn pct(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() {
    let o = options();
    let broker = nubo_broker::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut buses: Vec<(&str, String)> =
        vec![("embedded broker (rumqttd, MQTT QoS 1)", broker.url())];
    if let Some(u) = &o.mqtt {
        buses.push(("Mosquitto (MQTT QoS 1)", u.clone()));
    }
    if let Some(u) = &o.nats {
        buses.push(("nats-server (core NATS)", u.clone()));
    }

    let (update, rebuild, size) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(table_update(&o));

    let mut results: Vec<Vec<Samples>> = buses
        .iter()
        .map(|_| o.lbs.iter().map(|_| Samples::default()).collect())
        .collect();
    for round in 0..o.rounds {
        for (b, (name, url)) in buses.iter().enumerate() {
            for (j, &n) in o.lbs.iter().enumerate() {
                // A runtime per configuration: dropping it closes the load balancers' connections.
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let mut s = Samples::default();
                rt.block_on(run(name, url, n, &o, &mut s));
                rt.shutdown_timeout(Duration::from_secs(2));
                let mut last: Vec<Duration> =
                    s.activated.iter().flatten().map(|(_, l)| *l).collect();
                last.sort();
                eprintln!(
                    "round {}: {name}, {n} LB: last LB updated p50 {:.3} ms, max {:.3} ms, missed {}",
                    round + 1,
                    ms(pct(&last, 0.5)),
                    ms(last.last().copied().unwrap_or_default()),
                    s.activated.iter().filter(|x| x.is_none()).count()
                );
                let r = &mut results[b][j];
                r.activated.extend(s.activated);
                r.removed.extend(s.removed);
            }
        }
    }

    println!(
        "{} repetitions per bus and N ({} rounds of {}); topology: 1 cluster{}; times in ms from the publish call",
        o.rounds * o.reps,
        o.rounds,
        o.reps,
        if o.clusters > 0 {
            format!(" + {} clusters of {} Active members", o.clusters, o.members)
        } else {
            String::new()
        }
    );
    println!(
        "A load balancer's own work per change (update of the changed cluster, no bus, this topology): p50 {:.3} ms, p99 {:.3} ms (the whole table rebuilt, set_topology: p50 {:.3} ms)",
        ms(pct(&update, 0.5)),
        ms(pct(&update, 0.99)),
        ms(pct(&rebuild, 0.5)),
    );
    println!("The topology as a CompleteTopology event: {size} bytes");
    println!();
    println!(
        "| bus | LBs | activated: first p50 | first p99 | last p50 | last p99 | last max | removed: last p50 | last p99 | missed |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for ((name, _), per_n) in buses.iter().zip(&results) {
        for (n, s) in o.lbs.iter().zip(per_n) {
            let sorted = |v: &[Sample], last: bool| {
                let mut d: Vec<Duration> = v
                    .iter()
                    .flatten()
                    .map(|(f, l)| if last { *l } else { *f })
                    .collect();
                d.sort();
                d
            };
            let (af, al, rl) = (
                sorted(&s.activated, false),
                sorted(&s.activated, true),
                sorted(&s.removed, true),
            );
            let missed = s.activated.iter().filter(|x| x.is_none()).count()
                + s.removed.iter().filter(|x| x.is_none()).count();
            println!(
                "| {name} | {n} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {missed} |",
                ms(pct(&af, 0.5)),
                ms(pct(&af, 0.99)),
                ms(pct(&al, 0.5)),
                ms(pct(&al, 0.99)),
                ms(al.last().copied().unwrap_or_default()),
                ms(pct(&rl, 0.5)),
                ms(pct(&rl, 0.99)),
            );
        }
    }
}
