//! The message bus: topics with MQTT-style filters (`+`, `#`) behind the small [`Bus`] trait, an
//! in-process implementation ([`MemoryBus`]), an MQTT one ([`MqttBus`], for the embedded broker or
//! an external one such as Mosquitto) and a NATS one ([`NatsBus`]), chosen by URL with
//! [`connect_url`]; and [`EventBus`], which speaks [`nubo_events::Event`]s and skips (and logs)
//! anything malformed. Every implementation passes the same conformance suite.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nubo_events::{Category, Event};
use nubo_telemetry::{InternalEvent, MessageDropped, PublishFailed};
use tokio::sync::mpsc;

#[cfg(feature = "conformance")]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod conformance;
mod credentials;
mod memory;
mod mqtt;
pub mod nats;
pub mod secrecy;
#[cfg(test)]
mod testing;
pub mod tls;

pub use credentials::BusCredentials;
pub use memory::MemoryBus;
pub use mqtt::{MqttBus, MqttConfig};
pub use nats::{NatsBus, NatsConfig};
use nubo_envelope as auth;
pub use nubo_envelope::{BusAuth, BusKey, MAX_SKEW_MS, MEMBER_UNCHECKED, Refusal};

/// A message on a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
}

/// What can go wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A topic or filter is not valid.
    #[error("invalid topic or filter `{0}`")]
    InvalidTopic(String),
    /// The bus is closed or the broker cannot be reached.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// A bus URL that names no bus Nubo can connect to.
    #[error("invalid bus URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The payload is larger than the broker accepts.
    #[error("message too large: {0}")]
    TooLarge(String),
    /// TLS to the broker cannot be set up (its certificate authorities).
    #[error("TLS to the broker: {0}")]
    Tls(String),
}

/// Messages matching one filter, in publication order per publisher.
pub struct Subscription {
    rx: Rx,
    /// Messages this subscription lost because it lagged (statistics topics only).
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

enum Rx {
    Lossless(mpsc::UnboundedReceiver<Message>),
    Lossy(mpsc::Receiver<Message>),
}

impl Subscription {
    /// The next message; `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<Message> {
        match &mut self.rx {
            Rx::Lossless(rx) => rx.recv().await,
            Rx::Lossy(rx) => rx.recv().await,
        }
    }

    /// A message already received, if any (never waits).
    pub fn try_recv(&mut self) -> Option<Message> {
        match &mut self.rx {
            Rx::Lossless(rx) => rx.try_recv().ok(),
            Rx::Lossy(rx) => rx.try_recv().ok(),
        }
    }

    /// Messages this subscription lost so far because it lagged (only a statistics topic's can).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Messages received and not yet taken (how far this subscriber lags).
    pub fn backlog(&self) -> usize {
        match &self.rx {
            Rx::Lossless(rx) => rx.len(),
            Rx::Lossy(rx) => rx.len(),
        }
    }
}

/// How many health statistics or predictions a subscriber may lag before newer ones are dropped
/// (and counted: `nubo_bus_messages_dropped_total{reason="lagging"}`); a burst of tens of thousands
/// of statistics fits (about 20 MiB). Every other message is kept
/// however far its subscriber lags: a lost lifecycle event would leave a member starting for
/// good, and their number is bounded by the members' lifecycles.
pub const SUBSCRIPTION_BUFFER: usize = 65_536;

/// Whether a subscription to `filter` may drop messages when it lags: the statistics topics
/// (each message is superseded by the next of the same member within seconds) and workloads'
/// logs (a log store that lags drops lines, and counts them, rather than hold the platform up).
fn lossy(filter: &str) -> bool {
    filter == Category::HealthStats.filter()
        || filter == Category::Predictions.filter()
        || filter == Category::Logs.filter()
}

/// The sending side of a subscription, as a bus's dispatch holds it.
pub(crate) struct Sink {
    tx: Tx,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

enum Tx {
    Lossless(mpsc::UnboundedSender<Message>),
    Lossy(mpsc::Sender<Message>),
}

/// A message could not be delivered: the subscription is gone.
pub(crate) struct Gone;

impl Sink {
    /// A sink and its subscription for `filter`.
    pub(crate) fn pair(filter: &str) -> (Sink, Subscription) {
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        if lossy(filter) {
            let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
            (
                Sink {
                    tx: Tx::Lossy(tx),
                    dropped: dropped.clone(),
                },
                Subscription {
                    rx: Rx::Lossy(rx),
                    dropped,
                },
            )
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            (
                Sink {
                    tx: Tx::Lossless(tx),
                    dropped: dropped.clone(),
                },
                Subscription {
                    rx: Rx::Lossless(rx),
                    dropped,
                },
            )
        }
    }

    /// Delivers a message without waiting; a lagging statistics subscriber loses it (counted).
    pub(crate) fn deliver(&self, msg: Message) -> Result<(), Gone> {
        match &self.tx {
            Tx::Lossless(tx) => tx.send(msg).map_err(|_| Gone),
            Tx::Lossy(tx) => match tx.try_send(msg) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(m)) => {
                    self.dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    MessageDropped {
                        topic: &m.topic,
                        reason: "lagging",
                        detail: "the subscriber is more than SUBSCRIPTION_BUFFER messages behind",
                    }
                    .emit();
                    Ok(())
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(Gone),
            },
        }
    }

    /// Whether its subscription is gone.
    pub(crate) fn is_closed(&self) -> bool {
        match &self.tx {
            Tx::Lossless(tx) => tx.is_closed(),
            Tx::Lossy(tx) => tx.is_closed(),
        }
    }

    /// Completes once its subscription is gone.
    pub(crate) async fn closed(&self) {
        match &self.tx {
            Tx::Lossless(tx) => tx.closed().await,
            Tx::Lossy(tx) => tx.closed().await,
        }
    }
}

/// The message bus.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `payload` on `topic` (no wildcards).
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), BusError>;
    /// Receives every message whose topic matches `filter` (`+` one level, `#` the rest),
    /// published after this call returns.
    async fn subscribe(&self, filter: &str) -> Result<Subscription, BusError>;
    /// A short name for logs (`memory`, `mqtt`, `nats`).
    fn kind(&self) -> &'static str;
    /// Waits until the connection to the broker is up, up to `timeout` (at once in process).
    async fn wait_connected(&self, timeout: Duration) -> Result<(), BusError> {
        let _ = timeout;
        Ok(())
    }
    /// Whether the connection to the broker is up now.
    fn is_connected(&self) -> bool {
        true
    }
}

/// A bus as a URL names it (`--bus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusUrl {
    /// `embedded`: the MQTT broker inside `nubo server`, which resolves it to `mqtt://…` for
    /// everything else (agents, `nubo lb`).
    Embedded,
    /// `mqtt://[user:password@]host[:port]` (also `tcp://`): an MQTT 3.1.1 broker; `mqtts://`
    /// (also `ssl://`) over TLS, with `?ca=FILE` for certificate authorities of its own.
    Mqtt(String),
    /// `nats://[user:password@]host[:port]`: a NATS server; `tls://` with TLS required, with
    /// `?ca=FILE` for certificate authorities of its own.
    Nats(String),
}

impl std::str::FromStr for BusUrl {
    type Err = BusError;

    fn from_str(url: &str) -> Result<Self, BusError> {
        let url = url.trim();
        if url == "embedded" {
            Ok(BusUrl::Embedded)
        } else if ["mqtt://", "tcp://", "mqtts://", "ssl://"]
            .iter()
            .any(|s| url.starts_with(s))
        {
            MqttConfig::from_url(url, "check")?;
            Ok(BusUrl::Mqtt(url.to_owned()))
        } else if url.starts_with("nats://") || url.starts_with("tls://") {
            NatsConfig::from_url(url, "check")?;
            Ok(BusUrl::Nats(url.to_owned()))
        } else {
            Err(BusError::InvalidUrl {
                url: redact_url(url),
                reason: "expected `embedded`, `mqtt://host:port`, `mqtts://host:port`, `nats://host:port` or `tls://host:port`".into(),
            })
        }
    }
}

/// Connects to the bus `url` names (`mqtt://…` or `nats://…`), as `client_id` (a prefix: a
/// random suffix keeps ids unique). The connection is made in the background and kept up; use
/// [`Bus::wait_connected`] to wait for it. `embedded` is refused: only the server runs that
/// broker, and it hands its `mqtt://` URL to everyone else.
pub async fn connect_url(url: &str, client_id: &str) -> Result<Arc<dyn Bus>, BusError> {
    match url.parse::<BusUrl>()? {
        BusUrl::Embedded => Err(BusError::InvalidUrl {
            url: redact_url(url),
            reason: "only `nubo server` runs the embedded broker; give the URL it prints (`nubo: bus: mqtt://…`)".into(),
        }),
        BusUrl::Mqtt(u) => Ok(Arc::new(MqttBus::connect(MqttConfig::from_url(
            &u, client_id,
        )?)?)),
        BusUrl::Nats(u) => Ok(Arc::new(
            NatsBus::connect(NatsConfig::from_url(&u, client_id)?).await?,
        )),
    }
}

/// A URL as it may be shown or logged: the password of its user information (`scheme://user:PASSWORD@host`)
/// replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// Whether an MQTT-style `filter` matches `topic`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Checks a filter: `#` only last, wildcards only as whole levels.
pub fn valid_filter(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    !filter.is_empty()
        && levels.iter().enumerate().all(|(i, l)| match *l {
            "#" => i == levels.len() - 1,
            "+" => true,
            other => !other.contains(['#', '+']),
        })
}

/// Checks a topic to publish on: no wildcards, not empty.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['#', '+'])
}

/// Milliseconds since the Unix epoch (the wall clock): the time base of every `at_ms` in events (0 if the clock is
/// before the epoch).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Events over a [`Bus`], proved and checked as its [`BusAuth`] says.
#[derive(Clone)]
pub struct EventBus {
    bus: Arc<dyn Bus>,
    auth: Arc<BusAuth>,
    sender: Arc<auth::Sender>,
    secrecy: Arc<Option<secrecy::Secrecy>>,
}

/// A stream of decoded events.
pub struct EventStream {
    sub: Subscription,
    /// Only events of these names are decoded and returned (`None`: all).
    only: Option<&'static [&'static str]>,
    auth: Arc<BusAuth>,
    secrecy: Arc<Option<secrecy::Secrecy>>,
    replay: auth::ReplayGuard,
}

impl EventStream {
    /// The next event; malformed, unproven or unknown messages are logged and skipped.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            let msg = self.sub.recv().await?;
            if let Some(e) = self.decode(&msg) {
                return Some(e);
            }
        }
    }

    /// The event `msg` carries, if this stream wants it and its sender may send it (the others
    /// are dropped, counted).
    fn decode(&mut self, msg: &Message) -> Option<Event> {
        let drop = |reason: &'static str, detail: &str| {
            MessageDropped {
                topic: &msg.topic,
                reason,
                detail,
            }
            .emit();
        };
        let opened = match self.auth.open(&mut self.replay, &msg.payload, now_ms()) {
            Ok(o) => o,
            Err(r) => {
                drop(r.label(), "");
                return None;
            }
        };
        if let Some(only) = self.only
            && Event::peek_name(opened.body).is_some_and(|n| !only.contains(&n))
        {
            return None;
        }
        let event = match secrecy::sealed_part(opened.body) {
            // Only the platform's processes open the platform's secret commands.
            Some((name, sealed)) => {
                match self
                    .secrecy
                    .as_ref()
                    .as_ref()
                    .and_then(|k| k.open(name, sealed))
                {
                    Some(e) => e,
                    None => {
                        drop(Refusal::NotPermitted.label(), name);
                        return None;
                    }
                }
            }
            None => match Event::decode(opened.body) {
                // A platform process never sends a secret command in the clear.
                Ok(e)
                    if secrecy::is_secret(e.category()) && !matches!(*self.auth, BusAuth::Open) =>
                {
                    drop(Refusal::NotPermitted.label(), e.name());
                    return None;
                }
                Ok(e) => e,
                Err(e) => {
                    drop("malformed", &e.to_string());
                    return None;
                }
            },
        };
        if opened.permits(&event) {
            Some(event)
        } else {
            drop(Refusal::NotPermitted.label(), event.name());
            None
        }
    }
}

impl EventStream {
    /// Messages received and not yet taken.
    pub fn backlog(&self) -> usize {
        self.sub.backlog()
    }

    /// Messages lost so far because this subscriber lagged (statistics topics only).
    pub fn dropped(&self) -> u64 {
        self.sub.dropped()
    }

    /// An event already received, if any (never waits); malformed messages are skipped.
    pub fn try_recv(&mut self) -> Option<Event> {
        loop {
            let msg = self.sub.try_recv()?;
            if let Some(e) = self.decode(&msg) {
                return Some(e);
            }
        }
    }
}

impl EventBus {
    /// Events over `bus`, neither proved nor checked: for a bus inside one process and tests.
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Self::with_auth(bus, BusAuth::Open)
    }

    /// Events over `bus`, proved with `auth`'s key and checked against it.
    pub fn with_auth(bus: Arc<dyn Bus>, auth: BusAuth) -> Self {
        EventBus {
            bus,
            secrecy: Arc::new(secrecy::Secrecy::of(&auth)),
            auth: Arc::new(auth),
            sender: Arc::new(auth::Sender::default()),
        }
    }

    /// The key of `member_id`, for its agent's payload (platform components only).
    pub fn member_key(&self, member_id: &str) -> Option<BusKey> {
        match self.auth.as_ref() {
            BusAuth::Platform(k) | BusAuth::PlatformRotating { current: k, .. } => {
                Some(k.member_key(member_id))
            }
            _ => None,
        }
    }

    /// The token of `member_id` for the platform's HTTP services (its payload's `TOKEN`),
    /// platform components only.
    pub fn member_token(&self, member_id: &str) -> Option<String> {
        match self.auth.as_ref() {
            BusAuth::Platform(k) | BusAuth::PlatformRotating { current: k, .. } => {
                Some(k.member_token(member_id))
            }
            _ => None,
        }
    }

    /// The member a token names, if the platform's key (or, while it rotates, the previous one)
    /// issued it; `None` in a process without the platform's key.
    pub fn member_of_token(&self, token: &str) -> Option<String> {
        let keys: Vec<&BusKey> = match self.auth.as_ref() {
            BusAuth::Platform(k) => vec![k],
            BusAuth::PlatformRotating { current, previous } => vec![current, previous],
            _ => Vec::new(),
        };
        keys.into_iter()
            .find_map(|k| k.member_of_token(token))
            .map(str::to_owned)
    }

    /// The underlying bus.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// Publishes an event on its topic.
    pub async fn publish(&self, event: &Event) -> Result<(), BusError> {
        let body = match self.secrecy.as_ref() {
            Some(keys) if secrecy::is_secret(event.category()) => keys
                .seal(event)
                .ok_or_else(|| BusError::Unavailable(format!("cannot seal {}", event.name())))?,
            _ => event.encode(),
        };
        let r = self
            .bus
            .publish(
                &event.topic(),
                self.auth
                    .seal_body(&self.sender, event.addressed_to(), body, now_ms()),
            )
            .await;
        if let Err(e) = &r {
            PublishFailed {
                event: event.name(),
                category: event.category().segment(),
                error: &e.to_string(),
            }
            .emit();
        }
        r
    }

    /// Receives every event of a category.
    pub async fn subscribe(&self, category: Category) -> Result<EventStream, BusError> {
        Ok(self.stream(self.bus.subscribe(&category.filter()).await?, None))
    }

    /// Receives the events of a category with one of these names; the others are skipped
    /// without being decoded (a large complete topology, say, for a receiver that does not use
    /// it).
    pub async fn subscribe_only(
        &self,
        category: Category,
        names: &'static [&'static str],
    ) -> Result<EventStream, BusError> {
        Ok(self.stream(self.bus.subscribe(&category.filter()).await?, Some(names)))
    }

    /// Receives every event whose topic matches `filter`.
    pub async fn subscribe_filter(&self, filter: &str) -> Result<EventStream, BusError> {
        Ok(self.stream(self.bus.subscribe(filter).await?, None))
    }

    fn stream(&self, sub: Subscription, only: Option<&'static [&'static str]>) -> EventStream {
        EventStream {
            sub,
            only,
            auth: self.auth.clone(),
            secrecy: self.secrecy.clone(),
            replay: auth::ReplayGuard::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_in_urls_are_hidden() {
        use super::redact_url;
        assert_eq!(
            redact_url("mqtt://nubo:s3cr3t@h:1883"),
            "mqtt://nubo:***@h:1883"
        );
        assert_eq!(
            redact_url("nats://u:p@w@h:4222/x?y"),
            "nats://u:***@h:4222/x?y"
        );
        assert_eq!(redact_url("mqtt://token@h"), "mqtt://token@h");
        assert_eq!(redact_url("mqtt://h:1883"), "mqtt://h:1883");
        assert_eq!(redact_url("embedded"), "embedded");
    }

    use super::*;

    #[test]
    fn filters_match_as_in_mqtt() {
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(!topic_matches("a/+/c", "a/b/d"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(topic_matches("#", "x/y"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(
            valid_filter("a/+/#")
                && !valid_filter("a/#/b")
                && !valid_filter("a/b#")
                && !valid_filter("")
        );
        assert!(valid_topic("a/b") && !valid_topic("a/+") && !valid_topic(""));
    }

    #[test]
    fn bus_urls() {
        assert_eq!("embedded".parse::<BusUrl>().unwrap(), BusUrl::Embedded);
        assert_eq!(
            "mqtt://127.0.0.1:1883".parse::<BusUrl>().unwrap(),
            BusUrl::Mqtt("mqtt://127.0.0.1:1883".into())
        );
        assert_eq!(
            "nats://127.0.0.1:4222".parse::<BusUrl>().unwrap(),
            BusUrl::Nats("nats://127.0.0.1:4222".into())
        );
        for bad in ["", "memory", "http://x", "mqtt://x:port", "nats://x:port"] {
            assert!(
                matches!(bad.parse::<BusUrl>(), Err(BusError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn connect_url_refuses_embedded() {
        let err = connect_url("embedded", "x").await.err().unwrap();
        assert!(err.to_string().contains("nubo server"), "{err}");
    }
}
