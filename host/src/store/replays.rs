//! Replays: archived events sent again, and how far each replay got.
//!
//! A [`ReplayRecord`] is the replay's definition and progress. The replayer
//! reads the archive from the record's [`ArchivePosition`] on and hands
//! each batch to [`Replays::replay_append`], which appends the batch to the
//! event log *and* records the new progress as one step — only while the
//! replay is still running. So a restart resumes exactly after the last
//! appended batch (nothing is appended twice), and once a cancel is
//! recorded nothing more is appended. (JetStream cannot commit a stream
//! publish and a KV update together; there the append carries a
//! message id made of the replay id and the archive sequence, so the
//! stream's de-duplication drops a batch published again after a crash.)

use super::archives::{ArchiveId, ArchivePosition, Window};
use super::{Millis, NewEvent, StoreResult};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Where a replay stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayState {
    /// Accepted, not yet reading.
    Starting,
    /// Appending events.
    Running,
    /// Every event of the window was appended.
    Completed,
    /// Stopped by `DELETE`.
    Cancelled,
    /// Stopped by an error (see the reason).
    Failed,
}

impl ReplayState {
    /// Every state.
    pub const ALL: [ReplayState; 5] = [
        Self::Starting,
        Self::Running,
        Self::Completed,
        Self::Cancelled,
        Self::Failed,
    ];

    /// The name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }

    /// The state with this name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Whether the replay has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled | Self::Failed)
    }
}

/// How far a replay got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayProgress {
    /// Events appended so far.
    pub events_replayed: u64,
    /// Ingest time of the last event appended.
    pub last_replayed_ms: Option<Millis>,
    /// The archive position after the last event appended.
    pub position: Option<ArchivePosition>,
}

/// A replay's definition and progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayRecord {
    /// Its id (unique across tenants).
    pub id: String,
    /// Owning tenant.
    pub tenant: String,
    /// The name it was given, if any (unique per tenant).
    pub name: Option<String>,
    /// The archive's bus.
    pub bus: String,
    /// The archive's name.
    pub archive: String,
    /// The archive's contents.
    pub archive_id: ArchiveId,
    /// Which events (by ingest time).
    pub window: Window,
    /// Where they go.
    pub destination_bus: String,
    /// Only these rules of the destination bus (all when empty).
    pub rules: Vec<String>,
    /// Where it stands.
    pub state: ReplayState,
    /// Why it failed (or what it is waiting for).
    pub state_reason: Option<String>,
    /// Events in the window when the replay started.
    pub events_total: u64,
    /// How far it got.
    pub progress: ReplayProgress,
    /// When it was accepted.
    pub started_ms: Millis,
    /// When it ended.
    pub ended_ms: Option<Millis>,
}

impl ReplayRecord {
    /// The `replayname` its events carry: its name, or its id.
    pub fn replay_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

/// Replay records and the replayer's atomic append.
#[async_trait]
pub trait Replays: Send + Sync + 'static {
    /// Stores a new replay; [`Conflict`](super::StoreError::Conflict) if its
    /// id, or its name within the tenant, is taken.
    async fn create_replay(&self, record: ReplayRecord) -> StoreResult<()>;

    /// One of a tenant's replays.
    async fn replay(&self, tenant: &str, id: &str) -> StoreResult<Option<ReplayRecord>>;

    /// A tenant's replays, newest first.
    async fn list_replays(&self, tenant: &str) -> StoreResult<Vec<ReplayRecord>>;

    /// Every replay that has not ended (all tenants), oldest first: what to
    /// resume after a restart.
    async fn unfinished_replays(&self) -> StoreResult<Vec<ReplayRecord>>;

    /// Sets a replay's state, reason and end; false if the replay is unknown
    /// or has already ended (an ended replay never changes again).
    async fn set_replay_state(
        &self,
        tenant: &str,
        id: &str,
        state: ReplayState,
        reason: Option<String>,
        ended_ms: Option<Millis>,
    ) -> StoreResult<bool>;

    /// Appends `events` to the log and records `progress`, as one step, if
    /// the replay is still starting or running (it becomes running); false
    /// (and nothing appended) otherwise.
    async fn replay_append(
        &self,
        tenant: &str,
        id: &str,
        events: Vec<NewEvent>,
        progress: ReplayProgress,
    ) -> StoreResult<bool>;
}

/// A replay record as the backends store it (one JSON shape, so the
/// on-disk format is the same everywhere and defined once).
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredReplay {
    id: String,
    tenant: String,
    name: Option<String>,
    bus: String,
    archive: String,
    archive_id: String,
    from_ms: Millis,
    to_ms: Millis,
    destination_bus: String,
    rules: Vec<String>,
    state: ReplayState,
    state_reason: Option<String>,
    events_total: u64,
    events_replayed: u64,
    last_replayed_ms: Option<Millis>,
    position: Option<String>,
    started_ms: Millis,
    ended_ms: Option<Millis>,
}

impl From<&ReplayRecord> for StoredReplay {
    fn from(r: &ReplayRecord) -> Self {
        Self {
            id: r.id.clone(),
            tenant: r.tenant.clone(),
            name: r.name.clone(),
            bus: r.bus.clone(),
            archive: r.archive.clone(),
            archive_id: r.archive_id.clone(),
            from_ms: r.window.from_ms,
            to_ms: r.window.to_ms,
            destination_bus: r.destination_bus.clone(),
            rules: r.rules.clone(),
            state: r.state,
            state_reason: r.state_reason.clone(),
            events_total: r.events_total,
            events_replayed: r.progress.events_replayed,
            last_replayed_ms: r.progress.last_replayed_ms,
            position: r.progress.position.as_ref().map(|p| p.as_str().to_owned()),
            started_ms: r.started_ms,
            ended_ms: r.ended_ms,
        }
    }
}

impl From<StoredReplay> for ReplayRecord {
    fn from(s: StoredReplay) -> Self {
        Self {
            id: s.id,
            tenant: s.tenant,
            name: s.name,
            bus: s.bus,
            archive: s.archive,
            archive_id: s.archive_id,
            window: Window {
                from_ms: s.from_ms,
                to_ms: s.to_ms,
            },
            destination_bus: s.destination_bus,
            rules: s.rules,
            state: s.state,
            state_reason: s.state_reason,
            events_total: s.events_total,
            progress: ReplayProgress {
                events_replayed: s.events_replayed,
                last_replayed_ms: s.last_replayed_ms,
                position: s.position.map(ArchivePosition::from_stored),
            },
            started_ms: s.started_ms,
            ended_ms: s.ended_ms,
        }
    }
}
