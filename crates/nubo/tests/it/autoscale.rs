//! Autoscaling with real load: a load generator through the load balancer raises requests in
//! flight, the cluster scales up within seconds, and back down after the load stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Api, ServerProcess, eventually, free_port};

#[tokio::test]
async fn requests_in_flight_scale_a_cluster_up_and_back_down() {
    let dir = tempfile::tempdir().unwrap();
    let server = fast_scaling_server(dir.path(), "2");
    let api = Api::new(&server);
    let proxy = free_port();
    let script = crate::support::manifest_dir().join("tests/it/fixtures/slow.py");
    api.add_all(&[
        ("autoscalingPolicies", json!({"id": "busy", "loadThresholds": {"requestsInFlight": {"threshold": 4}}})),
        ("networkPartitions", json!({"id": "np", "provider": "local", "partitions": [{"id": "p1"}, {"id": "p2"}]})),
        ("deploymentPolicies", json!({"id": "dp", "networkPartitions": [{"id": "np", "partitionAlgo": "round-robin", "partitions": [{"id": "p1"}, {"id": "p2"}]}]})),
        ("applicationPolicies", json!({"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]})),
        ("cartridges", json!({"type": "slow", "category": "framework", "host": "localhost",
            "portMapping": [{"name": "http", "protocol": "http", "port": 8080, "proxyPort": proxy}],
            "iaasProvider": [{"type": "local", "imageId": format!("exec python3 {}", script.display())}]})),
        ("applications", json!({"applicationId": "busy", "components": {"cartridges": [
            {"type": "slow", "cartridgeMin": 1, "cartridgeMax": 4, "subscribableInfo": {"alias": "web", "autoscalingPolicy": "busy", "deploymentPolicy": "dp"}}]}})),
    ])
    .await;
    assert_eq!(
        api.post("/api/applications/busy/deploy/ap", json!({}))
            .await
            .0,
        202
    );
    eventually(30, "one member active", || async {
        (api.active("busy", "web").await.len() == 1).then_some(())
    })
    .await;

    // 16 clients, each with a request always in flight (each held 200 ms): 16 in flight, threshold 4.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(proxy, "busy.web.localhost", 16, stop.clone());
    let started = Instant::now();
    eventually(20, "scaled up to the maximum of 4", || async {
        (api.active("busy", "web").await.len() == 4).then_some(())
    })
    .await;
    let scaled_up_in = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut failures = 0;
    for c in clients {
        failures += c.await.unwrap();
    }
    assert_eq!(failures, 0, "no request failed while the cluster scaled up");
    assert!(
        scaled_up_in < Duration::from_secs(15),
        "scale-up took {scaled_up_in:?}"
    );
    // Every decision is recorded with what it was made from.
    let (status, events) = api.get("/api/applications/busy/scalingEvents").await;
    assert_eq!(status, 200);
    let up = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["decision"].get("ScaleUp").is_some())
        .cloned()
        .unwrap_or_else(|| panic!("{events}"));
    assert_eq!(up["required"]["reason"], "RequestsInFlight", "{up}");
    assert_eq!(up["thresholds"]["requestsInFlight"], 4.0);
    assert!(
        up["predicted"]["requestsInFlight"].as_f64().unwrap() > 4.0,
        "{up}"
    );
    assert_eq!(up["clusterId"], "busy.web.slow.domain");
    // Without load, back to the minimum, one member at a time.
    let stopped = Instant::now();
    eventually(40, "scaled back down to 1", || async {
        let members = api.members("busy").await;
        (members
            .iter()
            .filter(|(_, m)| m["status"] == "Active")
            .count()
            == 1
            && members.len() == 1)
            .then_some(())
    })
    .await;
    assert!(
        stopped.elapsed() > Duration::from_secs(2),
        "scale-down waits for its cool-down"
    );
    let metrics = api.metrics().await;
    assert!(
        metrics.contains("nubo_members{status=\"Active\"} 1"),
        "{metrics}"
    );
}

/// A server deciding on a 2 s window, with cool-downs of 1 s up and `down` seconds down.
fn fast_scaling_server(dir: &std::path::Path, down: &str) -> ServerProcess {
    ServerProcess::start_with(
        dir,
        &[
            "--insecure-http",
            "--scale-window",
            "2",
            "--scale-up-cooldown",
            "1",
            "--scale-down-cooldown",
            down,
        ],
    )
}

/// `n` clients through the load balancer, each keeping one request in flight, until `stop`.
fn load(
    proxy: u16,
    host: &'static str,
    n: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u32>> {
    (0..n)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let mut failures = 0;
                while !stop.load(Ordering::Relaxed) {
                    match client
                        .get(format!("http://127.0.0.1:{proxy}/"))
                        .header("host", host)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => {}
                        _ => failures += 1,
                    }
                }
                failures
            })
        })
        .collect()
}

#[tokio::test]
async fn a_group_with_a_startup_order_scales_two_clusters_on_two_factors() {
    // On the local provider, for real: a group (cache, then web) where web scales on requests in
    // flight through the load balancer and cache on its workload's memory (a process that holds
    // 2 % of the host's memory while a switch file exists; threshold 1 %).
    let dir = tempfile::tempdir().unwrap();
    let server = fast_scaling_server(dir.path(), "2");
    let api = Api::new(&server);
    let proxy = free_port();
    let fixtures = crate::support::manifest_dir().join("tests/it/fixtures");
    let switch = dir.path().join("hog");
    api.add_all(&[
        ("autoscalingPolicies", json!({"id": "rif", "loadThresholds": {"requestsInFlight": {"threshold": 4}}})),
        ("autoscalingPolicies", json!({"id": "mem", "loadThresholds": {"memoryConsumption": {"threshold": 1}}})),
        ("networkPartitions", json!({"id": "np", "provider": "local", "partitions": [{"id": "p1"}]})),
        ("deploymentPolicies", json!({"id": "dp", "networkPartitions": [{"id": "np", "partitionAlgo": "one-after-another", "partitions": [{"id": "p1"}]}]})),
        ("applicationPolicies", json!({"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]})),
        ("cartridges", json!({"type": "slow", "category": "framework", "host": "localhost",
            "portMapping": [{"name": "http", "protocol": "http", "port": 8080, "proxyPort": proxy}],
            "iaasProvider": [{"type": "local", "imageId": format!("exec python3 {}", fixtures.join("slow.py").display())}]})),
        ("cartridges", json!({"type": "hog", "category": "data",
            "iaasProvider": [{"type": "local", "imageId": format!("exec python3 {} {} 2", fixtures.join("memhog.py").display(), switch.display())}]})),
        ("cartridgeGroups", json!({"name": "stack", "cartridges": ["hog", "slow"],
            "dependencies": {"startupOrders": [{"aliases": ["cartridge.cache", "cartridge.web"]}]}})),
        ("applications", json!({"applicationId": "two", "components": {"groups": [{"name": "stack", "alias": "s", "deploymentPolicy": "dp", "cartridges": [
            {"type": "hog", "cartridgeMin": 1, "cartridgeMax": 3, "subscribableInfo": {"alias": "cache", "autoscalingPolicy": "mem"}},
            {"type": "slow", "cartridgeMin": 1, "cartridgeMax": 4, "subscribableInfo": {"alias": "web", "autoscalingPolicy": "rif"}}]}]}})),
    ])
    .await;
    assert_eq!(
        api.post("/api/applications/two/deploy/ap", json!({}))
            .await
            .0,
        202
    );
    eventually(30, "both clusters with one active member", || async {
        (api.active("two", "cache").await.len() == 1 && api.active("two", "web").await.len() == 1)
            .then_some(())
    })
    .await;
    // Startup order: web's member was created after cache's (member numbers follow creation).
    let number = |m: &serde_json::Value| {
        m["memberId"]
            .as_str()
            .unwrap()
            .rsplit('-')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let cache = api.active("two", "cache").await;
    let web = api.active("two", "web").await;
    assert!(number(&web[0]) > number(&cache[0]), "{cache:?} {web:?}");

    // Load on both factors at once.
    std::fs::write(&switch, b"").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(proxy, "two.web.localhost", 16, stop.clone());
    eventually(
        30,
        "web at 4 (requests in flight) and cache at 2 (memory)",
        || async {
            (api.active("two", "web").await.len() == 4
                && api.active("two", "cache").await.len() == 2)
                .then_some(())
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = 0;
    for c in clients {
        failures += c.await.unwrap();
    }
    assert_eq!(failures, 0);
    let (_, events) = api.get("/api/applications/two/scalingEvents").await;
    let reason = |alias: &str| {
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| {
                e["clusterId"]
                    .as_str()
                    .unwrap()
                    .contains(&format!(".{alias}."))
                    && e["decision"]["ScaleUp"].is_object()
            })
            .map(|e| e["required"]["reason"].clone())
    };
    assert_eq!(reason("web"), Some(json!("RequestsInFlight")), "{events}");
    assert_eq!(
        reason("cache"),
        Some(json!("MemoryConsumption")),
        "{events}"
    );
    // Both loads stop: both clusters back to one member.
    std::fs::remove_file(&switch).unwrap();
    eventually(60, "both back to one member", || async {
        let members = api.members("two").await;
        (members.len() == 2 && members.iter().all(|(_, m)| m["status"] == "Active")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_burst_instance_scales_in_while_the_first_keeps_its_load() {
    // Real traffic through the load balancer, which counts requests per cluster instance. The
    // cluster (1..2 members, 5 requests each) is full at 13 in flight: the application bursts
    // into np2. Then 7 stay in flight, spread over the members: the burst instance carries its
    // own share only (about 2, its minimum of 1), so it is closed while the first instance keeps
    // its load, and then carries all 7 with 2 members, well within its maximum (no new burst). Had each instance seen the cluster's whole figure (Stratos' unsplit
    // one), the burst instance would have wanted 2 members and stayed open while traffic lasted.
    let dir = tempfile::tempdir().unwrap();
    let server = fast_scaling_server(dir.path(), "3");
    let api = Api::new(&server);
    let proxy = free_port();
    deploy_slow(&api, "burst", 2, 5, proxy, &["np1", "np2"]).await;
    let heavy = Arc::new(AtomicBool::new(false));
    let heavy_clients = load(proxy, "burst.web.localhost", 6, heavy.clone());
    let light = Arc::new(AtomicBool::new(false));
    let light_clients = load(proxy, "burst.web.localhost", 7, light.clone());
    eventually(40, "a burst instance in np2 with its member", || async {
        let i = crate::mock::app_instances(&api, "burst").await;
        (i.iter().any(|(_, np, _)| np == "np2") && api.active("burst", "web").await.len() == 3)
            .then_some(())
    })
    .await;
    // Some of the traffic stops: the burst instance closes; the first keeps its 2 members.
    heavy.store(true, Ordering::Relaxed);
    eventually(40, "the burst instance closed", || async {
        let i = crate::mock::app_instances(&api, "burst").await;
        (i.len() == 1 && i[0].1 == "np1").then_some(())
    })
    .await;
    // The first instance carries the 7 with 2 members, and needs no burst for them (2 is its
    // maximum, not beyond it).
    eventually(30, "the first instance with 2 members", || async {
        (api.active("burst", "web").await.len() == 2).then_some(())
    })
    .await;
    crate::support::holds(Duration::from_secs(4), "no burst again", || async {
        crate::mock::app_instances(&api, "burst").await.len() == 1
    })
    .await;
    light.store(true, Ordering::Relaxed);
    let mut failures = 0;
    for c in heavy_clients.into_iter().chain(light_clients) {
        failures += c.await.unwrap();
    }
    assert_eq!(
        failures, 0,
        "no request failed through the burst and its closing"
    );
}

#[tokio::test]
async fn scaling_down_under_load_fails_no_request() {
    // Members drained as they are scaled down: the load balancer stops sending them requests
    // (maintenance mode) before their workload stops, and the requests they hold finish.
    let dir = tempfile::tempdir().unwrap();
    let server = fast_scaling_server(dir.path(), "2");
    let api = Api::new(&server);
    let proxy = free_port();
    deploy_slow(&api, "drain", 3, 4, proxy, &["np"]).await;
    let extra = Arc::new(AtomicBool::new(false));
    let extra_clients = load(proxy, "drain.web.localhost", 9, extra.clone());
    let base = Arc::new(AtomicBool::new(false));
    let base_clients = load(proxy, "drain.web.localhost", 3, base.clone());
    eventually(30, "scaled up to 3", || async {
        (api.active("drain", "web").await.len() == 3).then_some(())
    })
    .await;
    // Most of the load stops; 3 clients go on while the cluster scales back down to 1.
    extra.store(true, Ordering::Relaxed);
    eventually(40, "scaled down to 1 under load", || async {
        let m = api.members("drain").await;
        (m.len() == 1 && m[0].1["status"] == "Active").then_some(())
    })
    .await;
    base.store(true, Ordering::Relaxed);
    let mut failures = 0;
    for c in extra_clients.into_iter().chain(base_clients) {
        failures += c.await.unwrap();
    }
    assert_eq!(failures, 0, "no request failed while members were drained");
}

/// Adds and deploys application `app`: one cluster `web` of `slow.py` (1 to `max` members, scaling
/// at `threshold` requests in flight each) behind `proxy`, over network partitions `nps` (one
/// group each, in order: the first at deployment, the next ones for bursting); waits for its
/// first member.
async fn deploy_slow(api: &Api, app: &str, max: u32, threshold: u32, proxy: u16, nps: &[&str]) {
    let script = crate::support::manifest_dir().join("tests/it/fixtures/slow.py");
    let mut artifacts = vec![(
        "autoscalingPolicies",
        json!({"id": "busy", "loadThresholds": {"requestsInFlight": {"threshold": threshold}}}),
    )];
    for np in nps {
        artifacts.push((
            "networkPartitions",
            json!({"id": np, "provider": "local", "partitions": [{"id": "p1"}]}),
        ));
    }
    let dp_nps: Vec<_> = nps
        .iter()
        .map(|np| json!({"id": np, "partitionAlgo": "one-after-another", "partitions": [{"id": "p1"}]}))
        .collect();
    artifacts.extend([
        ("deploymentPolicies", json!({"id": "dp", "networkPartitions": dp_nps})),
        ("applicationPolicies", json!({"id": "ap", "algorithm": "one-after-another", "networkPartitions": nps,
            "properties": [{"name": "networkPartitionGroups", "value": nps.join(",")}]})),
        ("cartridges", json!({"type": "slow", "category": "framework", "host": "localhost",
            "portMapping": [{"name": "http", "protocol": "http", "port": 8080, "proxyPort": proxy}],
            "iaasProvider": [{"type": "local", "imageId": format!("exec python3 {}", script.display())}]})),
        ("applications", json!({"applicationId": app, "components": {"cartridges": [
            {"type": "slow", "cartridgeMin": 1, "cartridgeMax": max, "subscribableInfo": {"alias": "web", "autoscalingPolicy": "busy", "deploymentPolicy": "dp"}}]}})),
    ]);
    api.add_all(&artifacts).await;
    let (status, body) = api
        .post(&format!("/api/applications/{app}/deploy/ap"), json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    eventually(30, "one member active", || async {
        (api.active(app, "web").await.len() == 1).then_some(())
    })
    .await;
}
