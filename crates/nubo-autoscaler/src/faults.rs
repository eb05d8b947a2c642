//! Member fault detection (Stratos' CEP `faultHandling`), pure: an Active member whose health
//! statistics stop for longer than a timeout, or that reports its ports closed, is faulty.

use std::collections::HashMap;

/// What is known of one member.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// When it was first seen Active (ms).
    active_since: Option<u64>,
    /// When its last statistics arrived (ms).
    last_stat: Option<u64>,
    /// Its last statistics said a port is closed.
    ports_closed: bool,
    /// The last check that saw it Active.
    round: u64,
}

/// What the event processor knows about each Active member's statistics.
#[derive(Debug, Default, Clone)]
pub struct Liveness {
    members: HashMap<String, Entry, foldhash::fast::RandomState>,
    round: u64,
}

impl Liveness {
    /// Statistics from `member_id` arrived at `now_ms`.
    pub fn stat(&mut self, member_id: &str, now_ms: u64, ports_open: bool) {
        match self.members.get_mut(member_id) {
            Some(e) => {
                e.last_stat = Some(now_ms);
                e.ports_closed = !ports_open;
            }
            None => {
                self.members.insert(
                    member_id.to_owned(),
                    Entry {
                        active_since: None,
                        last_stat: Some(now_ms),
                        ports_closed: !ports_open,
                        round: self.round,
                    },
                );
            }
        }
    }

    /// Whether `member_id` sent statistics within `within_ms` of `now_ms` with its ports open.
    /// Agents publish statistics only once their member is active, so this proves the member
    /// active even when its `InstanceActivated` report was lost (sent while no controller
    /// listened, during a failover).
    pub fn reporting(&self, member_id: &str, now_ms: u64, within_ms: u64) -> bool {
        self.members.get(member_id).is_some_and(|e| {
            !e.ports_closed
                && e.last_stat
                    .is_some_and(|t| now_ms.saturating_sub(t) <= within_ms)
        })
    }

    /// The faulty members among the `active` ones at `now_ms`, with the reason; forgets members
    /// that are no longer Active, and starts afresh with the faulty ones (the controller replaces
    /// them). One lookup per member, no allocation but for members new to it.
    pub fn check<'a>(
        &mut self,
        active: impl IntoIterator<Item = &'a str>,
        now_ms: u64,
        timeout_ms: u64,
    ) -> Vec<(String, String)> {
        self.round += 1;
        let round = self.round;
        let mut faults = Vec::new();
        for m in active {
            let e = match self.members.get_mut(m) {
                Some(e) => e,
                None => self.members.entry(m.to_owned()).or_insert(Entry {
                    active_since: None,
                    last_stat: None,
                    ports_closed: false,
                    round,
                }),
            };
            e.round = round;
            let since = *e.active_since.get_or_insert(now_ms);
            let last = e.last_stat.unwrap_or(since).max(since);
            let fault = if e.ports_closed {
                Some("it reports its ports closed".to_owned())
            } else if now_ms.saturating_sub(last) > timeout_ms {
                Some(format!(
                    "no health statistics for {:.1} s",
                    now_ms.saturating_sub(last) as f64 / 1000.0
                ))
            } else {
                None
            };
            if let Some(reason) = fault {
                // Reported once: seen Active again, it starts afresh.
                e.active_since = None;
                e.last_stat = None;
                e.ports_closed = false;
                faults.push((m.to_owned(), reason));
            }
        }
        self.members.retain(|_, e| e.round == round);
        faults.sort();
        faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_longer_than_the_timeout_is_a_fault() {
        let mut l = Liveness::default();
        // First seen Active at 1000: it has the timeout to report.
        assert!(l.check(["m1", "m2"], 1_000, 5_000).is_empty());
        l.stat("m1", 2_000, true);
        l.stat("m2", 2_000, true);
        l.stat("m1", 6_500, true);
        assert!(
            l.check(["m1", "m2"], 7_000, 5_000).is_empty(),
            "m2 silent for exactly 5 s"
        );
        let faults = l.check(["m1", "m2"], 7_001, 5_000);
        assert_eq!(faults.len(), 1);
        assert_eq!(faults[0].0, "m2");
        assert_eq!(faults[0].1, "no health statistics for 5.0 s");
        // Reported once: the controller replaces it.
        assert!(l.check(["m1", "m2"], 7_002, 5_000).is_empty());
    }

    #[test]
    fn statistics_from_a_member_not_yet_active_prove_it_runs() {
        let mut l = Liveness::default();
        assert!(!l.reporting("m", 1_000, 5_000));
        l.stat("m", 1_000, true);
        assert!(l.reporting("m", 2_000, 5_000));
        assert!(!l.reporting("m", 7_001, 5_000), "too old");
        l.stat("m", 7_100, false);
        assert!(!l.reporting("m", 7_200, 5_000), "ports closed");
    }

    #[test]
    fn a_member_never_reporting_is_faulty_a_timeout_after_it_became_active() {
        let mut l = Liveness::default();
        assert!(l.check(["m"], 0, 5_000).is_empty());
        assert!(l.check(["m"], 5_000, 5_000).is_empty());
        assert_eq!(l.check(["m"], 5_001, 5_000).len(), 1);
    }

    #[test]
    fn closed_ports_are_a_fault_at_once_and_leaving_active_forgets_the_member() {
        let mut l = Liveness::default();
        l.check(["m1"], 0, 5_000);
        l.stat("m1", 100, false);
        assert_eq!(
            l.check(["m1"], 200, 5_000)[0].1,
            "it reports its ports closed"
        );
        // A member that left Active is forgotten: seen Active again, it starts afresh.
        l.check(["m3"], 300, 5_000);
        l.check([], 400, 5_000);
        assert!(l.check(["m3"], 9_000, 5_000).is_empty());
    }
}
