//! Member lifecycle: agents' reports and exits, the transitions they allow, members gone
//! (replaced, with backoff when they never became Active), and the timeouts of each status.

use super::*;

impl ControllerState {
    pub(super) fn event(&mut self, now_ms: u64, e: Event, out: &mut Vec<Action>) {
        match e {
            Event::InstanceStarted(r) => self.advance(now_ms, &r, MemberStatus::Starting, out),
            Event::InstanceActivated(r) => self.advance(now_ms, &r, MemberStatus::Active, out),
            Event::InstanceMaintenanceMode(r) => {
                self.advance(now_ms, &r, MemberStatus::InMaintenance, out)
            }
            Event::InstanceReadyToShutdown(r) => {
                self.advance(now_ms, &r, MemberStatus::ReadyToShutdown, out);
                if let Some(provider) = self.provider_of(&r.member_id) {
                    out.push(Action::Terminate {
                        member_id: r.member_id,
                        provider,
                    });
                }
            }
            Event::InstanceFailed { instance, reason } => {
                if let Some(m) = self.member_mut(&instance.member_id) {
                    m.failure = Some(reason.clone());
                }
                if let Some(provider) = self.provider_of(&instance.member_id) {
                    out.push(Action::Terminate {
                        member_id: instance.member_id,
                        provider,
                    });
                }
            }
            Event::InstanceHealth {
                instance,
                healthy,
                reason,
            } => {
                if let Some(m) = self.member_mut(&instance.member_id)
                    && m.status == MemberStatus::Active
                    && healthy == m.properties.contains_key(UNHEALTHY_PROPERTY)
                {
                    if healthy {
                        m.properties.remove(UNHEALTHY_PROPERTY);
                        tracing::info!(member = %instance.member_id, "healthy again: routed to again");
                    } else {
                        let why = reason.unwrap_or_else(|| "unhealthy".to_owned());
                        tracing::warn!(member = %instance.member_id, reason = %why, "unhealthy: routed to no more");
                        m.properties.insert(UNHEALTHY_PROPERTY.to_owned(), why);
                    }
                    let change = nubo_events::MemberChange { member: m.clone() };
                    out.push(Action::Publish(Event::MemberHealthChanged(change)));
                    out.push(Action::Persist);
                }
            }
            Event::InstanceArtifactUpdated {
                instance,
                commit,
                error,
            } => self.artifact_updated(&instance, commit, error, out),
            Event::MemberProcessExited {
                member_id,
                code,
                signal,
                reason,
            } => {
                let detail = match (code, signal) {
                    (Some(c), _) => format!("{reason} (exit code {c})"),
                    (None, Some(s)) => format!("{reason} (signal {s})"),
                    _ => reason,
                };
                self.member_gone(now_ms, &member_id, Some(detail), out);
            }
            _ => {}
        }
    }

    /// Moves a member forward to `target`, through the statuses in between; refuses (and logs)
    /// transitions the lifecycle does not allow.
    pub(super) fn advance(
        &mut self,
        now_ms: u64,
        r: &InstanceRef,
        target: MemberStatus,
        out: &mut Vec<Action>,
    ) {
        use MemberStatus::*;
        let Some(m) = self.member_mut(&r.member_id) else {
            tracing::debug!(member = %r.member_id, "status report for an unknown member: ignored");
            return;
        };
        let path: &[MemberStatus] = match (m.status, target) {
            (Created, Starting) => &[Initialized, Starting],
            (Created, Active) => &[Initialized, Starting, Active],
            (Initialized, Active) => &[Starting, Active],
            _ => std::slice::from_ref(match target {
                Starting => &Starting,
                Active => &Active,
                InMaintenance => &InMaintenance,
                ReadyToShutdown => &ReadyToShutdown,
                _ => return,
            }),
        };
        let mut changed = false;
        for next in path {
            if m.status == *next {
                continue;
            }
            if !m.status.can_become(*next) {
                tracing::warn!(member = %m.member_id, from = m.status.as_str(), to = next.as_str(), "illegal member transition refused");
                return;
            }
            m.status = *next;
            changed = true;
            let change = MemberChange { member: m.clone() };
            out.push(Action::Publish(match next {
                Initialized => Event::MemberInitialized(change),
                Starting => Event::MemberStarted(change),
                Active => Event::MemberActivated(change),
                InMaintenance => Event::MemberMaintenanceMode(change),
                _ => Event::MemberReadyToShutdown(change),
            }));
        }
        if changed {
            if target == Active {
                m.failure = None;
                let key = InstanceKey::new(&m.cluster_id, &m.cluster_instance_id);
                let app = m.application_id.clone();
                let part = partition_key(&m.network_partition_id, &m.partition_id);
                if let Some(d) = self.deployments.get_mut(&app) {
                    d.backoff.remove(&key);
                    // The partition works.
                    d.failing_partitions.remove(&part);
                }
            }
            self.since_ms.insert(r.member_id.clone(), now_ms);
            out.push(Action::Persist);
        }
    }

    /// A member's process is gone (or never started): it is Terminated and leaves the topology.
    pub(super) fn member_gone(
        &mut self,
        now_ms: u64,
        member_id: &str,
        reason: Option<String>,
        out: &mut Vec<Action>,
    ) {
        let Some(cluster) = self
            .topology
            .clusters
            .values_mut()
            .find(|c| c.members.contains_key(member_id))
        else {
            return;
        };
        let Some(mut m) = cluster.members.remove(member_id) else {
            return;
        };
        self.meter_ended(now_ms, &m);
        let prev = m.status;
        let was_active = matches!(
            prev,
            MemberStatus::Active | MemberStatus::InMaintenance | MemberStatus::ReadyToShutdown
        );
        m.status = MemberStatus::Terminated;
        if m.failure.is_none() && prev != MemberStatus::ReadyToShutdown {
            m.failure = reason.clone();
        }
        self.since_ms.remove(member_id);
        let undeploying = self
            .deployments
            .get(&m.application_id)
            .is_some_and(|d| d.status == DeploymentStatus::Undeploying);
        let mut retry = None;
        if !was_active
            && !undeploying
            && let Some(d) = self.deployments.get_mut(&m.application_id)
        {
            let b = d
                .backoff
                .entry(InstanceKey::new(&m.cluster_id, &m.cluster_instance_id))
                .or_default();
            // The delay doubles per round of retries, not per member: members that fail
            // while a delay already runs (a round started together fails together, a restart
            // finds many gone at once) wait for that delay, and do not lengthen it.
            if b.not_before_ms <= now_ms {
                b.failures += 1;
                let delay = FIRST_BACKOFF_MS
                    .saturating_mul(1 << (b.failures - 1).min(16))
                    .min(MAX_BACKOFF_MS);
                b.not_before_ms = now_ms + delay;
            }
            let delay = b.not_before_ms - now_ms;
            b.last_reason = m.failure.clone().or(reason.clone());
            retry = Some((b.failures, delay));
            let f = d
                .failing_partitions
                .entry(partition_key(&m.network_partition_id, &m.partition_id))
                .or_default();
            f.in_a_row += 1;
            f.last_ms = now_ms;
            if f.in_a_row == PARTITION_FAILURES {
                tracing::warn!(network_partition = %m.network_partition_id, partition = %m.partition_id, "members keep failing to start in this partition: new ones go to the others for a while");
            }
        }
        let how = if prev == MemberStatus::ReadyToShutdown {
            Ending::Drained
        } else if undeploying || m.failure.as_deref() == Some(SCALED_DOWN) {
            Ending::Terminated
        } else if !was_active {
            Ending::FailedToStart
        } else {
            Ending::Lost
        };
        MemberEnded {
            member_id,
            how,
            reason: m.failure.as_deref().or(reason.as_deref()),
            retry,
        }
        .emit();
        out.push(Action::Publish(Event::MemberTerminated(MemberChange {
            member: m,
        })));
        out.push(Action::Persist);
    }

    pub(super) fn timeouts(&mut self, now_ms: u64, app_id: &str, out: &mut Vec<Action>) {
        let Some(d) = self.deployments.get(app_id) else {
            return;
        };
        let undeploying = d.status == DeploymentStatus::Undeploying;
        // One pass over the members by reference; only those with something due are looked at
        // again (a tick costs a read of every member, not a copy).
        let mut due: Vec<(String, MemberStatus, bool, bool)> = Vec::new();
        for (m, limits) in d
            .plan
            .clusters
            .iter()
            .filter_map(|c| {
                let limits = c.timeouts.or(self.timeouts);
                let activation_ms = limits
                    .activation
                    .map_or(ACTIVATION_TIMEOUT_MS, |s| s * 1000);
                let drain_ms = limits.drain.map_or(DRAIN_TIMEOUT_MS, |s| s * 1000);
                self.topology
                    .clusters
                    .get(&c.cluster_id)
                    .map(|cl| (cl, (activation_ms, drain_ms)))
            })
            .flat_map(|(c, limits)| c.members.values().map(move |m| (m, limits)))
        {
            let (activation_ms, drain_ms) = limits;
            // Most members: Active, nothing asked of them. No lookup at all.
            if m.status == MemberStatus::Active
                && !undeploying
                && m.failure.is_none()
                && self.cleanup_sent_ms.is_empty()
            {
                continue;
            }
            let since = self.since_ms.get(&m.member_id).copied().unwrap_or(now_ms);
            let late = match m.status {
                MemberStatus::InMaintenance | MemberStatus::ReadyToShutdown => {
                    now_ms.saturating_sub(since) > drain_ms
                }
                MemberStatus::Created | MemberStatus::Initialized | MemberStatus::Starting => {
                    now_ms.saturating_sub(since) > activation_ms
                }
                // A graceful clean-up (undeploy or scale-down) that got no answer from the agent.
                MemberStatus::Active => {
                    (undeploying || m.failure.is_some()) && now_ms.saturating_sub(since) > drain_ms
                }
                MemberStatus::Terminated => false,
            };
            let unanswered = m.status == MemberStatus::Active
                && (undeploying || m.failure.is_some())
                && self.since_ms.contains_key(&m.member_id);
            if late || unanswered || self.cleanup_sent_ms.contains_key(&m.member_id) {
                due.push((m.member_id.clone(), m.status, late, unanswered));
            }
        }
        for (member_id, status, late, unanswered) in due {
            let since = self.since_ms.get(&member_id).copied().unwrap_or(now_ms);
            if unanswered && !late {
                let sent = self.cleanup_sent_ms.get(&member_id).copied().unwrap_or(0);
                if now_ms.saturating_sub(sent.max(since)) >= CLEANUP_RESEND_MS {
                    self.cleanup_sent_ms.insert(member_id.clone(), now_ms);
                    out.push(Action::Publish(Event::InstanceCleanupMember {
                        member_id: member_id.clone(),
                    }));
                }
                continue;
            }
            self.cleanup_sent_ms.remove(&member_id);
            if late && let Some(provider) = self.provider_of(&member_id) {
                tracing::warn!(member = %member_id, status = status.as_str(), "member timed out in its status: terminating it");
                if let Some(mm) = self.member_mut(&member_id) {
                    mm.failure
                        .get_or_insert_with(|| format!("timed out in status {}", status.as_str()));
                }
                self.since_ms.insert(member_id.clone(), now_ms);
                out.push(Action::Terminate {
                    member_id,
                    provider,
                });
            }
        }
    }
}
