//! The calls Nubo makes to a Kubernetes API server, through `kube`: pods and services created
//! and deleted, the members' pods listed (adoption) and watched (status).

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::sync::mpsc;

use crate::manifests::{self, MANAGED_BY, MEMBER_ANNOTATION, ServicesInput};

/// How Nubo reaches a Kubernetes cluster.
#[derive(Clone, PartialEq, Eq)]
pub enum Access {
    /// A kubeconfig's text (its current context).
    Kubeconfig(String),
    /// An API server's URL, with a bearer token and the authority to trust (PEM).
    Server {
        /// `https://host:6443` (or `http://` for a server on loopback).
        url: String,
        /// A bearer token.
        token: Option<String>,
        /// The authority of the server's certificate (PEM); else the system's.
        ca_pem: Option<String>,
    },
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Kubeconfig(_) => f.write_str("Kubeconfig(…)"),
            Access::Server { url, token, .. } => f
                .debug_struct("Server")
                .field("url", url)
                .field("token", &token.as_ref().map(|_| "…"))
                .finish_non_exhaustive(),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The access settings do not make a client.
    #[error("cannot reach the Kubernetes cluster: {0}")]
    Config(String),
    /// The API server refused or failed the call.
    #[error("the Kubernetes API: {0}")]
    Api(String),
    /// A manifest could not be made.
    #[error(transparent)]
    Manifest(#[from] manifests::ManifestError),
}

fn api_error(e: kube::Error) -> KubeError {
    KubeError::Api(match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        e => e.to_string(),
    })
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Where a member's pod is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Scheduled or pulling its image.
    Pending,
    /// Its container runs; its ports do not all answer yet.
    Running,
    /// Ready: its readiness probe (its ports) answers.
    Ready,
    /// Ended, failed or being deleted: why.
    Ended(String),
}

/// A member's pod as the API server says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// The member (the pod's annotation).
    pub member_id: String,
    /// The pod's name.
    pub pod: String,
    /// Its address, once it has one.
    pub ip: Option<String>,
    /// Where it is.
    pub phase: Phase,
}

/// What a watch of the members' pods reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodEvent {
    /// Every member's pod, at the start of a watch (and after it was lost): a member missing
    /// from it has no pod any more.
    Listed(Vec<PodState>),
    /// A pod changed.
    Changed(PodState),
    /// A member's pod is gone.
    Gone {
        /// The member.
        member_id: String,
        /// Why.
        reason: String,
    },
}

/// What a pod says of itself; `None` for a pod that is not a member's.
pub fn pod_state(pod: &Pod) -> Option<PodState> {
    let member_id = pod
        .metadata
        .annotations
        .as_ref()?
        .get(MEMBER_ANNOTATION)?
        .clone();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.as_ref();
    let ip = status
        .and_then(|s| s.pod_ip.clone())
        .filter(|ip| !ip.is_empty());
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find_map(|c| c.state.as_ref()?.terminated.clone()));
    let phase = if pod.metadata.deletion_timestamp.is_some() {
        Phase::Ended("the pod is being deleted".into())
    } else {
        match status.and_then(|s| s.phase.as_deref()) {
            Some("Running") if ready => Phase::Ready,
            Some("Running") => Phase::Running,
            Some(p @ ("Succeeded" | "Failed")) => Phase::Ended(match terminated {
                Some(t) => format!(
                    "the pod's container ended (exit code {}{})",
                    t.exit_code,
                    t.reason.map(|r| format!(", {r}")).unwrap_or_default()
                ),
                None => format!(
                    "the pod {}{}",
                    p.to_ascii_lowercase(),
                    status
                        .and_then(|s| s.message.clone())
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
            }),
            _ => Phase::Pending,
        }
    };
    Some(PodState {
        member_id,
        pod: name,
        ip,
        phase,
    })
}

/// One Kubernetes cluster's namespace, as Nubo uses it.
#[derive(Clone)]
pub struct KubeCluster {
    pods: Api<Pod>,
    services: Api<Service>,
    namespace: String,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// The selector of every object Nubo makes.
fn managed() -> String {
    format!("{MANAGED_BY}=nubo")
}

impl KubeCluster {
    /// A client of the cluster `access` names, in `namespace` (else the kubeconfig's, else
    /// `default`). Nothing is called yet.
    pub async fn connect(access: &Access, namespace: Option<&str>) -> Result<Self, KubeError> {
        let text = match access {
            Access::Kubeconfig(text) => text.clone(),
            Access::Server { url, token, ca_pem } => {
                use base64::Engine as _;
                let mut cluster = serde_json::json!({"server": url});
                if let Some(pem) = ca_pem {
                    cluster["certificate-authority-data"] =
                        base64::engine::general_purpose::STANDARD.encode(pem).into();
                }
                let mut user = serde_json::json!({});
                if let Some(t) = token {
                    user["token"] = t.clone().into();
                }
                // JSON is YAML: a kubeconfig of one cluster, one user, one context.
                serde_json::json!({
                    "apiVersion": "v1", "kind": "Config",
                    "clusters": [{"name": "c", "cluster": cluster}],
                    "users": [{"name": "u", "user": user}],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                })
                .to_string()
            }
        };
        let kubeconfig =
            Kubeconfig::from_yaml(&text).map_err(|e| KubeError::Config(e.to_string()))?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| KubeError::Config(e.to_string()))?;
        let namespace = namespace
            .map(str::to_owned)
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))?;
        Ok(KubeCluster {
            pods: Api::namespaced(client.clone(), &namespace),
            services: Api::namespaced(client, &namespace),
            namespace,
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Creates a member's pod; one of that name already there (a start asked again after a
    /// restart) is kept, not made twice.
    pub async fn create_pod(&self, pod: &Pod) -> Result<(), KubeError> {
        match self.pods.create(&PostParams::default(), pod).await {
            Ok(_) => Ok(()),
            Err(e) if status_code(&e) == Some(409) => Ok(()),
            Err(e) => Err(api_error(e)),
        }
    }

    /// Deletes a member's pod (its workload gets SIGTERM, then SIGKILL after `grace`); one
    /// already gone is fine.
    pub async fn delete_pod(&self, name: &str, grace: Duration) -> Result<(), KubeError> {
        let dp = DeleteParams {
            grace_period_seconds: Some(grace.as_secs().min(3600) as u32),
            ..Default::default()
        };
        match self.pods.delete(name, &dp).await {
            Ok(_) => Ok(()),
            Err(e) if status_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(api_error(e)),
        }
    }

    /// The members' pods now.
    pub async fn pods(&self) -> Result<Vec<PodState>, KubeError> {
        let list = self
            .pods
            .list(&ListParams::default().labels(&managed()))
            .await
            .map_err(api_error)?;
        Ok(list.items.iter().filter_map(pod_state).collect())
    }

    /// The members' pods now, whole (their annotations say whose they are).
    pub async fn pod_objects(&self) -> Result<Vec<Pod>, KubeError> {
        Ok(self
            .pods
            .list(&ListParams::default().labels(&managed()))
            .await
            .map_err(api_error)?
            .items)
    }

    /// Makes the cluster's services that are missing (one per port mapping), their node ports
    /// taken from `range` beside those of the namespace's other services; returns the node port
    /// of each port mapping (`None` for a `ClusterIP` one).
    pub async fn ensure_services(
        &self,
        input: &ServicesInput,
        range: (u16, u16),
    ) -> Result<Vec<Option<u16>>, KubeError> {
        let existing = self
            .services
            .list(&ListParams::default())
            .await
            .map_err(api_error)?;
        let mut used = BTreeSet::new();
        let mut mine = std::collections::BTreeMap::new();
        for s in &existing.items {
            let ports = s
                .spec
                .as_ref()
                .and_then(|x| x.ports.clone())
                .unwrap_or_default();
            for p in &ports {
                if let Some(n) = p.node_port.and_then(|n| u16::try_from(n).ok()) {
                    used.insert(n);
                    if let Some(name) = &s.metadata.name {
                        mine.insert(name.clone(), n);
                    }
                }
            }
        }
        // The ports of this cluster's services already made are theirs, not free.
        let mut ports = input.ports.clone();
        for p in &mut ports {
            let name = manifests::service_name(&input.cluster_id, &p.name);
            if let Some(n) = mine.get(&name) {
                p.node_port = Some(*n);
                used.remove(n);
            }
        }
        let node_ports = manifests::node_ports(&ports, range, &used)?;
        let wanted = manifests::services(
            &ServicesInput {
                ports,
                ..input.clone()
            },
            &node_ports,
        );
        let have: BTreeSet<String> = existing
            .items
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        for s in &wanted {
            if s.metadata.name.as_ref().is_some_and(|n| have.contains(n)) {
                continue;
            }
            match self.services.create(&PostParams::default(), s).await {
                Ok(_) => {}
                Err(e) if status_code(&e) == Some(409) => {}
                Err(e) => return Err(api_error(e)),
            }
        }
        Ok(node_ports)
    }

    /// Deletes a cluster's services.
    pub async fn delete_services(&self, cluster_id: &str) -> Result<(), KubeError> {
        let selector = format!(
            "{},{}={}",
            managed(),
            manifests::CLUSTER_LABEL,
            manifests::label_value(cluster_id)
        );
        let list = self
            .services
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(api_error)?;
        for s in list.items {
            if let Some(name) = s.metadata.name {
                match self.services.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(e) if status_code(&e) == Some(404) => {}
                    Err(e) => return Err(api_error(e)),
                }
            }
        }
        Ok(())
    }

    /// Watches the members' pods until the receiver is dropped: a full list first (and again
    /// whenever the watch was lost), then each change.
    pub fn watch(&self) -> mpsc::Receiver<PodEvent> {
        let (tx, rx) = mpsc::channel(1024);
        let pods = self.pods.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(200);
            loop {
                if tx.is_closed() {
                    return;
                }
                let list = match pods.list(&ListParams::default().labels(&managed())).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot list the members' pods; trying again");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(10));
                        continue;
                    }
                };
                pause = Duration::from_millis(200);
                let mut version = list.metadata.resource_version.clone().unwrap_or_default();
                let states = list.items.iter().filter_map(pod_state).collect();
                if tx.send(PodEvent::Listed(states)).await.is_err() {
                    return;
                }
                let wp = WatchParams::default().labels(&managed()).timeout(290);
                let stream = match pods.watch(&wp, &version).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch the members' pods; listing again");
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                };
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    let out = match event {
                        Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                            version = p.metadata.resource_version.clone().unwrap_or(version);
                            pod_state(&p).map(PodEvent::Changed)
                        }
                        Ok(WatchEvent::Deleted(p)) => {
                            version = p.metadata.resource_version.clone().unwrap_or(version);
                            pod_state(&p).map(|s| PodEvent::Gone {
                                member_id: s.member_id,
                                reason: "the pod was deleted".into(),
                            })
                        }
                        Ok(WatchEvent::Bookmark(b)) => {
                            version = b.metadata.resource_version;
                            None
                        }
                        // Expired (410) or failed: list again.
                        Ok(WatchEvent::Error(_)) | Err(_) => break,
                    };
                    if let Some(out) = out
                        && tx.send(out).await.is_err()
                    {
                        return;
                    }
                }
                let _ = version;
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::fake::FakeApiServer;
    use crate::manifests::{PodInput, PortSpec};

    fn input(member: &str) -> PodInput {
        PodInput {
            member_id: member.into(),
            application_id: "shop".into(),
            cluster_id: "shop.web".into(),
            cluster_instance_id: "shop-1".into(),
            service_name: "web".into(),
            network_partition_id: "np".into(),
            partition_id: "p1".into(),
            image: "web:1".into(),
            env: BTreeMap::new(),
            ports: vec![PortSpec {
                name: "http".into(),
                protocol: "http".into(),
                port: 8080,
                service_type: "NodePort".into(),
                node_port: None,
            }],
            cpu: None,
            memory: None,
            pull_secrets: vec![],
            pull_policy: None,
        }
    }

    async fn connect(fake: &FakeApiServer, token: Option<&str>) -> KubeCluster {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let access = Access::Server {
            url: fake.url().to_owned(),
            token: token.map(str::to_owned),
            ca_pem: None,
        };
        KubeCluster::connect(&access, Some("apps")).await.unwrap()
    }

    /// The next event that is not a list; a list's states are returned as they come.
    async fn next(rx: &mut mpsc::Receiver<PodEvent>) -> PodEvent {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event within 10 s")
            .expect("the watch runs")
    }

    /// Waits for `member`'s pod to reach `phase`.
    async fn until_phase(
        rx: &mut mpsc::Receiver<PodEvent>,
        member: &str,
        phase: &Phase,
    ) -> PodState {
        loop {
            match next(rx).await {
                PodEvent::Changed(s) if s.member_id == member && s.phase == *phase => return s,
                PodEvent::Listed(l) => {
                    if let Some(s) = l
                        .into_iter()
                        .find(|s| s.member_id == member && s.phase == *phase)
                    {
                        return s;
                    }
                }
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn pods_are_created_watched_deleted_and_adopted() {
        let fake = FakeApiServer::start().await;
        fake.require_token("s3cret");
        let k = connect(&fake, Some("s3cret")).await;
        let mut rx = k.watch();
        assert_eq!(next(&mut rx).await, PodEvent::Listed(vec![]));
        // Created: Pending, then Ready with an address (the kubelet's readiness probe).
        k.create_pod(&manifests::pod(&input("shop.web.m1")))
            .await
            .unwrap();
        let ready = until_phase(&mut rx, "shop.web.m1", &Phase::Ready).await;
        assert!(ready.ip.is_some(), "{ready:?}");
        assert_eq!(ready.pod, manifests::pod_name("shop.web.m1"));
        // A start asked again (after a restart) keeps the pod, makes no second.
        k.create_pod(&manifests::pod(&input("shop.web.m1")))
            .await
            .unwrap();
        assert_eq!(fake.objects("pods").len(), 1);
        // Adopted: another client (a restarted controller) finds it by its labels, Ready.
        let again = connect(&fake, Some("s3cret")).await;
        let found = again.pods().await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].member_id, "shop.web.m1");
        assert_eq!(found[0].phase, Phase::Ready);
        // A pod whose container ends: its reason, with the exit code.
        k.create_pod(&manifests::pod(&input("shop.web.m2")))
            .await
            .unwrap();
        until_phase(&mut rx, "shop.web.m2", &Phase::Ready).await;
        fake.end_pod("apps", &manifests::pod_name("shop.web.m2"), 3);
        loop {
            if let PodEvent::Changed(s) = next(&mut rx).await
                && let Phase::Ended(why) = &s.phase
            {
                assert!(why.contains("exit code 3"), "{why}");
                break;
            }
        }
        // Deleted by Nubo, and behind its back: both are Gone.
        k.delete_pod(&manifests::pod_name("shop.web.m2"), Duration::from_secs(5))
            .await
            .unwrap();
        k.delete_pod(&manifests::pod_name("shop.web.m2"), Duration::from_secs(5))
            .await
            .unwrap();
        fake.delete_pod("apps", &manifests::pod_name("shop.web.m1"));
        let mut gone = vec![];
        while gone.len() < 2 {
            if let PodEvent::Gone { member_id, .. } = next(&mut rx).await {
                gone.push(member_id);
            }
        }
        gone.sort();
        assert_eq!(gone, ["shop.web.m1", "shop.web.m2"]);
        // Without the token: refused, saying so.
        let stranger = connect(&fake, None).await;
        let e = stranger.pods().await.unwrap_err();
        assert!(e.to_string().contains("401"), "{e}");
    }

    #[tokio::test]
    async fn a_lost_watch_lists_again_and_misses_nothing() {
        let fake = FakeApiServer::start().await;
        let k = connect(&fake, None).await;
        k.create_pod(&manifests::pod(&input("shop.web.m1")))
            .await
            .unwrap();
        k.create_pod(&manifests::pod(&input("shop.web.m2")))
            .await
            .unwrap();
        let mut rx = k.watch();
        let mut ready = std::collections::BTreeSet::new();
        while ready.len() < 2 {
            match next(&mut rx).await {
                PodEvent::Changed(s) if s.phase == Phase::Ready => {
                    ready.insert(s.member_id);
                }
                PodEvent::Listed(l) => ready.extend(
                    l.into_iter()
                        .filter(|s| s.phase == Phase::Ready)
                        .map(|s| s.member_id),
                ),
                _ => {}
            }
        }
        // The watch is cut; meanwhile a pod goes. The new list lacks it.
        fake.cut_watches();
        fake.delete_pod("apps", &manifests::pod_name("shop.web.m1"));
        loop {
            match next(&mut rx).await {
                PodEvent::Listed(l) => {
                    let ids: Vec<&str> = l.iter().map(|s| s.member_id.as_str()).collect();
                    assert_eq!(ids, ["shop.web.m2"]);
                    break;
                }
                PodEvent::Gone { member_id, .. } => {
                    // Seen before the cut took effect: as good.
                    assert_eq!(member_id, "shop.web.m1");
                    break;
                }
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn services_take_free_node_ports_once_and_go_with_their_cluster() {
        let fake = FakeApiServer::start().await;
        let k = connect(&fake, None).await;
        let mut web = ServicesInput {
            application_id: "shop".into(),
            cluster_id: "shop.web".into(),
            ports: input("x").ports,
            session_affinity: Some("ClientIP".into()),
        };
        let first = k.ensure_services(&web, (30000, 30002)).await.unwrap();
        assert_eq!(first, [Some(30000)]);
        // Asked again (another member, a restart): the same service, the same port.
        assert_eq!(
            k.ensure_services(&web, (30000, 30002)).await.unwrap(),
            first
        );
        assert_eq!(fake.objects("services").len(), 1);
        // Another cluster takes the next free port.
        let mut db = web.clone();
        db.cluster_id = "shop.db".into();
        assert_eq!(
            k.ensure_services(&db, (30000, 30002)).await.unwrap(),
            [Some(30001)]
        );
        // A port asked for that is taken is refused, naming it.
        web.cluster_id = "shop.api".into();
        web.ports[0].node_port = Some(30001);
        let e = k.ensure_services(&web, (30000, 30002)).await.unwrap_err();
        assert!(e.to_string().contains("30001"), "{e}");
        k.delete_services("shop.web").await.unwrap();
        let left: Vec<String> = fake
            .objects("services")
            .iter()
            .map(|s| {
                s["metadata"]["annotations"]["nubo.io/cluster-id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(left, ["shop.db"]);
    }
}
