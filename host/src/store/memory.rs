//! In-memory backend: every interface, no durability.
//!
//! It exists so that the router and the delivery engine can be tested on
//! virtual time (with [`TokioClock`](crate::clock::TokioClock) and a paused
//! tokio runtime every wait in here is a tokio timer, so `advance` moves
//! jobs to due), and as the plainest statement of what each verb means: the
//! conformance suite holds every backend to the behaviour written here.
//! [`MemoryStore::fail_next`] injects failures, to test how callers
//! survive a store that refuses a write.

use super::archives::{ArchiveId, ArchivePosition, ArchiveStats, ArchivedEvent, Archives, Window};
use super::dead_letters::{DeadLetter, DeadLetterFilter, DeadLetterId, DeadLetters};
use super::failure::{AttemptError, Exhausted};
use super::jobs::{DeliveryJobs, JobLease, LeaseRepr, LeasedJob, NewJob};
use super::log::{AckToken, EventLog, LogConsumer, LogEntry, NewEvent};
use super::queues::{NewQueueMessage, QueueDepth, Queues, ReceivedMessage};
use super::replays::{ReplayProgress, ReplayRecord, ReplayState, Replays};
use super::traces::{Trace, TraceCursor, TraceFact, TraceKey, TraceQuery, TraceSummary, Traces};
use super::watermark::Watermark;
use super::{
    ConfigSnapshot, ConfigStore, KeyRecord, Millis, Resource, ResourceKind, StoreError,
    StoreResult, TenantRecord,
};
use crate::clock::{SharedClock, millis};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Store operations [`MemoryStore::fail_next`] can make fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// [`EventLog::append`].
    Append,
    /// [`Queues::queue_push`].
    QueuePush,
    /// [`DeliveryJobs::enqueue`].
    Enqueue,
    /// [`DeliveryJobs::dead_letter`].
    DeadLetter,
}

/// The in-memory store. Cheap to clone (clones share the data).
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    clock: SharedClock,
    data: Mutex<Data>,
    /// The highest appended position, for consumers waiting on appends.
    appended: watch::Sender<i64>,
    /// Woken when jobs are added or become due earlier.
    jobs_changed: Notify,
}

#[derive(Debug, Default)]
struct Data {
    tenants: BTreeMap<String, TenantRecord>,
    /// Key id → (record, revoked).
    keys: BTreeMap<String, (KeyRecord, bool)>,
    resources: BTreeMap<(String, ResourceKind, String), Resource>,
    settings: BTreeMap<String, String>,
    log: BTreeMap<i64, NewEvent>,
    last_seq: i64,
    /// Everything up to here is acknowledged (what a durable backend persists).
    routed: i64,
    jobs: BTreeMap<i64, JobRow>,
    last_job: i64,
    last_token: u64,
    dead: BTreeMap<DeadLetterId, DeadLetter>,
    last_dead: DeadLetterId,
    queues: BTreeMap<(String, String), BTreeMap<i64, Message>>,
    last_message: i64,
    faults: HashMap<FaultOp, u32>,
    /// Archives, traces and replays (see the section at the end).
    history: History,
    /// FIFO chains (see [`DeliveryJobs`]'s chain contract).
    chains: Chains,
    /// The ingest door: deduplication keys and schemas.
    door: DoorData,
}

/// FIFO chains: only a chain's head is in `Data::jobs`.
#[derive(Debug, Default)]
struct Chains {
    /// Chain name → the job id of its head.
    heads: HashMap<String, i64>,
    /// Chain name → the jobs behind its head, by slot.
    waiting: HashMap<String, BTreeMap<(i64, u32), NewJob>>,
    /// Chain name → its last finished slot.
    done: HashMap<String, (i64, u32)>,
}

/// The ingest door's state: deduplication keys, schema versions,
/// discovered schemas.
#[derive(Debug, Default)]
struct DoorData {
    /// Key → (accepted at, window end as recorded).
    dedup: HashMap<super::DedupKey, (Millis, Millis)>,
    /// (tenant, bus, name) → versions, oldest first.
    schemas: BTreeMap<(String, String, String), Vec<super::SchemaVersion>>,
    /// (tenant, bus, source, type) → summary.
    discovered: BTreeMap<(String, String, String, String), super::DiscoveredSchema>,
}

#[derive(Debug)]
struct JobRow {
    job: NewJob,
    lease_until: Millis,
    token: u64,
}

impl JobRow {
    /// When the job can next be leased.
    fn available_at(&self) -> Millis {
        self.job.due_ms.max(self.lease_until)
    }
}

#[derive(Debug)]
struct Message {
    body: bytes::Bytes,
    visible_ms: Millis,
    receive_count: u32,
    receipt: Option<String>,
}

impl Data {
    /// Consumes one injected failure of `op`, if any.
    fn fault(&mut self, op: FaultOp) -> StoreResult<()> {
        match self.faults.get_mut(&op) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(StoreError::Unavailable(format!("injected {op:?} failure")))
            }
            _ => Ok(()),
        }
    }

    /// Schedules a job: a chain's job becomes its head when the chain has
    /// none, else waits behind it; a slot already scheduled or finished is
    /// dropped.
    fn insert_job(&mut self, job: NewJob) {
        if let (Some(chain), Some(slot)) = (job.chain_name(), job.chain.as_ref()) {
            let order = slot.order();
            if self
                .chains
                .done
                .get(&chain)
                .is_some_and(|done| order <= *done)
            {
                return;
            }
            if let Some(head) = self.chains.heads.get(&chain) {
                let head_order = self.jobs.get(head).and_then(|r| r.job.chain.as_ref());
                if head_order.is_none_or(|h| h.order() != order) {
                    self.chains
                        .waiting
                        .entry(chain)
                        .or_default()
                        .entry(order)
                        .or_insert(job);
                }
                return;
            }
            self.chains.heads.insert(chain, self.last_job + 1);
        }
        self.last_job += 1;
        self.jobs.insert(
            self.last_job,
            JobRow {
                job,
                lease_until: 0,
                token: 0,
            },
        );
    }

    /// Removes a job; a chain's head hands over to the next waiting job.
    /// Returns whether a waiting job became leasable.
    fn remove_job(&mut self, id: i64) -> bool {
        let Some(row) = self.jobs.remove(&id) else {
            return false;
        };
        let (Some(chain), Some(slot)) = (row.job.chain_name(), row.job.chain.as_ref()) else {
            return false;
        };
        self.chains.heads.remove(&chain);
        let done = self
            .chains
            .done
            .entry(chain.clone())
            .or_insert(slot.order());
        *done = (*done).max(slot.order());
        let next = self
            .chains
            .waiting
            .get_mut(&chain)
            .and_then(|w| w.pop_first());
        if self
            .chains
            .waiting
            .get(&chain)
            .is_some_and(BTreeMap::is_empty)
        {
            self.chains.waiting.remove(&chain);
        }
        match next {
            Some((_, job)) => {
                self.insert_job(job);
                true
            }
            None => {
                // Empty: the finished slot matters only while the router
                // could route that entry again (until the cursor passes it).
                if slot.position <= self.routed {
                    self.chains.done.remove(&chain);
                }
                false
            }
        }
    }

    /// The row a lease refers to, if the lease is still the current one.
    fn leased_row(&mut self, lease: &JobLease) -> Option<&mut JobRow> {
        let LeaseRepr::Row { id, token } = lease.0 else {
            return None;
        };
        self.jobs.get_mut(&id).filter(|row| row.token == token)
    }
}

impl MemoryStore {
    /// An empty store reading time from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        let (appended, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                clock,
                data: Mutex::new(Data::default()),
                appended,
                jobs_changed: Notify::new(),
            }),
        }
    }

    /// Makes the next `times` calls of `op` fail with
    /// [`StoreError::Unavailable`] (for tests of callers' retries).
    pub fn fail_next(&self, op: FaultOp, times: u32) {
        self.data().faults.insert(op, times);
    }

    /// Jobs scheduled (leased or not, chain heads and the jobs waiting
    /// behind them): for tests.
    pub fn job_count(&self) -> usize {
        let d = self.data();
        d.jobs.len() + d.chains.waiting.values().map(BTreeMap::len).sum::<usize>()
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        self.inner.data()
    }

    fn now(&self) -> Millis {
        self.inner.clock.now_ms()
    }
}

impl Inner {
    fn data(&self) -> MutexGuard<'_, Data> {
        // A panic while holding the lock leaves consistent data (every
        // mutation below is a few infallible steps), so poisoning is ignored.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl ConfigStore for MemoryStore {
    async fn load(&self) -> StoreResult<ConfigSnapshot> {
        let d = self.data();
        Ok(ConfigSnapshot {
            tenants: d.tenants.values().cloned().collect(),
            keys: d
                .keys
                .values()
                .filter(|(_, revoked)| !revoked)
                .map(|(k, _)| k.clone())
                .collect(),
            resources: d.resources.values().cloned().collect(),
        })
    }

    async fn create_tenant(&self, tenant: TenantRecord) -> StoreResult<()> {
        let mut d = self.data();
        if d.tenants.contains_key(&tenant.name) {
            return Err(StoreError::Conflict(format!("tenant {}", tenant.name)));
        }
        d.tenants.insert(tenant.name.clone(), tenant);
        Ok(())
    }

    async fn put_key(&self, key: KeyRecord) -> StoreResult<()> {
        let mut d = self.data();
        if d.keys.contains_key(&key.id) || d.keys.values().any(|(k, _)| k.hash == key.hash) {
            return Err(StoreError::Conflict(format!("key {}", key.id)));
        }
        d.keys.insert(key.id.clone(), (key, false));
        Ok(())
    }

    async fn revoke_key(&self, tenant: &str, key_id: &str) -> StoreResult<bool> {
        let mut d = self.data();
        match d.keys.get_mut(key_id) {
            Some((key, revoked)) if key.tenant == tenant && !*revoked => {
                *revoked = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn put_resource(&self, resource: Resource) -> StoreResult<()> {
        let key = (
            resource.tenant.clone(),
            resource.kind,
            resource.name.clone(),
        );
        self.data().resources.insert(key, resource);
        Ok(())
    }

    async fn delete_resource(
        &self,
        tenant: &str,
        kind: ResourceKind,
        name: &str,
    ) -> StoreResult<bool> {
        let key = (tenant.to_owned(), kind, name.to_owned());
        Ok(self.data().resources.remove(&key).is_some())
    }

    async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(self.data().settings.get(key).cloned())
    }

    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        self.data()
            .settings
            .insert(key.to_owned(), value.to_owned());
        Ok(())
    }
}

#[async_trait]
impl EventLog for MemoryStore {
    async fn append(&self, events: Vec<NewEvent>) -> StoreResult<()> {
        let last = {
            let mut d = self.data();
            d.fault(FaultOp::Append)?;
            for e in events {
                d.append_one(e);
            }
            d.last_seq
        };
        self.inner.appended.send_replace(last);
        Ok(())
    }

    async fn consumer(&self) -> StoreResult<Arc<dyn LogConsumer>> {
        let routed = self.data().routed;
        Ok(Arc::new(MemoryConsumer {
            inner: self.inner.clone(),
            state: Mutex::new(Watermark::starting_after(routed)),
        }))
    }

    async fn prune(&self, before: Millis) -> StoreResult<u64> {
        let mut d = self.data();
        let routed = d.routed;
        let doomed: Vec<i64> = d
            .log
            .range(..=routed)
            .filter(|(_, e)| e.ingested_ms < before)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &doomed {
            d.log.remove(seq);
        }
        // Finished slots of empty chains the cursor has passed.
        let Data { chains, routed, .. } = &mut *d;
        chains
            .done
            .retain(|chain, done| done.0 > *routed || chains.heads.contains_key(chain));
        Ok(doomed.len() as u64)
    }
}

/// The routing consumer of a [`MemoryStore`].
#[derive(Debug)]
struct MemoryConsumer {
    inner: Arc<Inner>,
    /// What was handed out and acknowledged.
    state: Mutex<Watermark>,
}

impl MemoryConsumer {
    fn watermark(&self) -> MutexGuard<'_, Watermark> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands out up to `max` entries after the highest one handed out.
    fn take(&self, max: usize) -> Vec<LogEntry> {
        let mut w = self.watermark();
        let d = self.inner.data();
        let entries: Vec<LogEntry> = d
            .log
            .range(w.high() + 1..)
            .take(max)
            .map(|(seq, e)| LogEntry {
                event: e.clone(),
                ack: AckToken::seq(*seq),
                position: *seq,
            })
            .collect();
        for e in &entries {
            if let Some(seq) = e.ack.as_seq() {
                w.handed_out(seq);
            }
        }
        entries
    }
}

#[async_trait]
impl LogConsumer for MemoryConsumer {
    async fn next(&self, max: usize, wait: Duration) -> StoreResult<Vec<LogEntry>> {
        let mut appended = self.inner.appended.subscribe();
        appended.borrow_and_update();
        let entries = self.take(max);
        if !entries.is_empty() || wait.is_zero() {
            return Ok(entries);
        }
        let _ = tokio::time::timeout(wait, appended.changed()).await;
        Ok(self.take(max))
    }

    async fn ack(&self, tokens: Vec<AckToken>) -> StoreResult<()> {
        let low = {
            let mut w = self.watermark();
            for t in &tokens {
                if let Some(seq) = t.as_seq() {
                    w.acked(seq);
                }
            }
            w.low()
        };
        let mut d = self.inner.data();
        d.routed = d.routed.max(low);
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.watermark().in_flight()
    }
}

#[async_trait]
impl DeliveryJobs for MemoryStore {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> StoreResult<()> {
        {
            let mut d = self.data();
            d.fault(FaultOp::Enqueue)?;
            for job in jobs {
                d.insert_job(job);
            }
        }
        self.inner.jobs_changed.notify_waiters();
        Ok(())
    }

    async fn lease_due(
        &self,
        max: usize,
        lease_for: Duration,
        wait: Duration,
    ) -> StoreResult<Vec<LeasedJob>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.inner.jobs_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = self.now();
            let next_at = {
                let mut d = self.data();
                let mut due: Vec<(Millis, i64)> = d
                    .jobs
                    .iter()
                    .filter(|(_, row)| row.available_at() <= now)
                    .map(|(id, row)| (row.job.due_ms, *id))
                    .collect();
                due.sort_unstable();
                due.truncate(max);
                if !due.is_empty() {
                    let mut leased = Vec::with_capacity(due.len());
                    for (_, id) in due {
                        d.last_token += 1;
                        let token = d.last_token;
                        if let Some(row) = d.jobs.get_mut(&id) {
                            row.lease_until = now + millis(lease_for);
                            row.token = token;
                            leased.push(LeasedJob {
                                lease: JobLease(LeaseRepr::Row { id, token }),
                                job: row.job.clone(),
                            });
                        }
                    }
                    return Ok(leased);
                }
                d.jobs.values().map(JobRow::available_at).min()
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            let until_due = next_at
                .map(|at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0)))
                .unwrap_or(left);
            tokio::select! {
                _ = tokio::time::sleep(left.min(until_due)) => {}
                _ = changed => {}
            }
        }
    }

    async fn ack_job(&self, lease: &JobLease) -> StoreResult<()> {
        if let LeaseRepr::Row { id, .. } = lease.0
            && self.data().remove_job(id)
        {
            self.inner.jobs_changed.notify_waiters();
        }
        Ok(())
    }

    async fn retry_job(
        &self,
        lease: &JobLease,
        due_ms: Millis,
        attempts: u32,
        error: AttemptError,
    ) -> StoreResult<bool> {
        let updated = {
            let mut d = self.data();
            d.last_token += 1;
            let next_token = d.last_token;
            match d.leased_row(lease) {
                Some(row) => {
                    row.job.due_ms = due_ms;
                    row.job.attempts = attempts;
                    row.job.last_error = Some(error);
                    // The attempt is over: end the lease, so the same
                    // lease can neither retry nor extend the job again.
                    row.lease_until = 0;
                    row.token = next_token;
                    true
                }
                None => false,
            }
        };
        if updated {
            self.inner.jobs_changed.notify_waiters();
        }
        Ok(updated)
    }

    async fn extend_leases(&self, leases: &[JobLease], lease_for: Duration) -> StoreResult<usize> {
        let until = self.now() + millis(lease_for);
        let mut d = self.data();
        let mut current = 0;
        for lease in leases {
            if let Some(row) = d.leased_row(lease) {
                row.lease_until = row.lease_until.max(until);
                current += 1;
            }
        }
        Ok(current)
    }

    async fn dead_letter(
        &self,
        lease: Option<&JobLease>,
        job: NewJob,
        exhausted: Exhausted,
    ) -> StoreResult<DeadLetterId> {
        let now = self.now();
        let mut d = self.data();
        d.fault(FaultOp::DeadLetter)?;
        if let Some(JobLease(LeaseRepr::Row { id, .. })) = lease
            && d.remove_job(*id)
        {
            self.inner.jobs_changed.notify_waiters();
        }
        d.last_dead += 1;
        let id = d.last_dead;
        let error = job
            .last_error
            .clone()
            .unwrap_or_else(|| AttemptError::new(super::FailureCode::Unknown, ""));
        d.dead.insert(
            id,
            DeadLetter {
                id,
                tenant: job.tenant,
                bus: job.bus,
                rule: job.rule,
                target: job.target,
                event_id: job.event_id,
                event: job.event,
                body: job.body,
                error,
                attempts: job.attempts,
                exhausted,
                ingested_ms: job.ingested_ms,
                created_ms: now,
            },
        );
        Ok(id)
    }
}

#[async_trait]
impl DeadLetters for MemoryStore {
    async fn list_dead_letters(
        &self,
        tenant: &str,
        filter: &DeadLetterFilter,
        before: Option<DeadLetterId>,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetter>> {
        let d = self.data();
        Ok(d.dead
            .range(..before.unwrap_or(DeadLetterId::MAX))
            .rev()
            .map(|(_, letter)| letter)
            .filter(|letter| letter.tenant == tenant && filter.matches(letter))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn dead_letter_entry(
        &self,
        tenant: &str,
        id: DeadLetterId,
    ) -> StoreResult<Option<DeadLetter>> {
        Ok(self
            .data()
            .dead
            .get(&id)
            .filter(|d| d.tenant == tenant)
            .cloned())
    }

    async fn delete_dead_letter(&self, tenant: &str, id: DeadLetterId) -> StoreResult<bool> {
        let mut d = self.data();
        if d.dead
            .get(&id)
            .is_some_and(|letter| letter.tenant == tenant)
        {
            d.dead.remove(&id);
            Ok(true)
        } else {
            Ok(false)
        }
    }

    async fn redrive(
        &self,
        tenant: &str,
        ids: Option<&[DeadLetterId]>,
        filter: &DeadLetterFilter,
    ) -> StoreResult<Vec<DeadLetterId>> {
        let now = self.now();
        let moved = {
            let mut d = self.data();
            let chosen: Vec<DeadLetterId> = d
                .dead
                .values()
                .filter(|letter| {
                    letter.tenant == tenant
                        && filter.matches(letter)
                        && ids.is_none_or(|ids| ids.contains(&letter.id))
                })
                .map(|letter| letter.id)
                .collect();
            for id in &chosen {
                if let Some(letter) = d.dead.remove(id) {
                    d.insert_job(NewJob {
                        tenant: letter.tenant,
                        bus: letter.bus,
                        rule: letter.rule,
                        target: letter.target,
                        event_id: letter.event_id,
                        event: letter.event,
                        body: letter.body,
                        attempts: 0,
                        // A redriven event gets a fresh age budget.
                        ingested_ms: now,
                        due_ms: now,
                        last_error: None,
                        chain: None,
                    });
                }
            }
            chosen
        };
        if !moved.is_empty() {
            self.inner.jobs_changed.notify_waiters();
        }
        Ok(moved)
    }
}

#[async_trait]
impl Queues for MemoryStore {
    async fn queue_push(&self, messages: Vec<NewQueueMessage>) -> StoreResult<()> {
        let mut d = self.data();
        d.fault(FaultOp::QueuePush)?;
        for m in messages {
            d.last_message += 1;
            let id = d.last_message;
            d.queues.entry((m.tenant, m.queue)).or_default().insert(
                id,
                Message {
                    body: m.body,
                    visible_ms: 0,
                    receive_count: 0,
                    receipt: None,
                },
            );
        }
        Ok(())
    }

    async fn queue_receive(
        &self,
        tenant: &str,
        queue: &str,
        max: usize,
        visibility: Duration,
    ) -> StoreResult<Vec<ReceivedMessage>> {
        let now = self.now();
        let mut d = self.data();
        let Some(messages) = d.queues.get_mut(&(tenant.to_owned(), queue.to_owned())) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (id, m) in messages.iter_mut() {
            if out.len() == max {
                break;
            }
            if m.visible_ms > now {
                continue;
            }
            let token: u64 = rand::random();
            let receipt = format!("{id}.{token:016x}");
            m.visible_ms = now + millis(visibility);
            m.receive_count += 1;
            m.receipt = Some(receipt.clone());
            out.push(ReceivedMessage {
                receipt,
                body: m.body.clone(),
                receive_count: m.receive_count,
            });
        }
        Ok(out)
    }

    async fn queue_ack(
        &self,
        tenant: &str,
        queue: &str,
        receipts: &[String],
    ) -> StoreResult<usize> {
        let mut d = self.data();
        let Some(messages) = d.queues.get_mut(&(tenant.to_owned(), queue.to_owned())) else {
            return Ok(0);
        };
        let before = messages.len();
        messages.retain(|_, m| {
            m.receipt
                .as_ref()
                .is_none_or(|r| !receipts.iter().any(|x| x == r))
        });
        Ok(before - messages.len())
    }

    async fn queue_depth(&self, tenant: &str, queue: &str) -> StoreResult<u64> {
        Ok(self
            .data()
            .queues
            .get(&(tenant.to_owned(), queue.to_owned()))
            .map_or(0, |m| m.len() as u64))
    }

    async fn queue_depths(&self) -> StoreResult<Vec<QueueDepth>> {
        Ok(self
            .data()
            .queues
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|((tenant, queue), m)| QueueDepth {
                tenant: tenant.clone(),
                queue: queue.clone(),
                messages: m.len() as u64,
            })
            .collect())
    }

    async fn queue_purge(&self, tenant: &str, queue: &str) -> StoreResult<()> {
        self.data()
            .queues
            .remove(&(tenant.to_owned(), queue.to_owned()));
        Ok(())
    }
}

// ---- The ingest door: deduplicated appends and the schema registry ------

#[async_trait]
impl super::DedupLog for MemoryStore {
    async fn append_deduplicated(
        &self,
        events: Vec<super::AdmittedEvent>,
    ) -> StoreResult<Vec<super::Appended>> {
        let (answers, last) = {
            let mut d = self.data();
            d.fault(FaultOp::Append)?;
            let mut answers = Vec::with_capacity(events.len());
            for super::AdmittedEvent { event, dedup } in events {
                if let Some(dedup) = dedup {
                    let seen = d.door.dedup.get(&dedup.key).map(|(at, _)| *at);
                    if seen.is_some_and(|at| at > event.ingested_ms - dedup.window_ms) {
                        answers.push(super::Appended::Duplicate);
                        continue;
                    }
                    d.door.dedup.insert(
                        dedup.key,
                        (event.ingested_ms, event.ingested_ms + dedup.window_ms),
                    );
                }
                d.append_one(event);
                answers.push(super::Appended::New);
            }
            (answers, d.last_seq)
        };
        self.inner.appended.send_replace(last);
        Ok(answers)
    }

    async fn prune_dedup_keys(&self, now: Millis) -> StoreResult<u64> {
        let mut d = self.data();
        let before = d.door.dedup.len();
        d.door.dedup.retain(|_, (_, expires)| *expires >= now);
        Ok((before - d.door.dedup.len()) as u64)
    }
}

#[async_trait]
impl super::SchemaStore for MemoryStore {
    async fn add_schema_version(&self, version: super::SchemaVersion) -> StoreResult<()> {
        let mut d = self.data();
        let key = (
            version.tenant.clone(),
            version.bus.clone(),
            version.name.clone(),
        );
        let versions = d.door.schemas.entry(key).or_default();
        if version.version as usize != versions.len() + 1 {
            return Err(StoreError::Conflict("that schema version".into()));
        }
        versions.push(version);
        Ok(())
    }

    async fn schema_versions(
        &self,
        tenant: &str,
        bus: &str,
        name: &str,
    ) -> StoreResult<Vec<super::SchemaVersion>> {
        let key = (tenant.to_owned(), bus.to_owned(), name.to_owned());
        Ok(self
            .data()
            .door
            .schemas
            .get(&key)
            .cloned()
            .unwrap_or_default())
    }

    async fn latest_schema_versions(&self) -> StoreResult<Vec<super::SchemaVersion>> {
        Ok(self
            .data()
            .door
            .schemas
            .values()
            .filter_map(|versions| versions.last().cloned())
            .collect())
    }

    async fn delete_schema(&self, tenant: &str, bus: &str, name: &str) -> StoreResult<bool> {
        let key = (tenant.to_owned(), bus.to_owned(), name.to_owned());
        Ok(self
            .data()
            .door
            .schemas
            .remove(&key)
            .is_some_and(|v| !v.is_empty()))
    }

    async fn discovered_schemas(
        &self,
        tenant: &str,
        bus: &str,
    ) -> StoreResult<Vec<super::DiscoveredSchema>> {
        Ok(self
            .data()
            .door
            .discovered
            .values()
            .filter(|s| s.tenant == tenant && s.bus == bus)
            .cloned()
            .collect())
    }

    async fn put_discovered_schema(
        &self,
        mut schema: super::DiscoveredSchema,
    ) -> StoreResult<Option<u64>> {
        let mut d = self.data();
        let key = (
            schema.tenant.clone(),
            schema.bus.clone(),
            schema.source.clone(),
            schema.event_type.clone(),
        );
        let current = d.door.discovered.get(&key).map_or(0, |s| s.revision);
        if current != schema.revision {
            return Ok(None);
        }
        schema.revision += 1;
        let revision = schema.revision;
        d.door.discovered.insert(key, schema);
        Ok(Some(revision))
    }

    async fn delete_bus_schemas(&self, tenant: &str, bus: &str) -> StoreResult<u64> {
        let mut d = self.data();
        let before = d.door.schemas.len() + d.door.discovered.len();
        d.door
            .schemas
            .retain(|(t, b, _), _| !(t == tenant && b == bus));
        d.door
            .discovered
            .retain(|(t, b, _, _), _| !(t == tenant && b == bus));
        Ok((before - d.door.schemas.len() - d.door.discovered.len()) as u64)
    }
}

// ------------------------------------------------ archives, traces, replays

/// The state behind [`Archives`], [`Traces`] and [`Replays`].
#[derive(Debug, Default)]
struct History {
    /// Archive id → (ingest time, id) → event.
    archives: BTreeMap<ArchiveId, BTreeMap<(Millis, i64), NewEvent>>,
    last_archived: i64,
    /// Trace id (recording order) → trace.
    traces: BTreeMap<i64, Trace>,
    last_trace: i64,
    /// Facts that arrived before their trace, with when they arrived.
    pending: Vec<(Millis, TraceKey, TraceFact)>,
    /// Replay id → record.
    replays: BTreeMap<String, ReplayRecord>,
}

impl Data {
    /// Appends one event to the log and copies it into its archives.
    fn append_one(&mut self, mut e: NewEvent) {
        self.last_seq += 1;
        let seq = self.last_seq;
        let archives = std::mem::take(&mut e.archives);
        let bus_archives = std::mem::take(&mut e.bus_archives);
        for archive in archives.into_iter().chain(bus_archives) {
            self.history.last_archived += 1;
            let id = self.history.last_archived;
            self.history
                .archives
                .entry(archive)
                .or_default()
                .insert((e.ingested_ms, id), e.clone());
        }
        self.log.insert(seq, e);
    }

    /// The id of the newest trace the key names.
    fn trace_for(&self, key: &TraceKey) -> Option<i64> {
        self.history
            .traces
            .iter()
            .filter(|(_, t)| {
                t.tenant == key.tenant
                    && t.bus == key.bus
                    && t.event_id == key.event_id
                    && key.received_ms.is_none_or(|ms| ms == t.received_ms)
            })
            .max_by_key(|(id, t)| (t.received_ms, **id))
            .map(|(id, _)| *id)
    }
}

fn in_window(window: Window) -> std::ops::Range<(Millis, i64)> {
    (window.from_ms, i64::MIN)..(window.to_ms, i64::MIN)
}

#[async_trait]
impl Archives for MemoryStore {
    async fn archive_stats(&self, archive: &str) -> StoreResult<ArchiveStats> {
        let d = self.data();
        let Some(events) = d.history.archives.get(archive) else {
            return Ok(ArchiveStats::default());
        };
        Ok(ArchiveStats {
            event_count: events.len() as u64,
            size_bytes: events.values().map(|e| e.body.len() as u64).sum(),
            oldest_ms: events.keys().next().map(|(ms, _)| *ms),
            newest_ms: events.keys().next_back().map(|(ms, _)| *ms),
        })
    }

    async fn count_archived(&self, archive: &str, window: Window) -> StoreResult<u64> {
        let d = self.data();
        Ok(d.history
            .archives
            .get(archive)
            .map_or(0, |events| events.range(in_window(window)).count() as u64))
    }

    async fn read_archive(
        &self,
        archive: &str,
        window: Window,
        after: Option<&ArchivePosition>,
        max: usize,
    ) -> StoreResult<Vec<ArchivedEvent>> {
        let d = self.data();
        let Some(events) = d.history.archives.get(archive) else {
            return Ok(Vec::new());
        };
        let start = match after.and_then(ArchivePosition::parts) {
            Some((ms, id)) => std::ops::Bound::Excluded((ms, id)),
            None => std::ops::Bound::Included((window.from_ms, i64::MIN)),
        };
        let end = std::ops::Bound::Excluded((window.to_ms, i64::MIN));
        Ok(events
            .range((start, end))
            .filter(|((ms, _), _)| *ms >= window.from_ms)
            .take(max)
            .map(|((ms, id), e)| ArchivedEvent {
                position: ArchivePosition::at(*ms, *id),
                event: e.clone(),
            })
            .collect())
    }

    async fn expire_archive(&self, archive: &str, before: Millis, max: usize) -> StoreResult<u64> {
        let mut d = self.data();
        let Some(events) = d.history.archives.get_mut(archive) else {
            return Ok(0);
        };
        let doomed: Vec<(Millis, i64)> = events
            .range(..(before, i64::MIN))
            .take(max)
            .map(|(k, _)| *k)
            .collect();
        for k in &doomed {
            events.remove(k);
        }
        Ok(doomed.len() as u64)
    }

    async fn purge_archive(&self, archive: &str, max: usize) -> StoreResult<u64> {
        let mut d = self.data();
        let Some(events) = d.history.archives.get_mut(archive) else {
            return Ok(0);
        };
        let doomed: Vec<(Millis, i64)> = events.keys().take(max).copied().collect();
        for k in &doomed {
            events.remove(k);
        }
        if events.is_empty() {
            d.history.archives.remove(archive);
        }
        Ok(doomed.len() as u64)
    }

    async fn stored_archives(&self) -> StoreResult<Vec<ArchiveId>> {
        Ok(self.data().history.archives.keys().cloned().collect())
    }
}

#[async_trait]
impl Traces for MemoryStore {
    async fn record_traces(&self, traces: Arc<[Trace]>) -> StoreResult<()> {
        let mut d = self.data();
        for trace in traces.iter() {
            let mut trace = trace.clone();
            let key = trace.key();
            let pending = std::mem::take(&mut d.history.pending);
            for (at, k, fact) in pending {
                let mine = k.tenant == key.tenant
                    && k.bus == key.bus
                    && k.event_id == key.event_id
                    && k.received_ms.is_none_or(|ms| Some(ms) == key.received_ms);
                if mine {
                    trace.apply(&fact);
                } else {
                    d.history.pending.push((at, k, fact));
                }
            }
            match d.trace_for(&key) {
                Some(id) => {
                    d.history.traces.insert(id, trace);
                }
                None => {
                    d.history.last_trace += 1;
                    let id = d.history.last_trace;
                    d.history.traces.insert(id, trace);
                }
            }
        }
        Ok(())
    }

    async fn add_trace_facts(&self, facts: Arc<[(TraceKey, TraceFact)]>) -> StoreResult<()> {
        let now = self.now();
        let mut d = self.data();
        for (key, fact) in facts.iter() {
            match d.trace_for(key) {
                Some(id) => {
                    if let Some(t) = d.history.traces.get_mut(&id) {
                        t.apply(fact);
                    }
                }
                None if fact.waits_for_trace() => {
                    d.history.pending.push((now, key.clone(), fact.clone()))
                }
                None => {}
            }
        }
        Ok(())
    }

    async fn trace(
        &self,
        tenant: &str,
        event_id: &str,
        bus: Option<&str>,
    ) -> StoreResult<Option<Trace>> {
        let d = self.data();
        let recorded = d
            .history
            .traces
            .iter()
            .filter(|(_, t)| {
                t.tenant == tenant && t.event_id == event_id && bus.is_none_or(|b| b == t.bus)
            })
            .max_by_key(|(id, t)| (t.received_ms, **id))
            .map(|(_, t)| t.clone());
        let unrouted = d
            .log
            .range(d.routed + 1..)
            .rev()
            .map(|(_, e)| e)
            .find(|e| {
                e.tenant == tenant && e.event_id == event_id && bus.is_none_or(|b| b == e.bus)
            })
            .map(Trace::received);
        Ok(match (recorded, unrouted) {
            (Some(r), Some(u)) if u.received_ms > r.received_ms => Some(u),
            (Some(r), _) => Some(r),
            (None, u) => u,
        })
    }

    async fn search_traces(
        &self,
        tenant: &str,
        query: &TraceQuery,
        after: Option<&TraceCursor>,
        limit: usize,
    ) -> StoreResult<(Vec<TraceSummary>, Option<TraceCursor>)> {
        let d = self.data();
        let after = after.and_then(TraceCursor::parts);
        let mut all: Vec<(Millis, i64, &Trace)> = d
            .history
            .traces
            .iter()
            .filter(|(_, t)| t.tenant == tenant && query.matches(t))
            .map(|(id, t)| (t.received_ms, *id, t))
            .filter(|(ms, id, _)| after.is_none_or(|a| (*ms, *id) < a))
            .collect();
        all.sort_by_key(|t| std::cmp::Reverse((t.0, t.1)));
        let more = all.len() > limit;
        all.truncate(limit);
        let next = more
            .then(|| all.last().map(|(ms, id, _)| TraceCursor::at(*ms, *id)))
            .flatten();
        Ok((
            all.iter().map(|(_, _, t)| TraceSummary::from(*t)).collect(),
            next,
        ))
    }

    async fn expire_traces(
        &self,
        before: Millis,
        keep_at_most: u64,
        max: usize,
    ) -> StoreResult<u64> {
        let mut d = self.data();
        let over = (d.history.traces.len() as u64).saturating_sub(keep_at_most);
        let mut oldest: Vec<(Millis, i64)> = d
            .history
            .traces
            .iter()
            .map(|(id, t)| (t.received_ms, *id))
            .collect();
        oldest.sort_unstable();
        let doomed: Vec<i64> = oldest
            .iter()
            .enumerate()
            .filter(|(i, (ms, _))| (*i as u64) < over || *ms < before)
            .take(max)
            .map(|(_, (_, id))| *id)
            .collect();
        for id in &doomed {
            d.history.traces.remove(id);
        }
        d.history.pending.retain(|(at, _, _)| *at >= before);
        Ok(doomed.len() as u64)
    }
}

#[async_trait]
impl Replays for MemoryStore {
    async fn create_replay(&self, record: ReplayRecord) -> StoreResult<()> {
        let mut d = self.data();
        let taken = d.history.replays.contains_key(&record.id)
            || record.name.is_some()
                && d.history
                    .replays
                    .values()
                    .any(|r| r.tenant == record.tenant && r.name == record.name);
        if taken {
            return Err(StoreError::Conflict(format!(
                "replay {}",
                record.replay_name()
            )));
        }
        d.history.replays.insert(record.id.clone(), record);
        Ok(())
    }

    async fn replay(&self, tenant: &str, id: &str) -> StoreResult<Option<ReplayRecord>> {
        Ok(self
            .data()
            .history
            .replays
            .get(id)
            .filter(|r| r.tenant == tenant)
            .cloned())
    }

    async fn list_replays(&self, tenant: &str) -> StoreResult<Vec<ReplayRecord>> {
        let d = self.data();
        let mut all: Vec<ReplayRecord> = d
            .history
            .replays
            .values()
            .filter(|r| r.tenant == tenant)
            .cloned()
            .collect();
        all.sort_by(|a, b| (b.started_ms, &b.id).cmp(&(a.started_ms, &a.id)));
        Ok(all)
    }

    async fn unfinished_replays(&self) -> StoreResult<Vec<ReplayRecord>> {
        let d = self.data();
        let mut all: Vec<ReplayRecord> = d
            .history
            .replays
            .values()
            .filter(|r| !r.state.is_final())
            .cloned()
            .collect();
        all.sort_by(|a, b| (a.started_ms, &a.id).cmp(&(b.started_ms, &b.id)));
        Ok(all)
    }

    async fn set_replay_state(
        &self,
        tenant: &str,
        id: &str,
        state: ReplayState,
        reason: Option<String>,
        ended_ms: Option<Millis>,
    ) -> StoreResult<bool> {
        let mut d = self.data();
        match d.history.replays.get_mut(id) {
            Some(r) if r.tenant == tenant && !r.state.is_final() => {
                r.state = state;
                r.state_reason = reason;
                r.ended_ms = ended_ms;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn replay_append(
        &self,
        tenant: &str,
        id: &str,
        events: Vec<NewEvent>,
        progress: ReplayProgress,
    ) -> StoreResult<bool> {
        let last = {
            let mut d = self.data();
            d.fault(FaultOp::Append)?;
            match d.history.replays.get_mut(id) {
                Some(r) if r.tenant == tenant && !r.state.is_final() => {
                    r.state = ReplayState::Running;
                    r.progress = progress;
                }
                _ => return Ok(false),
            }
            for e in events {
                d.append_one(e);
            }
            d.last_seq
        };
        self.inner.appended.send_replace(last);
        Ok(true)
    }
}
