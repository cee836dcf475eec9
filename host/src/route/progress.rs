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

use crate::deliver::engine::DoneGuard;
use crate::history::EventTrace;
use crate::store::{AckToken, LogConsumer, Trace, Traces};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Most acknowledgements sent to the log in one call.
const ACK_BATCH: usize = 4096;
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
        (
            Self { acks },
            tokio::spawn(flush_acks(consumer, traces, rx)),
        )
    }

    /// A hold on `token`'s entry.
    pub fn hold(&self, token: AckToken) -> RoutingHold {
        self.hold_traced(token, None)
    }

    /// A hold on `token`'s entry whose trace is written when it is routed.
    pub fn hold_traced(&self, token: AckToken, trace: Option<Arc<EventTrace>>) -> RoutingHold {
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
) {
    let mut routed = Vec::with_capacity(ACK_BATCH);
    while rx.recv_many(&mut routed, ACK_BATCH).await > 0 {
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
    }
}

/// Writes finished traces, a few tries at most.
async fn write_traces(traces: &dyn Traces, finished: Vec<Trace>) {
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
