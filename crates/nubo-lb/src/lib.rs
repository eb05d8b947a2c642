//! The load balancer (`stratos.md` §10): listens on the proxy ports of the clusters' HTTP port
//! mappings, routes each request by its `Host` header to an Active member of the cluster (round
//! robin or least outstanding requests), retries on another member when a connection is refused
//! (and idempotent, bodiless requests reset before any response byte), streams bodies both ways
//! over a keep-alive upstream pool, adds `X-Forwarded-*` headers, answers a clear 502/503/504 when
//! no member can serve, and publishes requests in flight per cluster every second. Its table
//! follows topology events: a member gets traffic as soon as it is Active and none after it leaves
//! Active. It runs inside `nubo server` or alone (`nubo lb`).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use nubo_bus::EventBus;
use nubo_events::{Category, Event, RequestsInFlight, Topology};

pub mod table;

pub use table::{Routes, Strategy};

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// How long a request that no member can take now waits for one (a member becoming Active, or a
/// replacement) before it is answered 502 or 503.
pub const HOLD: Duration = Duration::from_secs(5);
/// Most requests held at once; beyond it they are answered at once.
pub const MAX_HELD: usize = 10_000;
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
        }
    }
}

#[derive(Default)]
struct ClusterCounters {
    in_flight: AtomicI64,
    served: AtomicU64,
    network_partition_id: Mutex<String>,
}

/// The load balancer.
pub struct LoadBalancer {
    config: LbConfig,
    routes: tokio::sync::watch::Sender<Arc<Routes>>,
    held: AtomicUsize,
    clusters: Mutex<HashMap<String, Arc<ClusterCounters>>>,
    outstanding: Mutex<HashMap<String, Arc<AtomicI64>>>,
    listening: Mutex<HashSet<u16>>,
    turn: AtomicUsize,
    client: Client<HttpConnector, ProxyBody>,
}

/// Keeps the counters of one request until its response body is done.
struct InFlight {
    cluster: Arc<ClusterCounters>,
    member: Arc<AtomicI64>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.cluster.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.member.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds the request's counters until it ends.
    struct Counted {
        #[pin]
        inner: Incoming,
        guard: Option<InFlight>,
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard.take();
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn text(status: StatusCode, msg: String) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(
        HeaderName::from_static("x-nubo-lb"),
        HeaderValue::from_static("1"),
    );
    r
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl LoadBalancer {
    /// A load balancer with an empty table (fed with [`LoadBalancer::set_topology`] or [`LoadBalancer::follow`]).
    pub fn new(config: LbConfig) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Arc::new(LoadBalancer {
            config,
            routes: tokio::sync::watch::Sender::new(Arc::new(Routes::default())),
            held: AtomicUsize::new(0),
            clusters: Mutex::new(HashMap::new()),
            outstanding: Mutex::new(HashMap::new()),
            listening: Mutex::new(HashSet::new()),
            turn: AtomicUsize::new(0),
            client,
        })
    }

    /// The current table.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.borrow().clone()
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
        self.routes.send_replace(routes);
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
                        at_ms: now_ms(),
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
                let lb = self.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| lb.clone().handle(port, peer, req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(30))
                        .max_buf_size(64 * 1024)
                        .serve_connection(TokioIo::new(stream), svc);
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "client connection ended with an error");
                    }
                });
            }
        });
    }

    fn counters(&self, route: &table::Route) -> Arc<ClusterCounters> {
        let Ok(mut map) = self.clusters.lock() else {
            return Arc::new(ClusterCounters::default());
        };
        let c = map.entry(route.cluster_id.clone()).or_default().clone();
        if let Ok(mut np) = c.network_partition_id.lock()
            && np.is_empty()
        {
            np.clone_from(&route.network_partition_id);
        }
        c
    }

    fn member_counter(&self, member_id: &str) -> Arc<AtomicI64> {
        self.outstanding
            .lock()
            .map(|mut m| m.entry(member_id.to_owned()).or_default().clone())
            .unwrap_or_default()
    }

    async fn handle(
        self: Arc<Self>,
        port: u16,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().host().map(str::to_owned))
            .unwrap_or_default();
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let retry_ok = idempotent(&parts.method) && body.is_end_stream();
        strip_hop_by_hop(&mut parts.headers);
        let client_ip = peer.ip().to_string();
        let xff = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => format!("{prev}, {client_ip}"),
            None => client_ip,
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            parts.headers.insert("x-forwarded-for", v);
        }
        parts
            .headers
            .insert("x-forwarded-proto", HeaderValue::from_static("http"));
        if let Ok(v) = HeaderValue::from_str(&host) {
            parts.headers.insert("x-forwarded-host", v);
        }
        parts
            .headers
            .insert("x-forwarded-port", HeaderValue::from(port));
        let mut body = Some(body.boxed());
        let mut failed: HashSet<String> = HashSet::new();
        let mut last_error = String::new();
        let mut changes = self.routes.subscribe();
        let deadline = tokio::time::Instant::now() + HOLD;
        let mut holding = false;
        let result = loop {
            let routes = changes.borrow_and_update().clone();
            let Some(route) = routes.lookup(&host, port) else {
                break text(
                    StatusCode::NOT_FOUND,
                    format!("nubo: no application is served at {host} on port {port}"),
                );
            };
            let candidates: Vec<usize> = (0..route.backends.len())
                .filter(|i| !failed.contains(&route.backends[*i].member_id))
                .collect();
            if candidates.is_empty() || failed.len() >= MAX_ATTEMPTS {
                // No member can take it now. A request that can be replayed waits (bounded) for the
                // table to change: a member becoming Active, or a replacement.
                let can_wait = (retry_ok || body.is_some())
                    && failed.len() < MAX_ATTEMPTS
                    && tokio::time::Instant::now() < deadline;
                if can_wait && !holding {
                    if self.held.fetch_add(1, Ordering::Relaxed) < MAX_HELD {
                        holding = true;
                    } else {
                        self.held.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                if can_wait
                    && holding
                    && tokio::time::timeout_at(deadline, changes.changed())
                        .await
                        .is_ok_and(|r| r.is_ok())
                {
                    continue;
                }
                if route.backends.is_empty() {
                    let mut r = text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "nubo: cluster {} has no active member yet; retry shortly",
                            route.cluster_id
                        ),
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    break r;
                }
                break text(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "nubo: no member of cluster {} could serve the request (tried {}; last error: {last_error})",
                        route.cluster_id,
                        failed.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                );
            }
            let cluster = self.counters(route);
            let counters: Vec<Arc<AtomicI64>> = candidates
                .iter()
                .map(|i| self.member_counter(&route.backends[*i].member_id))
                .collect();
            let outstanding: Vec<i64> =
                counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            let turn = self.turn.fetch_add(1, Ordering::Relaxed);
            let Some(k) = table::choose(self.config.strategy, turn, &outstanding, &[]) else {
                continue;
            };
            let backend = route.backends[candidates[k]].clone();
            let Ok(uri) = format!("http://{}{}", backend.addr, path).parse::<Uri>() else {
                break text(
                    StatusCode::BAD_REQUEST,
                    format!("nubo: cannot forward the path {path}"),
                );
            };
            let up_body = match body.take() {
                Some(b) => b,
                None => Empty::new().map_err(|never| match never {}).boxed(),
            };
            let mut up = Request::new(up_body);
            *up.method_mut() = parts.method.clone();
            *up.uri_mut() = uri;
            *up.headers_mut() = parts.headers.clone();
            cluster.in_flight.fetch_add(1, Ordering::Relaxed);
            counters[k].fetch_add(1, Ordering::Relaxed);
            let guard = InFlight {
                cluster: cluster.clone(),
                member: counters[k].clone(),
            };
            match tokio::time::timeout(self.config.request_timeout, self.client.request(up)).await {
                Ok(Ok(resp)) => {
                    cluster.served.fetch_add(1, Ordering::Relaxed);
                    let (mut rparts, rbody) = resp.into_parts();
                    strip_hop_by_hop(&mut rparts.headers);
                    let counted = Counted {
                        inner: rbody,
                        guard: Some(guard),
                    };
                    break Response::from_parts(rparts, counted.boxed());
                }
                Ok(Err(e)) => {
                    drop(guard);
                    last_error = format!("{e:?}");
                    let refused = e.is_connect();
                    tracing::debug!(member = %backend.member_id, error = %last_error, "upstream request failed");
                    failed.insert(backend.member_id.clone());
                    // A refused connection never sent the body; anything else may have.
                    if refused && !retry_ok && body.is_none() {
                        break text(
                            StatusCode::BAD_GATEWAY,
                            format!(
                                "nubo: member {} of cluster {} refused the connection",
                                backend.member_id, route.cluster_id
                            ),
                        );
                    }
                    if !refused && !retry_ok {
                        break text(
                            StatusCode::BAD_GATEWAY,
                            format!(
                                "nubo: member {} of cluster {} failed mid-request ({last_error})",
                                backend.member_id, route.cluster_id
                            ),
                        );
                    }
                }
                Err(_) => {
                    drop(guard);
                    break text(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "nubo: member {} of cluster {} did not answer within {:?}",
                            backend.member_id, route.cluster_id, self.config.request_timeout
                        ),
                    );
                }
            }
        };
        if holding {
            self.held.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(result)
    }
}
