//! The router: follows the event log and turns each event into deliveries.
//!
//! It takes committed events from the log consumer in order, matches each
//! against its bus's rule index, runs the matched rules' filter and
//! transform steps, and hands one delivery per (output event, target) to the
//! delivery engine — in one batch per log read, so deliveries to the same
//! target can go out together. Every delivery carries a hold on its log
//! entry ([`RoutingHold`]); the entry is acknowledged when the last one is
//! released.
//!
//! Rules with plugin steps run beside the router (one task per rule and
//! event, under the tenant's plugin slots), so a slow or spinning plugin
//! delays only its own tenant's events, never the log as a whole — except
//! rules that keep order per partition key: their deliveries must reach
//! the engine in log order, so their plugin steps run in line.
//!
//! An entry restricted to some rules (`only_rules`: a replay) is routed to
//! those alone. On a traced bus each event's [`EventTrace`] records, in
//! memory, the rules matched and their plugin runs, and each first delivery
//! carries its target's slot; the trace is written with the entry's ack.

use super::progress::{RoutingHold, RoutingProgress};
use super::rule::{Rule, RuleTransform};
use super::table::{BusRoutes, RouteTable};
use crate::clock::{SharedClock, rfc3339};
use crate::deliver::engine::{Delivery, DeliveryEngine};
use crate::deliver::{FailureCode, Item};
use crate::event::{EventHead, StoredEvent};
use crate::history::{EventTrace, HistoryTable};
use crate::plugin::registry::PluginHost;
use crate::resource::PluginBinding;
use crate::store::traces::{PluginRun, TraceError};
use crate::store::{AttemptError, LogConsumer, LogEntry, LoggedEvent, Trace, Traces};
use crate::telemetry;
use crate::transform::RenderContext;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Log entries read per round.
const BATCH: usize = 1024;
/// Longest the router waits for new entries before looking at shutdown again.
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// Most log entries routed but not yet acknowledged before the router
/// waits: two batches, above what flows through when delivery keeps up,
/// and a bound on the memory a backlog takes when it does not (the rest of
/// the backlog waits in the log, where it costs no memory). Together with
/// 8 MB caches, going from eight batches to two lowered the peak resident
/// set of issue 13's memory scenario from 323 MB to 238–251 MB, with no
/// loss of throughput beyond this machine's noise.
const MAX_UNACKED: usize = 2 * BATCH;

/// What the router needs.
pub struct Router {
    /// Where each bus's rules are.
    pub routes: Arc<dyn RouteTable>,
    /// Where deliveries go.
    pub engine: Arc<DeliveryEngine>,
    /// Runs filter and transformer plugins.
    pub plugins: Arc<PluginHost>,
    /// Time (transform contexts).
    pub clock: SharedClock,
    /// Where traces go, when the bus records them.
    pub history: Option<RouterHistory>,
}

/// One log entry being routed: what every matched rule works from.
#[derive(Clone)]
struct Entry {
    /// The entry as logged.
    logged: Arc<LoggedEvent>,
    /// Its log position (FIFO chains order by it).
    position: i64,
    /// The event with its stored JSON; its object is built only when a
    /// filter, transform or target asks for it.
    event: StoredEvent,
    /// Its routing progress.
    hold: RoutingHold,
    /// Its trace, on a traced bus.
    trace: Option<Arc<EventTrace>>,
}

/// What the router needs to trace events.
#[derive(Clone)]
pub struct RouterHistory {
    /// Which buses trace.
    pub table: Arc<dyn HistoryTable>,
    /// Where finished traces are written.
    pub traces: Arc<dyn Traces>,
    /// Counts the entries the router takes (replays watch the backlog).
    pub lag: Arc<crate::history::RoutingLag>,
}

/// A plugin run as the trace shows it.
fn plugin_run(
    binding: &PluginBinding,
    version: Option<u32>,
    outcome: &str,
    started: tokio::time::Instant,
    error: Option<&AttemptError>,
) -> PluginRun {
    PluginRun {
        plugin: binding.name.clone(),
        version,
        outcome: outcome.to_owned(),
        events: None,
        error: error.map(TraceError::from),
        duration_us: crate::history::trace::micros(started.elapsed()),
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

impl Router {
    /// Routes until shutdown. Returns the task that writes the last
    /// acknowledgements; it ends once every delivery still running has
    /// released its hold.
    pub async fn run(
        self: Arc<Self>,
        consumer: Arc<dyn LogConsumer>,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let traces = self.history.as_ref().map(|h| h.traces.clone());
        let (progress, acks) = RoutingProgress::start(consumer.clone(), traces);
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                () = progress.room(MAX_UNACKED) => {}
                _ = shutdown.changed() => break,
            }
            let entries = tokio::select! {
                entries = consumer.next(BATCH, IDLE_WAIT) => entries,
                _ = shutdown.changed() => break,
            };
            match entries {
                Ok(entries) if entries.is_empty() => {}
                Ok(entries) => self.route_batch(entries, &progress).await,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the log");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = shutdown.changed() => break,
                    }
                }
            }
        }
        acks
    }

    /// Routes a batch of entries, dispatching their deliveries together.
    pub async fn route_batch(self: &Arc<Self>, entries: Vec<LogEntry>, progress: &RoutingProgress) {
        if let Some(h) = &self.history {
            h.lag.taken(entries.len());
        }
        let mut deliveries = Vec::new();
        for LogEntry {
            event,
            ack,
            position,
        } in entries
        {
            let Some((routes, matched)) = self.matched_rules(&event) else {
                // Nothing takes it: routed as read.
                progress.routed(ack, self.unmatched_trace(event, position));
                continue;
            };
            let trace = self.start_trace(&event, position);
            let hold = progress.hold_traced(ack, trace.clone());
            self.route_matched(
                event,
                position,
                &hold,
                trace,
                &routes,
                matched,
                &mut deliveries,
            )
            .await;
        }
        self.engine.dispatch(deliveries);
    }

    /// Whether `logged`'s trace is wanted: its bus records traces — or
    /// recorded them when it accepted the entry: a log that keeps the head
    /// of such an entry already shows it as a trace, which must not end as
    /// "matched no rule" because tracing was turned off meanwhile.
    fn traced(&self, logged: &LoggedEvent) -> bool {
        self.history
            .as_ref()
            .is_some_and(|h| logged.traced || h.table.traced(&logged.tenant, &logged.bus))
    }

    /// The head of `logged` for its trace: ingest hands over the head it
    /// read; an entry read back from disk has none, and is read here.
    fn head(logged: &LoggedEvent) -> Option<EventHead> {
        match &logged.head.0 {
            Some(head) => Some(EventHead::clone(head)),
            None => EventHead::parse(&logged.body),
        }
    }

    /// The trace of an entry that some rule took, when it is traced.
    fn start_trace(&self, logged: &LoggedEvent, position: i64) -> Option<Arc<EventTrace>> {
        if !self.traced(logged) {
            return None;
        }
        Some(EventTrace::start(logged, position, Self::head(logged)?))
    }

    /// The finished trace of an entry no rule took, when it is traced.
    fn unmatched_trace(&self, mut logged: LoggedEvent, position: i64) -> Option<Trace> {
        if !self.traced(&logged) {
            return None;
        }
        // The entry's own head, uncopied when nothing else holds it.
        let head = match logged.head.0.take() {
            Some(head) => Arc::unwrap_or_clone(head),
            None => EventHead::parse(&logged.body)?,
        };
        Some(EventTrace::unmatched(logged, position, head))
    }

    /// The rules of its bus that take `logged` (its `only_rules` among
    /// them), or `None` when none does.
    fn matched_rules(&self, logged: &LoggedEvent) -> Option<(Arc<BusRoutes>, Vec<String>)> {
        let routes = self.routes.routes(&logged.tenant, &logged.bus)?;
        if routes.index.is_empty() {
            return None;
        }
        match routes.index.matches_json(&logged.body) {
            Ok(mut m) => {
                if let Some(only) = &logged.only_rules {
                    m.retain(|rule| only.contains(rule));
                }
                (!m.is_empty()).then_some((routes, m))
            }
            Err(e) => {
                tracing::error!(tenant = %logged.tenant, event_id = %logged.event_id, error = %e, "stored event is not JSON; skipped");
                None
            }
        }
    }

    /// Applies each matched rule to an entry.
    #[allow(clippy::too_many_arguments)]
    async fn route_matched(
        self: &Arc<Self>,
        logged: LoggedEvent,
        position: i64,
        hold: &RoutingHold,
        trace: Option<Arc<EventTrace>>,
        routes: &BusRoutes,
        matched: Vec<String>,
        deliveries: &mut Vec<Delivery>,
    ) {
        telemetry::matched(&logged.tenant, matched.len() as u64);
        // The matcher has read the entry whole, so it is JSON; one that is
        // not an object cannot be an event.
        if logged.body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            tracing::error!(tenant = %logged.tenant, event_id = %logged.event_id, "stored event is not a JSON object; skipped");
            return;
        }
        let entry = Entry {
            event: StoredEvent::from_json(logged.event_id.clone(), logged.body.clone()),
            logged: Arc::new(logged),
            position,
            hold: hold.clone(),
            trace,
        };
        // Each rule fires once per event, whatever order the index reports them in.
        let matched: BTreeSet<String> = matched.into_iter().collect();
        for name in matched {
            let Some(rule) = routes.rules.get(&name).cloned() else {
                continue;
            };
            if !rule.has_plugin_steps() || rule.ordered() {
                self.apply_rule(&entry, &rule, deliveries).await;
                continue;
            }
            let (me, entry) = (self.clone(), entry.clone());
            tokio::spawn(async move {
                let _slot = me.plugins.tenant_slot(&entry.logged.tenant).await;
                let mut deliveries = Vec::new();
                me.apply_rule(&entry, &rule, &mut deliveries).await;
                me.engine.dispatch(deliveries);
            });
        }
    }

    /// Filter, transform and turn one matched rule into deliveries.
    async fn apply_rule(&self, entry: &Entry, rule: &Arc<Rule>, deliveries: &mut Vec<Delivery>) {
        let (logged, position, event, hold) =
            (&*entry.logged, entry.position, &entry.event, &entry.hold);
        let trace = entry.trace.as_ref();
        let original = Item {
            event: event.clone(),
            body: None,
        };
        let traced = trace.map(|t| (t, t.rule(&rule.name)));
        let version =
            |b: &PluginBinding| traced.and_then(|_| self.plugins.version_of(&logged.tenant, b));
        if let Some(filter) = &rule.filter {
            let started = tokio::time::Instant::now();
            let result = self.plugins.filter(&logged.tenant, filter, event).await;
            if let Some((t, ix)) = traced {
                let (outcome, error) = match &result {
                    Ok(true) => ("passed", None),
                    Ok(false) => ("rejected", None),
                    Err(e) => ("failed", Some(AttemptError::new(e.code, e.message.clone()))),
                };
                let run = plugin_run(filter, version(filter), outcome, started, error.as_ref());
                t.filter(ix, run, !matches!(result, Ok(false)));
            }
            match result {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    let error = AttemptError::new(e.code, e.message);
                    return self.fail_rule(logged, rule, &original, error, traced).await;
                }
            }
        }
        let items = match &rule.transform {
            None => vec![original],
            Some(RuleTransform::Builtin(t)) => {
                let ingestion_time = rfc3339(logged.ingested_ms);
                let rule_arn = format!("busbar:rule/{}/{}/{}", logged.tenant, rule.bus, rule.name);
                let cx = RenderContext {
                    rule_name: &rule.name,
                    rule_arn: &rule_arn,
                    ingestion_time: &ingestion_time,
                };
                // The renderer reads a JSON value; built only for rules that need it.
                let value = Value::Object(event.event().as_map().clone());
                match t.render(&value, &cx) {
                    Ok(text) => vec![Item {
                        body: Some(Arc::from(text)),
                        ..original
                    }],
                    Err(e) => {
                        let error = AttemptError::new(FailureCode::parse(e.code()), e.to_string());
                        return self.fail_rule(logged, rule, &original, error, traced).await;
                    }
                }
            }
            Some(RuleTransform::Plugin(binding)) => {
                let started = tokio::time::Instant::now();
                let result = self.plugins.transform(&logged.tenant, binding, event).await;
                if let Some((t, ix)) = traced {
                    let error = result
                        .as_ref()
                        .err()
                        .map(|e| AttemptError::new(e.code, e.message.clone()));
                    let outcome = if error.is_some() {
                        "failed"
                    } else {
                        "transformed"
                    };
                    let mut run =
                        plugin_run(binding, version(binding), outcome, started, error.as_ref());
                    run.events = result.as_ref().ok().map(|o| o.len() as u32);
                    t.transform(ix, run);
                }
                match result {
                    Ok(outputs) => outputs
                        .into_iter()
                        .map(|event| Item { event, body: None })
                        .collect(),
                    Err(e) => {
                        let error = AttemptError::new(e.code, e.message);
                        return self.fail_rule(logged, rule, &original, error, traced).await;
                    }
                }
            }
        };
        for (index, item) in items.into_iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            for target in &rule.targets {
                let slot = traced.map(|(t, ix)| t.slot(ix, &target.id));
                deliveries.push(
                    Delivery::first(
                        target.clone(),
                        item.clone(),
                        logged.ingested_ms,
                        hold.guard(),
                    )
                    .in_chain(position, index)
                    .traced(slot),
                );
            }
        }
    }

    /// A rule-level failure (filter, transform): no target gets the event;
    /// it is dead-lettered for each of them before the entry counts as routed.
    async fn fail_rule(
        &self,
        logged: &LoggedEvent,
        rule: &Rule,
        item: &Item,
        error: AttemptError,
        traced: Option<(&Arc<EventTrace>, usize)>,
    ) {
        if let Some((t, ix)) = traced {
            let targets: Vec<(&str, bool)> = rule
                .targets
                .iter()
                .map(|t| (t.id.as_str(), t.dead_letter))
                .collect();
            t.rule_failed(ix, &error, &targets);
        }
        tracing::warn!(tenant = %logged.tenant, rule = %rule.name, event_id = %logged.event_id, code = %error.code, "{}", error.message);
        for target in &rule.targets {
            self.engine
                .fail_unattempted(target, item, logged.ingested_ms, error.clone())
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use crate::deliver::engine::EngineConfig;
    use crate::deliver::retry::RetryPolicy;
    use crate::deliver::testing::PanicsOnBoom;
    use crate::deliver::{BoundTarget, Target, TargetDirectory};
    use crate::pattern::{Pattern, PatternLimits};
    use crate::plugin::registry::PluginDirectory;
    use crate::route::{BusRoutes, RouteTable};
    use crate::store::memory::MemoryStore;
    use crate::store::{EventLog, NewEvent};
    use std::collections::BTreeMap;

    /// One bus with one rule matching everything, delivering to `target`.
    struct OneRule(Arc<BusRoutes>);

    impl RouteTable for OneRule {
        fn routes(&self, tenant: &str, bus: &str) -> Option<Arc<BusRoutes>> {
            (tenant == "t" && bus == "b").then(|| self.0.clone())
        }
    }

    impl TargetDirectory for OneRule {
        fn bound_target(
            &self,
            _: &str,
            _: &str,
            rule: &str,
            target: &str,
        ) -> Option<Arc<BoundTarget>> {
            self.0
                .rules
                .get(rule)?
                .targets
                .iter()
                .find(|t| t.id == target)
                .cloned()
        }
    }

    impl PluginDirectory for OneRule {
        fn plugin(&self, _: &str, _: &str) -> Option<crate::resource::PluginRecord> {
            None
        }
        fn plugin_limits(&self, _: &str) -> Option<Arc<crate::plugin::LimitsOverrides>> {
            None
        }
    }

    fn table(target: Arc<dyn Target>) -> Arc<OneRule> {
        let pattern = Pattern::from_value(
            &serde_json::json!({"source": ["s"]}),
            &PatternLimits::default(),
        )
        .unwrap();
        let rule = Rule {
            name: "r".into(),
            bus: "b".into(),
            enabled: true,
            pattern,
            filter: None,
            transform: None,
            targets: vec![Arc::new(BoundTarget {
                tenant: "t".into(),
                bus: "b".into(),
                rule: "r".into(),
                id: "x".into(),
                retry: RetryPolicy::default(),
                dead_letter: true,
                ordered: false,
                target,
            })],
            dead_letter: true,
            ordering: crate::route::rule::Ordering::None,
            spec: Default::default(),
        };
        let mut rules = BTreeMap::new();
        rules.insert("r".to_owned(), Arc::new(rule));
        Arc::new(OneRule(Arc::new(BusRoutes::new(rules))))
    }

    fn event(id: &str) -> NewEvent {
        let body = serde_json::json!({"specversion": "1.0", "id": id, "source": "s", "type": "t"});
        NewEvent {
            tenant: "t".into(),
            bus: "b".into(),
            event_id: id.into(),
            body: bytes::Bytes::from(body.to_string()),
            ingested_ms: 1,
            ..Default::default()
        }
    }

    fn router(
        table: Arc<OneRule>,
        engine: Arc<DeliveryEngine>,
        clock: SharedClock,
        history: Option<RouterHistory>,
    ) -> Arc<Router> {
        let runtime = crate::plugin::PluginRuntime::new(crate::plugin::RuntimeConfig::new(
            std::env::temp_dir().join("busbar-router-tests"),
        ))
        .unwrap();
        let plugins = Arc::new(PluginHost::new(
            Arc::new(runtime),
            table.clone(),
            crate::plugin::KindLimits::uniform(&crate::plugin::PluginLimits::default()),
        ));
        Arc::new(Router {
            routes: table,
            engine,
            plugins,
            clock,
            history,
        })
    }

    /// Bus `b` of tenant `t`, tracing or not as the test sets it.
    #[derive(Default)]
    struct Tracing(std::sync::atomic::AtomicBool);

    impl HistoryTable for Tracing {
        fn bus_history(&self, tenant: &str, bus: &str) -> Option<Arc<crate::history::BusHistory>> {
            (tenant == "t" && bus == "b").then(|| {
                Arc::new(crate::history::BusHistory {
                    traced: self.0.load(std::sync::atomic::Ordering::Relaxed),
                    ..Default::default()
                })
            })
        }
        fn all_archives(&self) -> Vec<(String, String, crate::history::ArchiveEntry)> {
            Vec::new()
        }
    }

    /// A router over a memory store that writes traces to it, for the
    /// buses `tracing` says trace.
    fn traced_router(tracing: Arc<Tracing>) -> (Arc<Router>, MemoryStore) {
        let clock: SharedClock = Arc::new(TokioClock::new());
        let store = MemoryStore::new(clock.clone());
        let table = table(Arc::new(PanicsOnBoom::default()));
        let engine = Arc::new(DeliveryEngine::new(
            Arc::new(store.clone()),
            table.clone(),
            clock.clone(),
            EngineConfig::default(),
        ));
        let history = RouterHistory {
            table: tracing,
            traces: Arc::new(store.clone()),
            lag: Default::default(),
        };
        (router(table, engine, clock, Some(history)), store)
    }

    #[tokio::test]
    async fn an_entry_accepted_while_tracing_stays_traced_when_tracing_is_turned_off() {
        let tracing = Arc::new(Tracing::default());
        let (router, _) = traced_router(tracing.clone());
        // Tracing is off now; the first entry was accepted while it was on
        // (its log entry may already show it as a trace), the second after.
        let accepted_traced = NewEvent {
            traced: true,
            ..event("before")
        };
        assert!(
            router.start_trace(&accepted_traced, 1).is_some(),
            "an entry whose log shows it as a trace must end with its routing recorded"
        );
        assert!(router.start_trace(&event("after"), 2).is_none());
        // And an entry accepted while off is traced once tracing is on again.
        tracing.0.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(router.start_trace(&event("after"), 2).is_some());
    }

    #[tokio::test]
    async fn an_entry_no_rule_takes_is_routed_with_its_no_match_trace() {
        let (router, store) = traced_router(Arc::new(Tracing::default()));
        // Bus `quiet` has no rules and does not trace now; `kept` was
        // accepted while it did (its log entry shows it as a trace).
        let on_quiet = |id: &str, traced: bool| NewEvent {
            bus: "quiet".into(),
            traced,
            ..event(id)
        };
        store
            .append(vec![on_quiet("kept", true), on_quiet("untraced", false)])
            .await
            .unwrap();
        let consumer = store.consumer().await.unwrap();
        let (progress, acks) =
            RoutingProgress::start(consumer.clone(), Some(Arc::new(store.clone())));
        let entries = consumer.next(10, Duration::ZERO).await.unwrap();
        assert_eq!(entries.len(), 2);
        router.route_batch(entries, &progress).await;
        drop(progress);
        acks.await.unwrap();
        assert_eq!(consumer.in_flight(), 0, "both entries are acknowledged");
        let kept = store.trace("t", "kept", None).await.unwrap().unwrap();
        assert_eq!(kept.state, crate::store::TraceState::NoMatch);
        assert!(kept.body.routed && kept.body.rules.is_empty());
        assert_eq!((kept.bus.as_str(), kept.source.as_str()), ("quiet", "s"));
        assert_eq!(kept.position, Some(1));
        assert!(
            store.trace("t", "untraced", None).await.unwrap().is_none(),
            "an untraced entry of a bus that does not trace has no trace"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_while_holding_routing_progress_does_not_stall_it() {
        let clock: SharedClock = Arc::new(TokioClock::new());
        let store = MemoryStore::new(clock.clone());
        let target = Arc::new(PanicsOnBoom::default());
        let table = table(target.clone());
        let engine = Arc::new(DeliveryEngine::new(
            Arc::new(store.clone()),
            table.clone(),
            clock.clone(),
            EngineConfig::default(),
        ));
        let router = router(table, engine, clock, None);
        let consumer = store.consumer().await.unwrap();
        let (stop, shutdown) = watch::channel(false);
        let running = tokio::spawn(router.run(consumer.clone(), shutdown));
        // The delivery of "boom" panics inside the engine's task, which holds
        // the event's routing progress; the events after it must still be routed.
        store
            .append(vec![event("boom"), event("after-1"), event("after-2")])
            .await
            .unwrap();
        for _ in 0..10_000 {
            if target.delivered.lock().unwrap().len() == 2 && consumer.in_flight() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*target.delivered.lock().unwrap(), ["after-1", "after-2"]);
        assert_eq!(
            *target.built.lock().unwrap(),
            [false, false],
            "a rule without plugin steps hands its targets the stored JSON, never building the event"
        );
        assert_eq!(consumer.in_flight(), 0, "every entry was acknowledged");
        stop.send_replace(true);
        let acks = running.await.unwrap();
        acks.await.unwrap();
        // A new consumer (as after a restart) has nothing left to route.
        let after_restart = store.consumer().await.unwrap();
        assert!(
            after_restart
                .next(10, Duration::ZERO)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
