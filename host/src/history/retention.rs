//! The background sweep: archive retention, contents of deleted archives,
//! and trace retention (age and size cap).
//!
//! Every removal is a bounded chunk (one short store operation), with a
//! yield between chunks, so a large expiry shares the store's writer with
//! ingest instead of holding it: ingest never waits for more than one chunk.

use super::table::HistoryTable;
use crate::clock::{SharedClock, millis};
use crate::store::{Archives, StoreResult, Traces};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Rows one store call removes at most.
pub const CHUNK: usize = 500;

/// A day in milliseconds.
const DAY_MS: i64 = 86_400_000;

/// What the sweep enforces and how often it runs.
#[derive(Clone, Debug)]
pub struct RetentionSettings {
    /// How long traces are kept.
    pub trace_retention: Duration,
    /// Most traces kept (the oldest beyond it are dropped).
    pub trace_max_events: u64,
    /// Time between sweeps.
    pub interval: Duration,
}

/// What one sweep removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Archived events past their archive's retention.
    pub archived_expired: u64,
    /// Archived events of deleted archives.
    pub archived_purged: u64,
    /// Traces past their retention or beyond the cap.
    pub traces: u64,
}

/// The sweeper's view of the bus.
pub struct Sweeper {
    /// Which archives exist and their retention.
    pub table: Arc<dyn HistoryTable>,
    /// Archive contents.
    pub archives: Arc<dyn Archives>,
    /// Traces.
    pub traces: Arc<dyn Traces>,
    /// Now.
    pub clock: SharedClock,
    /// Limits.
    pub settings: RetentionSettings,
}

impl Sweeper {
    /// Sweeps every `interval` until shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.settings.interval) => {}
                _ = shutdown.changed() => return,
            }
            match self.sweep().await {
                Ok(s) if s == Swept::default() => {}
                Ok(s) => tracing::debug!(?s, "history sweep"),
                Err(e) => tracing::warn!(error = %e, "history sweep failed; next time"),
            }
        }
    }

    /// One sweep.
    pub async fn sweep(&self) -> StoreResult<Swept> {
        let mut swept = Swept::default();
        let now = self.clock.now_ms();
        let archives = self.table.all_archives();
        for (_, _, archive) in archives.iter().filter(|(_, _, a)| a.retention_days > 0) {
            let before = now - i64::from(archive.retention_days) * DAY_MS;
            swept.archived_expired +=
                chunked(|| self.archives.expire_archive(&archive.id, before, CHUNK)).await?;
        }
        let live: HashSet<&str> = archives.iter().map(|(_, _, a)| a.id.as_str()).collect();
        for id in self.archives.stored_archives().await? {
            if !live.contains(id.as_str()) {
                swept.archived_purged +=
                    chunked(|| self.archives.purge_archive(&id, CHUNK)).await?;
            }
        }
        let before = now - millis(self.settings.trace_retention);
        let cap = self.settings.trace_max_events;
        swept.traces += chunked(|| self.traces.expire_traces(before, cap, CHUNK)).await?;
        Ok(swept)
    }
}

/// Repeats a chunked removal until a chunk comes back short.
async fn chunked<F, Fut>(mut step: F) -> StoreResult<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<u64>>,
{
    let mut total = 0;
    loop {
        let n = step().await?;
        total += n;
        if n < CHUNK as u64 {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}
