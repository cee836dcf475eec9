//! Building traces on the routing path, and writing later facts in batches.
//!
//! The router starts an [`EventTrace`] for each event of a traced bus and
//! records in it, in memory, the rules that matched and what their plugins
//! did; each first delivery carries a [`TargetSlot`] where the delivery
//! engine records the attempt. The trace is written once, when the event
//! is routed (its routing hold is released), in the same batch as the log
//! acknowledgements — so the common case costs one row per event, written
//! through the store's group commit, and nothing on a request's path.
//!
//! What happens later (retries, dead letters, redrives, replays) goes
//! through the [`TraceSink`]: a bounded queue drained by one task that
//! writes facts in batches. When the queue is full a fact is dropped and
//! counted — a trace may then miss an attempt, but delivery never waits for
//! the trace.

use super::table::HistoryTable;
use crate::event::EventHead;
use crate::store::traces::{
    AttemptRecord, PluginRun, RuleOutcome, RuleTrace, TargetState, TraceBody, TraceError,
};
use crate::store::{AttemptError, LoggedEvent, Trace, TraceFact, TraceKey, TraceState, Traces};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Facts the sink holds before it starts dropping them.
const SINK_CAPACITY: usize = 65_536;
/// Facts written per store call.
const SINK_BATCH: usize = 1024;
/// Tries of one batch before it is given up (logged).
const SINK_TRIES: u32 = 5;

/// One event's trace while it is being routed.
#[derive(Debug)]
pub struct EventTrace {
    trace: Mutex<Option<Trace>>,
}

impl EventTrace {
    /// Starts the trace of a log entry (at `position` in the log), with the
    /// attributes the router read.
    pub fn start(logged: &LoggedEvent, position: i64, head: EventHead) -> Arc<Self> {
        Arc::new(Self {
            // Only what a trace keeps: not the entry's rule subset or hint.
            trace: Mutex::new(Some(trace_of(
                LoggedEvent {
                    tenant: logged.tenant.clone(),
                    bus: logged.bus.clone(),
                    event_id: logged.event_id.clone(),
                    body: logged.body.clone(),
                    ingested_ms: logged.ingested_ms,
                    traced: logged.traced,
                    ..LoggedEvent::default()
                },
                position,
                head,
            ))),
        })
    }

    /// The finished trace of an entry no rule took: routed as it was read,
    /// and built from the entry itself instead of copies of its names (most
    /// events of a busy bus match no rule, and the entry is not needed
    /// after this).
    pub fn unmatched(logged: LoggedEvent, position: i64, head: EventHead) -> Trace {
        let mut trace = trace_of(logged, position, head);
        trace.state = Trace::derive_state(&trace.body);
        trace
    }

    fn with<R>(&self, f: impl FnOnce(&mut Trace) -> R) -> Option<R> {
        let mut guard = self.trace.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_mut().map(f)
    }

    /// Records a matched rule; returns its index for the calls below.
    pub fn rule(&self, name: &str) -> usize {
        self.with(|t| {
            t.body.rules.push(RuleTrace {
                rule: name.to_owned(),
                outcome: RuleOutcome::Matched,
                filter: None,
                transform: None,
                error: None,
                targets: Vec::new(),
            });
            t.body.rules.len() - 1
        })
        .unwrap_or(usize::MAX)
    }

    fn rule_mut<R>(&self, rule: usize, f: impl FnOnce(&mut RuleTrace) -> R) -> Option<R> {
        self.with(|t| t.body.rules.get_mut(rule).map(f)).flatten()
    }

    /// Records the rule's filter run; a rejection filters the event out.
    pub fn filter(&self, rule: usize, run: PluginRun, passed: bool) {
        self.rule_mut(rule, |r| {
            r.filter = Some(run);
            if !passed {
                r.outcome = RuleOutcome::FilteredOut;
            }
        });
    }

    /// Records the rule's transformer run.
    pub fn transform(&self, rule: usize, run: PluginRun) {
        self.rule_mut(rule, |r| r.transform = Some(run));
    }

    /// Records a rule-level failure: every target gives up without an attempt.
    pub fn rule_failed(&self, rule: usize, error: &AttemptError, targets: &[(&str, bool)]) {
        self.rule_mut(rule, |r| {
            r.outcome = RuleOutcome::Failed;
            r.error = Some(TraceError::from(error));
            for (target, dead_letter) in targets {
                r.target_mut(target).state = if *dead_letter {
                    TargetState::DeadLettered
                } else {
                    TargetState::Dropped
                };
            }
        });
    }

    /// Where the engine records the first attempt to one target of a rule.
    pub fn slot(self: &Arc<Self>, rule: usize, target: &str) -> TargetSlot {
        self.rule_mut(rule, |r| {
            r.target_mut(target);
        });
        TargetSlot {
            trace: self.clone(),
            rule,
            target: target.to_owned(),
        }
    }

    /// The finished trace (once; later calls answer `None`).
    pub fn finish(&self) -> Option<Trace> {
        let mut guard = self.trace.lock().unwrap_or_else(|p| p.into_inner());
        let mut trace = guard.take()?;
        trace.state = Trace::derive_state(&trace.body);
        Some(trace)
    }
}

/// The trace of a log entry as routing starts it: routed, no rule yet.
fn trace_of(logged: LoggedEvent, position: i64, head: EventHead) -> Trace {
    Trace {
        size_bytes: logged.body.len() as u64,
        tenant: logged.tenant,
        bus: logged.bus,
        event_id: logged.event_id,
        received_ms: logged.ingested_ms,
        source: head.source,
        event_type: head.event_type,
        event: logged.body,
        position: Some(position),
        replay: head.replayname,
        head_in_log: logged.traced,
        body: TraceBody {
            routed: true,
            ..TraceBody::default()
        },
        state: TraceState::InFlight,
    }
}

/// One target of one rule in an [`EventTrace`].
#[derive(Clone, Debug)]
pub struct TargetSlot {
    trace: Arc<EventTrace>,
    rule: usize,
    target: String,
}

impl TargetSlot {
    /// Records an attempt and where the target stands after it.
    pub fn attempt(&self, attempt: AttemptRecord, next: TargetState) {
        self.trace.rule_mut(self.rule, |r| {
            let t = r.target_mut(&self.target);
            t.attempts.push(attempt);
            t.state = next;
        });
    }
}

/// The failure a plugin run or an attempt reports, as a trace keeps it.
pub fn trace_error(e: &AttemptError) -> TraceError {
    TraceError::from(e)
}

/// Writes later facts in batches, off every request's and delivery's path.
#[derive(Clone)]
pub struct TraceSink {
    tx: mpsc::Sender<(TraceKey, TraceFact)>,
    table: Arc<dyn HistoryTable>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for TraceSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceSink")
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl TraceSink {
    /// Starts the writer; it ends once every clone of the sink is dropped.
    pub fn start(traces: Arc<dyn Traces>, table: Arc<dyn HistoryTable>) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(SINK_CAPACITY);
        let sink = Self {
            tx,
            table,
            dropped: Arc::default(),
        };
        (sink, tokio::spawn(write_facts(traces, rx)))
    }

    /// Whether facts about `tenant`'s bus `bus` are wanted (it traces).
    pub fn wants(&self, tenant: &str, bus: &str) -> bool {
        self.table.traced(tenant, bus)
    }

    /// Queues a fact about an event of a traced bus (others are ignored).
    pub fn fact(&self, key: TraceKey, fact: TraceFact) {
        if !self.wants(&key.tenant, &key.bus) {
            return;
        }
        crate::telemetry::trace_fact();
        if self.tx.try_send((key, fact)).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::counter!("busbar_trace_facts_dropped_total").increment(1);
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "trace facts dropped: the trace writer is behind"
                );
            }
        }
    }
}

async fn write_facts(traces: Arc<dyn Traces>, mut rx: mpsc::Receiver<(TraceKey, TraceFact)>) {
    let mut batch = Vec::with_capacity(SINK_BATCH);
    while rx.recv_many(&mut batch, SINK_BATCH).await > 0 {
        // Shared by every try, not copied for each (a copy was several
        // allocations a fact).
        let facts: Arc<[(TraceKey, TraceFact)]> = batch.drain(..).collect();
        let mut tries = 0;
        while let Err(e) = traces.add_trace_facts(facts.clone()).await {
            tries += 1;
            if tries >= SINK_TRIES {
                tracing::error!(error = %e, facts = facts.len(), "cannot write trace facts; dropped");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50 << tries)).await;
        }
    }
}

/// Wall time of a plugin run, for its [`PluginRun`].
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
