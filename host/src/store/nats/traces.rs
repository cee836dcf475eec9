//! Per-event traces on JetStream: the table `P_TRACES` (one message per
//! key).
//!
//! - `t.<tenant>.<bus>.<event id>.<received ms>`: a trace (a JSON header
//!   line, then the event). Recording it again replaces it (the key keeps
//!   one message); a fact is a compare-and-set update of it.
//! - `f.<tenant>.<bus>.<event id>.<random>`: a fact that arrived before its
//!   trace, applied (and purged) when the trace is recorded.
//!
//! Routing acknowledges a log entry only once its trace is written, so
//! the trace writes of a batch go side by side (`WRITERS` events at a
//! time; one event's writes in order): written one after another, each
//! paying its round trips, they capped a node at a few hundred routed
//! events a second on a 3-server cluster.
//!
//! An event appended but not routed has no record yet: [`Traces::trace`]
//! then reads the log's unrouted tail (after the routing consumer's ack
//! floor, at most [`TAIL_SCAN`] messages) for it, as SQLite does — so the
//! append path writes nothing extra.
//!
//! Search and expiry walk the tenant's (or every) trace key with stream
//! leader reads, one request per trace, and filter and order in the node:
//! correct, and fine for thousands of traces per tenant; a larger
//! deployment would keep a node-local index fed by a consumer of the
//! table.
//!
//! A fact and the record of its trace may race: the fact reads "no trace"
//! and waits as `f.…` while the recorder, having read the waiting facts a
//! moment before, writes the trace without it. So each side looks again
//! after its write — the recorder for facts that arrived meanwhile, the
//! fact's writer for a trace recorded meanwhile — and one of any two such
//! writes sees the other. Whoever applies a waiting fact first claims it
//! with a compare-and-set tombstone, so it is applied once.

use super::log::{Meta, ROUTER};
use super::table::{self, Expect, TableError};
use super::{NatsStore, frame, unframe};
use crate::store::traces::{
    Trace, TraceBody, TraceCursor, TraceFact, TraceKey, TraceQuery, TraceState, TraceSummary,
    Traces,
};
use crate::store::{Millis, StoreResult};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// Most unrouted log entries [`Traces::trace`] looks through.
const TAIL_SCAN: usize = 10_000;

/// A trace's header line (the event follows it).
#[derive(Serialize, Deserialize)]
struct Head {
    tenant: String,
    bus: String,
    event_id: String,
    received_ms: Millis,
    source: String,
    event_type: String,
    size_bytes: u64,
    replay: Option<String>,
    body: TraceBody,
    state: TraceState,
}

/// A fact waiting for its trace.
#[derive(Serialize, Deserialize)]
struct Waiting {
    received_ms: Option<Millis>,
    fact: TraceFact,
    /// When it arrived (on the bus's clock).
    added_ms: Millis,
}

fn encode(t: &Trace) -> StoreResult<bytes::Bytes> {
    frame(
        &Head {
            tenant: t.tenant.clone(),
            bus: t.bus.clone(),
            event_id: t.event_id.clone(),
            received_ms: t.received_ms,
            source: t.source.clone(),
            event_type: t.event_type.clone(),
            size_bytes: t.size_bytes,
            replay: t.replay.clone(),
            body: t.body.clone(),
            state: t.state,
        },
        &t.event,
    )
}

fn decode(record: &table::Record) -> StoreResult<Option<Trace>> {
    let Some(value) = &record.value else {
        return Ok(None);
    };
    let (h, event) = unframe::<Head>(value)?;
    Ok(Some(Trace {
        tenant: h.tenant,
        bus: h.bus,
        event_id: h.event_id,
        received_ms: h.received_ms,
        source: h.source,
        event_type: h.event_type,
        size_bytes: h.size_bytes,
        event,
        position: None,
        replay: h.replay,
        head_in_log: false,
        body: h.body,
        state: h.state,
    }))
}

/// The key of a trace.
fn trace_key(tenant: &str, bus: &str, event_id: &str, received_ms: Millis) -> String {
    format!("t.{}.{received_ms}", table::key(&[tenant, bus, event_id]))
}

/// A stored trace with its key and revision.
struct Found {
    key: String,
    rev: u64,
    trace: Trace,
}

impl NatsStore {
    /// Every trace under a key filter.
    async fn traces_under(&self, filter: &str) -> StoreResult<Vec<Found>> {
        let s = &self.inner;
        let mut out = Vec::new();
        for (key, record) in s
            .traces
            .scan(filter)
            .await
            .map_err(|e| e.into_store(s, "read traces"))?
        {
            if let Some(trace) = decode(&record)? {
                out.push(Found {
                    key,
                    rev: record.rev,
                    trace,
                });
            }
        }
        Ok(out)
    }

    /// The trace a fact's key names: the one received then, or the newest.
    async fn trace_for(&self, k: &TraceKey) -> StoreResult<Option<Found>> {
        let s = &self.inner;
        match k.received_ms {
            Some(at) => {
                let key = trace_key(&k.tenant, &k.bus, &k.event_id, at);
                let Some(record) = s
                    .traces
                    .get(&key)
                    .await
                    .map_err(|e| e.into_store(s, "read a trace"))?
                else {
                    return Ok(None);
                };
                Ok(decode(&record)?.map(|trace| Found {
                    key,
                    rev: record.rev,
                    trace,
                }))
            }
            None => {
                let filter = format!("t.{}.*", table::key(&[&k.tenant, &k.bus, &k.event_id]));
                Ok(newest(self.traces_under(&filter).await?))
            }
        }
    }

    /// Takes a waiting fact to apply it: a tombstone at the revision it was
    /// read at, so of two writers that find it, one applies it.
    async fn claim(&self, key: &str, rev: u64) -> StoreResult<bool> {
        let s = &self.inner;
        match s.traces.put(key, None, Expect::Rev(rev)).await {
            Ok(_) => Ok(true),
            Err(TableError::Conflict) => Ok(false),
            Err(e) => Err(e.into_store(s, "claim a trace fact")),
        }
    }

    /// The facts waiting for event `id`'s trace received at `received_ms`,
    /// claimed, with their keys.
    async fn claim_waiting(
        &self,
        id: &str,
        received_ms: Millis,
    ) -> StoreResult<Vec<(String, TraceFact)>> {
        let s = &self.inner;
        let waiting = s
            .traces
            .scan(&format!("f.{id}.*"))
            .await
            .map_err(|e| e.into_store(s, "read trace facts"))?;
        let mut claimed = Vec::new();
        for (key, record) in waiting {
            let Some(w) = table::parse::<Waiting>(&record)? else {
                continue;
            };
            if w.received_ms.is_none_or(|at| at == received_ms)
                && self.claim(&key, record.rev).await?
            {
                claimed.push((key, w.fact));
            }
        }
        Ok(claimed)
    }

    /// Records one trace, applying the facts that arrived before it.
    async fn record_trace(&self, mut trace: Trace) -> StoreResult<()> {
        let s = &self.inner;
        let id = table::key(&[&trace.tenant, &trace.bus, &trace.event_id]);
        let claimed = self.claim_waiting(&id, trace.received_ms).await?;
        for (_, fact) in &claimed {
            trace.apply(fact);
        }
        let key = trace_key(
            &trace.tenant,
            &trace.bus,
            &trace.event_id,
            trace.received_ms,
        );
        s.traces
            .put(&key, Some(encode(&trace)?), Expect::Any)
            .await
            .map_err(|e| e.into_store(s, "record a trace"))?;
        // A fact that found no trace just before this write waits now, and
        // its writer may have looked again before it, too: apply it here.
        let late = self.claim_waiting(&id, trace.received_ms).await?;
        let this = TraceKey {
            tenant: trace.tenant.clone(),
            bus: trace.bus.clone(),
            event_id: trace.event_id.clone(),
            received_ms: Some(trace.received_ms),
        };
        for (_, fact) in &late {
            self.add_trace_fact(&this, fact).await?;
        }
        for (key, _) in claimed.iter().chain(&late) {
            s.traces
                .remove(key)
                .await
                .map_err(|e| e.into_store(s, "record a trace"))?;
        }
        Ok(())
    }

    /// Applies one fact to its trace (compare-and-set), or keeps it until
    /// the trace is recorded.
    async fn add_trace_fact(&self, k: &TraceKey, fact: &TraceFact) -> StoreResult<()> {
        let s = &self.inner;
        loop {
            let Some(mut found) = self.trace_for(k).await? else {
                if fact.waits_for_trace() {
                    let key = format!(
                        "f.{}.{}",
                        table::key(&[&k.tenant, &k.bus, &k.event_id]),
                        super::random_u64()
                    );
                    let waiting = Waiting {
                        received_ms: k.received_ms,
                        fact: fact.clone(),
                        added_ms: s.now(),
                    };
                    let rev = s
                        .traces
                        .put(&key, Some(table::json(&waiting)?), Expect::Any)
                        .await
                        .map_err(|e| e.into_store(s, "keep a trace fact"))?;
                    // A trace recorded since the read above may have missed
                    // this fact: if so, take it back and apply it.
                    if self.trace_for(k).await?.is_some() && self.claim(&key, rev).await? {
                        s.traces
                            .remove(&key)
                            .await
                            .map_err(|e| e.into_store(s, "keep a trace fact"))?;
                        continue;
                    }
                }
                return Ok(());
            };
            found.trace.apply(fact);
            match s
                .traces
                .put(
                    &found.key,
                    Some(encode(&found.trace)?),
                    Expect::Rev(found.rev),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(TableError::Conflict) => continue,
                Err(e) => return Err(e.into_store(s, "add a trace fact")),
            }
        }
    }

    /// The newest unrouted log entry of a tenant's event, as a trace.
    async fn unrouted(
        &self,
        tenant: &str,
        event_id: &str,
        bus: Option<&str>,
    ) -> StoreResult<Option<Trace>> {
        let s = &self.inner;
        let floor = match s.log.consumer_info(ROUTER).await {
            Ok(info) => info.ack_floor.stream_sequence,
            Err(e)
                if e.kind() == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound =>
            {
                0
            }
            Err(e) => return Err(s.fail("read the log", e)),
        };
        let filter = match bus {
            Some(bus) => s.subject("log", &[tenant, bus]),
            None => format!("{}.*", s.subject("log", &[tenant])),
        };
        let mut found: Option<Trace> = None;
        let mut seq = floor + 1;
        for _ in 0..TAIL_SCAN {
            let Some(m) = s.first_at_or_after(&s.log, &filter, seq).await? else {
                break;
            };
            seq = m.sequence + 1;
            let (meta, body) = unframe::<Meta>(&m.payload)?;
            if meta.event_id == event_id
                && found
                    .as_ref()
                    .is_none_or(|f| f.received_ms <= meta.ingested_ms)
            {
                found = Some(Trace::received(&meta.event(body)));
            }
        }
        Ok(found)
    }
}

/// The newest of some traces (by received time, then revision).
fn newest(found: Vec<Found>) -> Option<Found> {
    found
        .into_iter()
        .max_by_key(|f| (f.trace.received_ms, f.rev))
}

/// How many events' traces (or facts) are written at once. Each write is a
/// few round trips to the stream's leader (read the waiting facts, put,
/// purge), and routing acknowledges its log entries only once their traces
/// are written: one event at a time capped a node at a few hundred routed
/// events a second on a 3-server cluster, whatever its CPU.
const WRITERS: usize = 64;

/// Splits `items` into groups of one event each (tenant, bus, event id),
/// keeping their order within a group: the writes of one event (a trace
/// recorded twice, facts about it) go one after another, different events
/// side by side.
fn by_event<T>(items: Vec<T>, event: impl Fn(&T) -> (&String, &String, &String)) -> Vec<Vec<T>> {
    let mut index: HashMap<(String, String, String), usize> = HashMap::new();
    let mut groups: Vec<Vec<T>> = Vec::new();
    for item in items {
        let (tenant, bus, id) = event(&item);
        let key = (tenant.clone(), bus.clone(), id.clone());
        match index.get(&key) {
            Some(&i) => groups[i].push(item),
            None => {
                index.insert(key, groups.len());
                groups.push(vec![item]);
            }
        }
    }
    groups
}

/// Runs `write` for every group, `WRITERS` at a time; every group is
/// tried, and the first error is returned.
async fn all_of<T, F, Fut>(groups: Vec<Vec<T>>, write: F) -> StoreResult<()>
where
    F: Fn(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = StoreResult<()>>,
{
    let results: Vec<StoreResult<()>> = futures_util::stream::iter(groups.into_iter().map(write))
        .buffer_unordered(WRITERS)
        .collect()
        .await;
    results.into_iter().collect()
}

/// The order of search results: newest first (received time, then key).
fn search_order(f: &Found) -> (Millis, &str) {
    (f.trace.received_ms, f.key.as_str())
}

#[async_trait]
impl Traces for NatsStore {
    async fn record_traces(&self, traces: Arc<[Trace]>) -> StoreResult<()> {
        let groups = by_event(traces.to_vec(), |t| (&t.tenant, &t.bus, &t.event_id));
        all_of(groups, |group| async move {
            for trace in group {
                self.record_trace(trace).await?;
            }
            Ok(())
        })
        .await
    }

    async fn add_trace_facts(&self, facts: Arc<[(TraceKey, TraceFact)]>) -> StoreResult<()> {
        let groups = by_event(facts.to_vec(), |(k, _)| (&k.tenant, &k.bus, &k.event_id));
        all_of(groups, |group| async move {
            for (k, fact) in group {
                self.add_trace_fact(&k, &fact).await?;
            }
            Ok(())
        })
        .await
    }

    async fn trace(
        &self,
        tenant: &str,
        event_id: &str,
        bus: Option<&str>,
    ) -> StoreResult<Option<Trace>> {
        let filter = match bus {
            Some(bus) => format!("t.{}.*", table::key(&[tenant, bus, event_id])),
            None => format!(
                "t.{}.*.{}.*",
                table::key(&[tenant]),
                table::key(&[event_id])
            ),
        };
        let recorded = newest(self.traces_under(&filter).await?).map(|f| f.trace);
        let unrouted = self.unrouted(tenant, event_id, bus).await?;
        Ok(match (recorded, unrouted) {
            (Some(r), Some(u)) if u.received_ms > r.received_ms => Some(u),
            (Some(r), _) => Some(r),
            (None, u) => u,
        })
    }

    async fn search_traces(
        &self,
        tenant: &str,
        query: &TraceQuery,
        after: Option<&TraceCursor>,
        limit: usize,
    ) -> StoreResult<(Vec<TraceSummary>, Option<TraceCursor>)> {
        let filter = match &query.bus {
            Some(bus) => format!("t.{}.>", table::key(&[tenant, bus])),
            None => format!("t.{}.>", table::key(&[tenant])),
        };
        let after = after.and_then(|c| {
            let (ms, key) = c.as_str().split_once('.')?;
            Some((ms.parse::<Millis>().ok()?, key.to_owned()))
        });
        let mut found: Vec<Found> = self
            .traces_under(&filter)
            .await?
            .into_iter()
            .filter(|f| query.matches(&f.trace))
            .filter(|f| {
                after
                    .as_ref()
                    .is_none_or(|(ms, key)| search_order(f) < (*ms, key.as_str()))
            })
            .collect();
        found.sort_by(|a, b| search_order(b).cmp(&search_order(a)));
        let more = found.len() > limit;
        found.truncate(limit);
        let next = match found.last() {
            Some(last) if more => Some(TraceCursor(format!(
                "{}.{}",
                last.trace.received_ms, last.key
            ))),
            _ => None,
        };
        Ok((
            found.iter().map(|f| TraceSummary::from(&f.trace)).collect(),
            next,
        ))
    }

    async fn expire_traces(
        &self,
        before: Millis,
        keep_at_most: u64,
        max: usize,
    ) -> StoreResult<u64> {
        let s = &self.inner;
        let mut all: Vec<(Millis, String)> = self
            .traces_under("t.>")
            .await?
            .into_iter()
            .map(|f| (f.trace.received_ms, f.key))
            .collect();
        all.sort();
        let old = all.iter().take_while(|(at, _)| *at < before).count();
        let left = (all.len() - old) as u64;
        let over = usize::try_from(left.saturating_sub(keep_at_most)).unwrap_or(usize::MAX);
        let mut dropped = 0;
        for (_, key) in all.iter().take((old + over).min(max)) {
            s.traces
                .remove(key)
                .await
                .map_err(|e| e.into_store(s, "expire traces"))?;
            dropped += 1;
        }
        // Facts that waited for a trace that never came.
        for (key, record) in s
            .traces
            .scan("f.>")
            .await
            .map_err(|e| e.into_store(s, "expire traces"))?
        {
            if let Some(w) = table::parse::<Waiting>(&record)?
                && w.received_ms.unwrap_or(w.added_ms) < before
            {
                s.traces
                    .remove(&key)
                    .await
                    .map_err(|e| e.into_store(s, "expire traces"))?;
            }
        }
        Ok(dropped)
    }
}
