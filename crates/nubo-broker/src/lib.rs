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
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    /// Where it listens.
    pub addr: SocketAddr,
}

impl EmbeddedBroker {
    /// The URL clients use: `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}

fn config(listen: SocketAddr) -> Config {
    let server = ServerSettings {
        name: "nubo-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 16 * 1024 * 1024,
            max_inflight_count: 5_000,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
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

/// Starts the broker on `listen` (port 0: a free port) and waits until it accepts connections.
pub fn start(listen: SocketAddr) -> Result<EmbeddedBroker, BrokerError> {
    let bind_err = |reason: String| BrokerError::Bind {
        addr: listen,
        reason,
    };
    // Check the port is free (and pick one for port 0), since rumqttd reports bind errors only in its log.
    let probe = TcpListener::bind(listen).map_err(|e| bind_err(e.to_string()))?;
    let addr = probe.local_addr().map_err(|e| bind_err(e.to_string()))?;
    drop(probe);
    let cfg = config(addr);
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
    Ok(EmbeddedBroker { addr })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nubo_bus::{Bus, MqttBus, MqttConfig};

    #[tokio::test]
    async fn the_embedded_broker_passes_the_bus_conformance_suite() {
        let broker = super::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let a = MqttBus::connect(MqttConfig::from_url(&broker.url(), "a").unwrap());
        let b = MqttBus::connect(MqttConfig::from_url(&broker.url(), "b").unwrap());
        a.wait_connected(Duration::from_secs(10)).await.unwrap();
        b.wait_connected(Duration::from_secs(10)).await.unwrap();
        nubo_bus::conformance::run_all(&a, &b).await;
        nubo_bus::conformance::events(
            nubo_bus::EventBus::new(std::sync::Arc::new(a)),
            nubo_bus::EventBus::new(std::sync::Arc::new(b)),
        )
        .await;
    }

    #[test]
    fn a_taken_port_is_an_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = super::start(taken.local_addr().unwrap()).unwrap_err();
        assert!(err.to_string().contains("cannot listen"), "{err}");
    }
}
