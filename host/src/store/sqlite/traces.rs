//! [`Traces`] on SQLite: one `traces` row per routed event (the searchable
//! head in columns, the routing record as JSON in `body`), one
//! `trace_rules` row per matched rule (search by rule), and
//! `trace_pending` for facts that arrived before their trace. Every index
//! starts with the tenant and ends with the received time, so a search walks
//! one index newest first and stops after a page. An event id finds its
//! trace through [`trace_ids`] (recent traces in memory, older ones merged
//! into `trace_ids` in bulk), not through an index written per trace. A
//! trace made from a log entry keeps the entry's position (`seq`) instead
//! of a copy of the event; the log keeps the entry while a trace refers to
//! it (`EventLog::prune`), and a lookup reads the event from there.

use super::SqliteStore;
use super::log::{logged_event, route_cursor};
use super::trace_ids::{self, RecentTraceIds};
use crate::store::traces::TraceBody;
use crate::store::{
    Millis, StoreResult, Trace, TraceCursor, TraceFact, TraceKey, TraceQuery, TraceState,
    TraceSummary, Traces,
};
use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::types::Value as Sql;
use rusqlite::{OptionalExtension, Transaction, params, params_from_iter};

/// The rule names of a trace, as stored in `traces.rules` (one per line).
fn rule_names(body: &TraceBody) -> String {
    let mut names: Vec<&str> = body.rules.iter().map(|r| r.rule.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names.join("\n")
}

/// Adds (`add`) or removes the `trace_rules` rows of a trace.
fn index_rules(
    tx: &Transaction<'_>,
    tenant: &str,
    rules: &str,
    received_ms: Millis,
    id: i64,
    add: bool,
) -> rusqlite::Result<()> {
    let sql = if add {
        "INSERT OR IGNORE INTO trace_rules (tenant, rule, received_ms, trace) VALUES (?, ?, ?, ?)"
    } else {
        "DELETE FROM trace_rules WHERE tenant = ? AND rule = ? AND received_ms = ? AND trace = ?"
    };
    let mut stmt = tx.prepare_cached(sql)?;
    for rule in rules.split('\n').filter(|r| !r.is_empty()) {
        stmt.execute(params![tenant, rule, received_ms, id])?;
    }
    Ok(())
}

/// Takes the facts waiting for `trace` and applies them.
fn apply_pending(tx: &Transaction<'_>, trace: &mut Trace) -> anyhow::Result<()> {
    let waiting: Vec<(i64, Option<Millis>, String)> = tx
        .prepare_cached(
            "SELECT id, received_ms, fact FROM trace_pending \
             WHERE tenant = ? AND event_id = ? AND bus = ? ORDER BY id",
        )?
        .query_map(params![trace.tenant, trace.event_id, trace.bus], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut delete = tx.prepare_cached("DELETE FROM trace_pending WHERE id = ?")?;
    for (id, received, fact) in waiting {
        if received.is_some_and(|ms| ms != trace.received_ms) {
            continue;
        }
        if let Ok(fact) = serde_json::from_str::<TraceFact>(&fact) {
            trace.apply(&fact);
        }
        delete.execute([id])?;
    }
    Ok(())
}

const COLUMNS: &str =
    "id, tenant, bus, event_id, received_ms, source, type, state, size, replay, body, event, seq";
/// [`COLUMNS`] without the event itself (an empty blob in its place): a
/// fact changes the routing record, never the event, so it need not read it.
const RECORD_COLUMNS: &str =
    "id, tenant, bus, event_id, received_ms, source, type, state, size, replay, body, X'', seq";

fn read_trace(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, Trace)> {
    let state: String = r.get(7)?;
    let body: String = r.get(10)?;
    Ok((
        r.get(0)?,
        Trace {
            tenant: r.get(1)?,
            bus: r.get(2)?,
            event_id: r.get(3)?,
            received_ms: r.get(4)?,
            source: r.get(5)?,
            event_type: r.get(6)?,
            state: TraceState::parse(&state).unwrap_or(TraceState::InFlight),
            size_bytes: r.get::<_, i64>(8)?.max(0) as u64,
            replay: r.get(9)?,
            body: serde_json::from_str(&body).unwrap_or_default(),
            event: Bytes::from(r.get::<_, Vec<u8>>(11)?),
            position: r.get(12)?,
        },
    ))
}

/// Writes a trace's changed body and state.
fn update(tx: &Transaction<'_>, id: i64, trace: &Trace) -> anyhow::Result<()> {
    tx.prepare_cached("UPDATE traces SET state = ?, rules = ?, body = ? WHERE id = ?")?
        .execute(params![
            trace.state.as_str(),
            rule_names(&trace.body),
            serde_json::to_string(&trace.body)?,
            id
        ])?;
    Ok(())
}

/// Whether any fact waits for its trace (usually none: a fact beats its
/// trace only when a retry is faster than the routing record's commit).
fn any_pending(tx: &Transaction<'_>) -> rusqlite::Result<bool> {
    tx.prepare_cached("SELECT EXISTS (SELECT 1 FROM trace_pending)")?
        .query_row([], |r| r.get(0))
}

/// The trace rows that may hold `tenant`'s event `event_id` (received at
/// `received_ms`, where known): the recent ones in memory and the merged
/// ones in `trace_ids` — unless no merged trace was received that late. A
/// key is a hash, so callers match each row they read against the event.
fn candidates(
    tx: &Transaction<'_>,
    recent: &RecentTraceIds,
    tenant: &str,
    event_id: &str,
    received_ms: Option<Millis>,
) -> rusqlite::Result<Vec<i64>> {
    let key = trace_ids::key(tenant, event_id);
    let mut rows = recent.rows(key);
    if received_ms.is_none_or(|ms| recent.may_be_merged(ms)) {
        rows.extend(trace_ids::merged_rows(tx, key)?);
    }
    Ok(rows)
}

/// The newest trace of `tenant`'s event `event_id` (on `bus`, received at
/// `received_ms`, where given), read with `columns`.
fn find(
    tx: &Transaction<'_>,
    recent: &RecentTraceIds,
    columns: &str,
    key: (&str, &str, Option<&str>, Option<Millis>),
) -> anyhow::Result<Option<(i64, Trace)>> {
    let (tenant, event_id, bus, received_ms) = key;
    let mut newest: Option<(i64, Trace)> = None;
    for row in candidates(tx, recent, tenant, event_id, received_ms)? {
        let found = tx
            .prepare_cached(&format!(
                "SELECT {columns} FROM traces WHERE id = ?1 AND tenant = ?2 AND event_id = ?3 \
                 AND (?4 IS NULL OR bus = ?4) AND (?5 IS NULL OR received_ms = ?5)"
            ))?
            .query_row(params![row, tenant, event_id, bus, received_ms], read_trace)
            .optional()?;
        if let Some((id, trace)) = found
            && newest
                .as_ref()
                .is_none_or(|(nid, n)| (trace.received_ms, id) > (n.received_ms, *nid))
        {
            newest = Some((id, trace));
        }
    }
    Ok(newest)
}

fn record(
    tx: &Transaction<'_>,
    recent: &RecentTraceIds,
    mut trace: Trace,
    pending: bool,
) -> anyhow::Result<()> {
    if pending {
        apply_pending(tx, &mut trace)?;
    }
    let rules = rule_names(&trace.body);
    let before = find(
        tx,
        recent,
        RECORD_COLUMNS,
        (
            &trace.tenant,
            &trace.event_id,
            Some(&trace.bus),
            Some(trace.received_ms),
        ),
    )?;
    if let Some((id, old)) = before {
        // Recorded before (the event was routed again after a restart): replace.
        index_rules(
            tx,
            &trace.tenant,
            &rule_names(&old.body),
            trace.received_ms,
            id,
            false,
        )?;
        update(tx, id, &trace)?;
        index_rules(tx, &trace.tenant, &rules, trace.received_ms, id, true)?;
        return Ok(());
    }
    let body = serde_json::to_string(&trace.body)?;
    // A trace of a log entry refers to the entry, which the log keeps as
    // long as the trace (see `prune`): the copy was two thirds of the
    // bytes a trace wrote, and written again at every checkpoint.
    let event: &[u8] = if trace.position.is_some() {
        &[]
    } else {
        &trace.event
    };
    tx.prepare_cached(
        "INSERT INTO traces (tenant, bus, event_id, received_ms, source, type, state, size, replay, rules, body, event, seq) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        trace.tenant,
        trace.bus,
        trace.event_id,
        trace.received_ms,
        trace.source,
        trace.event_type,
        trace.state.as_str(),
        trace.size_bytes as i64,
        trace.replay,
        rules,
        body,
        event,
        trace.position
    ])?;
    let id = tx.last_insert_rowid();
    recent.note(trace_ids::key(&trace.tenant, &trace.event_id), id);
    index_rules(tx, &trace.tenant, &rules, trace.received_ms, id, true)?;
    Ok(())
}

fn add_fact(
    tx: &Transaction<'_>,
    recent: &RecentTraceIds,
    key: &TraceKey,
    fact: &TraceFact,
    now: Millis,
) -> anyhow::Result<()> {
    let found = find(
        tx,
        recent,
        RECORD_COLUMNS,
        (&key.tenant, &key.event_id, Some(&key.bus), key.received_ms),
    )?;
    match found {
        Some((id, mut trace)) => {
            let before = rule_names(&trace.body);
            trace.apply(fact);
            let after = rule_names(&trace.body);
            if before != after {
                index_rules(tx, &trace.tenant, &before, trace.received_ms, id, false)?;
                index_rules(tx, &trace.tenant, &after, trace.received_ms, id, true)?;
            }
            update(tx, id, &trace)?;
        }
        None if fact.waits_for_trace() => {
            tx.prepare_cached(
                "INSERT INTO trace_pending (tenant, bus, event_id, received_ms, at_ms, fact) VALUES (?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                key.tenant,
                key.bus,
                key.event_id,
                key.received_ms,
                now,
                serde_json::to_string(fact)?
            ])?;
        }
        None => {}
    }
    Ok(())
}

/// A search as SQL: the driving index (or the rules table) and the filters.
fn search_sql(
    query: &TraceQuery,
    tenant: &str,
    after: Option<(Millis, i64)>,
    limit: usize,
) -> (String, Vec<Sql>) {
    let mut args: Vec<Sql> = vec![Sql::Text(tenant.to_owned())];
    let mut filters = Vec::new();
    let add = |filters: &mut Vec<String>, args: &mut Vec<Sql>, sql: &str, v: Sql| {
        args.push(v);
        filters.push(format!("{sql} ?{}", args.len()));
    };
    let text = |s: &str| Sql::Text(s.to_owned());
    if let Some(b) = &query.bus {
        add(&mut filters, &mut args, "t.bus =", text(b));
    }
    if let Some(s) = &query.source {
        add(&mut filters, &mut args, "t.source =", text(s));
    }
    if let Some(s) = &query.event_type {
        add(&mut filters, &mut args, "t.type =", text(s));
    }
    if let Some(s) = query.state {
        add(&mut filters, &mut args, "t.state =", text(s.as_str()));
    }
    if let Some(f) = query.from_ms {
        add(&mut filters, &mut args, "t.received_ms >=", Sql::Integer(f));
    }
    if let Some(to) = query.to_ms {
        add(&mut filters, &mut args, "t.received_ms <", Sql::Integer(to));
    }
    let cols = "t.id, t.event_id, t.bus, t.source, t.type, t.received_ms, t.state";
    let sql = if let Some(rule) = &query.rule {
        args.push(text(rule));
        let rule_arg = args.len();
        let mut where_ = format!("r.tenant = ?1 AND r.rule = ?{rule_arg} AND t.tenant = ?1");
        for f in &filters {
            where_.push_str(" AND ");
            where_.push_str(f);
        }
        if let Some((ms, id)) = after {
            args.push(Sql::Integer(ms));
            args.push(Sql::Integer(id));
            where_.push_str(&format!(
                " AND (r.received_ms, r.trace) < (?{}, ?{})",
                args.len() - 1,
                args.len()
            ));
        }
        format!(
            "SELECT {cols} FROM trace_rules r JOIN traces t ON t.id = r.trace WHERE {where_} \
             ORDER BY r.received_ms DESC, r.trace DESC LIMIT {}",
            limit + 1
        )
    } else {
        // The most selective filter's index drives the walk, newest first.
        let index = if query.source.is_some() {
            "traces_source"
        } else if query.event_type.is_some() {
            "traces_type"
        } else if query.state.is_some() {
            "traces_state"
        } else if query.bus.is_some() {
            "traces_bus"
        } else {
            "traces_time"
        };
        let mut where_ = "t.tenant = ?1".to_owned();
        for f in &filters {
            where_.push_str(" AND ");
            where_.push_str(f);
        }
        if let Some((ms, id)) = after {
            args.push(Sql::Integer(ms));
            args.push(Sql::Integer(id));
            where_.push_str(&format!(
                " AND (t.received_ms, t.id) < (?{}, ?{})",
                args.len() - 1,
                args.len()
            ));
        }
        format!(
            "SELECT {cols} FROM traces t INDEXED BY {index} WHERE {where_} \
             ORDER BY t.received_ms DESC, t.id DESC LIMIT {}",
            limit + 1
        )
    };
    (sql, args)
}

impl SqliteStore {
    /// Fills in the event of a trace that refers to its log entry (such a
    /// row stores no copy).
    async fn with_logged_event(&self, mut trace: Trace) -> StoreResult<Trace> {
        let Some(seq) = trace.position else {
            return Ok(trace);
        };
        let (tenant, event_id) = (trace.tenant.clone(), trace.event_id.clone());
        let body: Option<Vec<u8>> = self
            .run(move |tx| {
                Ok(tx
                    .prepare_cached(
                        "SELECT body FROM events WHERE seq = ? AND tenant = ? AND event_id = ?",
                    )?
                    .query_row(params![seq, tenant, event_id], |r| r.get(0))
                    .optional()?)
            })
            .await?;
        if let Some(body) = body {
            trace.event = Bytes::from(body);
        }
        Ok(trace)
    }

    /// The lowest log position a stored trace refers to (`None`: none does).
    pub(super) async fn lowest_traced_seq(&self) -> StoreResult<Option<i64>> {
        self.run_traces(|tx| {
            Ok(tx
                .prepare_cached("SELECT MIN(seq) FROM traces WHERE seq IS NOT NULL")?
                .query_row([], |r| r.get(0))?)
        })
        .await
    }
}

#[async_trait]
impl Traces for SqliteStore {
    async fn record_traces(&self, traces: Vec<Trace>) -> StoreResult<()> {
        if traces.is_empty() {
            return Ok(());
        }
        let recent = self.inner.recent_traces.clone();
        let merge_at = self.inner.trace_merge_at;
        let forget = recent.clone();
        self.run_traces_then(
            move |tx| {
                let pending = any_pending(tx)?;
                for trace in traces {
                    record(tx, &recent, trace, pending)?;
                }
                if recent.len() >= merge_at {
                    return trace_ids::merge(tx);
                }
                Ok(None)
            },
            move |merged| {
                if let Some(merged) = merged {
                    forget.forget_merged(merged);
                }
            },
        )
        .await
    }

    async fn add_trace_facts(&self, facts: Vec<(TraceKey, TraceFact)>) -> StoreResult<()> {
        if facts.is_empty() {
            return Ok(());
        }
        let now = self.now_ms();
        let recent = self.inner.recent_traces.clone();
        self.run_traces(move |tx| {
            for (key, fact) in &facts {
                add_fact(tx, &recent, key, fact, now)?;
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
        let (tenant, event_id, bus) = (
            tenant.to_owned(),
            event_id.to_owned(),
            bus.map(str::to_owned),
        );
        // The unrouted tail first: the router records an event's trace
        // before it acknowledges the entry, so an event routed after this
        // read is found below.
        let unrouted = {
            let (tenant, event_id, bus) = (tenant.clone(), event_id.clone(), bus.clone());
            self.run(move |tx| {
                let cursor = route_cursor(tx)?;
                Ok(tx
                    .prepare_cached(
                        "SELECT seq, tenant, bus, event_id, body, ingested_ms, only_rules FROM events \
                         WHERE seq > ?1 AND tenant = ?2 AND event_id = ?3 AND (?4 IS NULL OR bus = ?4) \
                         ORDER BY seq DESC LIMIT 1",
                    )?
                    .query_row(params![cursor, tenant, event_id, bus], logged_event)
                    .optional()?
                    .map(|e| Trace::received(&e)))
            })
            .await?
        };
        let recent = self.inner.recent_traces.clone();
        let recorded = self
            .run_traces(move |tx| {
                Ok(find(
                    tx,
                    &recent,
                    COLUMNS,
                    (&tenant, &event_id, bus.as_deref(), None),
                )?
                .map(|(_, t)| t))
            })
            .await?;
        Ok(match (recorded, unrouted) {
            (Some(r), Some(u)) if u.received_ms > r.received_ms => Some(u),
            (Some(r), _) => Some(self.with_logged_event(r).await?),
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
        let (sql, args) = search_sql(query, tenant, after.and_then(TraceCursor::parts), limit);
        self.run_traces(move |tx| {
            let mut stmt = tx.prepare_cached(&sql)?;
            let mut rows: Vec<(i64, TraceSummary)> = stmt
                .query_map(params_from_iter(args), |r| {
                    let state: String = r.get(6)?;
                    Ok((
                        r.get(0)?,
                        TraceSummary {
                            event_id: r.get(1)?,
                            bus: r.get(2)?,
                            source: r.get(3)?,
                            event_type: r.get(4)?,
                            received_ms: r.get(5)?,
                            state: TraceState::parse(&state).unwrap_or(TraceState::InFlight),
                        },
                    ))
                })?
                .collect::<Result<_, _>>()?;
            let more = rows.len() > limit;
            rows.truncate(limit);
            let next = more
                .then(|| {
                    rows.last()
                        .map(|(id, s)| TraceCursor::at(s.received_ms, *id))
                })
                .flatten();
            Ok((rows.into_iter().map(|(_, s)| s).collect(), next))
        })
        .await
    }

    async fn expire_traces(
        &self,
        before: Millis,
        keep_at_most: u64,
        max: usize,
    ) -> StoreResult<u64> {
        self.run_traces(move |tx| {
            let count: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM traces")?
                .query_row([], |r| r.get(0))?;
            let over = (count.max(0) as u64).saturating_sub(keep_at_most);
            // Traces are recorded about when they are received, so the
            // oldest by id are (nearly) the oldest received: look at those.
            let oldest: Vec<(i64, String, Millis, String, String)> = tx
                .prepare_cached(
                    "SELECT id, tenant, received_ms, rules, event_id FROM traces ORDER BY id LIMIT ?",
                )?
                .query_map([max as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect::<Result<_, _>>()?;
            let mut delete = tx.prepare_cached("DELETE FROM traces WHERE id = ?")?;
            let mut dropped = 0u64;
            for (i, (id, tenant, received_ms, rules, event_id)) in oldest.iter().enumerate() {
                if (i as u64) >= over && *received_ms >= before {
                    continue;
                }
                index_rules(tx, tenant, rules, *received_ms, *id, false)?;
                // A recent trace's key stays in memory until the next merge,
                // which finds no row for it: readers check every row.
                trace_ids::drop_merged(tx, trace_ids::key(tenant, event_id), *id)?;
                delete.execute([id])?;
                dropped += 1;
            }
            tx.prepare_cached("DELETE FROM trace_pending WHERE at_ms < ?")?
                .execute([before])?;
            Ok(dropped)
        })
        .await
    }
}
