//! The `kubernetes` provider: the controller's [`Provider`] over Kubernetes clusters. A member's
//! start makes its cluster's services (once) and its pod, and waits until the pod runs (its
//! address is the member's); the pod's readiness (a TCP probe on its ports) is the member's
//! activation. The provider answers the controller's handshake on the bus as an agent would,
//! from what the watch of the pods says; a pod that ends or goes is the member's exit. After a
//! restart, [`Provider::running`] lists every registered cluster's pods by label and adopts them.
//!
//! No agent runs in the pod: the workload gets its launch parameters as its environment (as in
//! Stratos 4.1), without the platform's credentials. What this gives up is in docs/containers.md.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nubo_bus::EventBus;
use nubo_events::{Category, Event, InstanceRef, MemberPort};
use nubo_iaas::{IaasError, MemberSpec, Provider, StartedMember};

use crate::cluster::{Access, KubeCluster, Phase, PodEvent, PodState};
use crate::manifests::{self, PodInput, PortSpec, ServicesInput};

/// The parameter naming a member's Kubernetes cluster (its partition's `cluster` property).
pub const CLUSTER_PARAMETER: &str = "NUBO_KUBE_CLUSTER";

/// Launch parameters never given to a pod: the platform's own.
const NOT_FOR_THE_POD: &[&str] = &[
    CLUSTER_PARAMETER,
    "NUBO_RUNTIME",
    "MB_URLS",
    "MB_USERNAME",
    "MB_PASSWORD",
    "NUBO_BUS_KEY",
    "NUBO_BUS_URL",
];

/// A registered Kubernetes cluster, as the provider uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// How to reach it.
    pub access: Access,
    /// The namespace of the members' pods (else the kubeconfig's, else `default`).
    pub namespace: Option<String>,
    /// The node ports services may take (Stratos' `portRange`).
    pub port_range: (u16, u16),
}

/// Where the provider finds the registered clusters (the platform's store, where their
/// credentials are kept sealed).
#[async_trait]
pub trait Clusters: Send + Sync + 'static {
    /// A cluster's settings; an error that says what is missing.
    async fn get(&self, id: &str) -> Result<ClusterSettings, String>;
    /// Every registered cluster's id (for adoption after a restart).
    async fn ids(&self) -> Result<Vec<String>, String>;
}

/// How long a restarted controller waits for a cluster's list of pods.
const ADOPTION_LIST: Duration = Duration::from_secs(10);

/// Timing.
#[derive(Debug, Clone, Copy)]
pub struct KubeTimeouts {
    /// How long a start waits for its pod to run (Stratos: 60 s).
    pub pod_running: Duration,
    /// The grace a deleted pod's workload gets.
    pub termination_grace: Duration,
}

impl Default for KubeTimeouts {
    fn default() -> Self {
        KubeTimeouts {
            pod_running: Duration::from_secs(120),
            termination_grace: Duration::from_secs(10),
        }
    }
}

struct Connected {
    settings: ClusterSettings,
    client: KubeCluster,
}

#[derive(Debug, Clone)]
struct Tracked {
    cluster: String,
    instance: InstanceRef,
    pod: String,
    phase: Phase,
    ip: Option<String>,
    /// The controller said MemberInitialized (its answer: InstanceStarted once running).
    initialized: bool,
    /// The controller said MemberStarted (its answer: InstanceActivated once ready).
    started: bool,
    announced_started: bool,
    announced_active: bool,
    /// The watch has seen its pod: only then can a list without it mean the pod is gone (a
    /// list taken while the pod was being created does not have it yet).
    seen: bool,
}

impl Tracked {
    /// A member whose pod is being made: nothing seen or said of it yet.
    fn pending(cluster: String, instance: InstanceRef, pod: String) -> Tracked {
        Tracked {
            cluster,
            instance,
            pod,
            phase: Phase::Pending,
            ip: None,
            initialized: false,
            started: false,
            announced_started: false,
            announced_active: false,
            seen: false,
        }
    }
}

#[derive(Default)]
struct Inner {
    clusters: HashMap<String, Arc<Connected>>,
    members: HashMap<String, Tracked>,
    /// Pod states seen, for starts waiting for their pod to run.
    waiting: HashMap<String, tokio::sync::watch::Sender<Option<PodState>>>,
}

/// The provider (a handle: clones share it).
#[derive(Clone)]
pub struct KubeProvider(Arc<Core>);

struct Core {
    events: EventBus,
    clusters: Arc<dyn Clusters>,
    timeouts: KubeTimeouts,
    inner: Mutex<Inner>,
    connect: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for KubeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeProvider")
    }
}

fn failed(e: impl std::fmt::Display) -> IaasError {
    IaasError::Failed(e.to_string())
}

/// The ports of a member's cartridge from its `PORT_MAPPINGS` parameter
/// (`NAME:http|PROTOCOL:http|PORT:8080|PROXY_PORT:8280|TYPE:NodePort;…`), else its cluster's.
fn port_specs(spec: &MemberSpec) -> Vec<PortSpec> {
    let mut types = BTreeMap::new();
    for mapping in spec
        .parameters
        .get("PORT_MAPPINGS")
        .map_or("", String::as_str)
        .split(';')
    {
        let fields: BTreeMap<&str, &str> = mapping
            .split('|')
            .filter_map(|f| f.split_once(':'))
            .collect();
        if let (Some(name), Some(ty)) = (fields.get("NAME"), fields.get("TYPE")) {
            types.insert((*name).to_owned(), (*ty).to_owned());
        }
    }
    spec.ports
        .iter()
        .map(|p| PortSpec {
            name: p.name.clone(),
            protocol: p.protocol.clone(),
            port: p.port,
            service_type: match types.get(&p.name).map(String::as_str) {
                Some("NodePort") => "NodePort".into(),
                _ => "ClusterIP".into(),
            },
            node_port: None,
        })
        .collect()
}

impl KubeProvider {
    /// Starts the provider: it follows the controller's handshake (topology) and clean-up
    /// requests (instance notifier) on the bus.
    pub async fn start(
        events: EventBus,
        clusters: Arc<dyn Clusters>,
        timeouts: KubeTimeouts,
    ) -> Result<Self, nubo_bus::BusError> {
        let mut topology = events
            .subscribe_only(Category::Topology, &["MemberInitialized", "MemberStarted"])
            .await?;
        let mut notifier = events
            .subscribe_only(
                Category::InstanceNotifier,
                &["InstanceCleanupMember", "InstanceCleanupCluster"],
            )
            .await?;
        let me = Arc::new(Core {
            events,
            clusters,
            timeouts,
            inner: Mutex::new(Inner::default()),
            connect: tokio::sync::Mutex::new(()),
        });
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            loop {
                let e = tokio::select! {
                    e = topology.recv() => e,
                    e = notifier.recv() => e,
                };
                let (Some(e), Some(me)) = (e, weak.upgrade()) else {
                    return;
                };
                me.on_event(e).await;
            }
        });
        Ok(KubeProvider(me))
    }
}

impl Core {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> Option<T> {
        self.inner.lock().ok().map(|mut i| f(&mut i))
    }

    async fn publish(&self, e: Event) {
        let _ = self.events.publish(&e).await;
    }

    /// The client of a registered cluster, connected (and watched) on first use, and again
    /// when its settings changed.
    async fn cluster(self: &Arc<Self>, id: &str) -> Result<Arc<Connected>, IaasError> {
        let settings = self.clusters.get(id).await.map_err(IaasError::Failed)?;
        let _one = self.connect.lock().await;
        if let Some(c) = self
            .with(|i| i.clusters.get(id).cloned())
            .flatten()
            .filter(|c| c.settings == settings)
        {
            return Ok(c);
        }
        let client = KubeCluster::connect(&settings.access, settings.namespace.as_deref())
            .await
            .map_err(failed)?;
        let connected = Arc::new(Connected {
            settings,
            client: client.clone(),
        });
        self.with(|i| i.clusters.insert(id.to_owned(), connected.clone()));
        let mut rx = client.watch();
        let weak = Arc::downgrade(self);
        let cluster = id.to_owned();
        let mine = connected.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                let Some(me) = weak.upgrade() else { return };
                // A cluster connected again (new settings) has a new watch: this one ends.
                let current = me
                    .with(|i| {
                        i.clusters
                            .get(&cluster)
                            .is_some_and(|c| Arc::ptr_eq(c, &mine))
                    })
                    .unwrap_or(false);
                if !current {
                    return;
                }
                me.on_pods(&cluster, e).await;
            }
        });
        Ok(connected)
    }

    /// What the watch says.
    async fn on_pods(&self, cluster: &str, e: PodEvent) {
        match e {
            PodEvent::Listed(states) => {
                let present: std::collections::HashSet<String> =
                    states.iter().map(|s| s.member_id.clone()).collect();
                for s in states {
                    self.on_pod(s).await;
                }
                // Members of this cluster whose pods went while the watch was lost (seen
                // before: a pod still being created is in no list yet).
                let lost: Vec<String> = self
                    .with(|i| {
                        i.members
                            .iter()
                            .filter(|(id, t)| {
                                t.cluster == cluster && t.seen && !present.contains(*id)
                            })
                            .map(|(id, _)| id.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                for id in lost {
                    self.gone(&id, "the member's pod is gone").await;
                }
            }
            PodEvent::Changed(s) => self.on_pod(s).await,
            PodEvent::Gone { member_id, reason } => self.gone(&member_id, &reason).await,
        }
    }

    async fn on_pod(&self, s: PodState) {
        if let Some(w) = self
            .with(|i| i.waiting.get(&s.member_id).cloned())
            .flatten()
        {
            let _ = w.send(Some(s.clone()));
        }
        if let Phase::Ended(reason) = &s.phase {
            self.gone(&s.member_id, reason).await;
            return;
        }
        let to_say = self
            .with(|i| {
                let t = i.members.get_mut(&s.member_id)?;
                t.seen = true;
                t.phase = s.phase.clone();
                t.ip = s.ip.clone().or(t.ip.take());
                Some(Self::answers(t))
            })
            .flatten()
            .unwrap_or_default();
        for e in to_say {
            self.publish(e).await;
        }
    }

    /// The handshake's answers now due for a member.
    fn answers(t: &mut Tracked) -> Vec<Event> {
        let mut out = Vec::new();
        let running = matches!(t.phase, Phase::Running | Phase::Ready);
        if t.initialized && running && !t.announced_started {
            t.announced_started = true;
            out.push(Event::InstanceStarted(t.instance.clone()));
        }
        if t.started && t.announced_started && t.phase == Phase::Ready && !t.announced_active {
            t.announced_active = true;
            out.push(Event::InstanceActivated(t.instance.clone()));
        }
        out
    }

    /// A member's pod ended or went: its exit, once.
    async fn gone(&self, member_id: &str, reason: &str) {
        let Some(t) = self.with(|i| i.members.remove(member_id)).flatten() else {
            return;
        };
        tracing::info!(member = %member_id, reason, "a member's pod ended");
        // An ended pod (not deleted) is deleted now: a member leaves nothing.
        if let Some(c) = self.with(|i| i.clusters.get(&t.cluster).cloned()).flatten() {
            let _ = c.client.delete_pod(&t.pod, Duration::ZERO).await;
            let others = self
                .with(|i| {
                    i.members.values().any(|m| {
                        m.cluster == t.cluster && m.instance.cluster_id == t.instance.cluster_id
                    })
                })
                .unwrap_or(true);
            if !others {
                let _ = c.client.delete_services(&t.instance.cluster_id).await;
            }
        }
        self.publish(Event::MemberProcessExited {
            member_id: member_id.to_owned(),
            code: None,
            signal: None,
            reason: reason.to_owned(),
        })
        .await;
    }

    async fn on_event(&self, e: Event) {
        match e {
            Event::MemberInitialized(c) => self.handshake(&c.member.member_id, false).await,
            Event::MemberStarted(c) => self.handshake(&c.member.member_id, true).await,
            Event::InstanceCleanupMember { member_id } => self.clean_up(&[member_id]).await,
            Event::InstanceCleanupCluster {
                cluster_id,
                cluster_instance_id,
            } => {
                let ids: Vec<String> = self
                    .with(|i| {
                        i.members
                            .iter()
                            .filter(|(_, t)| {
                                t.instance.cluster_id == cluster_id
                                    && t.instance.cluster_instance_id == cluster_instance_id
                            })
                            .map(|(id, _)| id.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                self.clean_up(&ids).await;
            }
            _ => {}
        }
    }

    /// The controller's MemberInitialized (`started`: MemberStarted): the answers now due.
    async fn handshake(&self, member_id: &str, started: bool) {
        let to_say = self
            .with(|i| {
                let t = i.members.get_mut(member_id)?;
                t.initialized = true;
                t.started |= started;
                Some(Self::answers(t))
            })
            .flatten()
            .unwrap_or_default();
        for e in to_say {
            self.publish(e).await;
        }
    }

    /// Clean-up: nothing to drain in a pod beyond its grace, so it is ready to shut down.
    async fn clean_up(&self, ids: &[String]) {
        for id in ids {
            if let Some(r) = self
                .with(|i| i.members.get(id).map(|t| t.instance.clone()))
                .flatten()
            {
                self.publish(Event::InstanceMaintenanceMode(r.clone()))
                    .await;
                self.publish(Event::InstanceReadyToShutdown(r)).await;
            }
        }
    }

    /// Tracks an adopted pod (found by its labels after a restart).
    fn adopt(&self, cluster: &str, pod: &k8s_openapi::api::core::v1::Pod, s: &PodState) {
        let a = |k: &str| {
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|x| x.get(k))
                .cloned()
                .unwrap_or_default()
        };
        let instance = InstanceRef {
            application_id: a(manifests::APPLICATION_ANNOTATION),
            service_name: a(manifests::SERVICE_ANNOTATION),
            cluster_id: a(manifests::CLUSTER_ANNOTATION),
            cluster_instance_id: a(manifests::CLUSTER_INSTANCE_ANNOTATION),
            member_id: s.member_id.clone(),
            network_partition_id: a(manifests::NETWORK_PARTITION_ANNOTATION),
            partition_id: a(manifests::PARTITION_ANNOTATION),
        };
        self.with(|i| {
            i.members.entry(s.member_id.clone()).or_insert(Tracked {
                cluster: cluster.to_owned(),
                instance,
                pod: s.pod.clone(),
                phase: s.phase.clone(),
                ip: s.ip.clone(),
                // An adopted member went through its handshake before the restart.
                initialized: true,
                started: true,
                announced_started: true,
                announced_active: s.phase == Phase::Ready,
                seen: true,
            });
        });
    }
}

#[async_trait]
impl Provider for KubeProvider {
    async fn start(&self, spec: MemberSpec) -> Result<StartedMember, IaasError> {
        self.0.start(spec).await
    }

    async fn terminate(&self, member_id: &str) -> Result<(), IaasError> {
        self.0.terminate(member_id).await
    }

    async fn running(&self) -> Result<Vec<String>, IaasError> {
        self.0.running().await
    }
}

impl Core {
    async fn start(self: &Arc<Self>, spec: MemberSpec) -> Result<StartedMember, IaasError> {
        let cluster_id = spec
            .parameters
            .get(CLUSTER_PARAMETER)
            .cloned()
            .ok_or_else(|| {
                IaasError::Failed(
                    "the partition names no Kubernetes cluster: give it the property `cluster`"
                        .into(),
                )
            })?;
        let c = self.cluster(&cluster_id).await?;
        let ports = port_specs(&spec);
        let properties: BTreeMap<String, String> = spec
            .parameters
            .iter()
            .filter_map(|(k, v)| {
                Some((k.strip_prefix("CARTRIDGE_PROPERTY_")?.to_owned(), v.clone()))
            })
            .collect();
        let settings = manifests::cartridge_settings(&properties).map_err(failed)?;
        if !ports.is_empty() {
            c.client
                .ensure_services(
                    &ServicesInput {
                        application_id: spec.member.application_id.clone(),
                        cluster_id: spec.member.cluster_id.clone(),
                        ports: ports.clone(),
                        session_affinity: settings.session_affinity.clone(),
                    },
                    c.settings.port_range,
                )
                .await
                .map_err(failed)?;
        }
        let m = &spec.member;
        let env: BTreeMap<String, String> = spec
            .parameters
            .iter()
            .filter(|(k, _)| {
                !NOT_FOR_THE_POD.contains(&k.as_str())
                    && !k.starts_with("CARTRIDGE_PROPERTY_")
                    && k.as_str() != nubo_iaas::API_CA_PARAMETER
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let pod = manifests::pod(&PodInput {
            member_id: m.member_id.clone(),
            application_id: m.application_id.clone(),
            cluster_id: m.cluster_id.clone(),
            cluster_instance_id: m.cluster_instance_id.clone(),
            service_name: m.service_name.clone(),
            network_partition_id: m.network_partition_id.clone(),
            partition_id: m.partition_id.clone(),
            image: spec.image.clone(),
            env,
            ports: ports.clone(),
            cpu: settings.cpu,
            memory: settings.memory,
            pull_secrets: settings.pull_secrets,
            pull_policy: settings.pull_policy,
        });
        let pod_name = manifests::pod_name(&m.member_id);
        let (tx, mut rx) = tokio::sync::watch::channel(None::<PodState>);
        self.with(|i| {
            i.waiting.insert(m.member_id.clone(), tx);
            i.members.insert(
                m.member_id.clone(),
                Tracked::pending(cluster_id.clone(), InstanceRef::from(m), pod_name.clone()),
            )
        });
        let outcome = async {
            c.client.create_pod(&pod).await.map_err(failed)?;
            // Until it runs (it has an address), ends, or the time is up.
            let wait = async {
                loop {
                    if let Some(s) = rx.borrow_and_update().clone() {
                        match s.phase {
                            Phase::Running | Phase::Ready if s.ip.is_some() => return Ok(s),
                            Phase::Ended(why) => return Err(IaasError::Failed(why)),
                            _ => {}
                        }
                    }
                    if rx.changed().await.is_err() {
                        return Err(IaasError::Failed("the provider stopped".into()));
                    }
                }
            };
            match tokio::time::timeout(self.timeouts.pod_running, wait).await {
                Ok(r) => r,
                Err(_) => Err(IaasError::Failed(format!(
                    "the pod {pod_name} did not run within {} s (an image that cannot be pulled, or no node with room for it)",
                    self.timeouts.pod_running.as_secs()
                ))),
            }
        }
        .await;
        self.with(|i| i.waiting.remove(&m.member_id));
        match outcome {
            Ok(s) => Ok(StartedMember {
                ip: s.ip.unwrap_or_default(),
                ports: spec
                    .ports
                    .iter()
                    .map(|p| MemberPort::of(p, p.port))
                    .collect(),
            }),
            Err(e) => {
                self.with(|i| i.members.remove(&m.member_id));
                let _ = c.client.delete_pod(&pod_name, Duration::ZERO).await;
                Err(e)
            }
        }
    }

    async fn terminate(self: &Arc<Self>, member_id: &str) -> Result<(), IaasError> {
        let Some((cluster, pod)) = self
            .with(|i| {
                i.members
                    .get(member_id)
                    .map(|t| (t.cluster.clone(), t.pod.clone()))
            })
            .flatten()
        else {
            return Err(IaasError::NotFound(member_id.to_owned()));
        };
        let c = self.cluster(&cluster).await?;
        c.client
            .delete_pod(&pod, self.timeouts.termination_grace)
            .await
            .map_err(failed)?;
        // The watch reports the pod gone, and the member's exit with it; if the watch is lost
        // meanwhile, the next list does.
        Ok(())
    }

    async fn running(self: &Arc<Self>) -> Result<Vec<String>, IaasError> {
        let ids = self.clusters.ids().await.map_err(IaasError::Failed)?;
        let mut out = Vec::new();
        for id in ids {
            // Listed first with a client of its own, within a bound: a registered cluster that
            // does not answer (or has no member) is not watched for nothing.
            let settings = self.clusters.get(&id).await.map_err(IaasError::Failed)?;
            let client = KubeCluster::connect(&settings.access, settings.namespace.as_deref())
                .await
                .map_err(failed)?;
            let pods = match tokio::time::timeout(ADOPTION_LIST, client.pod_objects()).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    tracing::warn!(cluster = %id, error = %e, "cannot list a Kubernetes cluster's pods to adopt its members");
                    return Err(failed(e));
                }
                Err(_) => {
                    tracing::warn!(cluster = %id, "a Kubernetes cluster did not answer the list of its pods");
                    return Err(IaasError::Failed(format!(
                        "Kubernetes cluster `{id}` did not answer within {} s",
                        ADOPTION_LIST.as_secs()
                    )));
                }
            };
            let mut adopted = false;
            for pod in pods {
                if let Some(s) = crate::cluster::pod_state(&pod) {
                    if matches!(s.phase, Phase::Ended(_)) {
                        continue;
                    }
                    self.adopt(&id, &pod, &s);
                    out.push(s.member_id);
                    adopted = true;
                }
            }
            if adopted {
                self.cluster(&id).await?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use nubo_bus::MemoryBus;
    use nubo_events::{ClusterPort, Member, MemberChange, MemberStatus};

    use super::*;
    use crate::fake::FakeApiServer;

    struct One(ClusterSettings);

    #[async_trait]
    impl Clusters for One {
        async fn get(&self, id: &str) -> Result<ClusterSettings, String> {
            if id == "k1" {
                Ok(self.0.clone())
            } else {
                Err(format!("no Kubernetes cluster `{id}` is registered"))
            }
        }
        async fn ids(&self) -> Result<Vec<String>, String> {
            Ok(vec!["k1".into()])
        }
    }

    fn member(id: &str) -> Member {
        Member {
            member_id: id.into(),
            cluster_id: "shop.web".into(),
            cluster_instance_id: "shop-1".into(),
            service_name: "web".into(),
            application_id: "shop".into(),
            network_partition_id: "np".into(),
            partition_id: "p1".into(),
            status: MemberStatus::Created,
            default_private_ip: None,
            default_public_ip: None,
            ports: vec![],
            init_time: 0,
            failure: None,
            properties: BTreeMap::new(),
        }
    }

    fn spec(id: &str) -> MemberSpec {
        let mut parameters = BTreeMap::new();
        parameters.insert(CLUSTER_PARAMETER.to_owned(), "k1".to_owned());
        parameters.insert("MB_PASSWORD".to_owned(), "platform-secret".to_owned());
        parameters.insert("APPLICATION_ID".to_owned(), "shop".to_owned());
        parameters.insert(
            "PORT_MAPPINGS".to_owned(),
            "NAME:http|PROTOCOL:http|PORT:8080|PROXY_PORT:8280|TYPE:NodePort".to_owned(),
        );
        parameters.insert(
            "CARTRIDGE_PROPERTY_memoryLimit".to_owned(),
            "64m".to_owned(),
        );
        MemberSpec {
            member: member(id),
            image: "web:1".into(),
            ports: vec![ClusterPort {
                name: "http".into(),
                protocol: "http".into(),
                port: 8080,
                proxy_port: Some(8280),
            }],
            bus_url: String::new(),
            parameters,
            run_as: None,
        }
    }

    async fn provider(fake: &FakeApiServer, events: &EventBus, running: Duration) -> KubeProvider {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let settings = ClusterSettings {
            access: Access::Server {
                url: fake.url().to_owned(),
                token: Some("t0ken".into()),
                ca_pem: None,
            },
            namespace: Some("apps".into()),
            port_range: (30000, 30100),
        };
        KubeProvider::start(
            events.clone(),
            Arc::new(One(settings)),
            KubeTimeouts {
                pod_running: running,
                termination_grace: Duration::from_secs(1),
            },
        )
        .await
        .unwrap()
    }

    /// The next event of `names` on `stream`, within 10 s.
    async fn next_of(stream: &mut nubo_bus::EventStream, names: &[&str]) -> Event {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(10), stream.recv())
                .await
                .expect("an event within 10 s")
                .expect("the bus");
            if names.contains(&e.name()) {
                return e;
            }
        }
    }

    #[tokio::test]
    async fn a_member_is_a_pod_through_its_life_and_is_adopted_after_a_restart() {
        let fake = FakeApiServer::start().await;
        fake.require_token("t0ken");
        let events = EventBus::new(Arc::new(MemoryBus::new()));
        let mut status = events.subscribe_filter("#").await.unwrap();
        let k = provider(&fake, &events, Duration::from_secs(10)).await;
        // Started: its services, then its pod, running with an address.
        let started = k.start(spec("shop.web.m1")).await.unwrap();
        assert!(started.ip.starts_with("10.244."), "{started:?}");
        assert_eq!(started.ports[0].port, 8080);
        let pods = fake.objects("pods");
        assert_eq!(pods.len(), 1);
        let env = pods[0]["spec"]["containers"][0]["env"].to_string();
        assert!(env.contains("APPLICATION_ID"), "{env}");
        assert!(
            !env.contains("platform-secret") && !env.contains(CLUSTER_PARAMETER),
            "{env}"
        );
        assert_eq!(
            pods[0]["spec"]["containers"][0]["resources"]["limits"]["memory"],
            (64u64 << 20).to_string()
        );
        let services = fake.objects("services");
        assert_eq!(services.len(), 1);
        assert_eq!(services[0]["spec"]["type"], "NodePort");
        assert_eq!(services[0]["spec"]["ports"][0]["nodePort"], 30000);
        // The handshake, answered from the pod's state.
        let mut m = member("shop.web.m1");
        m.status = MemberStatus::Initialized;
        events
            .publish(&Event::MemberInitialized(MemberChange {
                member: m.clone(),
            }))
            .await
            .unwrap();
        assert!(
            matches!(next_of(&mut status, &["InstanceStarted"]).await, Event::InstanceStarted(r) if r.member_id == "shop.web.m1")
        );
        m.status = MemberStatus::Starting;
        events
            .publish(&Event::MemberStarted(MemberChange { member: m }))
            .await
            .unwrap();
        assert!(
            matches!(next_of(&mut status, &["InstanceActivated"]).await, Event::InstanceActivated(r) if r.member_id == "shop.web.m1")
        );
        // The controller restarts: a new provider adopts the pod by its labels, and answers its
        // clean-up; nothing is created again.
        drop(k);
        let posts = fake.requests().iter().filter(|r| *r == "POST pods").count();
        let k = provider(&fake, &events, Duration::from_secs(10)).await;
        assert_eq!(k.running().await.unwrap(), ["shop.web.m1"]);
        events
            .publish(&Event::InstanceCleanupMember {
                member_id: "shop.web.m1".into(),
            })
            .await
            .unwrap();
        assert!(
            matches!(next_of(&mut status, &["InstanceReadyToShutdown"]).await, Event::InstanceReadyToShutdown(r) if r.cluster_id == "shop.web")
        );
        k.terminate("shop.web.m1").await.unwrap();
        match next_of(&mut status, &["MemberProcessExited"]).await {
            Event::MemberProcessExited { member_id, .. } => assert_eq!(member_id, "shop.web.m1"),
            e => panic!("{e:?}"),
        }
        assert_eq!(
            fake.requests().iter().filter(|r| *r == "POST pods").count(),
            posts
        );
        assert!(fake.objects("pods").is_empty());
        assert!(
            fake.objects("services").is_empty(),
            "the cluster's services go with its last member"
        );
        // A pod whose container ends is the member's exit, with its exit code.
        k.start(spec("shop.web.m2")).await.unwrap();
        fake.end_pod("apps", &manifests::pod_name("shop.web.m2"), 137);
        match next_of(&mut status, &["MemberProcessExited"]).await {
            Event::MemberProcessExited {
                member_id, reason, ..
            } => {
                assert_eq!(member_id, "shop.web.m2");
                assert!(reason.contains("137"), "{reason}");
            }
            e => panic!("{e:?}"),
        }
        assert!(fake.objects("pods").is_empty(), "the ended pod is deleted");
    }

    #[tokio::test]
    async fn a_pod_that_never_runs_fails_its_start_and_is_deleted() {
        let fake = FakeApiServer::start().await;
        fake.hold_pods(true);
        let events = EventBus::new(Arc::new(MemoryBus::new()));
        let k = provider(&fake, &events, Duration::from_millis(500)).await;
        let e = k.start(spec("shop.web.m1")).await.unwrap_err();
        assert!(e.to_string().contains("did not run within"), "{e}");
        assert!(fake.objects("pods").is_empty());
        // A partition naming no registered cluster says so.
        let mut s = spec("shop.web.m2");
        s.parameters
            .insert(CLUSTER_PARAMETER.into(), "nowhere".into());
        let e = k.start(s).await.unwrap_err();
        assert!(e.to_string().contains("`nowhere`"), "{e}");
    }

    #[tokio::test]
    async fn a_list_taken_before_a_pod_was_created_does_not_end_its_member() {
        let fake = FakeApiServer::start().await;
        let events = EventBus::new(Arc::new(MemoryBus::new()));
        let mut all = events.subscribe_filter("#").await.unwrap();
        let k = provider(&fake, &events, Duration::from_secs(10)).await;
        // A member being started: tracked, its pod not seen by the watch yet (the watch's
        // first list was taken before the pod was created).
        let tracked = Tracked::pending(
            "k1".into(),
            InstanceRef::from(&member("shop.web.m9")),
            "nubo-m9".into(),
        );
        k.0.with(|i| i.members.insert("shop.web.m9".into(), tracked));
        k.0.on_pods("k1", PodEvent::Listed(vec![])).await;
        assert_eq!(
            k.0.with(|i| i.members.contains_key("shop.web.m9")),
            Some(true),
            "still starting"
        );
        // Seen once, then missing from a list (the watch was lost meanwhile): gone.
        k.0.with(|i| {
            if let Some(t) = i.members.get_mut("shop.web.m9") {
                t.seen = true;
            }
        });
        k.0.on_pods("k1", PodEvent::Listed(vec![])).await;
        assert_eq!(
            k.0.with(|i| i.members.contains_key("shop.web.m9")),
            Some(false)
        );
        match next_of(&mut all, &["MemberProcessExited"]).await {
            Event::MemberProcessExited { member_id, .. } => assert_eq!(member_id, "shop.web.m9"),
            e => panic!("{e:?}"),
        }
    }
}
