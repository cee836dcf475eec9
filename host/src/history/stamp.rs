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
use crate::store::dedup::{AdmittedEvent, Appended, DedupLog};
use crate::store::{EventLog, LogConsumer, Millis, NewEvent, StoreResult};
use async_trait::async_trait;
use std::sync::Arc;

/// An [`EventLog`] (and [`DedupLog`]: the ingest door's deduplicating
/// append) that stamps archives on appended events.
pub struct StampingLog {
    inner: Arc<dyn EventLog>,
    dedup: Arc<dyn DedupLog>,
    table: Arc<dyn HistoryTable>,
    lag: Arc<super::RoutingLag>,
}

impl StampingLog {
    /// Wraps `inner` and `dedup` (one store's), reading archives from
    /// `table` and counting appends in `lag`.
    pub fn new(
        inner: Arc<dyn EventLog>,
        dedup: Arc<dyn DedupLog>,
        table: Arc<dyn HistoryTable>,
        lag: Arc<super::RoutingLag>,
    ) -> Self {
        Self {
            inner,
            dedup,
            table,
            lag,
        }
    }

    /// Stamps each event with the archives that take it (unless it already
    /// names some) and whether its bus traces.
    fn stamp<'a>(&self, events: impl Iterator<Item = &'a mut NewEvent>) {
        let mut current: Option<(String, String, Option<Arc<super::BusHistory>>)> = None;
        for e in events {
            let history = match &current {
                Some((t, b, h)) if *t == e.tenant && *b == e.bus => h.clone(),
                _ => {
                    let h = self.table.bus_history(&e.tenant, &e.bus);
                    current = Some((e.tenant.clone(), e.bus.clone(), h.clone()));
                    h
                }
            };
            if let Some(h) = history {
                e.traced = h.traced;
                if e.archives.is_empty() && e.bus_archives.is_empty() {
                    h.stamp_archives(e);
                }
            }
        }
    }
}

#[async_trait]
impl DedupLog for StampingLog {
    async fn append_deduplicated(
        &self,
        mut events: Vec<AdmittedEvent>,
    ) -> StoreResult<Vec<Appended>> {
        self.stamp(events.iter_mut().map(|a| &mut a.event));
        let answers = self.dedup.append_deduplicated(events).await?;
        let n = answers.iter().filter(|a| **a == Appended::New).count();
        self.lag.appended(n);
        Ok(answers)
    }

    async fn prune_dedup_keys(&self, now: Millis) -> StoreResult<u64> {
        self.dedup.prune_dedup_keys(now).await
    }
}

#[async_trait]
impl EventLog for StampingLog {
    async fn append(&self, mut events: Vec<NewEvent>) -> StoreResult<()> {
        self.stamp(events.iter_mut());
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
