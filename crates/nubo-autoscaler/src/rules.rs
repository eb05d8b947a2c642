//! The scaling rules (as in Apache Stratos 4.1): the prediction, the instances each factor requires,
//! and the decision. Stratos' semantics are kept where sound; where Nubo decides differently, the
//! function says so.

use serde::{Deserialize, Serialize};

use crate::cep::WindowStats;

/// `average + gradient·t + ½·second_derivative·t²` ("s = ut + ½at²"), Stratos' prediction.
pub fn predict(s: WindowStats, t: f64) -> f64 {
    s.average + s.gradient * t + 0.5 * s.second_derivative * t * t
}

/// Instances needed for requests in flight: `ceil(predicted / threshold)`; 0 when the threshold is not positive.
pub fn required_for_requests(predicted: f64, threshold: f64) -> u32 {
    if threshold <= 0.0 {
        return 0;
    }
    (predicted / threshold).ceil().max(0.0) as u32
}

/// Instances needed for memory consumption (a percentage): the linear ramp from `min` at the
/// threshold to `max` at 100 %: `ceil(min + (predicted − threshold) / ((100 − threshold) / (max − min)))`;
/// exactly at the threshold, `min`; below it, `min − 1` (Stratos' signal to scale down).
pub fn required_for_memory(predicted: f64, threshold: f64, min: u32, max: u32) -> u32 {
    if predicted < threshold {
        return min.saturating_sub(1);
    }
    if predicted == threshold || max <= min || threshold >= 100.0 {
        return min;
    }
    let step = (100.0 - threshold) / f64::from(max - min);
    (f64::from(min) + (predicted - threshold) / step).ceil() as u32
}

/// Instances needed for load average (a percentage of the cores): `ceil(min · predicted / threshold)`;
/// `min` when the threshold is not positive.
pub fn required_for_load(predicted: f64, threshold: f64, min: u32) -> u32 {
    if threshold <= 0.0 {
        return min;
    }
    (f64::from(min) * predicted / threshold).ceil().max(0.0) as u32
}

/// Which factor drove a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Factor {
    /// Requests in flight.
    RequestsInFlight,
    /// Memory consumption.
    MemoryConsumption,
    /// Load average.
    LoadAverage,
    /// Another cluster of the same `scalingDependents` list.
    ScalingDependents,
}

/// What each factor requires, and the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Required {
    /// Requests in flight (`None`: no threshold or no statistics).
    pub requests_in_flight: Option<u32>,
    /// Memory consumption.
    pub memory: Option<u32>,
    /// Load average.
    pub load: Option<u32>,
    /// The largest of them (`None` when no factor has statistics).
    pub count: Option<u32>,
    /// The first factor that requires `count` (Stratos' reasons `RIF`, `MC`, `LA`).
    pub reason: Option<Factor>,
    /// What the cluster's `scalingDependents` list requires of it (it then replaces `count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependents: Option<u32>,
}

impl Required {
    /// The count a scaling-dependents list requires replaces the cluster's own.
    pub fn with_dependents(mut self, count: u32) -> Required {
        self.dependents = Some(count);
        if self.count != Some(count) {
            self.count = Some(count);
            self.reason = Some(Factor::ScalingDependents);
        }
        self
    }
}

/// Dependent scaling (§7.8): the members each cluster of one `scalingDependents` list requires,
/// given each cluster's own requirement (`None`: no statistics) and minimum. The list's factor is
/// the highest `required / min`; each cluster requires `min · factor`, rounded up (Stratos rounds
/// with its `instanceRoundingFactor`; rounding up never leaves a dependent short). `None` when no
/// cluster of the list has statistics.
pub fn dependent_counts(list: &[(Option<u32>, u32)]) -> Option<Vec<u32>> {
    let factor = list
        .iter()
        .filter_map(|(r, min)| r.map(|r| f64::from(r) / f64::from((*min).max(1))))
        .reduce(f64::max)?;
    Some(
        list.iter()
            .map(|(_, min)| (f64::from((*min).max(1)) * factor - 1e-9).ceil().max(0.0) as u32)
            .collect(),
    )
}

/// Combines the factors: the maximum, and the first factor that requires it.
pub fn combine(
    requests_in_flight: Option<u32>,
    memory: Option<u32>,
    load: Option<u32>,
) -> Required {
    let all = [
        (Factor::RequestsInFlight, requests_in_flight),
        (Factor::MemoryConsumption, memory),
        (Factor::LoadAverage, load),
    ];
    let count = all.iter().filter_map(|(_, c)| *c).max();
    let reason = count.and_then(|m| all.iter().find(|(_, c)| *c == Some(m)).map(|(f, _)| *f));
    Required {
        requests_in_flight,
        memory,
        load,
        count,
        reason,
        dependents: None,
    }
}

/// A cluster instance as the decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Minimum members.
    pub min: u32,
    /// Maximum members.
    pub max: u32,
    /// Active members.
    pub active: u32,
    /// Members on the way (created, starting): capacity that is coming.
    pub starting: u32,
}

/// The time-based cool-downs that replace Stratos' count of consecutive scale-down decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cooldowns {
    /// Now, in milliseconds.
    pub now_ms: u64,
    /// When the cluster last scaled up (ms), if ever.
    pub last_up_ms: Option<u64>,
    /// When it last scaled down (ms), if ever.
    pub last_down_ms: Option<u64>,
    /// No scale-up sooner than this after the last one.
    pub up_ms: u64,
    /// No scale-down sooner than this after the last scaling of either kind.
    pub down_ms: u64,
}

/// The decision for one cluster instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum Decision {
    /// Start this many members; `beyond_max` when more were required than `max` allows (the parent
    /// may add a group instance or burst into the next network partition).
    ScaleUp {
        /// How many to start.
        add: u32,
        /// More were required than the maximum.
        beyond_max: bool,
    },
    /// Already at the maximum and more are required: only the parent can help.
    AtMax,
    /// More are required, but the tenant's instance quota is reached: held there.
    AtQuota,
    /// Stop one member (the least loaded).
    ScaleDown,
    /// Fewer are required than the minimum allows: the parent may shrink.
    AtMin,
    /// Nothing to do (or a cool-down holds it).
    Hold,
}

/// Decides from what is required. Members still starting count as capacity on the way, so a spike
/// does not spawn twice (Stratos counted them only in the cap). Scale-down removes one member at a
/// time and waits `down_ms` after any scaling; scale-up waits `up_ms` after the last scale-up.
pub fn decide(required: Option<u32>, s: Sizes, c: Cooldowns) -> Decision {
    let Some(required) = required else {
        return Decision::Hold;
    };
    let non_terminated = s.active + s.starting;
    let since = |t: Option<u64>| t.map_or(u64::MAX, |t| c.now_ms.saturating_sub(t));
    if required > non_terminated {
        if non_terminated >= s.max {
            return Decision::AtMax;
        }
        if since(c.last_up_ms) < c.up_ms {
            return Decision::Hold;
        }
        let target = required.min(s.max);
        return Decision::ScaleUp {
            add: target - non_terminated,
            beyond_max: required > s.max,
        };
    }
    // Stratos: scale down when active > required, or when one member is required and one is active.
    let wants_down = s.active > required || (required == 1 && s.active == 1);
    if wants_down && s.starting == 0 {
        if non_terminated <= s.min {
            return Decision::AtMin;
        }
        let last = c.last_up_ms.max(c.last_down_ms);
        if since(last) < c.down_ms {
            return Decision::Hold;
        }
        return Decision::ScaleDown;
    }
    Decision::Hold
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn flat(v: f64) -> WindowStats {
        WindowStats {
            average: v,
            gradient: 0.0,
            second_derivative: 0.0,
        }
    }

    fn free(now_ms: u64) -> Cooldowns {
        Cooldowns {
            now_ms,
            last_up_ms: None,
            last_down_ms: None,
            up_ms: 0,
            down_ms: 0,
        }
    }

    #[test]
    fn dependent_scaling_follows_the_highest_factor_of_the_list() {
        // One cluster needs twice its minimum: every cluster of the list doubles.
        assert_eq!(
            dependent_counts(&[(Some(4), 2), (None, 1), (Some(1), 3)]),
            Some(vec![4, 2, 6])
        );
        // 3/2 = 1.5 of a minimum of 3 is 4.5: rounded up.
        assert_eq!(
            dependent_counts(&[(Some(3), 2), (Some(3), 3)]),
            Some(vec![3, 5])
        );
        assert_eq!(dependent_counts(&[(None, 2), (None, 3)]), None);
        // The memory rule's "min − 1" below its threshold keeps the others at their minimum
        // when the factor rounds back up.
        assert_eq!(
            dependent_counts(&[(Some(1), 2), (Some(2), 2)]),
            Some(vec![2, 2])
        );
        let r = combine(Some(2), None, None).with_dependents(4);
        assert_eq!(
            (r.count, r.reason, r.dependents),
            (Some(4), Some(Factor::ScalingDependents), Some(4))
        );
        let r = combine(Some(4), None, None).with_dependents(4);
        assert_eq!(
            r.reason,
            Some(Factor::RequestsInFlight),
            "its own factor when they agree"
        );
    }

    #[test]
    fn prediction() {
        let s = WindowStats {
            average: 10.0,
            gradient: 2.0,
            second_derivative: 4.0,
        };
        assert_eq!(predict(s, 1.0), 10.0 + 2.0 + 2.0);
        assert_eq!(predict(s, 0.0), 10.0);
    }

    #[test]
    fn factor_requirements() {
        assert_eq!(required_for_requests(45.0, 20.0), 3);
        assert_eq!(required_for_requests(40.0, 20.0), 2);
        assert_eq!(required_for_requests(5.0, 0.0), 0);
        assert_eq!(
            required_for_memory(30.0, 30.0, 2, 6),
            2,
            "at the threshold: min"
        );
        assert_eq!(required_for_memory(100.0, 30.0, 2, 6), 6, "at 100 %: max");
        assert_eq!(required_for_memory(20.0, 30.0, 2, 6), 1, "below: min − 1");
        assert_eq!(required_for_memory(90.0, 30.0, 3, 3), 3, "max = min: min");
        assert_eq!(required_for_load(60.0, 25.0, 2), 5);
        assert_eq!(required_for_load(60.0, 0.0, 2), 2);
    }

    /// The worked example of Stratos' mock IaaS documentation (test 12: c7, min 2, max 6, memory
    /// threshold 30, load threshold 25): at 60 → 5 members; at 10 → back to 2, one at a time.
    #[test]
    fn the_stratos_worked_example() {
        let (min, max) = (2, 6);
        let at = |v: f64| {
            combine(
                None,
                Some(required_for_memory(predict(flat(v), 1.0), 30.0, min, max)),
                Some(required_for_load(predict(flat(v), 1.0), 25.0, min)),
            )
        };
        let high = at(60.0);
        assert_eq!(
            (high.memory, high.load, high.count, high.reason),
            (Some(4), Some(5), Some(5), Some(Factor::LoadAverage))
        );
        assert_eq!(
            decide(
                high.count,
                Sizes {
                    min,
                    max,
                    active: 2,
                    starting: 0
                },
                free(0)
            ),
            Decision::ScaleUp {
                add: 3,
                beyond_max: false
            }
        );
        let low = at(10.0);
        assert_eq!(
            (low.memory, low.load, low.count),
            (Some(1), Some(1), Some(1))
        );
        let mut active = 5;
        let mut steps = 0;
        while decide(
            low.count,
            Sizes {
                min,
                max,
                active,
                starting: 0,
            },
            free(0),
        ) == Decision::ScaleDown
        {
            active -= 1;
            steps += 1;
        }
        assert_eq!(
            (active, steps),
            (2, 3),
            "one member per decision, down to the minimum"
        );
        assert_eq!(
            decide(
                low.count,
                Sizes {
                    min,
                    max,
                    active,
                    starting: 0
                },
                free(0)
            ),
            Decision::AtMin
        );
    }

    /// Test 9 of the same document (c7-rr, min 6): required 5 < 6 active, but at the minimum.
    #[test]
    fn scale_down_stops_at_the_minimum() {
        let r = combine(
            None,
            Some(required_for_memory(20.0, 30.0, 6, 6)),
            Some(required_for_load(20.0, 25.0, 6)),
        );
        assert_eq!(r.count, Some(5));
        assert_eq!(
            decide(
                r.count,
                Sizes {
                    min: 6,
                    max: 6,
                    active: 6,
                    starting: 0
                },
                free(0)
            ),
            Decision::AtMin
        );
    }

    #[test]
    fn capacity_on_the_way_and_the_maximum() {
        let sizes = Sizes {
            min: 1,
            max: 4,
            active: 2,
            starting: 2,
        };
        assert_eq!(
            decide(Some(4), sizes, free(0)),
            Decision::Hold,
            "two are already starting"
        );
        assert_eq!(
            decide(
                Some(9),
                Sizes {
                    starting: 0,
                    ..sizes
                },
                free(0)
            ),
            Decision::ScaleUp {
                add: 2,
                beyond_max: true
            }
        );
        assert_eq!(
            decide(
                Some(9),
                Sizes {
                    active: 4,
                    starting: 0,
                    ..sizes
                },
                free(0)
            ),
            Decision::AtMax
        );
        assert_eq!(
            decide(Some(1), sizes, free(0)),
            Decision::Hold,
            "no scale-down while members start"
        );
        assert_eq!(
            decide(None, sizes, free(0)),
            Decision::Hold,
            "no statistics, no decision"
        );
    }

    #[test]
    fn cooldowns_are_separate_for_up_and_down() {
        let sizes = Sizes {
            min: 1,
            max: 10,
            active: 4,
            starting: 0,
        };
        let c = Cooldowns {
            now_ms: 10_000,
            last_up_ms: Some(9_000),
            last_down_ms: None,
            up_ms: 2_000,
            down_ms: 30_000,
        };
        assert_eq!(
            decide(Some(6), sizes, c),
            Decision::Hold,
            "scale-up cool-down"
        );
        assert_eq!(
            decide(
                Some(6),
                sizes,
                Cooldowns {
                    now_ms: 11_000,
                    ..c
                }
            ),
            Decision::ScaleUp {
                add: 2,
                beyond_max: false
            }
        );
        assert_eq!(
            decide(
                Some(1),
                sizes,
                Cooldowns {
                    now_ms: 30_000,
                    ..c
                }
            ),
            Decision::Hold,
            "scale-down waits after a scale-up"
        );
        assert_eq!(
            decide(
                Some(1),
                sizes,
                Cooldowns {
                    now_ms: 39_000,
                    ..c
                }
            ),
            Decision::ScaleDown
        );
    }

    proptest! {
        /// Whatever the inputs, a decision never goes past the maximum, never below the minimum,
        /// and never adds members while the required count is already on the way.
        #[test]
        fn decisions_respect_the_bounds(min in 0u32..5, extra in 0u32..10, active in 0u32..15, starting in 0u32..5, required in 0u32..30) {
            let max = min + extra.max(1);
            let s = Sizes { min, max, active, starting };
            match decide(Some(required), s, free(0)) {
                Decision::ScaleUp { add, .. } => {
                    prop_assert!(add > 0);
                    prop_assert!(active + starting + add <= max);
                    prop_assert!(required > active + starting);
                }
                Decision::ScaleDown => prop_assert!(active + starting > min),
                _ => {}
            }
        }

        /// Under oscillating load, with a scale-down cool-down of D, a cluster makes at most one
        /// scale-down per D and at most one scale-up per U: a bound on flapping.
        #[test]
        fn flapping_is_bounded(loads in proptest::collection::vec(0u32..12, 1..200), up in 1u64..10, down in 1u64..30) {
            let (min, max) = (1, 10);
            let mut active = min;
            let (mut last_up, mut last_down) = (None::<u64>, None::<u64>);
            let (mut ups, mut downs) = (0u64, 0u64);
            let n = loads.len() as u64;
            for (t, required) in loads.iter().enumerate() {
                let t = t as u64;
                let c = Cooldowns { now_ms: t, last_up_ms: last_up, last_down_ms: last_down, up_ms: up, down_ms: down };
                match decide(Some(*required), Sizes { min, max, active, starting: 0 }, c) {
                    Decision::ScaleUp { add, .. } => { active += add; last_up = Some(t); ups += 1; }
                    Decision::ScaleDown => { active -= 1; last_down = Some(t); downs += 1; }
                    _ => {}
                }
            }
            prop_assert!(ups <= n / up + 1, "{ups} scale-ups in {n} ticks with a cool-down of {up}");
            prop_assert!(downs <= n / down + 1, "{downs} scale-downs in {n} ticks with a cool-down of {down}");
        }
    }
}

/// Holds scale-ups within the tenants' instance quotas: `tenant_of` names each decision's
/// tenant, `used` counts each tenant's members now, `quotas` bounds them. Decisions are taken in
/// order: a scale-up gets what is left of its tenant's quota (its `add` cut down), and none left
/// turns it into [`Decision::AtQuota`]. Scale-ups beyond the maximum (`AtMax`) are held too once
/// the quota is reached (no new group instance nor burst).
pub fn within_quotas(
    decisions: &mut [(i64, Decision)],
    used: &std::collections::BTreeMap<i64, u32>,
    quotas: &std::collections::BTreeMap<i64, u32>,
) {
    let mut used = used.clone();
    for (tenant, d) in decisions.iter_mut() {
        let Some(quota) = quotas.get(tenant) else {
            continue;
        };
        let n = used.entry(*tenant).or_insert(0);
        let left = quota.saturating_sub(*n);
        match d {
            Decision::ScaleUp { add, .. } if left == 0 => *d = Decision::AtQuota,
            Decision::ScaleUp { add, .. } => {
                *add = (*add).min(left);
                *n += *add;
            }
            Decision::AtMax if left == 0 => *d = Decision::AtQuota,
            _ => {}
        }
    }
}

#[cfg(test)]
mod quota_tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn scale_ups_get_what_is_left_of_their_tenant_s_quota() {
        let up = |add| Decision::ScaleUp {
            add,
            beyond_max: false,
        };
        let mut d = vec![
            (1, up(3)),
            (1, up(2)),
            (2, up(5)),
            (1, Decision::AtMax),
            (3, up(4)),
        ];
        let used = BTreeMap::from([(1, 4), (2, 0)]);
        let quotas = BTreeMap::from([(1, 6), (2, 10)]);
        within_quotas(&mut d, &used, &quotas);
        assert_eq!(
            d,
            [
                (1, up(2)),
                (1, Decision::AtQuota),
                (2, up(5)),
                (1, Decision::AtQuota),
                (3, up(4))
            ]
        );
    }
}
