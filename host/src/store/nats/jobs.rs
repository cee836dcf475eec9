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
//! falls due or `wait` runs out, so an enqueue on any node wakes it. Both
//! pulls run in tasks of their own that put what they get in the pool
//! (see `Pulls` in the module root): a `lease_due` cancelled by a shutdown loses nothing,
//! and `release` ends the pulls before it hands the pool back.
//!
//! **Reading its own writes.** On a cluster the consumer's leader may run a
//! moment behind the stream's leader, so a job this node just enqueued
//! might not yet be deliverable. Before draining, `lease_due` checks that
//! the consumer has seen the highest sequence this node wrote (its
//! delivered sequence plus its pending count), waiting briefly if not.
//!
//! **FIFO chains.** A chain's jobs (tenant, bus, rule, target, partition
//! key) share one subject, `<prefix>.jobs.<tenant>.<bus>.c.<rule>.<target>.<key>`,
//! in enqueue (= slot) order, and the chain's head is simply its first
//! message in the stream: work-queue retention removes a job's message when
//! it is acked, so the next one becomes first. A node leases a held chain
//! job only once a leader read shows it is first on its subject; the
//! consumer gives each message to one node, so at most one job per chain is
//! in flight across all nodes, with no lock to leak. A head's retry keeps
//! its message (its place) and writes the new due time, attempts and error
//! to `head.<chain>` in the table `P_CHAINS`, which whoever holds the head
//! next (after a restart) reads. `last.<chain>` is the chain's last
//! scheduled slot: an enqueue at or before it is dropped (a log entry
//! routed again after a crash). A node waiting for a head another node
//! holds looks again every 100 ms; its own acks wake it at once. (The
//! `last.` keys are not pruned yet: one small record per chain ever used.)
//!
//! **Dead letters** are published to `P_DLQ` first (with a `Nats-Msg-Id`
//! derived from the job's message: a repeat after a crash is stored once),
//! then the job's message is double-acked.

use super::table::{self, Expect, TableError};
use super::{Holder, NatsStore, Pulls, frame, unframe};
use crate::clock::millis;
use crate::store::dead_letters::DeadLetterId;
use crate::store::failure::{AttemptError, Exhausted, FailureCode};
use crate::store::jobs::{ChainSlot, DeliveryJobs, JobLease, LeaseRepr, LeasedJob, NewJob};
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chain: Option<ChainJson>,
}

/// A [`ChainSlot`] as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct SlotJson {
    position: i64,
    index: u32,
}

/// A job's chain as stored.
#[derive(Serialize, Deserialize)]
struct ChainJson {
    key: String,
    #[serde(flatten)]
    slot: SlotJson,
}

/// A chain head's state after a retry (`head.<chain>` in `P_CHAINS`): the
/// head's message is kept (it holds the chain's place), so its new due
/// time, attempts and error live here, for the message at `seq`.
#[derive(Serialize, Deserialize)]
struct HeadState {
    seq: u64,
    attempts: u32,
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
            chain: job.chain.as_ref().map(|c| ChainJson {
                key: c.key.clone(),
                slot: SlotJson {
                    position: c.position,
                    index: c.index,
                },
            }),
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
        chain: m.chain.map(|c| ChainSlot {
            key: c.key,
            position: c.slot.position,
            index: c.slot.index,
        }),
    })
}

/// The jobs this node holds, and what it knows of the consumer.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    state: Mutex<PoolState>,
    consumer: tokio::sync::OnceCell<consumer::Consumer<pull::Config>>,
    /// The pulls running on `consumer` (see [`Pulls`]).
    pulls: Pulls,
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
    /// Chain subject → sequences of its jobs this node acked or
    /// dead-lettered lately. On a cluster a work-queue message leaves the
    /// stream a moment after its ack, and the next job is the head already.
    gone: HashMap<String, Vec<u64>>,
}

#[derive(Debug)]
struct Held {
    reply: String,
    job: NewJob,
    lease_until: Millis,
    /// The current lease's token (0: never leased).
    token: u64,
    /// Where the job stands in its FIFO chain, if it has one.
    chain: Option<ChainHeld>,
}

/// A held job's FIFO chain.
#[derive(Debug)]
struct ChainHeld {
    /// The chain's subject in the job stream.
    subject: String,
    /// The chain's key in `P_CHAINS`.
    key: String,
    /// Whether the job is its chain's head (the chain's first message in
    /// the stream). Once true it stays so while this node holds the job.
    head: bool,
    /// When it was last found not to be the head (`None`: look at once).
    checked: Option<std::time::Instant>,
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

    /// Removes a held job; its ack subject. The next job of its chain,
    /// if this node holds it, is looked at again at once.
    fn remove(&self, seq: u64) -> Option<String> {
        let mut st = self.state();
        let h = st.held.remove(&seq)?;
        if let Some(chain) = &h.chain {
            let gone = st.gone.entry(chain.subject.clone()).or_default();
            gone.push(seq);
            if gone.len() > 64 {
                gone.remove(0);
            }
            for other in st.held.values_mut() {
                if let Some(c) = other.chain.as_mut().filter(|c| c.subject == chain.subject) {
                    c.checked = None;
                }
            }
        }
        Some(h.reply)
    }

    /// Whether a held job may be leased now (a chain's job only as its head).
    fn leasable(h: &Held) -> bool {
        h.chain.as_ref().is_none_or(|c| c.head)
    }

    /// Leases up to `max` due jobs, earliest due first; otherwise tells
    /// when the earliest held job becomes available, and whether jobs wait
    /// behind chain heads.
    fn pick(
        &self,
        max: usize,
        lease_for: Duration,
        now: Millis,
    ) -> (Vec<LeasedJob>, Option<Millis>, bool) {
        let mut st = self.state();
        let mut due: Vec<(Millis, u64)> = st
            .held
            .iter()
            .filter(|(_, h)| h.available_at() <= now && Self::leasable(h))
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
        let next = st
            .held
            .values()
            .filter(|h| Self::leasable(h))
            .map(Held::available_at)
            .min();
        let waiting = st.held.values().any(|h| !Self::leasable(h));
        (leased, next, waiting)
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

/// How often a job waiting behind a chain head held elsewhere looks again.
const RECHECK: Duration = Duration::from_millis(100);

/// The key of a job's chain in `P_CHAINS`: tenant, bus, rule, target, key.
fn chain_key(job: &NewJob, key: &str) -> String {
    table::key(&[&job.tenant, &job.bus, &job.rule, &job.target, key])
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

    /// What `lease_due` answers once this node's jobs were released (a
    /// clean stop): nothing, after its wait, so a caller still looping does
    /// not spin.
    async fn released(&self, deadline: tokio::time::Instant) -> Vec<LeasedJob> {
        tokio::time::sleep_until(deadline).await;
        Vec::new()
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
            let chain = job.chain.as_ref().map(|slot| ChainHeld {
                subject: m.subject.to_string(),
                key: chain_key(&job, &slot.key),
                head: false,
                checked: None,
            });
            // A chain's jobs stay: their place in the chain is the message.
            if job.due_ms > horizon && chain.is_none() {
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
                            chain,
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
            let subject = match &job.chain {
                Some(slot) => s.subject(
                    "jobs",
                    &[
                        &job.tenant,
                        &job.bus,
                        "c",
                        &job.rule,
                        &job.target,
                        &slot.key,
                    ],
                ),
                None => s.subject("jobs", &[&job.tenant, &job.bus]),
            };
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

impl NatsStore {
    /// Schedules a chain's job unless its slot is at or before the chain's
    /// last scheduled one (`last.<chain>` in `P_CHAINS`). The job is
    /// published first (message id = chain and slot, so a repeat is stored
    /// once), then the slot recorded: a crash in between leaves the job
    /// scheduled and the slot unrecorded, and routing the entry again
    /// publishes the same message id, which the stream drops.
    async fn enqueue_chained(&self, job: NewJob) -> StoreResult<()> {
        let s = &self.inner;
        let Some(slot) = job.chain.clone() else {
            return Ok(());
        };
        let last_key = format!("last.{}", chain_key(&job, &slot.key));
        let this = SlotJson {
            position: slot.position,
            index: slot.index,
        };
        let read = || async {
            let record = s
                .chains
                .get(&last_key)
                .await
                .map_err(|e| e.into_store(s, "read a chain"))?;
            let last = match &record {
                Some(r) => table::parse::<SlotJson>(r)?,
                None => None,
            };
            StoreResult::Ok((record.map_or(0, |r| r.rev), last))
        };
        let (mut rev, last) = read().await?;
        if last.is_some_and(|l| l >= this) {
            return Ok(());
        }
        let id = format!(
            "chain/{}/{}/{}",
            chain_key(&job, &slot.key),
            slot.position,
            slot.index
        );
        self.publish_jobs(vec![(job, Some(id))]).await?;
        loop {
            match s
                .chains
                .put(&last_key, Some(table::json(&this)?), Expect::Rev(rev))
                .await
            {
                Ok(_) => return Ok(()),
                Err(TableError::Conflict) => {
                    let (now_rev, last) = read().await?;
                    if last.is_some_and(|l| l >= this) {
                        return Ok(());
                    }
                    rev = now_rev;
                }
                Err(e) => return Err(e.into_store(s, "record a chain slot")),
            }
        }
    }

    /// Finds out which held chain jobs are their chain's head: the lowest
    /// held one of each chain, if it is the chain's first message in the
    /// stream. A head takes its retry state from `head.<chain>`.
    async fn find_heads(&self) -> StoreResult<()> {
        let s = &self.inner;
        let now = std::time::Instant::now();
        let candidates: Vec<(u64, String, String, Vec<u64>)> = {
            let mut st = s.job_pool.state();
            let PoolState { held, gone, .. } = &mut *st;
            gone.retain(|subject, _| {
                held.values()
                    .any(|h| h.chain.as_ref().is_some_and(|c| &c.subject == subject))
            });
            let st = &*st;
            let mut lowest: HashMap<&str, (u64, &ChainHeld)> = HashMap::new();
            for (seq, h) in &st.held {
                if let Some(c) = &h.chain {
                    let entry = lowest.entry(c.subject.as_str()).or_insert((*seq, c));
                    if *seq < entry.0 {
                        *entry = (*seq, c);
                    }
                }
            }
            lowest
                .into_values()
                .filter(|(_, c)| {
                    !c.head && c.checked.is_none_or(|at| now.duration_since(at) >= RECHECK)
                })
                .map(|(seq, c)| {
                    let gone = st.gone.get(&c.subject).cloned().unwrap_or_default();
                    (seq, c.subject.clone(), c.key.clone(), gone)
                })
                .collect()
        };
        for (seq, subject, key, gone) in candidates {
            let mut from = 1;
            let head = loop {
                match s.first_at_or_after(&s.jobs, &subject, from).await? {
                    Some(m) if gone.contains(&m.sequence) => from = m.sequence + 1,
                    Some(m) => break m.sequence == seq,
                    None => break false,
                }
            };
            let state = if head {
                match s
                    .chains
                    .get(&format!("head.{key}"))
                    .await
                    .map_err(|e| e.into_store(s, "read a chain"))?
                {
                    Some(r) => table::parse::<HeadState>(&r)?.filter(|h| h.seq == seq),
                    None => None,
                }
            } else {
                None
            };
            let mut st = s.job_pool.state();
            if let Some(h) = st.held.get_mut(&seq) {
                if let Some(c) = h.chain.as_mut() {
                    c.head = head;
                    c.checked = Some(now);
                }
                if let Some(state) = state {
                    h.job.attempts = state.attempts;
                    h.job.due_ms = state.due_ms;
                    h.job.last_error = state.error.map(ErrorJson::into_error);
                }
            }
        }
        Ok(())
    }

    /// A chain head's retry: its message stays (it holds the chain's
    /// place); the new due time, attempts and error go to `head.<chain>`.
    async fn retry_head(&self, seq: u64, chain: &str, job: NewJob) -> StoreResult<bool> {
        let s = &self.inner;
        let state = HeadState {
            seq,
            attempts: job.attempts,
            due_ms: job.due_ms,
            error: job.last_error.as_ref().map(ErrorJson::from_error),
        };
        let written = s
            .chains
            .put(
                &format!("head.{chain}"),
                Some(table::json(&state)?),
                Expect::Any,
            )
            .await
            .map_err(|e| e.into_store(s, "retry a chain's head"));
        let mut st = s.job_pool.state();
        if let Some(h) = st.held.get_mut(&seq) {
            h.lease_until = 0;
            if written.is_ok() {
                h.job = job;
            }
        }
        written.map(|_| true)
    }
}

#[async_trait]
impl DeliveryJobs for NatsStore {
    async fn release(&self) {
        // First end this node's pulls: one still parked would take the
        // jobs handed back below (the server redelivers at once), and
        // nobody would read it.
        self.inner.job_pool.pulls.close().await;
        let replies = self.inner.job_pool.take_all();
        self.inner.drain(replies);
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> StoreResult<()> {
        let (chained, free): (Vec<NewJob>, Vec<NewJob>) =
            jobs.into_iter().partition(|j| j.chain.is_some());
        if !free.is_empty() {
            self.publish_jobs(free.into_iter().map(|j| (j, None)).collect())
                .await?;
        }
        for job in chained {
            self.enqueue_chained(job).await?;
        }
        Ok(())
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
            let (store, on) = (self.clone(), workers.clone());
            match s
                .job_pool
                .pulls
                .run(async move { store.drain_consumer(&on).await })
                .await
            {
                Some(drained) => drained?,
                None => return Ok(self.released(deadline).await),
            }
            self.find_heads().await?;
            let now = s.now();
            let (leased, next_at, waiting) = s.job_pool.pick(max, lease_for, now);
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
            let mut nap = left.min(until_due).max(Duration::from_millis(5));
            if waiting {
                // A head held by another node gives no signal when it goes.
                nap = nap.min(RECHECK);
            }
            let (store, on) = (self.clone(), workers.clone());
            let parked = s
                .job_pool
                .pulls
                .run(async move {
                    let s = &store.inner;
                    let batch = s
                        .timed(
                            "read jobs",
                            on.batch().max_messages(1).expires(nap).messages(),
                        )
                        .await?;
                    let got = super::log::collect(s, batch, nap).await?;
                    store.take_in(got);
                    StoreResult::Ok(())
                })
                .await;
            match parked {
                Some(pulled) => pulled?,
                None => return Ok(self.released(deadline).await),
            }
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
        let (job, chain) = {
            let mut st = s.job_pool.state();
            st.last_token += 1;
            let retiring = st.last_token;
            match st.held.get_mut(&seq) {
                Some(h) if h.token == token => {
                    let chain = h.chain.as_ref().map(|c| c.key.clone());
                    // The lease ends now; nobody may lease it while the
                    // new message is written.
                    h.token = retiring;
                    h.lease_until = Millis::MAX;
                    let mut job = h.job.clone();
                    job.due_ms = due_ms;
                    job.attempts = attempts;
                    job.last_error = Some(error);
                    (job, chain)
                }
                _ => return Ok(false),
            }
        };
        if let Some(chain) = chain {
            return self.retry_head(seq, &chain, job).await;
        }
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
