//! The event processor's windows: samples of requests in flight per cluster and load balancer,
//! of memory and load per member, kept contiguous so that a window is a slice; or the predictions
//! an event processor in another process sent. Pure.

use super::*;

pub(super) type Fast = foldhash::fast::RandomState;

/// What a figure of requests in flight is about, within a cluster: one cluster instance (the
/// load balancer knew which its requests went to), or the whole cluster in a network partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Scope {
    pub(super) instance: Option<String>,
    pub(super) network_partition: String,
}

/// A cluster's samples of requests in flight: per scope, per load balancer.
pub(super) type ClusterRequests = BTreeMap<Scope, BTreeMap<String, VecDeque<Sample>>>;

/// Predicted requests in flight of a cluster, per scope.
pub(super) type ScopedFigures = Vec<(Scope, f64)>;

#[derive(Default)]
pub(super) struct Windows {
    /// Requests in flight per cluster, per scope (a cluster instance, or the whole cluster),
    /// per load balancer.
    pub(super) rif: HashMap<String, ClusterRequests, Fast>,
    /// Memory and load per member.
    pub(super) members: HashMap<String, MemberWindows, Fast>,
    pub(super) last_up: HashMap<InstanceKey, u64, Fast>,
    pub(super) last_down: HashMap<InstanceKey, u64, Fast>,
    /// When each cluster instance was first evaluated (a new instance is not scaled in at once).
    pub(super) first_seen: HashMap<InstanceKey, u64, Fast>,
    /// The predictions of an event processor in another process, when the statistics are
    /// processed there (then `rif` and `members` stay empty).
    pub(super) received: Option<Received>,
}

/// Predictions received from an event processor in another process.
#[derive(Default)]
pub(super) struct Received {
    /// When the last predictions arrived (this process's clock).
    pub(super) last_ms: Option<u64>,
    /// Requests in flight per cluster and scope, and when they arrived.
    pub(super) clusters: HashMap<String, (ScopedFigures, u64), Fast>,
    /// Memory and load per member, and when they arrived.
    pub(super) members: HashMap<String, (Option<f64>, Option<f64>, u64), Fast>,
}

impl Windows {
    /// A cluster's predicted requests in flight per scope, each summed over the load balancers.
    pub(super) fn requests_by_scope(
        &self,
        cluster_id: &str,
        now: u64,
        window_ms: u64,
    ) -> Vec<(Scope, f64)> {
        if let Some(r) = &self.received {
            return r
                .clusters
                .get(cluster_id)
                .map(|(v, _)| v.clone())
                .unwrap_or_default();
        }
        let Some(scopes) = self.rif.get(cluster_id) else {
            return Vec::new();
        };
        scopes
            .iter()
            .filter_map(|(scope, lbs)| {
                let (sum, n) = lbs
                    .values()
                    .filter_map(|q| predicted(Some(q), now, window_ms))
                    .fold((0.0, 0u32), |(s, n), v| (s + v, n + 1));
                (n > 0).then(|| (scope.clone(), sum))
            })
            .collect()
    }

    /// The predicted requests in flight of one cluster instance in network partition `np`:
    /// what the load balancers reported for it, plus `share` of what they reported for the whole
    /// cluster in its network partition (Stratos splits that across the network partition's
    /// instances by their active members). `None` when nothing was reported for either.
    pub(super) fn requests(
        &self,
        cluster_id: &str,
        instance: &str,
        np: &str,
        share: f64,
        now: u64,
        window_ms: u64,
    ) -> Option<f64> {
        let mut total = None;
        for (scope, v) in self.requests_by_scope(cluster_id, now, window_ms) {
            let part = match &scope.instance {
                Some(i) if i == instance => v,
                None if scope.network_partition == np || scope.network_partition.is_empty() => {
                    v * share
                }
                _ => continue,
            };
            *total.get_or_insert(0.0) += part;
        }
        total
    }

    /// A member's predicted memory consumption and load average (`None` when no statistics).
    pub(super) fn member(
        &self,
        member_id: &str,
        now: u64,
        window_ms: u64,
    ) -> Option<(Option<f64>, Option<f64>)> {
        if let Some(r) = &self.received {
            return r.members.get(member_id).map(|(m, l, _)| (*m, *l));
        }
        let m = self.members.get(member_id)?;
        Some((
            predicted(Some(&m.memory), now, window_ms),
            predicted(Some(&m.load), now, window_ms),
        ))
    }

    /// Forgets the statistics (or predictions) older than `keep_ms`.
    pub(super) fn forget(&mut self, now: u64, keep_ms: u64) {
        self.members
            .retain(|_, m| now.saturating_sub(m.newest()) <= keep_ms);
        self.rif.retain(|_, scopes| {
            scopes.retain(|_, lbs| {
                lbs.retain(|_, q| {
                    q.back()
                        .is_some_and(|s| now.saturating_sub(s.at_ms) <= keep_ms)
                });
                !lbs.is_empty()
            });
            !scopes.is_empty()
        });
        if let Some(r) = &mut self.received {
            r.clusters
                .retain(|_, (_, at)| now.saturating_sub(*at) <= keep_ms);
            r.members
                .retain(|_, (_, _, at)| now.saturating_sub(*at) <= keep_ms);
        }
    }
}

/// Appends a sample, drops those older than `keep_ms`, and keeps the samples contiguous so that
/// a window is a slice (no copy when predicting).
/// A member's samples.
#[derive(Default)]
pub(super) struct MemberWindows {
    pub(super) memory: VecDeque<Sample>,
    pub(super) load: VecDeque<Sample>,
}

impl MemberWindows {
    /// When the newest sample was taken.
    pub(super) fn newest(&self) -> u64 {
        let last = |q: &VecDeque<Sample>| q.back().map_or(0, |s| s.at_ms);
        last(&self.memory).max(last(&self.load))
    }
}

pub(super) fn push(q: &mut VecDeque<Sample>, s: Sample, keep_ms: u64) {
    q.push_back(s);
    while q
        .front()
        .is_some_and(|f| s.at_ms.saturating_sub(f.at_ms) > keep_ms)
    {
        q.pop_front();
    }
    q.make_contiguous();
}

/// Adds a health statistic (requests in flight, a member's memory and load) to the windows.
pub(super) fn feed_windows(w: &mut Windows, config: MonitorConfig, e: &Event) {
    let keep = config.window.as_millis() as u64 * 2;
    match e {
        Event::InFlightRequests(r) => {
            let scopes = match w.rif.get_mut(&r.cluster_id) {
                Some(l) => l,
                None => w.rif.entry(r.cluster_id.clone()).or_default(),
            };
            let lbs = scopes
                .entry(Scope {
                    instance: r.cluster_instance_id.clone(),
                    network_partition: r.network_partition_id.clone(),
                })
                .or_default();
            let q = match lbs.get_mut(&r.load_balancer_id) {
                Some(q) => q,
                None => lbs.entry(r.load_balancer_id.clone()).or_default(),
            };
            push(
                q,
                Sample {
                    at_ms: r.at_ms,
                    value: r.count,
                },
                keep,
            );
        }
        Event::MemberHealthStat(h) => {
            if h.memory_consumption.is_none() && h.load_average.is_none() {
                return;
            }
            let id = &h.instance.member_id;
            let m = match w.members.get_mut(id) {
                Some(m) => m,
                None => w.members.entry(id.clone()).or_default(),
            };
            if let Some(value) = h.memory_consumption {
                push(
                    &mut m.memory,
                    Sample {
                        at_ms: h.at_ms,
                        value,
                    },
                    keep,
                );
            }
            if let Some(value) = h.load_average {
                push(
                    &mut m.load,
                    Sample {
                        at_ms: h.at_ms,
                        value,
                    },
                    keep,
                );
            }
        }
        _ => {}
    }
}

pub(super) fn predicted(q: Option<&VecDeque<Sample>>, now: u64, window_ms: u64) -> Option<f64> {
    // Contiguous (see `push`), and in time order: one publisher per member, on an ordered topic.
    let (all, _) = q?.as_slices();
    let start = all.partition_point(|s| now.saturating_sub(s.at_ms) > window_ms);
    window(&all[start..]).map(|w| rules::predict(w, 1.0).max(0.0))
}
