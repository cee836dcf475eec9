//! The replayer: archived windows sent again, in the background.
//!
//! A replay reads its archive's window in the order the events were
//! accepted and appends them, in batches, to the destination bus's log
//! (any bus of the tenant), each keeping its `id` and carrying the
//! `replayname` extension; restricted to some rules, each entry says so
//! (`only_rules`) and the router routes it to those alone. Each batch and
//! the replay's progress are one store step
//! ([`Replays::replay_append`]), so a restart resumes right after the last
//! batch and a recorded cancel stops every later append.
//!
//! Limits, per tenant: at most [`ReplayLimits::max_concurrent`] replays at
//! once, and a shared rate cap ([`ReplayLimits::rate`], events/s). Live
//! traffic comes first: a replay appends its next batch only while the
//! router has fewer than [`HEADROOM`] entries in flight or not yet read
//! ([`RoutingLag`](super::RoutingLag)), so it fills the router's idle
//! capacity instead of queueing live events behind it.

use super::table::HistoryTable;
use super::trace::TraceSink;
use crate::clock::{Millis, SharedClock};
use crate::store::traces::{REPLAY_EXTENSION, ReplayMark};
use crate::store::{
    ArchivedEvent, Archives, LogConsumer, NewEvent, ReplayProgress, ReplayRecord, ReplayState,
    Replays, StoreError, TraceFact, TraceKey,
};
use bytes::Bytes;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Events one batch appends at most.
const BATCH: usize = 256;
/// Routing entries in flight above which a replay waits for live traffic.
pub const HEADROOM: usize = 2048;
/// How often a waiting replay looks again.
const POLL: Duration = Duration::from_millis(5);

/// Per-tenant replay limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayLimits {
    /// Replays running at once per tenant.
    pub max_concurrent: usize,
    /// Events per second all of a tenant's replays append together (`None`: no cap).
    pub rate: Option<u32>,
}

impl Default for ReplayLimits {
    fn default() -> Self {
        Self {
            max_concurrent: 10,
            rate: None,
        }
    }
}

/// Why a replay call was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The tenant already runs its maximum of replays.
    #[error("{limit} replays are already running; wait for one to end or cancel one")]
    TooMany {
        /// The limit.
        limit: usize,
    },
    /// No such replay (for this tenant).
    #[error("replay {0:?} does not exist")]
    NotFound(String),
    /// The replay has already ended.
    #[error("replay {id:?} has already ended ({})", .state.as_str())]
    Ended {
        /// The replay.
        id: String,
        /// How it ended.
        state: ReplayState,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A running replay's handle.
struct Running {
    tenant: String,
    cancel: watch::Sender<bool>,
}

/// Why a replay task stopped waiting.
enum Stop {
    /// `DELETE` (already recorded).
    Cancelled,
    /// The server is shutting down: leave the replay to resume.
    Shutdown,
}

/// Runs replays. Shared as `Arc<Replayer>`.
pub struct Replayer {
    archives: Arc<dyn Archives>,
    replays: Arc<dyn Replays>,
    table: Arc<dyn HistoryTable>,
    sink: TraceSink,
    routing: Arc<dyn LogConsumer>,
    lag: Arc<super::RoutingLag>,
    clock: SharedClock,
    limits: ReplayLimits,
    shutdown: watch::Receiver<bool>,
    running: Mutex<HashMap<String, Running>>,
    /// Per tenant: when the rate cap lets the next event go.
    pace: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Replayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayer")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// What the replayer is built from.
pub struct ReplayerParts {
    /// Archive contents.
    pub archives: Arc<dyn Archives>,
    /// Replay records and the atomic append.
    pub replays: Arc<dyn Replays>,
    /// Buses and archives.
    pub table: Arc<dyn HistoryTable>,
    /// Where replay marks go.
    pub sink: TraceSink,
    /// The router's consumer (its backlog decides when a replay may go on).
    pub routing: Arc<dyn LogConsumer>,
    /// Appends not yet taken by the router.
    pub lag: Arc<super::RoutingLag>,
    /// Now.
    pub clock: SharedClock,
    /// Limits.
    pub limits: ReplayLimits,
    /// Stops every replay task (they resume after a restart).
    pub shutdown: watch::Receiver<bool>,
}

impl Replayer {
    /// A replayer with nothing running.
    pub fn new(parts: ReplayerParts) -> Arc<Self> {
        Arc::new(Self {
            archives: parts.archives,
            replays: parts.replays,
            table: parts.table,
            sink: parts.sink,
            routing: parts.routing,
            lag: parts.lag,
            clock: parts.clock,
            limits: parts.limits,
            shutdown: parts.shutdown,
            running: Mutex::new(HashMap::new()),
            pace: Mutex::new(HashMap::new()),
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The limits in force.
    pub fn limits(&self) -> ReplayLimits {
        self.limits
    }

    /// Starts a replay (`record` in state `starting`, its window and
    /// destination checked by the caller): counts the window, stores the
    /// record and runs it in the background.
    pub async fn start(
        self: &Arc<Self>,
        mut record: ReplayRecord,
    ) -> Result<ReplayRecord, ReplayError> {
        let (cancel, cancelled) = watch::channel(false);
        {
            let mut running = self.running();
            let mine = running
                .values()
                .filter(|r| r.tenant == record.tenant)
                .count();
            if mine >= self.limits.max_concurrent {
                return Err(ReplayError::TooMany {
                    limit: self.limits.max_concurrent,
                });
            }
            // Reserved now, so concurrent starts cannot pass the limit.
            running.insert(
                record.id.clone(),
                Running {
                    tenant: record.tenant.clone(),
                    cancel,
                },
            );
        }
        let stored = async {
            record.events_total = self
                .archives
                .count_archived(&record.archive_id, record.window)
                .await?;
            self.replays.create_replay(record.clone()).await
        }
        .await;
        if let Err(e) = stored {
            self.running().remove(&record.id);
            return Err(e.into());
        }
        let me = self.clone();
        let task = record.clone();
        tokio::spawn(async move { me.run(task, cancelled).await });
        Ok(record)
    }

    /// Resumes every replay that had not ended (at start-up).
    pub async fn resume(self: &Arc<Self>) -> Result<usize, StoreError> {
        let unfinished = self.replays.unfinished_replays().await?;
        let n = unfinished.len();
        for record in unfinished {
            let (cancel, cancelled) = watch::channel(false);
            self.running().insert(
                record.id.clone(),
                Running {
                    tenant: record.tenant.clone(),
                    cancel,
                },
            );
            tracing::info!(replay = %record.id, replayed = record.progress.events_replayed, "resuming a replay");
            let me = self.clone();
            tokio::spawn(async move { me.run(record, cancelled).await });
        }
        Ok(n)
    }

    /// Cancels a replay; answers its record as cancelled.
    pub async fn cancel(&self, tenant: &str, id: &str) -> Result<ReplayRecord, ReplayError> {
        let now = self.clock.now_ms();
        let changed = self
            .replays
            .set_replay_state(
                tenant,
                id,
                ReplayState::Cancelled,
                Some("cancelled by request".into()),
                Some(now),
            )
            .await?;
        if let Some(r) = self.running().get(id) {
            r.cancel.send_replace(true);
        }
        let record = self
            .replays
            .replay(tenant, id)
            .await?
            .ok_or_else(|| ReplayError::NotFound(id.to_owned()))?;
        if !changed {
            return Err(ReplayError::Ended {
                id: id.to_owned(),
                state: record.state,
            });
        }
        Ok(record)
    }

    /// Waits until `at`, or stops early.
    async fn wait_until(
        &self,
        at: Instant,
        cancelled: &mut watch::Receiver<bool>,
    ) -> Result<(), Stop> {
        let mut shutdown = self.shutdown.clone();
        if *cancelled.borrow() {
            return Err(Stop::Cancelled);
        }
        if *shutdown.borrow() {
            return Err(Stop::Shutdown);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(at) => Ok(()),
            _ = cancelled.changed() => Err(Stop::Cancelled),
            _ = shutdown.changed() => Err(Stop::Shutdown),
        }
    }

    /// Waits for the tenant's rate cap to allow `n` more events.
    async fn paced(
        &self,
        tenant: &str,
        n: usize,
        cancelled: &mut watch::Receiver<bool>,
    ) -> Result<(), Stop> {
        let Some(rate) = self.limits.rate.filter(|r| *r > 0) else {
            return self.wait_until(Instant::now(), cancelled).await;
        };
        let at = {
            let mut pace = self.pace.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let next = pace.entry(tenant.to_owned()).or_insert(now);
            let at = (*next).max(now);
            *next = at + Duration::from_secs_f64(n as f64 / f64::from(rate));
            at
        };
        self.wait_until(at, cancelled).await
    }

    /// Events per batch: small enough that a rate-capped replay still
    /// notices a cancel within a second.
    fn batch_size(&self) -> usize {
        match self.limits.rate.filter(|r| *r > 0) {
            Some(rate) => (rate as usize / 10).clamp(1, BATCH),
            None => BATCH,
        }
    }

    async fn run(self: Arc<Self>, record: ReplayRecord, mut cancelled: watch::Receiver<bool>) {
        let id = record.id.clone();
        let outcome = self.replay(record.clone(), &mut cancelled).await;
        self.running().remove(&id);
        let now = self.clock.now_ms();
        let end = match outcome {
            Ok(()) => Some((ReplayState::Completed, None)),
            Err(Ended::Failed(reason)) => Some((ReplayState::Failed, Some(reason))),
            Err(Ended::Stopped) => None,
        };
        if let Some((state, reason)) = end {
            if let Some(r) = &reason {
                tracing::warn!(replay = %id, reason = %r, "replay failed");
            }
            if let Err(e) = self
                .replays
                .set_replay_state(&record.tenant, &id, state, reason, Some(now))
                .await
            {
                tracing::error!(replay = %id, error = %e, "cannot record the end of a replay; it resumes after a restart");
            }
        }
    }

    async fn replay(
        &self,
        record: ReplayRecord,
        cancelled: &mut watch::Receiver<bool>,
    ) -> Result<(), Ended> {
        let name = record.replay_name().to_owned();
        let only_rules = (!record.rules.is_empty()).then(|| record.rules.clone());
        let mut progress = record.progress.clone();
        let mut failures = 0u32;
        loop {
            let source = self.table.bus_history(&record.tenant, &record.bus);
            if source.is_none_or(|h| h.archive_by_id(&record.archive_id).is_none()) {
                return Err(Ended::Failed(format!(
                    "archive {:?} was deleted",
                    record.archive
                )));
            }
            let Some(destination) = self
                .table
                .bus_history(&record.tenant, &record.destination_bus)
            else {
                return Err(Ended::Failed(format!(
                    "destination bus {:?} was deleted",
                    record.destination_bus
                )));
            };
            let batch = match self
                .archives
                .read_archive(
                    &record.archive_id,
                    record.window,
                    progress.position.as_ref(),
                    self.batch_size(),
                )
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    self.retry_later(&record.id, &e, &mut failures, cancelled)
                        .await?;
                    continue;
                }
            };
            if batch.is_empty() {
                return Ok(());
            }
            self.paced(&record.tenant, batch.len(), cancelled).await?;
            while self.routing.in_flight() as u64 + self.lag.backlog() > HEADROOM as u64 {
                self.wait_until(Instant::now() + POLL, cancelled).await?;
            }
            let now = self.clock.now_ms();
            let events: Vec<NewEvent> = batch
                .iter()
                .map(|a| NewEvent {
                    traced: destination.traced,
                    ..replayed(a, &record.destination_bus, &name, only_rules.clone(), now)
                })
                .collect();
            let next = ReplayProgress {
                events_replayed: progress.events_replayed + batch.len() as u64,
                last_replayed_ms: batch.last().map(|a| a.event.ingested_ms),
                position: batch.last().map(|a| a.position.clone()),
            };
            match self
                .replays
                .replay_append(&record.tenant, &record.id, events, next.clone())
                .await
            {
                Ok(true) => {
                    self.lag.appended(batch.len());
                    failures = 0;
                    progress = next;
                    self.mark(&record, &name, &batch, now);
                }
                // Cancelled (or ended) meanwhile: nothing was appended.
                Ok(false) => return Err(Ended::Stopped),
                Err(e) => {
                    self.retry_later(&record.id, &e, &mut failures, cancelled)
                        .await?
                }
            }
        }
    }

    /// Notes in each original event's trace that it was replayed.
    fn mark(&self, record: &ReplayRecord, name: &str, batch: &[ArchivedEvent], now: Millis) {
        for a in batch {
            self.sink.fact(
                TraceKey {
                    tenant: record.tenant.clone(),
                    bus: a.event.bus.clone(),
                    event_id: a.event.event_id.clone(),
                    received_ms: Some(a.event.ingested_ms),
                },
                TraceFact::Replayed(ReplayMark {
                    replay_id: record.id.clone(),
                    name: name.to_owned(),
                    at_ms: now,
                    destination_bus: record.destination_bus.clone(),
                }),
            );
        }
    }

    async fn retry_later(
        &self,
        id: &str,
        e: &StoreError,
        failures: &mut u32,
        cancelled: &mut watch::Receiver<bool>,
    ) -> Result<(), Ended> {
        *failures += 1;
        tracing::warn!(replay = %id, error = %e, "replay step failed; trying again");
        let backoff = Duration::from_millis(100 << (*failures).min(6));
        self.wait_until(Instant::now() + backoff, cancelled).await?;
        Ok(())
    }
}

/// How a replay task ended, other than completing.
enum Ended {
    /// It cannot go on (recorded as `failed` with this reason).
    Failed(String),
    /// Cancelled, or the server is stopping (nothing to record).
    Stopped,
}

impl From<Stop> for Ended {
    fn from(_: Stop) -> Self {
        Ended::Stopped
    }
}

/// An archived event as replayed: same `id`, the `replayname` extension,
/// accepted now on the destination bus, for `only_rules` when given.
fn replayed(
    archived: &ArchivedEvent,
    bus: &str,
    name: &str,
    only_rules: Option<Vec<String>>,
    now: Millis,
) -> NewEvent {
    let body = match serde_json::from_slice::<Value>(&archived.event.body) {
        Ok(Value::Object(mut map)) => {
            map.insert(REPLAY_EXTENSION.to_owned(), Value::String(name.to_owned()));
            Bytes::from(Value::Object(map).to_string())
        }
        // Archived events are validated JSON objects; pass anything else as is.
        _ => archived.event.body.clone(),
    };
    NewEvent {
        tenant: archived.event.tenant.clone(),
        bus: bus.to_owned(),
        event_id: archived.event.event_id.clone(),
        body,
        ingested_ms: now,
        only_rules,
        archives: Vec::new(),
        bus_archives: Vec::new(),
        head: Default::default(),
        traced: false,
    }
}
