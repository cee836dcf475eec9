//! The durable store, behind the bus's own verbs.
//!
//! The rest of the bus never speaks SQL (or JetStream): it talks to a few
//! small interfaces, each shaped so that more than one backend can answer it.
//!
//! | interface        | verbs                                                   | file              |
//! |------------------|---------------------------------------------------------|-------------------|
//! | [`ConfigStore`]  | tenants, keys, resources (buses, rules, ...), settings   | [`config`]        |
//! | [`EventLog`]     | append (the 2xx contract), a routing consumer with acks  | [`log`]           |
//! | [`DeliveryJobs`] | enqueue, lease due jobs (waiting), ack, retry, extend    | [`jobs`]          |
//! | [`DeadLetters`]  | list, read, delete, redrive                              | [`dead_letters`]  |
//! | [`Queues`]       | push, receive with visibility timeout, ack, depth, purge | [`queues`]        |
//! | [`DedupLog`]     | append unless accepted within the bus's window (atomic)  | [`dedup`]         |
//! | [`SchemaStore`]  | schema versions; discovered schemas (compare-and-set)    | [`schemas`]       |
//! | [`Archives`]     | archive stats, read a window in order, expire, purge     | [`archives`]      |
//! | [`Traces`]       | record, add facts, look up, search, expire               | [`traces`]        |
//! | [`Replays`]      | replay records, append-with-progress                     | [`replays`]       |
//!
//! Positions, job leases, dead-letter ids and queue receipts are opaque to
//! callers: SQLite uses row ids and sequence numbers where a JetStream
//! backend uses stream sequences and message reply subjects. Waiting ("give
//! me the next due jobs, waiting up to N ms", "the next log entries, waiting
//! up to N ms") happens inside the backend, which knows best how to wait.
//! Every backend reads time from a [`Clock`](crate::clock::Clock) given at
//! construction, so due times, leases and visibility can be tested on
//! virtual time.
//!
//! Which backend a server runs on is decided in one place, [`open`]; a
//! shared backend also offers [`Blobs`] (plugin components every node can
//! fetch) and a [`Health`] that follows the connection.
//!
//! Backends: [`sqlite`] (the single-node default: one file, one writer
//! thread with group commit), [`nats`] (NATS JetStream: several bus nodes
//! share one deployment; see its design) and [`memory`] (no durability; for
//! tests of the router and the delivery engine, and as the reference
//! implementation). All pass the same conformance suite (`store::testing`,
//! run by each backend's unit tests; the NATS runs start real servers).

pub mod archives;
pub mod blobs;
pub mod config;
pub mod dead_letters;
pub mod dedup;
pub mod failure;
pub mod jobs;
pub mod log;
pub mod memory;
pub mod nats;
pub mod open;
pub mod queues;
pub mod replays;
pub mod schemas;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod testing;
pub mod traces;
mod watermark;

pub use self::archives::{
    ArchiveId, ArchivePosition, ArchiveStats, ArchivedEvent, Archives, Window,
};
pub use self::blobs::Blobs;
pub use self::config::{
    ConfigChange, ConfigSnapshot, ConfigStore, ConfigWatch, KeyRecord, Resource, ResourceKind,
    TenantRecord,
};
pub use self::dead_letters::{DeadLetter, DeadLetterFilter, DeadLetterId, DeadLetters};
pub use self::dedup::{AdmittedEvent, Appended, Dedup, DedupKey, DedupLog};
pub use self::failure::{AttemptError, Exhausted, FailureCode};
pub use self::jobs::{ChainSlot, DeliveryJobs, JobLease, LeasedJob, NewJob};
pub use self::log::{AckToken, EventLog, HeadHint, LogConsumer, LogEntry, LoggedEvent, NewEvent};
pub use self::open::{Health, OpenStoreError, StoreSettings, open};
pub use self::queues::{NewQueueMessage, QueueDepth, Queues, ReceivedMessage};
pub use self::replays::{ReplayProgress, ReplayRecord, ReplayState, Replays};
pub use self::schemas::{DiscoveredSchema, SchemaStore, SchemaVersion};
pub use self::traces::{
    Trace, TraceCursor, TraceFact, TraceKey, TraceQuery, TraceState, TraceSummary, Traces,
};
pub use crate::clock::Millis;

use std::sync::Arc;

/// Errors a store operation can report to its caller.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The resource already exists and may not be replaced.
    #[error("{0} already exists")]
    Conflict(String),
    /// The store is shutting down or its writer has stopped.
    #[error("the store is closed")]
    Closed,
    /// The backend cannot be reached right now (e.g. a lost connection);
    /// the caller may try again, and must not report success.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The backend failed (I/O, corruption, full disk, ...).
    #[error("store failure: {0:#}")]
    Backend(#[from] anyhow::Error),
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// A backend that answers every store interface.
pub trait Backend:
    ConfigStore
    + EventLog
    + DeliveryJobs
    + DeadLetters
    + Queues
    + DedupLog
    + SchemaStore
    + Archives
    + Traces
    + Replays
{
}

impl<T> Backend for T where
    T: ConfigStore
        + EventLog
        + DeliveryJobs
        + DeadLetters
        + Queues
        + DedupLog
        + SchemaStore
        + Archives
        + Traces
        + Replays
{
}

/// The store interfaces of one backend, each as its own handle, so every
/// part of the bus holds only the verbs it uses.
#[derive(Clone)]
pub struct Stores {
    /// Tenants, keys, resources and settings.
    pub config: Arc<dyn ConfigStore>,
    /// The event log.
    pub log: Arc<dyn EventLog>,
    /// Scheduled delivery attempts.
    pub jobs: Arc<dyn DeliveryJobs>,
    /// Deliveries given up on.
    pub dead_letters: Arc<dyn DeadLetters>,
    /// Pull queues.
    pub queues: Arc<dyn Queues>,
    /// Whether the backend can take writes now (readiness).
    pub health: Arc<dyn Health>,
    /// Plugin components shared with the other nodes; `None` when this
    /// process is the only one (SQLite, memory).
    pub blobs: Option<Arc<dyn Blobs>>,
    /// Deduplicated appends (the ingest door).
    pub dedup: Arc<dyn DedupLog>,
    /// Registered and discovered schemas.
    pub schemas: Arc<dyn SchemaStore>,
    /// Archive contents.
    pub archives: Arc<dyn Archives>,
    /// Per-event traces.
    pub traces: Arc<dyn Traces>,
    /// Replay records.
    pub replays: Arc<dyn Replays>,
}

impl Stores {
    /// Splits one backend into its interfaces.
    pub fn new<B: Backend + 'static>(backend: Arc<B>) -> Self {
        Self {
            config: backend.clone(),
            log: backend.clone(),
            jobs: backend.clone(),
            dead_letters: backend.clone(),
            queues: backend.clone(),
            dedup: backend.clone(),
            schemas: backend.clone(),
            archives: backend.clone(),
            traces: backend.clone(),
            replays: backend,
            health: Arc::new(open::Local),
            blobs: None,
        }
    }

    /// The same, for a backend several nodes share: its health follows the
    /// connection, and plugin components go through `blobs`.
    pub fn shared(self, health: Arc<dyn Health>, blobs: Arc<dyn Blobs>) -> Self {
        Self {
            health,
            blobs: Some(blobs),
            ..self
        }
    }
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}
