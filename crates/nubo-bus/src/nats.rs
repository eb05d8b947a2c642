//! The bus over NATS (async-nats, core NATS: no JetStream), for `--bus nats://host:port`.
//!
//! Topics keep their MQTT shape everywhere else in Nubo; here they become NATS subjects: each `/`
//! level is one `.` token, `+` is `*`, and `#` is `>` (plus the parent subject, since MQTT's `a/#`
//! also matches `a`). Characters NATS reserves inside tokens (`.`, whitespace, `*`, `>`, a leading
//! `$`) and `%` itself are percent-escaped, an empty level is the token `%`, so every topic maps to
//! one subject and back ([`topic_to_subject`], [`subject_to_topic`]).
//!
//! One connection per bus; async-nats reconnects with backoff (tuned here like the MQTT bus) and
//! renews every subscription by itself. NATS keeps the order of one connection's messages, so each
//! topic's events arrive in publication order.

use std::sync::Mutex;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, ServerAddr};
use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::{Bus, BusError, Message, Sink, Subscription, valid_filter, valid_topic};

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// The servers (`nats://[user:password@]host:port`, comma-separated in the URL).
    pub servers: Vec<ServerAddr>,
    /// The connection's name, as the server shows it (a random suffix keeps names unique).
    pub name: String,
    /// `user:password@` of the first URL.
    pub user_password: Option<(String, String)>,
    /// `token@` of the first URL (a user name without a password, as NATS clients read it).
    pub token: Option<String>,
    /// TLS required (`tls://`), with the certificate authorities to check the server with.
    pub tls: Option<crate::tls::TlsSettings>,
}

impl NatsConfig {
    /// Parses `nats://[user:password@]host[:port][,nats://…]` (port 4222 by default), or
    /// `tls://…` with TLS required, and `?ca=FILE` at the end for certificate authorities.
    pub fn from_url(url: &str, name: &str) -> Result<Self, BusError> {
        let invalid = |reason: String| BusError::InvalidUrl {
            url: crate::redact_url(url),
            reason,
        };
        let (base, ca_file) = crate::tls::split_query(url)?;
        let mut servers = Vec::new();
        let mut tls = false;
        for part in base.split(',').map(str::trim) {
            let plain = if let Some(rest) = part.strip_prefix("tls://") {
                tls = true;
                format!("nats://{rest}")
            } else if part.starts_with("nats://") {
                part.to_owned()
            } else {
                return Err(invalid(
                    "a NATS URL starts with nats:// (or tls:// for TLS)".into(),
                ));
            };
            let addr: ServerAddr = plain.parse().map_err(|e| invalid(format!("{e}")))?;
            servers.push(addr);
        }
        if ca_file.is_some() && !tls {
            return Err(invalid(
                "?ca= names certificate authorities for TLS: use tls://".into(),
            ));
        }
        let first = servers.first().ok_or_else(|| invalid("no server".into()))?;
        let (user_password, token) = match (first.username(), first.password()) {
            (Some(u), Some(p)) => (Some((u.to_owned(), p.to_owned())), None),
            (Some(t), None) => (None, Some(t.to_owned())),
            _ => (None, None),
        };
        Ok(NatsConfig {
            servers,
            name: name.to_owned(),
            user_password,
            token,
            tls: tls.then_some(crate::tls::TlsSettings { ca_file }),
        })
    }
}

/// A bus over one NATS connection.
pub struct NatsBus {
    client: Client,
    connected: watch::Receiver<bool>,
    /// A subject only this connection listens on: a message to it coming back proves that the
    /// server has processed everything this connection sent before (a subscription, say).
    sync_subject: String,
    sync: tokio::sync::Mutex<Option<async_nats::Subscriber>>,
    forwarders: Mutex<JoinSet<()>>,
}

impl NatsBus {
    /// Connects in the background (it keeps retrying, also after losing the connection) and
    /// returns at once; see [`Bus::wait_connected`].
    pub async fn connect(config: NatsConfig) -> Result<Self, BusError> {
        let name = format!("{}-{:08x}", config.name, rand::random::<u32>());
        let (connected_tx, connected) = watch::channel(false);
        let addr = config
            .servers
            .iter()
            .map(|s| format!("{}:{}", s.host(), s.port()))
            .collect::<Vec<_>>()
            .join(",");
        let log_addr = addr.clone();
        let mut options = ConnectOptions::new();
        if let Some((u, p)) = config.user_password {
            options = options.user_and_password(u, p);
        }
        if let Some(t) = config.token {
            options = options.token(t);
        }
        if let Some(settings) = &config.tls {
            options = options
                .require_tls(true)
                .tls_client_config(crate::tls::client_config(settings)?);
        }
        let options = options
            .name(&name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .ping_interval(Duration::from_secs(5))
            .reconnect_delay_callback(|attempts| {
                // At once, then 50 ms, 100 ms, … up to 2 s, as the MQTT bus does.
                if attempts <= 1 {
                    return Duration::ZERO;
                }
                let exp = (attempts - 2).min(16) as u32;
                Duration::from_millis(50u64 << exp).min(Duration::from_secs(2))
            })
            .event_callback(move |event| {
                let tx = connected_tx.clone();
                let addr = log_addr.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            let _ = tx.send(true);
                            tracing::info!(broker = %addr, "bus connected (NATS)");
                        }
                        async_nats::Event::Disconnected => {
                            let _ = tx.send(false);
                            tracing::warn!(broker = %addr, "bus connection lost; reconnecting");
                        }
                        async_nats::Event::Closed => {
                            let _ = tx.send(false);
                        }
                        async_nats::Event::SlowConsumer(sid) => {
                            tracing::warn!(broker = %addr, sid, "a subscriber lags: NATS dropped messages");
                        }
                        other => tracing::warn!(broker = %addr, event = %other, "NATS"),
                    }
                }
            });
        let client = options
            .connect(config.servers)
            .await
            .map_err(|e| BusError::Unavailable(format!("NATS at {addr}: {e}")))?;
        Ok(NatsBus {
            client,
            connected,
            sync_subject: format!("_NUBO_SYNC.{:016x}", rand::random::<u64>()),
            sync: tokio::sync::Mutex::new(None),
            forwarders: Mutex::new(JoinSet::new()),
        })
    }

    /// Waits (up to 5 s) until the server has processed everything sent on this connection so far.
    async fn sync(&self) -> Result<(), BusError> {
        let mut guard = self.sync.lock().await;
        let sub = match &mut *guard {
            Some(sub) => sub,
            none => none.insert(
                self.client
                    .subscribe(self.sync_subject.clone())
                    .await
                    .map_err(|e| BusError::Unavailable(e.to_string()))?,
            ),
        };
        let token = rand::random::<u64>().to_be_bytes();
        self.client
            .publish(self.sync_subject.clone(), token.to_vec().into())
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(m) = sub.next().await {
                if m.payload.as_ref() == token {
                    return true;
                }
            }
            false
        })
        .await;
        if !matches!(seen, Ok(true)) {
            tracing::debug!("NATS did not confirm a subscription within 5 s");
        }
        Ok(())
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        // Like the MQTT bus: the subscriptions end with the bus.
        if let Ok(mut set) = self.forwarders.lock() {
            set.abort_all();
        }
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), BusError> {
        if !valid_topic(topic) {
            return Err(BusError::InvalidTopic(topic.to_owned()));
        }
        self.client
            .publish(topic_to_subject(topic), payload.into())
            .await
            .map_err(|e| match e.kind() {
                async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                    BusError::TooLarge(e.to_string())
                }
                async_nats::client::PublishErrorKind::InvalidSubject => {
                    BusError::InvalidTopic(topic.to_owned())
                }
                _ => BusError::Unavailable(e.to_string()),
            })
    }

    async fn subscribe(&self, filter: &str) -> Result<Subscription, BusError> {
        if !valid_filter(filter) {
            return Err(BusError::InvalidTopic(filter.to_owned()));
        }
        let mut subs = Vec::new();
        for subject in filter_to_subjects(filter) {
            subs.push(
                self.client
                    .subscribe(subject)
                    .await
                    .map_err(|e| BusError::Unavailable(e.to_string()))?,
            );
        }
        let (tx, sub) = Sink::pair(filter);
        let mut merged = futures_util::stream::select_all(subs);
        let forward = async move {
            loop {
                let msg = tokio::select! {
                    () = tx.closed() => break,
                    m = merged.next() => match m {
                        Some(m) => m,
                        None => break,
                    },
                };
                let msg = Message {
                    topic: subject_to_topic(&msg.subject),
                    payload: msg.payload.to_vec(),
                };
                if tx.deliver(msg).is_err() {
                    break;
                }
            }
        };
        {
            let mut set = self
                .forwarders
                .lock()
                .map_err(|_| BusError::Unavailable("poisoned".into()))?;
            while set.try_join_next().is_some() {}
            set.spawn(forward);
        }
        if *self.connected.borrow() {
            // So that what is published next (on any connection) reaches this subscription.
            self.sync().await?;
        }
        // Otherwise async-nats makes the subscription on connection.
        Ok(sub)
    }

    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn wait_connected(&self, timeout: Duration) -> Result<(), BusError> {
        let mut rx = self.connected.clone();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c))
            .await
            .map_err(|_| BusError::Unavailable("the NATS server did not answer in time".into()))?
            .map_err(|_| BusError::Unavailable("the bus is closed".into()))?;
        Ok(())
    }

    fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }
}

// === mapping ===

/// Whether a character must be escaped inside a subject token.
fn needs_escape(c: char, first_of_subject: bool) -> bool {
    matches!(c, '.' | '*' | '>' | '%')
        || c.is_whitespace()
        || c.is_control()
        || (first_of_subject && c == '$')
}

fn escape_level(level: &str, first: bool, out: &mut String) {
    if level.is_empty() {
        out.push('%');
        return;
    }
    for (i, c) in level.chars().enumerate() {
        if needs_escape(c, first && i == 0) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
}

/// The NATS subject of an MQTT topic (a valid one: no wildcards, not empty).
pub fn topic_to_subject(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len() + 8);
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        escape_level(level, i == 0, &mut out);
    }
    out
}

/// The NATS subjects to subscribe to for an MQTT filter (a valid one): one, or two for a filter
/// ending in `/#`, which MQTT also matches against its parent topic.
pub fn filter_to_subjects(filter: &str) -> Vec<String> {
    let mut out = String::with_capacity(filter.len() + 8);
    let mut parent = None;
    for (i, level) in filter.split('/').enumerate() {
        if i > 0 {
            if level == "#" {
                parent = Some(out.clone());
            }
            out.push('.');
        }
        match level {
            "+" => out.push('*'),
            "#" => out.push('>'),
            other => escape_level(other, i == 0, &mut out),
        }
    }
    parent.into_iter().chain([out]).collect()
}

/// The MQTT topic of a NATS subject (the inverse of [`topic_to_subject`]; a token that is not
/// escaped as Nubo escapes, e.g. from another NATS client, is kept as it is).
pub fn subject_to_topic(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len());
    for (i, token) in subject.split('.').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if token == "%" {
            continue;
        }
        out.push_str(&unescape(token));
    }
    out
}

fn unescape(token: &str) -> String {
    if !token.contains('%') {
        return token.to_owned();
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = NatsConfig::from_url("nats://127.0.0.1:4333", "x").unwrap();
        assert_eq!(c.servers.len(), 1);
        assert_eq!(
            (c.servers[0].host(), c.servers[0].port()),
            ("127.0.0.1", 4333)
        );
        let c = NatsConfig::from_url("nats://u:p@a:1,nats://b", "x").unwrap();
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.servers[1].port(), 4222);
        assert_eq!(c.user_password, Some(("u".into(), "p".into())));
        let c = NatsConfig::from_url("nats://s3cret@a", "x").unwrap();
        assert_eq!(
            (c.token.as_deref(), c.user_password),
            (Some("s3cret"), None)
        );
        for bad in ["mqtt://x:1", "nats://x:notaport", "x"] {
            assert!(
                matches!(
                    NatsConfig::from_url(bad, "x"),
                    Err(BusError::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    /// `topic → subject`, and back.
    fn check(topic: &str, subject: &str) {
        assert_eq!(topic_to_subject(topic), subject, "topic {topic:?}");
        assert_eq!(subject_to_topic(subject), topic, "subject {subject:?}");
    }

    #[test]
    fn topics_map_to_subjects_and_back() {
        check("nubo/v1/topology", "nubo.v1.topology");
        check("a", "a");
        check("m/app.web.member-1.dom", "m.app%2Eweb%2Emember-1%2Edom");
        check("a/b c/d\te", "a.b%20c.d%09e");
        check("a/*/>/x*y>z", "a.%2A.%3E.x%2Ay%3Ez");
        check("a/100%", "a.100%25");
        check("a/%41", "a.%2541");
        check("$SYS/x", "%24SYS.x");
        check("a/$b", "a.$b");
        check("a//b", "a.%.b");
        check("/a/", "%.a.%");
        check("é/日本", "é.日本");
        check("a/\u{85}", "a.%C2%85");
    }

    #[test]
    fn foreign_subjects_decode_leniently() {
        assert_eq!(subject_to_topic("a.%zz.%4"), "a/%zz/%4");
        assert_eq!(subject_to_topic("a.%FF"), "a/%FF");
    }

    /// Against a real nats-server when one is given (`NUBO_TEST_NATS_URL`, set by `scripts/test`).
    #[tokio::test]
    async fn nats_bus_passes_the_conformance_suite() {
        let Ok(url) = std::env::var("NUBO_TEST_NATS_URL") else {
            crate::testing::skipped(
                "nats_bus on nats-server: NUBO_TEST_NATS_URL is not set (scripts/test starts nats-server and sets it)",
            );
            return;
        };
        if let Some(anonymous) = crate::testing::without_credentials(&url) {
            let refused = match crate::connect_url(&anonymous, "anonymous").await {
                Err(_) => true,
                Ok(c) => c.wait_connected(Duration::from_millis(1500)).await.is_err(),
            };
            assert!(
                refused,
                "an anonymous client connected to {}",
                crate::redact_url(&url)
            );
        }
        let a = crate::connect_url(&url, "conf-pub").await.unwrap();
        let b = crate::connect_url(&url, "conf-sub").await.unwrap();
        assert_eq!(a.kind(), "nats");
        a.wait_connected(Duration::from_secs(10)).await.unwrap();
        b.wait_connected(Duration::from_secs(10)).await.unwrap();
        crate::conformance::run_all(a.as_ref(), b.as_ref()).await;
        crate::conformance::events(crate::EventBus::new(a), crate::EventBus::new(b)).await;
    }

    /// nats-server requiring TLS: `tls://…?ca=FILE` passes the conformance suite; without the
    /// server's certificate authority, or without TLS, no connection is made.
    #[tokio::test]
    async fn nats_bus_over_tls_passes_the_conformance_suite_and_checks_the_server() {
        let Some((server, ca)) = crate::testing::BrokerProcess::nats_tls() else {
            crate::testing::skipped(
                "nats_bus over TLS: `nats-server` is not on PATH (scripts/test installs it)",
            );
            return;
        };
        let port = server.url("x").rsplit(':').next().unwrap().to_owned();
        let url = format!("tls://127.0.0.1:{port}?ca={}", ca.display());
        let a = crate::connect_url(&url, "tls-pub").await.unwrap();
        let b = crate::connect_url(&url, "tls-sub").await.unwrap();
        a.wait_connected(Duration::from_secs(10)).await.unwrap();
        b.wait_connected(Duration::from_secs(10)).await.unwrap();
        crate::conformance::run_all(a.as_ref(), b.as_ref()).await;
        for refused in [
            format!("tls://127.0.0.1:{port}"),
            format!("nats://127.0.0.1:{port}"),
        ] {
            let ok = match crate::connect_url(&refused, "tls-refused").await {
                Err(_) => false,
                Ok(c) => c.wait_connected(Duration::from_millis(1500)).await.is_ok(),
            };
            assert!(!ok, "{refused} connected");
        }
    }

    /// One connection both publishing and subscribing (as the server uses its bus).
    #[tokio::test]
    async fn nats_bus_passes_the_conformance_suite_on_one_connection() {
        let Ok(url) = std::env::var("NUBO_TEST_NATS_URL") else {
            crate::testing::skipped(
                "nats_bus (one connection) on nats-server: NUBO_TEST_NATS_URL is not set (scripts/test starts nats-server and sets it)",
            );
            return;
        };
        let a = crate::connect_url(&url, "conf-one").await.unwrap();
        a.wait_connected(Duration::from_secs(10)).await.unwrap();
        crate::conformance::run_all(a.as_ref(), a.as_ref()).await;
    }

    /// nats-server killed and started again on the same port: the bus resumes by itself, its
    /// subscriptions renewed. A nats-server of the test's own.
    #[tokio::test]
    async fn nats_bus_resumes_after_the_server_restarts() {
        let Some(mut server) = crate::testing::BrokerProcess::nats() else {
            crate::testing::skipped(
                "nats_bus server restart: `nats-server` is not on PATH (scripts/test installs it)",
            );
            return;
        };
        let url = server.url("nats");
        let a = crate::connect_url(&url, "restart-pub").await.unwrap();
        let b = crate::connect_url(&url, "restart-sub").await.unwrap();
        a.wait_connected(Duration::from_secs(10)).await.unwrap();
        b.wait_connected(Duration::from_secs(10)).await.unwrap();
        crate::conformance::survives_restart(a.as_ref(), b.as_ref(), || async {
            server.restart();
        })
        .await;
    }

    /// The URL's user and password reach the server.
    #[tokio::test]
    async fn nats_bus_authenticates_with_the_url_credentials() {
        let Some(server) =
            crate::testing::BrokerProcess::nats_with(&["--user", "nubo", "--pass", "s3cret"])
        else {
            crate::testing::skipped(
                "nats_bus credentials: `nats-server` is not on PATH (scripts/test installs it)",
            );
            return;
        };
        let url = server.url("nats");
        let with = url.replace("nats://", "nats://nubo:s3cret@");
        let bus = crate::connect_url(&with, "auth").await.unwrap();
        bus.wait_connected(Duration::from_secs(10)).await.unwrap();
        let wrong = url.replace("nats://", "nats://nubo:wrong@");
        let bus = crate::connect_url(&wrong, "auth").await.unwrap();
        assert!(
            bus.wait_connected(Duration::from_millis(500))
                .await
                .is_err()
        );
    }

    /// A bus whose server is not there yet returns at once, and connects (with the subscriptions
    /// made meanwhile) once the server is up.
    #[tokio::test]
    async fn nats_bus_connects_when_the_server_comes_up_later() {
        let addr = crate::testing::free_addr();
        let bus = crate::connect_url(&format!("nats://{addr}"), "late")
            .await
            .unwrap();
        assert!(!bus.is_connected());
        assert!(
            bus.wait_connected(Duration::from_millis(300))
                .await
                .is_err()
        );
        let mut sub = bus.subscribe("early/+").await.unwrap();
        let Some(_server) = crate::testing::BrokerProcess::nats_at(addr) else {
            crate::testing::skipped(
                "nats_bus late server: `nats-server` is not on PATH (scripts/test installs it)",
            );
            return;
        };
        bus.wait_connected(Duration::from_secs(10)).await.unwrap();
        bus.publish("early/x", b"hi".to_vec()).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.topic.as_str(), m.payload.as_slice()),
            ("early/x", &b"hi"[..])
        );
    }

    /// `filter → subjects`.
    fn check_filter(filter: &str, subjects: &[&str]) {
        assert_eq!(filter_to_subjects(filter), subjects, "filter {filter:?}");
    }

    #[test]
    fn filters_map_to_subjects() {
        check_filter("nubo/v1/topology", &["nubo.v1.topology"]);
        check_filter("a/+/c", &["a.*.c"]);
        check_filter("+", &["*"]);
        check_filter("#", &[">"]);
        check_filter("a/#", &["a", "a.>"]);
        check_filter("a/+/#", &["a.*", "a.*.>"]);
        check_filter("a.b/+", &["a%2Eb.*"]);
        check_filter("a//#", &["a.%", "a.%.>"]);
    }
}
