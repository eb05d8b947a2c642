//! HTTPS at the load balancer: TLS ends here, with the certificate the client names (SNI), and
//! the request goes on to a member in plain HTTP like any other.
//!
//! Every proxy port takes both: a connection whose first byte opens a TLS handshake record is
//! TLS, any other is plain HTTP (so a route is reached at `https://host:PORT` and
//! `http://host:PORT` alike, and a plain request can be redirected to HTTPS on the same port).
//! The certificates are the tenants' domains' (given on the bus, [`Certificates::apply`]) and
//! this load balancer's default one (for names no certificate covers and clients sending no
//! name). ALPN offers `h2` and `http/1.1`: an HTTP/2 client is served by [`crate::h2`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::io::Stream;

/// How long a client has to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of a TLS handshake record (a ClientHello starts with it; no HTTP method does).
const HANDSHAKE_RECORD: u8 = 0x16;

/// Whether a connection's first byte opens TLS.
pub fn is_tls(first: u8) -> bool {
    first == HANDSHAKE_RECORD
}

/// A certificate chain and its private key, from PEM: the chain's first certificate is the
/// server's; the key must be its (RSA, ECDSA or Ed25519). The error says what is wrong, for the
/// API to name.
pub fn load(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, String> {
    let chain = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate (a PEM `BEGIN CERTIFICATE` block) was given".into());
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| format!("not a PEM private key: {e}"))?
        .ok_or("no private key (a PEM `BEGIN PRIVATE KEY` block) was given")?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| format!("the private key cannot be used: {e}"))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            "the private key is not the certificate's (the chain's first certificate must be the server's)".to_owned()
        }
        e => format!("the certificate cannot be used: {e}"),
    })?;
    Ok(Arc::new(ck))
}

/// Whether `ck`'s certificate is valid for the host name `name` (its subject alternative names,
/// wildcards included; the dates are not checked).
pub fn covers(ck: &CertifiedKey, name: &str) -> bool {
    // rustls' own SNI resolver checks just this when a certificate is added for a name.
    let mut check = rustls::server::ResolvesServerCertUsingSni::new();
    check.add(name, ck.clone()).is_ok()
}

#[derive(Default)]
struct Set {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

/// The certificates a load balancer presents: one per domain (looked up by the client's server
/// name) and a default one. Replaced whole under a lock held for a pointer copy, so handshakes
/// never wait on an update.
#[derive(Default)]
pub struct Certificates {
    set: RwLock<Arc<Set>>,
    /// Whether any certificate is held (no TLS is looked for on a connection before).
    any: AtomicBool,
    pub(crate) handshakes: AtomicU64,
    pub(crate) failed: AtomicU64,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("domains", &self.len())
            .finish_non_exhaustive()
    }
}

impl Certificates {
    fn edit(&self, f: impl FnOnce(&mut Set)) {
        let Ok(mut guard) = self.set.write() else {
            return;
        };
        let mut next = Set {
            by_name: guard.by_name.clone(),
            default: guard.default.clone(),
        };
        f(&mut next);
        self.any.store(
            next.default.is_some() || !next.by_name.is_empty(),
            Ordering::Relaxed,
        );
        *guard = Arc::new(next);
    }

    fn current(&self) -> Arc<Set> {
        self.set.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Sets the default certificate (for clients naming no domain this holds).
    pub fn set_default(&self, ck: Option<Arc<CertifiedKey>>) {
        self.edit(|s| s.default = ck);
    }

    /// Applies a `TlsCertificates` event: replaces everything when `complete`, then adds or
    /// replaces `certificates` and drops `removed`. A certificate that does not load is
    /// skipped and logged (the API checked it: it would be a bug or a forged message).
    pub fn apply(
        &self,
        complete: bool,
        certificates: &[nubo_events::TlsCertificate],
        removed: &[String],
    ) {
        let loaded: Vec<(String, Arc<CertifiedKey>)> = certificates
            .iter()
            .filter_map(|c| match load(&c.certificate, &c.private_key) {
                Ok(ck) => Some((c.domain.to_ascii_lowercase(), ck)),
                Err(e) => {
                    tracing::warn!(domain = %c.domain, error = %e, "a domain's certificate does not load: the default certificate is presented for it");
                    None
                }
            })
            .collect();
        self.edit(|s| {
            if complete {
                s.by_name.clear();
            }
            for d in removed {
                s.by_name.remove(&d.to_ascii_lowercase());
            }
            s.by_name.extend(loaded);
        });
    }

    /// How many domains have a certificate.
    pub fn len(&self) -> usize {
        self.current().by_name.len()
    }

    /// Whether no domain has a certificate.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether TLS can be served at all (a default certificate or a domain's).
    pub fn enabled(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// The certificate presented for `name` (`None`: no name given).
    pub fn for_name(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let set = self.current();
        name.and_then(|n| {
            set.by_name
                .get(n)
                .or_else(|| set.by_name.get(&n.to_ascii_lowercase()))
                .cloned()
        })
        .or_else(|| set.default.clone())
    }
}

/// Picks the certificate by the client's server name.
#[derive(Debug)]
struct Resolver(Arc<Certificates>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.for_name(hello.server_name())
    }
}

/// The TLS settings of a load balancer presenting `certs`: TLS 1.2 and 1.3 with rustls' safe
/// defaults, no client certificate, ALPN `h2` then `http/1.1`.
pub(crate) fn server_config(certs: Arc<Certificates>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = match rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b,
        // The provider supports the default versions; this is not reached.
        Err(_) => rustls::ServerConfig::builder(),
    };
    let mut config = builder
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(certs)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

impl Stream for TlsStream<TcpStream> {
    type Read<'a> = tokio::io::ReadHalf<&'a mut TlsStream<TcpStream>>;
    type Write<'a> = tokio::io::WriteHalf<&'a mut TlsStream<TcpStream>>;

    fn split(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        tokio::io::split(self)
    }

    fn still_open(&self) -> bool {
        self.get_ref().0.still_open()
    }
}

/// Reads nothing and waits for a connection's first byte (`None`: closed or silent too long).
pub(crate) async fn first_byte(stream: &TcpStream, wait: Duration) -> Option<u8> {
    let mut b = [0u8; 1];
    match tokio::time::timeout(wait, stream.peek(&mut b)).await {
        Ok(Ok(1)) => Some(b[0]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::{LbConfig, LoadBalancer};

    /// A self-signed certificate for `names` (PEM chain, PEM key).
    fn cert(names: &[&str]) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .expect("certificate");
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    #[test]
    fn a_certificate_loads_only_with_its_own_key() {
        let (a, a_key) = cert(&["a.example"]);
        let (_, b_key) = cert(&["b.example"]);
        assert!(load(&a, &a_key).is_ok());
        let e = load(&a, &b_key).expect_err("another's key");
        assert!(e.contains("not the certificate's"), "{e}");
        let e = load("junk", &a_key).expect_err("no certificate");
        assert!(e.contains("no certificate"), "{e}");
        let e = load(&a, "junk").expect_err("no key");
        assert!(e.contains("no private key"), "{e}");
    }

    #[test]
    fn a_certificate_covers_its_names_and_wildcards() {
        let (c, k) = cert(&["shop.a.example", "*.b.example"]);
        let ck = load(&c, &k).expect("loads");
        assert!(covers(&ck, "shop.a.example"));
        assert!(covers(&ck, "blog.b.example"));
        assert!(!covers(&ck, "a.example"));
        assert!(!covers(&ck, "x.y.b.example"));
        assert!(!covers(&ck, "shop.c.example"));
    }

    #[test]
    fn the_domain_s_certificate_then_the_default_is_presented() {
        let certs = Certificates::default();
        assert!(!certs.enabled());
        let (d, dk) = cert(&["default.example"]);
        let (a, ak) = cert(&["shop.a.example"]);
        certs.set_default(Some(load(&d, &dk).expect("default")));
        assert!(certs.enabled());
        let tls = |domain: &str, c: &str, k: &str| nubo_events::TlsCertificate {
            domain: domain.into(),
            certificate: c.into(),
            private_key: k.into(),
        };
        certs.apply(false, &[tls("Shop.A.example", &a, &ak)], &[]);
        let presented = |n: Option<&str>| certs.for_name(n).expect("one").cert[0].clone();
        let a_der = load(&a, &ak).expect("a").cert[0].clone();
        let d_der = load(&d, &dk).expect("d").cert[0].clone();
        assert_eq!(presented(Some("shop.a.example")), a_der);
        assert_eq!(presented(Some("SHOP.a.example")), a_der);
        assert_eq!(presented(Some("other.example")), d_der);
        assert_eq!(presented(None), d_der);
        // A certificate that does not load is left out (the default stands in).
        certs.apply(false, &[tls("bad.example", &a, &dk)], &[]);
        assert_eq!(certs.len(), 1);
        certs.apply(false, &[], &["shop.a.example".into()]);
        assert_eq!(presented(Some("shop.a.example")), d_der);
        certs.apply(true, &[tls("shop.a.example", &a, &ak)], &[]);
        assert_eq!(presented(Some("shop.a.example")), a_der);
        certs.apply(true, &[], &[]);
        assert!(certs.is_empty());
    }

    /// A member answering every request with the `X-Forwarded-Proto` it was sent; and how many
    /// connections it took.
    async fn member() -> (SocketAddr, Arc<AtomicU64>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                            buf.drain(..end + 4);
                            let proto = head
                                .lines()
                                .find_map(|l| l.strip_prefix("x-forwarded-proto: "))
                                .unwrap_or("none")
                                .to_owned();
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{proto}",
                                proto.len()
                            );
                            if s.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port()
    }

    /// A TLS client trusting `roots`, offering `alpn`.
    fn client(roots: &[&str], alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut store = rustls::RootCertStore::empty();
        for pem in roots {
            for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
                store.add(c.expect("pem")).expect("root");
            }
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    async fn connect(port: u16) -> TcpStream {
        for _ in 0..200 {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the proxy port {port} never opened");
    }

    /// One HTTP/1.1 request on `s`: the status line and the body.
    async fn get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        s: &mut S,
        host: &str,
    ) -> String {
        get_path(s, host, "/x?y=1").await
    }

    /// The same, for `path`.
    async fn get_path<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        s: &mut S,
        host: &str,
        path: &str,
    ) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.lines().next().unwrap_or_default().to_owned();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        format!("{status} | {body}")
    }

    /// Every proxy port takes TLS (the certificate by server name, the default for others) and
    /// plain HTTP; a TLS request reaches the member as `X-Forwarded-Proto: https`; HTTP/2 by
    /// ALPN; a route that wants HTTPS redirects plain requests to it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_proxy_port_serves_tls_by_server_name_http2_and_plain_http() {
        let (backend, accepted) = member().await;
        let port = free_port();
        let lb = LoadBalancer::new(LbConfig::default());
        let (d, dk) = cert(&["default.example"]);
        let (a, ak) = cert(&["shop.a.example"]);
        lb.certificates()
            .set_default(Some(load(&d, &dk).expect("default")));
        lb.certificates().apply(
            true,
            &[nubo_events::TlsCertificate {
                domain: "shop.a.example".into(),
                certificate: a.clone(),
                private_key: ak,
            }],
            &[],
        );
        let mut t = crate::static_topology(&[
            format!("shop.a.example:{port}={backend}"),
            format!("secure.example:{port}={backend}"),
        ])
        .expect("routes");
        t.domain_routes.push(nubo_events::DomainRoute {
            domain: "forced.example".into(),
            context_path: "/".into(),
            application_id: "static".into(),
            alias: "static".into(),
            tenant_id: 0,
            tenant_domain: "t.example".into(),
            redirect_https: true,
            acme_challenges: [("tok-1".to_owned(), "tok-1.thumb".to_owned())].into(),
        });
        lb.set_topology(&t).await;

        // The domain's own certificate, by name: trusted with it alone.
        let tls = client(&[&a], &[b"http/1.1"]);
        let name = rustls::pki_types::ServerName::try_from("shop.a.example").expect("name");
        let mut s = tls
            .connect(name, connect(port).await)
            .await
            .expect("handshake with the domain's certificate");
        assert_eq!(
            get(&mut s, "shop.a.example").await,
            "HTTP/1.1 200 OK | https"
        );
        // Another name gets the default certificate (which the domain's alone does not verify).
        let name = rustls::pki_types::ServerName::try_from("secure.example").expect("name");
        assert!(
            tls.connect(name.clone(), connect(port).await)
                .await
                .is_err()
        );
        let tls_default = client(&[&d], &[b"http/1.1"]);
        let name = rustls::pki_types::ServerName::try_from("default.example").expect("name");
        let mut s = tls_default
            .connect(name, connect(port).await)
            .await
            .expect("handshake with the default certificate");
        assert_eq!(
            get(&mut s, "secure.example").await,
            "HTTP/1.1 200 OK | https"
        );
        // Plain HTTP on the same port.
        let mut s = connect(port).await;
        assert_eq!(
            get(&mut s, "shop.a.example").await,
            "HTTP/1.1 200 OK | http"
        );
        // A domain mapped with redirectHttps: plain requests are sent to HTTPS, same port.
        let mut s = connect(port).await;
        s.write_all(
            format!(
                "POST /form?q=1 HTTP/1.1\r\nHost: forced.example:{port}\r\nContent-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(
            text.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "location: https://forced.example:{port}/form?q=1\r\n"
            )),
            "{text}"
        );
        // Its ACME challenge is answered over plain HTTP all the same.
        let mut s = connect(port).await;
        let got = get_path(
            &mut s,
            "forced.example",
            "/.well-known/acme-challenge/tok-1",
        )
        .await;
        assert_eq!(got, "HTTP/1.1 200 OK | tok-1.thumb\n");
        // HTTP/2 through ALPN.
        let tls_h2 = client(&[&a], &[b"h2", b"http/1.1"]);
        let name = rustls::pki_types::ServerName::try_from("shop.a.example").expect("name");
        let s = tls_h2
            .connect(name, connect(port).await)
            .await
            .expect("handshake");
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(s),
        )
        .await
        .expect("h2");
        tokio::spawn(conn);
        let before = accepted.load(Ordering::Relaxed);
        let mut answers = Vec::new();
        for _ in 0..3 {
            let req = http::Request::builder()
                .uri(format!("https://shop.a.example:{port}/h2"))
                .body(Empty::<Bytes>::new())
                .expect("request");
            answers.push(sender.send_request(req));
        }
        for a in answers {
            let res = a.await.expect("answer");
            assert_eq!(res.status(), 200);
            assert_eq!(res.version(), http::Version::HTTP_2);
            let body = res.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(&body[..], b"https");
        }
        // Requests one after the other reuse a pipe, and its member connection.
        for _ in 0..10 {
            let req = http::Request::builder()
                .uri(format!("https://shop.a.example:{port}/again"))
                .body(Empty::<Bytes>::new())
                .expect("request");
            let res = sender.send_request(req).await.expect("answer");
            assert_eq!(res.status(), 200);
            res.into_body().collect().await.expect("body");
        }
        let opened = accepted.load(Ordering::Relaxed) - before;
        assert!(
            opened <= 3,
            "{opened} member connections for 13 HTTP/2 requests, 3 at most at once"
        );
        assert!(lb.certificates().handshakes.load(Ordering::Relaxed) >= 3);
    }

    /// An HTTP/2 connection without a request for the idle timeout is closed (GOAWAY), as an
    /// idle HTTP/1 one is; one with requests is not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_http2_connection_is_closed() {
        let (backend, _) = member().await;
        let port = free_port();
        let lb = LoadBalancer::new(LbConfig {
            idle_timeout: Duration::from_millis(400),
            ..LbConfig::default()
        });
        let (a, ak) = cert(&["shop.a.example"]);
        lb.certificates()
            .set_default(Some(load(&a, &ak).expect("default")));
        let t =
            crate::static_topology(&[format!("shop.a.example:{port}={backend}")]).expect("routes");
        lb.set_topology(&t).await;
        let tls_h2 = client(&[&a], &[b"h2"]);
        let name = rustls::pki_types::ServerName::try_from("shop.a.example").expect("name");
        let s = tls_h2
            .connect(name, connect(port).await)
            .await
            .expect("handshake");
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(s),
        )
        .await
        .expect("h2");
        let ended = tokio::spawn(conn);
        // Requests every 100 ms for a second keep it open.
        for _ in 0..10 {
            let req = http::Request::builder()
                .uri(format!("https://shop.a.example:{port}/"))
                .body(Empty::<Bytes>::new())
                .expect("request");
            let res = sender
                .send_request(req)
                .await
                .expect("kept open while used");
            res.into_body().collect().await.expect("body");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Then idle: closed by the load balancer.
        let closed = tokio::time::timeout(Duration::from_secs(5), ended).await;
        assert!(closed.is_ok(), "the idle connection was not closed");
    }
}
