//! The event log on JetStream: stream `P_LOG`, subjects
//! `<prefix>.log.<tenant>.<bus>`, and one durable pull consumer, `router`,
//! that every bus node shares.
//!
//! **Append** publishes each event (a JSON header line — tenant, bus, id,
//! accepted time — then the event as sent) with a fresh `Nats-Msg-Id`, all
//! pipelined, and returns `Ok` only when every PubAck is in: that is the
//! 2xx promise (with R3, a quorum has it). A publish whose ack timed out
//! is sent once more with the same id, so the retry cannot store it twice.
//!
//! Each event's archive copies (`NewEvent::archives` and `bus_archives`,
//! alike here) go to the archive stream in the same pipelined batch (see
//! [`super::archives`]); the header line carries `only_rules` for replays
//! restricted to some rules.
//!
//! **Routing** is the `router` consumer: explicit acks, `AckWait` as the
//! backstop for a node that died with entries in flight (its in-progress
//! acks stop, the entries go to another node), `max_ack_pending` as the
//! cap of entries in flight across all nodes (the routing backlog that can
//! be held in memory). Because all nodes pull from one consumer, each
//! entry goes to one node: work sharing, not broadcast. Order: a single
//! node receives each tenant bus in append order; with several nodes,
//! entries of one bus are routed in parallel (the bus promises order only
//! within a node, as the contract says).
//!
//! `next` first takes what is waiting (a no-wait pull), and only when
//! nothing is, parks one pull request for a single message until `wait`
//! runs out — so it returns as soon as an append arrives, not when a whole
//! batch has. Acks are double acks, sent concurrently: `ack` returns once
//! the server has recorded them (the consumer's ack floor is what a
//! restart resumes from). A dropped consumer naks what it holds, so a
//! restarted node (or another) gets those entries at once.
//!
//! Each pull runs in a task of its own (`Pulls`) and files what it
//! receives as held before `next` returns it, so a `next` the caller stops
//! waiting for (a shutdown) loses nothing: its entries come out of the next
//! call, or `release` gives them back. `release` first ends the node's
//! pulls, so a pull still parked cannot take the entries it hands back (the
//! server redelivers them at once, and nobody would read that pull: they
//! would return only after `AckWait`).
//!
//! **Prune** removes what routing no longer needs: entries at or below the
//! consumer's ack floor accepted before the cut-off, found by a binary
//! search over the stream (accept times grow with the sequence) and purged
//! with one `purge up to sequence`. A retention limit (`log_max_age`,
//! `log_max_bytes`) can bound the stream as well.

use super::{Holder, NatsStore, Pulls, frame, unframe};
use crate::store::log::{AckToken, EventLog, LogConsumer, LogEntry, NewEvent};
use crate::store::{Millis, StoreError, StoreResult};
use async_nats::jetstream::consumer::{self, AckPolicy, pull};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The routing consumer's durable name.
pub(super) const ROUTER: &str = "router";

/// What a log message's header line holds (archive copies have the same).
#[derive(Serialize, Deserialize)]
pub(super) struct Meta {
    pub(super) tenant: String,
    pub(super) bus: String,
    pub(super) event_id: String,
    pub(super) ingested_ms: Millis,
    /// [`NewEvent::only_rules`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) only_rules: Option<Vec<String>>,
}

impl Meta {
    pub(super) fn of(e: &NewEvent) -> Self {
        Self {
            tenant: e.tenant.clone(),
            bus: e.bus.clone(),
            event_id: e.event_id.clone(),
            ingested_ms: e.ingested_ms,
            only_rules: e.only_rules.clone(),
        }
    }

    /// The event this header and `body` describe (without archives).
    pub(super) fn event(self, body: bytes::Bytes) -> NewEvent {
        NewEvent {
            tenant: self.tenant,
            bus: self.bus,
            event_id: self.event_id,
            body,
            ingested_ms: self.ingested_ms,
            only_rules: self.only_rules,
            archives: Vec::new(),
            bus_archives: Vec::new(),
            head: Default::default(),
            traced: false,
        }
    }
}

impl NatsStore {
    /// Publishes events to the log, each with the given `Nats-Msg-Id`, and
    /// their archive copies (id `<msg id>/a/<archive>`), all pipelined;
    /// returns once every PubAck is in. A publish whose ack did not come
    /// is sent once more with the same id (stored once either way).
    ///
    /// Not one atomic step: an error can leave some of the events (or
    /// copies) stored. The caller then fails the request and the sender
    /// retries, so an event may be logged twice — never acknowledged and lost.
    pub(super) async fn publish_events(&self, events: Vec<(NewEvent, String)>) -> StoreResult<()> {
        let s = &self.inner;
        let mut pending = Vec::with_capacity(events.len());
        for (e, id) in &events {
            let payload = frame(&Meta::of(e), &e.body)?;
            for archive in e.archives.iter().chain(&e.bus_archives) {
                pending.push((
                    s.subject("archive", &[archive]),
                    payload.clone(),
                    format!("{id}/a/{archive}"),
                ));
            }
            pending.push((s.subject("log", &[&e.tenant, &e.bus]), payload, id.clone()));
        }
        // Pipelined: every publish goes out before any ack is awaited.
        let mut acks = Vec::with_capacity(pending.len());
        for (subject, payload, id) in &pending {
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(id);
            acks.push(
                s.timed("append", s.js.send_publish(subject.clone(), publish))
                    .await?,
            );
        }
        let results = futures_util::future::join_all(
            acks.into_iter()
                .map(|ack| tokio::time::timeout(s.options.request_timeout * 2, ack)),
        )
        .await;
        for ((subject, payload, id), result) in pending.into_iter().zip(results) {
            if !matches!(result, Ok(Ok(_))) {
                // Unknown whether it was stored: send again with the same
                // id (the stream drops it if the first one arrived).
                s.publish("append", subject, payload, Some(&id)).await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl EventLog for NatsStore {
    async fn append(&self, events: Vec<NewEvent>) -> StoreResult<()> {
        let events = events
            .into_iter()
            .map(|e| (e, uuid::Uuid::now_v7().to_string()))
            .collect();
        self.publish_events(events).await
    }

    async fn consumer(&self) -> StoreResult<Arc<dyn LogConsumer>> {
        let s = &self.inner;
        let mut consumer = s
            .timed(
                "open the routing consumer",
                s.log.get_or_create_consumer(
                    ROUTER,
                    pull::Config {
                        durable_name: Some(ROUTER.into()),
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: s.options.ack_wait,
                        max_ack_pending: s.options.log_max_in_flight,
                        deliver_policy: consumer::DeliverPolicy::All,
                        ..Default::default()
                    },
                ),
            )
            .await?;
        s.await_leader(&mut consumer).await?;
        let held = Arc::new(InFlight::default());
        let weak = Arc::downgrade(&held);
        s.hold(weak);
        Ok(Arc::new(NatsLogConsumer {
            puller: Arc::new(Puller {
                store: self.clone(),
                consumer,
                held,
                ready: Mutex::default(),
            }),
            pulls: Pulls::default(),
        }))
    }

    async fn prune(&self, before: Millis) -> StoreResult<u64> {
        let s = &self.inner;
        let info = match s.log.consumer_info(ROUTER).await {
            Ok(info) => info,
            Err(e)
                if e.kind() == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound =>
            {
                return Ok(0);
            }
            Err(e) => return Err(s.fail("prune", e)),
        };
        let floor = info.ack_floor.stream_sequence;
        let first = s
            .timed("prune", s.log.get_info())
            .await?
            .state
            .first_sequence;
        let filter = format!("{}.log.>", s.sub);
        // Invariant: every entry below `lo` may go; none at or above `hi` may.
        let (mut lo, mut hi) = (first, floor + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match s.first_at_or_after(&s.log, &filter, mid).await? {
                Some(m) if m.sequence < hi => {
                    let (meta, _) = unframe::<Meta>(&m.payload)?;
                    if meta.ingested_ms < before {
                        lo = m.sequence + 1;
                    } else {
                        hi = mid;
                    }
                }
                _ => hi = mid,
            }
        }
        if lo <= first {
            return Ok(0);
        }
        let purged = s
            .timed("prune", s.log.purge().sequence(lo).into_future())
            .await?;
        Ok(purged.purged)
    }
}

/// Entries handed out and not acknowledged: stream sequence → ack subject.
#[derive(Debug, Default)]
struct InFlight(Mutex<HashMap<u64, String>>);

impl InFlight {
    fn map(&self) -> MutexGuard<'_, HashMap<u64, String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Holder for InFlight {
    fn held_replies(&self) -> Vec<String> {
        self.map().values().cloned().collect()
    }
}

/// This node's handle on the shared routing consumer.
struct NatsLogConsumer {
    puller: Arc<Puller>,
    pulls: Pulls,
}

/// What a pull needs (shared with the pull's task).
struct Puller {
    store: NatsStore,
    consumer: consumer::Consumer<pull::Config>,
    held: Arc<InFlight>,
    /// Entries pulled (and held) but not handed out yet: those of a pull
    /// whose caller stopped waiting come out of the next call.
    ready: Mutex<VecDeque<LogEntry>>,
}

impl Puller {
    fn ready(&self) -> MutexGuard<'_, VecDeque<LogEntry>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Up to `max` of the ready entries.
    fn take_ready(&self, max: usize) -> Vec<LogEntry> {
        let mut ready = self.ready();
        let n = max.min(ready.len());
        ready.drain(..n).collect()
    }

    /// Pulls what is waiting (up to `max`), or else the first entry that
    /// arrives within `wait` and what is waiting behind it, filing each as
    /// held and ready as soon as it is received.
    async fn pull_ready(&self, max: usize, wait: Duration) -> StoreResult<()> {
        let got = self.pull(max, None).await?;
        if !got.is_empty() || wait < Duration::from_millis(1) {
            self.file(got);
            return Ok(());
        }
        let got = self.pull(1, Some(wait)).await?;
        let more = !got.is_empty() && max > 1;
        self.file(got);
        if more {
            let got = self.pull(max - 1, None).await?;
            self.file(got);
        }
        Ok(())
    }

    fn file(&self, messages: Vec<async_nats::jetstream::Message>) {
        let entries: Vec<LogEntry> = messages.into_iter().filter_map(|m| self.entry(m)).collect();
        self.ready().extend(entries);
    }

    /// Pulls up to `max` messages: what is waiting now, or (with `wait`)
    /// the first that arrives within it.
    async fn pull(
        &self,
        max: usize,
        wait: Option<Duration>,
    ) -> StoreResult<Vec<async_nats::jetstream::Message>> {
        let s = &self.store.inner;
        let batch = match wait {
            None => {
                s.timed(
                    "read the log",
                    self.consumer.fetch().max_messages(max).messages(),
                )
                .await?
            }
            Some(wait) => {
                s.timed(
                    "read the log",
                    self.consumer
                        .batch()
                        .max_messages(max)
                        .expires(wait)
                        .messages(),
                )
                .await?
            }
        };
        collect(s, batch, wait.unwrap_or_default()).await
    }

    fn entry(&self, m: async_nats::jetstream::Message) -> Option<LogEntry> {
        let seq = m.info().ok()?.stream_sequence;
        let reply = m.reply.as_ref()?.to_string();
        match unframe::<Meta>(&m.payload) {
            Ok((meta, body)) => {
                self.held.map().insert(seq, reply);
                Some(LogEntry {
                    event: meta.event(body),
                    ack: AckToken::seq(i64::try_from(seq).unwrap_or(i64::MAX)),
                    position: i64::try_from(seq).unwrap_or(i64::MAX),
                })
            }
            Err(e) => {
                // Not ours to route, ever: stop its redelivery.
                tracing::error!(seq, error = %e, "unreadable log entry; terminated");
                let client = self.store.inner.client.clone();
                tokio::spawn(async move {
                    let _ = client
                        .publish(reply, bytes::Bytes::from_static(b"+TERM"))
                        .await;
                });
                None
            }
        }
    }
}

/// Reads a pull's messages until it ends. A pull refused because the
/// consumer is at `max_ack_pending` (409) is an empty result: the backlog is
/// full, and `next` returning nothing is how that shows.
pub(super) async fn collect(
    s: &super::Shared,
    mut batch: pull::Batch,
    wait: Duration,
) -> StoreResult<Vec<async_nats::jetstream::Message>> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait + s.options.request_timeout * 2;
    loop {
        match tokio::time::timeout_at(deadline, batch.next()).await {
            Ok(Some(Ok(m))) => out.push(m),
            Ok(Some(Err(e))) => {
                let text = e.to_string();
                if text.contains("409") || text.contains("408") || !out.is_empty() {
                    return Ok(out);
                }
                return Err(s.fail("pull", text));
            }
            Ok(None) => return Ok(out),
            Err(_) if !out.is_empty() => return Ok(out),
            Err(_) => return Err(StoreError::Unavailable("NATS: pull: timed out".into())),
        }
    }
}

#[async_trait]
impl LogConsumer for NatsLogConsumer {
    async fn next(&self, max: usize, wait: Duration) -> StoreResult<Vec<LogEntry>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let ready = self.puller.take_ready(max);
        if !ready.is_empty() {
            return Ok(ready);
        }
        let puller = self.puller.clone();
        match self
            .pulls
            .run(async move { puller.pull_ready(max, wait).await })
            .await
        {
            Some(Ok(())) => Ok(self.puller.take_ready(max)),
            Some(Err(e)) => Err(e),
            // Released (a clean stop): nothing more is taken.
            None => Ok(Vec::new()),
        }
    }

    async fn ack(&self, tokens: Vec<AckToken>) -> StoreResult<()> {
        let s = &self.puller.store.inner;
        let taken: Vec<(u64, String)> = {
            let mut held = self.puller.held.map();
            tokens
                .iter()
                .filter_map(|t| t.as_seq())
                .filter_map(|seq| u64::try_from(seq).ok())
                .filter_map(|seq| held.remove(&seq).map(|reply| (seq, reply)))
                .collect()
        };
        let results = futures_util::future::join_all(
            taken
                .iter()
                .map(|(_, reply)| s.ack_sync(reply.clone(), b"+ACK")),
        )
        .await;
        let mut first_error = None;
        let mut held = self.puller.held.map();
        for ((seq, reply), result) in taken.into_iter().zip(results) {
            if let Err(e) = result {
                // Still held: keep it alive and let the caller try again.
                held.insert(seq, reply);
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn in_flight(&self) -> usize {
        // Handed out: held, less what a cancelled pull filed and nobody took
        // yet (a stop does not wait for those; `release` gives them back).
        let held = self.puller.held.map().len();
        held.saturating_sub(self.puller.ready().len())
    }

    async fn release(&self) {
        // First end this node's pulls: one still parked would take the
        // entries handed back below (the server redelivers at once), and
        // nobody would read it.
        self.pulls.close().await;
        self.puller.ready().clear();
        let replies: Vec<(u64, String)> = self.puller.held.map().drain().collect();
        self.puller.store.inner.drain(replies);
    }
}

impl Drop for NatsLogConsumer {
    fn drop(&mut self) {
        let replies: Vec<(u64, String)> = self.puller.held.map().drain().collect();
        self.puller.store.inner.drain(replies);
    }
}
