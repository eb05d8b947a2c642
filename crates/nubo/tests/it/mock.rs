//! The platform on the mock IaaS with an accelerated clock: Stratos' mock samples deploy
//! unchanged, a statistics pattern scales a cluster up and back down as Stratos' mock IaaS documentation
//! computes, and an instance that vanishes is found faulty and replaced.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Api, ServerProcess, eventually, holds, manifest_dir, read_sample, samples, shared_secrets_key,
};

/// A server offering the mock IaaS with the repository's patterns, its clock `speed` times real
/// time, statistics every 200 ms, a 2 s statistics window and a 1.5 s fault timeout.
fn server(dir: &std::path::Path, speed: &str) -> ServerProcess {
    server_with(dir, speed, "mock-iaas.xml")
}

/// [`server`] with another patterns file of the fixtures.
fn server_with(dir: &std::path::Path, speed: &str, patterns: &str) -> ServerProcess {
    let args = mock_args(speed, patterns);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ServerProcess::start_with(dir, &args)
}

/// The flags of [`server_with`].
fn mock_args(speed: &str, patterns: &str) -> Vec<String> {
    let patterns = manifest_dir().join("tests/it/fixtures").join(patterns);
    [
        "--insecure-http",
        "--no-lb",
        "--mock-iaas",
        patterns.to_str().unwrap(),
        "--mock-speed",
        speed,
        "--mock-stats-interval",
        "0.2",
        "--scale-window",
        "2",
        "--scale-up-cooldown",
        "1",
        "--scale-down-cooldown",
        "1.5",
        "--fault-timeout",
        "1.5",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Loads a scenario of the Stratos samples through the API (a 409 for an id a step shares with
/// an earlier scenario is fine) and deploys it.
async fn load_scenario(api: &Api, name: &str) -> String {
    let all: Value =
        serde_json::from_slice(&std::fs::read(samples().join("scenarios.json")).unwrap()).unwrap();
    let sc = all["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["scenario"] == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
        .clone();
    for step in sc["steps"].as_array().unwrap() {
        let body: Value =
            serde_json::from_slice(&read_sample(step["file"].as_str().unwrap())).unwrap();
        let (status, answer) = api
            .post(
                &format!("/api/{}", step["endpoint"].as_str().unwrap()),
                body,
            )
            .await;
        assert!(status == 201 || status == 409, "{step}: {status} {answer}");
    }
    let deploy = sc["deploy"][0].as_str().unwrap().to_owned();
    let (status, answer) = api.post(&format!("/api/{deploy}"), json!({})).await;
    assert_eq!(status, 202, "{deploy}: {answer}");
    deploy.split('/').nth(1).unwrap().to_owned()
}

/// The application's status at the top of its runtime view (Stratos' topology status), when
/// its definition agrees (`Active` there too, else `Deployed`); the view itself otherwise.
async fn status(api: &Api, app: &str) -> String {
    let (_, view) = api.get(&format!("/api/applications/{app}/runtime")).await;
    let (_, definition) = api.get(&format!("/api/applications/{app}")).await;
    let top = view["status"].as_str().unwrap_or_default().to_owned();
    let agrees = match top.as_str() {
        "Active" => definition["status"] == "Active",
        _ => definition["status"] == "Deployed",
    };
    if agrees {
        top
    } else {
        format!("{view} / {definition}")
    }
}

/// The first line of `nubo application runtime APP`: `APP (STATUS)`.
fn cli_status(server: &ServerProcess, app: &str) -> String {
    let o = crate::cli::nubo(server, &["application", "runtime", app]);
    let out = String::from_utf8_lossy(&o.stdout);
    match out.lines().next() {
        Some(first) => first.to_owned(),
        None => format!("no output: {}", String::from_utf8_lossy(&o.stderr)),
    }
}

#[tokio::test]
async fn stratos_mock_samples_deploy_unchanged_and_a_vanished_instance_is_replaced() {
    if !crate::support::have_samples(
        "stratos_mock_samples_deploy_unchanged_and_a_vanished_instance_is_replaced",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), "1");
    let api = Api::new(&server);
    // The first start of a php instance fails: the controller retries after a backoff.
    let (code, _) = api
        .post(
            "/api/mock-iaas/failures",
            json!({"cartridgeType": "php", "failNextStarts": 1}),
        )
        .await;
    assert_eq!(code, 200);
    let app = load_scenario(&api, "simple/single-cartridge-app").await;
    eventually(30, "the single-cartridge application Active", || async {
        (status(&api, &app).await == "Active").then_some(())
    })
    .await;
    assert_eq!(cli_status(&server, &app), format!("{app} (Active)"));
    let (code, instances) = api.get("/api/mock-iaas/instances").await;
    assert_eq!(code, 200);
    let instances = instances.as_array().unwrap().clone();
    assert!(!instances.is_empty());
    let victim = instances[0]["instanceId"].as_str().unwrap().to_owned();
    assert!(
        !victim.ends_with("-1"),
        "the first start failed, so the running member is a later one: {victim}"
    );
    assert!(
        instances[0]["defaultPrivateIp"]
            .as_str()
            .unwrap()
            .starts_with("10.")
    );
    assert_eq!(instances[0]["payload"]["MEMBER_ID"], victim.as_str());
    // Stratos' payload keys (docs/api.md, "The member's payload").
    let payload = &instances[0]["payload"];
    for (key, value) in [
        ("APPLICATION_ID", "single-cartridge-app"),
        ("CARTRIDGE_ALIAS", "my-php"),
        ("MULTITENANT", "false"),
        ("TENANT_ID", "-1234"),
        ("TENANT_RANGE", "-1234"),
        (
            "REPO_URL",
            "https://github.com/lakwarus/single-cartridge.git",
        ),
        ("DEPLOYMENT", "default"),
        ("INTERNAL", "false"),
    ] {
        assert_eq!(payload[key], value, "{key}: {payload}");
    }
    assert!(
        payload["PORT_MAPPINGS"]
            .as_str()
            .unwrap()
            .contains("PROTOCOL:http|PORT:"),
        "{payload}"
    );
    assert!(
        !payload.to_string().to_lowercase().contains("password"),
        "no repository credential in a payload: {payload}"
    );
    let before = instances.len();
    // Its replacement's first two starts fail, so that the application stays Inactive a while.
    let (code, _) = api
        .post(
            "/api/mock-iaas/failures",
            json!({"cartridgeType": "php", "failNextStarts": 2}),
        )
        .await;
    assert_eq!(code, 200);

    // The instance vanishes: its statistics stop, the event processor finds the member faulty,
    // and the controller replaces it. Meanwhile the application is Inactive (its cluster below
    // its minimum), in the API and in the CLI.
    let (code, _) = api
        .send(
            reqwest::Method::DELETE,
            &format!("/api/mock-iaas/instances/{victim}"),
            None,
        )
        .await;
    assert_eq!(code, 200);
    let (code, _) = api.get(&format!("/api/mock-iaas/instances/{victim}")).await;
    assert_eq!(code, 404);
    eventually(20, "the application Inactive", || async {
        (status(&api, &app).await == "Inactive").then_some(())
    })
    .await;
    assert_eq!(cli_status(&server, &app), format!("{app} (Inactive)"));
    eventually(
        30,
        "a replacement Active and the vanished member gone",
        || async {
            let members = api.members(&app).await;
            let gone = members
                .iter()
                .all(|(_, m)| m["memberId"] != victim.as_str());
            let active = members
                .iter()
                .filter(|(_, m)| m["status"] == "Active")
                .count();
            (gone && active == before).then_some(())
        },
    )
    .await;
    eventually(20, "the application Active again", || async {
        (status(&api, &app).await == "Active").then_some(())
    })
    .await;
    // The internal events counted what happened: starts on the mock provider, and one Active
    // member lost (then replaced).
    let metrics = api.metrics().await;
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        value("nubo_member_starts_total{provider=\"mock\"}") > before as f64,
        "{metrics}"
    );
    assert!(
        value("nubo_members_ended_total{how=\"lost\"}") >= 1.0,
        "{metrics}"
    );

    // Nested groups deploy too.
    let nested = load_scenario(&api, "nested/single-level-nested-group-app").await;
    eventually(60, "the nested-group application Active", || async {
        (status(&api, &nested).await == "Active").then_some(())
    })
    .await;
}

/// Stratos' mock IaaS documentation, test 12's artifacts: application `c7`, one cluster of min 2 and max
/// 6 on the mock provider, thresholds of 30 (memory) and 25 (load).
fn c7_artifacts() -> Vec<(&'static str, Value)> {
    vec![
        (
            "autoscalingPolicies",
            json!({"id": "c7", "loadThresholds": {"memoryConsumption": {"threshold": 30}, "loadAverage": {"threshold": 25}}}),
        ),
        (
            "networkPartitions",
            json!({"id": "mock-np", "provider": "mock", "partitions": [{"id": "p1"}, {"id": "p2"}]}),
        ),
        (
            "deploymentPolicies",
            json!({"id": "c7-dp", "networkPartitions": [{"id": "mock-np", "partitionAlgo": "round-robin",
            "partitions": [{"id": "p1", "partitionMax": 3}, {"id": "p2", "partitionMax": 3}]}]}),
        ),
        (
            "applicationPolicies",
            json!({"id": "c7-ap", "algorithm": "one-after-another", "networkPartitions": ["mock-np"]}),
        ),
        (
            "cartridges",
            json!({"type": "c7-single-cluster-scaling-test", "category": "framework", "host": "mock.local",
            "portMapping": [{"name": "http", "protocol": "http", "port": 8080, "proxyPort": 18280}],
            "iaasProvider": [{"type": "mock", "imageId": "mock-image"}]}),
        ),
        (
            "applications",
            json!({"applicationId": "c7", "components": {"cartridges": [
            {"type": "c7-single-cluster-scaling-test", "cartridgeMin": 2, "cartridgeMax": 6,
             "subscribableInfo": {"alias": "c7", "autoscalingPolicy": "c7", "deploymentPolicy": "c7-dp"}}]}}),
        ),
    ]
}

/// Loads [`c7_artifacts`] and deploys `c7`.
async fn deploy_c7(api: &Api) {
    api.add_all(&c7_artifacts()).await;
    assert_eq!(
        api.post("/api/applications/c7/deploy/c7-ap", json!({}))
            .await
            .0,
        202
    );
}

/// `Some` when `c7` has exactly `n` Active members.
async fn c7_active(api: &Api, n: usize) -> Option<()> {
    (api.active("c7", "c7").await.len() == n).then_some(())
}

/// A server of [`mock_args`] on the shared `store`, with more flags: one process of a platform
/// split over several.
fn mock_server_on(dir: &std::path::Path, store: &str, extra: &[&str]) -> ServerProcess {
    let mut args = mock_args("20", "mock-iaas.xml");
    let key = shared_secrets_key(store);
    args.extend(
        ["--store", store, "--secrets-key", &key]
            .iter()
            .chain(extra)
            .map(|s| (*s).to_owned()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ServerProcess::start_with(dir, &args)
}

#[tokio::test]
async fn a_statistics_pattern_scales_a_cluster_up_and_back_down_as_computed() {
    // Stratos' mock IaaS documentation, test 12: memory and load at 60 with thresholds 30 and 25, min 2,
    // max 6 → 5 members; values falling to 10 → back to 2, one member at a time. Samples last
    // 60 mock seconds; the clock runs 20 times faster (3 s each).
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), "20");
    let api = Api::new(&server);
    deploy_c7(&api).await;
    let active = |n: usize| c7_active(&api, n);
    eventually(20, "scaled up to 5 members", || active(5)).await;
    // Not beyond what the factors require, while the values stay at 60.
    holds(Duration::from_millis(500), "at most 5 members", || async {
        api.active("c7", "c7").await.len() <= 5
    })
    .await;
    eventually(40, "back down to the minimum of 2", || active(2)).await;

    let (_, events) = api.get("/api/applications/c7/scalingEvents").await;
    let events = events.as_array().unwrap();
    let up = events
        .iter()
        .find(|e| e["decision"]["ScaleUp"].is_object())
        .expect("a scale-up");
    assert_eq!(up["required"]["count"], 5, "{up}");
    assert_eq!(up["required"]["memory"], 4, "{up}");
    assert_eq!(up["required"]["load"], 5, "{up}");
    let downs = events
        .iter()
        .filter(|e| e["decision"] == "ScaleDown")
        .count();
    assert_eq!(downs, 3, "5 → 2, one member at a time: {events:?}");
    // And it stays at the minimum.
    holds(Duration::from_secs(2), "2 members", || async {
        api.active("c7", "c7").await.len() == 2
    })
    .await;

    // The decisions are kept across a restart.
    let mut server = server;
    assert!(server.terminate());
    let server = self::server(dir.path(), "20");
    let api = Api::new(&server);
    let (_, again) = api.get("/api/applications/c7/scalingEvents").await;
    let again = again.as_array().unwrap();
    assert_eq!(
        again
            .iter()
            .filter(|e| e["decision"] == "ScaleDown")
            .count(),
        3,
        "{again:?}"
    );
    assert!(again.iter().any(|e| e["decision"]["ScaleUp"].is_object()));
}

#[tokio::test]
async fn the_event_processor_and_the_autoscaler_in_processes_of_their_own_scale_through_the_bus() {
    // The c7 scenario in three processes: a server with every component but the event processor
    // and the autoscaler; an event processor alone (`--components cep`), which turns the
    // statistics into predictions on the bus; an autoscaler alone, which decides on them over the
    // controller's state read from the shared store and sends its decisions through the bus.
    let dir = tempfile::tempdir().unwrap();
    let dir_e = tempfile::tempdir().unwrap();
    let dir_a = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", shared.path().join("nubo.db").display());
    let start = |dir: &std::path::Path, extra: &[&str]| mock_server_on(dir, &store, extra);
    let server = start(
        dir.path(),
        &["--components", "manager,cloud-controller,node"],
    );
    let bus = ["--bus-credentials", server.bus_credentials.as_str()];
    let cep = start(dir_e.path(), &[bus[0], bus[1], "--components", "cep"]);
    let autoscaler = start(
        dir_a.path(),
        &[bus[0], bus[1], "--components", "autoscaler"],
    );
    assert!(
        autoscaler.url.is_empty(),
        "no API in the autoscaler's process"
    );
    let api = Api::new(&server);
    deploy_c7(&api).await;
    let active = |n: usize| c7_active(&api, n);
    eventually(30, "scaled up to 5 members by the other processes", || {
        active(5)
    })
    .await;
    eventually(40, "back down to the minimum of 2", || active(2)).await;
    // Without the event processor, the autoscaler finds no member faulty (the silence is the
    // event processor's) and nothing is replaced.
    let ids = |ms: Vec<Value>| {
        ms.into_iter()
            .map(|m| m["memberId"].clone())
            .collect::<Vec<_>>()
    };
    let before = ids(api.active("c7", "c7").await);
    drop(cep);
    holds(
        Duration::from_secs(4),
        "no member replaced while the event processor is down",
        || async { ids(api.active("c7", "c7").await) == before },
    )
    .await;
    drop(autoscaler);
}

#[tokio::test]
async fn autoscalers_of_their_own_elect_one_and_the_standby_takes_over() {
    // Two autoscalers without a controller, with --ha on one shared store: one decides, the other
    // stands by; the first is killed after it scaled up, and the second takes over and scales
    // back down. The controller and the event processor run in a third process.
    let dir = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", shared.path().join("nubo.db").display());
    let server = mock_server_on(
        dir.path(),
        &store,
        &["--components", "manager,cloud-controller,node,cep"],
    );
    let autoscaler = |dir: &std::path::Path| {
        let bus = server.bus_credentials.as_str();
        let extra = [
            "--bus-credentials",
            bus,
            "--components",
            "autoscaler",
            "--ha",
            "--ha-lease",
            "2",
        ];
        mock_server_on(dir, &store, &extra)
    };
    let (dir_1, dir_2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut first = autoscaler(dir_1.path());
    eventually(10, "the first autoscaler leads", || async {
        first
            .said("nubo: leader: this server's autoscaler decides")
            .then_some(())
    })
    .await;
    let second = autoscaler(dir_2.path());
    eventually(10, "the second stands by", || async {
        second
            .said("nubo: standby: the autoscaler runs in")
            .then_some(())
    })
    .await;
    let api = Api::new(&server);
    deploy_c7(&api).await;
    let active = |n: usize| c7_active(&api, n);
    eventually(30, "scaled up to 5 members", || active(5)).await;
    assert!(
        !second.said("nubo: leader:"),
        "one autoscaler decides at a time"
    );
    first.kill9();
    eventually(
        40,
        "back down to 2, by the autoscaler that took over",
        || active(2),
    )
    .await;
    assert!(second.said("nubo: leader: this server's autoscaler decides"));
}

/// The runtime view's application instances: `(instance id, network partition, status)`.
pub(crate) async fn app_instances(api: &Api, app: &str) -> Vec<(String, String, String)> {
    let (_, view) = api.get(&format!("/api/applications/{app}/runtime")).await;
    view["applicationInstances"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["instanceId"].as_str().unwrap_or_default().to_owned(),
                i["networkPartitionId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                i["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_bursting_sample_bursts_into_the_next_network_partition_group_and_back() {
    if !crate::support::have_samples(
        "the_bursting_sample_bursts_into_the_next_network_partition_group_and_back",
    ) {
        return;
    }
    // Stratos' app-bursting-pattern sample, unchanged: application policy one-after-another with
    // groups network-partition-1|network-partition-2, network-partition-3|network-partition-4;
    // php between 1 and 10 members, load-average threshold 70. The pattern holds the load at 800
    // (12 members required, beyond the maximum of 10) for 30 s, then drops it to 10.
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), "20", "mock-iaas-bursting.xml");
    let api = Api::new(&server);
    let app = load_scenario(&api, "scaling/app-bursting-pattern").await;
    eventually(20, "the first network-partition group started", || async {
        let i = app_instances(&api, &app).await;
        (i.len() >= 2).then_some(i)
    })
    .await;
    let first = app_instances(&api, &app).await;
    assert_eq!(
        first
            .iter()
            .take(2)
            .map(|i| i.1.as_str())
            .collect::<Vec<_>>(),
        ["network-partition-1", "network-partition-2"],
        "partitions 1 and 2 start together: {first:?}"
    );
    // Full at 10 members: the application bursts into partitions 3 and 4.
    let burst = eventually(30, "an instance in each of partitions 3 and 4", || async {
        let i = app_instances(&api, &app).await;
        let nps: Vec<&str> = i.iter().map(|i| i.1.as_str()).collect();
        (nps == [
            "network-partition-1",
            "network-partition-2",
            "network-partition-3",
            "network-partition-4",
        ])
        .then_some(i)
    })
    .await;
    assert_eq!(
        burst.iter().map(|i| i.0.as_str()).collect::<Vec<_>>(),
        [
            "app-bursting-pattern-app-1",
            "app-bursting-pattern-app-2",
            "app-bursting-pattern-app-3",
            "app-bursting-pattern-app-4"
        ]
    );
    let (_, events) = api
        .get(&format!("/api/applications/{app}/scalingEvents"))
        .await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["decision"] == "AtMax" && e["instanceId"] == "app-bursting-pattern-app-1"),
        "the burst follows a cluster at its maximum: {events}"
    );
    let members = api.members(&app).await;
    assert!(
        members
            .iter()
            .any(|(_, m)| m["networkPartitionId"] == "network-partition-3"),
        "{members:?}"
    );
    // The load falls: every instance scales down to its minimum, and the burst instances close.
    eventually(
        90,
        "back to partitions 1 and 2, one member each",
        || async {
            let i = app_instances(&api, &app).await;
            let nps: Vec<&str> = i.iter().map(|i| i.1.as_str()).collect();
            let members = api.members(&app).await;
            (nps == ["network-partition-1", "network-partition-2"] && members.len() == 2)
                .then_some(())
        },
    )
    .await;
    let (_, mock) = api.get("/api/mock-iaas/instances").await;
    assert_eq!(mock.as_array().unwrap().len(), 2, "{mock}");
}

/// The group instances of the runtime view, depth first: `(group alias, instance id, members)`.
async fn group_instances(api: &Api, app: &str) -> Vec<(String, String, usize)> {
    let (_, view) = api.get(&format!("/api/applications/{app}/runtime")).await;
    fn walk(v: &Value, out: &mut Vec<(String, String, usize)>) {
        for g in v["groupInstances"].as_array().into_iter().flatten() {
            let members = g["clusterInstances"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c["member"].as_array().map_or(0, Vec::len))
                .sum();
            out.push((
                g["groupId"].as_str().unwrap_or_default().to_owned(),
                g["instanceId"].as_str().unwrap_or_default().to_owned(),
                members,
            ));
            walk(g, out);
        }
    }
    let mut out = Vec::new();
    for i in view["applicationInstances"]
        .as_array()
        .into_iter()
        .flatten()
    {
        walk(i, &mut out);
    }
    out
}

#[tokio::test]
async fn group_scaling_and_dependent_scaling_samples_scale_out_and_back_in() {
    if !crate::support::have_samples(
        "group_scaling_and_dependent_scaling_samples_scale_out_and_back_in",
    ) {
        return;
    }
    // Two Stratos samples, unchanged, on one platform; tomcat's load average is 800 for 30 s
    // (threshold 70: 12 members required), then 10.
    // - single-group-group-scaling: tomcat (1..4) in group my-group6 (1..3 group instances):
    //   tomcat fills its 4 members, the group grows to 3 instances, then shrinks back to 1.
    // - dependent-scaling/sample-cartridges: my-tomcat (1..2) and my-php (2..4) scale together;
    //   php's own load is low, yet it follows tomcat's factor to its maximum, and back to 2.
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), "20", "mock-iaas-groups.xml");
    let api = Api::new(&server);
    let grouped = load_scenario(&api, "scaling/group-scaling/single-group-group-scaling").await;
    let dependent = load_scenario(&api, "scaling/dependent-scaling/sample-groups").await;
    let dependent_groups = dependent.clone();
    // - dependent-scaling/sample-groups: group my-esb-php-group (1..2 instances) and my-tomcat
    //   (2..4) scale together: tomcat's factor (12 of 2) takes the group to its 2 instances
    //   (Stratos' GroupMonitor.onParentScalingEvent), and back to 1 when the load falls.
    let _ = &dependent_groups;
    let dependent = load_scenario(&api, "scaling/dependent-scaling/sample-cartridges").await;
    let grown = eventually(40, "three group instances of 4 tomcat members", || async {
        let g = group_instances(&api, &grouped).await;
        (g.len() == 3 && g.iter().all(|(_, _, m)| *m == 4)).then_some(g)
    })
    .await;
    assert_eq!(
        grown.iter().map(|g| g.1.as_str()).collect::<Vec<_>>(),
        [
            "single-group-group-scaling-1",
            "single-group-group-scaling-1.my-group6-2",
            "single-group-group-scaling-1.my-group6-3"
        ]
    );
    eventually(20, "php at its maximum of 4, following tomcat", || async {
        (api.active(&dependent, "my-php").await.len() == 4).then_some(())
    })
    .await;
    let two = eventually(30, "two instances of the dependent group", || async {
        let g = group_instances(&api, &dependent_groups).await;
        (g.len() == 2 && g.iter().all(|(_, _, m)| *m >= 2)).then_some(g)
    })
    .await;
    assert_eq!(two[1].0, "my-esb-php-group", "{two:?}");
    let (_, runtime) = api
        .get(&format!("/api/applications/{dependent_groups}/runtime"))
        .await;
    assert!(
        runtime.to_string().contains("my-esb-php-group-2"),
        "the second group instance, the first ever added (never scaled in meanwhile): {runtime}"
    );
    let (_, events) = api
        .get(&format!("/api/applications/{dependent}/scalingEvents"))
        .await;
    let php_up = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["clusterId"].as_str().unwrap().contains("my-php")
                && e["decision"]["ScaleUp"].is_object()
        })
        .cloned()
        .expect("a php scale-up");
    assert_eq!(
        php_up["required"]["reason"], "ScalingDependents",
        "{php_up}"
    );
    // php's own factors require its minimum at most; tomcat's factor (12 of a minimum of 1)
    // requires 24 of php's minimum of 2, capped at its maximum.
    for f in ["requestsInFlight", "memory", "load"] {
        assert!(php_up["required"][f].as_u64().unwrap_or(0) <= 2, "{php_up}");
    }
    assert_eq!(php_up["required"]["dependents"], 24, "{php_up}");
    // The load falls: the group shrinks to one instance of one member, php back to 2.
    eventually(60, "one group instance with one member", || async {
        let g = group_instances(&api, &grouped).await;
        (g.len() == 1 && g[0].2 == 1).then_some(())
    })
    .await;
    eventually(60, "the dependent group back to one instance", || async {
        (group_instances(&api, &dependent_groups).await.len() == 1).then_some(())
    })
    .await;
    eventually(30, "php back to 2", || async {
        (api.active(&dependent, "my-php").await.len() == 2
            && api.active(&dependent, "my-tomcat").await.len() == 1)
            .then_some(())
    })
    .await;
}

/// Active member ids by cluster alias.
async fn active_ids(api: &Api, app: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (alias, m) in api.members(app).await {
        if m["status"] == "Active" {
            out.entry(alias)
                .or_default()
                .push(m["memberId"].as_str().unwrap().to_owned());
        }
    }
    out
}

#[tokio::test]
async fn group_startup_order_and_the_three_termination_behaviours() {
    // Three applications, each a group (db, then web) and a front after the group; the groups
    // differ only in their termination behaviour. A mock instance vanishes in each group; what
    // is terminated and restarted follows the behaviour.
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), "1", "mock-iaas.xml");
    let api = Api::new(&server);
    let mut arts = vec![
        (
            "autoscalingPolicies",
            json!({"id": "asp", "loadThresholds": {"requestsInFlight": {"threshold": 100}}}),
        ),
        (
            "networkPartitions",
            json!({"id": "np", "provider": "mock", "partitions": [{"id": "p1"}]}),
        ),
        (
            "deploymentPolicies",
            json!({"id": "dp", "networkPartitions": [{"id": "np", "partitionAlgo": "one-after-another", "partitions": [{"id": "p1"}]}]}),
        ),
        (
            "applicationPolicies",
            json!({"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]}),
        ),
    ];
    for ty in ["db", "web", "front"] {
        arts.push((
            "cartridges",
            json!({"type": ty, "category": "framework",
            "iaasProvider": [{"type": "mock", "imageId": "mock"}]}),
        ));
    }
    let cases = [
        ("none", "terminate-none", "web", vec!["web"]),
        (
            "dependents",
            "terminate-dependents",
            "db",
            vec!["db", "web"],
        ),
        ("all", "terminate-all", "web", vec!["db", "web"]),
    ];
    for (name, behaviour, _, _) in &cases {
        arts.push(("cartridgeGroups", json!({"name": format!("g-{name}"), "cartridges": ["db", "web"],
            "dependencies": {"startupOrders": [{"aliases": ["cartridge.db", "cartridge.web"]}], "terminationBehaviour": behaviour}})));
        arts.push(("applications", json!({"applicationId": format!("t-{name}"), "components": {
            "groups": [{"name": format!("g-{name}"), "alias": "grp", "deploymentPolicy": "dp", "cartridges": [
                {"type": "db", "cartridgeMin": 1, "cartridgeMax": 1, "subscribableInfo": {"alias": "db", "autoscalingPolicy": "asp"}},
                {"type": "web", "cartridgeMin": 1, "cartridgeMax": 1, "subscribableInfo": {"alias": "web", "autoscalingPolicy": "asp"}}]}],
            "cartridges": [{"type": "front", "cartridgeMin": 1, "cartridgeMax": 1, "subscribableInfo": {"alias": "front", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}],
            "dependencies": {"startupOrders": [{"aliases": ["group.grp", "cartridge.front"]}]}}})));
    }
    api.add_all(&arts).await;
    for (name, ..) in &cases {
        let (code, body) = api
            .post(&format!("/api/applications/t-{name}/deploy/ap"), json!({}))
            .await;
        assert_eq!(code, 202, "{body}");
    }
    let mut before = Vec::new();
    for (name, ..) in &cases {
        let app = format!("t-{name}");
        eventually(30, "Active", || async {
            (status(&api, &app).await == "Active").then_some(())
        })
        .await;
        before.push(active_ids(&api, &app).await);
        // Startup order: db, then web, then front (member numbers follow creation).
        let (_, mock) = api.get("/api/mock-iaas/instances").await;
        let mut order: Vec<(u64, String)> = mock
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| {
                i["instanceId"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{app}."))
            })
            .map(|i| {
                (
                    i["startedAtMs"].as_u64().unwrap(),
                    i["instanceId"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        order.sort();
        let aliases: Vec<&str> = order
            .iter()
            .map(|(_, id)| id.split('.').nth(1).unwrap())
            .collect();
        assert_eq!(aliases, ["db", "web", "front"], "{app}: {order:?}");
    }
    for ((name, _, victim, _), ids) in cases.iter().zip(&before) {
        let id = &ids[*victim][0];
        let (code, _) = api
            .send(
                reqwest::Method::DELETE,
                &format!("/api/mock-iaas/instances/{id}"),
                None,
            )
            .await;
        assert_eq!(code, 200, "t-{name}: {id}");
    }
    for ((name, behaviour, victim, replaced), ids) in cases.iter().zip(&before) {
        let app = format!("t-{name}");
        let after = eventually(40, "every cluster Active again", || async {
            let now = active_ids(&api, &app).await;
            let all = ["db", "web", "front"]
                .iter()
                .all(|a| now.get(*a).is_some_and(|v| v.len() == 1));
            (all && status(&api, &app).await == "Active" && now[*victim] != ids[*victim])
                .then_some(now)
        })
        .await;
        let changed: Vec<&str> = ["db", "web", "front"]
            .into_iter()
            .filter(|a| after[*a] != ids[*a])
            .collect();
        assert_eq!(&changed, replaced, "{behaviour}: {victim} vanished");
    }
}

#[tokio::test]
async fn policy_and_application_changes_take_effect_on_a_running_application() {
    // A running application is changed through the API: its minimum, its autoscaling policy's
    // threshold, then its maximum; each takes effect without a redeployment.
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), "1");
    let api = Api::new(&server);
    let app = |min: u32, max: u32| {
        json!({"applicationId": "live", "components": {"cartridges": [
            {"type": "live", "cartridgeMin": min, "cartridgeMax": max,
             "subscribableInfo": {"alias": "live", "autoscalingPolicy": "live", "deploymentPolicy": "dp"}}]}})
    };
    let policy = |threshold: u32| json!({"id": "live", "loadThresholds": {"loadAverage": {"threshold": threshold}}});
    api.add_all(&[
        ("autoscalingPolicies", policy(95)),
        ("networkPartitions", json!({"id": "np", "provider": "mock", "partitions": [{"id": "p1"}]})),
        ("deploymentPolicies", json!({"id": "dp", "networkPartitions": [{"id": "np", "partitionAlgo": "one-after-another", "partitions": [{"id": "p1"}]}]})),
        ("applicationPolicies", json!({"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]})),
        ("cartridges", json!({"type": "live", "category": "framework", "iaasProvider": [{"type": "mock", "imageId": "mock"}]})),
        ("applications", app(1, 4)),
    ])
    .await;
    assert_eq!(
        api.post("/api/applications/live/deploy/ap", json!({}))
            .await
            .0,
        202
    );
    let active = |n: usize| {
        let api = &api;
        async move { (api.active("live", "live").await.len() == n).then_some(()) }
    };
    eventually(20, "1 member", || active(1)).await;
    // The minimum rises to 3.
    let (code, answer) = api
        .send(reqwest::Method::PUT, "/api/applications", Some(app(3, 4)))
        .await;
    assert_eq!(code, 200, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("applied to running application `live`"),
        "{answer}"
    );
    eventually(20, "3 members after the minimum rose", || active(3)).await;
    // The threshold falls below the load every mock member reports (20): the cluster scales to
    // its maximum.
    let (code, answer) = api
        .send(
            reqwest::Method::PUT,
            "/api/autoscalingPolicies",
            Some(policy(5)),
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    eventually(20, "4 members after the threshold fell", || active(4)).await;
    // The maximum falls to 2: the newest members are drained.
    let (code, answer) = api
        .send(reqwest::Method::PUT, "/api/applications", Some(app(1, 2)))
        .await;
    assert_eq!(code, 200, "{answer}");
    eventually(20, "2 members after the maximum fell", || active(2)).await;
    let (_, view) = api.get("/api/applications/live/runtime").await;
    let ci = &view["applicationInstances"][0]["clusterInstances"][0];
    assert_eq!(
        (ci["minMembers"].as_u64(), ci["maxMembers"].as_u64()),
        (Some(1), Some(2)),
        "{ci}"
    );
}

#[tokio::test]
async fn mock_instances_outlive_a_server_restart() {
    if !crate::support::have_samples("mock_instances_outlive_a_server_restart") {
        return;
    }
    // Like virtual machines, mock instances survive a restart of the platform: the controller
    // finds them running and keeps their members; none is replaced.
    let dir = tempfile::tempdir().unwrap();
    let mut server = server(dir.path(), "1");
    let api = Api::new(&server);
    let app = load_scenario(&api, "simple/single-cartridge-app").await;
    eventually(30, "Active", || async {
        (status(&api, &app).await == "Active").then_some(())
    })
    .await;
    let ids = |members: Vec<(String, Value)>| {
        let mut v: Vec<String> = members
            .iter()
            .map(|(_, m)| m["memberId"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    let before = ids(api.members(&app).await);
    let (_, mock_before) = api.get("/api/mock-iaas/instances").await;
    assert!(server.terminate());
    let server = self::server(dir.path(), "1");
    let api = Api::new(&server);
    let (_, mock_after) = api.get("/api/mock-iaas/instances").await;
    let instance_ids = |v: &Value| {
        let mut ids: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["instanceId"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(instance_ids(&mock_after), instance_ids(&mock_before));
    eventually(30, "Active again with the same members", || async {
        (status(&api, &app).await == "Active" && ids(api.members(&app).await) == before)
            .then_some(())
    })
    .await;
    // Still the same a few fault timeouts later: their statistics resumed.
    holds(Duration::from_secs(4), "the same members", || async {
        ids(api.members(&app).await) == before
    })
    .await;
    let (_, mock_later) = api.get("/api/mock-iaas/instances").await;
    assert_eq!(instance_ids(&mock_later), instance_ids(&mock_before));
}

#[tokio::test]
async fn a_member_whose_statistics_stop_is_replaced() {
    // Stratos' c7-partition-round-robin-test pattern is in `stop` mode: four samples of 30 mock
    // seconds (6 s at 20×), then nothing. The silent member is found faulty and replaced.
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), "20");
    let api = Api::new(&server);
    api.add_all(&[
        ("autoscalingPolicies", json!({"id": "rr", "loadThresholds": {"memoryConsumption": {"threshold": 80}}})),
        ("networkPartitions", json!({"id": "np", "provider": "mock", "partitions": [{"id": "p1"}]})),
        ("deploymentPolicies", json!({"id": "dp", "networkPartitions": [{"id": "np", "partitionAlgo": "round-robin", "partitions": [{"id": "p1"}]}]})),
        ("applicationPolicies", json!({"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]})),
        ("cartridges", json!({"type": "c7-partition-round-robin-test", "category": "framework",
            "iaasProvider": [{"type": "mock", "imageId": "mock"}]})),
        ("applications", json!({"applicationId": "rr", "components": {"cartridges": [
            {"type": "c7-partition-round-robin-test", "cartridgeMin": 1, "cartridgeMax": 1,
             "subscribableInfo": {"alias": "rr", "autoscalingPolicy": "rr", "deploymentPolicy": "dp"}}]}})),
    ])
    .await;
    assert_eq!(
        api.post("/api/applications/rr/deploy/ap", json!({}))
            .await
            .0,
        202
    );
    let first = eventually(20, "one member Active", || async {
        api.active("rr", "rr")
            .await
            .first()
            .map(|m| m["memberId"].as_str().unwrap().to_owned())
    })
    .await;
    // Still there while its pattern runs.
    holds(
        Duration::from_secs(3),
        "the first member Active",
        || async {
            api.active("rr", "rr").await.first().map(|m| &m["memberId"])
                == Some(&Value::from(first.as_str()))
        },
    )
    .await;
    eventually(20, "replaced after its statistics stopped", || async {
        let a = api.active("rr", "rr").await;
        (a.len() == 1 && a[0]["memberId"] != first.as_str()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_api_only_server_shows_the_decisions_of_the_autoscaler_of_another() {
    // The controller, the autoscaler and the mock IaaS in a process that serves no API; the API
    // in another on the same store and bus: it serves the decisions the autoscaler persisted.
    let dir_c = tempfile::tempdir().unwrap();
    let dir_a = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", shared.path().join("nubo.db").display());
    let controller = mock_server_on(
        dir_c.path(),
        &store,
        &["--components", "controller,autoscaler,event-processor"],
    );
    assert!(
        controller.url.is_empty(),
        "no API in the controller's process"
    );
    let api_only = ServerProcess::start_with(
        dir_a.path(),
        &[
            "--insecure-http",
            "--store",
            &store,
            "--secrets-key",
            &shared_secrets_key(&store),
            "--bus-credentials",
            &controller.bus_credentials,
            "--components",
            "api",
        ],
    );
    let api = Api::new(&api_only);
    assert_eq!(api.get("/health").await.1["controller"], "remote");
    // The controller's providers, as it published them in the store.
    assert_eq!(
        api.get("/api/iaasProviders").await.1,
        json!({"iaasProviders": ["local", "docker", "kubernetes", "mock"]})
    );
    api.add_all(&c7_artifacts()).await;
    let (_, events) = api.get("/api/applications/c7/scalingEvents").await;
    assert_eq!(events, json!([]), "no decision before the deployment");
    let (code, answer) = api
        .post("/api/applications/c7/deploy/c7-ap", json!({}))
        .await;
    assert_eq!(code, 202, "{answer}");
    // 60 % memory and load against thresholds of 30 and 25: a scale-up to 5.
    let up = eventually(
        30,
        "the scale-up decision, served by the API-only server",
        || async {
            let (code, events) = api.get("/api/applications/c7/scalingEvents").await;
            assert_eq!(code, 200, "{events}");
            events
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["decision"]["ScaleUp"].is_object())
                .cloned()
        },
    )
    .await;
    assert_eq!(up["required"]["count"], 5, "{up}");
    assert_eq!(up["applicationId"], "c7", "{up}");
    // The mock's instances live in the controller's process: said so, not an empty list.
    let (code, answer) = api.get("/api/mock-iaas/instances").await;
    assert_eq!(code, 404, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("runs no controller")),
        "{answer}"
    );
    drop(controller);
}

/// Artifacts of an application of 3 members on the mock provider that never scales (thresholds
/// far above the default statistics).
fn steady_artifacts(app: &str, members: u32) -> Vec<(&'static str, Value)> {
    vec![
        (
            "autoscalingPolicies",
            json!({"id": "steady", "loadThresholds": {"memoryConsumption": {"threshold": 95}, "loadAverage": {"threshold": 95}}}),
        ),
        (
            "networkPartitions",
            json!({"id": "mock-np", "provider": "mock", "partitions": [{"id": "p1"}]}),
        ),
        (
            "deploymentPolicies",
            json!({"id": "steady-dp", "networkPartitions": [{"id": "mock-np", "partitionAlgo": "round-robin", "partitions": [{"id": "p1"}]}]}),
        ),
        (
            "applicationPolicies",
            json!({"id": "steady-ap", "algorithm": "one-after-another", "networkPartitions": ["mock-np"]}),
        ),
        (
            "cartridges",
            json!({"type": "steady", "category": "framework", "host": "mock.local",
            "portMapping": [{"name": "http", "protocol": "http", "port": 8080}],
            "iaasProvider": [{"type": "mock", "imageId": "mock-image"}]}),
        ),
        (
            "applications",
            json!({"applicationId": app, "components": {"cartridges": [
            {"type": "steady", "cartridgeMin": members, "cartridgeMax": members,
             "subscribableInfo": {"alias": "s", "autoscalingPolicy": "steady", "deploymentPolicy": "steady-dp"}}]}}),
        ),
    ]
}

fn member_ids(members: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = members
        .iter()
        .map(|m| m["memberId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_stalled_control_plane_replaces_no_healthy_member_and_still_the_lost_one() {
    // The server (controller, autoscaler, mock IaaS: the whole control plane) is stopped for
    // more than twice the 1.5 s fault timeout while its members are fine; one member's
    // instance vanished just before. Afterwards the healthy ones are kept and the lost one is
    // replaced.
    let dir = tempfile::tempdir().unwrap();
    // Statistics every second (each member in its own slice of it): when the control plane
    // runs again, most members' last statistics are 4 s old.
    let args: Vec<String> = mock_args("1", "mock-iaas.xml")
        .into_iter()
        .map(|a| if a == "0.2" { "1".to_owned() } else { a })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ServerProcess::start_with(dir.path(), &args);
    let api = Api::new(&server);
    api.add_all(&steady_artifacts("steady", 3)).await;
    assert_eq!(
        api.post("/api/applications/steady/deploy/steady-ap", json!({}))
            .await
            .0,
        202
    );
    let before = eventually(30, "3 members Active", || async {
        let a = api.active("steady", "s").await;
        (a.len() == 3).then(|| member_ids(&a))
    })
    .await;
    let victim = before[0].clone();
    let (code, _) = api
        .send(
            reqwest::Method::DELETE,
            &format!("/api/mock-iaas/instances/{victim}"),
            None,
        )
        .await;
    assert_eq!(code, 200);
    let pid = server.child.as_ref().unwrap().id() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    tokio::time::sleep(Duration::from_secs(4)).await;
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let survivors: Vec<String> = before[1..].to_vec();
    holds(
        Duration::from_secs(2),
        "the healthy members are kept",
        || async {
            let all: Vec<Value> = api
                .members("steady")
                .await
                .into_iter()
                .map(|(_, m)| m)
                .collect();
            let ids = member_ids(&all);
            survivors.iter().all(|s| ids.contains(s))
        },
    )
    .await;
    let after = eventually(30, "the lost member replaced", || async {
        let a = member_ids(&api.active("steady", "s").await);
        (a.len() == 3 && !a.contains(&victim)).then_some(a)
    })
    .await;
    assert!(
        survivors.iter().all(|s| after.contains(s)),
        "{after:?} keeps {survivors:?}"
    );
    let metrics = api.metrics().await;
    assert!(
        metrics.contains("nubo_fault_detection_held"),
        "the hold is exposed: {metrics}"
    );
}

#[tokio::test]
async fn a_server_killed_in_the_middle_of_a_1000_member_deploy_converges_to_exactly_1000() {
    let dir = tempfile::tempdir().unwrap();
    let args = mock_args("1", "mock-iaas.xml");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = ServerProcess::start_with(dir.path(), &args);
    let api = Api::new(&server);
    api.add_all(&steady_artifacts("big", 1000)).await;
    assert_eq!(
        api.post("/api/applications/big/deploy/steady-ap", json!({}))
            .await
            .0,
        202
    );
    // Killed once some members are Active and others are still on their way.
    let reached = eventually(60, "some members Active", || async {
        let n = api.active("big", "s").await.len();
        (n >= 100).then_some(n)
    })
    .await;
    server.kill9();
    eprintln!("killed at {reached} Active");
    let server = ServerProcess::start_with(dir.path(), &args);
    let api = Api::new(&server);
    eventually(120, "1000 members Active after the restart", || async {
        (api.active("big", "s").await.len() == 1000).then_some(())
    })
    .await;
    // Exactly those: no member twice, no instance without its member. A member replaced after
    // the restart (Created when the server died) may still be on its way out when the last one
    // becomes Active: its instance goes within moments.
    let exactly = || async {
        let (_, i) = api.get("/api/mock-iaas/instances").await;
        api.members("big").await.len() == 1000 && i.as_array().map(Vec::len) == Some(1000)
    };
    eventually(10, "1000 members and 1000 instances", || async {
        exactly().await.then_some(())
    })
    .await;
    let members = api.members("big").await;
    let (_, instances) = api.get("/api/mock-iaas/instances").await;
    let instances = instances.as_array().unwrap().len();
    holds(
        Duration::from_secs(2),
        "1000 members, 1000 instances",
        exactly,
    )
    .await;
    assert_eq!(
        (members.len(), instances),
        (1000, 1000),
        "killed at {reached} Active"
    );
}
