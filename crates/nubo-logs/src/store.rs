//! The log store: each member's most recent lines, bounded per member and in all, with the
//! member's application and tenant, so that a reader gets its own tenant's lines only. Pure: no
//! clock, no I/O; the caller says who owns a member and when.

use std::collections::{HashMap, VecDeque};

use nubo_events::{LogBatch, LogStream};
use serde::Serialize;

/// How much the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of text kept per member (its oldest lines go first).
    pub per_member_bytes: usize,
    /// Bytes of text kept in all (the members whose last line is oldest go first, whole).
    pub total_bytes: usize,
    /// How long the lines of a member that stopped writing are kept (ms).
    pub retention_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_member_bytes: 256 * 1024,
            total_bytes: 64 * 1024 * 1024,
            retention_ms: 3_600_000,
        }
    }
}

/// Who a member belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Its application.
    pub application_id: String,
    /// The application's tenant.
    pub tenant_id: i64,
}

/// A line as readers get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Its place in the order the store took lines in (grows by one per line).
    pub seq: u64,
    /// The member.
    pub member_id: String,
    /// When its agent read it (ms since the epoch).
    pub at_ms: u64,
    /// Standard output or error.
    pub stream: LogStream,
    /// The line.
    pub text: String,
}

/// What a reader asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// One member only.
    pub member_id: Option<String>,
    /// Lines read at or after this time (ms).
    pub since_ms: Option<u64>,
    /// The last this many lines only.
    pub tail: Option<usize>,
}

impl Query {
    /// Whether `r` of a member owned by `owner` answers this query of `tenant` for `application`.
    pub fn matches(&self, tenant: i64, application: &str, owner: &Owner, r: &Record) -> bool {
        owner.tenant_id == tenant
            && owner.application_id == application
            && self.member_id.as_ref().is_none_or(|m| *m == r.member_id)
            && self.since_ms.is_none_or(|s| r.at_ms >= s)
    }
}

struct MemberLog {
    owner: Owner,
    lines: VecDeque<Record>,
    bytes: usize,
    /// When it last got a line (ms).
    last_ms: u64,
}

/// What an append did, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Lines taken.
    pub lines: u64,
    /// Lines the agent said it dropped.
    pub dropped_by_agent: u64,
    /// Lines pushed out by the bounds.
    pub evicted: u64,
}

/// Every member's recent lines.
pub struct LogStore {
    limits: Limits,
    members: HashMap<String, MemberLog>,
    total_bytes: usize,
    next_seq: u64,
}

fn size(r: &Record) -> usize {
    r.text.len() + r.member_id.len() + 32
}

impl LogStore {
    /// An empty store.
    pub fn new(limits: Limits) -> Self {
        LogStore {
            limits,
            members: HashMap::new(),
            total_bytes: 0,
            next_seq: 0,
        }
    }

    /// Bytes kept now.
    pub fn bytes(&self) -> usize {
        self.total_bytes
    }

    /// Takes a member's batch at `now_ms`; returns the records made (for followers) and what
    /// happened.
    pub fn append(
        &mut self,
        owner: Owner,
        batch: &LogBatch,
        now_ms: u64,
    ) -> (Vec<Record>, Appended) {
        let mut done = Appended {
            dropped_by_agent: batch.dropped,
            ..Appended::default()
        };
        let log = self
            .members
            .entry(batch.member_id.clone())
            .or_insert_with(|| MemberLog {
                owner: owner.clone(),
                lines: VecDeque::new(),
                bytes: 0,
                last_ms: now_ms,
            });
        log.last_ms = now_ms;
        let mut made = Vec::with_capacity(batch.lines.len());
        for line in &batch.lines {
            let r = Record {
                seq: self.next_seq,
                member_id: batch.member_id.clone(),
                at_ms: line.at_ms,
                stream: line.stream,
                text: line.text.clone(),
            };
            self.next_seq += 1;
            let n = size(&r);
            log.bytes += n;
            self.total_bytes += n;
            log.lines.push_back(r.clone());
            made.push(r);
            done.lines += 1;
            while log.bytes > self.limits.per_member_bytes {
                let Some(old) = log.lines.pop_front() else {
                    break;
                };
                log.bytes -= size(&old);
                self.total_bytes -= size(&old);
                done.evicted += 1;
            }
        }
        done.evicted += self.evict(now_ms);
        (made, done)
    }

    /// Drops the lines of members silent for longer than the retention, then, while the store
    /// is over its bound, those of the member whose last line is oldest. Returns the lines
    /// dropped.
    pub fn evict(&mut self, now_ms: u64) -> u64 {
        let mut evicted = 0;
        let retention = self.limits.retention_ms;
        let old: Vec<String> = self
            .members
            .iter()
            .filter(|(_, l)| now_ms.saturating_sub(l.last_ms) > retention)
            .map(|(m, _)| m.clone())
            .collect();
        for m in old {
            evicted += self.forget(&m);
        }
        while self.total_bytes > self.limits.total_bytes {
            let Some(oldest) = self
                .members
                .iter()
                .min_by_key(|(_, l)| l.last_ms)
                .map(|(m, _)| m.clone())
            else {
                break;
            };
            evicted += self.forget(&oldest);
        }
        evicted
    }

    fn forget(&mut self, member_id: &str) -> u64 {
        match self.members.remove(member_id) {
            Some(l) => {
                self.total_bytes -= l.bytes;
                l.lines.len() as u64
            }
            None => 0,
        }
    }

    /// The lines of `application` (of `tenant`) that `q` asks for, in the order they were taken.
    pub fn read(&self, tenant: i64, application: &str, q: &Query) -> Vec<Record> {
        let mut out: Vec<Record> = self
            .members
            .values()
            .filter(|l| l.owner.tenant_id == tenant && l.owner.application_id == application)
            .flat_map(|l| {
                l.lines
                    .iter()
                    .filter(|r| q.matches(tenant, application, &l.owner, r))
            })
            .cloned()
            .collect();
        out.sort_by_key(|r| r.seq);
        if let Some(n) = q.tail {
            let skip = out.len().saturating_sub(n);
            out.drain(..skip);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_events::LogLine;

    fn batch(member: &str, texts: &[&str], at: u64) -> LogBatch {
        LogBatch {
            member_id: member.into(),
            lines: texts
                .iter()
                .map(|t| LogLine {
                    at_ms: at,
                    stream: LogStream::Stdout,
                    text: (*t).into(),
                })
                .collect(),
            dropped: 0,
        }
    }

    fn owner(app: &str, tenant: i64) -> Owner {
        Owner {
            application_id: app.into(),
            tenant_id: tenant,
        }
    }

    fn texts(records: &[Record]) -> Vec<&str> {
        records.iter().map(|r| r.text.as_str()).collect()
    }

    #[test]
    fn a_tenant_reads_its_own_application_s_lines_only_in_order() {
        let mut s = LogStore::new(Limits::default());
        s.append(owner("shop", 1), &batch("m1", &["a", "b"], 10), 10);
        s.append(owner("shop", 1), &batch("m2", &["c"], 11), 11);
        s.append(owner("shop", 2), &batch("m3", &["other tenant"], 12), 12);
        s.append(owner("blog", 1), &batch("m4", &["other app"], 12), 12);
        s.append(owner("shop", 1), &batch("m1", &["d"], 20), 20);
        let all = Query::default();
        assert_eq!(texts(&s.read(1, "shop", &all)), ["a", "b", "c", "d"]);
        assert_eq!(texts(&s.read(2, "shop", &all)), ["other tenant"]);
        assert!(s.read(3, "shop", &all).is_empty());
        let m1 = Query {
            member_id: Some("m1".into()),
            ..Query::default()
        };
        assert_eq!(texts(&s.read(1, "shop", &m1)), ["a", "b", "d"]);
        let since = Query {
            since_ms: Some(11),
            ..Query::default()
        };
        assert_eq!(texts(&s.read(1, "shop", &since)), ["c", "d"]);
        let tail = Query {
            tail: Some(2),
            ..Query::default()
        };
        assert_eq!(texts(&s.read(1, "shop", &tail)), ["c", "d"]);
    }

    #[test]
    fn the_bounds_hold_per_member_in_all_and_in_time() {
        let limits = Limits {
            per_member_bytes: 400,
            total_bytes: 1000,
            retention_ms: 100,
        };
        let mut s = LogStore::new(limits);
        let line = "x".repeat(60); // about 100 bytes with its overhead
        for i in 0..10 {
            s.append(owner("a", 1), &batch("m1", &[&line], i), i);
        }
        let kept = s.read(1, "a", &Query::default());
        assert!(kept.len() < 10 && kept.len() >= 3, "{}", kept.len());
        assert_eq!(kept.last().unwrap().at_ms, 9, "the newest stay");
        assert!(s.bytes() <= 400);
        // Others fill the store: the member silent longest goes whole.
        for (i, m) in ["m2", "m3", "m4"].iter().enumerate() {
            for _ in 0..4 {
                s.append(owner("a", 1), &batch(m, &[&line], 0), 20 + i as u64);
            }
        }
        assert!(s.bytes() <= 1000, "{}", s.bytes());
        let q = Query {
            member_id: Some("m1".into()),
            ..Query::default()
        };
        assert!(s.read(1, "a", &q).is_empty(), "m1 was the oldest");
        // Retention: a member silent longer than it is forgotten.
        let (_, done) = s.append(owner("a", 1), &batch("m5", &["late"], 500), 500);
        assert!(done.evicted > 0);
        assert_eq!(texts(&s.read(1, "a", &Query::default())), ["late"]);
        assert!(s.bytes() < 200);
    }
}
