//! Deduplicated appends: the ingest door's "have I accepted this event
//! already?" and the append, as one atomic store step.
//!
//! A bus with a deduplication window accepts an event whose key — derived
//! by the caller from the tenant, the bus, and the event's `source` and `id`
//! — was already accepted within the window, answers it as a success, and
//! does not store or route it again. The check and the append must be one
//! step: two senders racing with the same event must end with exactly one
//! copy in the log, and a crash between a check and an append must neither
//! lose the event nor let its retry through twice. So the verb is an
//! append that records each key in the same commit as its event, and
//! refuses (as `Duplicate`) an event whose key it holds with an acceptance
//! time inside the window.
//!
//! The window is measured back from each event's `ingested_ms` (the
//! acceptance time the caller stamps), against the moment the key was first
//! accepted: a duplicate does not extend it, as in JetStream's duplicate
//! window and SQS FIFO's deduplication interval. A key is kept until its
//! window (as it was when the key was recorded) has passed, then pruned.
//!
//! Backends: SQLite keeps the keys in a table next to the log and runs the
//! check and the inserts inside one savepoint of the writer's group commit.
//! JetStream does the same natively: the key (hex) is the message's
//! `Nats-Msg-Id`, the bus's stream has `duplicate_window` set to the bus's
//! window, and the publish acknowledgement says `duplicate: true` — the
//! server checks and appends atomically, across every node.

use super::log::NewEvent;
use super::{Millis, StoreResult};
use async_trait::async_trait;

/// Identifies an event for deduplication: a 128-bit digest the caller
/// computes from tenant, bus, `source` and `id` (opaque to the store).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DedupKey(pub [u8; 16]);

impl DedupKey {
    /// The key as 32 lowercase hex digits (a JetStream `Nats-Msg-Id`).
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// How one event is deduplicated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dedup {
    /// The event's key.
    pub key: DedupKey,
    /// The bus's window (> 0).
    pub window_ms: Millis,
}

/// An event to append, deduplicated when `dedup` says how.
#[derive(Clone, Debug, PartialEq)]
pub struct AdmittedEvent {
    /// The event.
    pub event: NewEvent,
    /// `None`: appended unconditionally (its bus has no window).
    pub dedup: Option<Dedup>,
}

/// What became of one event given to [`DedupLog::append_deduplicated`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Appended (and its key recorded).
    New,
    /// Its key was accepted within the window: not appended.
    Duplicate,
}

/// Appends that drop events already accepted within their bus's window.
#[async_trait]
pub trait DedupLog: Send + Sync + 'static {
    /// Appends, in order, every event that is not a duplicate, and records
    /// the keys of those appended, in one atomic, durable step (`Ok` means
    /// committed, as for [`EventLog::append`](super::EventLog::append)).
    /// An event is a duplicate when its key was recorded at an
    /// `ingested_ms` within `window_ms` before its own `ingested_ms` — by
    /// an earlier call or earlier in this one. Answers per event, in order.
    async fn append_deduplicated(&self, events: Vec<AdmittedEvent>) -> StoreResult<Vec<Appended>>;

    /// Forgets keys whose window (as recorded) ended before `now`; returns
    /// how many.
    async fn prune_dedup_keys(&self, now: Millis) -> StoreResult<u64>;
}
