//! The in-process bus: subscribers are channels; publishing fans out to the matching ones.

use std::sync::Mutex;

use async_trait::async_trait;

use crate::{Bus, BusError, Message, Sink, Subscription, topic_matches, valid_filter, valid_topic};

/// A bus inside one process.
#[derive(Default)]
pub struct MemoryBus {
    subscribers: Mutex<Vec<(String, Sink)>>,
}

impl MemoryBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), BusError> {
        if !valid_topic(topic) {
            return Err(BusError::InvalidTopic(topic.to_owned()));
        }
        let mut subs = self
            .subscribers
            .lock()
            .map_err(|_| BusError::Unavailable("poisoned".into()))?;
        subs.retain(|(_, tx)| !tx.is_closed());
        for (filter, tx) in subs.iter() {
            if topic_matches(filter, topic) {
                let msg = Message {
                    topic: topic.to_owned(),
                    payload: payload.clone(),
                };
                let _ = tx.deliver(msg);
            }
        }
        Ok(())
    }

    async fn subscribe(&self, filter: &str) -> Result<Subscription, BusError> {
        if !valid_filter(filter) {
            return Err(BusError::InvalidTopic(filter.to_owned()));
        }
        let (tx, sub) = Sink::pair(filter);
        self.subscribers
            .lock()
            .map_err(|_| BusError::Unavailable("poisoned".into()))?
            .push((filter.to_owned(), tx));
        Ok(sub)
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_bus_passes_the_conformance_suite() {
        let bus = std::sync::Arc::new(super::MemoryBus::new());
        crate::conformance::run_all(bus.as_ref(), bus.as_ref()).await;
        let events = crate::EventBus::new(bus);
        crate::conformance::events(events.clone(), events).await;
    }
}
