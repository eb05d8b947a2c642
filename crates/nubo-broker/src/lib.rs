//! The MQTT broker embedded in the all-in-one server: rumqttd on a loopback port, so agents in
//! other processes reach the bus with nothing installed. Pointing Nubo at an external broker
//! instead is a URL (`mqtt://host:port`).
//!
//! **Invariant:** this is the only crate that knows rumqttd (and its older dependency stack).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The port is taken or cannot be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// A running embedded broker. It lives as long as the process (rumqttd cannot be stopped).
#[derive(Clone)]
pub struct EmbeddedBroker {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The user name, and the password the URL carries (the first accepted).
    credentials: Option<(String, String)>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("addr", &self.addr)
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .finish()
    }
}

impl EmbeddedBroker {
    /// The URL clients use: `mqtt://[USER:PASSWORD@]127.0.0.1:PORT` (a secret, when it holds a
    /// password: show it through `nubo_bus::redact_url`).
    pub fn url(&self) -> String {
        match &self.credentials {
            Some((u, p)) => format!("mqtt://{u}:{p}@{}", self.addr),
            None => format!("mqtt://{}", self.addr),
        }
    }
}

/// Who may connect: a user name and the passwords accepted for it (during a rotation, the new
/// one and the previous one).
#[derive(Clone)]
struct Accepted {
    user: String,
    passwords: Vec<String>,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn config(listen: SocketAddr, accepted: Option<Accepted>) -> Config {
    let server = ServerSettings {
        name: "nubo-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 16 * 1024 * 1024,
            max_inflight_count: 5_000,
            // With credentials, a connection without them (or with others) is refused. There is
            // no per-topic access control: whoever connects may publish and subscribe anywhere,
            // which is why every message carries proof of its sender (nubo-bus).
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let mut server = server;
    if let Some(a) = accepted {
        server
            .connections
            .set_auth_handler(move |_client, user: String, password: String| {
                let ok = constant_time_eq(user.as_bytes(), a.user.as_bytes())
                    & a.passwords.iter().fold(false, |any, p| {
                        any | constant_time_eq(password.as_bytes(), p.as_bytes())
                    });
                std::future::ready(ok)
            });
    }
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 10_000,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 8,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("nubo-v4".to_owned(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

/// Starts the broker on `listen` (port 0: a free port), open to anyone who connects, and waits
/// until it accepts connections (tests and benchmarks; the server gives credentials).
pub fn start(listen: SocketAddr) -> Result<EmbeddedBroker, BrokerError> {
    start_with_credentials(listen, None)
}

/// Starts the broker on `listen`, accepting only clients that connect with `credentials`
/// (user name, password).
pub fn start_with_credentials(
    listen: SocketAddr,
    credentials: Option<(String, String)>,
) -> Result<EmbeddedBroker, BrokerError> {
    let passwords = credentials.map(|(user, password)| (user, vec![password]));
    start_with_passwords(listen, passwords)
}

/// Starts the broker on `listen`, accepting only clients that connect as the user given with one
/// of its passwords (the first is the one [`EmbeddedBroker::url`] carries; a second one is the
/// previous password, during a rotation).
pub fn start_with_passwords(
    listen: SocketAddr,
    passwords: Option<(String, Vec<String>)>,
) -> Result<EmbeddedBroker, BrokerError> {
    let credentials = passwords
        .as_ref()
        .and_then(|(u, ps)| ps.first().map(|p| (u.clone(), p.clone())));
    let accepted = passwords.map(|(user, passwords)| Accepted { user, passwords });
    let bind_err = |reason: String| BrokerError::Bind {
        addr: listen,
        reason,
    };
    // Check the port is free (and pick one for port 0), since rumqttd reports bind errors only in its log.
    let probe = TcpListener::bind(listen).map_err(|e| bind_err(e.to_string()))?;
    let addr = probe.local_addr().map_err(|e| bind_err(e.to_string()))?;
    drop(probe);
    let cfg = config(addr, accepted);
    std::thread::Builder::new()
        .name("nubo-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(cfg);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "the embedded MQTT broker stopped");
            }
        })
        .map_err(|e| bind_err(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(bind_err(
                "the broker did not start listening within 10 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::info!(%addr, "embedded MQTT broker listening");
    Ok(EmbeddedBroker { addr, credentials })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nubo_bus::{Bus, MqttBus, MqttConfig};

    #[tokio::test]
    async fn the_embedded_broker_passes_the_bus_conformance_suite() {
        let broker = super::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let a = MqttBus::connect(MqttConfig::from_url(&broker.url(), "a").unwrap()).unwrap();
        let b = MqttBus::connect(MqttConfig::from_url(&broker.url(), "b").unwrap()).unwrap();
        a.wait_connected(Duration::from_secs(10)).await.unwrap();
        b.wait_connected(Duration::from_secs(10)).await.unwrap();
        nubo_bus::conformance::run_all(&a, &b).await;
        nubo_bus::conformance::events(
            nubo_bus::EventBus::new(std::sync::Arc::new(a)),
            nubo_bus::EventBus::new(std::sync::Arc::new(b)),
        )
        .await;
    }

    #[tokio::test]
    async fn with_credentials_only_clients_that_hold_them_connect() {
        let broker = super::start_with_credentials(
            "127.0.0.1:0".parse().unwrap(),
            Some(("nubo".into(), "s3cret".into())),
        )
        .unwrap();
        assert!(broker.url().contains("nubo:s3cret@"));
        assert!(!format!("{broker:?}").contains("s3cret"));
        let good = MqttBus::connect(MqttConfig::from_url(&broker.url(), "good").unwrap()).unwrap();
        good.wait_connected(Duration::from_secs(10)).await.unwrap();
        let anonymous = format!("mqtt://{}", broker.addr);
        let wrong = format!("mqtt://nubo:guess@{}", broker.addr);
        let other_user = format!("mqtt://admin:s3cret@{}", broker.addr);
        for url in [anonymous, wrong, other_user] {
            let bad = MqttBus::connect(MqttConfig::from_url(&url, "bad").unwrap()).unwrap();
            assert!(
                bad.wait_connected(Duration::from_millis(1500))
                    .await
                    .is_err(),
                "{url} connected"
            );
        }
    }

    /// During a rotation both the new password and the previous one connect.
    #[tokio::test]
    async fn while_the_password_rotates_both_passwords_connect() {
        let broker = super::start_with_passwords(
            "127.0.0.1:0".parse().unwrap(),
            Some(("nubo".into(), vec!["new".into(), "old".into()])),
        )
        .unwrap();
        assert!(
            broker.url().contains("nubo:new@"),
            "the URL carries the new one"
        );
        for (password, ok) in [("new", true), ("old", true), ("older", false)] {
            let url = format!("mqtt://nubo:{password}@{}", broker.addr);
            let c = MqttBus::connect(MqttConfig::from_url(&url, "rot").unwrap()).unwrap();
            let connected = c.wait_connected(Duration::from_millis(1500)).await.is_ok();
            assert_eq!(connected, ok, "{password}");
        }
    }

    #[test]
    fn a_taken_port_is_an_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = super::start(taken.local_addr().unwrap()).unwrap_err();
        assert!(err.to_string().contains("cannot listen"), "{err}");
    }
}
