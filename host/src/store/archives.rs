//! Archive contents: copies of a bus's events kept for replays.
//!
//! An archive's definition (bus, pattern, retention) is configuration (a
//! [`ResourceKind::Archive`](super::ResourceKind::Archive) resource); its
//! contents are data, kept here under the archive's [`ArchiveId`] — an
//! opaque id the control plane gives each archive when it is created, so a
//! deleted and re-created archive of the same name starts empty.
//!
//! Writing happens in [`EventLog::append`](super::EventLog::append): each
//! [`NewEvent`](super::NewEvent) names the archives that take it, and the
//! backend stores them in the same commit as the event, so an
//! acknowledged event is in its archives at once (SQLite: a row per
//! archive that refers to the log entry, which the log keeps while such
//! rows exist, or, for an archive without a pattern — named in
//! `bus_archives` — no row at all: the archive is a range of its bus's
//! log; the in-memory store: a copy). (JetStream: an archive
//! is a stream with a time-based retention; the append publishes the event
//! to the archive's subject in the same atomic batch.)
//!
//! Reading is by ingest time: [`Archives::read_archive`] hands out a window
//! in the order the events were accepted (ingest time, then commit order),
//! resuming after an opaque [`ArchivePosition`] (SQLite: time and row id;
//! JetStream: the stream sequence of an ordered consumer started at
//! `from`). Retention and deletion remove contents in bounded chunks, so a
//! large expiry never holds the writer for long.

use super::{LoggedEvent, Millis, StoreResult};
use async_trait::async_trait;

/// Identifies an archive's contents in the store (opaque, never reused).
pub type ArchiveId = String;

/// What an archive holds right now (exact).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Events held.
    pub event_count: u64,
    /// Their size in bytes (the events' CloudEvents JSON).
    pub size_bytes: u64,
    /// Ingest time of the oldest event held.
    pub oldest_ms: Option<Millis>,
    /// Ingest time of the newest event held.
    pub newest_ms: Option<Millis>,
}

/// Where a read of an archive stopped; the next read resumes after it.
/// Opaque but storable (a replay persists it to resume after a restart).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ArchivePosition(pub(crate) String);

impl ArchivePosition {
    /// The position as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A position read back from storage.
    pub fn from_stored(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The position of the entry accepted at `ms` with backend id `id`
    /// (for backends ordered by ingest time, then an id).
    pub(crate) fn at(ms: Millis, id: i64) -> Self {
        Self(format!("{ms}.{id}"))
    }

    /// The (ingest time, backend id) a position made by [`Self::at`] holds.
    pub(crate) fn parts(&self) -> Option<(Millis, i64)> {
        let (ms, id) = self.0.split_once('.')?;
        Some((ms.parse().ok()?, id.parse().ok()?))
    }
}

/// An ingest-time window: `from` inclusive, `to` exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First ingest time included.
    pub from_ms: Millis,
    /// First ingest time excluded.
    pub to_ms: Millis,
}

impl Window {
    /// Whether an ingest time falls in the window.
    pub fn contains(&self, ms: Millis) -> bool {
        self.from_ms <= ms && ms < self.to_ms
    }
}

/// One archived event as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchivedEvent {
    /// Resume after this.
    pub position: ArchivePosition,
    /// The event as it was accepted (its bus, id, body and ingest time).
    pub event: LoggedEvent,
}

/// Archive contents.
#[async_trait]
pub trait Archives: Send + Sync + 'static {
    /// What an archive holds (zeros for an archive without contents).
    async fn archive_stats(&self, archive: &str) -> StoreResult<ArchiveStats>;

    /// How many events of the archive fall in `window`.
    async fn count_archived(&self, archive: &str, window: Window) -> StoreResult<u64>;

    /// Up to `max` events of the archive in `window`, in the order they were
    /// accepted, after `after` when given.
    async fn read_archive(
        &self,
        archive: &str,
        window: Window,
        after: Option<&ArchivePosition>,
        max: usize,
    ) -> StoreResult<Vec<ArchivedEvent>>;

    /// Removes up to `max` events accepted before `before` (retention);
    /// returns how many. Fewer than `max` means none is left.
    async fn expire_archive(&self, archive: &str, before: Millis, max: usize) -> StoreResult<u64>;

    /// Removes up to `max` events of an archive that was deleted; returns
    /// how many. Fewer than `max` means the archive is gone from the store.
    async fn purge_archive(&self, archive: &str, max: usize) -> StoreResult<u64>;

    /// Every archive that has contents in the store (to find the contents
    /// of deleted archives).
    async fn stored_archives(&self) -> StoreResult<Vec<ArchiveId>>;
}
