//! Delivery jobs: attempts scheduled for later.
//!
//! A delivery that did not succeed on its first attempt (or could not start:
//! its target was at its in-flight cap) becomes a job with a due time. The
//! delivery engine asks for due jobs with [`DeliveryJobs::lease_due`], which
//! waits inside the backend until something is due; each job comes with a
//! [`JobLease`] that reserves it for a while. The engine then acks, retries
//! (a new due time), dead-letters, or — for attempts that take long —
//! extends the lease. A lease that runs out makes the job due again, so a
//! crashed worker's jobs are picked up by another (or by itself after a
//! restart) without losing any.
//!
//! # FIFO chains
//!
//! A job may belong to a chain ([`NewJob::chain`]): the deliveries of one
//! partition key to one target of one rule, which must go out one at a time
//! in ingest order. A chain's jobs are leasable only one at a time, lowest
//! [`ChainSlot`] first: the *head* is leased, retried and leased again as
//! any job, and the jobs behind it wait until it is acked or dead-lettered
//! (then the next one is due at once, or at its own due time if later).
//! The backend remembers each chain's last finished slot, and drops an
//! enqueued job whose slot is already scheduled or finished: after a crash
//! the router routes again the log entries whose acknowledgement was not
//! yet durable, and those deliveries must not run a second time behind
//! later ones. (SQLite keeps the waiting jobs in their own table and moves
//! the next one into `jobs` in the same transaction that removes the head;
//! JetStream would keep a chain as one subject of a work stream, lease the
//! head by creating a KV lock key with a TTL, and keep the finished slot in
//! KV.)

use super::dead_letters::DeadLetterId;
use super::failure::{AttemptError, Exhausted};
use super::{Millis, StoreResult};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// A delivery to attempt later.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    /// Owning tenant.
    pub tenant: String,
    /// Bus the rule belongs to.
    pub bus: String,
    /// Rule name.
    pub rule: String,
    /// Target id within the rule.
    pub target: String,
    /// The CloudEvents `id`.
    pub event_id: String,
    /// The event in CloudEvents JSON format.
    pub event: Bytes,
    /// The rendered transform output, when the rule has a built-in transform.
    pub body: Option<String>,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the event was accepted (the age limit counts from here).
    pub ingested_ms: Millis,
    /// When the job becomes due.
    pub due_ms: Millis,
    /// The last attempt's failure.
    pub last_error: Option<AttemptError>,
    /// The job's place in a FIFO chain, for rules that keep order per
    /// partition key; `None` for unordered deliveries.
    pub chain: Option<ChainSlot>,
}

/// A delivery's place in its FIFO chain: the chain is (tenant, bus, rule,
/// target, `key`), and slots are ordered by (`position`, `index`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChainSlot {
    /// The event's partition key (CloudEvents `partitionkey`).
    pub key: String,
    /// The event's position in its bus's log (ingest order).
    pub position: i64,
    /// Which of the events routed from that log entry (a transformer plugin
    /// may make several), in their order.
    pub index: u32,
}

impl ChainSlot {
    /// Where the slot stands in its chain (lower goes first).
    pub fn order(&self) -> (i64, u32) {
        (self.position, self.index)
    }
}

impl NewJob {
    /// The name of the job's chain, unique per (tenant, bus, rule, target,
    /// key); `None` for unordered jobs. Names cannot contain `/`, so the
    /// key (any text) can come last without ambiguity.
    pub fn chain_name(&self) -> Option<String> {
        self.chain.as_ref().map(|slot| {
            format!(
                "{}/{}/{}/{}/{}",
                self.tenant, self.bus, self.rule, self.target, slot.key
            )
        })
    }
}

/// The right to work on one job until the lease runs out. Opaque: only the
/// backend that made it can read it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JobLease(pub(crate) LeaseRepr);

/// What a backend keeps in a [`JobLease`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LeaseRepr {
    /// A job row and the lease generation that was granted.
    Row {
        /// The job's id in the backend.
        id: i64,
        /// Changes on every lease, so an expired lease cannot touch a job
        /// someone else has leased since.
        token: u64,
    },
    /// A message's acknowledgement address (JetStream reply subject).
    #[allow(dead_code)]
    Reply(Arc<str>),
}

/// A job and its lease.
#[derive(Clone, Debug)]
pub struct LeasedJob {
    /// What to present to ack, retry, extend or dead-letter it.
    pub lease: JobLease,
    /// The job as scheduled (`attempts` and `last_error` so far).
    pub job: NewJob,
}

/// Scheduled delivery attempts.
#[async_trait]
pub trait DeliveryJobs: Send + Sync + 'static {
    /// Schedules deliveries; durable when `Ok`. Jobs of one chain must be
    /// enqueued in slot order (across calls too); one whose slot is already
    /// scheduled or finished is dropped.
    async fn enqueue(&self, jobs: Vec<NewJob>) -> StoreResult<()>;

    /// Leases up to `max` jobs that are due (roughly earliest first: by
    /// when each became leasable), of each chain only its head, for
    /// `lease_for`. When none is due, waits up to `wait` for one to become
    /// due (or be enqueued) and returns what is due then (possibly nothing).
    async fn lease_due(
        &self,
        max: usize,
        lease_for: Duration,
        wait: Duration,
    ) -> StoreResult<Vec<LeasedJob>>;

    /// The job was delivered: removes it (whoever holds it now; delivered is
    /// delivered). The next job of its chain becomes leasable.
    async fn ack_job(&self, lease: &JobLease) -> StoreResult<()>;

    /// The attempt failed: the job becomes due at `due_ms` with its new
    /// attempt count and error, and the lease ends. False (and nothing
    /// changes) if the lease is no longer current (it ran out and the job
    /// was leased again, or it was already used to retry).
    async fn retry_job(
        &self,
        lease: &JobLease,
        due_ms: Millis,
        attempts: u32,
        error: AttemptError,
    ) -> StoreResult<bool>;

    /// Keeps leases alive for another `lease_for` (a heartbeat for attempts
    /// that take long). Returns how many were still current.
    async fn extend_leases(&self, leases: &[JobLease], lease_for: Duration) -> StoreResult<usize>;

    /// Gives up on a delivery: removes the job (when `lease` is given,
    /// current or not — as with [`ack_job`](Self::ack_job)) and records the
    /// dead letter, in one step. `job.last_error` is the reason. The next
    /// job of its chain becomes leasable.
    async fn dead_letter(
        &self,
        lease: Option<&JobLease>,
        job: NewJob,
        exhausted: Exhausted,
    ) -> StoreResult<DeadLetterId>;

    /// Gives back every lease this process holds, at a clean stop, so
    /// another node (or this one restarted) gets the jobs at once instead
    /// of when the leases expire. Backends whose leases die with the
    /// process (or are reclaimed at open) have nothing to do.
    async fn release(&self) {}
}
