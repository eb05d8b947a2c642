//! The message bus: topics with MQTT-style filters (`+`, `#`) behind the small [`Bus`] trait, an
//! in-process implementation ([`MemoryBus`]) and an MQTT one ([`MqttBus`], for the embedded broker or
//! an external one such as Mosquitto), and [`EventBus`], which speaks [`nubo_events::Event`]s and
//! skips (and logs) anything malformed. Every implementation passes the same conformance suite.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::sync::Arc;

use async_trait::async_trait;
use nubo_events::{Category, Event};
use tokio::sync::mpsc;

#[cfg(feature = "conformance")]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod conformance;
mod memory;
mod mqtt;

pub use memory::MemoryBus;
pub use mqtt::{MqttBus, MqttConfig};

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
}

/// Messages matching one filter, in publication order per publisher.
pub struct Subscription {
    rx: mpsc::Receiver<Message>,
}

impl Subscription {
    /// The next message; `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

/// How many messages a subscriber may lag before newer ones are dropped (and counted).
pub const SUBSCRIPTION_BUFFER: usize = 8192;

/// The message bus.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `payload` on `topic` (no wildcards).
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), BusError>;
    /// Receives every message whose topic matches `filter` (`+` one level, `#` the rest),
    /// published after this call returns.
    async fn subscribe(&self, filter: &str) -> Result<Subscription, BusError>;
    /// A short name for logs (`memory`, `mqtt`).
    fn kind(&self) -> &'static str;
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

/// Events over a [`Bus`].
#[derive(Clone)]
pub struct EventBus {
    bus: Arc<dyn Bus>,
}

/// A stream of decoded events.
pub struct EventStream {
    sub: Subscription,
}

impl EventStream {
    /// The next event; malformed or unknown messages are logged and skipped.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            let msg = self.sub.recv().await?;
            match Event::decode(&msg.payload) {
                Ok(e) => return Some(e),
                Err(e) => {
                    tracing::warn!(topic = %msg.topic, error = %e, "skipping a message that is not a Nubo event")
                }
            }
        }
    }
}

impl EventBus {
    /// Events over `bus`.
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        EventBus { bus }
    }

    /// The underlying bus.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// Publishes an event on its topic.
    pub async fn publish(&self, event: &Event) -> Result<(), BusError> {
        self.bus.publish(&event.topic(), event.encode()).await
    }

    /// Receives every event of a category.
    pub async fn subscribe(&self, category: Category) -> Result<EventStream, BusError> {
        Ok(EventStream {
            sub: self.bus.subscribe(&category.filter()).await?,
        })
    }

    /// Receives every event whose topic matches `filter`.
    pub async fn subscribe_filter(&self, filter: &str) -> Result<EventStream, BusError> {
        Ok(EventStream {
            sub: self.bus.subscribe(filter).await?,
        })
    }
}

#[cfg(test)]
mod tests {
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
}
