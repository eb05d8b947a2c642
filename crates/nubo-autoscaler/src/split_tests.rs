//! The event processor in another process decides nothing differently: the same statistics fed
//! to an engine directly, and through an [`EventProcessor`]'s predictions to a remote engine,
//! give the same decisions and commands, round after round (faults included).

use std::collections::BTreeMap;
use std::time::Duration;

use nubo_controller::state::{AppInstance, Deployment};
use nubo_controller::{ControllerState, DeploymentStatus};
use nubo_events::{
    Cluster, ClusterInstance, Event, InstanceRef, InstanceStatus, Member, MemberHealth,
    MemberStatus, RequestsInFlight,
};
use nubo_plan::{ClusterPlan, DeploymentPlan, InstancePlan, Thresholds};

use crate::monitor::{Engine, EventProcessor, MonitorConfig};

const APP: &str = "app";
const INSTANCE: &str = "app-1";

fn cluster_id(c: usize) -> String {
    format!("{APP}.c{c}.php.domain")
}

fn member_ref(c: usize, m: usize) -> InstanceRef {
    InstanceRef {
        application_id: APP.into(),
        service_name: "php".into(),
        cluster_id: cluster_id(c),
        cluster_instance_id: INSTANCE.into(),
        member_id: format!("{APP}.c{c}.php-{m}"),
        network_partition_id: "np".into(),
        partition_id: "p1".into(),
    }
}

/// One application of 2 clusters (min 2, max 6) of 3 Active members each.
fn state() -> ControllerState {
    let mut state = ControllerState::default();
    let mut plans = Vec::new();
    for c in 0..2 {
        plans.push(ClusterPlan {
            timeouts: Default::default(),
            payload: Default::default(),
            cluster_id: cluster_id(c),
            alias: format!("c{c}"),
            service_name: "php".into(),
            host_names: vec![],
            ports: vec![],
            min: 2,
            max: 6,
            deployment_policy: "dp".into(),
            autoscaling_policy: "asp".into(),
            placements: vec![],
            depends_on: vec![],
            images: BTreeMap::new(),
            properties: BTreeMap::new(),
            group_path: vec![],
            thresholds: Thresholds {
                requests_in_flight: Some(10.0),
                memory_consumption: Some(60.0),
                load_average: Some(60.0),
            },
        });
        let mut cluster = Cluster {
            cluster_id: cluster_id(c),
            service_name: "php".into(),
            application_id: APP.into(),
            alias: format!("c{c}"),
            host_names: vec![],
            tenant_id: -1234,
            ports: vec![],
            deployment_policy: "dp".into(),
            autoscaling_policy: "asp".into(),
            instances: BTreeMap::from([(
                INSTANCE.to_owned(),
                ClusterInstance {
                    instance_id: INSTANCE.into(),
                    network_partition_id: "np".into(),
                    status: InstanceStatus::Active,
                    min_members: 2,
                    max_members: 6,
                },
            )]),
            members: BTreeMap::new(),
        };
        for m in 0..3 {
            let r = member_ref(c, m);
            cluster.members.insert(
                r.member_id.clone(),
                Member {
                    member_id: r.member_id.clone(),
                    cluster_id: r.cluster_id,
                    cluster_instance_id: INSTANCE.into(),
                    service_name: "php".into(),
                    application_id: APP.into(),
                    network_partition_id: "np".into(),
                    partition_id: "p1".into(),
                    status: MemberStatus::Active,
                    default_private_ip: Some("10.0.0.1".into()),
                    default_public_ip: None,
                    ports: vec![],
                    init_time: 0,
                    failure: None,
                    properties: BTreeMap::new(),
                },
            );
        }
        state.topology.clusters.insert(cluster_id(c), cluster);
    }
    state.deployments.insert(
        APP.into(),
        Deployment {
            plan: DeploymentPlan {
                application_id: APP.into(),
                tenant_id: -1234,
                application_policy: "ap".into(),
                instances: vec![InstancePlan {
                    instance_id: INSTANCE.into(),
                    network_partition_id: "np".into(),
                }],
                clusters: plans,
                scopes: vec![],
                burst_groups: vec![],
            },
            status: DeploymentStatus::Deployed,
            force: false,
            instances: vec![AppInstance {
                instance_id: INSTANCE.into(),
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
    state
}

fn config() -> MonitorConfig {
    MonitorConfig {
        tick: Duration::from_secs(1),
        window: Duration::from_secs(3),
        up_cooldown: Duration::from_secs(2),
        down_cooldown: Duration::from_secs(4),
        fault_timeout: Duration::from_secs(3),
    }
}

/// The statistics at `t` ms into the scenario: c0's memory climbs from 30 to 90 over 20 s, then
/// falls; c1's requests in flight climb from 2 to 40 from two load balancers; member c0-2 falls
/// silent at 8 s; member c1-1 reports its ports closed from 15 s.
fn statistics(t: u64, at: u64) -> Vec<Event> {
    let mut out = Vec::new();
    let memory = if t < 20_000 {
        30.0 + 60.0 * t as f64 / 20_000.0
    } else {
        (90.0 - 6.0 * (t - 20_000) as f64 / 1_000.0).max(10.0)
    };
    for c in 0..2 {
        for m in 0..3 {
            if (c, m) == (0, 2) && t >= 8_000 {
                continue;
            }
            out.push(Event::MemberHealthStat(MemberHealth {
                instance: member_ref(c, m),
                memory_consumption: Some(if c == 0 { memory + m as f64 } else { 20.0 }),
                load_average: Some(if c == 0 { 25.0 } else { 15.0 + m as f64 }),
                ports_open: !((c, m) == (1, 1) && t >= 15_000),
                at_ms: at,
            }));
        }
    }
    for lb in ["lb-1", "lb-2"] {
        out.push(Event::InFlightRequests(RequestsInFlight {
            cluster_id: cluster_id(1),
            network_partition_id: "np".into(),
            cluster_instance_id: None,
            count: 1.0 + 19.0 * t as f64 / 30_000.0,
            served: 0,
            load_balancer_id: lb.into(),
            at_ms: at,
        }));
    }
    out
}

#[test]
fn an_event_processor_in_another_process_gives_the_same_decisions() {
    let state = state();
    let mut here = Engine::new(config());
    let mut cep = EventProcessor::new(config());
    let mut remote = Engine::remote(config());
    let t0 = 1_700_000_000_000u64;
    let (mut decisions, mut commands) = (0, 0);
    let mut faults = Vec::new();
    for step in 0..=150u64 {
        let t = step * 200;
        let now = t0 + t;
        for e in statistics(t, now) {
            here.feed(&e, now);
            cep.feed(&e, now);
        }
        if t % 1_000 != 0 {
            continue;
        }
        // Small events: the parts of one tick's predictions are put together by the receiver.
        for e in cep.predictions(now, 4) {
            let bytes = e.encode();
            let e = Event::decode(&bytes).unwrap();
            remote.feed(&e, now);
        }
        let a = here.round(&state, now);
        let b = remote.round(&state, now);
        assert_eq!(a.events, b.events, "decisions at {t} ms");
        assert_eq!(a.commands, b.commands, "commands at {t} ms");
        decisions += a
            .events
            .iter()
            .filter(|e| e.decision != crate::rules::Decision::Hold)
            .count();
        commands += a.commands.len();
        for c in &a.commands {
            if let nubo_events::ScaleCommand::MemberFault {
                member_id: member, ..
            } = c
            {
                faults.push((t, member.clone()));
            }
        }
    }
    assert!(decisions > 5, "the scenario scales: {decisions} decisions");
    assert!(commands > 5, "and commands: {commands}");
    let faulty: Vec<&str> = faults.iter().map(|(_, m)| m.as_str()).collect();
    assert!(
        faulty.contains(&"app.c0.php-2"),
        "silent member: {faults:?}"
    );
    assert!(faulty.contains(&"app.c1.php-1"), "ports closed: {faults:?}");
}

#[test]
fn a_remote_engine_finds_no_fault_while_no_predictions_arrive() {
    let state = state();
    let mut remote = Engine::remote(config());
    let t0 = 1_700_000_000_000u64;
    // Nothing for a minute: the event processor is down, not every member.
    for s in 0..60 {
        let round = remote.round(&state, t0 + s * 1_000);
        assert!(round.commands.is_empty(), "{:?}", round.commands);
    }
    // Predictions arrive, naming every member but one: that one is faulty once the timeout
    // passes with predictions arriving.
    let mut cep = EventProcessor::new(config());
    let mut fault = None;
    for s in 60..70 {
        let now = t0 + s * 1_000;
        for e in statistics(0, now) {
            if let Event::MemberHealthStat(h) = &e
                && h.instance.member_id == "app.c1.php-0"
            {
                continue;
            }
            cep.feed(&e, now);
        }
        for e in cep.predictions(now, 100) {
            remote.feed(&e, now);
        }
        let round = remote.round(&state, now);
        if let Some(nubo_events::ScaleCommand::MemberFault {
            member_id: member, ..
        }) = round
            .commands
            .iter()
            .find(|c| matches!(c, nubo_events::ScaleCommand::MemberFault { .. }))
        {
            fault.get_or_insert((s, member.clone()));
        }
    }
    let (s, member) = fault.expect("the silent member is found");
    assert_eq!(member, "app.c1.php-0");
    assert!(s >= 63, "not before the fault timeout: {s}");
}

/// The faults a direct engine reports over `seconds` of statistics that reach it `lag_ms` after
/// they were sent, with member c0-2 silent from 8 s: (second, member) of each.
fn faults_with_lag(
    lag_ms: impl Fn(u64) -> u64,
    seconds: std::ops::Range<u64>,
) -> Vec<(u64, String)> {
    let state = state();
    let mut engine = Engine::new(config());
    let t0 = 1_000_000;
    let mut found = Vec::new();
    for s in seconds {
        let now = t0 + s * 1_000;
        for e in statistics(s * 1_000, now - lag_ms(s)) {
            engine.feed(&e, now);
        }
        for c in engine.round(&state, now).commands {
            if let nubo_events::ScaleCommand::MemberFault { member_id, .. } = c {
                found.push((s, member_id));
            }
        }
    }
    found
}

/// When each member was first found faulty.
fn first(found: &[(u64, String)]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (s, m) in found {
        out.entry(m.clone()).or_insert(*s);
    }
    out
}

#[test]
fn a_lagging_statistics_path_holds_fault_detection() {
    // On time: the silent member (c0-2, from 8 s) is found once the 3 s timeout passes, and the
    // one reporting its ports closed (c1-1, from 15 s) at once.
    let on_time = first(&faults_with_lag(|_| 0, 0..20));
    assert_eq!(on_time["app.c0.php-2"], 11);
    assert_eq!(on_time["app.c1.php-1"], 15);
    // The same statistics taken in 2 s after they were sent (more than half the timeout): the
    // platform lags, and nobody is found faulty while it does.
    assert_eq!(faults_with_lag(|_| 2_000, 0..20), []);
    // Lagging until 11 s only: detection resumes a fault timeout after the lag was last seen
    // (14 s), and a member silent meanwhile is judged from then: found a timeout later.
    let resumed = first(&faults_with_lag(|s| if s < 12 { 2_000 } else { 0 }, 0..20));
    assert_eq!(resumed["app.c0.php-2"], 18, "{resumed:?}");
    assert_eq!(resumed["app.c1.php-1"], 15, "{resumed:?}");
}

#[test]
fn lost_statistics_hold_fault_detection_for_a_fault_timeout() {
    let state = state();
    let mut engine = Engine::new(config());
    let t0 = 2_000_000;
    let mut found = Vec::new();
    for s in 0..20u64 {
        let now = t0 + s * 1_000;
        if s == 10 {
            // The subscription says it lost statistics.
            engine.statistics_dropped(now);
        }
        for e in statistics(s * 1_000, now) {
            engine.feed(&e, now);
        }
        assert_eq!(engine.faults_held(now), (10..13).contains(&s), "at {s} s");
        for c in engine.round(&state, now).commands {
            if let nubo_events::ScaleCommand::MemberFault { member_id, .. } = c {
                found.push((s, member_id));
            }
        }
    }
    // c0-2 would be found at 11 s: held until 13 s.
    let found = first(&found);
    assert_eq!(found["app.c0.php-2"], 13);
    assert_eq!(found["app.c1.php-1"], 15);
}

#[test]
fn a_stalled_autoscaler_finds_nobody_faulty_when_it_runs_again() {
    let state = state();
    let mut engine = Engine::new(config());
    let t0 = 3_000_000;
    let mut faults = Vec::new();
    // Rounds every second until 5 s, then none for 10 s (the process did not run), then on.
    for s in (0..6).chain(16..30) {
        let now = t0 + s * 1_000;
        // The round comes first (when it runs again, before the members' next statistics):
        // every member looks silent for 10 s.
        for c in engine.round(&state, now).commands {
            if let nubo_events::ScaleCommand::MemberFault { member_id, .. } = c {
                faults.push((s, member_id));
            }
        }
        for e in statistics(2_000, now) {
            engine.feed(&e, now);
        }
    }
    assert_eq!(faults, [], "the silence was this process's own");
    assert!(engine.faults_held(t0 + 16_000));
    assert!(!engine.faults_held(t0 + 20_000));
}

/// Cluster c1 with a second instance `app-2` of one active member, in network partition `np`
/// (`same_np`) or `np2` (a burst).
fn two_instances(same_np: bool) -> ControllerState {
    let mut s = state();
    let np = if same_np { "np" } else { "np2" };
    let c = s.topology.clusters.get_mut(&cluster_id(1)).unwrap();
    c.instances.insert(
        "app-2".into(),
        ClusterInstance {
            instance_id: "app-2".into(),
            network_partition_id: np.into(),
            status: InstanceStatus::Active,
            min_members: 1,
            max_members: 6,
        },
    );
    let mut m = c.members.values().next().unwrap().clone();
    m.member_id = "app.c1.php-burst".into();
    m.cluster_instance_id = "app-2".into();
    m.network_partition_id = np.into();
    c.members.insert(m.member_id.clone(), m);
    s
}

fn rif(instance: Option<&str>, np: &str, count: f64, at: u64) -> Event {
    Event::InFlightRequests(RequestsInFlight {
        cluster_id: cluster_id(1),
        network_partition_id: np.into(),
        cluster_instance_id: instance.map(str::to_owned),
        count,
        served: 0,
        load_balancer_id: "lb-1".into(),
        at_ms: at,
    })
}

/// The predicted requests in flight of c1's instances after a round.
fn predicted(e: &mut Engine, state: &ControllerState, now: u64) -> BTreeMap<String, Option<f64>> {
    e.round(state, now)
        .events
        .into_iter()
        .filter(|ev| ev.cluster_id == cluster_id(1))
        .map(|ev| (ev.instance_id, ev.predicted.requests_in_flight))
        .collect()
}

#[test]
fn requests_in_flight_are_per_cluster_instance_and_a_whole_cluster_figure_is_split_by_active_members()
 {
    let t0 = 1_700_000_000_000u64;
    let feed = |e: &mut Engine, events: &[Event]| {
        for ev in events {
            e.feed(ev, t0);
        }
    };
    // A burst instance in np2: the first instance's load (reported for the whole cluster in np)
    // stays its own, and the burst instance's own figure is its alone.
    let state = two_instances(false);
    let mut e = Engine::new(config());
    feed(
        &mut e,
        &[
            rif(None, "np", 30.0, t0),
            rif(Some("app-2"), "np2", 2.0, t0),
        ],
    );
    let round = e.round(&state, t0);
    let of = |i: &str| {
        round
            .events
            .iter()
            .find(|ev| ev.cluster_id == cluster_id(1) && ev.instance_id == i)
            .unwrap()
            .clone()
    };
    assert_eq!(of("app-1").predicted.requests_in_flight, Some(30.0));
    assert_eq!(of("app-2").predicted.requests_in_flight, Some(2.0));
    // So the burst instance, at its minimum of 1 with 2 requests (threshold 10), may be scaled in
    // while the first keeps its 3 members for its 30: had each seen the cluster's 32 (Stratos'
    // unsplit figure), the burst instance would have scaled up to 4.
    assert_eq!(of("app-1").required.requests_in_flight, Some(3));
    assert_eq!(of("app-2").required.requests_in_flight, Some(1));
    assert_eq!(of("app-2").decision, crate::rules::Decision::AtMin);
    // Two instances in one network partition (3 and 1 active members): a figure for the whole
    // cluster there is split 3 to 1, as Stratos does; one tagged with an instance is its own.
    let state = two_instances(true);
    let mut e = Engine::new(config());
    feed(
        &mut e,
        &[rif(None, "np", 40.0, t0), rif(Some("app-1"), "np", 5.0, t0)],
    );
    let p = predicted(&mut e, &state, t0);
    assert_eq!(p["app-1"], Some(35.0), "{p:?}");
    assert_eq!(p["app-2"], Some(10.0), "{p:?}");
    // Through an event processor in another process: the same figures.
    let mut cep = EventProcessor::new(config());
    let mut remote = Engine::remote(config());
    for ev in [rif(None, "np", 40.0, t0), rif(Some("app-1"), "np", 5.0, t0)] {
        cep.feed(&ev, t0);
    }
    for ev in cep.predictions(t0, 10) {
        remote.feed(&Event::decode(&ev.encode()).unwrap(), t0);
    }
    assert_eq!(predicted(&mut remote, &state, t0), p);
}
