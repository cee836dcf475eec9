//! The delivery engine: first attempts in memory, retries from the store.
//!
//! A routed event's first attempt runs straight from memory, so the common
//! case (the target answers 2xx) costs no store write beyond the event itself.
//! Anything that is not delivered at once is written to the store before the
//! event counts as routed: a failed attempt becomes a job due after its
//! backoff, an attempt that cannot start (its target is at its in-flight cap)
//! becomes a job due now. The routing cursor only moves past an event when all
//! its deliveries are done or persisted (the [`Watermark`]), so a crash can
//! repeat deliveries but never lose one.
//!
//! Isolation: each target has its own in-flight cap, so a slow or dead target
//! fills only its own slots; its surplus waits in the store while every other
//! target keeps its full speed.

use crate::catalog::Catalog;
use crate::clock::now_ms;
use crate::deliver::{Failure, Outcome, Payload};
use crate::event::Event;
use crate::plugin::registry::PluginHost;
use crate::route::{Rule, Target, TargetKind};
use crate::store::{AttemptError, Job, Millis, NewJob, Seq, Store};
use crate::telemetry;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, watch};

/// How long a leased retry job is reserved for one attempt; longer than the
/// largest target timeout so a live attempt is never duplicated.
const LEASE_MS: Millis = 120_000;
/// Jobs leased per scheduler round.
const LEASE_BATCH: usize = 256;
/// Longest the scheduler sleeps without looking at the store.
const MAX_IDLE: Duration = Duration::from_secs(1);

/// One delivery of one event to one target.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Log position, for first attempts (they hold the routing watermark).
    pub seq: Option<Seq>,
    /// Store job id, for retries.
    pub job_id: Option<i64>,
    /// Owning tenant.
    pub tenant: String,
    /// The rule that matched.
    pub rule: Arc<Rule>,
    /// Index of the target within the rule.
    pub target: usize,
    /// The parsed event.
    pub event: Arc<Event>,
    /// The event bytes as stored.
    pub event_bytes: Bytes,
    /// The rendered transform output, if any.
    pub body: Option<Arc<str>>,
    /// Attempts already made.
    pub attempts: u32,
    /// When the event was accepted.
    pub ingested_ms: Millis,
}

impl Delivery {
    fn target(&self) -> Option<&Target> {
        self.rule.targets.get(self.target)
    }

    fn job(&self, attempts: u32, due_ms: Millis, last_error: Option<AttemptError>) -> NewJob {
        NewJob {
            tenant: self.tenant.clone(),
            bus: self.rule.bus.clone(),
            rule: self.rule.name.clone(),
            target: self.target().map(|t| t.id.clone()).unwrap_or_default(),
            event_id: self.event.id().to_owned(),
            event: self.event_bytes.clone(),
            body: self.body.as_deref().map(str::to_owned),
            attempts,
            ingested_ms: self.ingested_ms,
            due_ms,
            last_error,
        }
    }
}

/// Tracks which routed events still have deliveries outstanding.
#[derive(Debug, Default)]
pub struct Watermark {
    pending: BTreeMap<Seq, u32>,
    high: Seq,
}

impl Watermark {
    /// Starts tracking `seq` with `holds` outstanding pieces of work.
    pub fn hold(&mut self, seq: Seq, holds: u32) {
        self.high = self.high.max(seq);
        if holds > 0 {
            *self.pending.entry(seq).or_insert(0) += holds;
        }
    }

    /// One piece of work for `seq` is done (delivered or persisted).
    pub fn release(&mut self, seq: Seq) {
        if let Some(n) = self.pending.get_mut(&seq) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&seq);
            }
        }
    }

    /// Highest seq such that it and everything before it is fully routed.
    pub fn low(&self) -> Seq {
        match self.pending.first_key_value() {
            Some((seq, _)) => seq - 1,
            None => self.high,
        }
    }

    /// Whether nothing is outstanding.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }
}

/// The engine. Shared as `Arc<Engine>`.
pub struct Engine {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    plugins: Arc<PluginHost>,
    global: Arc<Semaphore>,
    per_target_cap: usize,
    in_flight: Mutex<HashMap<(String, String, String, String), usize>>,
    watermark: Mutex<Watermark>,
    jobs_added: Notify,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("per_target_cap", &self.per_target_cap)
            .finish_non_exhaustive()
    }
}

/// Releases a target's in-flight slot when dropped.
struct Slot {
    engine: Arc<Engine>,
    key: (String, String, String, String),
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.engine.in_flight.lock()
            && let Some(n) = map.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl Engine {
    /// Builds an engine over a store and catalog.
    pub fn new(
        store: Arc<dyn Store>,
        catalog: Arc<Catalog>,
        plugins: Arc<PluginHost>,
        max_in_flight: usize,
        per_target_cap: usize,
    ) -> Self {
        Self {
            store,
            catalog,
            plugins,
            global: Arc::new(Semaphore::new(max_in_flight)),
            per_target_cap,
            in_flight: Mutex::new(HashMap::new()),
            watermark: Mutex::new(Watermark::default()),
            jobs_added: Notify::new(),
        }
    }

    /// Runs `f` on the watermark.
    pub fn watermark<R>(&self, f: impl FnOnce(&mut Watermark) -> R) -> R {
        let mut guard = self.watermark.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    fn try_slot(self: &Arc<Self>, d: &Delivery) -> Option<Slot> {
        let key = (
            d.tenant.clone(),
            d.rule.bus.clone(),
            d.rule.name.clone(),
            d.target()?.id.clone(),
        );
        let mut map = self.in_flight.lock().ok()?;
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= self.per_target_cap {
            return None;
        }
        *n += 1;
        Some(Slot {
            engine: self.clone(),
            key,
        })
    }

    /// Starts a first attempt (never blocks). The caller has already added a
    /// watermark hold for `d.seq`, which this releases when the delivery is
    /// done or persisted.
    pub fn dispatch(self: &Arc<Self>, d: Delivery) {
        let engine = self.clone();
        let slot = self.try_slot(&d);
        let permit = self.global.clone().try_acquire_owned().ok();
        tokio::spawn(async move {
            match (slot, permit) {
                (Some(slot), Some(permit)) => {
                    engine.attempt(&d).await;
                    drop((slot, permit));
                }
                // Busy target or engine: park the delivery in the store.
                _ => {
                    let job = d.job(d.attempts, now_ms(), None);
                    engine.persist(vec![job]).await;
                }
            }
            if let Some(seq) = d.seq {
                engine.watermark(|w| w.release(seq));
            }
        });
    }

    /// Writes jobs, retrying until the store takes them: a routed delivery may
    /// only be released once it is durable.
    async fn persist(&self, jobs: Vec<NewJob>) {
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.store.enqueue_jobs(jobs.clone()).await {
                Ok(()) => {
                    self.jobs_added.notify_one();
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot persist delivery jobs; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One attempt, then whatever follows from its outcome (ack, reschedule, dead letter).
    async fn attempt(&self, d: &Delivery) {
        let Some(target) = d.target() else { return };
        let outcome = match &target.kind {
            TargetKind::Http(http) => {
                let payload = Payload {
                    event: &d.event,
                    body: d.body.as_deref(),
                };
                http.deliver(payload).await
            }
            TargetKind::Wasm(wasm) => {
                self.plugins
                    .deliver(&d.tenant, &wasm.binding, &wasm.allowed_hosts, &d.event)
                    .await
            }
            TargetKind::Queue { .. } | TargetKind::Bus { .. } => return,
        };
        let attempts = d.attempts + 1;
        let labels = [("tenant", d.tenant.clone())];
        match outcome {
            Outcome::Delivered { .. } => {
                telemetry::delivered(&labels, now_ms() - d.ingested_ms);
                if let Some(id) = d.job_id
                    && let Err(e) = self.store.ack_job(id).await
                {
                    tracing::warn!(error = %e, job = id, "cannot ack delivered job; it may be delivered again");
                }
            }
            Outcome::Retry(failure) => {
                let age =
                    Duration::from_millis(u64::try_from(now_ms() - d.ingested_ms).unwrap_or(0));
                match target.retry.check(attempts, age) {
                    Ok(()) => {
                        telemetry::retried(&labels);
                        let delay = target.retry.next_delay(attempts, failure.retry_after);
                        let due =
                            now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                        let error = attempt_error(&failure);
                        match d.job_id {
                            Some(id) => {
                                if let Err(e) = self.store.retry_job(id, due, attempts, error).await
                                {
                                    tracing::warn!(error = %e, job = id, "cannot reschedule job; its lease will expire");
                                }
                            }
                            None => self.persist(vec![d.job(attempts, due, Some(error))]).await,
                        }
                    }
                    Err(exhausted) => {
                        self.dead_letter(d, attempts, &failure, exhausted.as_str())
                            .await
                    }
                }
            }
            Outcome::Permanent(failure) => {
                self.dead_letter(d, attempts, &failure, "permanent").await
            }
        }
    }

    async fn dead_letter(&self, d: &Delivery, attempts: u32, failure: &Failure, exhausted: &str) {
        let job = d.job(attempts, now_ms(), Some(attempt_error(failure)));
        self.dead_letter_job(d.job_id, job, exhausted, d.rule.dead_letter)
            .await;
    }

    /// Moves a delivery to the dead-letter queue (or drops it when the rule
    /// turned dead-lettering off).
    pub async fn dead_letter_job(
        &self,
        job_id: Option<i64>,
        job: NewJob,
        exhausted: &str,
        enabled: bool,
    ) {
        telemetry::dead_lettered(&job.tenant, exhausted);
        tracing::warn!(
            tenant = %job.tenant, bus = %job.bus, rule = %job.rule, target = %job.target,
            event_id = %job.event_id, exhausted, error = ?job.last_error, "delivery failed for good"
        );
        let result = if enabled {
            self.store
                .dead_letter(job_id, job, exhausted, now_ms())
                .await
                .map(|_| ())
        } else if let Some(id) = job_id {
            self.store.ack_job(id).await
        } else {
            Ok(())
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot record dead letter");
        }
    }

    /// Wakes the retry scheduler (e.g. after a redrive).
    pub fn wake(&self) {
        self.jobs_added.notify_one();
    }

    /// The retry scheduler: leases due jobs and attempts them, until shutdown.
    pub async fn run_retries(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let leased = match self.store.lease_due(now_ms(), LEASE_MS, LEASE_BATCH).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::error!(error = %e, "cannot lease delivery jobs");
                    Vec::new()
                }
            };
            let full = leased.len() == LEASE_BATCH;
            for job in leased {
                self.start_job(job).await;
            }
            if full {
                continue;
            }
            let sleep = match self.store.next_due().await {
                Ok(Some(due)) => {
                    Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0)).min(MAX_IDLE)
                }
                _ => MAX_IDLE,
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.jobs_added.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn start_job(self: &Arc<Self>, job: Job) {
        let Job { id, job } = job;
        let rule = self
            .catalog
            .bus(&job.tenant, &job.bus)
            .and_then(|b| b.rules.get(&job.rule).cloned());
        let target = rule
            .as_ref()
            .and_then(|r| r.targets.iter().position(|t| t.id == job.target));
        let (Some(rule), Some(target)) = (rule, target) else {
            let mut job = job;
            job.last_error = Some(AttemptError {
                code: "target_removed".into(),
                message: format!(
                    "rule {}/{} or its target {} no longer exists",
                    job.bus, job.rule, job.target
                ),
                status: None,
            });
            self.dead_letter_job(Some(id), job, "permanent", true).await;
            return;
        };
        let event = match serde_json::from_slice(&job.event) {
            Ok(serde_json::Value::Object(map)) => Arc::new(Event::from_validated(map)),
            _ => {
                self.dead_letter_job(Some(id), job, "permanent", rule.dead_letter)
                    .await;
                return;
            }
        };
        let d = Delivery {
            seq: None,
            job_id: Some(id),
            tenant: job.tenant.clone(),
            rule,
            target,
            event,
            event_bytes: job.event.clone(),
            body: job.body.as_deref().map(Arc::from),
            attempts: job.attempts,
            ingested_ms: job.ingested_ms,
        };
        let Some(slot) = self.try_slot(&d) else {
            // The target is at its cap: look again shortly, keeping the job's history.
            let error = job.last_error.clone().unwrap_or_default();
            if let Err(e) = self
                .store
                .retry_job(id, now_ms() + 100, job.attempts, error)
                .await
            {
                tracing::warn!(error = %e, "cannot defer job");
            }
            return;
        };
        let Ok(permit) = self.global.clone().acquire_owned().await else {
            return;
        };
        let engine = self.clone();
        tokio::spawn(async move {
            engine.attempt(&d).await;
            drop((slot, permit));
        });
    }

    /// Persists the routing cursor as the watermark advances, until shutdown;
    /// then waits (bounded) for in-flight first attempts and persists once more.
    pub async fn run_cursor(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut saved = self.store.route_cursor().await.unwrap_or(0);
        loop {
            let stop = tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => false,
                _ = shutdown.changed() => true,
            };
            if stop {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while !self.watermark(|w| w.is_idle()) && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let low = self.watermark(|w| w.low());
            if low > saved {
                match self.store.set_route_cursor(low).await {
                    Ok(()) => saved = low,
                    Err(e) => tracing::error!(error = %e, "cannot save routing cursor"),
                }
            }
            if stop {
                return;
            }
        }
    }
}

fn attempt_error(f: &Failure) -> AttemptError {
    AttemptError {
        code: f.code.clone(),
        message: f.message.clone(),
        status: f.status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_waits_for_the_oldest_outstanding_event() {
        let mut w = Watermark::default();
        w.hold(1, 1);
        w.hold(2, 2);
        w.hold(3, 0);
        assert_eq!(w.low(), 0);
        w.release(2);
        assert_eq!(w.low(), 0);
        w.release(1);
        assert_eq!(w.low(), 1);
        w.release(2);
        assert_eq!(w.low(), 3);
        assert!(w.is_idle());
    }
}
