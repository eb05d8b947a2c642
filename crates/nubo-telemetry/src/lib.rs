//! Internal events, after vector's `internal_events`: each occurrence worth an operator's
//! attention is a type whose [`InternalEvent::emit`] writes the structured log line and updates
//! the Prometheus counter together, so that their names and labels never drift apart. The
//! counters are process-wide; [`register`] adds them to the registry `/metrics` serves.
//!
//! Emitting is cheap (a label lookup and an atomic add) and has no other effect, so pure code
//! (the controller's state machine) may emit too.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// The process's counters.
struct Counters {
    member_starts: Family<Labels, Counter>,
    member_start_failures: Family<Labels, Counter>,
    members_ended: Family<Labels, Counter>,
    scaling_decisions: Family<Labels, Counter>,
    member_faults: Family<Labels, Counter>,
    publish_failures: Family<Labels, Counter>,
    messages_dropped: Family<Labels, Counter>,
    statistics_lag: Gauge<f64, std::sync::atomic::AtomicU64>,
    faults_held: Gauge,
}

static COUNTERS: LazyLock<Counters> = LazyLock::new(|| Counters {
    member_starts: Family::default(),
    member_start_failures: Family::default(),
    members_ended: Family::default(),
    scaling_decisions: Family::default(),
    member_faults: Family::default(),
    publish_failures: Family::default(),
    messages_dropped: Family::default(),
    statistics_lag: Gauge::default(),
    faults_held: Gauge::default(),
});

/// Adds the internal events' counters to `registry` (once per registry).
pub fn register(registry: &mut Registry) {
    let c = &*COUNTERS;
    registry.register(
        "nubo_member_starts",
        "Members an IaaS provider started, by provider",
        c.member_starts.clone(),
    );
    registry.register(
        "nubo_member_start_failures",
        "Member starts an IaaS provider refused or failed, by provider",
        c.member_start_failures.clone(),
    );
    registry.register(
        "nubo_members_ended",
        "Members that ended, by how: drained (scaled down or undeployed gracefully), terminated (forced), failed_to_start (before becoming Active), lost (an Active member that died or was found faulty)",
        c.members_ended.clone(),
    );
    registry.register(
        "nubo_scaling_decisions",
        "Scaling decisions that act, by decision",
        c.scaling_decisions.clone(),
    );
    registry.register(
        "nubo_member_faults",
        "Active members found faulty, by kind (silent: no statistics; ports_closed)",
        c.member_faults.clone(),
    );
    registry.register(
        "nubo_publish_failures",
        "Events that could not be published on the bus, by category",
        c.publish_failures.clone(),
    );
    registry.register(
        "nubo_statistics_lag_seconds",
        "The largest delay, over the last decision round, between a health statistic's sending and the autoscaler taking it in",
        c.statistics_lag.clone(),
    );
    registry.register(
        "nubo_fault_detection_held",
        "1 while no member is found faulty because the statistics path lags or lost messages (a member's silence would be the platform's)",
        c.faults_held.clone(),
    );
    registry.register(
        "nubo_bus_messages_dropped",
        "Messages received from the bus and dropped, by reason",
        c.messages_dropped.clone(),
    );
}

/// The statistics path's state, as the autoscaler last saw it: the delay between a statistic's
/// sending and its taking in (ms), and whether fault detection is held meanwhile.
pub fn statistics_path(lag_ms: u64, faults_held: bool) {
    COUNTERS.statistics_lag.set(lag_ms as f64 / 1000.0);
    COUNTERS.faults_held.set(i64::from(faults_held));
}

/// Something that happened, logged and counted by [`InternalEvent::emit`].
pub trait InternalEvent: Sized {
    /// Writes the log line and counts it (unless [`muted`]).
    fn emit(self) {
        if !MUTED.with(std::cell::Cell::get) {
            self.record();
        }
    }
    /// Writes the log line and counts it, unconditionally.
    fn record(self);
}

thread_local! {
    static MUTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the internal events of this thread muted: for code that replays what already
/// happened (the controller rebuilding its state from its journal), whose events were emitted
/// the first time.
pub fn muted<R>(f: impl FnOnce() -> R) -> R {
    let before = MUTED.with(|m| m.replace(true));
    let out = f();
    MUTED.with(|m| m.set(before));
    out
}

fn count(family: &Family<Labels, Counter>, labels: Labels) {
    family.get_or_create(&labels).inc();
}

/// An IaaS provider started a member.
#[derive(Debug)]
pub struct MemberStarted<'a> {
    /// Member.
    pub member_id: &'a str,
    /// The provider (`local`, `mock`, …).
    pub provider: &'a str,
    /// Its address.
    pub ip: &'a str,
}

impl InternalEvent for MemberStarted<'_> {
    fn record(self) {
        tracing::info!(member = %self.member_id, provider = %self.provider, ip = %self.ip, "member started");
        count(
            &COUNTERS.member_starts,
            vec![("provider", self.provider.to_owned())],
        );
    }
}

/// An IaaS provider could not start a member.
#[derive(Debug)]
pub struct MemberStartFailed<'a> {
    /// Member.
    pub member_id: &'a str,
    /// The provider.
    pub provider: &'a str,
    /// Why.
    pub error: &'a str,
}

impl InternalEvent for MemberStartFailed<'_> {
    fn record(self) {
        tracing::warn!(member = %self.member_id, provider = %self.provider, error = %self.error, "member start failed");
        count(
            &COUNTERS.member_start_failures,
            vec![("provider", self.provider.to_owned())],
        );
    }
}

/// How a member ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Drained by its agent (a scale-down, a graceful undeploy).
    Drained,
    /// Terminated on purpose without a drain (a forced undeploy, a member above the maximum).
    Terminated,
    /// It ended before becoming Active (retried with backoff).
    FailedToStart,
    /// An Active member died, or was found faulty: it is replaced.
    Lost,
}

impl Ending {
    fn label(self) -> &'static str {
        match self {
            Ending::Drained => "drained",
            Ending::Terminated => "terminated",
            Ending::FailedToStart => "failed_to_start",
            Ending::Lost => "lost",
        }
    }
}

/// A member ended.
#[derive(Debug)]
pub struct MemberEnded<'a> {
    /// Member.
    pub member_id: &'a str,
    /// How.
    pub how: Ending,
    /// Why, when it failed.
    pub reason: Option<&'a str>,
    /// For one that failed to start: failures in a row, and the delay before the next try.
    pub retry: Option<(u32, u64)>,
}

impl InternalEvent for MemberEnded<'_> {
    fn record(self) {
        let how = self.how.label();
        match (self.how, self.retry) {
            (Ending::FailedToStart, Some((failures, delay))) => {
                tracing::warn!(member = %self.member_id, how, reason = ?self.reason, failures, retry_in_ms = delay, "member failed before becoming active")
            }
            (Ending::Lost | Ending::FailedToStart, _) => {
                tracing::warn!(member = %self.member_id, how, reason = ?self.reason, "member lost: it is replaced")
            }
            _ => tracing::info!(member = %self.member_id, how, "member ended"),
        }
        count(&COUNTERS.members_ended, vec![("how", how.to_owned())]);
    }
}

/// The autoscaler decided to act on a cluster instance.
#[derive(Debug)]
pub struct ScalingDecision<'a> {
    /// Cluster.
    pub cluster_id: &'a str,
    /// Cluster instance.
    pub instance_id: &'a str,
    /// `scale_up`, `scale_down` or `at_max`.
    pub decision: &'static str,
    /// Members the factors require.
    pub required: u32,
    /// Active members.
    pub active: u32,
    /// Members starting.
    pub starting: u32,
}

impl InternalEvent for ScalingDecision<'_> {
    fn record(self) {
        tracing::info!(cluster = %self.cluster_id, instance = %self.instance_id, decision = self.decision, required = self.required, active = self.active, starting = self.starting, "scaling decision");
        count(
            &COUNTERS.scaling_decisions,
            vec![("decision", self.decision.to_owned())],
        );
    }
}

/// The event processor found an Active member faulty.
#[derive(Debug)]
pub struct MemberFault<'a> {
    /// Member.
    pub member_id: &'a str,
    /// `silent` (no statistics within the fault timeout) or `ports_closed`.
    pub kind: &'static str,
    /// The detail.
    pub reason: &'a str,
}

impl InternalEvent for MemberFault<'_> {
    fn record(self) {
        tracing::warn!(member = %self.member_id, kind = self.kind, reason = %self.reason, "member fault");
        count(
            &COUNTERS.member_faults,
            vec![("kind", self.kind.to_owned())],
        );
    }
}

/// An event could not be published on the bus.
#[derive(Debug)]
pub struct PublishFailed<'a> {
    /// The event's name.
    pub event: &'static str,
    /// Its category (topic level).
    pub category: &'static str,
    /// The bus's error.
    pub error: &'a str,
}

impl InternalEvent for PublishFailed<'_> {
    fn record(self) {
        tracing::warn!(event = self.event, category = self.category, error = %self.error, "cannot publish");
        count(
            &COUNTERS.publish_failures,
            vec![("category", self.category.to_owned())],
        );
    }
}

/// A message from the bus was dropped before any component acted on it.
#[derive(Debug)]
pub struct MessageDropped<'a> {
    /// The topic it came on.
    pub topic: &'a str,
    /// `malformed` (not a Nubo event), and the reasons later checks add.
    pub reason: &'static str,
    /// The detail.
    pub detail: &'a str,
}

/// Drops come in bursts (a subscriber thousands of messages behind): each is counted, but one
/// log line a second says how many there were.
static DROPS_LOGGED: std::sync::Mutex<(Option<std::time::Instant>, u64)> =
    std::sync::Mutex::new((None, 0));

impl InternalEvent for MessageDropped<'_> {
    fn record(self) {
        count(
            &COUNTERS.messages_dropped,
            vec![("reason", self.reason.to_owned())],
        );
        let Ok(mut last) = DROPS_LOGGED.lock() else {
            return;
        };
        let (logged, since) = &mut *last;
        *since += 1;
        if logged.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) {
            return;
        }
        tracing::warn!(topic = %self.topic, reason = self.reason, detail = %self.detail, dropped = *since, "messages dropped (this one, and the others since the last such line)");
        *logged = Some(std::time::Instant::now());
        *since = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition() -> String {
        let mut r = Registry::default();
        register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn an_emitted_event_is_counted_under_its_label() {
        MemberEnded {
            member_id: "a.web.php-1",
            how: Ending::Lost,
            reason: Some("the agent exited"),
            retry: None,
        }
        .emit();
        MemberFault {
            member_id: "a.web.php-1",
            kind: "silent",
            reason: "no statistics for 5 s",
        }
        .emit();
        let text = exposition();
        assert!(
            text.contains("nubo_members_ended_total{how=\"lost\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("nubo_member_faults_total{kind=\"silent\"} 1"),
            "{text}"
        );
    }
}
