//! The load balancer (as in Apache Stratos 4.1): listens on the proxy ports of the clusters' HTTP port
//! mappings, routes each request by its `Host` header to an Active member of the cluster (round
//! robin or least outstanding requests), retries on another member when a connection is refused
//! (and idempotent requests whose body it holds whole, reset before any response byte), streams
//! bodies both ways over kept-alive member connections, tunnels upgrades (WebSocket), adds
//! `X-Forwarded-*` headers, answers a clear 502/503/504 when no member can serve, and publishes
//! requests in flight per cluster every second. HTTP/1.x is handled directly on the bytes
//! ([`h1`] pure, `proxy` the connection loop) rather than through a general HTTP library: heads
//! pass through unparsed into maps, most responses untouched. Its table
//! follows topology events: a member gets traffic as soon as it is Active and none after it leaves
//! Active. It runs inside `nubo server` or alone (`nubo lb`).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nubo_bus::EventBus;
use nubo_events::{Category, Event, RequestsInFlight, Topology};

pub use nubo_h1 as h1;
mod h2;
pub mod io;
mod proxy;
pub mod table;
pub mod tls;

pub use table::{Routes, Strategy, TenantSet, static_topology};

/// How long a request that no member can take now waits for one (a member becoming Active, or a
/// replacement) before it is answered 502 or 503.
pub const HOLD: Duration = Duration::from_secs(5);
/// Most requests held at once; beyond it they are answered at once.
pub const MAX_HELD: usize = 10_000;
/// Responses to replayable requests up to this size are received whole before they are passed on,
/// so that a member dying mid-response means a replay, not a truncated body.
pub const BUFFERED_RESPONSE: u64 = 64 * 1024;
/// How long a client may take to send a request's headers (slow clients do not hold connections).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Most members one request is tried on.
pub const MAX_ATTEMPTS: usize = 3;

/// Settings.
#[derive(Debug, Clone)]
pub struct LbConfig {
    /// Address the proxy ports bind to.
    pub bind: IpAddr,
    /// How members are picked.
    pub strategy: Strategy,
    /// This load balancer's id (in statistics).
    pub id: String,
    /// Connect timeout to a member.
    pub connect_timeout: Duration,
    /// Time to the response's headers.
    pub request_timeout: Duration,
    /// How often requests in flight are published.
    pub stats_interval: Duration,
    /// How long a request no member can take waits for one ([`HOLD`]).
    pub hold: Duration,
    /// The tenants it serves (its routes to others' clusters and domains are left out: their
    /// requests get 404).
    pub tenants: table::TenantSet,
    /// How long an HTTP/2 client connection may stay without a request before it is closed
    /// ([`HEADER_READ_TIMEOUT`], as an HTTP/1 connection waits for its next request head).
    pub idle_timeout: Duration,
}

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig {
            bind: IpAddr::from([127, 0, 0, 1]),
            strategy: Strategy::RoundRobin,
            id: "lb-1".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            stats_interval: Duration::from_secs(1),
            hold: HOLD,
            tenants: table::TenantSet::all(),
            idle_timeout: HEADER_READ_TIMEOUT,
        }
    }
}

#[derive(Default)]
struct ClusterCounters {
    in_flight: AtomicI64,
    served: AtomicU64,
    total: AtomicU64,
    network_partition_id: Mutex<String>,
    /// Per cluster instance (a member's requests count for its instance), by instance id.
    instances: Mutex<BTreeMap<String, Arc<InstanceCounters>>>,
}

/// Requests in flight and served of one cluster instance.
#[derive(Default)]
struct InstanceCounters {
    network_partition_id: String,
    in_flight: AtomicI64,
    served: AtomicU64,
}

/// A member as the proxy uses it.
struct Target {
    member_id: String,
    addr: SocketAddr,
    member: Arc<MemberCounters>,
    instance: Arc<InstanceCounters>,
    instance_id: String,
}

/// One member's own: its requests outstanding here, and whether the table routes to it (a
/// connection kept open to a member the table dropped, one draining, is closed once idle, so
/// that the member sees its connections end as its requests do).
#[derive(Default)]
struct MemberCounters {
    outstanding: AtomicI64,
    routed: std::sync::atomic::AtomicBool,
}

/// A route with its counters attached.
struct CompiledRoute {
    cluster_id: String,
    network_partition_id: String,
    /// A tenant's mapped domain: the tenant, told to the members.
    tenant: Option<String>,
    /// The route's tenant.
    tenant_id: i64,
    /// The tenants whose requests come as `/t/<tenant-domain>/…` (their domains; those this
    /// load balancer serves).
    path_tenants: Vec<(i64, String)>,
    /// Plain HTTP gets a redirect to HTTPS.
    redirect_https: bool,
    /// Put before each request's path (a domain mapping's context path).
    context_path: Option<Box<str>>,
    /// ACME HTTP-01 challenges answered for the domain (token, key authorization).
    acme_challenges: Vec<(String, String)>,
    counters: Arc<ClusterCounters>,
    targets: Vec<Target>,
}

/// A route's place in the table: (proxy port, host name).
type RouteKey = (u16, Arc<str>);

/// One port's routes, by host name.
type Hosts = HashMap<Arc<str>, Arc<CompiledRoute>>;

/// The table as the proxy reads it: by port, then host name. Replaced whole on each change (the
/// proxy holds a snapshot), but built incrementally: a change copies the changed port's map of
/// pointers and compiles only the changed clusters' routes.
#[derive(Default, Clone)]
struct Compiled {
    by_port: HashMap<u16, Arc<Hosts>>,
}

impl Compiled {
    fn lookup(&self, host: &str, port: u16) -> Option<&Arc<CompiledRoute>> {
        let hosts = self.by_port.get(&port)?;
        let name = host
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|c| c.is_ascii_digit()))
            .map_or(host, |(h, _)| h);
        let name = name.strip_suffix('.').unwrap_or(name);
        hosts
            .get(name)
            .or_else(|| hosts.get(name.to_ascii_lowercase().as_str()))
    }
}

fn plain(r: &CompiledRoute) -> table::Route {
    table::Route {
        cluster_id: r.cluster_id.clone(),
        network_partition_id: r.network_partition_id.clone(),
        tenant: r.tenant.clone(),
        tenant_id: r.tenant_id,
        path_tenants: r.path_tenants.clone(),
        redirect_https: r.redirect_https,
        context_path: r.context_path.as_deref().map(str::to_owned),
        acme_challenges: r.acme_challenges.clone(),
        backends: r
            .targets
            .iter()
            .map(|t| table::Backend {
                member_id: t.member_id.clone(),
                addr: t.addr,
                instance: (
                    t.instance_id.clone(),
                    t.instance.network_partition_id.clone(),
                ),
            })
            .collect(),
    }
}

/// A load balancer's table at one moment, as the proxy routes by it (cheap to clone).
#[derive(Clone, Default)]
pub struct Table(Arc<Compiled>);

impl Table {
    /// The route for a `Host` header value on a proxy port, as [`Routes::lookup`] finds it.
    pub fn lookup(&self, host: &str, port: u16) -> Option<table::Route> {
        self.0.lookup(host, port).map(|r| plain(r))
    }

    /// How many (host name, proxy port) routes there are.
    pub fn len(&self) -> usize {
        self.0.by_port.values().map(|h| h.len()).sum()
    }

    /// Whether there is no route.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole table as plain routes (copies every route).
    pub fn routes(&self) -> Routes {
        let mut by_host = HashMap::new();
        for (port, hosts) in &self.0.by_port {
            for (host, r) in hosts.iter() {
                by_host.insert((host.to_string(), *port), plain(r));
            }
        }
        Routes { by_host }
    }
}

/// The changes of a load balancer's table ([`LoadBalancer::watch_routes`]).
pub struct RoutesWatch(tokio::sync::watch::Receiver<Arc<Compiled>>);

impl RoutesWatch {
    /// Waits for the table to change (since the watch was made or last returned) and returns the
    /// new one (tables replaced in quick succession may show only as the last of them); `None`
    /// once the load balancer is gone.
    pub async fn changed(&mut self) -> Option<Table> {
        self.0.changed().await.ok()?;
        Some(Table(self.0.borrow_and_update().clone()))
    }
}

/// The load balancer.
pub struct LoadBalancer {
    config: LbConfig,
    routes: tokio::sync::watch::Sender<Arc<Compiled>>,
    /// The (port, host) keys each cluster has in the table, to replace or drop them when it
    /// changes (kept by whoever updates the table; the proxy never reads it).
    keys: Mutex<HashMap<String, Vec<RouteKey>>>,
    held: AtomicUsize,
    clusters: Mutex<HashMap<String, Arc<ClusterCounters>>>,
    outstanding: Mutex<HashMap<String, Arc<MemberCounters>>>,
    listening: Mutex<HashSet<u16>>,
    turn: AtomicUsize,
    certificates: Arc<tls::Certificates>,
    tls: Arc<rustls::ServerConfig>,
}

impl LoadBalancer {
    /// A load balancer with an empty table (fed with [`LoadBalancer::set_topology`] or [`LoadBalancer::follow`]).
    pub fn new(config: LbConfig) -> Arc<Self> {
        let certificates = Arc::new(tls::Certificates::default());
        Arc::new(LoadBalancer {
            tls: tls::server_config(certificates.clone()),
            certificates,
            config,
            routes: tokio::sync::watch::Sender::new(Arc::new(Compiled::default())),
            keys: Mutex::new(HashMap::new()),
            held: AtomicUsize::new(0),
            clusters: Mutex::new(HashMap::new()),
            outstanding: Mutex::new(HashMap::new()),
            listening: Mutex::new(HashSet::new()),
            turn: AtomicUsize::new(0),
        })
    }

    /// The certificates it presents to HTTPS clients (the default one is set here; the
    /// domains' come on the bus).
    pub fn certificates(&self) -> &Arc<tls::Certificates> {
        &self.certificates
    }

    /// The current table.
    pub fn table(&self) -> Table {
        Table(self.routes.borrow().clone())
    }

    /// Follows the table: [`RoutesWatch::changed`] returns each new table as soon as the proxy
    /// routes by it (for benchmarks and tests that time a topology change).
    pub fn watch_routes(&self) -> RoutesWatch {
        RoutesWatch(self.routes.subscribe())
    }

    /// Replaces the table from a topology and opens any new proxy port.
    pub async fn set_topology(self: &Arc<Self>, t: &Topology) {
        let mut ids: std::collections::BTreeSet<String> = t.clusters.keys().cloned().collect();
        if let Ok(keys) = self.keys.lock() {
            ids.extend(keys.keys().cloned());
        }
        self.update(t, &ids).await;
    }

    /// Updates the routes of the clusters `changed` (added, changed or removed) from the
    /// topology `t`, and opens any new proxy port: the work is that of the changed clusters'
    /// members, plus copying the pointers of the ports they use.
    pub async fn update(
        self: &Arc<Self>,
        t: &Topology,
        changed: &std::collections::BTreeSet<String>,
    ) {
        for port in self.update_table(t, changed) {
            let new = self
                .listening
                .lock()
                .map(|mut l| l.insert(port))
                .unwrap_or(false);
            if new {
                self.clone().listen(port).await;
            }
        }
    }

    /// The table part of [`LoadBalancer::update`]; returns the proxy ports the changed routes use.
    fn update_table(&self, t: &Topology, changed: &std::collections::BTreeSet<String>) -> Vec<u16> {
        let mut ports = Vec::new();
        if changed.is_empty() {
            return ports;
        }
        {
            let (Ok(mut keys), Ok(mut clusters), Ok(mut outstanding)) = (
                self.keys.lock(),
                self.clusters.lock(),
                self.outstanding.lock(),
            ) else {
                return ports;
            };
            let mut next = Compiled::clone(&self.routes.borrow());
            for id in changed {
                let routes = t
                    .clusters
                    .get(id)
                    .filter(|c| t.routed(c))
                    .map(|c| table::cluster_routes(t, c))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(_, r)| self.config.tenants.contains(r.tenant_id))
                    .collect::<Vec<_>>();
                for (port, host) in keys.remove(id).unwrap_or_default() {
                    if let Some(hosts) = next.by_port.get_mut(&port)
                        && hosts.get(&host).is_some_and(|r| r.cluster_id == *id)
                        && let Some(old) = Arc::make_mut(hosts).remove(&host)
                    {
                        // Routed again below if still there.
                        for t in &old.targets {
                            t.member.routed.store(false, Ordering::Relaxed);
                        }
                    }
                }
                if routes.is_empty() {
                    continue;
                }
                let mut mine = Vec::with_capacity(routes.len());
                for ((host, port), route) in routes {
                    if tracing::enabled!(tracing::Level::DEBUG) {
                        let members: Vec<&str> = route
                            .backends
                            .iter()
                            .map(|b| b.member_id.as_str())
                            .collect();
                        tracing::debug!(%host, port, ?members, "route");
                    }
                    let counters = clusters
                        .entry(route.cluster_id.clone())
                        .or_default()
                        .clone();
                    if let Ok(mut np) = counters.network_partition_id.lock() {
                        np.clone_from(&route.network_partition_id);
                    }
                    // Instances without members any more are forgotten once idle.
                    if let Ok(mut i) = counters.instances.lock() {
                        i.retain(|id, c| {
                            c.in_flight.load(Ordering::Relaxed) > 0
                                || route.backends.iter().any(|b| b.instance.0 == *id)
                        });
                    }
                    let targets = route
                        .backends
                        .iter()
                        .map(|b| {
                            let instance = counters
                                .instances
                                .lock()
                                .map(|mut i| {
                                    i.entry(b.instance.0.clone())
                                        .or_insert_with(|| {
                                            Arc::new(InstanceCounters {
                                                network_partition_id: b.instance.1.clone(),
                                                ..Default::default()
                                            })
                                        })
                                        .clone()
                                })
                                .unwrap_or_default();
                            let member =
                                outstanding.entry(b.member_id.clone()).or_default().clone();
                            member.routed.store(true, Ordering::Relaxed);
                            Target {
                                member_id: b.member_id.clone(),
                                addr: b.addr,
                                member,
                                instance,
                                instance_id: b.instance.0.clone(),
                            }
                        })
                        .collect();
                    let host: Arc<str> = host.into();
                    Arc::make_mut(next.by_port.entry(port).or_default()).insert(
                        host.clone(),
                        Arc::new(CompiledRoute {
                            cluster_id: route.cluster_id,
                            network_partition_id: route.network_partition_id,
                            tenant: route.tenant,
                            tenant_id: route.tenant_id,
                            path_tenants: route
                                .path_tenants
                                .into_iter()
                                .filter(|(t, _)| self.config.tenants.contains(*t))
                                .collect(),
                            redirect_https: route.redirect_https,
                            context_path: route.context_path.map(String::into_boxed_str),
                            acme_challenges: route.acme_challenges,
                            counters,
                            targets,
                        }),
                    );
                    mine.push((port, host));
                    ports.push(port);
                }
                keys.insert(id.clone(), mine);
            }
            self.routes.send_replace(Arc::new(next));
        }
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Follows the topology on the bus (and asks for the complete topology first); publishes
    /// requests in flight. Runs in the background.
    pub async fn follow(self: &Arc<Self>, events: EventBus) -> Result<(), nubo_bus::BusError> {
        let mut stream = events.subscribe(Category::Topology).await?;
        let mut certificates = events.subscribe(Category::Tls).await?;
        events.publish(&Event::CompleteTopologyRequest {}).await?;
        events.publish(&Event::TlsCertificatesRequest {}).await?;
        let lb = self.clone();
        tokio::spawn(async move {
            while let Some(e) = certificates.recv().await {
                if let Event::TlsCertificates {
                    complete,
                    certificates,
                    removed,
                } = e
                {
                    lb.certificates.apply(complete, &certificates, &removed);
                    tracing::debug!(
                        domains = lb.certificates.len(),
                        "domains' certificates updated"
                    );
                }
            }
        });
        let lb = self.clone();
        tokio::spawn(async move {
            let mut topology = Topology::default();
            let mut parts = nubo_events::Assembler::default();
            while let Some(e) = stream.recv().await {
                let mut change = table::Change::None;
                for e in parts.feed(e) {
                    change.merge(table::apply(&mut topology, &e));
                }
                if let table::Change::Clusters(ids) = change {
                    lb.update(&topology, &ids).await;
                }
            }
        });
        let lb = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(lb.config.stats_interval);
            loop {
                tick.tick().await;
                let clusters: Vec<(String, Arc<ClusterCounters>)> = lb
                    .clusters
                    .lock()
                    .map(|c| c.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default();
                for (cluster_id, c) in clusters {
                    // Per cluster instance: the autoscaler scales each on its own load.
                    let instances: Vec<(String, Arc<InstanceCounters>)> = c
                        .instances
                        .lock()
                        .map(|i| i.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                        .unwrap_or_default();
                    let served = c.served.swap(0, Ordering::Relaxed);
                    if instances.is_empty() {
                        // No member yet: the whole cluster's figure.
                        let stat = RequestsInFlight {
                            cluster_id,
                            network_partition_id: c
                                .network_partition_id
                                .lock()
                                .map(|n| n.clone())
                                .unwrap_or_default(),
                            cluster_instance_id: None,
                            count: c.in_flight.load(Ordering::Relaxed).max(0) as f64,
                            served,
                            load_balancer_id: lb.config.id.clone(),
                            at_ms: nubo_bus::now_ms(),
                        };
                        let _ = events.publish(&Event::InFlightRequests(stat)).await;
                        continue;
                    }
                    for (instance_id, i) in instances {
                        let stat = RequestsInFlight {
                            cluster_id: cluster_id.clone(),
                            network_partition_id: i.network_partition_id.clone(),
                            cluster_instance_id: Some(instance_id),
                            count: i.in_flight.load(Ordering::Relaxed).max(0) as f64,
                            served: i.served.swap(0, Ordering::Relaxed),
                            load_balancer_id: lb.config.id.clone(),
                            at_ms: nubo_bus::now_ms(),
                        };
                        let _ = events.publish(&Event::InFlightRequests(stat)).await;
                    }
                }
            }
        });
        Ok(())
    }

    async fn listen(self: Arc<Self>, port: u16) {
        let addr = SocketAddr::new(self.config.bind, port);
        let listener = match listener(addr) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot listen on a proxy port: is it taken? the cluster is not reachable through this load balancer");
                if let Ok(mut l) = self.listening.lock() {
                    l.remove(&port);
                }
                return;
            }
        };
        tracing::info!(%addr, "load balancer listening");
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(self.clone().accept(port, stream, peer));
            }
        });
    }

    /// Serves one client connection: TLS (then HTTP/2 or HTTP/1 by ALPN) when its first byte
    /// opens a TLS handshake and a certificate is held, plain HTTP/1 otherwise.
    async fn accept(self: Arc<Self>, port: u16, stream: tokio::net::TcpStream, peer: SocketAddr) {
        if self.certificates.enabled() {
            let Some(first) = tls::first_byte(&stream, HEADER_READ_TIMEOUT).await else {
                return;
            };
            if tls::is_tls(first) {
                let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
                let handshake =
                    tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                let stream = match handshake.await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        self.certificates.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        self.certificates.failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                self.certificates.handshakes.fetch_add(1, Ordering::Relaxed);
                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    h2::serve(self, port, stream, peer).await;
                } else {
                    proxy::serve(self, port, stream, peer, io::Tcp, true).await;
                }
                return;
            }
        }
        proxy::serve(self, port, stream, peer, io::Tcp, false).await;
    }
}

/// Connections a proxy port holds before they are accepted (as HAProxy's and nginx's are raised
/// for busy sites; the kernel caps it at `net.core.somaxconn`): a burst of new connections
/// waits there instead of having its SYNs dropped and retried a second later.
pub const ACCEPT_BACKLOG: u32 = 4096;

fn listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Exposes the load balancer's counters to Prometheus (read at scrape time; nothing is added to
/// the request path).
struct LbCollector(Arc<LoadBalancer>);

impl std::fmt::Debug for LbCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LbCollector")
    }
}

impl prometheus_client::collector::Collector for LbCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let clusters: Vec<(String, Arc<ClusterCounters>)> = self
            .0
            .clusters
            .lock()
            .map(|c| c.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let mut requests = encoder.encode_descriptor(
            "nubo_lb_requests",
            "Requests answered by a member, per cluster",
            None,
            MetricType::Counter,
        )?;
        for (cluster, c) in &clusters {
            let labels = [("cluster", cluster.as_str())];
            ConstCounter::new(c.total.load(Ordering::Relaxed))
                .encode(requests.encode_family(&labels)?)?;
        }
        let mut in_flight = encoder.encode_descriptor(
            "nubo_lb_requests_in_flight",
            "Requests in flight, per cluster",
            None,
            MetricType::Gauge,
        )?;
        for (cluster, c) in &clusters {
            let labels = [("cluster", cluster.as_str())];
            ConstGauge::new(c.in_flight.load(Ordering::Relaxed))
                .encode(in_flight.encode_family(&labels)?)?;
        }
        let compiled = self.0.routes.borrow().clone();
        let mut members = encoder.encode_descriptor(
            "nubo_lb_routed_members",
            "Members a host name is routed to",
            None,
            MetricType::Gauge,
        )?;
        for (port, hosts) in &compiled.by_port {
            for (host, route) in hosts.iter() {
                let port = port.to_string();
                let labels = [("host", &**host), ("port", port.as_str())];
                ConstGauge::new(route.targets.len() as i64)
                    .encode(members.encode_family(&labels)?)?;
            }
        }
        let held = encoder.encode_descriptor(
            "nubo_lb_held_requests",
            "Requests waiting for a member to serve them",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.0.held.load(Ordering::Relaxed) as i64).encode(held)?;
        let certs = &self.0.certificates;
        let handshakes = encoder.encode_descriptor(
            "nubo_lb_tls_handshakes",
            "TLS handshakes completed",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(certs.handshakes.load(Ordering::Relaxed)).encode(handshakes)?;
        let failed = encoder.encode_descriptor(
            "nubo_lb_tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(certs.failed.load(Ordering::Relaxed)).encode(failed)?;
        let domains = encoder.encode_descriptor(
            "nubo_lb_tls_certificates",
            "Domains with a certificate of their own",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(certs.len() as i64).encode(domains)?;
        Ok(())
    }
}

impl LoadBalancer {
    /// Registers the load balancer's metrics.
    pub fn register_metrics(
        self: &Arc<Self>,
        registry: &mut prometheus_client::registry::Registry,
    ) {
        registry.register_collector(Box::new(LbCollector(self.clone())));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use nubo_events::{Cluster, ClusterPort, Member, MemberChange, MemberPort, MemberStatus};
    use proptest::prelude::{Just, prop_assert_eq, prop_oneof, proptest};
    use proptest::strategy::Strategy as _;

    use super::*;

    fn cluster(c: usize, hosts: usize) -> Cluster {
        Cluster {
            cluster_id: format!("c{c}"),
            service_name: "php".into(),
            application_id: "a".into(),
            alias: format!("c{c}"),
            host_names: (0..hosts).map(|h| format!("h{h}.c{c}.localhost")).collect(),
            tenant_id: -1234,
            ports: vec![
                ClusterPort {
                    name: "http".into(),
                    protocol: "http".into(),
                    port: 80,
                    proxy_port: Some(8280 + (c % 2) as u16),
                },
                ClusterPort {
                    name: "tcp".into(),
                    protocol: "tcp".into(),
                    port: 9000,
                    proxy_port: Some(9900),
                },
            ],
            deployment_policy: "d".into(),
            autoscaling_policy: "x".into(),
            instances: BTreeMap::new(),
            members: BTreeMap::new(),
        }
    }

    fn member(c: usize, m: usize, status: MemberStatus) -> Member {
        Member {
            member_id: format!("c{c}-m{m}"),
            cluster_id: format!("c{c}"),
            cluster_instance_id: "a-1".into(),
            service_name: "php".into(),
            application_id: "a".into(),
            network_partition_id: "np".into(),
            partition_id: "p".into(),
            status,
            default_private_ip: Some("127.0.0.1".into()),
            default_public_ip: None,
            ports: vec![MemberPort {
                name: "http".into(),
                protocol: "http".into(),
                port: 40000 + m as u16,
                proxy_port: Some(8280),
            }],
            init_time: 0,
            failure: None,
            properties: BTreeMap::new(),
        }
    }

    /// A topology event over 4 clusters of up to 3 host names and 5 members.
    fn event() -> impl proptest::strategy::Strategy<Value = Event> {
        let status = prop_oneof![
            Just(MemberStatus::Starting),
            Just(MemberStatus::Active),
            Just(MemberStatus::InMaintenance),
            Just(MemberStatus::Terminated),
        ];
        prop_oneof![
            (0..4usize, 0..4usize).prop_map(|(c, h)| Event::ApplicationClustersCreated {
                application_id: "a".into(),
                clusters: vec![cluster(c, h)],
            }),
            (0..4usize).prop_map(|c| Event::ApplicationClustersRemoved {
                application_id: "a".into(),
                cluster_ids: vec![format!("c{c}")],
            }),
            (0..4usize, 0..5usize, status).prop_map(|(c, m, s)| {
                let change = MemberChange {
                    member: member(c, m, s),
                };
                match s {
                    MemberStatus::Active => Event::MemberActivated(change),
                    MemberStatus::Terminated => Event::MemberTerminated(change),
                    MemberStatus::InMaintenance => Event::MemberMaintenanceMode(change),
                    _ => Event::MemberStarted(change),
                }
            }),
            // A complete topology: two clusters with a few Active members.
            (0..4usize, 0..4usize, 1..3usize).prop_map(|(a, b, h)| {
                let mut t = Topology::default();
                for c in [a, b] {
                    let mut cl = cluster(c, h);
                    for m in 0..c + 1 {
                        let mb = member(c, m, MemberStatus::Active);
                        cl.members.insert(mb.member_id.clone(), mb);
                    }
                    t.clusters.insert(cl.cluster_id.clone(), cl);
                }
                Event::CompleteTopology {
                    topology: t,
                    part: None,
                }
            }),
        ]
    }

    proptest! {
        /// Updating only the changed clusters gives the same table as rebuilding it whole.
        #[test]
        fn incremental_updates_match_a_full_rebuild(events in proptest::collection::vec(event(), 1..40)) {
            let lb = LoadBalancer::new(LbConfig::default());
            let mut t = Topology::default();
            for e in &events {
                if let table::Change::Clusters(ids) = table::apply(&mut t, e) {
                    lb.update_table(&t, &ids);
                }
                let want = Routes::from_topology(&t);
                let got = lb.table().routes();
                prop_assert_eq!(&got.by_host, &want.by_host, "after {:?}", e.name());
            }
        }
    }

    #[test]
    fn an_update_reports_the_ports_of_the_changed_routes_and_drops_removed_ones() {
        let lb = LoadBalancer::new(LbConfig::default());
        let mut t = Topology::default();
        let mut c = cluster(1, 2);
        let m = member(1, 0, MemberStatus::Active);
        c.members.insert(m.member_id.clone(), m);
        t.clusters.insert("c1".into(), c);
        let ports = lb.update_table(&t, &BTreeSet::from(["c1".to_owned()]));
        assert_eq!(ports, [8281], "only HTTP(S) mappings get a proxy port");
        assert_eq!(lb.table().len(), 2);
        let route = lb.table().lookup("H0.c1.localhost:8281", 8281).unwrap();
        assert_eq!(route.backends.len(), 1);
        t.clusters.clear();
        assert!(
            lb.update_table(&t, &BTreeSet::from(["c1".to_owned()]))
                .is_empty()
        );
        assert!(lb.table().is_empty());
    }

    /// A topology too large for one message (over nats-server's 1 MB default) comes in parts and
    /// reaches a load balancer following the bus, with a change published between the parts; on
    /// the embedded broker, and on NATS when `NUBO_TEST_NATS_URL` is set.
    #[tokio::test]
    async fn a_complete_topology_in_parts_reaches_a_load_balancer_on_the_bus() {
        let broker = nubo_broker::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut urls = vec![broker.url()];
        match std::env::var("NUBO_TEST_NATS_URL") {
            Ok(u) => urls.push(u),
            Err(_) => nubo_testing::skipped(
                "the complete topology in parts on NATS: NUBO_TEST_NATS_URL is not set (scripts/test starts nats-server and sets it)",
            ),
        }
        let mut t = Topology::default();
        for c in 0..60 {
            let mut cl = cluster(c, 1);
            for m in 0..100 {
                let mb = member(c, m, MemberStatus::Active);
                cl.members.insert(mb.member_id.clone(), mb);
            }
            t.clusters.insert(cl.cluster_id.clone(), cl);
        }
        let whole = Event::CompleteTopology {
            topology: t.clone(),
            part: None,
        };
        assert!(
            whole.encode().len() > 1024 * 1024,
            "the topology needs parts"
        );
        let parts = nubo_events::parts::split(t, 7, nubo_events::parts::PART_BYTES);
        assert!(parts.len() >= 5);
        let gone = member(3, 0, MemberStatus::Terminated);
        for url in urls {
            let lb = LoadBalancer::new(LbConfig::default());
            let bus = nubo_bus::connect_url(&url, "lb-test").await.unwrap();
            bus.wait_connected(Duration::from_secs(10)).await.unwrap();
            lb.follow(EventBus::new(bus)).await.unwrap();
            let publisher = nubo_bus::connect_url(&url, "controller-test")
                .await
                .unwrap();
            publisher
                .wait_connected(Duration::from_secs(10))
                .await
                .unwrap();
            let publisher = EventBus::new(publisher);
            // Subscriptions settle before the first publish.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut watch = lb.watch_routes();
            for (i, part) in parts.iter().enumerate() {
                publisher.publish(part).await.unwrap();
                if i == 1 {
                    publisher
                        .publish(&Event::MemberTerminated(MemberChange {
                            member: gone.clone(),
                        }))
                        .await
                        .unwrap();
                }
            }
            let routed = |table: &Table| {
                let routes = table.routes();
                routes.by_host.len() == 60
                    && routes.by_host.values().all(|r| {
                        let want = if r.cluster_id == "c3" { 99 } else { 100 };
                        r.backends.len() == want
                    })
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            let mut table = lb.table();
            while !routed(&table) {
                match tokio::time::timeout_at(deadline, watch.changed()).await {
                    Ok(Some(t)) => table = t,
                    _ => panic!(
                        "{url}: the load balancer did not get the whole topology: {} routes",
                        table.len()
                    ),
                }
            }
            let c3 = table.lookup("h0.c3.localhost", 8281).unwrap();
            assert!(
                c3.backends.iter().all(|b| b.member_id != gone.member_id),
                "{url}: the change published between the parts is kept"
            );
        }
    }
}
