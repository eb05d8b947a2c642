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
    let server = ServerProcess::start_with(
        dir.path(),
        &[
            "--insecure-http",
            "--scale-window",
            "2",
            "--scale-up-cooldown",
            "1",
            "--scale-down-cooldown",
            "2",
        ],
    );
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
    let server = ServerProcess::start_with(
        dir.path(),
        &[
            "--insecure-http",
            "--scale-window",
            "2",
            "--scale-up-cooldown",
            "1",
            "--scale-down-cooldown",
            "2",
        ],
    );
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
