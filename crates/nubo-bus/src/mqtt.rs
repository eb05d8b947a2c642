//! The bus over MQTT 3.1.1 (rumqttc): the embedded broker or an external one (Mosquitto, EMQX).
//! One connection per process; it reconnects with backoff and re-subscribes by itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio::sync::watch;

use crate::{Bus, BusError, Message, Sink, Subscription, topic_matches, valid_filter, valid_topic};

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Client id prefix (a random suffix keeps ids unique).
    pub client_id: String,
    /// User name and password, if the broker wants them.
    pub credentials: Option<(String, String)>,
    /// TLS (`mqtts://`), with the certificate authorities to check the broker with.
    pub tls: Option<crate::tls::TlsSettings>,
}

impl MqttConfig {
    /// Parses `mqtt://[user:password@]host:port`, or `mqtts://…[?ca=FILE]` for TLS.
    pub fn from_url(url: &str, client_id: &str) -> Result<Self, BusError> {
        let (base, ca_file) = crate::tls::split_query(url)?;
        let (rest, tls) = if let Some(r) = base
            .strip_prefix("mqtts://")
            .or_else(|| base.strip_prefix("ssl://"))
        {
            (r, true)
        } else {
            let r = base
                .strip_prefix("mqtt://")
                .or_else(|| base.strip_prefix("tcp://"))
                .ok_or_else(|| BusError::InvalidUrl {
                    url: crate::redact_url(url),
                    reason: "an MQTT URL starts with mqtt:// (or mqtts:// for TLS)".into(),
                })?;
            (r, false)
        };
        if !tls && ca_file.is_some() {
            return Err(BusError::InvalidUrl {
                url: crate::redact_url(url),
                reason: "?ca= names certificate authorities for TLS: use mqtts://".into(),
            });
        }
        let rest = rest.trim_end_matches('/');
        let (creds, hostport) = match rest.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse().map_err(|_| BusError::InvalidUrl {
                    url: crate::redact_url(url),
                    reason: format!("`{p}` is not a port"),
                })?,
            ),
            None => (hostport, if tls { 8883 } else { 1883 }),
        };
        let credentials = creds.map(|c| match c.split_once(':') {
            Some((u, p)) => (u.to_owned(), p.to_owned()),
            None => (c.to_owned(), String::new()),
        });
        Ok(MqttConfig {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            client_id: client_id.to_owned(),
            credentials,
            tls: tls.then_some(crate::tls::TlsSettings { ca_file }),
        })
    }
}

type Subscribers = Arc<Mutex<Vec<(String, Sink)>>>;

/// A bus over one MQTT connection.
pub struct MqttBus {
    client: AsyncClient,
    subscribers: Subscribers,
    subacks: watch::Receiver<u64>,
    connected: watch::Receiver<bool>,
    subscribe_lock: tokio::sync::Mutex<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MqttBus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MqttBus {
    /// Connects (in the background; it keeps retrying) and returns at once; fails only when
    /// TLS cannot be set up (its certificate authorities).
    pub fn connect(config: MqttConfig) -> Result<Self, BusError> {
        let transport = match &config.tls {
            Some(settings) => Some(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(crate::tls::client_config(settings)?)),
            )),
            None => None,
        };
        Ok(Self::connect_with(config, transport))
    }

    fn connect_with(config: MqttConfig, transport: Option<rumqttc::Transport>) -> Self {
        let id = format!("{}-{:08x}", config.client_id, rand::random::<u32>());
        let mut opts = MqttOptions::new(id, config.host.clone(), config.port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(true);
        opts.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        opts.set_inflight(1_000);
        if let Some((u, p)) = &config.credentials {
            opts.set_credentials(u.clone(), p.clone());
        }
        if let Some(t) = transport {
            opts.set_transport(t);
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 4096);
        let subscribers: Subscribers = Arc::new(Mutex::new(Vec::new()));
        let (suback_tx, subacks) = watch::channel(0u64);
        let (connected_tx, connected) = watch::channel(false);
        let subs = subscribers.clone();
        let resub_client = client.clone();
        let addr = format!("{}:{}", config.host, config.port);
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        let topic = p.topic.clone();
                        let Ok(mut list) = subs.lock() else { return };
                        // Subscriptions dropped by their owners: the broker stops sending what
                        // no one here reads any more (under the lock, so that a new subscription
                        // of the same filter is sent after this, never before).
                        let before: Vec<String> = list.iter().map(|(f, _)| f.clone()).collect();
                        list.retain(|(_, tx)| !tx.is_closed());
                        if list.len() < before.len() {
                            let mut gone: Vec<&String> = before
                                .iter()
                                .filter(|f| !list.iter().any(|(g, _)| g == *f))
                                .collect();
                            gone.dedup();
                            for f in gone {
                                if let Err(e) = resub_client.try_unsubscribe(f.clone()) {
                                    tracing::debug!(filter = %f, error = %e, "cannot unsubscribe");
                                }
                            }
                        }
                        for (filter, tx) in list.iter() {
                            if topic_matches(filter, &topic) {
                                let msg = Message {
                                    topic: topic.clone(),
                                    payload: p.payload.to_vec(),
                                };
                                let _ = tx.deliver(msg);
                            }
                        }
                    }
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                        backoff = Duration::from_millis(50);
                        let filters: Vec<String> = subs
                            .lock()
                            .map(|l| l.iter().map(|(f, _)| f.clone()).collect())
                            .unwrap_or_default();
                        let mut unique = filters.clone();
                        unique.sort();
                        unique.dedup();
                        for f in unique {
                            if let Err(e) = resub_client.try_subscribe(f.clone(), QoS::AtLeastOnce)
                            {
                                tracing::warn!(filter = %f, error = %e, "cannot re-subscribe");
                            }
                        }
                        let _ = connected_tx.send(true);
                        tracing::info!(broker = %addr, "bus connected");
                    }
                    Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                        suback_tx.send_modify(|n| *n += 1);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if *connected_tx.borrow() {
                            tracing::warn!(broker = %addr, error = %e, "bus connection lost; reconnecting");
                        } else {
                            tracing::debug!(broker = %addr, error = %e, "bus not reachable yet");
                        }
                        let _ = connected_tx.send(false);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        });
        MqttBus {
            client,
            subscribers,
            subacks,
            connected,
            subscribe_lock: tokio::sync::Mutex::new(()),
            task,
        }
    }
}

#[async_trait]
impl Bus for MqttBus {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), BusError> {
        if !valid_topic(topic) {
            return Err(BusError::InvalidTopic(topic.to_owned()));
        }
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))
    }

    async fn subscribe(&self, filter: &str) -> Result<Subscription, BusError> {
        if !valid_filter(filter) {
            return Err(BusError::InvalidTopic(filter.to_owned()));
        }
        let (tx, sub) = Sink::pair(filter);
        let _guard = self.subscribe_lock.lock().await;
        let mut acks = self.subacks.clone();
        let before = *acks.borrow_and_update();
        let connected = self.is_connected();
        {
            // Listed and requested under the lock that unsubscribing takes too (see `connect`).
            let mut list = self
                .subscribers
                .lock()
                .map_err(|_| BusError::Unavailable("poisoned".into()))?;
            list.push((filter.to_owned(), tx));
            if connected {
                self.client
                    .try_subscribe(filter, QoS::AtLeastOnce)
                    .map_err(|e| BusError::Unavailable(e.to_string()))?;
            }
        }
        if connected {
            // Wait for the broker's acknowledgement, so that what is published next reaches us.
            let _ =
                tokio::time::timeout(Duration::from_secs(5), acks.wait_for(|n| *n > before)).await;
        }
        // Otherwise the subscription is made on (re)connection.
        Ok(sub)
    }

    fn kind(&self) -> &'static str {
        "mqtt"
    }

    async fn wait_connected(&self, timeout: Duration) -> Result<(), BusError> {
        let mut rx = self.connected.clone();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c))
            .await
            .map_err(|_| BusError::Unavailable("the MQTT broker did not answer in time".into()))?
            .map_err(|_| BusError::Unavailable("the bus is closed".into()))?;
        Ok(())
    }

    fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = MqttConfig::from_url("mqtt://127.0.0.1:1884", "x").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.credentials),
            ("127.0.0.1", 1884, None)
        );
        let c = MqttConfig::from_url("mqtt://u:p@broker", "x").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("broker", 1883));
        assert_eq!(c.credentials, Some(("u".into(), "p".into())));
        assert!(MqttConfig::from_url("nats://x", "x").is_err());
    }

    /// Against a real broker when one is given (`NUBO_TEST_MQTT_URL`, set by `scripts/test`).
    #[tokio::test]
    async fn mqtt_bus_passes_the_conformance_suite_on_an_external_broker() {
        let Ok(url) = std::env::var("NUBO_TEST_MQTT_URL") else {
            crate::testing::skipped(
                "mqtt_bus on Mosquitto: NUBO_TEST_MQTT_URL is not set (scripts/test starts Mosquitto and sets it)",
            );
            return;
        };
        // A broker that wants credentials refuses a client without them.
        if let Some(anonymous) = crate::testing::without_credentials(&url) {
            let c =
                MqttBus::connect(MqttConfig::from_url(&anonymous, "anonymous").unwrap()).unwrap();
            assert!(
                c.wait_connected(Duration::from_millis(1500)).await.is_err(),
                "an anonymous client connected to {}",
                crate::redact_url(&url)
            );
        }
        let a = MqttBus::connect(MqttConfig::from_url(&url, "conf-pub").unwrap()).unwrap();
        let b = MqttBus::connect(MqttConfig::from_url(&url, "conf-sub").unwrap()).unwrap();
        a.wait_connected(Duration::from_secs(10)).await.unwrap();
        b.wait_connected(Duration::from_secs(10)).await.unwrap();
        crate::conformance::run_all(&a, &b).await;
        crate::conformance::events(
            crate::EventBus::new(Arc::new(a)),
            crate::EventBus::new(Arc::new(b)),
        )
        .await;
    }

    /// Mosquitto with TLS: `mqtts://…?ca=FILE` passes the conformance suite; without the
    /// broker's certificate authority, or without TLS, no connection is made.
    #[tokio::test]
    async fn mqtt_bus_over_tls_passes_the_conformance_suite_and_checks_the_broker() {
        let Some((broker, ca)) = crate::testing::BrokerProcess::mosquitto_tls() else {
            crate::testing::skipped(
                "mqtt_bus over TLS: `mosquitto` is not on PATH (scripts/test installs it)",
            );
            return;
        };
        let port = broker.url("x").rsplit(':').next().unwrap().to_owned();
        let url = format!("mqtts://127.0.0.1:{port}?ca={}", ca.display());
        let a = crate::connect_url(&url, "tls-pub").await.unwrap();
        let b = crate::connect_url(
            &format!("mqtts://localhost:{port}?ca={}", ca.display()),
            "tls-sub",
        )
        .await
        .unwrap();
        a.wait_connected(Duration::from_secs(10)).await.unwrap();
        b.wait_connected(Duration::from_secs(10)).await.unwrap();
        crate::conformance::run_all(a.as_ref(), b.as_ref()).await;
        // The system's roots do not know the test's authority: no connection.
        for refused in [
            format!("mqtts://127.0.0.1:{port}"),
            format!("mqtt://127.0.0.1:{port}"),
        ] {
            let c = crate::connect_url(&refused, "tls-refused").await.unwrap();
            assert!(
                c.wait_connected(Duration::from_millis(1500)).await.is_err(),
                "{refused} connected"
            );
        }
    }

    /// Mosquitto killed and started again on the same port: the bus resumes by itself. A
    /// Mosquitto of the test's own (the shared one of `NUBO_TEST_MQTT_URL` is left alone).
    #[tokio::test]
    async fn mqtt_bus_resumes_after_the_broker_restarts() {
        let Some(mut broker) = crate::testing::BrokerProcess::mosquitto() else {
            crate::testing::skipped(
                "mqtt_bus broker restart: `mosquitto` is not on PATH (scripts/test installs it)",
            );
            return;
        };
        let url = broker.url("mqtt");
        let a = crate::connect_url(&url, "restart-pub").await.unwrap();
        let b = crate::connect_url(&url, "restart-sub").await.unwrap();
        a.wait_connected(Duration::from_secs(10)).await.unwrap();
        b.wait_connected(Duration::from_secs(10)).await.unwrap();
        crate::conformance::survives_restart(a.as_ref(), b.as_ref(), || async {
            broker.restart();
        })
        .await;
    }
}
