//! The event log: what a 2xx promises, and what the router consumes.
//!
//! [`EventLog::append`] returns only once the events are durable; that is
//! the moment the bus may acknowledge them. The router reads the log through
//! a [`LogConsumer`], which hands out every appended event at least once and
//! is told, per entry, when the entry is routed (all its deliveries done or
//! persisted) with an [`AckToken`]. Acknowledgements may arrive in any
//! order; the backend keeps what it needs to resume after a restart
//! (SQLite: the highest position below which everything is acknowledged;
//! JetStream: the consumer's ack floor). An entry not acknowledged before a
//! crash is handed out again, so a crash can repeat a delivery but never
//! lose one.
//!
//! The log is partitioned by tenant and bus: every entry names both, order
//! is kept within a partition, and a backend may store partitions apart
//! (JetStream: a subject per tenant bus).

use super::{Millis, StoreResult};
use crate::event::EventHead;
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// An event to append to a bus's log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewEvent {
    /// Owning tenant.
    pub tenant: String,
    /// Bus the event was sent to.
    pub bus: String,
    /// The CloudEvents `id`.
    pub event_id: String,
    /// The event in CloudEvents JSON format.
    pub body: Bytes,
    /// When the bus accepted it.
    pub ingested_ms: Millis,
    /// The rules this entry is routed to, when not every rule of its bus
    /// (a replay restricted to some rules; `None`: all). The router honours it.
    pub only_rules: Option<Vec<String>>,
    /// The archives that keep a copy, written in the same commit as the
    /// event (see [`super::Archives`]). Not read back: empty on entries the
    /// log hands out.
    pub archives: Vec<super::ArchiveId>,
    /// Archives that take every event of the bus but replayed ones (no
    /// pattern), written in the same commit as the event like
    /// [`archives`](Self::archives). Told apart because a backend may keep
    /// them as a range of its log instead of a copy per event (SQLite
    /// does: the entry is written anyway, and a row per archived event was
    /// the largest part of what archiving cost). Not read back.
    pub bus_archives: Vec<super::ArchiveId>,
    /// What ingest already read of the event for its trace (in memory
    /// only, never stored): see [`HeadHint`].
    pub head: HeadHint,
    /// Whether its bus records traces. A backend may then keep the
    /// searchable head of the event's trace (source, type) in the log
    /// entry itself, and store nothing else for a trace that matched no
    /// rule (SQLite does: that row was most of what tracing cost). Entries
    /// handed out say whether their entry keeps the head.
    pub traced: bool,
}

/// An event's [`EventHead`] as its producer read it, carried in memory
/// with the entry so the router need not parse the event a second time to
/// trace it (about 1.3 µs an event). Entries the log hands out from its
/// in-memory tail keep it; those read back from disk or another node have
/// none, and the router parses the event instead. A hint is derived from
/// the event and says nothing of its own: two entries are equal whatever
/// their hints.
#[derive(Clone, Debug, Default)]
pub struct HeadHint(pub Option<Arc<EventHead>>);

impl PartialEq for HeadHint {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// An event as read back from the log.
pub type LoggedEvent = NewEvent;

/// Identifies one handed-out entry to its consumer's [`LogConsumer::ack`].
/// Opaque: only the backend that made it can read it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AckToken(pub(crate) TokenRepr);

/// What a backend keeps in an [`AckToken`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum TokenRepr {
    /// A position in a totally ordered log (SQLite, memory).
    Seq(i64),
    /// A message's acknowledgement address (JetStream reply subject).
    #[allow(dead_code)]
    Reply(Arc<str>),
}

impl AckToken {
    /// A token for position `seq` of a totally ordered log.
    pub(crate) fn seq(seq: i64) -> Self {
        Self(TokenRepr::Seq(seq))
    }

    /// The position, for backends with a totally ordered log.
    pub(crate) fn as_seq(&self) -> Option<i64> {
        match self.0 {
            TokenRepr::Seq(seq) => Some(seq),
            TokenRepr::Reply(_) => None,
        }
    }
}

/// One entry handed out by a [`LogConsumer`].
#[derive(Clone, Debug)]
pub struct LogEntry {
    /// The event.
    pub event: LoggedEvent,
    /// What to acknowledge once the event is routed.
    pub ack: AckToken,
    /// The entry's place in its tenant bus's log: strictly increasing in
    /// append order (SQLite: the row's sequence; JetStream: the stream
    /// sequence). FIFO delivery orders by it.
    pub position: i64,
}

/// The durable log of accepted events.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Durably appends events (in order). `Ok` means committed: only then
    /// may the bus acknowledge them to the sender.
    async fn append(&self, events: Vec<NewEvent>) -> StoreResult<()>;

    /// Opens the routing consumer. It hands out every appended event at
    /// least once, resuming after a restart from the oldest unacknowledged
    /// entry. One consumer per process.
    async fn consumer(&self) -> StoreResult<Arc<dyn LogConsumer>>;

    /// Removes acknowledged entries accepted before `before`; returns how many.
    async fn prune(&self, before: Millis) -> StoreResult<u64>;
}

/// A reader of the log that acknowledges what it has routed.
#[async_trait]
pub trait LogConsumer: Send + Sync + 'static {
    /// Up to `max` entries not handed out before by this consumer, in append
    /// order within each tenant bus. When none is available, waits up to
    /// `wait` for an append and returns what arrived (possibly nothing).
    async fn next(&self, max: usize, wait: Duration) -> StoreResult<Vec<LogEntry>>;

    /// Records that these entries are routed. Returns once that is durable
    /// (a restart will not hand out an entry whose ack returned, provided
    /// every entry before it was acknowledged too).
    async fn ack(&self, tokens: Vec<AckToken>) -> StoreResult<()>;

    /// Entries handed out and not yet acknowledged (the routing backlog).
    fn in_flight(&self) -> usize;

    /// Gives back what is handed out and not acknowledged, at a clean
    /// stop, so a restarted node (or another) gets it at once instead of
    /// after a shared consumer's redelivery timeout. Backends whose
    /// consumer is this process's alone have nothing to do.
    async fn release(&self) {}
}
