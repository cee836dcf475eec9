//! The router: follows the log from the persisted cursor and turns each event
//! into deliveries.
//!
//! It reads committed events in order (from the store's in-memory tail when it
//! keeps up), matches them against their bus's rule index, renders transforms
//! and hands each (rule, target) pair to its kind: webhooks to the delivery
//! engine, queue and bus targets straight to the store in one write per batch.

use crate::catalog::Catalog;
use crate::clock::{now_ms, rfc3339};
use crate::deliver::engine::{Delivery, Engine};
use crate::deliver::queue::QueueSignals;
use crate::event::Event;
use crate::plugin::registry::PluginHost;
use crate::route::{Rule, RuleTransform, TargetKind};
use crate::store::{AttemptError, LoggedEvent, NewEvent, NewJob, NewQueueMessage, Seq, Store};
use crate::telemetry;
use crate::transform::RenderContext;
use bytes::Bytes;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The extension that counts how many `bus` targets an event passed through.
pub const HOPS_EXTENSION: &str = "busbarhops";

/// Events read from the log per round.
const BATCH: usize = 1024;

/// What the router needs.
pub struct Router {
    /// The store to read from and write side effects to.
    pub store: Arc<dyn Store>,
    /// Rules.
    pub catalog: Arc<Catalog>,
    /// Where webhook deliveries go.
    pub engine: Arc<Engine>,
    /// Long-poll wake-ups.
    pub queues: Arc<QueueSignals>,
    /// Most `bus` hops before an event is treated as looping.
    pub max_hops: u32,
    /// Runs filter and transformer plugins.
    pub plugins: Arc<PluginHost>,
}

/// Side effects of one batch that go to the store together.
#[derive(Default)]
struct Writes {
    queue: Vec<NewQueueMessage>,
    forwarded: Vec<NewEvent>,
}

impl Router {
    /// Routes until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut routed: Seq = loop {
            match self.store.route_cursor().await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read routing cursor");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        self.engine.watermark(|w| w.hold(routed, 0));
        let mut committed = self.store.committed();
        loop {
            if *shutdown.borrow() {
                return;
            }
            committed.borrow_and_update();
            let batch = match self.store.read_log(routed, BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the log");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let Some(last) = batch.last() else {
                tokio::select! {
                    _ = committed.changed() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            };
            routed = last.seq;
            self.route_batch(batch).await;
        }
    }

    async fn route_batch(self: &Arc<Self>, batch: Vec<LoggedEvent>) {
        let mut writes = Writes::default();
        let seqs: Vec<Seq> = batch.iter().map(|e| e.seq).collect();
        self.engine.watermark(|w| {
            for &seq in &seqs {
                w.hold(seq, 1);
            }
        });
        for event in batch {
            self.route_one(event, &mut writes).await;
        }
        self.flush(writes).await;
        self.engine.watermark(|w| {
            for &seq in &seqs {
                w.release(seq);
            }
        });
    }

    async fn route_one(self: &Arc<Self>, logged: LoggedEvent, writes: &mut Writes) {
        let Some(routes) = self.catalog.bus(&logged.tenant, &logged.bus) else {
            return;
        };
        if routes.index.is_empty() {
            return;
        }
        let matched = match routes.index.matches_json(&logged.body) {
            Ok(m) if m.is_empty() => return,
            Ok(m) => m,
            Err(e) => {
                tracing::error!(seq = logged.seq, error = %e, "stored event is not JSON; skipped");
                return;
            }
        };
        telemetry::matched(&logged.tenant, matched.len() as u64);
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&logged.body) else {
            return;
        };
        let event = Arc::new(Event::from_validated(map));
        let logged = Arc::new(logged);
        // Each rule fires once per event, whatever order the index reports them in.
        let matched: BTreeSet<String> = matched.into_iter().collect();
        for name in matched {
            let Some(rule) = routes.rules.get(&name).cloned() else {
                continue;
            };
            if rule.filter.is_none() && !matches!(rule.transform, Some(RuleTransform::Plugin(_))) {
                self.apply_rule(&logged, &rule, &event, writes).await;
                continue;
            }
            // Plugin steps run beside the router, so a slow or spinning plugin
            // delays only its own tenant's events, never the log as a whole.
            self.engine.watermark(|w| w.hold(logged.seq, 1));
            let (me, logged, event) = (self.clone(), logged.clone(), event.clone());
            tokio::spawn(async move {
                let _slot = me.plugins.tenant_slot(&logged.tenant).await;
                let mut writes = Writes::default();
                me.apply_rule(&logged, &rule, &event, &mut writes).await;
                me.flush(writes).await;
                me.engine.watermark(|w| w.release(logged.seq));
            });
        }
    }

    /// Filter, transform and hand off one matched rule's deliveries.
    async fn apply_rule(
        &self,
        logged: &LoggedEvent,
        rule: &Arc<Rule>,
        event: &Arc<Event>,
        writes: &mut Writes,
    ) {
        if let Some(filter) = &rule.filter {
            match self.plugins.filter(&logged.tenant, filter, event).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    self.dead_letter_rule(logged, rule, error).await;
                    return;
                }
            }
        }
        match &rule.transform {
            None => {
                self.deliver(logged, rule, event, &logged.body, None, writes)
                    .await
            }
            Some(RuleTransform::Builtin(t)) => {
                let ingestion_time = rfc3339(logged.ingested_ms);
                let rule_arn = format!("busbar:rule/{}/{}/{}", logged.tenant, rule.bus, rule.name);
                let ctx = RenderContext {
                    rule_name: &rule.name,
                    rule_arn: &rule_arn,
                    ingestion_time: &ingestion_time,
                };
                // The renderer reads a JSON value; built only for rules that need it.
                let value = Value::Object(event.as_map().clone());
                match t.render(&value, &ctx) {
                    Ok(text) => {
                        let body = Some(Arc::<str>::from(text));
                        self.deliver(logged, rule, event, &logged.body, body, writes)
                            .await;
                    }
                    Err(e) => {
                        let error = AttemptError {
                            code: e.code().into(),
                            message: e.to_string(),
                            status: None,
                        };
                        self.dead_letter_rule(logged, rule, error).await;
                    }
                }
            }
            Some(RuleTransform::Plugin(binding)) => {
                match self.plugins.transform(&logged.tenant, binding, event).await {
                    Ok(outputs) => {
                        for out in outputs {
                            let bytes = Bytes::from(out.to_json_bytes());
                            self.deliver(logged, rule, &Arc::new(out), &bytes, None, writes)
                                .await;
                        }
                    }
                    Err(error) => self.dead_letter_rule(logged, rule, error).await,
                }
            }
        }
    }

    /// Hands one (possibly transformed) event to every target of the rule.
    async fn deliver(
        &self,
        logged: &LoggedEvent,
        rule: &Arc<Rule>,
        event: &Arc<Event>,
        event_bytes: &Bytes,
        body: Option<Arc<str>>,
        writes: &mut Writes,
    ) {
        for (index, target) in rule.targets.iter().enumerate() {
            match &target.kind {
                TargetKind::Http(_) | TargetKind::Wasm(_) => {
                    self.engine.watermark(|w| w.hold(logged.seq, 1));
                    self.engine.dispatch(Delivery {
                        seq: Some(logged.seq),
                        job_id: None,
                        tenant: logged.tenant.clone(),
                        rule: rule.clone(),
                        target: index,
                        event: event.clone(),
                        event_bytes: event_bytes.clone(),
                        body: body.clone(),
                        attempts: 0,
                        ingested_ms: logged.ingested_ms,
                    });
                }
                TargetKind::Queue { queue } => writes.queue.push(NewQueueMessage {
                    tenant: logged.tenant.clone(),
                    queue: queue.clone(),
                    body: body
                        .as_ref()
                        .map(|b| Bytes::from(b.as_bytes().to_vec()))
                        .unwrap_or_else(|| event_bytes.clone()),
                }),
                TargetKind::Bus { bus } => {
                    self.forward(logged, event, rule, &target.id, bus, writes)
                        .await
                }
            }
        }
    }

    /// Records a rule-level failure (filter, transform) against each of its targets.
    async fn dead_letter_rule(&self, logged: &LoggedEvent, rule: &Rule, error: AttemptError) {
        tracing::warn!(tenant = %logged.tenant, rule = %rule.name, event_id = %logged.event_id, code = %error.code, "{}", error.message);
        for target in &rule.targets {
            let job = self.job(logged, rule, &target.id, error.clone());
            self.engine
                .dead_letter_job(None, job, "permanent", rule.dead_letter)
                .await;
        }
    }

    /// Sends an event on to another bus of the tenant, counting hops to stop loops.
    async fn forward(
        &self,
        logged: &LoggedEvent,
        event: &Event,
        rule: &Rule,
        target: &str,
        bus: &str,
        writes: &mut Writes,
    ) {
        let hops = event
            .as_map()
            .get(HOPS_EXTENSION)
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if hops >= u64::from(self.max_hops) {
            let error = AttemptError {
                code: "loop_detected".into(),
                message: format!(
                    "event passed through {hops} bus targets (limit {})",
                    self.max_hops
                ),
                status: None,
            };
            let job = self.job(logged, rule, target, error);
            self.engine
                .dead_letter_job(None, job, "permanent", rule.dead_letter)
                .await;
            return;
        }
        let mut map = event.as_map().clone();
        map.insert(HOPS_EXTENSION.to_owned(), Value::from(hops + 1));
        let forwarded = Event::from_validated(map);
        writes.forwarded.push(NewEvent {
            tenant: logged.tenant.clone(),
            bus: bus.to_owned(),
            event_id: logged.event_id.clone(),
            body: Bytes::from(forwarded.to_json_bytes()),
            ingested_ms: now_ms(),
        });
    }

    fn job(&self, logged: &LoggedEvent, rule: &Rule, target: &str, error: AttemptError) -> NewJob {
        NewJob {
            tenant: logged.tenant.clone(),
            bus: rule.bus.clone(),
            rule: rule.name.clone(),
            target: target.to_owned(),
            event_id: logged.event_id.clone(),
            event: logged.body.clone(),
            body: None,
            attempts: 0,
            ingested_ms: logged.ingested_ms,
            due_ms: now_ms(),
            last_error: Some(error),
        }
    }

    /// Writes the batch's queue messages and forwarded events, retrying until
    /// the store takes them: the batch is not routed until they are durable.
    async fn flush(&self, writes: Writes) {
        let mut backoff = Duration::from_millis(10);
        if !writes.queue.is_empty() {
            while let Err(e) = self.store.queue_push(writes.queue.clone()).await {
                tracing::error!(error = %e, "cannot write queue messages; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            let mut seen = BTreeSet::new();
            for m in &writes.queue {
                if seen.insert((&m.tenant, &m.queue)) {
                    self.queues.signal(&m.tenant, &m.queue);
                }
            }
        }
        if !writes.forwarded.is_empty() {
            while let Err(e) = self.store.append(writes.forwarded.clone()).await {
                tracing::error!(error = %e, "cannot forward events; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
