//! The controller's state in the store: a journal of the inputs that changed it (each with its
//! time), and now and then a snapshot of the whole state, after which the entries it covers are
//! dropped. A write costs the size of the input, never the size of the state (see ARCHITECTURE.md,
//! "Persistence of the controller").
//!
//! The state machine is deterministic: replaying the entries after the snapshot (inputs through
//! [`ControllerState::apply`], convergences through [`ControllerState::converge_dirty`], their
//! actions ignored: they were carried out, or the reconciliation at start takes care of them)
//! gives back the state. A reader in another process (an API-only
//! server, a standby, an autoscaler of its own) keeps a [`Replica`] the same way, reading only
//! the entries written since it last looked.

use serde::{Deserialize, Serialize};

use nubo_store::{Fence, Key, Store, StoreError};

use crate::state::{ControllerState, Input};

/// The controller's journal stream.
pub const STREAM: &str = "controller";

/// The store document where the controller kept its whole state before the journal (read once,
/// to carry such a state over).
const LEGACY_KIND: &str = "controllerState";
const LEGACY_ID: &str = "state";
const LEGACY_TENANT: i64 = nubo_model::SUPER_TENANT_ID;

/// Entries read per query while catching up.
const PAGE: i64 = 4_096;

/// One journal entry: an input applied at `at` ([`ControllerState::apply`]), or the convergence
/// of what the inputs before it touched ([`ControllerState::converge_dirty`]).
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// Milliseconds since the epoch.
    at: u64,
    #[serde(default)]
    input: Option<Input>,
    #[serde(default)]
    converge: bool,
}

/// An entry to write, borrowing its input.
#[derive(Serialize)]
struct EntryRef<'a> {
    at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    input: Option<&'a Input>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    converge: bool,
}

/// The journal line of `input` applied at `at`.
pub fn line(at: u64, input: &Input) -> Result<String, serde_json::Error> {
    serde_json::to_string(&EntryRef {
        at,
        input: Some(input),
        converge: false,
    })
}

/// The journal line of a convergence at `at`.
pub fn converge_line(at: u64) -> Result<String, serde_json::Error> {
    serde_json::to_string(&EntryRef {
        at,
        input: None,
        converge: true,
    })
}

/// Runs `f` without logs or internal events: what a replay does happened already, and was
/// logged and counted then.
pub fn quietly<R>(f: impl FnOnce() -> R) -> R {
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        nubo_telemetry::muted(f)
    })
}

/// Applies journal entries to `state` (their actions ignored); returns the last sequence number
/// applied.
fn apply(
    state: &mut ControllerState,
    entries: &[nubo_store::JournalEntry],
) -> Result<i64, StoreError> {
    let mut last = 0;
    quietly(|| {
        for e in entries {
            let entry: Entry = serde_json::from_str(&e.body).map_err(|err| {
                StoreError::Corrupt(format!("controller journal entry {}: {err}", e.seq))
            })?;
            if let Some(input) = entry.input {
                state.apply(entry.at, input);
            }
            if entry.converge {
                state.converge_dirty(entry.at);
            }
            last = e.seq;
        }
        Ok::<(), StoreError>(())
    })?;
    Ok(last)
}

/// The state in the store, and the sequence number of the last entry it includes: the snapshot
/// and the entries after it (or, before any journal, the whole state as it was kept before).
pub async fn load(store: &dyn Store) -> Result<(ControllerState, i64), StoreError> {
    let mut replica = Replica::default();
    replica.catch_up(store).await?;
    if replica.seq == 0 {
        let legacy = store
            .get(LEGACY_TENANT, &Key::new(LEGACY_KIND, LEGACY_ID))
            .await?;
        if let Some(rec) = legacy {
            let state: ControllerState = serde_json::from_value(rec.body)
                .map_err(|e| StoreError::Corrupt(format!("controller state: {e}")))?;
            return Ok((state, 0));
        }
    }
    Ok((replica.state, replica.seq))
}

/// A copy of the controller's state kept current from the store.
#[derive(Default)]
pub struct Replica {
    /// The state.
    pub state: ControllerState,
    /// The last entry applied (0: none).
    pub seq: i64,
    /// Whether anything was ever read (the snapshot is read at the first catch-up).
    loaded: bool,
}

impl Replica {
    /// Reads what was written since the last call (the snapshot first, when this replica is new
    /// or the entries it needs were dropped by a newer snapshot); returns whether the state
    /// changed. Costs one small query when nothing did.
    pub async fn catch_up(&mut self, store: &dyn Store) -> Result<bool, StoreError> {
        if self.loaded && store.journal_last(STREAM).await? == self.seq {
            return Ok(false);
        }
        let mut changed = false;
        if !self.loaded {
            self.reload(store).await?;
            changed = true;
        }
        loop {
            let entries = store.journal_read(STREAM, self.seq, PAGE).await?;
            let Some(first) = entries.first() else { break };
            if first.seq != self.seq + 1 {
                // A snapshot dropped entries this replica had not read: start from it.
                self.reload(store).await?;
                changed = true;
                continue;
            }
            self.seq = apply(&mut self.state, &entries)?;
            changed = true;
            if (entries.len() as i64) < PAGE {
                break;
            }
        }
        Ok(changed)
    }

    async fn reload(&mut self, store: &dyn Store) -> Result<(), StoreError> {
        let (seq, state) = match store.snapshot_read(STREAM).await? {
            Some((seq, body)) => (
                seq,
                serde_json::from_str(&body)
                    .map_err(|e| StoreError::Corrupt(format!("controller snapshot: {e}")))?,
            ),
            None => (0, ControllerState::default()),
        };
        self.state = state;
        self.seq = seq;
        self.loaded = true;
        Ok(())
    }
}

/// Writes a snapshot of `state` as the state after entry `seq`; returns its size in bytes.
pub async fn snapshot(
    store: &dyn Store,
    state_json: String,
    seq: i64,
    fence: Option<Fence<'_>>,
) -> Result<usize, StoreError> {
    let n = state_json.len();
    store
        .snapshot_write(STREAM, seq, &state_json, fence)
        .await?;
    Ok(n)
}
