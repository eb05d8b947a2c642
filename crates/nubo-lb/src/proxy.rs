//! One client connection: read a request head, pick a member, pass the request on over a kept-alive
//! connection of this client connection to that member, pass the response back, repeat. In the
//! common case (a small request and response) that is one read and one write on each side and no
//! allocation; heads pass through as bytes ([`crate::h1`]), responses untouched unless they must
//! change. Bodies stream both ways; a request whose body is still arriving streams it while the
//! response is read (so `Expect: 100-continue` works); an upgrade (WebSocket) becomes a tunnel.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::h1::{self, Chunked, Forwarded, Framing, HeadError, RequestHead};
use crate::io::{Connect, Stream};
use crate::table::{self, Strategy};
use crate::{
    BUFFERED_RESPONSE, Compiled, CompiledRoute, HEADER_READ_TIMEOUT, LoadBalancer, MAX_ATTEMPTS,
    MAX_HELD,
};

/// Most member connections one client connection keeps.
const MAX_UPSTREAMS: usize = 8;
/// Read buffers grow by this much.
const READ_CHUNK: usize = 8 * 1024;

/// A kept-alive connection to a member.
struct Upstream<U> {
    addr: SocketAddr,
    /// The member's counters: whether the table still routes to it.
    member: Arc<crate::MemberCounters>,
    stream: U,
    buf: BytesMut,
}

/// A member a request failed on (id and address: a member that comes back, or a replacement
/// reusing an id, is a new chance).
type Tried = (String, SocketAddr);

fn tried(failed: &[Tried], t: &crate::Target) -> bool {
    failed
        .iter()
        .any(|(m, a)| *a == t.addr && *m == t.member_id)
}

/// What happens to the client connection after an exchange.
enum Next {
    KeepAlive,
    Close,
}

/// Why an attempt on a member failed.
enum Failure {
    /// No connection could be made; nothing was sent.
    Connect(String),
    /// A kept-alive connection turned out closed before any answer (a replayable request goes
    /// again on a fresh connection without counting against the member).
    Stale,
    /// The member failed before any byte of its answer reached the client.
    BeforeResponse(String),
    /// No answer within the request timeout.
    Timeout,
    /// The exchange broke after part of the answer reached the client, or the client went away:
    /// the client connection closes.
    Broken,
}

/// How a response went.
enum Outcome {
    /// Passed on whole.
    Done {
        client_keep: bool,
        upstream_keep: bool,
    },
    /// `101 Switching Protocols` passed on: the connections become a tunnel.
    Upgraded,
}

/// Serves one client connection until it closes, reaching members through `connect`.
pub(crate) async fn serve<C: Stream, K: Connect>(
    lb: Arc<LoadBalancer>,
    port: u16,
    client: C,
    peer: SocketAddr,
    connect: K,
    secure: bool,
) {
    let routes = lb.routes.subscribe();
    let table = routes.borrow().clone();
    let mut conn = Conn {
        port,
        port_text: port.to_string(),
        peer_ip: peer.ip().to_string(),
        secure,
        client,
        inbuf: BytesMut::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(1024),
        rout: Vec::new(),
        host: String::new(),
        ups: Vec::new(),
        routes,
        table,
        idle: Box::pin(tokio::time::sleep(HEADER_READ_TIMEOUT)),
        wait: Box::pin(tokio::time::sleep(lb.config.request_timeout)),
        lb,
        connect,
    };
    conn.run().await;
    tracing::trace!(%peer, "client connection closed");
}

struct Conn<C: Stream, K: Connect> {
    lb: Arc<LoadBalancer>,
    connect: K,
    port: u16,
    port_text: String,
    peer_ip: String,
    /// The client's connection is TLS.
    secure: bool,
    client: C,
    /// What the client sent and is not handled yet.
    inbuf: BytesMut,
    /// The request head (and a whole small body) for the member, kept for a replay.
    out: Vec<u8>,
    /// A rewritten response head, or the load balancer's own answer.
    rout: Vec<u8>,
    host: String,
    ups: Vec<Upstream<K::Stream>>,
    routes: watch::Receiver<Arc<Compiled>>,
    table: Arc<Compiled>,
    /// Header-read deadline (deadlines only move later: extending a tokio timer is cheap).
    idle: Pin<Box<Sleep>>,
    /// Deadline for a member's answer.
    wait: Pin<Box<Sleep>>,
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

impl<C: Stream, K: Connect> Conn<C, K> {
    async fn run(&mut self) {
        loop {
            let head = match self.read_request_head().await {
                Ok(Some(h)) => h,
                Ok(None) => return,
                Err((status, msg)) => {
                    self.answer(status, msg, false, false, 1).await;
                    return;
                }
            };
            match self.exchange(head).await {
                Next::KeepAlive => {}
                Next::Close => {
                    let _ = self.client.shutdown().await;
                    return;
                }
            }
        }
    }

    /// The next request head (`Ok(None)`: the client closed or went quiet).
    async fn read_request_head(&mut self) -> Result<Option<RequestHead>, (u16, String)> {
        loop {
            if !self.inbuf.is_empty() {
                let fwd = Forwarded {
                    peer_ip: self.peer_ip.as_bytes(),
                    port: self.port_text.as_bytes(),
                    secure: self.secure,
                };
                match h1::parse_request(&self.inbuf, fwd, &mut self.out) {
                    Ok(Some(h)) => return Ok(Some(h)),
                    Ok(None) => {}
                    Err(HeadError::TooLarge) => {
                        return Err((431, "nubo: request head too large".into()));
                    }
                    Err(HeadError::Malformed(why)) => {
                        return Err((400, format!("nubo: bad request: {why}")));
                    }
                    Err(HeadError::Unsupported(why)) => {
                        return Err((501, format!("nubo: not supported: {why}")));
                    }
                }
            }
            reserve(&mut self.inbuf);
            self.idle
                .as_mut()
                .reset(Instant::now() + HEADER_READ_TIMEOUT);
            let holding = !self.ups.is_empty();
            tokio::select! {
                biased;
                r = self.client.read_buf(&mut self.inbuf) => match r {
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(_) => {}
                },
                // The table changed while this connection is idle: connections to members it
                // no longer routes to (draining, gone) are closed now, not at the next request,
                // so that a draining member sees its connections end.
                r = self.routes.changed(), if holding => {
                    if r.is_ok() {
                        self.table = self.routes.borrow_and_update().clone();
                        self.ups.retain(|u| u.member.routed.load(Ordering::Relaxed));
                    }
                }
                _ = &mut self.idle => {
                    if self.inbuf.is_empty() {
                        return Ok(None);
                    }
                    return Err((408, "nubo: the request head did not arrive in time".into()));
                }
            }
        }
    }

    /// Writes the load balancer's own answer.
    async fn answer(
        &mut self,
        status: u16,
        msg: String,
        retry: bool,
        keep: bool,
        minor: u8,
    ) -> Next {
        h1::answer(&mut self.rout, status, &msg, retry, keep, minor);
        match self.client.write_all(&self.rout).await {
            Ok(()) if keep => Next::KeepAlive,
            _ => Next::Close,
        }
    }

    async fn exchange(&mut self, head: RequestHead) -> Next {
        self.host.clear();
        self.host
            .push_str(std::str::from_utf8(&self.inbuf[head.host.clone()]).unwrap_or_default());
        self.inbuf.advance(head.head_len);
        // A body already here whole goes with the head, in one write, and can be replayed.
        let streaming = match head.framing {
            Framing::None | Framing::UntilClose => false,
            Framing::Length(n) => {
                if n <= self.inbuf.len() as u64 {
                    let n = n as usize;
                    self.out.extend_from_slice(&self.inbuf[..n]);
                    self.inbuf.advance(n);
                    false
                } else {
                    true
                }
            }
            Framing::Chunked => {
                let mut walk = Chunked::default();
                match walk.advance(&self.inbuf, |_| {}) {
                    Ok(n) if walk.done() => {
                        self.out.extend_from_slice(&self.inbuf[..n]);
                        self.inbuf.advance(n);
                        false
                    }
                    Ok(_) => true,
                    Err(why) => {
                        let msg = format!("nubo: bad request: {why}");
                        return self.answer(400, msg, false, false, 1).await;
                    }
                }
            }
        };
        let retry_ok = head.idempotent && !streaming;
        // After an answer of our own the connection can stay only if the body was read.
        let keep_after_answer = head.keep_alive && !streaming;
        let mut failed: Vec<Tried> = Vec::new();
        let mut last_error = String::new();
        let mut stale_retries = 1;
        let mut holding = false;
        let mut deadline: Option<Instant> = None;
        let mut tenant_told = false;
        let next = loop {
            if self.routes.has_changed().unwrap_or(false) {
                self.table = self.routes.borrow_and_update().clone();
            }
            let Some(route) = self.table.lookup(&self.host, self.port).cloned() else {
                let msg = format!(
                    "nubo: no application is served at {} on port {}",
                    self.host, self.port
                );
                break self
                    .answer(404, msg, false, keep_after_answer, head.minor)
                    .await;
            };
            // An ACME HTTP-01 challenge for a mapped domain: answered here, over plain HTTP
            // too (before any redirect), whoever the members are.
            if let Some(ka) = acme_answer(&self.out, &route.acme_challenges) {
                let ka = ka.to_owned();
                break self
                    .answer(200, ka, false, keep_after_answer, head.minor)
                    .await;
            }
            if route.redirect_https && !self.secure {
                h1::redirect_https(
                    &mut self.rout,
                    self.host.as_bytes(),
                    &self.out,
                    keep_after_answer,
                    head.minor,
                );
                break match self.client.write_all(&self.rout).await {
                    Ok(()) if keep_after_answer => Next::KeepAlive,
                    _ => Next::Close,
                };
            }
            // A domain mapped with a context path: its root is that path of the application.
            if !tenant_told && let Some(context) = &route.context_path {
                prefix_target(&mut self.out, context);
            }
            // A tenant's mapped domain: the members are told whose it is (once; a client's own
            // `X-Tenant-*` headers were dropped when the head was read).
            if !tenant_told {
                tenant_told = true;
                if let Some(tenant) = &route.tenant {
                    tell_tenant(&mut self.out, tenant);
                } else if let Some(tenant) = path_tenant(&self.out, &route.path_tenants) {
                    // `/t/<tenant-domain>/…` on a multi-tenant application: a tenant signed
                    // up to it (another's path names no tenant).
                    tell_tenant(&mut self.out, &tenant);
                }
            }
            let candidates = route.targets.iter().filter(|t| !tried(&failed, t)).count();
            if candidates == 0 || failed.len() >= MAX_ATTEMPTS {
                // No member can take it now. A request that can still be sent waits (bounded) for
                // the table to change: a member becoming Active, or a replacement.
                // (Nothing was sent yet: a failed attempt that sent anything ended the exchange.)
                let deadline =
                    *deadline.get_or_insert_with(|| Instant::now() + self.lb.config.hold);
                let can_wait = failed.len() < MAX_ATTEMPTS && Instant::now() < deadline;
                if can_wait && !holding {
                    if self.lb.held.fetch_add(1, Ordering::Relaxed) < MAX_HELD {
                        holding = true;
                    } else {
                        self.lb.held.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                if can_wait && holding {
                    let changed = tokio::time::timeout_at(deadline, self.routes.changed()).await;
                    if changed.is_ok_and(|r| r.is_ok()) {
                        self.table = self.routes.borrow_and_update().clone();
                        continue;
                    }
                }
                let next = if route.targets.is_empty() {
                    let msg = format!(
                        "nubo: cluster {} has no active member yet; retry shortly",
                        route.cluster_id
                    );
                    self.answer(503, msg, true, keep_after_answer, head.minor)
                        .await
                } else {
                    let msg = format!(
                        "nubo: no member of cluster {} could serve the request (tried {}; last error: {last_error})",
                        route.cluster_id,
                        failed
                            .iter()
                            .map(|(m, _)| m.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    self.answer(502, msg, false, keep_after_answer, head.minor)
                        .await
                };
                break next;
            }
            let pick = self.pick(&route, &failed);
            let target = &route.targets[pick];
            route.counters.in_flight.fetch_add(1, Ordering::Relaxed);
            target.instance.in_flight.fetch_add(1, Ordering::Relaxed);
            target.member.outstanding.fetch_add(1, Ordering::Relaxed);
            let result = self
                .attempt(&target.member, target.addr, &head, retry_ok, streaming)
                .await;
            route.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            target.instance.in_flight.fetch_sub(1, Ordering::Relaxed);
            target.member.outstanding.fetch_sub(1, Ordering::Relaxed);
            match result {
                Ok(next) => {
                    route.counters.served.fetch_add(1, Ordering::Relaxed);
                    target.instance.served.fetch_add(1, Ordering::Relaxed);
                    route.counters.total.fetch_add(1, Ordering::Relaxed);
                    break next;
                }
                Err(Failure::Stale) if stale_retries > 0 => {
                    stale_retries -= 1;
                }
                Err(Failure::Stale) => {
                    last_error = "the connection closed before an answer".into();
                    failed.push((target.member_id.clone(), target.addr));
                }
                Err(Failure::Connect(e)) => {
                    tracing::debug!(member = %target.member_id, error = %e, "member refused");
                    last_error = e;
                    failed.push((target.member_id.clone(), target.addr));
                }
                Err(Failure::BeforeResponse(e)) => {
                    tracing::debug!(member = %target.member_id, error = %e, "member failed");
                    failed.push((target.member_id.clone(), target.addr));
                    if !retry_ok {
                        // The request went with the failed attempt: it cannot be replayed.
                        let msg = format!(
                            "nubo: member {} of cluster {} failed mid-request ({e})",
                            target.member_id, route.cluster_id
                        );
                        break self.answer(502, msg, false, false, head.minor).await;
                    }
                    last_error = e;
                }
                Err(Failure::Timeout) => {
                    let msg = format!(
                        "nubo: member {} of cluster {} did not answer within {:?}",
                        target.member_id, route.cluster_id, self.lb.config.request_timeout
                    );
                    break self.answer(504, msg, false, false, head.minor).await;
                }
                Err(Failure::Broken) => break Next::Close,
            }
        };
        if holding {
            self.lb.held.fetch_sub(1, Ordering::Relaxed);
        }
        next
    }

    fn pick(&self, route: &CompiledRoute, failed: &[Tried]) -> usize {
        let turn = self.lb.turn.fetch_add(1, Ordering::Relaxed);
        let n = route.targets.len();
        if failed.is_empty() && self.lb.config.strategy == Strategy::RoundRobin {
            return turn % n;
        }
        let excluded: Vec<bool> = route.targets.iter().map(|t| tried(failed, t)).collect();
        let outstanding: Vec<i64> = route
            .targets
            .iter()
            .map(|t| t.member.outstanding.load(Ordering::Relaxed))
            .collect();
        table::choose(self.lb.config.strategy, turn, &outstanding, &excluded).unwrap_or(0)
    }

    /// A kept-alive connection to `addr` that is still open, or a new one; and whether it was kept.
    async fn upstream(
        &mut self,
        member: &Arc<crate::MemberCounters>,
        addr: SocketAddr,
    ) -> Result<(usize, bool), Failure> {
        if let Some(i) = self.ups.iter().position(|u| u.addr == addr) {
            if self.ups[i].stream.still_open() {
                return Ok((i, true));
            }
            self.ups.swap_remove(i);
        }
        let timeout = self.lb.config.connect_timeout;
        let stream = match tokio::time::timeout(timeout, self.connect.connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Failure::Connect(format!("{addr}: {e}"))),
            Err(_) => {
                return Err(Failure::Connect(format!(
                    "no connection to {addr} within {timeout:?}"
                )));
            }
        };
        if self.ups.len() >= MAX_UPSTREAMS {
            self.ups.remove(0);
        }
        self.ups.push(Upstream {
            addr,
            member: member.clone(),
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
        });
        Ok((self.ups.len() - 1, false))
    }

    /// One attempt on one member.
    async fn attempt(
        &mut self,
        member: &Arc<crate::MemberCounters>,
        addr: SocketAddr,
        head: &RequestHead,
        retry_ok: bool,
        streaming: bool,
    ) -> Result<Next, Failure> {
        let (i, reused) = self.upstream(member, addr).await?;
        let result = self.attempt_on(i, reused, head, retry_ok, streaming).await;
        let keep = match &result {
            Ok(Outcome::Done { upstream_keep, .. }) => *upstream_keep,
            _ => false,
        };
        if !keep {
            self.ups.swap_remove(i);
        }
        match result {
            Ok(Outcome::Done { client_keep, .. }) if client_keep => Ok(Next::KeepAlive),
            Ok(_) => Ok(Next::Close),
            Err(e) => Err(e),
        }
    }

    async fn attempt_on(
        &mut self,
        i: usize,
        reused: bool,
        head: &RequestHead,
        retry_ok: bool,
        streaming: bool,
    ) -> Result<Outcome, Failure> {
        let request_timeout = self.lb.config.request_timeout;
        let up = &mut self.ups[i];
        up.buf.clear();
        if let Err(e) = up.stream.write_all(&self.out).await {
            return Err(if reused && retry_ok {
                Failure::Stale
            } else {
                Failure::BeforeResponse(format!("sending the request: {e}"))
            });
        }
        let exchange = Exchange {
            req: head,
            retry_ok,
            reused,
            timeout: request_timeout,
        };
        if !streaming {
            let outcome = exchange
                .response(
                    &mut up.stream,
                    &mut up.buf,
                    &mut self.client,
                    &mut self.rout,
                    self.wait.as_mut(),
                )
                .await?;
            if let Outcome::Upgraded = outcome {
                // What either side sent past the heads goes first, then the tunnel.
                if !self.inbuf.is_empty() {
                    if up.stream.write_all(&self.inbuf).await.is_err() {
                        return Err(Failure::Broken);
                    }
                    self.inbuf.clear();
                }
                let _ = tokio::io::copy_bidirectional(&mut self.client, &mut up.stream).await;
            }
            return Ok(outcome);
        }
        // The body is still arriving: stream it while the answer is read.
        let (mut cr, mut cw) = self.client.split();
        let (mut ur, mut uw) = up.stream.split();
        let pump = pump_body(&mut cr, &mut uw, &mut self.inbuf, head.framing);
        let response = exchange.response(
            &mut ur,
            &mut up.buf,
            &mut cw,
            &mut self.rout,
            self.wait.as_mut(),
        );
        tokio::pin!(pump);
        tokio::pin!(response);
        let mut body_sent = false;
        loop {
            tokio::select! {
                r = &mut pump, if !body_sent => match r {
                    Ok(()) => body_sent = true,
                    Err(e) => {
                        tracing::debug!(error = %e, "request body broke off");
                        return Err(Failure::Broken);
                    }
                },
                r = &mut response => {
                    return match r? {
                        // An answer before the whole body (say, 413): neither connection can go on.
                        Outcome::Done { .. } if !body_sent => Ok(Outcome::Done { client_keep: false, upstream_keep: false }),
                        Outcome::Upgraded => Ok(Outcome::Done { client_keep: false, upstream_keep: false }),
                        done => Ok(done),
                    };
                }
            }
        }
    }
}

/// Sends the rest of a request body from the client to the member.
async fn pump_body<R, W>(
    client: &mut R,
    member: &mut W,
    inbuf: &mut BytesMut,
    framing: Framing,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut remaining = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut walk = Chunked::default();
    loop {
        let (take, done) = match framing {
            Framing::Length(_) => {
                let take = remaining.min(inbuf.len() as u64) as usize;
                remaining -= take as u64;
                (take, remaining == 0)
            }
            Framing::Chunked => {
                let take = walk
                    .advance(inbuf, |_| {})
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                (take, walk.done())
            }
            Framing::None | Framing::UntilClose => (0, true),
        };
        if take > 0 {
            member.write_all(&inbuf[..take]).await?;
            inbuf.advance(take);
        }
        if done {
            return Ok(());
        }
        reserve(inbuf);
        if client.read_buf(inbuf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Reading one answer from a member and passing it to the client.
struct Exchange<'a> {
    req: &'a RequestHead,
    retry_ok: bool,
    reused: bool,
    timeout: Duration,
}

impl Exchange<'_> {
    async fn read_more<R: AsyncRead + Unpin>(
        &self,
        member: &mut R,
        buf: &mut BytesMut,
        mut wait: Pin<&mut Sleep>,
    ) -> Result<usize, Failure> {
        reserve(buf);
        wait.as_mut().reset(Instant::now() + self.timeout);
        tokio::select! {
            biased;
            r = member.read_buf(buf) => r.map_err(|e| Failure::BeforeResponse(e.to_string())),
            _ = wait => Err(Failure::Timeout),
        }
    }

    async fn response<R, W>(
        &self,
        member: &mut R,
        buf: &mut BytesMut,
        client: &mut W,
        rout: &mut Vec<u8>,
        mut wait: Pin<&mut Sleep>,
    ) -> Result<Outcome, Failure>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut wrote = false;
        let broken = |wrote: bool, e: String| {
            if wrote {
                Failure::Broken
            } else {
                Failure::BeforeResponse(e)
            }
        };
        let head = loop {
            if !buf.is_empty() {
                match h1::parse_response(buf, self.req, rout) {
                    Ok(Some(h)) if h.interim => {
                        // 100 Continue and the like: to an HTTP/1.1 client only.
                        if self.req.minor >= 1 {
                            client
                                .write_all(&buf[..h.head_len])
                                .await
                                .map_err(|_| Failure::Broken)?;
                            wrote = true;
                        }
                        buf.advance(h.head_len);
                        continue;
                    }
                    Ok(Some(h)) => break h,
                    Ok(None) => {}
                    Err(HeadError::TooLarge) => {
                        return Err(broken(wrote, "response head too large".into()));
                    }
                    Err(HeadError::Malformed(why) | HeadError::Unsupported(why)) => {
                        return Err(broken(wrote, why.into()));
                    }
                }
            }
            // A kept-alive connection closing before any byte of an answer: most likely the member
            // closed it while idle, and a replayable request goes again.
            let stale = buf.is_empty() && !wrote && self.reused && self.retry_ok;
            match self.read_more(member, buf, wait.as_mut()).await {
                Ok(0) | Err(Failure::BeforeResponse(_)) if stale => return Err(Failure::Stale),
                Ok(0) => {
                    return Err(broken(
                        wrote,
                        "the connection closed before an answer".into(),
                    ));
                }
                Ok(_) => {}
                Err(Failure::BeforeResponse(e)) => return Err(broken(wrote, e)),
                Err(e) => return Err(if wrote { Failure::Broken } else { e }),
            }
        };
        if head.switching {
            client.write_all(buf).await.map_err(|_| Failure::Broken)?;
            buf.clear();
            return Ok(Outcome::Upgraded);
        }
        // From here on, the member's bytes after the head are body.
        let mut upstream_keep = head.upstream_keep;
        match head.framing {
            Framing::None => {
                upstream_keep &= buf.len() == head.head_len;
                self.send_head(client, buf, rout, &head, 0).await?;
            }
            Framing::Length(n) => {
                let whole = head.head_len as u64 + n;
                // A small answer to a replayable request is received whole before anything goes
                // to the client: a member dying mid-answer means a replay, not a truncated body.
                if !wrote && self.retry_ok && n <= BUFFERED_RESPONSE {
                    while (buf.len() as u64) < whole {
                        match self.read_more(member, buf, wait.as_mut()).await {
                            Ok(0) => {
                                return Err(Failure::BeforeResponse("the answer broke off".into()));
                            }
                            Ok(_) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                let here = (buf.len() as u64).min(whole) as usize - head.head_len;
                upstream_keep &= buf.len() as u64 <= whole;
                self.send_head(client, buf, rout, &head, here).await?;
                let mut remaining = n - here as u64;
                while remaining > 0 {
                    buf.clear();
                    let got = match self.read_more(member, buf, wait.as_mut()).await {
                        Ok(0) | Err(_) => return Err(Failure::Broken),
                        Ok(got) => got,
                    };
                    let take = (got as u64).min(remaining) as usize;
                    upstream_keep &= take == got;
                    client
                        .write_all(&buf[..take])
                        .await
                        .map_err(|_| Failure::Broken)?;
                    remaining -= take as u64;
                }
            }
            Framing::Chunked => {
                let mut walk = Chunked::default();
                let mut data = Vec::new();
                let body = &buf[head.head_len..];
                let take = walk
                    .advance(body, |d| {
                        if head.dechunk {
                            data.extend_from_slice(d)
                        }
                    })
                    .map_err(|e| broken(wrote, e.into()))?;
                upstream_keep &= take == body.len();
                if head.dechunk {
                    client.write_all(rout).await.map_err(|_| Failure::Broken)?;
                    client.write_all(&data).await.map_err(|_| Failure::Broken)?;
                } else {
                    self.send_head(client, buf, rout, &head, take).await?;
                }
                while !walk.done() {
                    buf.clear();
                    match self.read_more(member, buf, wait.as_mut()).await {
                        Ok(0) | Err(_) => return Err(Failure::Broken),
                        Ok(_) => {}
                    }
                    data.clear();
                    let take = walk
                        .advance(buf, |d| {
                            if head.dechunk {
                                data.extend_from_slice(d)
                            }
                        })
                        .map_err(|_| Failure::Broken)?;
                    upstream_keep &= take == buf.len();
                    let send: &[u8] = if head.dechunk { &data } else { &buf[..take] };
                    client.write_all(send).await.map_err(|_| Failure::Broken)?;
                }
            }
            Framing::UntilClose => {
                let here = buf.len() - head.head_len;
                self.send_head(client, buf, rout, &head, here).await?;
                loop {
                    buf.clear();
                    match self.read_more(member, buf, wait.as_mut()).await {
                        Ok(0) => break,
                        Err(_) => return Err(Failure::Broken),
                        Ok(_) => {}
                    }
                    client.write_all(buf).await.map_err(|_| Failure::Broken)?;
                }
                upstream_keep = false;
            }
        }
        Ok(Outcome::Done {
            client_keep: head.client_keep,
            upstream_keep,
        })
    }

    /// Sends the head (the member's bytes, or the rewritten one) and the first `body` bytes after it.
    async fn send_head<W: AsyncWrite + Unpin>(
        &self,
        client: &mut W,
        buf: &[u8],
        rout: &mut Vec<u8>,
        head: &h1::ResponseHead,
        body: usize,
    ) -> Result<(), Failure> {
        let r = if head.rewritten {
            rout.extend_from_slice(&buf[head.head_len..head.head_len + body]);
            client.write_all(rout).await
        } else {
            client.write_all(&buf[..head.head_len + body]).await
        };
        r.map_err(|_| Failure::Broken)
    }
}

/// The tenant a request's path names (`/t/<tenant-domain>` or `/t/<tenant-domain>/…`), when it
/// is one of `tenants` (the request head is at the start of `out`: `METHOD PATH HTTP/1.1`).
fn path_tenant(out: &[u8], tenants: &[(i64, String)]) -> Option<String> {
    if tenants.is_empty() {
        return None;
    }
    let line = &out[..out.iter().position(|b| *b == b'\r')?];
    let mut parts = line.split(|b| *b == b' ');
    let _method = parts.next()?;
    let path = parts.next()?.strip_prefix(b"/t/")?;
    let end = path
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(path.len());
    let domain = std::str::from_utf8(&path[..end]).ok()?;
    tenants
        .iter()
        .find(|(_, d)| d.eq_ignore_ascii_case(domain))
        .map(|(_, d)| d.clone())
}

/// The key authorization of the ACME challenge a request's target names, when it is one of
/// `challenges` (`GET /.well-known/acme-challenge/<token>`).
fn acme_answer<'a>(out: &[u8], challenges: &'a [(String, String)]) -> Option<&'a str> {
    if challenges.is_empty() {
        return None;
    }
    let token = h1::target(out).strip_prefix(b"/.well-known/acme-challenge/")?;
    challenges
        .iter()
        .find(|(t, _)| t.as_bytes() == token)
        .map(|(_, ka)| ka.as_str())
}

/// Puts `context` before the request target of the head at the start of `out` (`GET /x` →
/// `GET /abc/app/x`); a target not starting with `/` (`OPTIONS *`) is left as it is. The
/// context path was checked when the domain was mapped (a path without spaces, `?` or `#`).
fn prefix_target(out: &mut Vec<u8>, context: &str) {
    let Some(space) = out.iter().position(|b| *b == b' ') else {
        return;
    };
    if out.get(space + 1) == Some(&b'/') {
        out.splice(space + 1..space + 1, context.bytes());
    }
}

/// Adds `X-Tenant-Domain: TENANT` to the request head at the start of `out` (before the blank
/// line that ends it: the first in `out`, as no header holds one). A domain of other characters
/// than a host name's is not told.
fn tell_tenant(out: &mut Vec<u8>, tenant: &str) {
    if !tenant
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return;
    }
    if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
        let line = format!("X-Tenant-Domain: {tenant}\r\n");
        out.splice(end + 2..end + 2, line.bytes());
    }
}

#[cfg(test)]
mod tests {
    //! The proxy against a scripted member, spoken to in raw bytes: over in-memory pipes on a
    //! paused clock (no socket, no real waiting), and once over TCP on loopback.

    use std::sync::atomic::AtomicUsize;

    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::LbConfig;
    use crate::io::memory::Net;

    /// The client address the proxy is told about.
    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000);
    /// The proxy port the in-memory tests route on (nothing listens on it).
    const PORT: u16 = 8280;

    /// A message read whole: status (or 0 for a request), head, body.
    struct Message {
        status: u16,
        head: String,
        body: Vec<u8>,
    }

    impl Message {
        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim())
            })
        }
    }

    /// Reads one message (request or response to a non-HEAD request) from `s`, `buf` keeping
    /// what follows it.
    async fn read_message<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> Option<Message> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let (head_len, status) = if buf.starts_with(b"HTTP/") {
                let mut r = httparse::Response::new(&mut headers);
                match r.parse(buf).ok()? {
                    httparse::Status::Complete(n) => (n, r.code.unwrap_or(0)),
                    httparse::Status::Partial => (0, 0),
                }
            } else {
                let mut r = httparse::Request::new(&mut headers);
                match r.parse(buf).ok()? {
                    httparse::Status::Complete(n) => (n, 0),
                    httparse::Status::Partial => (0, 0),
                }
            };
            if head_len > 0 {
                let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
                let mut m = Message {
                    status,
                    head,
                    body: Vec::new(),
                };
                buf.advance(head_len);
                if m.header("transfer-encoding").is_some() {
                    let mut walk = Chunked::default();
                    loop {
                        let n = walk.advance(buf, |d| m.body.extend_from_slice(d)).ok()?;
                        buf.advance(n);
                        if walk.done() {
                            return Some(m);
                        }
                        if s.read_buf(buf).await.ok()? == 0 {
                            return None;
                        }
                    }
                }
                let interim = (100..200).contains(&status);
                let len = match m.header("content-length") {
                    Some(v) => v.parse::<usize>().ok()?,
                    None if status == 0 || interim => 0,
                    None => usize::MAX,
                };
                while buf.len() < len {
                    if s.read_buf(buf).await.ok()? == 0 {
                        if len == usize::MAX {
                            break;
                        }
                        return None;
                    }
                }
                let n = len.min(buf.len());
                m.body = buf[..n].to_vec();
                buf.advance(n);
                return Some(m);
            }
            if s.read_buf(buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    /// A member answering by path: `/echo` (the request's head and body back), `/chunked`,
    /// `/big` (1 MiB), `/reset` (closes without answering), `/upgrade` (101, then echoes bytes),
    /// `/continue` (100 Continue before reading the body), `/bye` (echoes, then closes the
    /// kept-alive connection).
    async fn play_member<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
        let mut buf = BytesMut::new();
        loop {
            // `/continue` must answer before the body: peek at the head first.
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
            }
            if buf.starts_with(b"POST /continue") {
                let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            }
            let Some(req) = read_message(&mut s, &mut buf).await else {
                return;
            };
            let path = req.head.split(' ').nth(1).unwrap_or("/").to_owned();
            let reply: Vec<u8> = match path.as_str() {
                "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec(),
                "/big" => {
                    let mut r = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".to_vec();
                    r.extend(std::iter::repeat_n(b'x', 1 << 20));
                    r
                }
                "/reset" => return,
                "/upgrade" => {
                    let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n").await;
                    let mut b = [0u8; 1024];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                _ => {
                    let mut body = req.head.clone().into_bytes();
                    body.extend_from_slice(&req.body);
                    let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                    r.extend_from_slice(&body);
                    r
                }
            };
            if s.write_all(&reply).await.is_err() || path.starts_with("/bye") {
                return;
            }
        }
    }

    /// A member on the in-memory network; counts its connections.
    fn member(net: &Net) -> (SocketAddr, Arc<AtomicUsize>) {
        let (addr, mut incoming) = net.listen();
        let conns = Arc::new(AtomicUsize::new(0));
        let count = conns.clone();
        tokio::spawn(async move {
            while let Some(s) = incoming.recv().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(play_member(s));
            }
        });
        (addr, conns)
    }

    /// A member on loopback; counts its connections.
    async fn tcp_member() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conns = Arc::new(AtomicUsize::new(0));
        let count = conns.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(play_member(s));
            }
        });
        (addr, conns)
    }

    /// A load balancer routing `app.localhost` to `members` (holding requests 200 ms).
    fn balancer(members: &[SocketAddr]) -> Arc<LoadBalancer> {
        balancer_holding(members, Duration::from_millis(200))
    }

    fn balancer_holding(members: &[SocketAddr], hold: Duration) -> Arc<LoadBalancer> {
        let lb = LoadBalancer::new(LbConfig {
            hold,
            ..LbConfig::default()
        });
        route(&lb, "app.localhost", members);
        lb
    }

    /// Routes `host` on [`PORT`] to `members` alone (no listening: connections come from
    /// [`client`]).
    fn route(lb: &LoadBalancer, host: &str, members: &[SocketAddr]) {
        let routes: Vec<String> = members
            .iter()
            .map(|m| format!("{host}:{PORT}={m}"))
            .collect();
        let t = crate::static_topology(&routes).expect("routes");
        let mut ids: std::collections::BTreeSet<String> = t.clusters.keys().cloned().collect();
        ids.extend(lb.keys.lock().expect("keys").keys().cloned());
        lb.update_table(&t, &ids);
    }

    /// A client connection to the load balancer on the in-memory network.
    fn client(lb: &Arc<LoadBalancer>, net: &Net) -> tokio::io::DuplexStream {
        let (ours, theirs) = Net::pipe();
        tokio::spawn(serve(lb.clone(), PORT, theirs, PEER, net.clone(), false));
        ours
    }

    async fn roundtrip<S: AsyncRead + AsyncWrite + Unpin>(
        s: &mut S,
        buf: &mut BytesMut,
        raw: &str,
    ) -> Message {
        s.write_all(raw.as_bytes()).await.expect("write");
        read_message(s, buf).await.expect("a response")
    }

    /// Asserts what `/echo` saw of request `i` on a kept-alive connection through `port`.
    fn assert_forwarded(r: Message, i: usize, port: u16) {
        assert_eq!(r.status, 200);
        let seen = String::from_utf8(r.body).expect("utf-8");
        assert!(
            seen.starts_with(&format!("GET /echo?{i} HTTP/1.1\r\n")),
            "{seen}"
        );
        assert!(seen.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{seen}");
        assert!(
            seen.contains(&format!("X-Forwarded-Port: {port}\r\n")),
            "{seen}"
        );
        assert!(
            seen.contains("X-Forwarded-Host: app.localhost\r\n"),
            "{seen}"
        );
        assert!(!seen.to_ascii_lowercase().contains("connection:"), "{seen}");
    }

    fn get_echo(i: usize) -> String {
        format!("GET /echo?{i} HTTP/1.1\r\nHost: app.localhost\r\nConnection: keep-alive\r\n\r\n")
    }

    #[tokio::test(start_paused = true)]
    async fn requests_pass_with_forwarding_headers_over_one_kept_member_connection() {
        let net = Net::default();
        let (m, conns) = member(&net);
        let lb = balancer(&[m]);
        let mut c = client(&lb, &net);
        let mut buf = BytesMut::new();
        for i in 0..3 {
            let r = roundtrip(&mut c, &mut buf, &get_echo(i)).await;
            assert_forwarded(r, i, PORT);
        }
        assert_eq!(
            conns.load(Ordering::SeqCst),
            1,
            "one kept-alive member connection"
        );
    }

    /// A member on the in-memory network; counts its connections open now.
    fn member_live(net: &Net) -> (SocketAddr, Arc<AtomicUsize>) {
        let (addr, mut incoming) = net.listen();
        let live = Arc::new(AtomicUsize::new(0));
        let count = live.clone();
        tokio::spawn(async move {
            while let Some(s) = incoming.recv().await {
                let count = count.clone();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    play_member(s).await;
                    count.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (addr, live)
    }

    /// A member the table drops (it drains) sees its kept-alive connection from an idle client
    /// connection closed at once, not at that client's next request: a draining member can tell
    /// when its last request is done by its connections.
    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_to_a_member_the_table_dropped_is_closed() {
        let net = Net::default();
        let (a, live_a) = member_live(&net);
        let (b, live_b) = member_live(&net);
        // One cluster of both (static member ids are by position: b first, so that it keeps
        // its id below).
        let lb = LoadBalancer::new(LbConfig::default());
        let one_cluster = |lb: &LoadBalancer, members: &[SocketAddr]| {
            let list: Vec<String> = members.iter().map(|m| m.to_string()).collect();
            let t = crate::static_topology(&[format!("app.localhost:{PORT}={}", list.join(","))])
                .expect("routes");
            let ids = t.clusters.keys().cloned().collect();
            lb.update_table(&t, &ids);
        };
        one_cluster(&lb, &[b, a]);
        let mut c = client(&lb, &net);
        let mut buf = BytesMut::new();
        for i in 0..4 {
            assert_forwarded(roundtrip(&mut c, &mut buf, &get_echo(i)).await, i, PORT);
        }
        assert_eq!(live_a.load(Ordering::SeqCst), 1, "one kept connection each");
        assert_eq!(live_b.load(Ordering::SeqCst), 1, "one kept connection each");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(live_a.load(Ordering::SeqCst), 1, "kept open while routed");
        one_cluster(&lb, &[b]);
        for _ in 0..100 {
            if live_a.load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            live_a.load(Ordering::SeqCst),
            0,
            "closed with no request sent"
        );
        assert_eq!(live_b.load(Ordering::SeqCst), 1, "b is still routed: kept");
        // The client connection goes on, on the member still routed.
        assert_forwarded(roundtrip(&mut c, &mut buf, &get_echo(9)).await, 9, PORT);
        assert_eq!(live_b.load(Ordering::SeqCst), 1);
    }

    /// The same over TCP: the balancer listens on a port the OS chose and keeps one member
    /// connection open across requests (and finds a new one when the member closed it).
    #[tokio::test]
    async fn over_tcp_the_balancer_listens_and_keeps_member_connections() {
        let (m, conns) = tcp_member().await;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let lb = LoadBalancer::new(LbConfig::default());
        lb.set_topology(
            &crate::static_topology(&[format!("app.localhost:{port}={m}")]).expect("routes"),
        )
        .await;
        let mut c = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut buf = BytesMut::new();
        for i in 0..3 {
            let r = roundtrip(&mut c, &mut buf, &get_echo(i)).await;
            assert_forwarded(r, i, port);
        }
        assert_eq!(
            conns.load(Ordering::SeqCst),
            1,
            "one kept-alive member connection"
        );
        // The member closes the kept connection after answering (an idle timeout, say): the
        // next request goes over a new one, and the client sees nothing of it.
        let r = roundtrip(
            &mut c,
            &mut buf,
            "GET /bye HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = roundtrip(&mut c, &mut buf, &get_echo(9)).await;
        assert_forwarded(r, 9, port);
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn bodies_stream_both_ways() {
        let net = Net::default();
        let (m, _) = member(&net);
        let lb = balancer(&[m]);
        let mut c = client(&lb, &net);
        let mut buf = BytesMut::new();
        // A chunked upload arriving in pieces, after the head.
        c.write_all(b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.write_all(b"lo\r\n0\r\n\r\n").await.expect("write");
        let r = read_message(&mut c, &mut buf).await.expect("response");
        let seen = String::from_utf8_lossy(&r.body);
        assert!(
            seen.contains("Transfer-Encoding: chunked\r\n") && seen.ends_with("\r\n\r\nhello"),
            "{seen}"
        );
        // A large Content-Length upload, then a chunked and a 1 MiB download on the same connection.
        let body = "y".repeat(300_000);
        let r = roundtrip(
            &mut c,
            &mut buf,
            &format!(
                "PUT /echo HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
        .await;
        assert!(r.body.ends_with(body.as_bytes()));
        let r = roundtrip(
            &mut c,
            &mut buf,
            "GET /chunked HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
        )
        .await;
        assert_eq!(r.body, b"hello world");
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        let r = roundtrip(
            &mut c,
            &mut buf,
            "GET /big HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
        )
        .await;
        assert_eq!(r.body.len(), 1 << 20);
        // Expect: 100-continue: the member's 100 reaches the client before the body is sent.
        c.write_all(b"POST /continue HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
            .await
            .expect("write");
        let r = read_message(&mut c, &mut buf).await.expect("100");
        assert_eq!(r.status, 100);
        c.write_all(b"data").await.expect("write");
        let r = read_message(&mut c, &mut buf).await.expect("final");
        assert_eq!(r.status, 200);
        assert!(r.body.ends_with(b"data"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_http_1_0_client_gets_a_chunked_body_as_data_then_close() {
        let net = Net::default();
        let (m, _) = member(&net);
        let lb = balancer(&[m]);
        let mut c = client(&lb, &net);
        let mut buf = BytesMut::new();
        let r = roundtrip(
            &mut c,
            &mut buf,
            "GET /chunked HTTP/1.0\r\nHost: app.localhost\r\nConnection: keep-alive\r\n\r\n",
        )
        .await;
        assert_eq!(r.body, b"hello world");
        assert_eq!(r.header("transfer-encoding"), None);
        let mut rest = Vec::new();
        assert_eq!(c.read_to_end(&mut rest).await.expect("closed"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upgrade_becomes_a_tunnel() {
        let net = Net::default();
        let (m, _) = member(&net);
        let lb = balancer(&[m]);
        let mut c = client(&lb, &net);
        let mut buf = BytesMut::new();
        let r = roundtrip(&mut c, &mut buf, "GET /upgrade HTTP/1.1\r\nHost: app.localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").await;
        assert_eq!(r.status, 101);
        c.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        c.read_exact(&mut got).await.expect("echo");
        assert_eq!(&got, b"ping");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_or_reset_member_is_skipped_for_another() {
        let net = Net::default();
        let (good, _) = member(&net);
        let dead = net.address();
        let lb = balancer(&[dead, good]);
        let mut c = client(&lb, &net);
        let mut buf = BytesMut::new();
        for _ in 0..4 {
            // Refused connections: every request reaches the live member.
            let r = roundtrip(
                &mut c,
                &mut buf,
                "POST /echo HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 2\r\n\r\nhi",
            )
            .await;
            assert_eq!(r.status, 200);
        }
        // Reset before any byte: a GET is replayed on the other member...
        let (resetting, _) = member(&net);
        let lb2 = balancer(&[resetting]);
        let mut c2 = client(&lb2, &net);
        let r = roundtrip(
            &mut c2,
            &mut BytesMut::new(),
            "POST /reset HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        // ...and a POST is not: it gets a 502 that says why.
        assert_eq!(r.status, 502);
        assert!(String::from_utf8_lossy(&r.body).contains("failed mid-request"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_balancer_answers_clearly_when_it_cannot_pass_a_request_on() {
        let net = Net::default();
        let dead = net.address();
        let lb = balancer(&[dead]);
        let mut c = client(&lb, &net);
        let mut buf = BytesMut::new();
        let r = roundtrip(
            &mut c,
            &mut buf,
            "GET / HTTP/1.1\r\nHost: other.localhost\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 404);
        assert!(
            String::from_utf8_lossy(&r.body)
                .contains("no application is served at other.localhost")
        );
        let r = roundtrip(
            &mut c,
            &mut buf,
            "GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 502);
        let said = String::from_utf8_lossy(&r.body);
        assert!(
            said.contains("no member of cluster static-0 could serve")
                && said.contains("Connection refused"),
            "{said}"
        );
        assert_eq!(lb.held.load(Ordering::Relaxed), 0);
        let mut c = client(&lb, &net);
        let r = roundtrip(&mut c, &mut BytesMut::new(), "GET / HTTP/1.1\r\n\r\n").await;
        assert_eq!(r.status, 400);
        assert!(String::from_utf8_lossy(&r.body).contains("missing Host header"));
        let mut c = client(&lb, &net);
        let big = format!(
            "GET / HTTP/1.1\r\nHost: app.localhost\r\nX: {}\r\n\r\n",
            "a".repeat(70_000)
        );
        // The balancer answers and closes before it has read it all: the write may fail.
        let _ = c.write_all(big.as_bytes()).await;
        let r = read_message(&mut c, &mut BytesMut::new())
            .await
            .expect("a response");
        assert_eq!(r.status, 431);
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_request_goes_to_a_member_that_appears_and_a_removed_host_is_404_at_once() {
        let net = Net::default();
        let (m, _) = member(&net);
        let dead = net.address();
        // A longer hold than the other tests: the replacement arrives during it.
        let lb = balancer_holding(&[dead], Duration::from_secs(5));
        let mut c = client(&lb, &net);
        let mut buf = BytesMut::new();
        c.write_all(b"GET /echo HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            lb.held.load(Ordering::Relaxed),
            1,
            "held while no member can serve"
        );
        route(&lb, "app.localhost", &[m]);
        let r = read_message(&mut c, &mut buf).await.expect("response");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        route(&lb, "other.localhost", &[m]);
        let r = roundtrip(
            &mut c,
            &mut buf,
            "GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 404);
    }

    #[test]
    fn a_context_path_goes_before_the_request_path() {
        let mut out = b"GET /index.html?x=1 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        prefix_target(&mut out, "/abc/app");
        assert_eq!(
            out,
            b"GET /abc/app/index.html?x=1 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()
        );
        let mut out = b"OPTIONS * HTTP/1.1\r\n\r\n".to_vec();
        prefix_target(&mut out, "/abc");
        assert_eq!(out, b"OPTIONS * HTTP/1.1\r\n\r\n".to_vec());
    }

    #[test]
    fn an_acme_challenge_is_answered_by_its_token_only() {
        let challenges = vec![("tok".to_owned(), "tok.thumb".to_owned())];
        let head = |t: &str| format!("GET {t} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes();
        assert_eq!(
            acme_answer(&head("/.well-known/acme-challenge/tok"), &challenges),
            Some("tok.thumb")
        );
        assert_eq!(
            acme_answer(&head("/.well-known/acme-challenge/other"), &challenges),
            None
        );
        assert_eq!(
            acme_answer(&head("/.well-known/acme-challenge/tok/x"), &challenges),
            None
        );
        assert_eq!(acme_answer(&head("/tok"), &challenges), None);
        assert_eq!(
            acme_answer(&head("/.well-known/acme-challenge/tok"), &[]),
            None
        );
    }
}
