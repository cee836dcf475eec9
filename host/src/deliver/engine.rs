//! The delivery engine: first attempts from memory, retries from the store,
//! one retry policy and one dead-letter path for every kind of target.
//!
//! A routed event's first attempt runs straight from memory, so the common
//! case (the target takes it) costs no store write beyond the event itself.
//! Anything not delivered at once is written to the store before the
//! delivery counts as done: a failed attempt becomes a job due after its
//! backoff, an attempt that cannot start (its target is at its in-flight
//! cap for longer than [`EngineConfig::slot_wait`]) becomes a job due now. Each first attempt carries a [`DoneGuard`]
//! from the router, dropped only when the delivery is done or persisted,
//! so routing progress never moves past work that could still be lost.
//!
//! Retries come from [`DeliveryJobs::lease_due`]: the scheduler leases due
//! jobs, attempts them, and acks, reschedules or dead-letters each. Leases
//! are short and kept alive by a heartbeat while an attempt runs, so the
//! jobs of a node that died are picked up again within one lease period
//! (and at once by a restarted single node, whose store clears leases).
//!
//! Deliveries due together for the same target go out as one batch, within
//! the target's [`Batching`] (items and bytes per call); outcomes stay per
//! delivery, so each event of a failed batch is retried, dead-lettered and
//! traced on its own. A target whose batching has a `max_wait` (an `http`
//! target with `batch.max_wait_ms`) also gathers first deliveries across
//! dispatches: a batch goes when it is full or its first delivery has
//! waited `max_wait` (retries go with what is due at once, never waiting).
//! Chained deliveries come from the store, which leases only each chain's
//! head, so a batch never holds two deliveries of one chain and order per
//! key holds through batches as it does one by one.
//!
//! Isolation: each target has its own in-flight cap (calls in progress), so
//! a slow or dead target fills only its own slots; its surplus waits in the
//! store while every other target keeps its full speed.
//!
//! FIFO per partition key: a delivery in a chain (its rule keeps order and
//! its event has a `partitionkey`, see [`Delivery::in_chain`]) is never
//! attempted from memory. It is stored as a job with its chain slot, and
//! the store hands out only the head of each chain (see
//! [`DeliveryJobs`]'s chain contract), so the attempts of one key go out
//! one at a time in slot order — through retries, dead letters and
//! restarts alike — while different keys (different chains) go out side
//! by side. Chained deliveries are stored by one task, in the order the
//! router dispatched them (which is log order), so a chain's jobs reach the
//! store in slot order.
//!
//! Traces: a first attempt records its outcome in its event's trace slot
//! (memory; written with the routing record); retries, dead letters and
//! drops become facts for the [`TraceSink`] (batched, never awaited).

use super::retry::Next;
use super::target::{Batching, BoundTarget, Item, TargetDirectory};
use super::{Failure, Outcome};
use crate::clock::{Millis, SharedClock, millis};
use crate::event::{Event, StoredEvent};
use crate::history::{TargetSlot, TraceSink};
use crate::store::traces::{AttemptRecord, TargetState, TraceError};
use crate::store::{
    AttemptError, ChainSlot, DeliveryJobs, Exhausted, FailureCode, JobLease, LeasedJob, NewJob,
    TraceFact, TraceKey,
};
use crate::telemetry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};

/// Held by a first attempt until its delivery is done or persisted; the
/// router's routing progress is released when the last one drops.
pub type DoneGuard = Arc<dyn Send + Sync>;

/// How the engine is tuned.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Calls in flight at once across all targets.
    pub max_in_flight: usize,
    /// Calls in flight at once for one target.
    pub per_target_cap: usize,
    /// How long a leased job is reserved; renewed every third of it while
    /// its attempt runs. Short, so a dead node's jobs come back quickly.
    pub lease: Duration,
    /// Jobs leased per scheduler round.
    pub lease_batch: usize,
    /// Longest the scheduler waits in one lease call (it also wakes on new jobs).
    pub idle_wait: Duration,
    /// How long a first attempt waits in memory for a slot of its busy
    /// target before it is parked in the store. Routing hands the engine
    /// bursts (a thousand entries at once) that a target's cap spreads over
    /// a few round trips; waiting them out here costs nothing, parking
    /// them costs a job write, a lease and an ack each (and, on a traced
    /// bus, a trace fact per attempt).
    pub slot_wait: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 4096,
            per_target_cap: 256,
            lease: Duration::from_secs(30),
            lease_batch: 256,
            idle_wait: Duration::from_secs(1),
            slot_wait: Duration::from_millis(250),
        }
    }
}

/// Where a delivery came from, which decides how its result is recorded.
#[derive(Clone)]
enum Origin {
    /// A first attempt: failures become new jobs; the guard is released
    /// once the delivery is done or persisted.
    First(#[allow(dead_code)] DoneGuard),
    /// A retry of a stored job, held under this lease, with the error its
    /// last attempt left (kept when the job is only deferred).
    Job(JobLease, Option<AttemptError>),
}

/// One delivery of one event to one target.
#[derive(Clone)]
pub struct Delivery {
    /// The target, as bound in its rule.
    pub target: Arc<BoundTarget>,
    /// What to deliver.
    pub item: Item,
    /// Attempts already made.
    pub attempts: u32,
    /// When the event was accepted (the age limit counts from here).
    pub ingested_ms: Millis,
    origin: Origin,
    /// Its place in a FIFO chain, when its target keeps order per key.
    chain: Option<ChainSlot>,
    /// Where a first attempt records itself in its event's trace.
    trace: Option<TargetSlot>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("tenant", &self.target.tenant)
            .field("rule", &self.target.rule)
            .field("target", &self.target.id)
            .field("event_id", &self.item.event.id())
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A first attempt, holding `done` until it is delivered or persisted.
    pub fn first(
        target: Arc<BoundTarget>,
        item: Item,
        ingested_ms: Millis,
        done: DoneGuard,
    ) -> Self {
        Self {
            target,
            item,
            attempts: 0,
            ingested_ms,
            origin: Origin::First(done),
            chain: None,
            trace: None,
        }
    }

    /// Places the delivery in its FIFO chain when its target keeps order
    /// and its event has a `partitionkey`: `position` is the event's log
    /// position, `index` which of the events routed from that entry it is.
    pub fn in_chain(mut self, position: i64, index: u32) -> Self {
        if self.target.ordered
            && let Some(key) = partition_key(self.item.event.event())
        {
            self.chain = Some(ChainSlot {
                key,
                position,
                index,
            });
        }
        self
    }

    /// The same delivery, recording its first attempt in `slot`.
    pub fn traced(mut self, slot: Option<TargetSlot>) -> Self {
        self.trace = slot;
        self
    }

    /// The delivery as a job to store.
    fn job(&self, attempts: u32, due_ms: Millis, last_error: Option<AttemptError>) -> NewJob {
        let mut job = job_for(
            &self.target,
            &self.item,
            self.ingested_ms,
            attempts,
            due_ms,
            last_error,
        );
        job.chain = self.chain.clone();
        job
    }

    fn lease(&self) -> Option<&JobLease> {
        match &self.origin {
            Origin::Job(lease, _) => Some(lease),
            Origin::First(_) => None,
        }
    }
}

fn job_for(
    target: &BoundTarget,
    item: &Item,
    ingested_ms: Millis,
    attempts: u32,
    due_ms: Millis,
    last_error: Option<AttemptError>,
) -> NewJob {
    NewJob {
        tenant: target.tenant.clone(),
        bus: target.bus.clone(),
        rule: target.rule.clone(),
        target: target.id.clone(),
        event_id: item.event.id().to_owned(),
        event: item.event.json().clone(),
        body: item.body.as_deref().map(str::to_owned),
        attempts,
        ingested_ms,
        due_ms,
        last_error,
        chain: None,
    }
}

/// The CloudEvents `partitionkey` extension as text (extensions may be
/// strings, integers or booleans).
fn partition_key(event: &Event) -> Option<String> {
    match event.as_map().get("partitionkey")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Identifies a target across rule updates (rule objects are replaced when
/// a rule changes; its targets' caps should not reset).
type TargetKey = (String, String, String, String);

fn key_of(t: &BoundTarget) -> TargetKey {
    (
        t.tenant.clone(),
        t.bus.clone(),
        t.rule.clone(),
        t.id.clone(),
    )
}

/// The engine. Shared as `Arc<DeliveryEngine>`.
pub struct DeliveryEngine {
    jobs: Arc<dyn DeliveryJobs>,
    directory: Arc<dyn TargetDirectory>,
    clock: SharedClock,
    config: EngineConfig,
    global: Arc<Semaphore>,
    in_flight: Mutex<HashMap<TargetKey, Busy>>,
    /// Leases of attempts in progress, renewed by the heartbeat.
    leased: Mutex<HashSet<JobLease>>,
    /// Chained first deliveries, to be stored in dispatch order.
    chained: mpsc::UnboundedSender<Vec<Delivery>>,
    /// Its receiver, taken by [`DeliveryEngine::run_retries`].
    chained_rx: Mutex<Option<mpsc::UnboundedReceiver<Vec<Delivery>>>>,
    /// Where facts for traces go (none: nothing is traced).
    traces: Option<TraceSink>,
    /// First deliveries waiting for their batch to fill, per target (as
    /// bound: the deliveries hold it, so its address is stable) whose
    /// batching has a `max_wait`.
    gathering: Mutex<HashMap<usize, Gathering>>,
    /// Numbers gatherings, so a timer flushes only the one it was set for.
    rounds: AtomicU64,
}

/// First deliveries to one target waiting for their batch to fill.
struct Gathering {
    deliveries: Vec<Delivery>,
    /// Their size, as [`Batching::size_of`] counts it.
    bytes: usize,
    /// Which gathering this is (its timer's number).
    round: u64,
}

impl std::fmt::Debug for DeliveryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryEngine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One target's calls in flight, and a signal for first attempts waiting
/// for one of them to end.
#[derive(Default)]
struct Busy {
    calls: usize,
    room: Arc<Notify>,
}

/// A target's in-flight slot, released when dropped.
struct Slot {
    engine: Arc<DeliveryEngine>,
    key: TargetKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self
            .engine
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(busy) = map.get_mut(&self.key) {
            busy.calls = busy.calls.saturating_sub(1);
            // Wakes one waiter (or lets the next one through at once).
            busy.room.notify_one();
            // Kept while someone waits on its signal.
            if busy.calls == 0 && Arc::strong_count(&busy.room) == 1 {
                map.remove(&self.key);
            }
        }
    }
}

/// A job lease the heartbeat keeps alive until this is dropped.
struct Renewed {
    engine: Arc<DeliveryEngine>,
    leases: Vec<JobLease>,
}

impl Drop for Renewed {
    fn drop(&mut self) {
        let mut set = self.engine.leased.lock().unwrap_or_else(|p| p.into_inner());
        for lease in &self.leases {
            set.remove(lease);
        }
    }
}

impl DeliveryEngine {
    /// Builds an engine over the job store and the current rules.
    pub fn new(
        jobs: Arc<dyn DeliveryJobs>,
        directory: Arc<dyn TargetDirectory>,
        clock: SharedClock,
        config: EngineConfig,
    ) -> Self {
        let (chained, chained_rx) = mpsc::unbounded_channel();
        Self {
            jobs,
            directory,
            clock,
            global: Arc::new(Semaphore::new(config.max_in_flight)),
            config,
            in_flight: Mutex::new(HashMap::new()),
            leased: Mutex::new(HashSet::new()),
            chained,
            chained_rx: Mutex::new(Some(chained_rx)),
            traces: None,
            gathering: Mutex::new(HashMap::new()),
            rounds: AtomicU64::new(0),
        }
    }

    /// The engine, reporting what happens to deliveries to `sink`.
    pub fn with_traces(mut self, sink: TraceSink) -> Self {
        self.traces = Some(sink);
        self
    }

    /// Queues a trace fact about a job's event.
    fn fact(&self, job: &NewJob, fact: TraceFact) {
        if let Some(sink) = &self.traces {
            sink.fact(
                TraceKey {
                    tenant: job.tenant.clone(),
                    bus: job.bus.clone(),
                    event_id: job.event_id.clone(),
                    received_ms: None,
                },
                fact,
            );
        }
    }

    fn try_slot(self: &Arc<Self>, target: &BoundTarget) -> Option<Slot> {
        self.slot_or_signal(target).ok()
    }

    /// A slot of `target`, or the signal that one was released.
    fn slot_or_signal(self: &Arc<Self>, target: &BoundTarget) -> Result<Slot, Arc<Notify>> {
        let key = key_of(target);
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let busy = map.entry(key.clone()).or_default();
        if busy.calls >= self.config.per_target_cap {
            return Err(busy.room.clone());
        }
        busy.calls += 1;
        Ok(Slot {
            engine: self.clone(),
            key,
        })
    }

    /// A slot of `target` and an engine permit, waiting until `deadline`
    /// at most (first attempts only: they are in memory, and parking them
    /// costs store writes).
    async fn wait_for_room(
        self: &Arc<Self>,
        target: &BoundTarget,
        deadline: tokio::time::Instant,
    ) -> Option<(Slot, OwnedSemaphorePermit)> {
        let slot = loop {
            match self.slot_or_signal(target) {
                Ok(slot) => break slot,
                Err(room) => {
                    // A release between the check and this wait is not lost:
                    // `notify_one` keeps a permit when nobody waits.
                    tokio::time::timeout_at(deadline, room.notified())
                        .await
                        .ok()?;
                }
            }
        };
        let permit = tokio::time::timeout_at(deadline, self.global.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some((slot, permit))
    }

    /// Starts first attempts (never blocks): deliveries to the same target
    /// go in batches; a batch whose target or the engine is at its cap is
    /// stored as jobs due now instead. Deliveries to a target whose batching
    /// waits (`max_wait`) join its gathering batch, sent when it is full or
    /// its first delivery has waited `max_wait`.
    pub fn dispatch(self: &Arc<Self>, deliveries: Vec<Delivery>) {
        let (chained, deliveries): (Vec<Delivery>, Vec<Delivery>) =
            deliveries.into_iter().partition(|d| d.chain.is_some());
        if !chained.is_empty() && self.chained.send(chained).is_err() {
            tracing::error!(
                "the chained-delivery writer has stopped; those deliveries will be routed again after a restart"
            );
        }
        let (waiting, now): (Vec<Delivery>, Vec<Delivery>) = deliveries
            .into_iter()
            .partition(|d| !d.target.target.batching().max_wait.is_zero());
        let mut ready = batches(now);
        for d in waiting {
            ready.extend(self.gather(d));
        }
        for batch in ready {
            self.start_first(batch);
        }
    }

    /// Adds a first delivery to its target's gathering batch; returns the
    /// batches that are full (at most two: the one it did not fit in, and
    /// the one it filled).
    fn gather(self: &Arc<Self>, d: Delivery) -> Vec<Vec<Delivery>> {
        let batching = d.target.target.batching();
        let size = Batching::size_of(&d.item);
        let key = Arc::as_ptr(&d.target) as usize;
        let mut full = Vec::new();
        let mut map = self.gathering.lock().unwrap_or_else(|p| p.into_inner());
        let g = map.entry(key).or_insert_with(|| Gathering {
            deliveries: Vec::new(),
            bytes: 0,
            round: 0,
        });
        if !batching.fits(g.deliveries.len(), g.bytes, size) {
            full.push(std::mem::take(&mut g.deliveries));
            g.bytes = 0;
        }
        if g.deliveries.is_empty() {
            g.round = self.rounds.fetch_add(1, Ordering::Relaxed);
            self.flush_after(key, g.round, batching.max_wait);
        }
        g.deliveries.push(d);
        g.bytes += size;
        if g.deliveries.len() >= batching.max_items
            && let Some(g) = map.remove(&key)
        {
            full.push(g.deliveries);
        }
        full
    }

    /// Sends gathering `round` of target `key` after `wait`, unless it was
    /// sent (full) before.
    fn flush_after(self: &Arc<Self>, key: usize, round: u64, wait: Duration) {
        let engine: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let batch = {
                let mut map = engine.gathering.lock().unwrap_or_else(|p| p.into_inner());
                match map.get(&key) {
                    Some(g) if g.round == round => map.remove(&key).map(|g| g.deliveries),
                    _ => None,
                }
            };
            if let Some(batch) = batch.filter(|b| !b.is_empty()) {
                engine.start_first(batch);
            }
        });
    }

    /// Attempts a batch of first deliveries in a task of its own, or parks
    /// it in the store when its target or the engine is at its cap.
    fn start_first(self: &Arc<Self>, batch: Vec<Delivery>) {
        let slot = self.try_slot(&batch[0].target);
        let permit = self.global.clone().try_acquire_owned().ok();
        let engine = self.clone();
        tokio::spawn(async move {
            let room = match (slot, permit) {
                (Some(slot), Some(permit)) => Some((slot, permit)),
                // Busy target or engine: wait a moment for room.
                (slot, permit) => {
                    drop((slot, permit));
                    let deadline = tokio::time::Instant::now() + engine.config.slot_wait;
                    engine.wait_for_room(&batch[0].target, deadline).await
                }
            };
            match room {
                Some((slot, permit)) => {
                    engine.attempt(batch).await;
                    drop((slot, permit));
                }
                // Still busy: park the deliveries in the store.
                None => {
                    let now = engine.clock.now_ms();
                    telemetry::parked(&batch[0].target.tenant, batch.len() as u64);
                    let jobs = batch.iter().map(|d| d.job(d.attempts, now, None)).collect();
                    engine.persist(jobs).await;
                }
            }
        });
    }

    /// Writes jobs, retrying until the store takes them: a first attempt may
    /// only be released once it is durable.
    async fn persist(&self, jobs: Vec<NewJob>) {
        let mut backoff = Duration::from_millis(10);
        while let Err(e) = self.jobs.enqueue(jobs.clone()).await {
            tracing::error!(error = %e, "cannot persist delivery jobs; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One call to the target with the whole batch, then each delivery's
    /// outcome recorded (ack, reschedule, dead letter).
    async fn attempt(&self, batch: Vec<Delivery>) {
        let target = batch[0].target.clone();
        let items: Vec<Item> = batch.iter().map(|d| d.item.clone()).collect();
        let at_ms = self.clock.now_ms();
        let started = tokio::time::Instant::now();
        let mut outcomes = target.target.send(&items).await;
        let took = Took {
            at_ms,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        if outcomes.len() != batch.len() {
            tracing::error!(
                kind = target.target.kind(),
                "a target answered {} outcomes for {} deliveries",
                outcomes.len(),
                batch.len()
            );
            outcomes.resize(
                batch.len(),
                Outcome::Retry(Failure::new(
                    FailureCode::PluginInvalidOutput,
                    "the target gave no outcome for this delivery",
                )),
            );
        }
        let mut new_jobs = Vec::new();
        let mut guards = Vec::new();
        for (d, outcome) in batch.into_iter().zip(outcomes) {
            if let Some(job) = self.settle(&d, outcome, took).await {
                new_jobs.push(job);
            }
            guards.push(d);
        }
        if !new_jobs.is_empty() {
            self.persist(new_jobs).await;
        }
        // Only now may first attempts count as done.
        drop(guards);
    }

    /// Records an attempt in its event's trace: in memory for a first
    /// attempt, as a fact for a retry.
    fn trace_attempt(&self, d: &Delivery, outcome: &Outcome, next: &Next, took: Took) {
        let wanted = d.trace.is_some()
            || self
                .traces
                .as_ref()
                .is_some_and(|s| s.wants(&d.target.tenant, &d.target.bus));
        if !wanted {
            return;
        }
        let state = match next {
            Next::Done => TargetState::Delivered,
            Next::RetryIn(_) => TargetState::Retrying,
            Next::GiveUp(_) if d.target.dead_letter => TargetState::DeadLettered,
            Next::GiveUp(_) => TargetState::Dropped,
        };
        let (status, error) = match outcome {
            Outcome::Delivered { status } => (*status, None),
            Outcome::Retry(f) | Outcome::Permanent(f) => (
                f.status,
                Some(TraceError {
                    code: f.code.as_str().to_owned(),
                    message: f.message.clone(),
                }),
            ),
        };
        let record = AttemptRecord {
            at_ms: took.at_ms,
            duration_ms: took.duration_ms,
            status,
            error,
        };
        match &d.trace {
            Some(slot) => slot.attempt(record, state),
            None => self.fact(
                &d.job(d.attempts, 0, None),
                TraceFact::Attempt {
                    rule: d.target.rule.clone(),
                    target: d.target.id.clone(),
                    attempt: record,
                    next: state,
                },
            ),
        }
    }

    /// Records one delivery's outcome; returns the job to store when a first
    /// attempt must be retried later.
    async fn settle(&self, d: &Delivery, outcome: Outcome, took: Took) -> Option<NewJob> {
        let attempts = d.attempts + 1;
        let now = self.clock.now_ms();
        let labels = [("tenant", d.target.tenant.clone())];
        let age = Duration::from_millis(u64::try_from(now - d.ingested_ms).unwrap_or(0));
        let next = d.target.retry.after(&outcome, attempts, age);
        self.trace_attempt(d, &outcome, &next, took);
        match (next, outcome) {
            (Next::Done, _) => {
                telemetry::delivered(&labels, now - d.ingested_ms);
                if let Some(lease) = d.lease()
                    && let Err(e) = self.jobs.ack_job(lease).await
                {
                    tracing::warn!(error = %e, "cannot ack a delivered job; it may be delivered again");
                }
                None
            }
            (Next::RetryIn(delay), outcome) => {
                telemetry::retried(&labels);
                let error = outcome.failure().map(Failure::attempt_error);
                let due = now + millis(delay);
                match d.lease() {
                    Some(lease) => {
                        let error =
                            error.unwrap_or_else(|| AttemptError::new(FailureCode::Unknown, ""));
                        if let Err(e) = self.jobs.retry_job(lease, due, attempts, error).await {
                            tracing::warn!(error = %e, "cannot reschedule a job; its lease will run out and it will be retried");
                        }
                        None
                    }
                    None => Some(d.job(attempts, due, error)),
                }
            }
            (Next::GiveUp(exhausted), outcome) => {
                let error = outcome.failure().map(Failure::attempt_error);
                let job = d.job(attempts, now, error);
                self.give_up(d.lease(), job, exhausted, d.target.dead_letter)
                    .await;
                None
            }
        }
    }

    /// Gives up on a delivery: dead-letters it (or, when its rule turned
    /// dead-lettering off, just drops it), retrying the store write until it
    /// succeeds so that nothing is released before it is recorded.
    pub async fn give_up(
        &self,
        lease: Option<&JobLease>,
        job: NewJob,
        exhausted: Exhausted,
        dead_letter: bool,
    ) {
        telemetry::dead_lettered(&job.tenant, exhausted.as_str());
        tracing::warn!(
            tenant = %job.tenant, bus = %job.bus, rule = %job.rule, target = %job.target,
            event_id = %job.event_id, %exhausted, error = ?job.last_error, "delivery failed for good"
        );
        let mut backoff = Duration::from_millis(10);
        loop {
            let result = if dead_letter {
                self.jobs
                    .dead_letter(lease, job.clone(), exhausted)
                    .await
                    .map(Some)
            } else if let Some(lease) = lease {
                self.jobs.ack_job(lease).await.map(|()| None)
            } else {
                Ok(None)
            };
            match result {
                Ok(letter) => {
                    let (rule, target) = (job.rule.clone(), job.target.clone());
                    let fact = match letter {
                        Some(id) => TraceFact::DeadLettered { rule, target, id },
                        None => TraceFact::Dropped { rule, target },
                    };
                    self.fact(&job, fact);
                    return;
                }
                Err(e) if lease.is_some() => {
                    // A stored job stays leased and comes back after its lease.
                    tracing::error!(error = %e, "cannot record a dead letter; the job will be retried");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot record a dead letter; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Dead-letters an event for a target without an attempt (a rule-level
    /// failure: its filter or transform failed, so no target gets it).
    pub async fn fail_unattempted(
        &self,
        target: &BoundTarget,
        item: &Item,
        ingested_ms: Millis,
        error: AttemptError,
    ) {
        let job = job_for(
            target,
            item,
            ingested_ms,
            0,
            self.clock.now_ms(),
            Some(error),
        );
        self.give_up(None, job, Exhausted::Permanent, target.dead_letter)
            .await;
    }

    /// Stores chained first deliveries as jobs, in the order they were
    /// dispatched, releasing each only once it is stored. Ends when the
    /// engine is dropped (after storing what it was given).
    async fn store_chained(
        engine: std::sync::Weak<Self>,
        mut rx: mpsc::UnboundedReceiver<Vec<Delivery>>,
    ) {
        let mut batch: Vec<Vec<Delivery>> = Vec::new();
        // The engine holds the sender: waiting here with only a weak
        // reference lets the channel close (and this end) when it is dropped.
        while rx.recv_many(&mut batch, 64).await > 0 {
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let deliveries: Vec<Delivery> = batch.drain(..).flatten().collect();
            let now = engine.clock.now_ms();
            let jobs = deliveries
                .iter()
                .map(|d| d.job(d.attempts, now, None))
                .collect();
            engine.persist(jobs).await;
            // Only now may the router count them as done.
            drop(deliveries);
        }
    }

    /// The retry scheduler: leases due jobs and attempts them, until
    /// shutdown. Also starts the writer of chained deliveries (once).
    pub async fn run_retries(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let taken = self
            .chained_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(rx) = taken {
            tokio::spawn(Self::store_chained(Arc::downgrade(&self), rx));
        }
        let heartbeat = tokio::spawn(self.clone().run_heartbeat(shutdown.clone()));
        loop {
            if *shutdown.borrow() {
                break;
            }
            let leased = tokio::select! {
                leased = self.jobs.lease_due(self.config.lease_batch, self.config.lease, self.config.idle_wait) => leased,
                _ = shutdown.changed() => break,
            };
            match leased {
                Ok(jobs) => self.start_jobs(jobs).await,
                Err(e) => {
                    tracing::error!(error = %e, "cannot lease delivery jobs");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = shutdown.changed() => break,
                    }
                }
            }
        }
        heartbeat.abort();
    }

    /// Keeps the leases of running attempts alive.
    async fn run_heartbeat(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let every = self.config.lease / 3;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            let leases: Vec<JobLease> = self
                .leased
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect();
            if leases.is_empty() {
                continue;
            }
            if let Err(e) = self.jobs.extend_leases(&leases, self.config.lease).await {
                tracing::warn!(error = %e, "cannot renew job leases; other workers may repeat those attempts");
            }
        }
    }

    async fn start_jobs(self: &Arc<Self>, jobs: Vec<LeasedJob>) {
        let mut deliveries = Vec::with_capacity(jobs.len());
        for LeasedJob { lease, job } in jobs {
            let Some(target) =
                self.directory
                    .bound_target(&job.tenant, &job.bus, &job.rule, &job.target)
            else {
                let mut job = job;
                job.last_error = Some(AttemptError::new(
                    FailureCode::TargetRemoved,
                    format!(
                        "rule {}/{} or its target {} no longer exists",
                        job.bus, job.rule, job.target
                    ),
                ));
                self.give_up(Some(&lease), job, Exhausted::Permanent, true)
                    .await;
                continue;
            };
            let event = match serde_json::from_slice(&job.event) {
                Ok(serde_json::Value::Object(map)) => {
                    StoredEvent::built(Event::from_validated(map), job.event.clone())
                }
                _ => {
                    let mut job = job;
                    job.last_error = Some(AttemptError::new(
                        FailureCode::Corrupt,
                        "the stored event is not a JSON object",
                    ));
                    self.give_up(Some(&lease), job, Exhausted::Permanent, target.dead_letter)
                        .await;
                    continue;
                }
            };
            deliveries.push(Delivery {
                target,
                item: Item {
                    event,
                    body: job.body.as_deref().map(Arc::from),
                },
                attempts: job.attempts,
                ingested_ms: job.ingested_ms,
                origin: Origin::Job(lease, job.last_error),
                chain: job.chain.clone(),
                trace: None,
            });
        }
        for batch in batches(deliveries) {
            let Some(slot) = self.try_slot(&batch[0].target) else {
                // The target is at its cap: look again shortly, keeping each job's history.
                let due = self.clock.now_ms() + 100;
                for d in &batch {
                    if let Origin::Job(lease, last_error) = &d.origin {
                        let error = last_error.clone().unwrap_or_else(|| {
                            AttemptError::new(
                                FailureCode::TargetBusy,
                                "deferred: the target was at its in-flight cap",
                            )
                        });
                        if let Err(e) = self.jobs.retry_job(lease, due, d.attempts, error).await {
                            tracing::warn!(error = %e, "cannot defer a job");
                        }
                    }
                }
                continue;
            };
            let Ok(permit) = self.global.clone().acquire_owned().await else {
                return;
            };
            let renewed = self.renew_while_running(&batch);
            let engine = self.clone();
            tokio::spawn(async move {
                engine.attempt(batch).await;
                drop((slot, permit, renewed));
            });
        }
    }

    fn renew_while_running(self: &Arc<Self>, batch: &[Delivery]) -> Renewed {
        let leases: Vec<JobLease> = batch.iter().filter_map(|d| d.lease().cloned()).collect();
        let mut set = self.leased.lock().unwrap_or_else(|p| p.into_inner());
        set.extend(leases.iter().cloned());
        Renewed {
            engine: self.clone(),
            leases,
        }
    }
}

/// When an attempt started and how long the target took.
#[derive(Clone, Copy, Debug)]
struct Took {
    at_ms: Millis,
    duration_ms: u64,
}

/// Groups deliveries by target (keeping their order within each target)
/// into batches no larger than the target takes (in items and bytes).
fn batches(deliveries: Vec<Delivery>) -> Vec<Vec<Delivery>> {
    // Per target: the open group and its size in bytes.
    let mut groups: Vec<Vec<Delivery>> = Vec::new();
    let mut index: HashMap<*const BoundTarget, (usize, usize)> = HashMap::new();
    for d in deliveries {
        let batching = d.target.target.batching();
        let size = Batching::size_of(&d.item);
        let key = Arc::as_ptr(&d.target);
        match index.get_mut(&key) {
            Some((i, bytes)) if batching.fits(groups[*i].len(), *bytes, size) => {
                *bytes += size;
                groups[*i].push(d);
            }
            _ => {
                index.insert(key, (groups.len(), size));
                groups.push(vec![d]);
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use crate::deliver::retry::RetryPolicy;
    use crate::deliver::target::{Target, TargetServices};
    use crate::deliver::testing::Scripted;
    use crate::store::memory::{FaultOp, MemoryStore};
    use crate::store::{DeadLetterFilter, DeadLetters, Queues};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// One bound target, found by the engine for stored jobs.
    struct Directory(Mutex<Vec<Arc<BoundTarget>>>);

    impl TargetDirectory for Directory {
        fn bound_target(
            &self,
            tenant: &str,
            bus: &str,
            rule: &str,
            target: &str,
        ) -> Option<Arc<BoundTarget>> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .find(|t| t.tenant == tenant && t.bus == bus && t.rule == rule && t.id == target)
                .cloned()
        }
    }

    struct Harness {
        store: MemoryStore,
        clock: SharedClock,
        engine: Arc<DeliveryEngine>,
        shutdown: watch::Sender<bool>,
    }

    fn harness(targets: Vec<Arc<BoundTarget>>, config: EngineConfig) -> Harness {
        let clock: SharedClock = Arc::new(TokioClock::starting_at(1_000_000));
        let store = MemoryStore::new(clock.clone());
        let directory = Arc::new(Directory(Mutex::new(targets)));
        let engine = Arc::new(DeliveryEngine::new(
            Arc::new(store.clone()),
            directory,
            clock.clone(),
            config,
        ));
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(engine.clone().run_retries(rx));
        Harness {
            store,
            clock,
            engine,
            shutdown,
        }
    }

    fn bound(target: Arc<dyn Target>, retry: RetryPolicy) -> Arc<BoundTarget> {
        Arc::new(BoundTarget {
            tenant: "t".into(),
            bus: "b".into(),
            rule: "r".into(),
            id: "x".into(),
            retry,
            dead_letter: true,
            ordered: false,
            target,
        })
    }

    fn item(id: &str) -> Item {
        let map = serde_json::json!({"specversion": "1.0", "id": id, "source": "s", "type": "t"});
        let serde_json::Value::Object(map) = map else {
            unreachable!()
        };
        Item {
            event: StoredEvent::of(Event::from_validated(map)),
            body: None,
        }
    }

    /// A done-guard that counts its own release.
    fn counted(released: &Arc<AtomicUsize>) -> DoneGuard {
        struct Count(Arc<AtomicUsize>);
        impl Drop for Count {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        Arc::new(Count(released.clone()))
    }

    fn retry_503() -> Outcome {
        Outcome::Retry(Failure {
            status: Some(503),
            ..Failure::new(FailureCode::HttpStatus, "HTTP 503")
        })
    }

    /// Waits (on virtual time) until `check` holds.
    async fn until<F, Fut>(what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for _ in 0..100_000 {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never happened: {what}");
    }

    async fn dead_letters(store: &MemoryStore) -> Vec<crate::store::DeadLetter> {
        store
            .list_dead_letters("t", &DeadLetterFilter::default(), None, 100)
            .await
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn failed_first_attempts_are_retried_with_backoff_until_delivered() {
        let clock: SharedClock = Arc::new(TokioClock::starting_at(1_000_000));
        let target = Scripted::new(clock.clone(), vec![retry_503(), retry_503()]);
        let policy = RetryPolicy {
            base_delay_ms: 1_000,
            max_delay_ms: 1_000,
            ..RetryPolicy::default()
        };
        let b = bound(target.clone(), policy);
        let h = harness(vec![b.clone()], EngineConfig::default());
        let released = Arc::new(AtomicUsize::new(0));
        let start = h.clock.now_ms();
        h.engine.dispatch(vec![Delivery::first(
            b,
            item("e1"),
            start,
            counted(&released),
        )]);
        // The guard is released once the failure is stored as a job.
        until("first attempt persisted", || async {
            released.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(h.store.job_count(), 1);
        until("three attempts", || async { target.calls().len() == 3 }).await;
        until("job acked", || async { h.store.job_count() == 0 }).await;
        let calls = target.calls();
        // Full jitter: each retry waits between 0 and the 1 s cap.
        for pair in calls.windows(2) {
            assert!(
                (0..=1_000 + 10).contains(&(pair[1].0 - pair[0].0)),
                "{calls:?}"
            );
        }
        assert!(dead_letters(&h.store).await.is_empty());
        h.shutdown.send_replace(true);
    }

    #[tokio::test(start_paused = true)]
    async fn max_attempts_and_permanent_failures_dead_letter_with_their_reason() {
        let clock: SharedClock = Arc::new(TokioClock::starting_at(1_000_000));
        let target = Scripted::new(clock.clone(), vec![retry_503(), retry_503(), retry_503()]);
        let policy = RetryPolicy {
            max_attempts: 2,
            base_delay_ms: 10,
            max_delay_ms: 10,
            ..RetryPolicy::default()
        };
        let b = bound(target.clone(), policy);
        let h = harness(vec![b.clone()], EngineConfig::default());
        let now = h.clock.now_ms();
        h.engine.dispatch(vec![Delivery::first(
            b.clone(),
            item("e1"),
            now,
            counted(&Arc::default()),
        )]);
        until("two attempts", || async { target.calls().len() == 2 }).await;
        until("dead-lettered", || async { h.store.job_count() == 0 }).await;
        let letters = dead_letters(&h.store).await;
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].exhausted, Exhausted::MaxAttempts);
        assert_eq!(
            (letters[0].attempts, letters[0].error.status),
            (2, Some(503))
        );
        assert_eq!(letters[0].error.code, FailureCode::HttpStatus);

        let permanent = Scripted::new(
            clock.clone(),
            vec![Outcome::Permanent(Failure::new(
                FailureCode::HttpStatus,
                "HTTP 404",
            ))],
        );
        let p = bound(permanent.clone(), RetryPolicy::default());
        h.engine.dispatch(vec![Delivery::first(
            p,
            item("e2"),
            now,
            counted(&Arc::default()),
        )]);
        until("two dead letters", || async {
            dead_letters(&h.store).await.len() == 2
        })
        .await;
        let letters = dead_letters(&h.store).await;
        assert_eq!(letters[0].exhausted, Exhausted::Permanent);
        assert_eq!(letters[0].attempts, 1);
        h.shutdown.send_replace(true);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_early_when_the_next_attempt_would_pass_the_age_limit() {
        let clock: SharedClock = Arc::new(TokioClock::starting_at(1_000_000));
        let target = Scripted::new(
            clock.clone(),
            vec![Outcome::Retry(Failure {
                retry_after: Some(Duration::from_secs(120)),
                ..Failure::new(FailureCode::RateLimited, "HTTP 429")
            })],
        );
        // Ten minutes of age budget, and the target asks for two more minutes
        // when the event is already nine minutes old: give up now.
        let policy = RetryPolicy {
            max_event_age_s: 600,
            max_retry_after_s: 300,
            ..RetryPolicy::default()
        };
        let b = bound(target.clone(), policy);
        let h = harness(vec![b.clone()], EngineConfig::default());
        let ingested = h.clock.now_ms() - 540_000;
        h.engine.dispatch(vec![Delivery::first(
            b,
            item("old"),
            ingested,
            counted(&Arc::default()),
        )]);
        until("dead letter", || async {
            dead_letters(&h.store).await.len() == 1
        })
        .await;
        let letters = dead_letters(&h.store).await;
        assert_eq!(letters[0].exhausted, Exhausted::MaxEventAge);
        assert_eq!(target.calls().len(), 1);
        h.shutdown.send_replace(true);
    }

    fn services(store: &MemoryStore, clock: &SharedClock) -> TargetServices {
        let runtime = crate::plugin::PluginRuntime::new(crate::plugin::RuntimeConfig::new(
            std::env::temp_dir().join("busbar-engine-tests"),
        ));
        struct NoPlugins;
        impl crate::plugin::registry::PluginDirectory for NoPlugins {
            fn plugin(&self, _: &str, _: &str) -> Option<crate::resource::PluginRecord> {
                None
            }
            fn plugin_limits(&self, _: &str) -> Option<Arc<crate::plugin::LimitsOverrides>> {
                None
            }
        }
        TargetServices {
            http: crate::deliver::http::HttpClient::new(&crate::net::EgressPolicy::default())
                .unwrap(),
            queues: Arc::new(store.clone()),
            queue_signals: Arc::default(),
            log: Arc::new(store.clone()),
            max_hops: 8,
            clock: clock.clone(),
            plugins: Arc::new(crate::plugin::registry::PluginHost::new(
                Arc::new(runtime.unwrap()),
                Arc::new(NoPlugins),
                crate::plugin::KindLimits::uniform(&crate::plugin::PluginLimits::default()),
            )),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn queue_and_bus_targets_follow_the_retry_policy_when_the_store_refuses() {
        let clock: SharedClock = Arc::new(TokioClock::starting_at(1_000_000));
        let store = MemoryStore::new(clock.clone());
        let services = services(&store, &clock);
        let lookup = |_: &str| None;
        let cx = crate::deliver::BuildContext {
            tenant: "t",
            services: &services,
            plugin: &lookup,
        };
        let spec = |v: serde_json::Value| {
            crate::deliver::TargetSpec::parse(&v, "", &mut Default::default()).unwrap()
        };
        let queue = spec(serde_json::json!({"id": "q", "type": "queue", "queue": "audit"}))
            .build(&cx)
            .unwrap();
        let bus = spec(serde_json::json!({"id": "x", "type": "bus", "bus": "other"}))
            .build(&cx)
            .unwrap();
        let policy = RetryPolicy {
            max_attempts: 3,
            base_delay_ms: 100,
            max_delay_ms: 100,
            ..RetryPolicy::default()
        };
        let q = Arc::new(BoundTarget {
            id: "q".into(),
            ..Arc::unwrap_or_clone(bound(queue, policy.clone()))
        });
        let b = Arc::new(BoundTarget {
            id: "b".into(),
            ..Arc::unwrap_or_clone(bound(bus, policy))
        });
        let directory = Arc::new(Directory(Mutex::new(vec![q.clone(), b.clone()])));
        let engine = Arc::new(DeliveryEngine::new(
            Arc::new(store.clone()),
            directory,
            clock.clone(),
            EngineConfig::default(),
        ));
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(engine.clone().run_retries(rx));
        // The store refuses two pushes and two appends: the third attempt succeeds.
        store.fail_next(FaultOp::QueuePush, 2);
        store.fail_next(FaultOp::Append, 2);
        let now = clock.now_ms();
        engine.dispatch(vec![
            Delivery::first(q.clone(), item("e1"), now, counted(&Arc::default())),
            Delivery::first(b.clone(), item("e1"), now, counted(&Arc::default())),
        ]);
        until("queued", || async {
            store.job_count() == 0 && store.queue_depth("t", "audit").await.unwrap() == 1
        })
        .await;
        assert!(dead_letters(&store).await.is_empty());
        // Refused more often than the policy allows: dead-lettered as store errors.
        store.fail_next(FaultOp::QueuePush, 5);
        engine.dispatch(vec![Delivery::first(
            q,
            item("e2"),
            now,
            counted(&Arc::default()),
        )]);
        until("dead letter", || async {
            dead_letters(&store).await.len() == 1
        })
        .await;
        let letters = dead_letters(&store).await;
        assert_eq!(
            (letters[0].exhausted, letters[0].attempts),
            (Exhausted::MaxAttempts, 3)
        );
        assert_eq!(letters[0].error.code, FailureCode::StoreError);
        shutdown.send_replace(true);
    }

    /// Deliveries to a target at its cap (one call at a time) that are due
    /// together go out in batches. (They wait for a slot in memory: parking
    /// is `deliveries_past_a_slow_targets_cap_are_parked_and_counted`.)
    #[tokio::test(start_paused = true)]
    async fn deliveries_due_together_to_a_busy_target_go_in_batches() {
        let clock: SharedClock = Arc::new(TokioClock::starting_at(1_000_000));
        let target = Arc::new(Scripted {
            max_batch: 10,
            clock: Mutex::new(Some(clock.clone())),
            ..Scripted::default()
        });
        let b = bound(target.clone(), RetryPolicy::default());
        let config = EngineConfig {
            per_target_cap: 1,
            ..EngineConfig::default()
        };
        let h = harness(vec![b.clone()], config);
        let now = h.clock.now_ms();
        let deliveries: Vec<Delivery> = (0..25)
            .map(|i| {
                Delivery::first(
                    b.clone(),
                    item(&format!("e{i}")),
                    now,
                    counted(&Arc::default()),
                )
            })
            .collect();
        h.engine.dispatch(deliveries);
        until("all delivered", || async {
            target.calls().iter().map(|(_, n)| n).sum::<usize>() == 25 && h.store.job_count() == 0
        })
        .await;
        let calls = target.calls();
        assert!(calls.iter().all(|(_, n)| *n <= 10), "{calls:?}");
        assert!(
            calls.iter().any(|(_, n)| *n > 1),
            "deliveries due together are batched: {calls:?}"
        );
        h.shutdown.send_replace(true);
    }

    /// Routing hands the engine bursts larger than a target's cap; the
    /// surplus waits in memory for a slot instead of being parked as jobs
    /// (here every job write fails, so a parked delivery would never end).
    #[tokio::test(start_paused = true)]
    async fn a_burst_beyond_the_cap_waits_in_memory_for_a_slot() {
        let clock: SharedClock = Arc::new(TokioClock::starting_at(1_000_000));
        let target = crate::deliver::testing::FailsIds::new(clock, &[], Duration::from_millis(10));
        let b = bound(target.clone(), RetryPolicy::default());
        let config = EngineConfig {
            per_target_cap: 2,
            ..EngineConfig::default()
        };
        let h = harness(vec![b.clone()], config);
        h.store.fail_next(FaultOp::Enqueue, u32::MAX);
        let released = Arc::new(AtomicUsize::new(0));
        let now = h.clock.now_ms();
        let deliveries: Vec<Delivery> = (0..20)
            .map(|i| Delivery::first(b.clone(), item(&format!("e{i}")), now, counted(&released)))
            .collect();
        h.engine.dispatch(deliveries);
        until("every delivery done from memory", || async {
            released.load(Ordering::SeqCst) == 20
        })
        .await;
        assert_eq!(target.calls.lock().unwrap().len(), 20);
        assert_eq!(h.store.job_count(), 0);
        h.shutdown.send_replace(true);
    }

    /// A delivery still without a slot after `slot_wait` (its target's
    /// one call takes longer) is parked as a job due now, and counted in
    /// `busbar_deliveries_parked_total`: work beyond a first attempt from
    /// memory, which the load generator reports per phase.
    #[tokio::test(start_paused = true)]
    async fn deliveries_past_a_slow_targets_cap_are_parked_and_counted() {
        let clock: SharedClock = Arc::new(TokioClock::starting_at(1_000_000));
        let target = crate::deliver::testing::FailsIds::new(clock, &[], Duration::from_secs(1));
        let b = bound(target.clone(), RetryPolicy::default());
        let config = EngineConfig {
            per_target_cap: 1,
            slot_wait: Duration::from_millis(100),
            ..EngineConfig::default()
        };
        let h = harness(vec![b.clone()], config);
        // Counted on this thread's recorder: the test runtime runs every
        // task on it.
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let _recording = metrics::set_default_local_recorder(&recorder);
        let released = Arc::new(AtomicUsize::new(0));
        let now = h.clock.now_ms();
        let deliveries: Vec<Delivery> = (0..3)
            .map(|i| Delivery::first(b.clone(), item(&format!("e{i}")), now, counted(&released)))
            .collect();
        h.engine.dispatch(deliveries);
        until("every delivery done or parked", || async {
            released.load(Ordering::SeqCst) == 3
        })
        .await;
        until("the parked ones delivered", || async {
            target.calls.lock().unwrap().len() == 3 && h.store.job_count() == 0
        })
        .await;
        let text = metrics.render();
        let parked: Option<f64> = text
            .lines()
            .find_map(|l| l.strip_prefix("busbar_deliveries_parked_total{tenant=\"t\"} "))
            .and_then(|n| n.parse().ok());
        assert_eq!(parked, Some(2.0), "{text}");
        h.shutdown.send_replace(true);
    }

    fn keyed(id: &str, key: &str) -> Item {
        let map = serde_json::json!({"specversion": "1.0", "id": id, "source": "s", "type": "t",
                                     "partitionkey": key});
        let serde_json::Value::Object(map) = map else {
            unreachable!()
        };
        Item {
            event: StoredEvent::of(Event::from_validated(map)),
            body: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn chained_deliveries_go_one_at_a_time_per_key_in_order_through_retries_and_dead_letters()
    {
        let clock: SharedClock = Arc::new(TokioClock::starting_at(1_000_000));
        // K3 fails twice (then goes), M2 fails for good (dead-lettered after
        // three attempts, then M3 goes); L is never held up by either.
        let target = crate::deliver::testing::FailsIds::new(
            clock.clone(),
            &[("K3", 2), ("M2", 10)],
            Duration::from_millis(10),
        );
        let policy = RetryPolicy {
            max_attempts: 3,
            base_delay_ms: 10,
            max_delay_ms: 10,
            max_retry_after_s: 60,
            ..RetryPolicy::default()
        };
        let b = Arc::new(BoundTarget {
            ordered: true,
            ..Arc::unwrap_or_clone(bound(target.clone(), policy))
        });
        let h = harness(vec![b.clone()], EngineConfig::default());
        let now = h.clock.now_ms();
        let released = Arc::new(AtomicUsize::new(0));
        let mut deliveries = Vec::new();
        let mut position = 0;
        for i in 1..=5 {
            for key in ["K", "L", "M"] {
                position += 1;
                let id = format!("{key}{i}");
                deliveries.push(
                    Delivery::first(b.clone(), keyed(&id, key), now, counted(&released))
                        .in_chain(position, 0),
                );
            }
        }
        // One without a key: unordered, straight from memory.
        deliveries.push(
            Delivery::first(b.clone(), item("free"), now, counted(&released)).in_chain(99, 0),
        );
        h.engine.dispatch(deliveries);
        until("everything delivered or dead-lettered", || async {
            target.delivered().len() == 15 && h.store.job_count() == 0
        })
        .await;
        assert_eq!(
            released.load(Ordering::SeqCst),
            16,
            "every first delivery released"
        );
        let delivered = target.delivered();
        let of = |key: &str| -> Vec<String> {
            delivered
                .iter()
                .filter(|id| id.starts_with(key))
                .cloned()
                .collect()
        };
        assert_eq!(of("K"), ["K1", "K2", "K3", "K4", "K5"]);
        assert_eq!(of("L"), ["L1", "L2", "L3", "L4", "L5"]);
        assert_eq!(of("M"), ["M1", "M3", "M4", "M5"]);
        let letters = dead_letters(&h.store).await;
        assert_eq!(letters.len(), 1);
        assert_eq!(
            (letters[0].event_id.as_str(), letters[0].attempts),
            ("M2", 3)
        );
        // One call at a time per key, and L never waited for K3's retries.
        let most = target.most_at_once.lock().unwrap().clone();
        assert!(
            most.iter().all(|(k, n)| *n == 1 || k.is_empty()),
            "{most:?}"
        );
        let calls = target.calls.lock().unwrap().clone();
        let at = |id: &str| calls.iter().find(|(_, i, ok)| i == id && *ok).unwrap().0;
        assert!(at("L5") < at("K3"), "{calls:?}");
        assert!(
            at("K3") - now >= 4_000,
            "K3 was retried twice, two seconds apart"
        );
        assert!(at("K3") < at("K4"));
        h.shutdown.send_replace(true);
    }

    fn batching(max_items: usize, max_bytes: Option<usize>, max_wait_ms: u64) -> Batching {
        Batching {
            max_items,
            max_bytes,
            max_wait: Duration::from_millis(max_wait_ms),
        }
    }

    fn firsts(b: &Arc<BoundTarget>, ids: &[String], now: Millis) -> Vec<Delivery> {
        ids.iter()
            .map(|id| Delivery::first(b.clone(), item(id), now, counted(&Arc::default())))
            .collect()
    }

    fn ids(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i:02}")).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_batch_goes_when_full_or_after_max_wait() {
        let clock: SharedClock = Arc::new(TokioClock::starting_at(1_000_000));
        let target =
            crate::deliver::testing::Batched::new(clock.clone(), batching(10, None, 50), vec![]);
        let b = bound(target.clone(), RetryPolicy::default());
        let h = harness(vec![b.clone()], EngineConfig::default());
        let start = h.clock.now_ms();
        // Three dispatches, 20 ms apart: one call, 50 ms after the first.
        for (i, id) in ids("a", 3).iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            h.engine
                .dispatch(firsts(&b, std::slice::from_ref(id), h.clock.now_ms()));
        }
        until("the partial batch flushed", || async {
            !target.calls().is_empty()
        })
        .await;
        let calls = target.calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].1, ids("a", 3));
        assert_eq!(
            calls[0].0 - start,
            50,
            "sent when the first had waited max_wait"
        );

        // 25 at once: two full batches at once, the rest after max_wait.
        let now = h.clock.now_ms();
        h.engine.dispatch(firsts(&b, &ids("b", 25), now));
        until("all delivered", || async { target.delivered().len() == 28 }).await;
        let calls = target.calls();
        let sizes: Vec<(Millis, usize)> = calls[1..]
            .iter()
            .map(|(at, ids, _)| (at - now, ids.len()))
            .collect();
        assert_eq!(sizes, [(0, 10), (0, 10), (50, 5)]);
        assert_eq!(target.delivered()[3..], ids("b", 25)[..]);
        assert_eq!(h.store.job_count(), 0);
        h.shutdown.send_replace(true);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_keep_within_max_bytes() {
        let clock: SharedClock = Arc::new(TokioClock::starting_at(1_000_000));
        let size = Batching::size_of(&item("c00"));
        // Room for three items, not four.
        for wait in [0, 30] {
            let target = crate::deliver::testing::Batched::new(
                clock.clone(),
                batching(100, Some(3 * size + 1), wait),
                vec![],
            );
            let b = bound(target.clone(), RetryPolicy::default());
            let h = harness(vec![b.clone()], EngineConfig::default());
            h.engine
                .dispatch(firsts(&b, &ids("c", 10), h.clock.now_ms()));
            until("all delivered", || async { target.delivered().len() == 10 }).await;
            let sizes: Vec<usize> = target.calls().iter().map(|(_, ids, _)| ids.len()).collect();
            assert_eq!(sizes, [3, 3, 3, 1], "max_wait {wait}");
            assert_eq!(target.delivered(), ids("c", 10));
            h.shutdown.send_replace(true);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_batch_is_retried_and_dead_lettered_event_by_event() {
        let clock: SharedClock = Arc::new(TokioClock::starting_at(1_000_000));
        // Answered 503 once, then 200: each event delivered exactly once.
        let target = crate::deliver::testing::Batched::new(
            clock.clone(),
            batching(10, None, 0),
            vec![retry_503()],
        );
        let policy = RetryPolicy {
            max_attempts: 3,
            base_delay_ms: 10,
            max_delay_ms: 10,
            ..RetryPolicy::default()
        };
        let b = bound(target.clone(), policy.clone());
        let failing = crate::deliver::testing::Batched::new(
            clock.clone(),
            batching(10, None, 0),
            vec![retry_503(); 20],
        );
        let f = Arc::new(BoundTarget {
            id: "f".into(),
            ..Arc::unwrap_or_clone(bound(failing.clone(), policy))
        });
        let h = harness(vec![b.clone(), f.clone()], EngineConfig::default());
        let released = Arc::new(AtomicUsize::new(0));
        let now = h.clock.now_ms();
        let deliveries = ids("d", 5)
            .iter()
            .map(|id| Delivery::first(b.clone(), item(id), now, counted(&released)))
            .collect();
        h.engine.dispatch(deliveries);
        until("all delivered", || async {
            target.delivered().len() == 5 && h.store.job_count() == 0
        })
        .await;
        let mut delivered = target.delivered();
        delivered.sort();
        assert_eq!(delivered, ids("d", 5), "each event delivered once");
        assert_eq!(target.calls()[0].1.len(), 5);
        assert!(!target.calls()[0].2);
        assert_eq!(released.load(Ordering::SeqCst), 5);
        assert!(dead_letters(&h.store).await.is_empty());

        // Never accepted: each event dead-lettered on its own, with its reason.
        h.engine.dispatch(firsts(&f, &ids("e", 4), now));
        until("four dead letters", || async {
            dead_letters(&h.store).await.len() == 4 && h.store.job_count() == 0
        })
        .await;
        let letters = dead_letters(&h.store).await;
        let mut letter_ids: Vec<&str> = letters.iter().map(|l| l.event_id.as_str()).collect();
        letter_ids.sort_unstable();
        assert_eq!(letter_ids, ["e00", "e01", "e02", "e03"]);
        for letter in &letters {
            assert_eq!(letter.exhausted, Exhausted::MaxAttempts);
            assert_eq!(letter.attempts, 3);
            assert_eq!(
                (letter.error.code, letter.error.status),
                (FailureCode::HttpStatus, Some(503))
            );
        }
        assert!(failing.delivered().is_empty());
        h.shutdown.send_replace(true);
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_within_a_batch_are_settled_one_by_one() {
        let clock: SharedClock = Arc::new(TokioClock::starting_at(1_000_000));
        // Delivered, retried (then delivered), dead-lettered: one call.
        let target = Arc::new(Scripted {
            max_batch: 3,
            clock: Mutex::new(Some(clock.clone())),
            script: Mutex::new(vec![
                Outcome::Delivered { status: Some(200) },
                retry_503(),
                Outcome::Permanent(Failure {
                    status: Some(422),
                    ..Failure::new(FailureCode::HttpStatus, "HTTP 422")
                }),
            ]),
            ..Scripted::default()
        });
        let policy = RetryPolicy {
            base_delay_ms: 10,
            max_delay_ms: 10,
            ..RetryPolicy::default()
        };
        let b = bound(target.clone(), policy);
        let h = harness(vec![b.clone()], EngineConfig::default());
        h.engine
            .dispatch(firsts(&b, &ids("m", 3), h.clock.now_ms()));
        until("settled", || async {
            target.calls().len() == 2
                && h.store.job_count() == 0
                && dead_letters(&h.store).await.len() == 1
        })
        .await;
        let sizes: Vec<usize> = target.calls().iter().map(|(_, n)| *n).collect();
        assert_eq!(sizes, [3, 1], "one batch, then the retry alone");
        let letters = dead_letters(&h.store).await;
        assert_eq!(
            (letters[0].event_id.as_str(), letters[0].exhausted),
            ("m02", Exhausted::Permanent)
        );
        assert_eq!(letters[0].error.status, Some(422));
        h.shutdown.send_replace(true);
    }
}
