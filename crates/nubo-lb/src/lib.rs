//! The load balancer (`stratos.md` §10): listens on the proxy ports of the clusters' HTTP port
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

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nubo_bus::EventBus;
use nubo_events::{Category, Event, RequestsInFlight, Topology};

pub mod h1;
mod proxy;
pub mod table;

pub use table::{Routes, Strategy, static_topology};

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
        }
    }
}

#[derive(Default)]
struct ClusterCounters {
    in_flight: AtomicI64,
    served: AtomicU64,
    total: AtomicU64,
    network_partition_id: Mutex<String>,
}

/// A member as the proxy uses it.
struct Target {
    member_id: String,
    addr: SocketAddr,
    outstanding: Arc<AtomicI64>,
}

/// A route with its counters attached.
struct CompiledRoute {
    cluster_id: String,
    counters: Arc<ClusterCounters>,
    targets: Vec<Target>,
}

/// The table as the proxy reads it: by port, then host name.
#[derive(Default)]
struct Compiled {
    routes: Arc<Routes>,
    by_port: HashMap<u16, HashMap<String, Arc<CompiledRoute>>>,
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
            .or_else(|| hosts.get(&name.to_ascii_lowercase()))
    }
}

/// The changes of a load balancer's table ([`LoadBalancer::watch_routes`]).
pub struct RoutesWatch(tokio::sync::watch::Receiver<Arc<Compiled>>);

impl RoutesWatch {
    /// Waits for the table to change (since the watch was made or last returned) and returns the
    /// new one (tables replaced in quick succession may show only as the last of them); `None`
    /// once the load balancer is gone.
    pub async fn changed(&mut self) -> Option<Arc<Routes>> {
        self.0.changed().await.ok()?;
        Some(self.0.borrow_and_update().routes.clone())
    }
}

/// The load balancer.
pub struct LoadBalancer {
    config: LbConfig,
    routes: tokio::sync::watch::Sender<Arc<Compiled>>,
    held: AtomicUsize,
    clusters: Mutex<HashMap<String, Arc<ClusterCounters>>>,
    outstanding: Mutex<HashMap<String, Arc<AtomicI64>>>,
    listening: Mutex<HashSet<u16>>,
    turn: AtomicUsize,
}

impl LoadBalancer {
    /// A load balancer with an empty table (fed with [`LoadBalancer::set_topology`] or [`LoadBalancer::follow`]).
    pub fn new(config: LbConfig) -> Arc<Self> {
        Arc::new(LoadBalancer {
            config,
            routes: tokio::sync::watch::Sender::new(Arc::new(Compiled::default())),
            held: AtomicUsize::new(0),
            clusters: Mutex::new(HashMap::new()),
            outstanding: Mutex::new(HashMap::new()),
            listening: Mutex::new(HashSet::new()),
            turn: AtomicUsize::new(0),
        })
    }

    /// The current table.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.borrow().routes.clone()
    }

    /// Follows the table: [`RoutesWatch::changed`] returns each new table as soon as the proxy
    /// routes by it (for benchmarks and tests that time a topology change).
    pub fn watch_routes(&self) -> RoutesWatch {
        RoutesWatch(self.routes.subscribe())
    }

    /// Replaces the table from a topology and opens any new proxy port.
    pub async fn set_topology(self: &Arc<Self>, t: &Topology) {
        let routes = Arc::new(Routes::from_topology(t));
        if tracing::enabled!(tracing::Level::DEBUG) {
            for ((host, port), r) in &routes.by_host {
                let members: Vec<&str> = r.backends.iter().map(|b| b.member_id.as_str()).collect();
                tracing::debug!(%host, port, ?members, "route");
            }
        }
        let ports = routes.ports();
        let compiled = self.compile(routes);
        self.routes.send_replace(Arc::new(compiled));
        for port in ports {
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

    /// Attaches the long-lived counters and the upstream authorities to the routes, once per
    /// topology change, so that a request does no map lookups and no allocations to find them.
    fn compile(&self, routes: Arc<Routes>) -> Compiled {
        let mut by_port: HashMap<u16, HashMap<String, Arc<CompiledRoute>>> = HashMap::new();
        let (Ok(mut clusters), Ok(mut outstanding)) =
            (self.clusters.lock(), self.outstanding.lock())
        else {
            return Compiled::default();
        };
        for ((host, port), route) in &routes.by_host {
            let counters = clusters
                .entry(route.cluster_id.clone())
                .or_default()
                .clone();
            if let Ok(mut np) = counters.network_partition_id.lock() {
                np.clone_from(&route.network_partition_id);
            }
            let targets = route
                .backends
                .iter()
                .map(|b| Target {
                    member_id: b.member_id.clone(),
                    addr: b.addr,
                    outstanding: outstanding.entry(b.member_id.clone()).or_default().clone(),
                })
                .collect();
            by_port.entry(*port).or_default().insert(
                host.clone(),
                Arc::new(CompiledRoute {
                    cluster_id: route.cluster_id.clone(),
                    counters,
                    targets,
                }),
            );
        }
        Compiled { routes, by_port }
    }

    /// Follows the topology on the bus (and asks for the complete topology first); publishes
    /// requests in flight. Runs in the background.
    pub async fn follow(self: &Arc<Self>, events: EventBus) -> Result<(), nubo_bus::BusError> {
        let mut stream = events.subscribe(Category::Topology).await?;
        events.publish(&Event::CompleteTopologyRequest {}).await?;
        let lb = self.clone();
        tokio::spawn(async move {
            let mut topology = Topology::default();
            while let Some(e) = stream.recv().await {
                if table::apply(&mut topology, &e) {
                    lb.set_topology(&topology).await;
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
                    let stat = RequestsInFlight {
                        cluster_id,
                        network_partition_id: c
                            .network_partition_id
                            .lock()
                            .map(|n| n.clone())
                            .unwrap_or_default(),
                        cluster_instance_id: None,
                        count: c.in_flight.load(Ordering::Relaxed).max(0) as f64,
                        served: c.served.swap(0, Ordering::Relaxed),
                        load_balancer_id: lb.config.id.clone(),
                        at_ms: nubo_events::now_ms(),
                    };
                    let _ = events.publish(&Event::InFlightRequests(stat)).await;
                }
            }
        });
        Ok(())
    }

    async fn listen(self: Arc<Self>, port: u16) {
        let addr = SocketAddr::new(self.config.bind, port);
        let listener = match tokio::net::TcpListener::bind(addr).await {
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
                tokio::spawn(proxy::serve(self.clone(), port, stream, peer));
            }
        });
    }
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
            for (host, route) in hosts {
                let port = port.to_string();
                let labels = [("host", host.as_str()), ("port", port.as_str())];
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
