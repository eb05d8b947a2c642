//! A node supervisor in another process (`nubo node`), reached through the bus: the `local`
//! provider of a controller that does not run members itself. Starts and terminates are commands
//! on the `node` topic; the node answers on its `supervisor` topic and publishes its inventory.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nubo_bus::EventBus;
use nubo_events::{Category, Event};
use tokio::sync::{oneshot, watch};

use nubo_iaas::{IaasError, MemberSpec, Provider, StartedMember};

/// How long a start may take before the node is deemed unreachable.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `running` waits for the node's first inventory.
pub const INVENTORY_WAIT: Duration = Duration::from_secs(5);

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Result<StartedMember, IaasError>>>>>;

/// The node supervisor named `node`, through the bus.
pub struct NodeProvider {
    node: String,
    /// The controller's lease token sent with every command (0: none).
    fence: Arc<AtomicU64>,
    events: EventBus,
    pending: Pending,
    inventory: watch::Receiver<Option<Vec<String>>>,
    /// Members asked to terminate whose exit the node has not reported yet: the command is sent
    /// again with each of the node's inventories (every 2 s) until it does, so that a command
    /// lost with a broker's restart is not lost for good (a node asked to terminate a member it
    /// does not run reports it exited).
    terminating: Arc<Mutex<BTreeSet<String>>>,
}

fn terminate_command(node: &str, member_id: &str, fence: &AtomicU64) -> Event {
    Event::NodeTerminateMember {
        node: node.to_owned(),
        member_id: member_id.to_owned(),
        fence: Some(fence.load(Ordering::Relaxed)).filter(|t| *t > 0),
    }
}

impl NodeProvider {
    /// Follows node `node`'s answers and inventory on the bus, and asks for its inventory.
    pub async fn connect(events: EventBus, node: &str) -> Result<Arc<Self>, nubo_bus::BusError> {
        let mut replies = events.subscribe(Category::Supervisor).await?;
        let pending: Pending = Arc::default();
        let (inventory_tx, inventory) = watch::channel(None);
        let p = pending.clone();
        let me = node.to_owned();
        let fence = Arc::new(AtomicU64::new(0));
        let terminating: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let (bus, f, t) = (events.clone(), fence.clone(), terminating.clone());
        tokio::spawn(async move {
            while let Some(e) = replies.recv().await {
                let (member_id, answer) = match e {
                    Event::MemberProcessExited { ref member_id, .. } => {
                        if let Ok(mut t) = t.lock() {
                            t.remove(member_id);
                        }
                        continue;
                    }
                    Event::NodeMemberStarted {
                        node,
                        member_id,
                        ip,
                        ports,
                    } if node == me => (member_id, Ok(StartedMember { ip, ports })),
                    Event::NodeMemberStartFailed {
                        node,
                        member_id,
                        reason,
                    } if node == me => (member_id, Err(IaasError::Failed(reason))),
                    Event::NodeInventory { node, members, .. } if node == me => {
                        let _ = inventory_tx.send(Some(members));
                        let again: Vec<String> = t
                            .lock()
                            .map(|t| t.iter().cloned().collect())
                            .unwrap_or_default();
                        for m in again {
                            tracing::debug!(node = %me, member = %m, "terminate again: no exit reported yet");
                            let _ = bus.publish(&terminate_command(&me, &m, &f)).await;
                        }
                        continue;
                    }
                    _ => continue,
                };
                let waiter = p.lock().ok().and_then(|mut p| p.remove(&member_id));
                if let Some(w) = waiter {
                    let _ = w.send(answer);
                }
            }
        });
        let provider = Arc::new(NodeProvider {
            node: node.to_owned(),
            fence,
            events,
            pending,
            inventory,
            terminating,
        });
        provider.publish(Event::NodeInventoryRequest {}).await;
        Ok(provider)
    }

    /// Sends `token` (the controller lease's) with every command from now on: the node refuses
    /// commands of an older leader.
    pub fn set_fence(&self, token: u64) {
        self.fence.store(token, Ordering::Relaxed);
    }

    fn fence(&self) -> Option<u64> {
        Some(self.fence.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    async fn publish(&self, e: Event) {
        if let Err(err) = self.events.publish(&e).await {
            tracing::warn!(node = %self.node, event = e.name(), error = %err, "cannot reach the node");
        }
    }
}

#[async_trait]
impl Provider for NodeProvider {
    async fn start(&self, req: MemberSpec) -> Result<StartedMember, IaasError> {
        self.start_many(vec![req])
            .await
            .pop()
            .unwrap_or_else(|| Err(IaasError::Failed("no answer".into())))
    }

    /// Every start command goes at once; then the answers are awaited (the node starts them as
    /// they come).
    async fn start_many(&self, specs: Vec<MemberSpec>) -> Vec<Result<StartedMember, IaasError>> {
        let mut waiting = Vec::with_capacity(specs.len());
        for req in specs {
            let member_id = req.member.member_id.clone();
            let (tx, rx) = oneshot::channel();
            if let Ok(mut p) = self.pending.lock() {
                p.insert(member_id.clone(), tx);
            }
            self.publish(Event::NodeStartMember {
                node: self.node.clone(),
                member: req.member,
                image: req.image,
                ports: req.ports,
                payload: req.parameters,
                bus_url: req.bus_url,
                fence: self.fence(),
                run_as: req.run_as,
            })
            .await;
            waiting.push((member_id, rx));
        }
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let mut answers = Vec::with_capacity(waiting.len());
        for (member_id, rx) in waiting {
            answers.push(match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(answer)) => answer,
                _ => {
                    if let Ok(mut p) = self.pending.lock() {
                        p.remove(&member_id);
                    }
                    // It may have started and its answer been lost (a broker restarting): it is
                    // terminated, so that nothing runs on the node that the controller does not
                    // know (a node asked about a member it does not run reports it exited).
                    let _ = self.terminate(&member_id).await;
                    Err(IaasError::Failed(format!(
                        "node `{}` did not answer within {} s: is `nubo node --name {}` running and on the same bus?",
                        self.node,
                        START_TIMEOUT.as_secs(),
                        self.node
                    )))
                }
            });
        }
        answers
    }

    async fn terminate(&self, member_id: &str) -> Result<(), IaasError> {
        if let Ok(mut t) = self.terminating.lock() {
            t.insert(member_id.to_owned());
        }
        self.publish(terminate_command(&self.node, member_id, &self.fence))
            .await;
        Ok(())
    }

    async fn running(&self) -> Result<Vec<String>, IaasError> {
        let mut inventory = self.inventory.clone();
        let got = tokio::time::timeout(INVENTORY_WAIT, inventory.wait_for(Option::is_some)).await;
        match got {
            Ok(Ok(list)) => Ok(list.clone().unwrap_or_default()),
            _ => Err(IaasError::Failed(format!(
                "node `{}` has not reported its members within {} s",
                self.node,
                INVENTORY_WAIT.as_secs()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use nubo_bus::{EventBus, MemoryBus};
    use nubo_events::{Category, Event};
    use nubo_iaas::Provider;

    use super::NodeProvider;

    /// A terminate command lost (a broker restarting) is sent again with each inventory of the
    /// node, until the node reports the member's exit.
    #[tokio::test]
    async fn a_terminate_is_sent_again_until_the_node_reports_the_exit() {
        let events = EventBus::new(Arc::new(MemoryBus::new()));
        let mut commands = events.subscribe(Category::Node).await.unwrap();
        let node = NodeProvider::connect(events.clone(), "n1").await.unwrap();
        let mut next_terminate = async || loop {
            match tokio::time::timeout(Duration::from_millis(500), commands.recv()).await {
                Ok(Some(Event::NodeTerminateMember { member_id, .. })) => return Some(member_id),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        };
        node.terminate("m1").await.unwrap();
        assert_eq!(next_terminate().await.as_deref(), Some("m1"));
        let inventory = Event::NodeInventory {
            node: "n1".into(),
            members: vec!["m1".into()],
            at_ms: 0,
        };
        events.publish(&inventory).await.unwrap();
        assert_eq!(
            next_terminate().await.as_deref(),
            Some("m1"),
            "sent again: no exit reported yet"
        );
        events
            .publish(&Event::MemberProcessExited {
                member_id: "m1".into(),
                code: None,
                signal: Some(15),
                reason: "terminated".into(),
            })
            .await
            .unwrap();
        events.publish(&inventory).await.unwrap();
        assert_eq!(next_terminate().await, None, "the exit ends it");
    }
}
