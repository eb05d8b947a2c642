//! Leases with fencing tokens: the primitive for electing one leader among several controllers
//! that share a store.
//!
//! # The protocol
//!
//! A controller calls [`Store::acquire_lease`] with a name (say
//! `controller`), its own holder id and a TTL. It gets the [`Lease`] when nobody holds the name,
//! when the holder's lease has expired, or when it holds the lease already (a renewal: the
//! expiry moves to now + TTL and the token stays). The leader renews on a timer; a standby
//! tries on the same timer and takes over once the leader stopped renewing for a TTL. A clean
//! shutdown calls [`Store::release_lease`], so that the standby
//! takes over at its next try instead of a TTL later.
//!
//! # One clock
//!
//! Whether a lease has expired is judged by one clock only: PostgreSQL's (`clock_timestamp()`,
//! read after the lease row is locked) for `PostgresStore`, the local
//! clock for [`SqliteStore`] (its writers share one host). Controllers on
//! several hosts never compare their own clocks with each other's, so a skewed host cannot make
//! a lease look expired early; `expires_at_ms` is on the store's clock, so compare it with
//! nothing local: renew on a local timer. A renewal or acquisition after the lease expired
//! (even by its own holder, even when nobody took over) is a new term with a new token.
//!
//! # Fencing
//!
//! A lease alone does not make a leader safe: a leader paused for longer than the TTL (a long
//! garbage collection, a stopped VM, a slow disk, a network partition) wakes up believing it
//! still leads while the standby has taken over, and would overwrite the new leader's state
//! (start an instance twice, forget one). Each new term therefore gets a token strictly greater
//! than every token issued before for that name (the last one is stored, never reset, so this
//! survives restarts), and the leader writes with
//! [`Store::upsert_fenced`], which checks, inside the write's own
//! transaction, that the lease is still held with exactly that token. PostgreSQL locks the lease
//! row `FOR SHARE` for that check and acquiring locks it `FOR NO KEY UPDATE`, SQLite runs both
//! under its write lock: a takeover therefore commits after every fenced write of the old term,
//! and every fenced write of the old term that comes later fails with
//! [`StoreError::Fenced`] and writes nothing. The new leader, reading
//! the state after it acquired, sees everything its predecessor wrote.
//!
//! # Choosing the TTL
//!
//! The TTL is how long the platform may go without a leader when one dies uncleanly; the
//! renew interval is how often the leader proves it is alive. Renew at a third of the TTL or
//! less (for instance every 1 s with a 3–5 s TTL), so that two renewals in a row can fail or be
//! slow (a database failover, a long query) before the lease lapses. A leader that cannot renew
//! before its lease expires must stop acting as leader (its fenced writes would fail anyway)
//! and go back to trying as a standby.

use std::time::Duration;

use serde::Serialize;

use crate::StoreError;
#[cfg(doc)]
use crate::{SqliteStore, Store};

/// A lease as held at the time of the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// What is being led (e.g. `controller`).
    pub name: String,
    /// Who holds it.
    pub holder: String,
    /// The fencing token of this holder's term: greater than every token issued before for
    /// `name`, unchanged by renewals.
    pub token: u64,
    /// When the lease expires unless renewed, in milliseconds since the Unix epoch on the
    /// store's clock (not the caller's: compare it with nothing local).
    pub expires_at_ms: i64,
}

/// The stored state of a lease name. The row outlives every holder (a released or expired
/// lease keeps its row, whose `token` is the last one issued), so that tokens never repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRow {
    /// The last holder (empty before the first).
    pub holder: String,
    /// The last token issued (0 before the first).
    pub token: u64,
    /// The end of the last term; 0 once released.
    pub expires_at_ms: i64,
}

impl LeaseRow {
    /// The row before anybody held the name.
    pub const UNHELD: LeaseRow = LeaseRow {
        holder: String::new(),
        token: 0,
        expires_at_ms: 0,
    };

    /// Whether a term is running at `now_ms`.
    pub fn held_at(&self, now_ms: i64) -> bool {
        self.token > 0 && self.expires_at_ms > now_ms
    }

    /// The lease as callers see it, when held at `now_ms`.
    pub fn lease(&self, name: &str, now_ms: i64) -> Option<Lease> {
        self.held_at(now_ms).then(|| self.clone().granted(name))
    }

    /// The lease this row grants (just written by an acquisition).
    pub fn granted(self, name: &str) -> Lease {
        Lease {
            name: name.to_owned(),
            holder: self.holder,
            token: self.token,
            expires_at_ms: self.expires_at_ms,
        }
    }

    /// The row after `holder` asks for the lease at `now_ms` for `ttl`: `None` when another
    /// holder's term is running. A renewal keeps the token; a new term takes the next one.
    pub fn acquire(
        &self,
        holder: &str,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<Option<LeaseRow>, StoreError> {
        let running = self.held_at(now_ms);
        if running && self.holder != holder {
            return Ok(None);
        }
        let token = if running {
            self.token
        } else {
            self.token
                .checked_add(1)
                .filter(|t| *t <= i64::MAX as u64)
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "the lease token {} cannot grow any more",
                        self.token
                    ))
                })?
        };
        Ok(Some(LeaseRow {
            holder: holder.to_owned(),
            token,
            expires_at_ms: now_ms.saturating_add(ttl_ms(ttl)),
        }))
    }

    /// Whether a fenced write with `token` may go ahead at `now_ms`.
    pub fn admits(&self, token: u64, now_ms: i64) -> bool {
        self.held_at(now_ms) && self.token == token
    }

    /// Whether `holder` with `token` may release the lease at `now_ms` (its term is running).
    pub fn releasable_by(&self, holder: &str, token: u64, now_ms: i64) -> bool {
        self.admits(token, now_ms) && self.holder == holder
    }
}

/// A TTL in whole milliseconds, rounded up (so that a TTL is never zero unless asked for), at
/// most `i64::MAX`.
fn ttl_ms(ttl: Duration) -> i64 {
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// A stored token as the `u64` callers see.
pub(crate) fn token_from_db(token: i64) -> Result<u64, StoreError> {
    u64::try_from(token)
        .map_err(|_| StoreError::Corrupt(format!("negative lease token {token} in the store")))
}

/// A caller's token as stored; one beyond what can be stored was never issued.
pub(crate) fn token_to_db(token: u64) -> Option<i64> {
    i64::try_from(token).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(holder: &str, token: u64, expires_at_ms: i64) -> LeaseRow {
        LeaseRow {
            holder: holder.to_owned(),
            token,
            expires_at_ms,
        }
    }

    /// `holder` asks at `now` for 100 ms; `expect` is the (holder, token, expiry) granted.
    fn check(before: LeaseRow, holder: &str, now: i64, expect: Option<(&str, u64, i64)>) {
        let got = before
            .acquire(holder, now, Duration::from_millis(100))
            .unwrap();
        assert_eq!(
            got,
            expect.map(|(h, t, e)| row(h, t, e)),
            "{holder} at {now} on {before:?}"
        );
    }

    #[test]
    fn who_gets_the_lease_and_with_which_token() {
        // Never held: the first term is token 1.
        check(LeaseRow::UNHELD, "a", 1_000, Some(("a", 1, 1_100)));
        // Held by a: b is refused, a renews with the same token.
        check(row("a", 1, 1_100), "b", 1_050, None);
        check(row("a", 1, 1_100), "a", 1_050, Some(("a", 1, 1_150)));
        // The last millisecond of the term still belongs to a.
        check(row("a", 1, 1_100), "b", 1_099, None);
        // Expired: b takes over with the next token; a coming back late starts a new term too.
        check(row("a", 1, 1_100), "b", 1_100, Some(("b", 2, 1_200)));
        check(row("a", 1, 1_100), "a", 1_100, Some(("a", 2, 1_200)));
        // Released (expiry 0): anyone, at once, with the next token.
        check(row("a", 7, 0), "b", 1_000, Some(("b", 8, 1_100)));
        // A clock far in the future does not overflow.
        check(row("a", 7, 0), "b", i64::MAX - 10, Some(("b", 8, i64::MAX)));
    }

    #[test]
    fn fenced_writes_and_releases_need_the_running_term() {
        let r = row("a", 3, 1_100);
        assert!(r.admits(3, 1_000));
        assert!(!r.admits(2, 1_000), "an old token");
        assert!(!r.admits(4, 1_000), "a token never issued");
        assert!(!r.admits(3, 1_100), "expired");
        assert!(!LeaseRow::UNHELD.admits(0, 0), "never held");
        assert!(r.releasable_by("a", 3, 1_000));
        assert!(!r.releasable_by("b", 3, 1_000));
        assert!(!r.releasable_by("a", 2, 1_000));
        assert_eq!(r.lease("l", 1_100), None);
        assert_eq!(
            r.lease("l", 1_000),
            Some(Lease {
                name: "l".into(),
                holder: "a".into(),
                token: 3,
                expires_at_ms: 1_100
            })
        );
    }

    #[test]
    fn ttls_round_up_to_whole_milliseconds_and_tokens_stop_before_overflow() {
        assert_eq!(ttl_ms(Duration::from_micros(1)), 1);
        assert_eq!(ttl_ms(Duration::from_millis(250)), 250);
        assert_eq!(ttl_ms(Duration::ZERO), 0);
        assert_eq!(ttl_ms(Duration::MAX), i64::MAX);
        let last = row("a", i64::MAX as u64, 0);
        assert!(matches!(
            last.acquire("b", 0, Duration::from_secs(1)),
            Err(StoreError::Corrupt(_))
        ));
        assert!(token_from_db(-1).is_err());
        assert_eq!(token_to_db(u64::MAX), None);
    }
}
