//! A node supervisor in another process (`nubo node`), reached through the bus: the `local`
//! provider of a controller that does not run members itself. Starts and terminates are commands
//! on the `node` topic; the node answers on its `supervisor` topic and publishes its inventory.

use std::collections::HashMap;
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
    fence: std::sync::atomic::AtomicU64,
    events: EventBus,
    pending: Pending,
    inventory: watch::Receiver<Option<Vec<String>>>,
}

impl NodeProvider {
    /// Follows node `node`'s answers and inventory on the bus, and asks for its inventory.
    pub async fn connect(events: EventBus, node: &str) -> Result<Arc<Self>, nubo_bus::BusError> {
        let mut replies = events.subscribe(Category::Supervisor).await?;
        let pending: Pending = Arc::default();
        let (inventory_tx, inventory) = watch::channel(None);
        let p = pending.clone();
        let me = node.to_owned();
        tokio::spawn(async move {
            while let Some(e) = replies.recv().await {
                let (member_id, answer) = match e {
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
            fence: std::sync::atomic::AtomicU64::new(0),
            events,
            pending,
            inventory,
        });
        provider.publish(Event::NodeInventoryRequest {}).await;
        Ok(provider)
    }

    /// Sends `token` (the controller lease's) with every command from now on: the node refuses
    /// commands of an older leader.
    pub fn set_fence(&self, token: u64) {
        self.fence
            .store(token, std::sync::atomic::Ordering::Relaxed);
    }

    fn fence(&self) -> Option<u64> {
        Some(self.fence.load(std::sync::atomic::Ordering::Relaxed)).filter(|t| *t > 0)
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
        self.publish(Event::NodeTerminateMember {
            node: self.node.clone(),
            member_id: member_id.to_owned(),
            fence: self.fence(),
        })
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
