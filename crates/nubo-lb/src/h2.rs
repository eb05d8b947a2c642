//! HTTP/2 toward clients (a TLS client that chose `h2` by ALPN): hyper speaks HTTP/2 on the
//! connection, and each of its requests goes through the same HTTP/1 proxy as any other
//! ([`crate::proxy::serve`], over an in-memory pipe), so routing, tenants, retries, holding,
//! redirects and the counters are the same whichever protocol the client speaks. Members are
//! spoken to in HTTP/1.1. The pipes of a connection are kept and reused once their exchange is
//! over (each with its proxy connection and that connection's kept-alive member connections), so
//! a busy HTTP/2 client costs a pipe per request in flight, not a member connection per request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::LoadBalancer;

/// Most requests in flight on one HTTP/2 connection.
pub const MAX_STREAMS: u32 = 256;

/// The pipe between a request's HTTP/2 stream and the HTTP/1 proxy.
const PIPE: usize = 64 * 1024;

type Body = Either<Incoming, Full<Bytes>>;

type Pipe = hyper::client::conn::http1::SendRequest<Incoming>;

/// One HTTP/2 connection's idle pipes to the proxy.
#[derive(Default)]
struct Pipes(Mutex<Vec<Pipe>>);

impl Pipes {
    /// A pipe ready for a request (its last exchange over), if one is idle.
    fn take(&self) -> Option<Pipe> {
        let mut idle = self.0.lock().ok()?;
        idle.retain(|p| !p.is_closed());
        let i = idle.iter().position(|p| p.is_ready())?;
        Some(idle.swap_remove(i))
    }

    /// Keeps a pipe for a later request (it becomes ready when its answer has been read).
    fn put(&self, pipe: Pipe) {
        if let Ok(mut idle) = self.0.lock()
            && idle.len() < MAX_STREAMS as usize
        {
            idle.push(pipe);
        }
    }
}

/// A connection's requests waiting for their answer, and when the last one got it.
struct Activity {
    waiting: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn idle_since(&self) -> Option<Instant> {
        (self.waiting.load(Ordering::Relaxed) == 0).then(|| {
            self.last
                .lock()
                .map(|l| *l)
                .unwrap_or_else(|_| Instant::now())
        })
    }
}

/// Serves one HTTP/2 connection until it closes; one with no request for the load balancer's
/// idle timeout is closed gracefully (GOAWAY; answers still on their way complete), as an idle
/// HTTP/1 connection is.
pub(crate) async fn serve<S>(lb: Arc<LoadBalancer>, port: u16, io: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle = lb.config.idle_timeout;
    let pipes = Arc::new(Pipes::default());
    let activity = Arc::new(Activity {
        waiting: AtomicUsize::new(0),
        last: Mutex::new(Instant::now()),
    });
    let seen = activity.clone();
    let service = hyper::service::service_fn(move |req| {
        let (lb, pipes, seen) = (lb.clone(), pipes.clone(), seen.clone());
        async move {
            seen.waiting.fetch_add(1, Ordering::Relaxed);
            let answer = forward(lb, pipes, port, peer, req).await;
            seen.waiting.fetch_sub(1, Ordering::Relaxed);
            if let Ok(mut l) = seen.last.lock() {
                *l = Instant::now();
            }
            answer
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(crate::h1::MAX_HEAD as u32);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing = false;
    let mut check = Instant::now() + idle;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::trace!(%peer, error = %e, "HTTP/2 connection ended");
                }
                return;
            }
            _ = tokio::time::sleep_until(check), if !closing => {
                match activity.idle_since() {
                    Some(since) if since.elapsed() >= idle => {
                        tracing::trace!(%peer, "idle HTTP/2 connection closed");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    Some(since) => check = since + idle,
                    None => check = Instant::now() + idle,
                }
            }
        }
    }
}

/// One request: written as HTTP/1.1 into a pipe the proxy serves, its answer read back.
async fn forward(
    lb: Arc<LoadBalancer>,
    pipes: Arc<Pipes>,
    port: u16,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    // HTTP/2 names the host in `:authority`; HTTP/1.1 in `Host`.
    if !req.headers().contains_key(http::header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(v) = http::HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(http::header::HOST, v);
    }
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    match http::Uri::try_from(target) {
        Ok(u) => *req.uri_mut() = u,
        Err(_) => return Ok(own(StatusCode::BAD_REQUEST, "nubo: bad request target")),
    }
    *req.version_mut() = http::Version::HTTP_11;
    let mut pipe = match pipes.take() {
        Some(p) => p,
        None => match open(lb, port, peer).await {
            Some(p) => p,
            None => return Ok(own(StatusCode::BAD_GATEWAY, "nubo: internal pipe failed")),
        },
    };
    let answer = pipe.send_request(req).await;
    pipes.put(pipe);
    match answer {
        Ok(res) => Ok(res.map(Either::Left)),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "an HTTP/2 request got no answer through the proxy");
            Ok(own(
                StatusCode::BAD_GATEWAY,
                "nubo: the request could not be passed on",
            ))
        }
    }
}

/// A new pipe to a new proxy connection.
async fn open(lb: Arc<LoadBalancer>, port: u16, peer: SocketAddr) -> Option<Pipe> {
    let (ours, theirs) = tokio::io::duplex(PIPE);
    tokio::spawn(crate::proxy::serve(
        lb,
        port,
        theirs,
        peer,
        crate::io::Tcp,
        true,
    ));
    let (pipe, conn) = hyper::client::conn::http1::handshake(TokioIo::new(ours))
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(pipe)
}

/// The load balancer's own answer.
fn own(status: StatusCode, message: &'static str) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "{message}\n"
    )))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert("x-nubo-lb", http::HeaderValue::from_static("1"));
    r
}
