//! Delivery jobs on JetStream: stream `P_JOBS` (work-queue retention: a
//! job's message is deleted when it is acked), subjects
//! `<prefix>.jobs.<tenant>.<bus>`, one durable pull consumer `workers`
//! shared by every node.
//!
//! A job is one message (a JSON header line with the job's fields, then
//! the event). Nothing about a job is ever changed in place: a retry
//! publishes the job anew (new due time, attempts and error, with a
//! `Nats-Msg-Id` derived from the old message and lease, so a repeated
//! retry is stored once) and then double-acks the old message.
//!
//! **Ownership and leases.** The consumer hands each message to one node,
//! which holds it (unacknowledged) in its pool until the job is acked,
//! retried or dead-lettered. While it holds it, the heartbeat sends `+WPI`
//! every `AckWait/3`, so the server hands it to another node only if this
//! node goes silent for a whole `AckWait` (it died). The lease the engine
//! sees is the application's: a token and an expiry on the bus's clock,
//! kept in the pool; `extend_leases` moves the expiry, a retry ends the
//! lease, and a lease that ran out makes the job leasable again (on this
//! node, which still owns the message). So `lease_for` may differ per
//! call, and leases follow virtual time in tests.
//!
//! **Due times.** `lease_due` drains what the consumer has into the pool
//! (a no-wait pull), and hands out the due jobs earliest first. A job due
//! within `hold_horizon` waits in the pool; one due later is handed back
//! with a nak delayed until its due time (JetStream's `BackOff` is not
//! used: it would override `AckWait`), so far-future retries do not sit in
//! a node's memory and come back to whichever node pulls then. When nothing
//! is due, `lease_due` parks one pull request until the earliest pooled job
//! falls due or `wait` runs out, so an enqueue on any node wakes it.
//!
//! **Reading its own writes.** On a cluster the consumer's leader may run a
//! moment behind the stream's leader, so a job this node just enqueued
//! might not yet be deliverable. Before draining, `lease_due` checks that
//! the consumer has seen the highest sequence this node wrote (its
//! delivered sequence plus its pending count), waiting briefly if not.
//!
//! **Dead letters** are published to `P_DLQ` first (with a `Nats-Msg-Id`
//! derived from the job's message: a repeat after a crash is stored once),
//! then the job's message is double-acked.

use super::{Holder, NatsStore, frame, unframe};
use crate::clock::millis;
use crate::store::dead_letters::DeadLetterId;
use crate::store::failure::{AttemptError, Exhausted, FailureCode};
use crate::store::jobs::{DeliveryJobs, JobLease, LeaseRepr, LeasedJob, NewJob};
use crate::store::{Millis, StoreResult};
use async_nats::jetstream::consumer::{self, AckPolicy, pull};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The job consumer's durable name.
const WORKERS: &str = "workers";
/// Most messages one node holds at once.
const POOL_CAP: usize = 4096;
/// Most messages one drain pulls.
const DRAIN_BATCH: usize = 256;
/// How long `lease_due` waits for the consumer to see this node's writes.
const CATCH_UP: Duration = Duration::from_secs(2);

/// A job's header line.
#[derive(Serialize, Deserialize)]
pub(super) struct Meta {
    tenant: String,
    bus: String,
    rule: String,
    target: String,
    event_id: String,
    body: Option<String>,
    attempts: u32,
    ingested_ms: Millis,
    due_ms: Millis,
    error: Option<ErrorJson>,
}

/// An [`AttemptError`] as stored.
#[derive(Serialize, Deserialize)]
pub(super) struct ErrorJson {
    pub(super) code: String,
    pub(super) message: String,
    pub(super) status: Option<u16>,
}

impl ErrorJson {
    pub(super) fn from_error(e: &AttemptError) -> Self {
        Self {
            code: e.code.as_str().to_owned(),
            message: e.message.clone(),
            status: e.status,
        }
    }

    pub(super) fn into_error(self) -> AttemptError {
        AttemptError {
            code: FailureCode::parse(&self.code),
            message: self.message,
            status: self.status,
        }
    }
}

/// Encodes a job as a message body.
pub(super) fn encode(job: &NewJob) -> StoreResult<bytes::Bytes> {
    frame(
        &Meta {
            tenant: job.tenant.clone(),
            bus: job.bus.clone(),
            rule: job.rule.clone(),
            target: job.target.clone(),
            event_id: job.event_id.clone(),
            body: job.body.clone(),
            attempts: job.attempts,
            ingested_ms: job.ingested_ms,
            due_ms: job.due_ms,
            error: job.last_error.as_ref().map(ErrorJson::from_error),
        },
        &job.event,
    )
}

fn decode(payload: &bytes::Bytes) -> StoreResult<NewJob> {
    let (m, event) = unframe::<Meta>(payload)?;
    Ok(NewJob {
        tenant: m.tenant,
        bus: m.bus,
        rule: m.rule,
        target: m.target,
        event_id: m.event_id,
        event,
        body: m.body,
        attempts: m.attempts,
        ingested_ms: m.ingested_ms,
        due_ms: m.due_ms,
        last_error: m.error.map(ErrorJson::into_error),
        // FIFO chains are not kept on this backend yet.
        chain: None,
    })
}

/// The jobs this node holds, and what it knows of the consumer.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    state: Mutex<PoolState>,
    consumer: tokio::sync::OnceCell<consumer::Consumer<pull::Config>>,
}

#[derive(Debug, Default)]
struct PoolState {
    /// Stream sequence → the held job.
    held: HashMap<u64, Held>,
    last_token: u64,
    /// The highest sequence this node wrote to the job stream.
    written: u64,
    /// The consumer has seen the stream at least up to here.
    seen: u64,
}

#[derive(Debug)]
struct Held {
    reply: String,
    job: NewJob,
    lease_until: Millis,
    /// The current lease's token (0: never leased).
    token: u64,
}

impl Held {
    fn available_at(&self) -> Millis {
        self.job.due_ms.max(self.lease_until)
    }
}

impl Pool {
    fn state(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a write to the job stream at `seq`.
    pub(super) fn wrote(&self, seq: u64) {
        let mut st = self.state();
        st.written = st.written.max(seq);
    }

    /// Every held message's ack subject, taking them out (a drop hands them back).
    pub(super) fn take_all(&self) -> Vec<(u64, String)> {
        self.state()
            .held
            .drain()
            .map(|(seq, h)| (seq, h.reply))
            .collect()
    }

    /// Removes a held job; its ack subject.
    fn remove(&self, seq: u64) -> Option<String> {
        self.state().held.remove(&seq).map(|h| h.reply)
    }

    /// Leases up to `max` due jobs, earliest due first; otherwise tells
    /// when the earliest held job becomes available.
    fn pick(
        &self,
        max: usize,
        lease_for: Duration,
        now: Millis,
    ) -> (Vec<LeasedJob>, Option<Millis>) {
        let mut st = self.state();
        let mut due: Vec<(Millis, u64)> = st
            .held
            .iter()
            .filter(|(_, h)| h.available_at() <= now)
            .map(|(seq, h)| (h.job.due_ms, *seq))
            .collect();
        due.sort_unstable();
        due.truncate(max);
        let mut leased = Vec::with_capacity(due.len());
        for (_, seq) in due {
            st.last_token += 1;
            let token = st.last_token;
            if let Some(h) = st.held.get_mut(&seq) {
                h.token = token;
                h.lease_until = now.saturating_add(millis(lease_for));
                leased.push(LeasedJob {
                    lease: JobLease(LeaseRepr::Row {
                        id: i64::try_from(seq).unwrap_or(i64::MAX),
                        token,
                    }),
                    job: h.job.clone(),
                });
            }
        }
        let next = st.held.values().map(Held::available_at).min();
        (leased, next)
    }
}

impl Holder for Pool {
    fn held_replies(&self) -> Vec<String> {
        self.state()
            .held
            .values()
            .map(|h| h.reply.clone())
            .collect()
    }
}

/// The stream sequence and token of a lease this backend made.
fn lease_parts(lease: &JobLease) -> Option<(u64, u64)> {
    match lease.0 {
        LeaseRepr::Row { id, token } => Some((u64::try_from(id).ok()?, token)),
        LeaseRepr::Reply(_) => None,
    }
}

impl NatsStore {
    /// The shared job consumer (created on first use).
    async fn workers(&self) -> StoreResult<&consumer::Consumer<pull::Config>> {
        let s = &self.inner;
        s.job_pool
            .consumer
            .get_or_try_init(|| async {
                let mut workers = s
                    .timed(
                        "open the job consumer",
                        s.jobs.get_or_create_consumer(
                            WORKERS,
                            pull::Config {
                                durable_name: Some(WORKERS.into()),
                                ack_policy: AckPolicy::Explicit,
                                ack_wait: s.options.ack_wait,
                                // Delayed naks count as pending: room for every
                                // scheduled retry, not a cap.
                                max_ack_pending: 1_000_000,
                                deliver_policy: consumer::DeliverPolicy::All,
                                ..Default::default()
                            },
                        ),
                    )
                    .await?;
                s.await_leader(&mut workers).await?;
                Ok(workers)
            })
            .await
    }

    /// Waits (briefly) until the consumer has seen this node's last write.
    async fn catch_up(&self, workers: &consumer::Consumer<pull::Config>) -> StoreResult<()> {
        let s = &self.inner;
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        loop {
            let (written, seen) = {
                let st = s.job_pool.state();
                (st.written, st.seen)
            };
            if written <= seen {
                return Ok(());
            }
            let info = s.timed("read the job consumer", workers.get_info()).await?;
            let view = info.delivered.stream_sequence + info.num_pending;
            if view >= written {
                let mut st = s.job_pool.state();
                st.seen = st.seen.max(view);
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Puts pulled messages in the pool (or hands far-future ones back).
    fn take_in(&self, messages: Vec<async_nats::jetstream::Message>) {
        let s = &self.inner;
        let now = s.now();
        let horizon = now.saturating_add(millis(s.options.hold_horizon));
        for m in messages {
            let Some(reply) = m.reply.as_ref().map(|r| r.to_string()) else {
                continue;
            };
            let Ok(info) = m.info() else { continue };
            let seq = info.stream_sequence;
            let job = match decode(&m.payload) {
                Ok(job) => job,
                Err(e) => {
                    tracing::error!(seq, error = %e, "unreadable delivery job; terminated");
                    let client = s.client.clone();
                    tokio::spawn(async move {
                        let _ = client
                            .publish(reply, bytes::Bytes::from_static(b"+TERM"))
                            .await;
                    });
                    continue;
                }
            };
            if job.due_ms > horizon {
                let delay = Duration::from_millis(u64::try_from(job.due_ms - now).unwrap_or(0));
                let nak = async_nats::jetstream::AckKind::Nak(Some(delay));
                let client = s.client.clone();
                tokio::spawn(async move {
                    let _ = client.publish(reply, nak.into()).await;
                });
                continue;
            }
            let mut st = s.job_pool.state();
            st.seen = st.seen.max(seq);
            match st.held.get_mut(&seq) {
                // Redelivered to us while we hold it: same job, new ack subject.
                Some(h) => h.reply = reply,
                None => {
                    st.held.insert(
                        seq,
                        Held {
                            reply,
                            job,
                            lease_until: 0,
                            token: 0,
                        },
                    );
                }
            }
        }
    }

    /// Pulls what the consumer has now, up to the pool's room.
    async fn drain_consumer(&self, workers: &consumer::Consumer<pull::Config>) -> StoreResult<()> {
        let s = &self.inner;
        let room = POOL_CAP.saturating_sub(s.job_pool.state().held.len());
        if room == 0 {
            return Ok(());
        }
        let batch = s
            .timed(
                "read jobs",
                workers
                    .fetch()
                    .max_messages(room.min(DRAIN_BATCH))
                    .messages(),
            )
            .await?;
        let messages = super::log::collect(s, batch, Duration::ZERO).await?;
        self.take_in(messages);
        Ok(())
    }

    /// Publishes jobs (pipelined) and records the highest sequence written.
    pub(super) async fn publish_jobs(
        &self,
        jobs: Vec<(NewJob, Option<String>)>,
    ) -> StoreResult<()> {
        let s = &self.inner;
        let mut acks = Vec::with_capacity(jobs.len());
        let mut sent = Vec::with_capacity(jobs.len());
        for (job, id) in jobs {
            let payload = encode(&job)?;
            let subject = s.subject("jobs", &[&job.tenant, &job.bus]);
            let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(&id);
            acks.push(
                s.timed("enqueue", s.js.send_publish(subject.clone(), publish))
                    .await?,
            );
            sent.push((subject, payload, id));
        }
        let results = futures_util::future::join_all(
            acks.into_iter()
                .map(|ack| tokio::time::timeout(s.options.request_timeout * 2, ack)),
        )
        .await;
        for ((subject, payload, id), result) in sent.into_iter().zip(results) {
            let seq = match result {
                Ok(Ok(ack)) => ack.sequence,
                _ => {
                    s.publish("enqueue", subject, payload, Some(&id))
                        .await?
                        .sequence
                }
            };
            s.job_pool.wrote(seq);
        }
        Ok(())
    }
}

#[async_trait]
impl DeliveryJobs for NatsStore {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> StoreResult<()> {
        self.publish_jobs(jobs.into_iter().map(|j| (j, None)).collect())
            .await
    }

    async fn lease_due(
        &self,
        max: usize,
        lease_for: Duration,
        wait: Duration,
    ) -> StoreResult<Vec<LeasedJob>> {
        let s = &self.inner;
        let workers = self.workers().await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.catch_up(workers).await?;
            self.drain_consumer(workers).await?;
            let now = s.now();
            let (leased, next_at) = s.job_pool.pick(max, lease_for, now);
            if !leased.is_empty() || max == 0 {
                return Ok(leased);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            // Wait for a new job, or until the earliest held one is due.
            let until_due = next_at
                .map(|at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0)))
                .unwrap_or(left);
            let nap = left.min(until_due).max(Duration::from_millis(5));
            let batch = s
                .timed(
                    "read jobs",
                    workers.batch().max_messages(1).expires(nap).messages(),
                )
                .await?;
            let got = super::log::collect(s, batch, nap).await?;
            self.take_in(got);
        }
    }

    async fn ack_job(&self, lease: &JobLease) -> StoreResult<()> {
        let s = &self.inner;
        let Some((seq, _)) = lease_parts(lease) else {
            return Ok(());
        };
        match s.job_pool.remove(seq) {
            Some(reply) => s.ack_sync(reply, b"+ACK").await,
            None => Ok(()),
        }
    }

    async fn retry_job(
        &self,
        lease: &JobLease,
        due_ms: Millis,
        attempts: u32,
        error: AttemptError,
    ) -> StoreResult<bool> {
        let s = &self.inner;
        let Some((seq, token)) = lease_parts(lease) else {
            return Ok(false);
        };
        let job = {
            let mut st = s.job_pool.state();
            st.last_token += 1;
            let retiring = st.last_token;
            match st.held.get_mut(&seq) {
                Some(h) if h.token == token => {
                    // The lease ends now; nobody may lease it while the
                    // new message is written.
                    h.token = retiring;
                    h.lease_until = Millis::MAX;
                    let mut job = h.job.clone();
                    job.due_ms = due_ms;
                    job.attempts = attempts;
                    job.last_error = Some(error);
                    job
                }
                _ => return Ok(false),
            }
        };
        let id = format!("retry-{seq}-{token}");
        if let Err(e) = self.publish_jobs(vec![(job, Some(id))]).await {
            if let Some(h) = s.job_pool.state().held.get_mut(&seq) {
                h.lease_until = 0;
            }
            return Err(e);
        }
        if let Some(reply) = s.job_pool.remove(seq) {
            s.ack_sync(reply, b"+ACK").await?;
        }
        Ok(true)
    }

    async fn extend_leases(&self, leases: &[JobLease], lease_for: Duration) -> StoreResult<usize> {
        let s = &self.inner;
        let until = s.now().saturating_add(millis(lease_for));
        let mut st = s.job_pool.state();
        let mut current = 0;
        for (seq, token) in leases.iter().filter_map(lease_parts) {
            if let Some(h) = st.held.get_mut(&seq)
                && h.token == token
            {
                h.lease_until = h.lease_until.max(until);
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
        let s = &self.inner;
        let seq = lease.and_then(lease_parts).map(|(seq, _)| seq);
        let msg_id = seq.map(|seq| format!("job-{seq}"));
        let id = self.record_dead_letter(&job, exhausted, msg_id).await?;
        if let Some(reply) = seq.and_then(|seq| s.job_pool.remove(seq)) {
            s.ack_sync(reply, b"+ACK").await?;
        }
        Ok(id)
    }
}
