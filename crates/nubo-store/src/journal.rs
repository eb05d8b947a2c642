//! Journals: what a writer changes, as an append-only sequence of entries per stream, with one
//! snapshot per stream, so that the cost of a write is the size of the change, never the size of
//! the whole state.
//!
//! The controller keeps its state this way: each step's input is an entry, written before the
//! step's actions are carried out; now and then the whole state goes into the snapshot, and the
//! entries it covers are dropped. A restart (or another process reading the state) loads the
//! snapshot and applies the entries after it. Sequence numbers come from a per-stream counter
//! stored with the stream, so they only grow, whatever was trimmed. Appends and snapshots can be
//! fenced like [`crate::Store::upsert_fenced`]: a deposed leader appends nothing.

/// A fencing condition: the lease `lease` must still be held with `token` (checked in the
/// write's own transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence<'a> {
    /// The lease's name.
    pub lease: &'a str,
    /// The writer's token.
    pub token: u64,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// Its sequence number (1, 2, … within its stream).
    pub seq: i64,
    /// What was written.
    pub body: String,
}
