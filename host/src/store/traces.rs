//! Per-event traces: "where did my event go?".
//!
//! A [`Trace`] is what happened to one accepted event on one bus: when it
//! was received, which rules matched, what their filter and transformer
//! plugins did, every delivery attempt per target, dead letters, redrives
//! and replays — and the [`TraceState`] all of that adds up to.
//!
//! It is written in two ways, both batched through the backend's group
//! commit and never on a request's path:
//! - [`Traces::record_traces`]: the whole trace once the event is routed
//!   (every first attempt done or persisted), as the router saw it. After a
//!   crash an event can be routed again; recording the same (tenant, bus,
//!   event id, received time) again replaces the earlier record.
//! - [`Traces::add_trace_facts`]: later [`TraceFact`]s (retries, dead
//!   letters, redrives, replays), applied to the trace they name. A fact
//!   that arrives before its trace (a retry can beat the routing record by
//!   a few milliseconds) is kept and applied when the trace is recorded —
//!   unless [`TraceFact::waits_for_trace`] says it is not worth waiting for.
//!
//! Between the append and the routing record the trace is still visible:
//! [`Traces::trace`] answers for an event the log holds but has not routed
//! yet, with the state `in_flight` (SQLite reads the unrouted tail of its
//! log; JetStream would publish a small "received" record at append).
//!
//! A backend whose log keeps an event's head with the entry (SQLite) may
//! store nothing for a trace that is only "received, matched no rule"
//! ([`Trace::head_in_log`]): the entry is that trace.
//!
//! Search ([`Traces::search_traces`]) is newest first with an opaque
//! cursor. Retention drops traces in bounded chunks
//! ([`Traces::expire_traces`]). A JetStream backend keeps traces in a KV
//! bucket keyed by tenant, bus and event id (facts are compare-and-set
//! updates), and answers search from a node-local index fed by a consumer
//! of that bucket.

use super::dead_letters::DeadLetterId;
use super::failure::AttemptError;
use super::{Millis, StoreResult};
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub use crate::event::REPLAY_EXTENSION;

/// Where an event stands, as the trace API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceState {
    /// Every target of every matched rule got it.
    Delivered,
    /// Some targets got it, others gave up.
    PartiallyDelivered,
    /// Not yet routed, or first attempts still running or queued.
    InFlight,
    /// At least one target failed and will be tried again.
    Retrying,
    /// Every target gave up (dead-lettered or dropped).
    DeadLettered,
    /// No rule matched.
    NoMatch,
    /// Rules matched, but their filters let it through to none.
    FilteredOut,
    /// Acknowledged as a duplicate and not routed again.
    Duplicate,
}

impl TraceState {
    /// Every state.
    pub const ALL: [TraceState; 8] = [
        Self::Delivered,
        Self::PartiallyDelivered,
        Self::InFlight,
        Self::Retrying,
        Self::DeadLettered,
        Self::NoMatch,
        Self::FilteredOut,
        Self::Duplicate,
    ];

    /// The name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::PartiallyDelivered => "partially_delivered",
            Self::InFlight => "in_flight",
            Self::Retrying => "retrying",
            Self::DeadLettered => "dead_lettered",
            Self::NoMatch => "no_match",
            Self::FilteredOut => "filtered_out",
            Self::Duplicate => "duplicate",
        }
    }

    /// The state with this name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// Where one target of one rule stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// No attempt finished yet (running, or queued behind the target's cap).
    InFlight,
    /// The last attempt delivered it.
    Delivered,
    /// The last attempt failed; another is scheduled.
    Retrying,
    /// Given up and kept in the dead-letter queue.
    DeadLettered,
    /// Given up, and the rule keeps no dead letters.
    Dropped,
}

impl TargetState {
    /// The name as shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InFlight => "in_flight",
            Self::Delivered => "delivered",
            Self::Retrying => "retrying",
            Self::DeadLettered => "dead_lettered",
            Self::Dropped => "dropped",
        }
    }
}

/// What a filter or transformer plugin run did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRun {
    /// The plugin's name.
    pub plugin: String,
    /// The version that ran (when known).
    pub version: Option<u32>,
    /// `passed` / `rejected` (filters), `transformed` (transformers) or `failed`.
    pub outcome: String,
    /// Events a transformer produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u32>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TraceError>,
    /// Wall time of the run.
    pub duration_us: u64,
}

/// A failure as a trace keeps it (a [`FailureCode`](super::FailureCode) as
/// its string, so a trace written by a newer version still reads).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceError {
    /// The failure code.
    pub code: String,
    /// Detail.
    pub message: String,
}

impl From<&AttemptError> for TraceError {
    fn from(e: &AttemptError) -> Self {
        Self {
            code: e.code.as_str().to_owned(),
            message: e.message.clone(),
        }
    }
}

/// One delivery attempt (kept small: there may be many).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// When it started.
    pub at_ms: Millis,
    /// How long the target took.
    pub duration_ms: u64,
    /// HTTP status, for targets that answer one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TraceError>,
}

/// A dead letter sent back to delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redrive {
    /// When.
    pub at_ms: Millis,
    /// The dead letter it came from.
    pub dead_letter_id: DeadLetterId,
}

/// One target of a matched rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetTrace {
    /// The target's id in its rule.
    pub target: String,
    /// Where it stands.
    pub state: TargetState,
    /// Every attempt, oldest first.
    #[serde(default)]
    pub attempts: Vec<AttemptRecord>,
    /// Its dead letter, while it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_id: Option<DeadLetterId>,
    /// Redrives from the dead-letter queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redrives: Vec<Redrive>,
}

impl TargetTrace {
    /// A target with nothing recorded yet.
    pub fn new(target: &str) -> Self {
        Self {
            target: target.to_owned(),
            state: TargetState::InFlight,
            attempts: Vec::new(),
            dead_letter_id: None,
            redrives: Vec::new(),
        }
    }
}

/// How a matched rule treated the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleOutcome {
    /// Passed on to the targets.
    Matched,
    /// Its filter plugin said no.
    FilteredOut,
    /// Its filter or transform failed; every target dead-lettered it.
    Failed,
}

/// One matched rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleTrace {
    /// The rule's name (on the trace's bus).
    pub rule: String,
    /// What the rule did with the event.
    pub outcome: RuleOutcome,
    /// Its filter plugin's run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<PluginRun>,
    /// Its transformer plugin's run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<PluginRun>,
    /// Why the rule failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TraceError>,
    /// Its targets.
    #[serde(default)]
    pub targets: Vec<TargetTrace>,
}

impl RuleTrace {
    /// The target named `target`, added when missing.
    pub fn target_mut(&mut self, target: &str) -> &mut TargetTrace {
        let at = match self.targets.iter().position(|t| t.target == target) {
            Some(at) => at,
            None => {
                self.targets.push(TargetTrace::new(target));
                self.targets.len() - 1
            }
        };
        &mut self.targets[at]
    }
}

/// A replay that sent the event again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayMark {
    /// The replay's id.
    pub replay_id: String,
    /// The name the replayed copy carries (`replayname`).
    pub name: String,
    /// When the copy was appended.
    pub at_ms: Millis,
    /// Where it went.
    pub destination_bus: String,
}

/// What happened after routing; everything but the head of a trace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceBody {
    /// Whether the router has seen the event.
    pub routed: bool,
    /// Matched rules, in name order.
    #[serde(default)]
    pub rules: Vec<RuleTrace>,
    /// Replays that sent the event again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replays: Vec<ReplayMark>,
}

/// The trace of one accepted event on one bus.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Owning tenant.
    pub tenant: String,
    /// The bus it was accepted on.
    pub bus: String,
    /// The CloudEvents `id`.
    pub event_id: String,
    /// When the bus accepted it.
    pub received_ms: Millis,
    /// Its `source`.
    pub source: String,
    /// Its `type`.
    pub event_type: String,
    /// Size of its CloudEvents JSON.
    pub size_bytes: u64,
    /// The event (CloudEvents JSON).
    pub event: Bytes,
    /// Where the event is in this store's log, when the trace was made from
    /// a log entry. A backend whose log keeps an entry as long as a trace
    /// refers to it may store this instead of a copy of `event` (SQLite
    /// does: the copy was most of what a trace wrote).
    pub position: Option<i64>,
    /// The replay this copy came from (its `replayname`), if any.
    pub replay: Option<String>,
    /// Whether the log entry at `position` keeps this trace's searchable
    /// head ([`NewEvent::traced`](super::NewEvent::traced)). A backend
    /// that reads heads from its log then stores nothing for a trace
    /// with no rule and no replay: the entry is the whole trace.
    pub head_in_log: bool,
    /// Everything after routing.
    pub body: TraceBody,
    /// Where it stands (derived from `body` by [`Trace::derive_state`]).
    pub state: TraceState,
}

impl Trace {
    /// The trace of an event accepted but not routed yet (read from the
    /// log entry itself).
    pub fn received(event: &super::LoggedEvent) -> Self {
        let parsed: Option<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_slice(&event.body).ok();
        let text = |k: &str| {
            parsed
                .as_ref()
                .and_then(|m| m.get(k))
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let replay = Some(text(REPLAY_EXTENSION)).filter(|r| !r.is_empty());
        Self {
            tenant: event.tenant.clone(),
            bus: event.bus.clone(),
            event_id: event.event_id.clone(),
            received_ms: event.ingested_ms,
            source: text("source"),
            event_type: text("type"),
            size_bytes: event.body.len() as u64,
            event: event.body.clone(),
            position: None,
            replay,
            head_in_log: event.traced,
            body: TraceBody::default(),
            state: TraceState::InFlight,
        }
    }

    /// The key facts about this trace use.
    pub fn key(&self) -> TraceKey {
        TraceKey {
            tenant: self.tenant.clone(),
            bus: self.bus.clone(),
            event_id: self.event_id.clone(),
            received_ms: Some(self.received_ms),
        }
    }

    /// The state the body adds up to (see [`TraceState`]).
    pub fn derive_state(body: &TraceBody) -> TraceState {
        if !body.routed {
            return TraceState::InFlight;
        }
        if body.rules.is_empty() {
            return TraceState::NoMatch;
        }
        if body
            .rules
            .iter()
            .all(|r| r.outcome == RuleOutcome::FilteredOut)
        {
            return TraceState::FilteredOut;
        }
        let targets = body
            .rules
            .iter()
            .filter(|r| r.outcome != RuleOutcome::FilteredOut)
            .flat_map(|r| &r.targets);
        let (mut in_flight, mut retrying, mut delivered, mut gave_up) = (false, false, 0, 0);
        for t in targets {
            match t.state {
                TargetState::InFlight => in_flight = true,
                TargetState::Retrying => retrying = true,
                TargetState::Delivered => delivered += 1,
                TargetState::DeadLettered | TargetState::Dropped => gave_up += 1,
            }
        }
        match (in_flight, retrying, delivered, gave_up) {
            (true, ..) => TraceState::InFlight,
            (_, true, ..) => TraceState::Retrying,
            (_, _, _, 0) => TraceState::Delivered,
            (_, _, 0, _) => TraceState::DeadLettered,
            _ => TraceState::PartiallyDelivered,
        }
    }

    /// Applies a later fact and updates the state.
    pub fn apply(&mut self, fact: &TraceFact) {
        fact.apply_to(&mut self.body);
        self.state = Self::derive_state(&self.body);
    }
}

/// Which trace a fact is about. Without `received_ms`, the newest trace of
/// that event id on that bus (a redriven delivery no longer knows when its
/// event was received).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceKey {
    /// Owning tenant.
    pub tenant: String,
    /// The bus the event was routed on.
    pub bus: String,
    /// The CloudEvents `id`.
    pub event_id: String,
    /// When the bus accepted it, when known.
    pub received_ms: Option<Millis>,
}

/// Something that happened to an event after it was routed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fact", rename_all = "snake_case")]
pub enum TraceFact {
    /// A retry attempt (first attempts are part of the routing record).
    Attempt {
        /// The rule.
        rule: String,
        /// The target.
        target: String,
        /// The attempt.
        attempt: AttemptRecord,
        /// Where the target stands after it.
        next: TargetState,
    },
    /// The delivery was given up on and kept as this dead letter.
    DeadLettered {
        /// The rule.
        rule: String,
        /// The target.
        target: String,
        /// The dead letter.
        id: DeadLetterId,
    },
    /// The delivery was given up on; the rule keeps no dead letters.
    Dropped {
        /// The rule.
        rule: String,
        /// The target.
        target: String,
    },
    /// A dead letter went back to delivery.
    Redriven {
        /// The rule.
        rule: String,
        /// The target.
        target: String,
        /// The redrive.
        redrive: Redrive,
    },
    /// A replay sent the event again.
    Replayed(ReplayMark),
}

impl TraceFact {
    /// Whether a fact that arrives before its trace is kept until the
    /// trace is recorded. Delivery facts are (the routing record follows
    /// within moments); a replay mark is not (the trace of an archived
    /// event is often long expired).
    pub fn waits_for_trace(&self) -> bool {
        !matches!(self, Self::Replayed(_))
    }

    fn apply_to(&self, body: &mut TraceBody) {
        let target = |body: &mut TraceBody, rule: &str, target: &str| -> usize {
            let at = match body.rules.iter().position(|r| r.rule == rule) {
                Some(at) => at,
                None => {
                    body.rules.push(RuleTrace {
                        rule: rule.to_owned(),
                        outcome: RuleOutcome::Matched,
                        filter: None,
                        transform: None,
                        error: None,
                        targets: Vec::new(),
                    });
                    body.rules.len() - 1
                }
            };
            body.rules[at].target_mut(target);
            at
        };
        match self {
            Self::Attempt {
                rule,
                target: t,
                attempt,
                next,
            } => {
                let at = target(body, rule, t);
                let tt = body.rules[at].target_mut(t);
                // A store that applies facts concurrently (JetStream) may
                // apply a retry's attempt after a later one, or after the
                // dead letter that followed it: the attempt goes in time
                // order, and moves the state only if nothing newer did.
                let latest = tt
                    .attempts
                    .iter()
                    .map(|a| a.at_ms)
                    .chain(tt.redrives.iter().map(|r| r.at_ms))
                    .max();
                let pos = tt.attempts.partition_point(|a| a.at_ms <= attempt.at_ms);
                tt.attempts.insert(pos, attempt.clone());
                if latest.is_none_or(|l| l <= attempt.at_ms) {
                    tt.state = *next;
                }
            }
            Self::DeadLettered {
                rule,
                target: t,
                id,
            } => {
                let at = target(body, rule, t);
                let tt = body.rules[at].target_mut(t);
                tt.state = TargetState::DeadLettered;
                tt.dead_letter_id = Some(*id);
            }
            Self::Dropped { rule, target: t } => {
                let at = target(body, rule, t);
                body.rules[at].target_mut(t).state = TargetState::Dropped;
            }
            Self::Redriven {
                rule,
                target: t,
                redrive,
            } => {
                let at = target(body, rule, t);
                let tt = body.rules[at].target_mut(t);
                tt.state = TargetState::InFlight;
                tt.dead_letter_id = None;
                tt.redrives.push(redrive.clone());
            }
            Self::Replayed(mark) => body.replays.push(mark.clone()),
        }
    }
}

/// What a search selects (every member optional, combined with AND).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceQuery {
    /// Only this bus.
    pub bus: Option<String>,
    /// Only this `source`.
    pub source: Option<String>,
    /// Only this `type`.
    pub event_type: Option<String>,
    /// Received at or after this.
    pub from_ms: Option<Millis>,
    /// Received before this.
    pub to_ms: Option<Millis>,
    /// Only in this state.
    pub state: Option<TraceState>,
    /// Only events this rule matched.
    pub rule: Option<String>,
}

impl TraceQuery {
    /// Whether a trace passes the query.
    pub fn matches(&self, t: &Trace) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        eq(&self.bus, &t.bus)
            && eq(&self.source, &t.source)
            && eq(&self.event_type, &t.event_type)
            && self.from_ms.is_none_or(|f| t.received_ms >= f)
            && self.to_ms.is_none_or(|to| t.received_ms < to)
            && self.state.is_none_or(|s| s == t.state)
            && self
                .rule
                .as_deref()
                .is_none_or(|r| t.body.rules.iter().any(|x| x.rule == r))
    }
}

/// One search result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceSummary {
    /// The CloudEvents `id`.
    pub event_id: String,
    /// Its bus.
    pub bus: String,
    /// Its `source`.
    pub source: String,
    /// Its `type`.
    pub event_type: String,
    /// When it was received.
    pub received_ms: Millis,
    /// Where it stands.
    pub state: TraceState,
}

impl From<&Trace> for TraceSummary {
    fn from(t: &Trace) -> Self {
        Self {
            event_id: t.event_id.clone(),
            bus: t.bus.clone(),
            source: t.source.clone(),
            event_type: t.event_type.clone(),
            received_ms: t.received_ms,
            state: t.state,
        }
    }
}

/// Where a search page ended; opaque, but safe to hand to clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceCursor(pub(crate) String);

impl TraceCursor {
    /// The cursor after the entry received at `ms` with backend id `id`.
    pub(crate) fn at(ms: Millis, id: i64) -> Self {
        Self(format!("{ms}.{id}"))
    }

    /// The (received time, backend id) a cursor made by [`Self::at`] holds.
    pub(crate) fn parts(&self) -> Option<(Millis, i64)> {
        let (ms, id) = self.0.split_once('.')?;
        Some((ms.parse().ok()?, id.parse().ok()?))
    }

    /// The cursor as text (for a `next` link).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A cursor a client sent back.
    pub fn from_text(s: impl Into<String>) -> Self {
        Self(s.into())
    }
}

/// Per-event traces.
#[async_trait]
pub trait Traces: Send + Sync + 'static {
    /// Records routed events' traces (replacing an earlier record of the
    /// same tenant, bus, event id and received time), applying any facts
    /// that arrived for them before. Shared, not owned: the router keeps
    /// the batch to try again when a write fails, and copying it for every
    /// try cost about 1 µs an event.
    async fn record_traces(&self, traces: Arc<[Trace]>) -> StoreResult<()>;

    /// Applies later facts to their traces; a fact for a trace not (yet)
    /// recorded is kept for it if [`TraceFact::waits_for_trace`], else dropped.
    /// Shared, not owned, like [`Self::record_traces`]: the fact writer
    /// keeps the batch to try again, and copying it for every try was
    /// several allocations a delivered event.
    async fn add_trace_facts(&self, facts: Arc<[(TraceKey, TraceFact)]>) -> StoreResult<()>;

    /// The newest trace of a tenant's event (on `bus`, when given); an event
    /// appended but not routed yet answers `in_flight` with nothing routed.
    async fn trace(
        &self,
        tenant: &str,
        event_id: &str,
        bus: Option<&str>,
    ) -> StoreResult<Option<Trace>>;

    /// A tenant's traces passing `query`, newest first, at most `limit`,
    /// after `after` when given; the cursor of the next page, if any.
    async fn search_traces(
        &self,
        tenant: &str,
        query: &TraceQuery,
        after: Option<&TraceCursor>,
        limit: usize,
    ) -> StoreResult<(Vec<TraceSummary>, Option<TraceCursor>)>;

    /// Drops up to `max` traces: those received before `before`, and the
    /// oldest beyond the newest `keep_at_most` (the size cap), with facts
    /// that waited too long. Returns how many; fewer than `max` means done.
    async fn expire_traces(
        &self,
        before: Millis,
        keep_at_most: u64,
        max: usize,
    ) -> StoreResult<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(states: &[(RuleOutcome, &[TargetState])]) -> TraceBody {
        TraceBody {
            routed: true,
            rules: states
                .iter()
                .enumerate()
                .map(|(i, (outcome, targets))| RuleTrace {
                    rule: format!("r{i}"),
                    outcome: *outcome,
                    filter: None,
                    transform: None,
                    error: None,
                    targets: targets
                        .iter()
                        .enumerate()
                        .map(|(j, s)| TargetTrace {
                            state: *s,
                            ..TargetTrace::new(&format!("t{j}"))
                        })
                        .collect(),
                })
                .collect(),
            replays: Vec::new(),
        }
    }

    #[test]
    fn states_add_up() {
        use RuleOutcome::*;
        use TargetState as T;
        let state = |b: TraceBody| Trace::derive_state(&b);
        assert_eq!(state(TraceBody::default()), TraceState::InFlight);
        assert_eq!(state(body(&[])), TraceState::NoMatch);
        assert_eq!(state(body(&[(FilteredOut, &[])])), TraceState::FilteredOut);
        assert_eq!(
            state(body(&[(FilteredOut, &[]), (Matched, &[T::Delivered])])),
            TraceState::Delivered
        );
        assert_eq!(
            state(body(&[(Matched, &[T::Delivered, T::Retrying])])),
            TraceState::Retrying
        );
        assert_eq!(
            state(body(&[(Matched, &[T::Delivered, T::DeadLettered])])),
            TraceState::PartiallyDelivered
        );
        assert_eq!(
            state(body(&[(Failed, &[T::DeadLettered, T::Dropped])])),
            TraceState::DeadLettered
        );
        assert_eq!(
            state(body(&[(Matched, &[T::InFlight, T::Retrying])])),
            TraceState::InFlight
        );
        for s in TraceState::ALL {
            assert_eq!(TraceState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn facts_move_targets() {
        let mut b = body(&[(RuleOutcome::Matched, &[TargetState::Retrying])]);
        TraceFact::DeadLettered {
            rule: "r0".into(),
            target: "t0".into(),
            id: 7,
        }
        .apply_to(&mut b);
        assert_eq!(Trace::derive_state(&b), TraceState::DeadLettered);
        TraceFact::Redriven {
            rule: "r0".into(),
            target: "t0".into(),
            redrive: Redrive {
                at_ms: 5,
                dead_letter_id: 7,
            },
        }
        .apply_to(&mut b);
        assert_eq!(Trace::derive_state(&b), TraceState::InFlight);
        TraceFact::Attempt {
            rule: "r0".into(),
            target: "t0".into(),
            attempt: AttemptRecord {
                at_ms: 6,
                duration_ms: 1,
                status: Some(200),
                error: None,
            },
            next: TargetState::Delivered,
        }
        .apply_to(&mut b);
        assert_eq!(Trace::derive_state(&b), TraceState::Delivered);
        assert_eq!(b.rules[0].targets[0].redrives.len(), 1);
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<TraceBody>(&json).unwrap(), b);
    }

    /// JetStream applies a retry's attempt that waited for its trace after
    /// the facts that followed it (seen in CI): the trace still lists the
    /// attempts in time order and keeps the dead letter's state.
    #[test]
    fn a_late_attempt_takes_its_place_and_leaves_a_newer_state() {
        let attempt = |at_ms, status, next| TraceFact::Attempt {
            rule: "r0".into(),
            target: "t0".into(),
            attempt: AttemptRecord {
                at_ms,
                duration_ms: 1,
                status: Some(status),
                error: None,
            },
            next,
        };
        let mut b = body(&[(RuleOutcome::Matched, &[])]);
        attempt(10, 500, TargetState::Retrying).apply_to(&mut b);
        attempt(30, 500, TargetState::DeadLettered).apply_to(&mut b);
        TraceFact::DeadLettered {
            rule: "r0".into(),
            target: "t0".into(),
            id: 7,
        }
        .apply_to(&mut b);
        attempt(20, 500, TargetState::Retrying).apply_to(&mut b);
        let t = &b.rules[0].targets[0];
        let times: Vec<Millis> = t.attempts.iter().map(|a| a.at_ms).collect();
        assert_eq!(times, [10, 20, 30]);
        assert_eq!(t.state, TargetState::DeadLettered);
        assert_eq!(t.dead_letter_id, Some(7));
        // An attempt older than a redrive leaves the redrive's state.
        TraceFact::Redriven {
            rule: "r0".into(),
            target: "t0".into(),
            redrive: Redrive {
                at_ms: 40,
                dead_letter_id: 7,
            },
        }
        .apply_to(&mut b);
        attempt(35, 500, TargetState::DeadLettered).apply_to(&mut b);
        assert_eq!(b.rules[0].targets[0].state, TargetState::InFlight);
        attempt(45, 200, TargetState::Delivered).apply_to(&mut b);
        assert_eq!(Trace::derive_state(&b), TraceState::Delivered);
    }
}
