//! The event log as ingest and `bus` targets see it: every appended event
//! is stamped with the archives that take it, so the store writes the
//! archive copies in the same commit as the event — an acknowledged event
//! is in its archives at once.
//!
//! Replayed events never reach this: the replayer appends through
//! [`Replays::replay_append`](crate::store::Replays::replay_append), and every
//! archive pattern refuses events that carry `replayname`, so a replayed
//! event forwarded by a `bus` target is not archived either.

use super::table::HistoryTable;
use crate::store::{EventLog, LogConsumer, Millis, NewEvent, StoreResult};
use async_trait::async_trait;
use std::sync::Arc;

/// An [`EventLog`] that stamps archives on appended events.
pub struct StampingLog {
    inner: Arc<dyn EventLog>,
    table: Arc<dyn HistoryTable>,
    lag: Arc<super::RoutingLag>,
}

impl StampingLog {
    /// Wraps `inner`, reading archives from `table` and counting appends in `lag`.
    pub fn new(
        inner: Arc<dyn EventLog>,
        table: Arc<dyn HistoryTable>,
        lag: Arc<super::RoutingLag>,
    ) -> Self {
        Self { inner, table, lag }
    }
}

#[async_trait]
impl EventLog for StampingLog {
    async fn append(&self, mut events: Vec<NewEvent>) -> StoreResult<()> {
        let mut current: Option<(&str, &str, Option<Arc<super::BusHistory>>)> = None;
        let mut stamps = Vec::with_capacity(events.len());
        for e in &events {
            let history = match &current {
                Some((t, b, h)) if *t == e.tenant && *b == e.bus => h.clone(),
                _ => {
                    let h = self.table.bus_history(&e.tenant, &e.bus);
                    current = Some((&e.tenant, &e.bus, h.clone()));
                    h
                }
            };
            stamps.push(history.map(|h| h.archives_for(&e.body)).unwrap_or_default());
        }
        for (e, archives) in events.iter_mut().zip(stamps) {
            if e.archives.is_empty() {
                e.archives = archives;
            }
        }
        let n = events.len();
        self.inner.append(events).await?;
        self.lag.appended(n);
        Ok(())
    }

    async fn consumer(&self) -> StoreResult<Arc<dyn LogConsumer>> {
        self.inner.consumer().await
    }

    async fn prune(&self, before: Millis) -> StoreResult<u64> {
        self.inner.prune(before).await
    }
}
