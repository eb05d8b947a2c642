//! The state machine's tests: deployments, member lifecycle, scaling, termination behaviours,
//! group scaling and bursting, without sockets or clocks.

use serde_json::json;

use super::*;
use nubo_plan::{PlanInputs, plan};

fn deployment(min: u32, algo: &str, partition_max: Option<u32>) -> DeploymentPlan {
    let mut i = PlanInputs::default();
    for ty in ["db", "web"] {
        i.cartridges.insert(
            ty.into(),
            serde_json::from_value(json!({"type": ty, "category": "x", "host": "localhost",
            "portMapping": [{"protocol": "http", "port": 80, "proxyPort": 8280}],
            "iaasProvider": [{"type": "local", "imageId": format!("run {ty}")}]}))
            .unwrap(),
        );
    }
    let mut parts = vec![json!({"id": "p1"}), json!({"id": "p2"})];
    if let Some(m) = partition_max {
        parts = vec![
            json!({"id": "p1", "partitionMax": m}),
            json!({"id": "p2", "partitionMax": m}),
        ];
    }
    i.deployment_policies.insert(
        "dp".into(),
        serde_json::from_value(json!({"id": "dp", "networkPartitions": [
        {"id": "np", "partitionAlgo": algo, "partitions": parts}]}))
        .unwrap(),
    );
    i.network_partitions.insert(
        "np".into(),
        serde_json::from_value(
            json!({"id": "np", "provider": "local", "partitions": [{"id": "p1"}, {"id": "p2"}]}),
        )
        .unwrap(),
    );
    let app = serde_json::from_value(json!({"applicationId": "app", "components": {"cartridges": [
        {"type": "db", "cartridgeMin": min, "cartridgeMax": 10, "subscribableInfo": {"alias": "db", "autoscalingPolicy": "a", "deploymentPolicy": "dp"}},
        {"type": "web", "cartridgeMin": min, "cartridgeMax": 10, "subscribableInfo": {"alias": "web", "autoscalingPolicy": "a", "deploymentPolicy": "dp"}}],
        "dependencies": {"startupOrders": [{"aliases": ["cartridge.db", "cartridge.web"]}]}}})).unwrap();
    let policy = serde_json::from_value(
        json!({"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]}),
    )
    .unwrap();
    plan(&app, &policy, -1234, &i).unwrap()
}

fn starts(actions: &[Action]) -> Vec<Member> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Start { member, .. } => Some(member.clone()),
            _ => None,
        })
        .collect()
}

fn terminates(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Terminate { member_id, .. } => Some(member_id.clone()),
            _ => None,
        })
        .collect()
}

fn published(actions: &[Action]) -> Vec<&'static str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish(e) => Some(e.name()),
            _ => None,
        })
        .collect()
}

fn r(m: &Member) -> InstanceRef {
    m.into()
}

/// Drives a member from Created to Active as the IaaS and its agent would.
fn activate(s: &mut ControllerState, now: u64, m: &Member) -> Vec<Action> {
    let mut out = s.step(
        now,
        Input::Started {
            member_id: m.member_id.clone(),
            ip: "127.0.0.1".into(),
            ports: vec![],
        },
    );
    out.extend(s.step(now, Input::Event(Event::InstanceStarted(r(m)))));
    out.extend(s.step(now, Input::Event(Event::InstanceActivated(r(m)))));
    out
}

#[test]
fn deploy_starts_the_minimum_in_startup_order_and_statuses_follow() {
    let mut s = ControllerState::default();
    let out = s.step(0, Input::Deploy(deployment(2, "round-robin", None)));
    let db = starts(&out);
    assert_eq!(
        db.len(),
        2,
        "only the first cluster of the startup order starts"
    );
    assert!(db.iter().all(|m| m.cluster_id == "app.db.db.domain"));
    let parts: Vec<&str> = db.iter().map(|m| m.partition_id.as_str()).collect();
    assert_eq!(parts, ["p1", "p2"], "round-robin spreads over partitions");
    assert!(published(&out).contains(&"ApplicationClustersCreated"));
    assert!(out.contains(&Action::ApplicationStatus {
        application_id: "app".into(),
        status: "Deployed".into()
    }));
    // One member active is not enough for min 2; nothing else starts.
    let out = activate(&mut s, 10, &db[0]);
    assert!(starts(&out).is_empty());
    assert_eq!(
        published(&out),
        ["MemberInitialized", "MemberStarted", "MemberActivated"]
    );
    // The second activation makes the db instance Active, and web starts.
    let out = activate(&mut s, 20, &db[1]);
    assert!(published(&out).contains(&"ClusterInstanceStatusChanged"));
    let web = starts(&out);
    assert_eq!(web.len(), 2);
    assert!(web.iter().all(|m| m.cluster_id == "app.web.web.domain"));
    activate(&mut s, 30, &web[0]);
    let out = activate(&mut s, 30, &web[1]);
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Publish(Event::ApplicationInstanceStatusChanged {
            status: InstanceStatus::Active,
            ..
        })
    )));
    assert_eq!(
        s.deployments["app"].instances[0].status,
        InstanceStatus::Active
    );
}

#[test]
fn a_dead_active_member_is_replaced_at_once_and_a_failing_one_with_backoff() {
    let mut s = ControllerState::default();
    let out = s.step(0, Input::Deploy(deployment(1, "one-after-another", None)));
    let db = starts(&out)[0].clone();
    assert_eq!(db.partition_id, "p1");
    activate(&mut s, 1, &db);
    let out = s.step(
        2,
        Input::Event(Event::MemberProcessExited {
            member_id: db.member_id.clone(),
            code: None,
            signal: Some(9),
            reason: "killed".into(),
        }),
    );
    assert!(published(&out).contains(&"MemberTerminated"));
    let replacement = starts(&out);
    assert_eq!(
        replacement.len(),
        1,
        "an active member that dies is replaced in the same step"
    );
    // The replacement fails before becoming active: retried only after the backoff.
    let out = s.step(
        3,
        Input::StartFailed {
            member_id: replacement[0].member_id.clone(),
            reason: "no such command".into(),
        },
    );
    assert!(starts(&out).is_empty(), "no tight loop");
    assert!(starts(&s.step(3 + FIRST_BACKOFF_MS - 1, Input::Tick)).is_empty());
    let out = s.step(3 + FIRST_BACKOFF_MS, Input::Tick);
    let again = starts(&out);
    assert_eq!(again.len(), 1);
    s.step(
        4 + FIRST_BACKOFF_MS,
        Input::StartFailed {
            member_id: again[0].member_id.clone(),
            reason: "no such command".into(),
        },
    );
    let b = &s.deployments["app"].backoff[&InstanceKey::new("app.db.db.domain", "app-1")];
    assert_eq!(b.failures, 2);
    assert_eq!(
        b.not_before_ms,
        4 + 3 * FIRST_BACKOFF_MS,
        "the delay doubles"
    );
    assert_eq!(b.last_reason.as_deref(), Some("no such command"));
}

#[test]
fn members_failing_together_lengthen_the_backoff_once() {
    let mut s = ControllerState::default();
    let out = s.step(0, Input::Deploy(deployment(3, "round-robin", None)));
    let db = starts(&out);
    assert_eq!(db.len(), 3);
    for (i, m) in db.iter().enumerate() {
        let out = s.step(
            10 + i as u64,
            Input::StartFailed {
                member_id: m.member_id.clone(),
                reason: "boom".into(),
            },
        );
        assert!(starts(&out).is_empty(), "nothing retried during the delay");
    }
    let b = &s.deployments["app"].backoff[&InstanceKey::new("app.db.db.domain", "app-1")];
    assert_eq!(
        (b.failures, b.not_before_ms),
        (1, 10 + FIRST_BACKOFF_MS),
        "one round failed, whatever the number of its members"
    );
    // The next round: all three again, and they fail together again.
    let again = starts(&s.step(10 + FIRST_BACKOFF_MS, Input::Tick));
    assert_eq!(again.len(), 3, "the whole round is retried at once");
    for m in &again {
        s.step(
            20 + FIRST_BACKOFF_MS,
            Input::StartFailed {
                member_id: m.member_id.clone(),
                reason: "boom".into(),
            },
        );
    }
    let b = &s.deployments["app"].backoff[&InstanceKey::new("app.db.db.domain", "app-1")];
    assert_eq!(
        (b.failures, b.not_before_ms),
        (2, 20 + 3 * FIRST_BACKOFF_MS)
    );
}

#[test]
fn a_restarted_controller_announces_the_statuses_of_members_on_their_way() {
    let mut s = ControllerState::default();
    let out = s.step(0, Input::Deploy(deployment(3, "round-robin", None)));
    let db = starts(&out);
    s.step(
        1,
        Input::Started {
            member_id: db[0].member_id.clone(),
            ip: "127.0.0.1".into(),
            ports: vec![],
        },
    );
    activate(&mut s, 1, &db[1]);
    s.step(
        1,
        Input::Started {
            member_id: db[2].member_id.clone(),
            ip: "127.0.0.1".into(),
            ports: vec![],
        },
    );
    s.step(1, Input::Event(Event::InstanceStarted(r(&db[2]))));
    let running: BTreeSet<String> = db.iter().map(|m| m.member_id.clone()).collect();
    let said: Vec<(&str, String)> = s
        .restart_announcements(&running)
        .iter()
        .map(|e| match e {
            Event::MemberInitialized(c) | Event::MemberStarted(c) => {
                (e.name(), c.member.member_id.clone())
            }
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        said,
        [
            ("MemberInitialized", db[0].member_id.clone()),
            ("MemberStarted", db[2].member_id.clone())
        ],
        "the Active member is not announced"
    );
    // What does not run is not announced: it will be replaced.
    assert!(s.restart_announcements(&BTreeSet::new()).is_empty());
    assert!(s.members_created().is_empty());
}

#[test]
fn an_active_member_reported_failed_is_replaced_before_its_process_exits() {
    let mut s = ControllerState::default();
    let out = s.step(0, Input::Deploy(deployment(1, "round-robin", None)));
    let db = starts(&out)[0].clone();
    activate(&mut s, 1, &db);
    let out = s.step(
        2,
        Input::Event(Event::InstanceFailed {
            instance: r(&db),
            reason: "the workload exited".into(),
        }),
    );
    assert_eq!(terminates(&out), vec![db.member_id.clone()]);
    assert_eq!(
        starts(&out).len(),
        1,
        "the replacement starts with the failure report"
    );
    // Its exit then adds no second replacement.
    let out = s.step(
        3,
        Input::Event(Event::MemberProcessExited {
            member_id: db.member_id.clone(),
            code: Some(3),
            signal: None,
            reason: "exited".into(),
        }),
    );
    assert!(starts(&out).is_empty(), "{out:?}");
}

#[test]
fn a_member_fault_replaces_an_active_member_once_and_nothing_else() {
    let mut s = ControllerState::default();
    let out = s.step(0, Input::Deploy(deployment(1, "round-robin", None)));
    let db = starts(&out)[0].clone();
    let fault = |id: &str| {
        Input::Scale(ScaleCommand::MemberFault {
            member_id: id.to_owned(),
            reason: "no health statistics for 5 s".into(),
        })
    };
    // Not Active yet: a fault is not this member's (the activation timeout covers it).
    assert!(terminates(&s.step(1, fault(&db.member_id))).is_empty());
    activate(&mut s, 2, &db);
    let out = s.step(3, fault(&db.member_id));
    assert_eq!(terminates(&out), vec![db.member_id.clone()]);
    assert_eq!(starts(&out).len(), 1, "a replacement at once");
    let failure = s.topology.clusters["app.db.db.domain"].members[&db.member_id]
        .failure
        .clone();
    assert_eq!(
        failure.as_deref(),
        Some("member fault: no health statistics for 5 s")
    );
    // The same verdict again changes nothing.
    let out = s.step(4, fault(&db.member_id));
    assert!(
        terminates(&out).is_empty() && starts(&out).is_empty(),
        "{out:?}"
    );
}

#[test]
fn scaling_up_and_down_between_the_minimum_and_the_maximum() {
    let mut s = ControllerState::default();
    let out = s.step(0, Input::Deploy(deployment(1, "round-robin", None)));
    let db = starts(&out)[0].clone();
    activate(&mut s, 1, &db);
    let scale = |count| {
        Input::Scale(ScaleCommand::ScaleTo {
            cluster_id: "app.db.db.domain".into(),
            instance_id: "app-1".into(),
            count,
        })
    };
    let out = s.step(2, scale(3));
    assert_eq!(starts(&out).len(), 2, "1 → 3");
    let out = s.step(3, scale(50));
    assert_eq!(starts(&out).len(), 7, "capped at the maximum of 10");
    let out = s.step(4, scale(0));
    assert!(
        starts(&out).is_empty() && terminates(&out).is_empty(),
        "ScaleTo never removes members"
    );
    // Scale down: the named member is drained (cleanup through its agent) and not replaced.
    let down = |m: Option<String>| {
        Input::Scale(ScaleCommand::ScaleDown {
            cluster_id: "app.db.db.domain".into(),
            instance_id: "app-1".into(),
            member_id: m,
        })
    };
    let out = s.step(5, down(Some(db.member_id.clone())));
    assert!(
        published(&out).contains(&"InstanceCleanupMember"),
        "{out:?}"
    );
    s.step(6, Input::Event(Event::InstanceMaintenanceMode(r(&db))));
    s.step(7, Input::Event(Event::InstanceReadyToShutdown(r(&db))));
    let out = s.step(
        8,
        Input::Event(Event::MemberProcessExited {
            member_id: db.member_id.clone(),
            code: Some(0),
            signal: None,
            reason: "stopped".into(),
        }),
    );
    assert!(
        starts(&out).is_empty(),
        "a member scaled down is not replaced"
    );
    assert_eq!(
        s.deployments["app"].desired[&InstanceKey::new("app.db.db.domain", "app-1")],
        9
    );
    // Down to the minimum, never below.
    let mut s = ControllerState::default();
    let out = s.step(0, Input::Deploy(deployment(1, "round-robin", None)));
    activate(&mut s, 1, &starts(&out)[0]);
    let out = s.step(2, down(None));
    assert!(
        published(&out).is_empty() && terminates(&out).is_empty(),
        "at the minimum: nothing"
    );
}

#[test]
fn partition_max_caps_placement() {
    let mut s = ControllerState::default();
    let out = s.step(
        0,
        Input::Deploy(deployment(3, "one-after-another", Some(1))),
    );
    let parts: Vec<String> = starts(&out).into_iter().map(|m| m.partition_id).collect();
    assert_eq!(
        parts,
        ["p1", "p2"],
        "two partitions of max 1: only two members"
    );
}

#[test]
fn an_unanswered_clean_up_is_sent_again_until_the_agent_answers() {
    let mut s = ControllerState::default();
    let out = s.step(0, Input::Deploy(deployment(1, "round-robin", None)));
    let db = starts(&out)[0].clone();
    activate(&mut s, 1, &db);
    let undeploy = Input::Undeploy {
        application_id: "app".into(),
        force: false,
    };
    let cleanups = |out: &[Action]| {
        published(out)
            .iter()
            .filter(|e| **e == "InstanceCleanupMember")
            .count()
    };
    assert_eq!(cleanups(&s.step(10, undeploy)), 1);
    assert_eq!(cleanups(&s.step(1_000, Input::Tick)), 0, "not yet");
    // The agent was away from the bus: the request goes again, every CLEANUP_RESEND_MS.
    assert_eq!(cleanups(&s.step(10 + CLEANUP_RESEND_MS, Input::Tick)), 1);
    assert_eq!(cleanups(&s.step(11 + CLEANUP_RESEND_MS, Input::Tick)), 0);
    assert_eq!(
        cleanups(&s.step(10 + 2 * CLEANUP_RESEND_MS, Input::Tick)),
        1
    );
    // It answers: no more requests.
    s.step(5_000, Input::Event(Event::InstanceMaintenanceMode(r(&db))));
    assert_eq!(cleanups(&s.step(9_000, Input::Tick)), 0);
    assert_eq!(cleanups(&s.step(15_000, Input::Tick)), 0);
}

#[test]
fn graceful_and_forced_undeploy() {
    let mut s = ControllerState::default();
    let out = s.step(0, Input::Deploy(deployment(1, "round-robin", None)));
    let db = starts(&out)[0].clone();
    let out = activate(&mut s, 1, &db);
    let web = starts(&out)[0].clone();
    // web is still starting when the undeploy comes.
    s.step(
        2,
        Input::Started {
            member_id: web.member_id.clone(),
            ip: "127.0.0.1".into(),
            ports: vec![],
        },
    );
    let out = s.step(
        3,
        Input::Undeploy {
            application_id: "app".into(),
            force: false,
        },
    );
    assert!(
        published(&out).contains(&"InstanceCleanupMember"),
        "the active member is cleaned up by its agent"
    );
    assert_eq!(
        terminates(&out),
        vec![web.member_id.clone()],
        "the starting one is terminated at once"
    );
    assert!(starts(&out).is_empty(), "no replacements while undeploying");
    s.step(
        4,
        Input::Event(Event::MemberProcessExited {
            member_id: web.member_id.clone(),
            code: Some(0),
            signal: None,
            reason: "terminated".into(),
        }),
    );
    s.step(5, Input::Event(Event::InstanceMaintenanceMode(r(&db))));
    let out = s.step(6, Input::Event(Event::InstanceReadyToShutdown(r(&db))));
    assert_eq!(terminates(&out), vec![db.member_id.clone()]);
    let out = s.step(
        7,
        Input::Event(Event::MemberProcessExited {
            member_id: db.member_id.clone(),
            code: Some(0),
            signal: None,
            reason: "terminated".into(),
        }),
    );
    assert!(published(&out).contains(&"ApplicationClustersRemoved"));
    assert!(out.contains(&Action::ApplicationStatus {
        application_id: "app".into(),
        status: "Created".into()
    }));
    assert!(s.topology.clusters.is_empty() && s.deployments.is_empty());
    // Forced: everything terminated at once.
    let out = s.step(10, Input::Deploy(deployment(1, "round-robin", None)));
    let db = starts(&out)[0].clone();
    activate(&mut s, 11, &db);
    let out = s.step(
        12,
        Input::Undeploy {
            application_id: "app".into(),
            force: true,
        },
    );
    assert!(terminates(&out).contains(&db.member_id));
    assert!(!published(&out).contains(&"InstanceCleanupMember"));
}

#[test]
fn a_drain_that_never_ends_is_cut_short() {
    let mut s = ControllerState::default();
    let out = s.step(0, Input::Deploy(deployment(1, "round-robin", None)));
    let db = starts(&out)[0].clone();
    activate(&mut s, 1, &db);
    s.step(
        2,
        Input::Undeploy {
            application_id: "app".into(),
            force: false,
        },
    );
    assert!(terminates(&s.step(2 + DRAIN_TIMEOUT_MS, Input::Tick)).is_empty());
    assert_eq!(
        terminates(&s.step(3 + DRAIN_TIMEOUT_MS, Input::Tick)),
        vec![db.member_id.clone()]
    );
}

#[test]
fn illegal_transitions_are_refused() {
    let mut s = ControllerState::default();
    let out = s.step(0, Input::Deploy(deployment(1, "round-robin", None)));
    let db = starts(&out)[0].clone();
    // Ready to shut down straight from Created is not a lifecycle step.
    let out = s.step(1, Input::Event(Event::InstanceMaintenanceMode(r(&db))));
    assert!(published(&out).is_empty());
    assert_eq!(
        s.topology.member(&db.member_id).unwrap().status,
        MemberStatus::Created
    );
}

#[test]
fn the_state_survives_serialization() {
    let mut s = ControllerState::default();
    s.step(0, Input::Deploy(deployment(2, "round-robin", None)));
    let back: ControllerState = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
    assert_eq!(back, s);
}

/// `front` (application level) starts after group `grp` (db, then web); `grp` has the given
/// termination behaviour and group instance bounds; the application policy's network
/// partitions come in the given groups.
fn tree(termination: &str, group_max: u32, np_groups: &str) -> DeploymentPlan {
    let mut i = PlanInputs::default();
    for ty in ["db", "web", "front"] {
        i.cartridges.insert(
            ty.into(),
            serde_json::from_value(json!({"type": ty, "category": "x",
            "iaasProvider": [{"type": "local", "imageId": format!("run {ty}")}]}))
            .unwrap(),
        );
    }
    i.groups.insert(
        "g".into(),
        serde_json::from_value(json!({"name": "g", "cartridges": ["db", "web"],
        "dependencies": {"startupOrders": [{"aliases": ["cartridge.db", "cartridge.web"]}],
            "terminationBehaviour": termination}}))
        .unwrap(),
    );
    let nps: Vec<&str> = np_groups.split([',', '|']).collect();
    i.deployment_policies.insert("dp".into(), serde_json::from_value(json!({"id": "dp",
        "networkPartitions": nps.iter().map(|n| json!({"id": n, "partitionAlgo": "one-after-another", "partitions": [{"id": "p1"}]})).collect::<Vec<_>>()})).unwrap());
    for n in &nps {
        i.network_partitions.insert(
            (*n).into(),
            serde_json::from_value(
                json!({"id": n, "provider": "local", "partitions": [{"id": "p1"}]}),
            )
            .unwrap(),
        );
    }
    let app = serde_json::from_value(json!({"applicationId": "app", "components": {
        "groups": [{"name": "g", "alias": "grp", "groupMinInstances": 1, "groupMaxInstances": group_max, "deploymentPolicy": "dp", "cartridges": [
            {"type": "db", "cartridgeMin": 1, "cartridgeMax": 2, "subscribableInfo": {"alias": "db", "autoscalingPolicy": "a"}},
            {"type": "web", "cartridgeMin": 1, "cartridgeMax": 2, "subscribableInfo": {"alias": "web", "autoscalingPolicy": "a"}}]}],
        "cartridges": [{"type": "front", "cartridgeMin": 1, "cartridgeMax": 2, "subscribableInfo": {"alias": "front", "autoscalingPolicy": "a", "deploymentPolicy": "dp"}}],
        "dependencies": {"startupOrders": [{"aliases": ["group.grp", "cartridge.front"]}]}}})).unwrap();
    let policy = serde_json::from_value(json!({"id": "ap", "algorithm": "one-after-another",
        "networkPartitions": nps, "properties": [{"name": "networkPartitionGroups", "value": np_groups}]}))
    .unwrap();
    plan(&app, &policy, -1234, &i).unwrap()
}

/// Activates every member started by `out`, and the members those activations start, until
/// none is left; returns every member activated, in order.
fn run_up(s: &mut ControllerState, now: u64, out: Vec<Action>) -> Vec<Member> {
    let mut todo = starts(&out);
    let mut done = Vec::new();
    while let Some(m) = todo.first().cloned() {
        todo.remove(0);
        todo.extend(starts(&activate(s, now, &m)));
        done.push(m);
    }
    done
}

fn exit(s: &mut ControllerState, now: u64, m: &Member) -> Vec<Action> {
    s.step(
        now,
        Input::Event(Event::MemberProcessExited {
            member_id: m.member_id.clone(),
            code: None,
            signal: Some(9),
            reason: "killed".into(),
        }),
    )
}

fn cleaned(out: &[Action]) -> BTreeSet<String> {
    out.iter()
        .filter_map(|a| match a {
            Action::Publish(Event::InstanceCleanupMember { member_id }) => Some(member_id.clone()),
            _ => None,
        })
        .collect()
}

fn instance_status(s: &ControllerState, cluster: &str, instance: &str) -> Option<InstanceStatus> {
    s.topology.clusters[cluster]
        .instances
        .get(instance)
        .map(|i| i.status)
}

fn alias(m: &Member) -> &str {
    m.cluster_id.split('.').nth(1).unwrap()
}

#[test]
fn termination_behaviours_and_the_restart_in_startup_order() {
    for (behaviour, fault_in, terminated) in [
        ("terminate-none", "web", vec![]),
        ("terminate-dependents", "db", vec!["web"]),
        ("terminate-dependents", "web", vec![]),
        ("terminate-all", "web", vec!["db"]),
    ] {
        let mut s = ControllerState::default();
        let out = s.step(0, Input::Deploy(tree(behaviour, 1, "np")));
        let up = run_up(&mut s, 1, out);
        assert_eq!(
            up.iter().map(alias).collect::<Vec<_>>(),
            ["db", "web", "front"],
            "startup order"
        );
        assert_eq!(
            s.deployments["app"].instances[0].status,
            InstanceStatus::Active
        );
        let victim = up.iter().find(|m| alias(m) == fault_in).unwrap();
        let out = exit(&mut s, 2, victim);
        let cleaned: Vec<String> = cleaned(&out)
            .into_iter()
            .map(|id| alias(s.topology.member(&id).unwrap()).to_owned())
            .collect();
        assert_eq!(
            cleaned, terminated,
            "{behaviour}, {fault_in} lost its member"
        );
        assert!(
            !cleaned.contains(&"front".to_owned()),
            "the application level is not touched"
        );
        let restarted = starts(&out);
        // terminate-none, and terminate-dependents for a child nothing depends on (Stratos
        // terminates nothing then): only the lost member is replaced.
        if behaviour == "terminate-none" || terminated.is_empty() {
            assert_eq!(
                restarted.len(),
                1,
                "{behaviour}, {fault_in}: only the lost member is replaced"
            );
            assert_eq!(
                instance_status(&s, &format!("app.{fault_in}.{fault_in}.domain"), "app-1"),
                Some(InstanceStatus::Inactive),
                "{behaviour}, {fault_in}: not terminated"
            );
            continue;
        }
        // Every terminated cluster instance goes Terminating; nothing starts until the
        // terminated members are gone.
        let cluster = |a: &str| format!("app.{a}.{a}.domain");
        let terminating: Vec<String> = out
            .iter()
            .filter_map(|a| match a {
                Action::Publish(Event::ClusterInstanceStatusChanged {
                    cluster_id,
                    status: InstanceStatus::Terminating,
                    ..
                }) => Some(cluster_id.clone()),
                _ => None,
            })
            .collect();
        let mut want: Vec<String> = terminated
            .iter()
            .chain([&fault_in])
            .map(|a| cluster(a))
            .collect();
        want.sort();
        let mut got = terminating.clone();
        got.sort();
        assert_eq!(got, want, "{behaviour}");
        assert!(restarted.is_empty(), "{behaviour}: {restarted:?}");
        assert_eq!(
            s.deployments["app"].instances[0].status,
            InstanceStatus::Inactive
        );
        let mut out = s.step(3, Input::Tick);
        for id in cleaned_ids(&s, &terminated) {
            let m = s.topology.member(&id).unwrap().clone();
            s.step(4, Input::Event(Event::InstanceReadyToShutdown(r(&m))));
            out.extend(exit(&mut s, 5, &m));
        }
        out.extend(s.step(6, Input::Tick));
        // The restart: in startup order, the first of the terminated clusters first.
        let again = run_up(&mut s, 7, out);
        let mut want: Vec<&str> = vec![fault_in];
        want.extend(terminated.iter().copied());
        want.sort_by_key(|a| ["db", "web"].iter().position(|x| x == a));
        assert_eq!(
            again.iter().map(alias).collect::<Vec<_>>(),
            want,
            "{behaviour}"
        );
        for a in ["db", "web", "front"] {
            assert_eq!(
                instance_status(&s, &cluster(a), "app-1"),
                Some(InstanceStatus::Active)
            );
        }
        assert_eq!(
            s.deployments["app"].instances[0].status,
            InstanceStatus::Active
        );
    }
}

fn cleaned_ids(s: &ControllerState, aliases: &[&str]) -> Vec<String> {
    s.topology
        .clusters
        .values()
        .flat_map(|c| c.members.values())
        .filter(|m| aliases.contains(&alias(m)) && m.failure.is_some())
        .map(|m| m.member_id.clone())
        .collect()
}

#[test]
fn bursting_opens_the_next_network_partition_group_and_closes_it_when_load_falls() {
    let mut s = ControllerState::default();
    let out = s.step(
        0,
        Input::Deploy(tree("terminate-none", 1, "np1|np2,np3|np4")),
    );
    let up = run_up(&mut s, 1, out);
    assert_eq!(
        up.len(),
        6,
        "two application instances (np1, np2) of three clusters"
    );
    let full = Input::Scale(ScaleCommand::BeyondMax {
        cluster_id: "app.front.front.domain".into(),
        instance_id: "app-1".into(),
    });
    let out = s.step(2, full.clone());
    let ids: Vec<(String, String)> = s.deployments["app"]
        .instances
        .iter()
        .map(|i| (i.instance_id.clone(), i.network_partition_id.clone()))
        .collect();
    assert_eq!(
        ids,
        [
            ("app-1", "np1"),
            ("app-2", "np2"),
            ("app-3", "np3"),
            ("app-4", "np4")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    // The new instances start like the first ones: db first.
    let started = starts(&out);
    assert_eq!(started.iter().map(alias).collect::<Vec<_>>(), ["db", "db"]);
    assert_eq!(started[0].network_partition_id, "np3");
    // Nothing more while they are pending.
    assert!(starts(&s.step(3, full.clone())).is_empty());
    assert_eq!(s.deployments["app"].burst_level, 1);
    run_up(&mut s, 4, out);
    assert!(
        s.deployments["app"]
            .instances
            .iter()
            .all(|i| i.status == InstanceStatus::Active)
    );
    // No network partition left: nothing.
    assert!(s.step(5, full).iter().all(|a| matches!(a, Action::Persist)));
    // Load fell: an instance started at deployment stays; the burst ones close.
    let scale_in = |id: &str| {
        Input::Scale(ScaleCommand::ScaleIn {
            application_id: "app".into(),
            instance_id: id.into(),
        })
    };
    assert!(cleaned(&s.step(6, scale_in("app-1"))).is_empty());
    let out = s.step(7, scale_in("app-3"));
    assert_eq!(cleaned(&out).len(), 3, "app-3's three members drain");
    let members: Vec<Member> = s
        .topology
        .clusters
        .values()
        .flat_map(|c| c.members.values())
        .filter(|m| m.cluster_instance_id == "app-3")
        .cloned()
        .collect();
    for m in &members {
        exit(&mut s, 8, m);
    }
    let ids: Vec<&str> = s.deployments["app"]
        .instances
        .iter()
        .map(|i| i.instance_id.as_str())
        .collect();
    assert_eq!(ids, ["app-1", "app-2", "app-4"]);
    assert_eq!(s.deployments["app"].burst_level, 1, "app-4 still open");
    s.step(9, scale_in("app-4"));
    let members: Vec<Member> = s
        .topology
        .clusters
        .values()
        .flat_map(|c| c.members.values())
        .filter(|m| m.cluster_instance_id == "app-4")
        .cloned()
        .collect();
    for m in &members {
        exit(&mut s, 10, m);
    }
    assert_eq!(s.deployments["app"].instances.len(), 2);
    assert_eq!(
        s.deployments["app"].burst_level, 0,
        "closed: the next burst reopens np3|np4"
    );
    assert!(
        starts(&s.step(11, Input::Tick)).is_empty(),
        "closed instances are not restarted"
    );
}

#[test]
fn group_scaling_adds_a_group_instance_up_to_its_maximum_then_bursts() {
    let mut s = ControllerState::default();
    let out = s.step(0, Input::Deploy(tree("terminate-none", 2, "np1,np2")));
    run_up(&mut s, 1, out);
    let full = Input::Scale(ScaleCommand::BeyondMax {
        cluster_id: "app.web.web.domain".into(),
        instance_id: "app-1".into(),
    });
    let out = s.step(2, full.clone());
    let started = starts(&out);
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(
        (alias(&started[0]), started[0].cluster_instance_id.as_str()),
        ("db", "app-1.grp-2")
    );
    let again = starts(&s.step(3, full.clone()));
    assert!(again.is_empty(), "one group instance at a time: {again:?}");
    let up = run_up(&mut s, 4, out);
    assert_eq!(
        up.iter().map(alias).collect::<Vec<_>>(),
        ["db", "web"],
        "the group's startup order"
    );
    // The group is at its maximum (2): the application bursts into np2.
    let out = s.step(5, full);
    assert_eq!(starts(&out).len(), 1);
    assert_eq!(starts(&out)[0].network_partition_id, "np2");
    // The extra group instance scales in; the first never does.
    let scale_in = |id: &str| {
        Input::Scale(ScaleCommand::ScaleIn {
            application_id: "app".into(),
            instance_id: id.into(),
        })
    };
    assert!(cleaned(&s.step(6, scale_in("app-1"))).is_empty());
    assert_eq!(cleaned(&s.step(7, scale_in("app-1.grp-2"))).len(), 2);
    assert_eq!(
        s.deployments["app"].group_numbers("app-1", &["grp".to_owned()]),
        [1]
    );
}

/// The group instance events in `out`: (instance id, status).
fn group_events(out: &[Action]) -> Vec<(String, InstanceStatus)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Publish(Event::ApplicationInstanceStatusChanged {
                instance_id,
                group_alias: Some(g),
                status,
                ..
            }) if g == "grp" => Some((instance_id.clone(), *status)),
            _ => None,
        })
        .collect()
}

#[test]
fn group_instances_go_through_stratos_group_lifecycle_with_an_event_per_change() {
    let grp = |id: &str| group_status_key(&["grp".to_owned()], id);
    let mut s = ControllerState::default();
    let out = s.step(0, Input::Deploy(tree("terminate-none", 2, "np1,np2")));
    assert_eq!(
        group_events(&out),
        [("app-1".to_owned(), InstanceStatus::Created)]
    );
    let up = run_up(&mut s, 1, out);
    assert_eq!(
        s.deployments["app"].group_status[&grp("app-1")],
        InstanceStatus::Active
    );
    // A member of the group lost: the group instance is Inactive, then Active once replaced.
    let victim = up.iter().find(|m| alias(m) == "db").unwrap();
    let out = exit(&mut s, 2, victim);
    assert!(
        group_events(&out).contains(&("app-1".to_owned(), InstanceStatus::Inactive)),
        "{:?}",
        group_events(&out)
    );
    run_up(&mut s, 3, out);
    assert_eq!(
        s.deployments["app"].group_status[&grp("app-1")],
        InstanceStatus::Active
    );
    // Group scaling: a second instance, Created then Active; scaled in: Terminating, then
    // Terminated once its members are gone.
    let full = Input::Scale(ScaleCommand::BeyondMax {
        cluster_id: "app.web.web.domain".into(),
        instance_id: "app-1".into(),
    });
    let out = s.step(4, full);
    assert_eq!(
        group_events(&out),
        [("app-1.grp-2".to_owned(), InstanceStatus::Created)]
    );
    run_up(&mut s, 5, out);
    assert_eq!(
        s.deployments["app"].group_status[&grp("app-1.grp-2")],
        InstanceStatus::Active
    );
    let out = s.step(
        6,
        Input::Scale(ScaleCommand::ScaleIn {
            application_id: "app".into(),
            instance_id: "app-1.grp-2".into(),
        }),
    );
    assert_eq!(
        group_events(&out),
        [("app-1.grp-2".to_owned(), InstanceStatus::Terminating)]
    );
    let mut out = Vec::new();
    for id in cleaned_ids(&s, &["db", "web"]) {
        let m = s.topology.member(&id).unwrap().clone();
        if m.cluster_instance_id != "app-1.grp-2" {
            continue;
        }
        s.step(7, Input::Event(Event::InstanceReadyToShutdown(r(&m))));
        out.extend(exit(&mut s, 8, &m));
    }
    out.extend(s.step(9, Input::Tick));
    assert_eq!(
        group_events(&out),
        [("app-1.grp-2".to_owned(), InstanceStatus::Terminated)]
    );
    assert!(
        !s.deployments["app"]
            .group_status
            .contains_key(&grp("app-1.grp-2"))
    );
    // Undeployed: the remaining group instance is Terminating, then Terminated.
    let out = s.step(
        10,
        Input::Undeploy {
            application_id: "app".into(),
            force: true,
        },
    );
    assert!(group_events(&out).contains(&("app-1".to_owned(), InstanceStatus::Terminating)));
}

/// The member cleaned up by a scale-down's first output, and its partition.
fn scaled_down_partition(s: &ControllerState, out: &[Action]) -> String {
    let id = cleaned(out)
        .into_iter()
        .next()
        .expect("a member cleaned up");
    s.topology.member(&id).unwrap().partition_id.clone()
}

#[test]
fn scale_down_takes_a_member_from_the_partition_the_algorithm_names() {
    let scale_to = |count| {
        Input::Scale(ScaleCommand::ScaleTo {
            cluster_id: "app.db.db.domain".into(),
            instance_id: "app-1".into(),
            count,
        })
    };
    let down = Input::Scale(ScaleCommand::ScaleDown {
        cluster_id: "app.db.db.domain".into(),
        instance_id: "app-1".into(),
        member_id: None,
    });
    for (algo, max, want) in [
        // p1 full at 2, then p2: the last partition with members goes first.
        ("one-after-another", Some(2), "p2"),
        // p1, p2, p1: the fullest goes first.
        ("round-robin", None, "p1"),
    ] {
        let mut s = ControllerState::default();
        let out = s.step(0, Input::Deploy(deployment(1, algo, max)));
        let db = starts(&out)[0].clone();
        activate(&mut s, 1, &db);
        for m in starts(&s.step(2, scale_to(3))) {
            activate(&mut s, 3, &m);
        }
        let mut parts: Vec<String> = s.topology.clusters["app.db.db.domain"]
            .members
            .values()
            .map(|m| m.partition_id.clone())
            .collect();
        parts.sort();
        assert_eq!(parts, ["p1", "p1", "p2"], "{algo}");
        let out = s.step(4, down.clone());
        assert_eq!(scaled_down_partition(&s, &out), want, "{algo}");
    }
}

#[test]
fn a_dependent_group_follows_its_list_by_group_instances_one_at_a_time() {
    let mut s = ControllerState::default();
    let out = s.step(0, Input::Deploy(tree("terminate-none", 2, "np")));
    run_up(&mut s, 1, out);
    let to = |count| {
        Input::Scale(ScaleCommand::GroupInstances {
            application_id: "app".into(),
            parent_instance_id: "app-1".into(),
            group_path: vec!["grp".into()],
            count,
        })
    };
    // 5 wanted, 2 at most: one new group instance, its first cluster starting.
    let out = s.step(2, to(5));
    assert_eq!(
        group_events(&out),
        [("app-1.grp-2".to_owned(), InstanceStatus::Created)]
    );
    assert_eq!(starts(&out).len(), 1);
    assert!(
        starts(&s.step(3, to(5))).is_empty(),
        "at the group's maximum: nothing more"
    );
    run_up(&mut s, 4, out);
    // Back to 1: the added instance is scaled in (Terminating, its members cleaned up).
    let out = s.step(5, to(1));
    assert_eq!(
        group_events(&out),
        [("app-1.grp-2".to_owned(), InstanceStatus::Terminating)]
    );
    assert_eq!(cleaned(&out).len(), 2);
    // Never below the group's minimum.
    assert!(group_events(&s.step(6, to(0))).is_empty());
}

fn update_requests(out: &[Action]) -> Vec<String> {
    out.iter()
        .filter_map(|a| match a {
            Action::Publish(Event::InstanceArtifactUpdate { member_id }) => Some(member_id.clone()),
            _ => None,
        })
        .collect()
}

fn updated(s: &mut ControllerState, now: u64, m: &Member, commit: &str) -> Vec<Action> {
    s.step(
        now,
        Input::Event(Event::InstanceArtifactUpdated {
            instance: r(m),
            commit: Some(commit.into()),
            error: None,
        }),
    )
}

#[test]
fn an_artifact_update_goes_member_after_member_and_records_each_commit() {
    let mut s = ControllerState::default();
    let db = starts(&s.step(0, Input::Deploy(deployment(3, "round-robin", None))));
    for m in &db {
        activate(&mut s, 1, m);
    }
    for m in &db {
        updated(&mut s, 2, m, "v1");
    }
    let cluster = db[0].cluster_id.clone();
    let out = s.step(
        10,
        Input::UpdateArtifacts {
            application_id: "app".into(),
            cluster_ids: vec![cluster.clone(), "not.a.cluster".into()],
        },
    );
    // One member at a time, in id order.
    let mut ids: Vec<String> = db.iter().map(|m| m.member_id.clone()).collect();
    ids.sort();
    assert_eq!(update_requests(&out), [ids[0].clone()]);
    let first = db.iter().find(|m| m.member_id == ids[0]).unwrap();
    let second = db.iter().find(|m| m.member_id == ids[1]).unwrap();
    // Nothing more until it answers (a tick changes nothing).
    assert!(update_requests(&s.step(11, Input::Tick)).is_empty());
    let out = updated(&mut s, 12, first, "v2");
    assert_eq!(update_requests(&out), [ids[1].clone()]);
    let member = |s: &ControllerState, id: &str| s.topology.member(id).unwrap().clone();
    assert_eq!(member(&s, &ids[0]).properties[COMMIT_PROPERTY], "v2");
    assert_eq!(member(&s, &ids[1]).properties[COMMIT_PROPERTY], "v1");
    // The second never answers: after the timeout the third goes.
    assert!(update_requests(&s.step(12 + ARTIFACT_UPDATE_TIMEOUT_MS - 1, Input::Tick)).is_empty());
    let out = s.step(12 + ARTIFACT_UPDATE_TIMEOUT_MS, Input::Tick);
    assert_eq!(update_requests(&out), [ids[2].clone()]);
    // A failure is recorded, and ends the update.
    let third = db.iter().find(|m| m.member_id == ids[2]).unwrap();
    let out = s.step(
        200_000,
        Input::Event(Event::InstanceArtifactUpdated {
            instance: r(third),
            commit: None,
            error: Some("git pull: conflict".into()),
        }),
    );
    assert!(update_requests(&out).is_empty());
    assert_eq!(
        member(&s, &ids[2]).properties[ARTIFACT_ERROR_PROPERTY],
        "git pull: conflict"
    );
    assert!(s.deployments["app"].rollouts.is_empty(), "done");
    // A report from a member nobody asked is recorded, and starts nothing.
    let out = updated(&mut s, 200_001, second, "v2");
    assert!(update_requests(&out).is_empty());
    assert_eq!(member(&s, &ids[1]).properties[COMMIT_PROPERTY], "v2");
    // A member that leaves Active while it updates does not hold the others up.
    s.step(
        300_000,
        Input::UpdateArtifacts {
            application_id: "app".into(),
            cluster_ids: vec![cluster.clone()],
        },
    );
    let out = s.step(
        300_001,
        Input::Event(Event::InstanceMaintenanceMode(r(first))),
    );
    assert_eq!(update_requests(&out), [ids[1].clone()]);
    // The rollout survives a restart (serialized with the deployment).
    let copy: ControllerState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(
        copy.deployments["app"].rollouts,
        s.deployments["app"].rollouts
    );
}

#[test]
fn a_partition_whose_members_keep_failing_to_start_is_avoided_for_a_while() {
    let mut s = ControllerState::default();
    // Two partitions, round-robin: the first members go one to each.
    let out = s.step(0, Input::Deploy(deployment(2, "round-robin", None)));
    let first = starts(&out);
    assert_eq!(first.len(), 2);
    let on_p1 = |ms: &[Member]| ms.iter().filter(|m| m.partition_id == "p1").count();
    assert_eq!(on_p1(&first), 1);
    // p1's engine does not answer: its members fail to start, twice in a row.
    let mut now = 10;
    let mut failing = first
        .iter()
        .find(|m| m.partition_id == "p1")
        .unwrap()
        .clone();
    let healthy = first
        .iter()
        .find(|m| m.partition_id == "p2")
        .unwrap()
        .clone();
    activate(&mut s, now, &healthy);
    let mut replacements = Vec::new();
    for _ in 0..PARTITION_FAILURES {
        let out = s.step(
            now,
            Input::StartFailed {
                member_id: failing.member_id.clone(),
                reason: "the engine does not answer".into(),
            },
        );
        assert!(starts(&out).is_empty(), "backoff first");
        now += MAX_BACKOFF_MS;
        let out = s.step(now, Input::Tick);
        let next = starts(&out);
        assert_eq!(next.len(), 1);
        replacements.push(next[0].partition_id.clone());
        failing = next[0].clone();
    }
    // The first replacement was tried in p1 again (round-robin); after the second failure in a
    // row, the next goes to p2, the partition still alive.
    assert_eq!(replacements[0], "p1");
    assert_eq!(replacements[1], "p2", "{replacements:?}");
    assert!(
        s.deployments["app"].failing_partitions[&partition_key("np", "p1")].in_a_row
            >= PARTITION_FAILURES
    );
    // Once the avoidance ends, p1 is tried again; a member Active there clears it.
    activate(&mut s, now, &failing);
    let m = s.topology.member(&failing.member_id).unwrap().clone();
    assert_eq!(m.partition_id, "p2");
}

#[test]
fn instance_time_is_metered_from_creation_to_the_end_and_kept() {
    let mut s = ControllerState::default();
    let out = s.step(
        1_000,
        Input::Deploy(deployment(1, "one-after-another", None)),
    );
    let db = starts(&out)[0].clone();
    assert_eq!(db.init_time, 1_000);
    activate(&mut s, 1_500, &db);
    // Live: counted until now.
    let live = s.usage(4_000, None);
    let row = live
        .iter()
        .find(|u| u.cartridge == db.service_name)
        .unwrap();
    assert_eq!((row.live_ms, row.live_members, row.ended_ms), (3_000, 1, 0));
    // Ended at 61 s: 60 s, kept in the state (and its serialization).
    s.step(
        61_000,
        Input::Event(Event::MemberProcessExited {
            member_id: db.member_id.clone(),
            code: None,
            signal: Some(9),
            reason: "killed".into(),
        }),
    );
    let s: ControllerState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    let rows = s.usage(61_000, None);
    let row = rows
        .iter()
        .find(|u| u.cartridge == db.service_name)
        .unwrap();
    assert_eq!(row.ended_ms, 60_000);
    assert_eq!(row.ended_members, 1);
    assert_eq!(row.tenant_id, nubo_model::SUPER_TENANT_ID);
    assert_eq!(row.application_id, "app");
    // Another tenant's view has none of it.
    assert!(s.usage(61_000, Some(7)).is_empty());
    assert_eq!(
        super::metering::tenant_of("shop.t7"),
        (7, "shop".to_owned())
    );
}
