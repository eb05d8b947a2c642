//! The `kubernetes` provider end to end, against the in-process fake API server (no Kubernetes
//! API server can be installed here; `NUBO_TEST_KUBECONFIG` runs the live suite where one is).

use serde_json::{Value, json};

use crate::support::{Api, ServerProcess, eventually};

/// A Stratos-shaped application on a Kubernetes cluster registered with its API server, token
/// and namespace: `min` members of cartridge `{app}-c` (image `hello:1`, port 8080 as a
/// NodePort, 128 MB).
fn kube_app(app: &str, api_server: &str, min: u32) -> Vec<(&'static str, Value)> {
    vec![
        (
            "kubernetesClusters",
            json!({"clusterId": format!("{app}-k8s"), "description": "the test's cluster",
                "kubernetesMaster": {"hostId": "master", "hostname": "master.local", "privateIPAddress": "127.0.0.1"},
                "kubernetesHosts": [{"hostId": "minion-1", "hostname": "minion-1.local"}],
                "portRange": {"upper": "30010", "lower": "30000"},
                "property": [
                    {"name": "apiServer", "value": api_server},
                    {"name": "namespace", "value": "nubo-apps"},
                    {"name": "token", "value": "k8s-t0ken-of-the-test"}]}),
        ),
        (
            "autoscalingPolicies",
            json!({"id": format!("{app}-asp"), "loadThresholds": {"memoryConsumption": {"threshold": 95}}}),
        ),
        (
            "networkPartitions",
            json!({"id": format!("{app}-np"), "provider": "kubernetes", "partitions": [
                {"id": "p1", "property": [{"name": "cluster", "value": format!("{app}-k8s")}]}]}),
        ),
        (
            "deploymentPolicies",
            json!({"id": format!("{app}-dp"), "networkPartitions": [
                {"id": format!("{app}-np"), "partitionAlgo": "round-robin", "partitions": [{"id": "p1"}]}]}),
        ),
        (
            "applicationPolicies",
            json!({"id": format!("{app}-ap"), "algorithm": "one-after-another",
                "networkPartitions": [format!("{app}-np")]}),
        ),
        (
            "cartridges",
            json!({"type": format!("{app}-c"), "category": "framework", "host": "localhost",
                "portMapping": [{"name": "http", "protocol": "http", "port": 8080,
                    "kubernetesPortType": "NodePort"}],
                "property": [{"name": "KUBERNETES_CONTAINER_MEMORY", "value": "128"},
                    {"name": "KUBERNETES_SERVICE_SESSION_AFFINITY", "value": "ClientIP"}],
                "iaasProvider": [{"type": "kubernetes", "imageId": "hello:1"}]}),
        ),
        (
            "applications",
            json!({"applicationId": app, "components": {"cartridges": [
                {"type": format!("{app}-c"), "cartridgeMin": min, "cartridgeMax": min,
                 "subscribableInfo": {"alias": "web", "autoscalingPolicy": format!("{app}-asp"),
                    "deploymentPolicy": format!("{app}-dp")}}]}}),
        ),
    ]
}

fn posts(fake: &nubo_kube::fake::FakeApiServer) -> usize {
    fake.requests().iter().filter(|r| *r == "POST pods").count()
}

fn sorted_ids(members: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = members
        .iter()
        .map(|m| m["memberId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Deployed on a registered cluster: a pod per member (labelled, limited, without the
/// platform's credentials) and a service per port mapping; a pod that ends is replaced; the
/// server killed and restarted adopts the same pods (none created twice); undeployed, no pod
/// and no service is left. The cluster's token is sealed: never served, in no file in clear.
// Several threads: the fake API server answers while the test waits for a server's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_run_as_pods_are_replaced_adopted_and_removed() {
    let fake = nubo_kube::fake::FakeApiServer::start().await;
    fake.require_token("k8s-t0ken-of-the-test");
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    api.add_all(&kube_app("kapp", fake.url(), 2)).await;
    // The token is never served back.
    let (status, cluster) = api.get("/api/kubernetesClusters/kapp-k8s").await;
    assert_eq!(status, 200);
    assert!(!cluster.to_string().contains("k8s-t0ken"), "{cluster}");
    assert!(cluster.to_string().contains(fake.url()), "{cluster}");
    let (status, body) = api
        .post("/api/applications/kapp/deploy/kapp-ap", json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let members = eventually(30, "two members Active on Kubernetes", || async {
        let m = api.active("kapp", "web").await;
        (m.len() == 2).then_some(m)
    })
    .await;
    // A pod per member, at its address, labelled and limited, without the platform's secrets.
    let pods = fake.objects("pods");
    assert_eq!(pods.len(), 2);
    for m in &members {
        let id = m["memberId"].as_str().unwrap();
        let pod = pods
            .iter()
            .find(|p| p["metadata"]["annotations"]["nubo.io/member-id"] == id)
            .unwrap_or_else(|| panic!("a pod of {id}"));
        assert_eq!(pod["metadata"]["namespace"], "nubo-apps");
        assert_eq!(pod["metadata"]["labels"]["nubo.io/application"], "kapp");
        assert_eq!(m["defaultPrivateIP"], pod["status"]["podIP"], "{m}");
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["image"], "hello:1");
        assert_eq!(
            c["resources"]["limits"]["memory"],
            (128u64 << 20).to_string()
        );
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
        let env = c["env"].to_string();
        assert!(env.contains("\"APPLICATION_ID\""), "{env}");
        for secret in ["MB_PASSWORD", "k8s-t0ken", "NUBO_KUBE_CLUSTER"] {
            assert!(!env.contains(secret), "{secret} in {env}");
        }
    }
    let services = fake.objects("services");
    assert_eq!(services.len(), 1, "a service per port mapping");
    assert_eq!(services[0]["spec"]["type"], "NodePort");
    assert_eq!(services[0]["spec"]["ports"][0]["nodePort"], 30000);
    assert_eq!(services[0]["spec"]["sessionAffinity"], "ClientIP");
    // A pod whose container ends: its member is replaced.
    let victim = members[0]["memberId"].as_str().unwrap().to_owned();
    fake.end_pod("nubo-apps", &nubo_kube::manifests::pod_name(&victim), 1);
    let after = eventually(30, "the ended member replaced", || async {
        let a = api.active("kapp", "web").await;
        (a.len() == 2 && a.iter().all(|m| m["memberId"] != victim.as_str())).then_some(a)
    })
    .await;
    eventually(10, "two pods again", || async {
        (fake.objects("pods").len() == 2).then_some(())
    })
    .await;
    // The server killed and started again: the same pods adopted, none created again.
    let ids = sorted_ids(&after);
    let created = posts(&fake);
    server.kill9();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    eventually(30, "the same two members Active again", || async {
        (sorted_ids(&api.active("kapp", "web").await) == ids).then_some(())
    })
    .await;
    crate::support::holds(
        std::time::Duration::from_secs(2),
        "no pod created again",
        || async { posts(&fake) == created && fake.objects("pods").len() == 2 },
    )
    .await;
    // The token is sealed in the store: in clear in no file of the data directory.
    let leaked = crate::agent::files_containing(dir.path(), b"k8s-t0ken-of-the-test");
    assert!(leaked.is_empty(), "{leaked:?}");
    // Undeployed: no pod, no service left.
    let (status, _) = api.post("/api/applications/kapp/undeploy", json!({})).await;
    assert_eq!(status, 202);
    eventually(30, "undeployed, nothing left on the cluster", || async {
        let gone = api.get("/api/applications/kapp/runtime").await.0 == 404;
        (gone && fake.objects("pods").is_empty() && fake.objects("services").is_empty())
            .then_some(())
    })
    .await;
}

/// The live suite, on the cluster `NUBO_TEST_KUBECONFIG` names (a kubeconfig file), in the
/// namespace `NUBO_TEST_KUBE_NAMESPACE` (default `default`), with the image
/// `NUBO_TEST_KUBE_IMAGE` (default `nginxinc/nginx-unprivileged:alpine`, which serves on 8080
/// without privileges): a member runs as a pod and becomes Active when its port answers the
/// kubelet; its pod deleted behind the platform's back, it is replaced; undeployed, nothing of
/// it is left. Never run on this project's machines (no Kubernetes API server installs here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_members_run_as_pods_on_a_real_cluster() {
    let Some(path) = nubo_testing::optional_service("NUBO_TEST_KUBECONFIG", "Kubernetes, live")
    else {
        return;
    };
    let kubeconfig =
        std::fs::read_to_string(&path).expect("the kubeconfig NUBO_TEST_KUBECONFIG names");
    let namespace = std::env::var("NUBO_TEST_KUBE_NAMESPACE").unwrap_or_else(|_| "default".into());
    let image = std::env::var("NUBO_TEST_KUBE_IMAGE")
        .unwrap_or_else(|_| "nginxinc/nginx-unprivileged:alpine".into());
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let mut artifacts = kube_app("klive", "https://unused.invalid", 1);
    for (kind, body) in &mut artifacts {
        match *kind {
            "kubernetesClusters" => {
                body["property"] = json!([{"name": "kubeconfig", "value": kubeconfig},
                    {"name": "namespace", "value": namespace}]);
            }
            "cartridges" => {
                body["iaasProvider"][0]["imageId"] = json!(image);
                body["portMapping"][0]["kubernetesPortType"] = json!("ClusterIP");
            }
            _ => {}
        }
    }
    api.add_all(&artifacts).await;
    let (status, body) = api
        .post("/api/applications/klive/deploy/klive-ap", json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let first = eventually(300, "a member Active on the cluster", || async {
        let m = api.active("klive", "web").await;
        (m.len() == 1).then_some(m)
    })
    .await;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let k8s = nubo_kube::cluster::KubeCluster::connect(
        &nubo_kube::cluster::Access::Kubeconfig(kubeconfig.clone()),
        Some(&namespace),
    )
    .await
    .unwrap();
    let victim = first[0]["memberId"].as_str().unwrap().to_owned();
    let pods = k8s.pods().await.unwrap();
    assert!(pods.iter().any(|p| p.member_id == victim), "{pods:?}");
    k8s.delete_pod(
        &nubo_kube::manifests::pod_name(&victim),
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
    eventually(300, "the deleted pod's member replaced", || async {
        let m = api.active("klive", "web").await;
        (m.len() == 1 && m[0]["memberId"] != victim.as_str()).then_some(())
    })
    .await;
    let (status, _) = api
        .post("/api/applications/klive/undeploy", json!({}))
        .await;
    assert_eq!(status, 202);
    eventually(120, "undeployed, no pod left", || async {
        let gone = api.get("/api/applications/klive/runtime").await.0 == 404;
        let left = k8s.pods().await.unwrap_or_default();
        (gone && !left.iter().any(|p| p.member_id.starts_with("klive."))).then_some(())
    })
    .await;
}
