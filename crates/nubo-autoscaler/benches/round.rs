//! The cost of one decision round at scale: 10,000 clusters (1,000 applications of 10) and
//! 100,000 Active members, every member with a full window of memory and load samples and every
//! cluster with requests in flight. The statistics are fed to the engine directly, in process
//! (the one place where the bus is bypassed; the round itself is the monitor's code, unchanged).
//!
//! `cargo bench -p nubo-autoscaler --bench round` (options: `-- APPS CLUSTERS_PER_APP
//! MEMBERS_PER_CLUSTER ROUNDS`). Prints time per round (median, max), the decisions taken, the
//! memory of the state and of the windows, and for comparison the cost of copying the whole
//! controller state (what the monitor did before the engine read the state under the lock).

use std::collections::BTreeMap;
use std::time::Instant;

use nubo_autoscaler::monitor::{Engine, EventProcessor, MonitorConfig, PREDICTIONS_PER_EVENT};
use nubo_controller::state::{AppInstance, Deployment};
use nubo_controller::{ControllerState, DeploymentStatus};
use nubo_events::{
    Cluster, ClusterInstance, Event, InstanceRef, InstanceStatus, Member, MemberHealth,
    MemberStatus, RequestsInFlight,
};
use nubo_plan::{ClusterPlan, DeploymentPlan, InstancePlan, Thresholds};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .filter(|a| !a.starts_with('-'))
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let (apps, per_app, per_cluster, rounds) = (arg(1, 1_000), arg(2, 10), arg(3, 10), arg(4, 10));
    let rss0 = rss_kib();
    let mut state = ControllerState::default();
    let mut refs = Vec::new();
    for a in 0..apps {
        let app = format!("app{a}");
        let instance = format!("{app}-1");
        let mut clusters = Vec::new();
        for c in 0..per_app {
            let cluster_id = format!("{app}.c{c}.php.domain");
            clusters.push(ClusterPlan {
                timeouts: Default::default(),
                payload: Default::default(),
                cluster_id: cluster_id.clone(),
                alias: format!("c{c}"),
                service_name: "php".into(),
                host_names: vec![],
                ports: vec![],
                min: 2,
                max: 20,
                deployment_policy: "dp".into(),
                autoscaling_policy: "asp".into(),
                placements: vec![],
                depends_on: vec![],
                images: BTreeMap::new(),
                properties: BTreeMap::new(),
                group_path: vec![],
                thresholds: Thresholds {
                    requests_in_flight: Some(50.0),
                    memory_consumption: Some(70.0),
                    load_average: Some(70.0),
                },
            });
            let mut cluster = Cluster {
                cluster_id: cluster_id.clone(),
                service_name: "php".into(),
                application_id: app.clone(),
                alias: format!("c{c}"),
                host_names: vec![],
                tenant_id: -1234,
                ports: vec![],
                deployment_policy: "dp".into(),
                autoscaling_policy: "asp".into(),
                instances: BTreeMap::new(),
                members: BTreeMap::new(),
            };
            cluster.instances.insert(
                instance.clone(),
                ClusterInstance {
                    instance_id: instance.clone(),
                    network_partition_id: "np".into(),
                    status: InstanceStatus::Active,
                    min_members: 2,
                    max_members: 20,
                },
            );
            for m in 0..per_cluster {
                let member = Member {
                    member_id: format!("{app}.c{c}.php-{m}"),
                    cluster_id: cluster_id.clone(),
                    cluster_instance_id: instance.clone(),
                    service_name: "php".into(),
                    application_id: app.clone(),
                    network_partition_id: "np".into(),
                    partition_id: "p1".into(),
                    status: MemberStatus::Active,
                    default_private_ip: Some("10.0.0.1".into()),
                    default_public_ip: None,
                    ports: vec![],
                    init_time: 0,
                    failure: None,
                    properties: BTreeMap::new(),
                };
                refs.push(InstanceRef {
                    application_id: app.clone(),
                    service_name: "php".into(),
                    cluster_id: cluster_id.clone(),
                    cluster_instance_id: instance.clone(),
                    member_id: member.member_id.clone(),
                    network_partition_id: "np".into(),
                    partition_id: "p1".into(),
                });
                cluster.members.insert(member.member_id.clone(), member);
            }
            state.topology.clusters.insert(cluster_id, cluster);
        }
        state.deployments.insert(
            app.clone(),
            Deployment {
                plan: DeploymentPlan {
                    application_id: app.clone(),
                    tenant_id: -1234,
                    application_policy: "ap".into(),
                    instances: vec![InstancePlan {
                        instance_id: instance.clone(),
                        network_partition_id: "np".into(),
                    }],
                    clusters,
                    scopes: vec![],
                    burst_groups: vec![],
                },
                status: DeploymentStatus::Deployed,
                force: false,
                instances: vec![AppInstance {
                    instance_id: instance,
                    network_partition_id: "np".into(),
                    status: InstanceStatus::Active,
                    burst_group: None,
                }],
                backoff: BTreeMap::new(),
                desired: BTreeMap::new(),
                group_instances: BTreeMap::new(),
                next_group_instance: 0,
                burst_level: 0,
                next_instance: 1,
                group_status: BTreeMap::new(),
                rollouts: Default::default(),
                failing_partitions: Default::default(),
            },
        );
    }
    let rss_state = rss_kib();
    // The defaults: a 5 s window, a 5 s fault timeout.
    let config = MonitorConfig::default();
    let mut engine = Engine::new(config);
    // A full window: a sample a second for 10 s (the engine keeps twice the window), then a
    // second more before each measured round, so that every round decides on full windows and
    // finds nobody silent. One cluster in ten is loaded above its thresholds; the others are
    // quiet.
    let t0 = 1_000_000_000u64;
    let feed_second = |engine: &mut Engine, s: u64| {
        let at = t0 + s * 1000;
        for (i, r) in refs.iter().enumerate() {
            let hot = (i / per_cluster) % 10 == 0;
            let v = if hot { 85.0 + s as f64 } else { 30.0 };
            engine.feed(
                &Event::MemberHealthStat(MemberHealth {
                    instance: r.clone(),
                    memory_consumption: Some(v),
                    load_average: Some(v),
                    ports_open: true,
                    at_ms: at,
                }),
                at,
            );
        }
        for (i, (id, _)) in state.topology.clusters.iter().enumerate() {
            engine.feed(
                &Event::InFlightRequests(RequestsInFlight {
                    cluster_id: id.clone(),
                    network_partition_id: "np".into(),
                    cluster_instance_id: None,
                    count: if i % 10 == 0 { 400.0 } else { 20.0 },
                    served: 0,
                    load_balancer_id: "lb".into(),
                    at_ms: at,
                }),
                at,
            );
        }
        (refs.len() + state.topology.clusters.len()) as u64
    };
    let feed_start = Instant::now();
    let mut fed = 0u64;
    for s in 0..10u64 {
        fed += feed_second(&mut engine, s);
    }
    let feed = feed_start.elapsed();
    let rss_windows = rss_kib();
    let mut times = Vec::new();
    let mut decisions = 0;
    let mut faults = 0;
    for r in 0..rounds {
        let second = 10 + r as u64;
        feed_second(&mut engine, second);
        let now = t0 + second * 1000 + 500;
        let start = Instant::now();
        let round = engine.round(&state, now);
        times.push(start.elapsed());
        decisions = round.commands.len();
        faults += round
            .commands
            .iter()
            .filter(|c| matches!(c, nubo_events::ScaleCommand::MemberFault { .. }))
            .count();
        std::hint::black_box(&round);
    }
    assert_eq!(faults, 0, "every round on full windows: nobody silent");
    times.sort();
    let clone_start = Instant::now();
    let copy = std::hint::black_box(state.clone());
    let clone = clone_start.elapsed();
    drop(copy);
    let members = refs.len();
    let clusters = state.topology.clusters.len();
    println!("decision round: {clusters} clusters, {members} members (statistics fed in process)");
    println!(
        "  round: median {:.1} ms, max {:.1} ms over {rounds} rounds; {decisions} commands in the last",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    println!(
        "  feeding {fed} statistics: {:.0} ns each",
        feed.as_nanos() as f64 / fed as f64
    );
    println!(
        "  memory: state {} MiB, windows {} MiB (RSS)",
        rss_state.saturating_sub(rss0) / 1024,
        rss_windows.saturating_sub(rss_state) / 1024
    );
    println!(
        "  for comparison, one copy of the controller state: {:.1} ms",
        clone.as_secs_f64() * 1e3
    );
    // Persisting: the controller writes each batch's inputs to its journal (one transaction), and
    // the whole state as a snapshot only when the journal since the last one outgrew it.
    let snap_start = Instant::now();
    let json = serde_json::to_string(&state).expect("the state as JSON");
    let snap = snap_start.elapsed();
    let parse_start = Instant::now();
    let parsed: ControllerState = serde_json::from_str(&json).expect("the state back");
    let parse = parse_start.elapsed();
    std::hint::black_box(&parsed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (append, write_snapshot) = rt.block_on(async {
        let store = nubo_store::SqliteStore::open(&dir.path().join("nubo.db"))
            .await
            .expect("a store");
        use nubo_store::Store;
        // A batch of 1,024 member reports, as the controller writes them while members start.
        let line = serde_json::to_string(&serde_json::json!({"at": t0, "input": {"Event": Event::InstanceActivated(refs[0].clone())}})).expect("a line");
        let lines = vec![line; 1024];
        let start = Instant::now();
        store
            .journal_append("bench", &lines, None)
            .await
            .expect("an append");
        let append = start.elapsed();
        let start = Instant::now();
        store
            .snapshot_write("bench", 1024, &json, None)
            .await
            .expect("a snapshot");
        (append, start.elapsed())
    });
    println!(
        "  persisting: a journal write of 1,024 inputs {:.1} ms (SQLite, synchronous=FULL); a snapshot of the whole state ({} MiB of JSON) serialized in {:.0} ms and written in {:.0} ms, taken only when the journal since the last one is larger; loading it (a restart, a reader in another process, once) {:.0} ms",
        append.as_secs_f64() * 1e3,
        json.len() / (1024 * 1024),
        snap.as_secs_f64() * 1e3,
        write_snapshot.as_secs_f64() * 1e3,
        parse.as_secs_f64() * 1e3
    );
    // And the predictions an event processor of its own publishes each tick for these members.
    let mut cep = EventProcessor::new(config);
    for s in 0..10u64 {
        let at = t0 + s * 1000;
        for r in &refs {
            cep.feed(
                &Event::MemberHealthStat(MemberHealth {
                    instance: r.clone(),
                    memory_consumption: Some(30.0),
                    load_average: Some(30.0),
                    ports_open: true,
                    at_ms: at,
                }),
                at,
            );
        }
    }
    let predict_start = Instant::now();
    let predictions = cep.predictions(t0 + 10_000, PREDICTIONS_PER_EVENT);
    let predict = predict_start.elapsed();
    let bytes: usize = predictions.iter().map(|e| e.encode().len()).sum();
    println!(
        "  an event processor of its own, per tick: {} events, {} KiB, computed in {:.0} ms",
        predictions.len(),
        bytes / 1024,
        predict.as_secs_f64() * 1e3
    );
}
