//! Per bus: whether events are traced, and the archives that take them.

use crate::clock::Millis;
use crate::pattern::RuleSet;
use crate::store::ArchiveId;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One archive as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchiveEntry {
    /// Its name on the bus.
    pub name: String,
    /// Its contents in the store.
    pub id: ArchiveId,
    /// The pattern as sent (`None`: every event).
    pub pattern: Option<Value>,
    /// Days events are kept (0: forever).
    pub retention_days: u32,
    /// Free text.
    pub description: Option<String>,
    /// When it was created (it holds events accepted from then on).
    pub created_ms: Millis,
}

/// A bus's history settings, immutable once built (a change builds a new one).
#[derive(Debug, Default)]
pub struct BusHistory {
    /// Whether the bus records a trace of each event.
    pub traced: bool,
    /// Its archives by name.
    pub archives: BTreeMap<String, ArchiveEntry>,
    /// The archives' compiled patterns (each also refusing replayed events).
    pub matcher: RuleSet<ArchiveId>,
    /// When every archive takes every event (none has a pattern): their
    /// ids, so most events are stamped without parsing them.
    pub unconditional: Option<Vec<ArchiveId>>,
    /// The ids of the archives without a pattern (they take every event
    /// of the bus but replayed ones).
    pub whole_bus: Vec<ArchiveId>,
}

impl BusHistory {
    /// The archives that take an event (its CloudEvents JSON); none when the
    /// event cannot be read.
    pub fn archives_for(&self, body: &[u8]) -> Vec<ArchiveId> {
        if self.matcher.is_empty() {
            return Vec::new();
        }
        match &self.unconditional {
            // Such archives refuse only replayed events, and an event that
            // spells `replayname` nowhere (not even with a JSON escape)
            // cannot carry it: no need to parse the event.
            Some(ids) if !may_name_replay(body) => ids.clone(),
            _ => self.matcher.matches_json(body).unwrap_or_default(),
        }
    }

    /// Stamps an event with the archives that take it (see
    /// [`archives_for`](Self::archives_for)): those that take every event
    /// of the bus go in `bus_archives`, the others in `archives`.
    pub fn stamp_archives(&self, e: &mut crate::store::NewEvent) {
        let ids = self.archives_for(&e.body);
        if self.unconditional.is_some() {
            e.bus_archives = ids;
            return;
        }
        (e.bus_archives, e.archives) = ids.into_iter().partition(|id| self.whole_bus.contains(id));
    }

    /// The archive with this store id, if it is still configured.
    pub fn archive_by_id(&self, id: &str) -> Option<&ArchiveEntry> {
        self.archives.values().find(|a| a.id == id)
    }
}

/// Whether `body` might hold the `replayname` attribute: it contains the
/// name, or a `\u` escape that could spell it.
fn may_name_replay(body: &[u8]) -> bool {
    memchr::memmem::find(body, crate::store::traces::REPLAY_EXTENSION.as_bytes()).is_some()
        || memchr::memmem::find(body, b"\\u").is_some()
}

/// Where the history settings of each bus are found (the control plane's
/// catalog implements it).
pub trait HistoryTable: Send + Sync + 'static {
    /// The settings of `tenant`'s bus `bus`, if the bus exists.
    fn bus_history(&self, tenant: &str, bus: &str) -> Option<Arc<BusHistory>>;

    /// Every configured archive, as (tenant, bus, archive).
    fn all_archives(&self) -> Vec<(String, String, ArchiveEntry)>;

    /// Whether `tenant`'s bus `bus` records traces.
    fn traced(&self, tenant: &str, bus: &str) -> bool {
        self.bus_history(tenant, bus).is_some_and(|h| h.traced)
    }
}
