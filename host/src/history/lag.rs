//! How far routing is behind appends: events appended (by ingest, `bus`
//! targets and replays) minus entries the router has taken from the log.
//! A replay waits while this backlog is large, so live events never queue
//! behind a replay's.

use std::sync::atomic::{AtomicU64, Ordering};

/// Appended vs routed counts (this process only; approximate across restarts).
#[derive(Debug, Default)]
pub struct RoutingLag {
    appended: AtomicU64,
    taken: AtomicU64,
}

impl RoutingLag {
    /// `n` events were appended.
    pub fn appended(&self, n: usize) {
        self.appended.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The router took `n` entries from the log.
    pub fn taken(&self, n: usize) {
        self.taken.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Entries appended and not yet taken by the router.
    pub fn backlog(&self) -> u64 {
        let taken = self.taken.load(Ordering::Relaxed);
        self.appended.load(Ordering::Relaxed).saturating_sub(taken)
    }
}
