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
use http_body_util::{Either, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use nubo_bus::EventBus;
use nubo_events::{Category, Event, RequestsInFlight, Topology};

pub mod table;

pub use table::{Routes, Strategy, static_topology};

/// What goes to a member: the client's body, or nothing (on a replay).
type UpBody = Either<Incoming, Empty<Bytes>>;
/// What goes back to the client: a member's body (counted), or the load balancer's own answer.
type DownBody = Either<Counted, Full<Bytes>>;

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
    total: AtomicU64,
    network_partition_id: Mutex<String>,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// Why a request to a member failed.
#[derive(Debug)]
enum UpstreamError {
    /// No connection could be made (nothing was sent).
    Connect(String),
    /// The connection failed after the request was (perhaps partly) sent.
    Request(hyper::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connect: {e}"),
            UpstreamError::Request(e) => write!(f, "request: {e}"),
        }
    }
}

/// The upstream connections of one client connection: one kept-alive HTTP/1.1 connection per
/// member, reused by the client's next requests (an HTTP/1.1 client sends one at a time), so
/// requests never wait on a shared pool.
#[derive(Default)]
struct Upstreams {
    conns: Mutex<
        Vec<(
            http::uri::Authority,
            hyper::client::conn::http1::SendRequest<UpBody>,
        )>,
    >,
}

impl Upstreams {
    async fn connect(
        to: &http::uri::Authority,
        connect_timeout: Duration,
    ) -> Result<hyper::client::conn::http1::SendRequest<UpBody>, UpstreamError> {
        let stream =
            tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(to.as_str()))
                .await
                .map_err(|_| {
                    UpstreamError::Connect(format!(
                        "no connection to {to} within {connect_timeout:?}"
                    ))
                })?
                .map_err(|e| UpstreamError::Connect(format!("{to}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect(format!("{to}: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn send(
        &self,
        to: &http::uri::Authority,
        connect_timeout: Duration,
        mut req: Request<UpBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut cached = self.conns.lock().ok().and_then(|mut c| {
            let i = c.iter().position(|(a, _)| a == to)?;
            Some(c.swap_remove(i).1)
        });
        loop {
            let reused = cached.is_some();
            let mut sender = match cached.take() {
                Some(mut s) => match s.ready().await {
                    Ok(()) => s,
                    // A kept-alive connection the member closed: a fresh one.
                    Err(_) => Self::connect(to, connect_timeout).await?,
                },
                None => Self::connect(to, connect_timeout).await?,
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    if let Ok(mut c) = self.conns.lock() {
                        c.push((to.clone(), sender));
                    }
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Not sent at all on a reused connection (it was closing): once more, on a new one.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(UpstreamError::Request(e.into_error())),
                },
            }
        }
    }
}

/// A member as the proxy uses it.
struct Target {
    member_id: String,
    authority: http::uri::Authority,
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

fn text(status: StatusCode, msg: String) -> Response<DownBody> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(msg + "\n"))));
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

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers (and those the `Connection` header lists). Most messages carry
/// none: one pass over the names decides, without hashing eight names each time.
fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    if !h.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
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
    for n in &HOP_BY_HOP {
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
                .filter_map(|b| {
                    Some(Target {
                        member_id: b.member_id.clone(),
                        authority: http::uri::Authority::try_from(b.addr.to_string()).ok()?,
                        outstanding: outstanding.entry(b.member_id.clone()).or_default().clone(),
                    })
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
                    let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
                        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
                    let upstreams = Arc::new(Upstreams::default());
                    let svc = service_fn(move |req| {
                        lb.clone()
                            .handle(port, peer, peer_ip.clone(), upstreams.clone(), req)
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .max_buf_size(64 * 1024)
                        .serve_connection(TokioIo::new(stream), svc);
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "client connection ended with an error");
                    }
                });
            }
        });
    }

    async fn handle(
        self: Arc<Self>,
        port: u16,
        peer: SocketAddr,
        peer_ip: HeaderValue,
        upstreams: Arc<Upstreams>,
        req: Request<Incoming>,
    ) -> Result<Response<DownBody>, Infallible> {
        let (mut parts, body) = req.into_parts();
        let host_header = parts.headers.get(header::HOST).cloned();
        let host = match host_header.as_ref().and_then(|h| h.to_str().ok()) {
            Some(h) => h.to_owned(),
            None => parts.uri.host().unwrap_or_default().to_owned(),
        };
        let retry_ok = idempotent(&parts.method) && body.is_end_stream();
        let path = parts.uri.path_and_query().cloned();
        strip_hop_by_hop(&mut parts.headers);
        let forwarded_for = match parts
            .headers
            .get(X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", peer.ip())).ok(),
            None => Some(peer_ip.clone()),
        };
        if let Some(v) = forwarded_for {
            parts.headers.insert(X_FORWARDED_FOR, v);
        }
        parts
            .headers
            .insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        if let Some(v) = host_header {
            parts.headers.insert(X_FORWARDED_HOST, v);
        }
        parts
            .headers
            .insert(X_FORWARDED_PORT, HeaderValue::from(port));
        let mut body = Some(body);
        let mut failed: Vec<String> = Vec::new();
        let mut last_error = String::new();
        let mut changes: Option<tokio::sync::watch::Receiver<Arc<Compiled>>> = None;
        let deadline = tokio::time::Instant::now() + HOLD;
        let mut holding = false;
        let result = loop {
            let compiled = match &mut changes {
                Some(rx) => rx.borrow_and_update().clone(),
                None => self.routes.borrow().clone(),
            };
            let Some(route) = compiled.lookup(&host, port) else {
                break text(
                    StatusCode::NOT_FOUND,
                    format!("nubo: no application is served at {host} on port {port}"),
                );
            };
            let candidates: Vec<&Target> = if failed.is_empty() {
                route.targets.iter().collect()
            } else {
                route
                    .targets
                    .iter()
                    .filter(|t| !failed.contains(&t.member_id))
                    .collect()
            };
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
                if can_wait && holding {
                    let rx = changes.get_or_insert_with(|| {
                        let mut rx = self.routes.subscribe();
                        rx.mark_unchanged();
                        rx
                    });
                    let changed = tokio::time::timeout_at(deadline, rx.changed()).await;
                    if changed.is_ok_and(|r| r.is_ok()) {
                        continue;
                    }
                }
                if route.targets.is_empty() {
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
                        failed.join(", ")
                    ),
                );
            }
            let pick = match self.config.strategy {
                Strategy::RoundRobin => {
                    self.turn.fetch_add(1, Ordering::Relaxed) % candidates.len()
                }
                Strategy::LeastOutstanding => {
                    let outstanding: Vec<i64> = candidates
                        .iter()
                        .map(|t| t.outstanding.load(Ordering::Relaxed))
                        .collect();
                    table::choose(
                        Strategy::LeastOutstanding,
                        self.turn.fetch_add(1, Ordering::Relaxed),
                        &outstanding,
                        &[],
                    )
                    .unwrap_or(0)
                }
            };
            let target = candidates[pick];
            // Origin form (`GET /path HTTP/1.1`), as a server expects from a client; the client's
            // `Host` header goes along, and the member's address is only where we connect.
            let uri = match &path {
                Some(p) => Uri::from(p.clone()),
                None => Uri::from_static("/"),
            };
            let up_body = match body.take() {
                Some(b) => Either::Left(b),
                None => Either::Right(Empty::new()),
            };
            let mut up = Request::new(up_body);
            *up.method_mut() = parts.method.clone();
            *up.uri_mut() = uri;
            *up.headers_mut() = parts.headers.clone();
            route.counters.in_flight.fetch_add(1, Ordering::Relaxed);
            target.outstanding.fetch_add(1, Ordering::Relaxed);
            let guard = InFlight {
                cluster: route.counters.clone(),
                member: target.outstanding.clone(),
            };
            let sent = tokio::time::timeout(
                self.config.request_timeout,
                upstreams.send(&target.authority, self.config.connect_timeout, up),
            )
            .await;
            match sent {
                Ok(Ok(resp)) => {
                    let (mut rparts, rbody) = resp.into_parts();
                    strip_hop_by_hop(&mut rparts.headers);
                    // A small response to a replayable request is received whole before anything
                    // goes to the client: if the member dies mid-response, the request is replayed
                    // on another member instead of the client getting a truncated body.
                    let small = rparts
                        .headers
                        .get(header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .is_some_and(|n| n <= BUFFERED_RESPONSE);
                    if retry_ok && small {
                        match http_body_util::BodyExt::collect(rbody).await {
                            Ok(whole) => {
                                drop(guard);
                                route.counters.served.fetch_add(1, Ordering::Relaxed);
                                route.counters.total.fetch_add(1, Ordering::Relaxed);
                                break Response::from_parts(
                                    rparts,
                                    Either::Right(Full::new(whole.to_bytes())),
                                );
                            }
                            Err(e) => {
                                drop(guard);
                                last_error = format!("the response broke off: {e}");
                                tracing::debug!(member = %target.member_id, error = %last_error, "upstream response failed");
                                failed.push(target.member_id.clone());
                                continue;
                            }
                        }
                    }
                    route.counters.served.fetch_add(1, Ordering::Relaxed);
                    route.counters.total.fetch_add(1, Ordering::Relaxed);
                    let counted = Counted {
                        inner: rbody,
                        guard: Some(guard),
                    };
                    break Response::from_parts(rparts, Either::Left(counted));
                }
                Ok(Err(e)) => {
                    drop(guard);
                    let refused = matches!(e, UpstreamError::Connect(_));
                    last_error = e.to_string();
                    tracing::debug!(member = %target.member_id, error = %last_error, "upstream request failed");
                    failed.push(target.member_id.clone());
                    if !retry_ok {
                        // The body went with the failed attempt: it cannot be replayed.
                        let what = if refused {
                            "refused the connection".to_owned()
                        } else {
                            format!("failed mid-request ({last_error})")
                        };
                        break text(
                            StatusCode::BAD_GATEWAY,
                            format!(
                                "nubo: member {} of cluster {} {what}",
                                target.member_id, route.cluster_id
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
                            target.member_id, route.cluster_id, self.config.request_timeout
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

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    #[test]
    fn hop_by_hop_headers_are_stripped_and_the_rest_kept() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["host", "x-kept"]);
        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, HeaderValue::from_static("a"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }
}
