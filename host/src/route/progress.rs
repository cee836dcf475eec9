//! Routing progress: which log entries are fully routed.
//!
//! An entry is routed when every delivery it caused is done or persisted.
//! Each piece of outstanding work holds a [`RoutingHold`] (clones of one per
//! entry); when the last clone drops, the entry is acknowledged to the log.
//! Nothing releases a hold by hand, so an early return or a panic in a
//! task holding one cannot stall routing progress: unwinding drops it too.
//! (A panic is a bug and is logged; the entry is still acknowledged, since
//! re-routing an event that makes the router panic would only panic again.)
//!
//! A traced entry's hold also carries its [`EventTrace`]; the trace is
//! finished when the last clone drops and written, in the same batch, just
//! before the entry's acknowledgement — so a routed event always has its
//! trace, and a crash before the ack routes (and traces) it again.
//!
//! Progress also counts the entries taken but not yet acknowledged, so the
//! router can wait ([`RoutingProgress::room`]) while too many are in
//! memory: when delivery falls behind ingest, the backlog then stays in the
//! log on disk instead of growing in memory as waiting first attempts,
//! their rendered bodies, traces and tasks (issue 13's memory profile: the
//! resident set grew to 400–500 MB under load without this bound).

use crate::deliver::engine::DoneGuard;
use crate::history::EventTrace;
use crate::store::{AckToken, LogConsumer, Trace, Traces};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// Most acknowledgements sent to the log in one call.
const ACK_BATCH: usize = 4096;
/// How long routed entries wait for company before their traces and
/// acknowledgements are written, unless [`ACK_LINGER_UNTIL`] of them are
/// there sooner. Every flush is two commits (traces, then acknowledgements)
/// on two writer threads; without the wait a flush took whatever had
/// arrived, about 30 entries at 15,000 single-event requests a second,
/// so those threads woke a thousand times a second to compete with ingest
/// on a small machine. The wait delays only what no request waits for: a
/// trace's visibility (a lookup shows the event as received meanwhile)
/// and the log's route cursor.
const ACK_LINGER: Duration = Duration::from_millis(5);
/// Routed entries that end the [`ACK_LINGER`] wait early: well below the
/// router's limit on unacknowledged entries, so it never waits for a
/// lingering flush.
const ACK_LINGER_UNTIL: usize = 512;
/// Tries of one batch of traces before it is given up (logged), so a
/// trace the store refuses cannot hold routing progress back.
const TRACE_TRIES: u32 = 5;

/// A routed entry: what to acknowledge, and its finished trace.
#[derive(Debug)]
struct Routed {
    token: AckToken,
    trace: Option<Trace>,
}

/// Hands out holds and acknowledges entries whose holds are all gone.
#[derive(Debug)]
pub struct RoutingProgress {
    acks: mpsc::UnboundedSender<Routed>,
    unacked: Arc<Unacked>,
}

/// Entries held or routed but not yet acknowledged to the log.
#[derive(Debug, Default)]
struct Unacked {
    count: AtomicUsize,
    /// Woken whenever acknowledgements are written.
    acked: Notify,
}

/// Outstanding work for one log entry. Clone it for each piece of work;
/// the entry is acknowledged when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct RoutingHold(Arc<Hold>);

#[derive(Debug)]
struct Hold {
    token: AckToken,
    acks: mpsc::UnboundedSender<Routed>,
    trace: Option<Arc<EventTrace>>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "a task routing an event panicked; the event counts as routed so routing goes on"
            );
        }
        let trace = self.trace.as_ref().and_then(|t| t.finish());
        // The receiver is gone only after shutdown gave up waiting.
        let _ = self.acks.send(Routed {
            token: self.token.clone(),
            trace,
        });
    }
}

impl RoutingHold {
    /// This hold as the engine's done-guard for one delivery.
    pub fn guard(&self) -> DoneGuard {
        self.0.clone()
    }
}

impl RoutingProgress {
    /// Starts acknowledging to `consumer` (writing finished traces to
    /// `traces` first). The returned task ends once this and every hold are
    /// dropped and the last acknowledgements are written.
    pub fn start(
        consumer: Arc<dyn LogConsumer>,
        traces: Option<Arc<dyn Traces>>,
    ) -> (Self, JoinHandle<()>) {
        let (acks, rx) = mpsc::unbounded_channel();
        let unacked = Arc::new(Unacked::default());
        (
            Self {
                acks,
                unacked: unacked.clone(),
            },
            tokio::spawn(flush_acks(consumer, traces, rx, unacked)),
        )
    }

    /// Entries held or routed but not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.unacked.count.load(Ordering::Acquire)
    }

    /// Returns once fewer than `limit` entries are unacknowledged.
    pub async fn room(&self, limit: usize) {
        loop {
            let acked = self.unacked.acked.notified();
            if self.unacknowledged() < limit {
                return;
            }
            acked.await;
        }
    }

    /// A hold on `token`'s entry.
    pub fn hold(&self, token: AckToken) -> RoutingHold {
        self.hold_traced(token, None)
    }

    /// `token`'s entry is routed already (nothing took it): acknowledged
    /// with the next batch, after its finished trace is written.
    pub fn routed(&self, token: AckToken, trace: Option<Trace>) {
        self.unacked.count.fetch_add(1, Ordering::AcqRel);
        // The receiver is gone only after shutdown gave up waiting.
        let _ = self.acks.send(Routed { token, trace });
    }

    /// A hold on `token`'s entry whose trace is written when it is routed.
    pub fn hold_traced(&self, token: AckToken, trace: Option<Arc<EventTrace>>) -> RoutingHold {
        self.unacked.count.fetch_add(1, Ordering::AcqRel);
        RoutingHold(Arc::new(Hold {
            token,
            acks: self.acks.clone(),
            trace,
        }))
    }
}

/// Writes traces, then acknowledgements, in batches, retrying until the
/// log takes the acknowledgements.
async fn flush_acks(
    consumer: Arc<dyn LogConsumer>,
    traces: Option<Arc<dyn Traces>>,
    mut rx: mpsc::UnboundedReceiver<Routed>,
    unacked: Arc<Unacked>,
) {
    let mut routed = Vec::with_capacity(ACK_BATCH);
    while rx.recv_many(&mut routed, ACK_BATCH).await > 0 {
        let deadline = tokio::time::Instant::now() + ACK_LINGER;
        while routed.len() < ACK_LINGER_UNTIL {
            let room = ACK_BATCH - routed.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut routed, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let mut batch = Vec::with_capacity(routed.len());
        let mut finished = Vec::new();
        for r in routed.drain(..) {
            batch.push(r.token);
            finished.extend(r.trace);
        }
        if let Some(traces) = &traces
            && !finished.is_empty()
        {
            write_traces(traces.as_ref(), finished).await;
        }
        let mut backoff = Duration::from_millis(10);
        while let Err(e) = consumer.ack(batch.clone()).await {
            tracing::error!(error = %e, "cannot record routing progress; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        unacked.count.fetch_sub(batch.len(), Ordering::AcqRel);
        unacked.acked.notify_waiters();
    }
}

/// Writes finished traces, a few tries at most.
async fn write_traces(traces: &dyn Traces, finished: Vec<Trace>) {
    let finished: Arc<[Trace]> = finished.into();
    let mut backoff = Duration::from_millis(10);
    for attempt in 1..=TRACE_TRIES {
        match traces.record_traces(finished.clone()).await {
            Ok(()) => return,
            Err(e) if attempt == TRACE_TRIES => {
                tracing::error!(error = %e, traces = finished.len(), "cannot record traces; dropped");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot record traces; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{SharedClock, TokioClock};
    use crate::store::memory::MemoryStore;
    use crate::store::{EventLog, NewEvent};
    use bytes::Bytes;

    /// A memory store whose log holds `n` events.
    async fn store_with_events(n: usize) -> MemoryStore {
        let clock: SharedClock = Arc::new(TokioClock::new());
        let store = MemoryStore::new(clock);
        let events = (0..n)
            .map(|i| NewEvent {
                tenant: "t".into(),
                bus: "b".into(),
                event_id: format!("e{i}"),
                body: Bytes::from_static(b"{}"),
                ingested_ms: 1,
                ..Default::default()
            })
            .collect();
        store.append(events).await.unwrap();
        store
    }

    #[tokio::test(start_paused = true)]
    async fn the_router_waits_while_too_many_entries_are_unacknowledged() {
        let store = store_with_events(3).await;
        let consumer = store.consumer().await.unwrap();
        let (progress, acks) = RoutingProgress::start(consumer.clone(), None);
        let entries = consumer.next(10, Duration::ZERO).await.unwrap();
        let mut holds: Vec<RoutingHold> =
            entries.into_iter().map(|e| progress.hold(e.ack)).collect();
        assert_eq!(progress.unacknowledged(), 3);
        // Room for fewer than three: waits until an entry is acknowledged.
        let mut waiting = Box::pin(progress.room(3));
        assert!(
            tokio::time::timeout(Duration::from_secs(1), &mut waiting)
                .await
                .is_err(),
            "three entries are unacknowledged"
        );
        holds.pop();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("an acknowledgement makes room");
        assert_eq!(progress.unacknowledged(), 2);
        drop(holds);
        drop(progress);
        acks.await.unwrap();
        assert_eq!(consumer.in_flight(), 0, "every entry was acknowledged");
    }

    /// A consumer that records the size of each acknowledgement call.
    struct CountingAcks {
        inner: Arc<dyn LogConsumer>,
        calls: std::sync::Mutex<Vec<usize>>,
    }

    #[async_trait::async_trait]
    impl LogConsumer for CountingAcks {
        async fn next(
            &self,
            max: usize,
            wait: Duration,
        ) -> crate::store::StoreResult<Vec<crate::store::LogEntry>> {
            self.inner.next(max, wait).await
        }

        async fn ack(&self, tokens: Vec<AckToken>) -> crate::store::StoreResult<()> {
            self.calls.lock().unwrap().push(tokens.len());
            self.inner.ack(tokens).await
        }

        fn in_flight(&self) -> usize {
            self.inner.in_flight()
        }
    }

    /// Entries routed a moment apart are acknowledged in one call, and a
    /// lone entry waits no longer than the linger.
    #[tokio::test(start_paused = true)]
    async fn entries_routed_within_the_linger_are_acknowledged_together() {
        let store = store_with_events(4).await;
        let consumer = Arc::new(CountingAcks {
            inner: store.consumer().await.unwrap(),
            calls: Default::default(),
        });
        let (progress, acks) = RoutingProgress::start(consumer.clone(), None);
        let entries = consumer.next(10, Duration::ZERO).await.unwrap();
        let mut holds: Vec<RoutingHold> =
            entries.into_iter().map(|e| progress.hold(e.ack)).collect();
        let lone = holds.pop().unwrap();
        let step = ACK_LINGER / 4;
        for hold in holds {
            drop(hold);
            tokio::time::sleep(step).await;
        }
        let until_acked = |n: usize| {
            let consumer = consumer.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while consumer.in_flight() > n {
                    assert!(tokio::time::Instant::now() < deadline, "not acknowledged");
                    tokio::time::sleep(Duration::from_micros(100)).await;
                }
            }
        };
        until_acked(1).await;
        assert_eq!(*consumer.calls.lock().unwrap(), vec![3]);
        let dropped = tokio::time::Instant::now();
        drop(lone);
        until_acked(0).await;
        assert!(dropped.elapsed() <= ACK_LINGER + Duration::from_millis(1));
        assert_eq!(*consumer.calls.lock().unwrap(), vec![3, 1]);
        drop(progress);
        acks.await.unwrap();
    }
}
