//! [`Traces`] on SQLite: one `traces` row per routed event (the searchable
//! head in columns, the routing record as JSON in `body`), one
//! `trace_rules` row per matched rule (search by rule), and
//! `trace_pending` for facts that arrived before their trace. Two indexes
//! serve search (see `TRACES_V4` in `schema.rs` for why only two): a
//! bus's traces newest first with their searchable head, and the traces in
//! an uncommon state; a search walks one of them, or `trace_rules`, newest
//! first and stops after a page or its scan budget. An event id finds its
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
use std::sync::Arc;

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
    // Most traces match no rule: no statement to look up for them.
    if rules.is_empty() {
        return Ok(());
    }
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

/// Inserts a new trace row (see [`record`]).
const INSERT_TRACE: &str = "INSERT INTO traces (tenant, bus, event_id, received_ms, source, \
     type, state, size, replay, rules, body, event, seq) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// Records a trace: a new row through `insert` (prepared once for a whole
/// batch of traces), or the row of an earlier record of it replaced.
fn record(
    tx: &Transaction<'_>,
    insert: &mut rusqlite::CachedStatement<'_>,
    recent: &RecentTraceIds,
    trace: &Trace,
    pending: bool,
) -> anyhow::Result<()> {
    // Facts rarely wait for their trace: copy it only when some may.
    let with_facts;
    let trace = if pending {
        let mut t = trace.clone();
        apply_pending(tx, &mut t)?;
        with_facts = t;
        &with_facts
    } else {
        trace
    };
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
        update(tx, id, trace)?;
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
    insert.execute(params![
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

/// The states most traces end in: `traces_uncommon` leaves them out, so it
/// stays small and a search for any other state walks it instead of a
/// bus's every trace.
const COMMON_STATES: [TraceState; 3] = [
    TraceState::Delivered,
    TraceState::NoMatch,
    TraceState::FilteredOut,
];

/// How many `traces_head` entries one search call scans at most (10–30 ms
/// here at 1,000,000 traces): see [`run_search`].
pub(super) const SEARCH_SCAN: usize = 100_000;

/// How many `traces_head` entries one step of a filtering walk reads from
/// one bus (see [`run_search`]).
const SEARCH_STEP: usize = 1_000;

/// `traces_uncommon`'s `WHERE`, which a statement must repeat to walk it
/// (SQLite does not prove `state = 'retrying'` implies it). Comparisons,
/// not `NOT IN` a list: see `TRACES_V5` in `schema.rs`.
const UNCOMMON_STATE: &str =
    "t.state <> 'delivered' AND t.state <> 'no_match' AND t.state <> 'filtered_out'";

/// A search as SQL: one statement, or one per bus of the tenant.
struct SearchPlan {
    sql: String,
    /// `?1` is the tenant; `?2` the bus in a walk by bus (`NULL` until a
    /// bus is bound, when the walk is per bus).
    args: Vec<Sql>,
    /// Whether `sql` walks one bus (`?2`) and runs once per bus of the
    /// tenant, the walks merged newest first.
    per_bus: bool,
    /// How a walk that filters the head goes in steps (see [`run_search`]).
    steps: Option<Steps>,
}

/// The bounds of one step of a filtering walk: `sql` reads the entries of
/// one bus from just below `upper` down to `lower`; `stop_sql` finds the
/// `lower` that makes a step (its last parameter) entries long.
struct Steps {
    stop_sql: String,
    /// `args` up to the step's bounds, then the step's length.
    stop_args: Vec<Sql>,
    /// Where the (received, id) above the step (exclusive) is, in both
    /// argument lists.
    upper_at: usize,
    /// Where the (received, id) the step ends at (inclusive) is, in `args`.
    lower_at: usize,
    /// The (received, id) the first step starts below: the query's cursor,
    /// or [`START`].
    start: (Millis, i64),
}

/// Above every trace: where a walk without a cursor starts.
const START: (Millis, i64) = (Millis::MAX, i64::MAX);

/// Plans a search. A rule's search walks its `trace_rules` rows; a search
/// for an uncommon state walks `traces_uncommon`; every other walks
/// `traces_head` newest first — the query's bus, or each of the tenant's
/// buses — and filters on the head the index carries, stopping after a
/// page (plus one row, to know whether there is more) or, when it filters,
/// after its scan budget (see [`run_search`]).
fn plan_search(
    query: &TraceQuery,
    tenant: &str,
    after: Option<(Millis, i64)>,
    limit: usize,
) -> SearchPlan {
    let text = |s: &str| Sql::Text(s.to_owned());
    let uncommon = query.state.filter(|s| !COMMON_STATES.contains(s));
    // Whether the walk is by bus: any but a rule's or an uncommon state's,
    // which walk their own index across buses.
    let by_bus = query.bus.is_some() || (query.rule.is_none() && uncommon.is_none());
    let mut args: Vec<Sql> = vec![text(tenant)];
    // The walk's range (tenant, bus, time, cursor, step) and its filters apart.
    let mut range = Vec::new();
    let arg = |args: &mut Vec<Sql>, v: Sql| {
        args.push(v);
        format!("?{}", args.len())
    };
    let and_all = |conditions: &[String]| -> String {
        conditions.iter().map(|c| format!(" AND {c}")).collect()
    };
    if by_bus {
        let bus = arg(&mut args, query.bus.as_deref().map_or(Sql::Null, text));
        range.push(format!("t.bus = {bus}"));
    }
    if let Some(f) = query.from_ms {
        range.push(format!(
            "t.received_ms >= {}",
            arg(&mut args, Sql::Integer(f))
        ));
    }
    if let Some(to) = query.to_ms {
        range.push(format!(
            "t.received_ms < {}",
            arg(&mut args, Sql::Integer(to))
        ));
    }
    let (ms, id) = if query.rule.is_some() {
        ("r.received_ms", "r.trace")
    } else {
        ("t.received_ms", "t.id")
    };
    let order = format!("ORDER BY {ms} DESC, {id} DESC");
    let head_walk = query.rule.is_none() && uncommon.is_none();
    let filters_head =
        query.source.is_some() || query.event_type.is_some() || query.state.is_some();
    let stepped = head_walk && filters_head;
    // A walk in steps starts its first step at the cursor instead: SQLite
    // bounds a walk by one upper (row value) bound only, and would read
    // every step from the cursor down.
    if let Some((after_ms, after_id)) = after.filter(|_| !stepped) {
        let (a, b) = (
            arg(&mut args, Sql::Integer(after_ms)),
            arg(&mut args, Sql::Integer(after_id)),
        );
        range.push(format!("({ms}, {id}) < ({a}, {b})"));
    }
    let steps = stepped.then(|| {
        let upper_at = args.len();
        let (a, b) = (arg(&mut args, Sql::Null), arg(&mut args, Sql::Null));
        range.push(format!("(t.received_ms, t.id) < ({a}, {b})"));
        let mut stop_args = args.clone();
        let length = arg(&mut stop_args, Sql::Null);
        let stop_sql = format!(
            "SELECT t.received_ms, t.id FROM traces t INDEXED BY traces_head \
             WHERE t.tenant = ?1{} {order} LIMIT 1 OFFSET {length}",
            and_all(&range)
        );
        let lower_at = args.len();
        let (a, b) = (arg(&mut args, Sql::Null), arg(&mut args, Sql::Null));
        range.push(format!("(t.received_ms, t.id) >= ({a}, {b})"));
        Steps {
            stop_sql,
            stop_args,
            upper_at,
            lower_at,
            start: after.unwrap_or(START),
        }
    });
    let mut filters = Vec::new();
    if let Some(s) = &query.source {
        filters.push(format!("t.source = {}", arg(&mut args, text(s))));
    }
    if let Some(s) = &query.event_type {
        filters.push(format!("t.type = {}", arg(&mut args, text(s))));
    }
    if let Some(state) = query.state {
        filters.push(format!(
            "t.state = {}",
            arg(&mut args, text(state.as_str()))
        ));
    }
    if uncommon.is_some() {
        filters.push(UNCOMMON_STATE.to_owned());
    }
    range.extend(filters);
    let conditions = and_all(&range);
    let cols = "t.id, t.event_id, t.bus, t.source, t.type, t.received_ms, t.state";
    let sql = if let Some(rule) = &query.rule {
        let rule = arg(&mut args, text(rule));
        format!(
            "SELECT {cols} FROM trace_rules r JOIN traces t ON t.id = r.trace \
             WHERE r.tenant = ?1 AND r.rule = {rule} AND t.tenant = ?1{conditions} \
             {order} LIMIT {}",
            limit + 1
        )
    } else {
        let index = if uncommon.is_some() {
            "traces_uncommon"
        } else {
            "traces_head"
        };
        format!(
            "SELECT {cols} FROM traces t INDEXED BY {index} WHERE t.tenant = ?1{conditions} \
             {order} LIMIT {}",
            limit + 1
        )
    };
    SearchPlan {
        sql,
        args,
        per_bus: query.bus.is_none() && by_bus,
        steps,
    }
}

/// The buses `tenant` has traces on, read from `traces_head` one step per
/// bus (a skip from each bus to the next).
fn traced_buses(tx: &Transaction<'_>, tenant: &str) -> rusqlite::Result<Vec<String>> {
    let mut next = tx.prepare_cached(
        "SELECT bus FROM traces INDEXED BY traces_head WHERE tenant = ?1 AND bus > ?2 \
         ORDER BY bus LIMIT 1",
    )?;
    let mut buses: Vec<String> = Vec::new();
    while let Some(bus) = next
        .query_row(
            params![tenant, buses.last().map_or("", String::as_str)],
            |r| r.get(0),
        )
        .optional()?
    {
        buses.push(bus);
    }
    Ok(buses)
}

/// A search's rows: (backend id, summary).
type Found = Vec<(i64, TraceSummary)>;

/// What a search read: its rows, newest first, at most `limit + 1` of
/// them, and — when it ran out of its scan budget before it filled the
/// page — the (received, id) down to which the rows are complete: the next
/// page starts below it.
type Searched = (Found, Option<(Millis, i64)>);

fn read_rows(stmt: &mut rusqlite::CachedStatement<'_>, args: &[Sql]) -> rusqlite::Result<Found> {
    stmt.query_map(params_from_iter(args), |r| {
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
    .collect()
}

/// Newest first, as a page lists them.
fn newest_first(rows: &mut Found) {
    rows.sort_unstable_by(|(a_id, a), (b_id, b)| (b.received_ms, b_id).cmp(&(a.received_ms, a_id)));
}

/// Runs a planned search.
///
/// A walk that filters the head (source, type, a common state) goes in
/// steps of [`SEARCH_STEP`] entries, always on the bus whose next step is
/// the newest, so the buses are read together from the newest trace down,
/// and it stops once the page is full or it has scanned `budget` entries.
/// Without a budget a value no index leads with (a rare source, say) would
/// scan a bus's every trace in one call, on the thread that writes traces;
/// with it, such a call answers what it found with a cursor where it
/// stopped, and paging on finds the rest.
fn run_search(
    tx: &Transaction<'_>,
    plan: SearchPlan,
    tenant: &str,
    limit: usize,
    budget: usize,
) -> rusqlite::Result<Searched> {
    let SearchPlan {
        sql,
        mut args,
        per_bus,
        steps,
    } = plan;
    let mut stmt = tx.prepare_cached(&sql)?;
    let buses = if per_bus {
        Some(traced_buses(tx, tenant)?)
    } else {
        None
    };
    if let Some(steps) = steps {
        return walk_in_steps(tx, &mut stmt, args, steps, buses, limit, budget);
    }
    let Some(buses) = buses else {
        return Ok((read_rows(&mut stmt, &args)?, None));
    };
    // Every entry is a hit: each bus's newest page (and one) holds the
    // tenant's newest page.
    let mut rows = Vec::new();
    for bus in buses {
        args[1] = Sql::Text(bus);
        rows.extend(read_rows(&mut stmt, &args)?);
    }
    newest_first(&mut rows);
    rows.truncate(limit + 1);
    Ok((rows, None))
}

/// The filtering walk of [`run_search`]: `buses` to merge, or `None` for
/// the one bus the plan names.
fn walk_in_steps(
    tx: &Transaction<'_>,
    stmt: &mut rusqlite::CachedStatement<'_>,
    mut args: Vec<Sql>,
    steps: Steps,
    buses: Option<Vec<String>>,
    limit: usize,
    budget: usize,
) -> rusqlite::Result<Searched> {
    let Steps {
        stop_sql,
        mut stop_args,
        upper_at,
        lower_at,
        start,
    } = steps;
    let step = SEARCH_STEP.clamp(1, budget.max(1));
    if let Some(length) = stop_args.last_mut() {
        *length = Sql::Integer(i64::try_from(step).unwrap_or(i64::MAX));
    }
    let mut stop_stmt = tx.prepare_cached(&stop_sql)?;
    /// One bus's walk: read down to `upper` (exclusive), or to the end.
    struct Lane {
        bus: Option<String>,
        upper: Option<(Millis, i64)>,
    }
    let mut lanes: Vec<Lane> = match buses {
        Some(buses) => buses
            .into_iter()
            .map(|bus| Lane {
                bus: Some(bus),
                upper: Some(start),
            })
            .collect(),
        None => vec![Lane {
            bus: None,
            upper: Some(start),
        }],
    };
    // Every lane has read everything at or above the highest lane's upper
    // bound: rows there are final.
    let frontier = |lanes: &[Lane]| lanes.iter().filter_map(|l| l.upper).max();
    let mut rows = Found::new();
    let mut scanned = 0;
    while let Some(lane) = lanes
        .iter_mut()
        .filter(|l| l.upper.is_some())
        .max_by_key(|l| l.upper)
    {
        let Some((upper_ms, upper_id)) = lane.upper else {
            break;
        };
        if let Some(bus) = &lane.bus {
            args[1] = Sql::Text(bus.clone());
            stop_args[1] = Sql::Text(bus.clone());
        }
        for a in [&mut args, &mut stop_args] {
            a[upper_at] = Sql::Integer(upper_ms);
            a[upper_at + 1] = Sql::Integer(upper_id);
        }
        let stop: Option<(Millis, i64)> = stop_stmt
            .query_row(params_from_iter(&stop_args), |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (lower_ms, lower_id) = stop.unwrap_or((Millis::MIN, i64::MIN));
        args[lower_at] = Sql::Integer(lower_ms);
        args[lower_at + 1] = Sql::Integer(lower_id);
        rows.extend(read_rows(stmt, &args)?);
        lane.upper = stop;
        scanned += step;
        let front = frontier(&lanes);
        let done = rows
            .iter()
            .filter(|(id, s)| front.is_none_or(|f| (s.received_ms, *id) >= f))
            .count();
        // Out of budget only once every bus has been read a step (before
        // that nothing is final, and the cursor would not move).
        if done > limit || (scanned >= budget && front != Some(start)) {
            break;
        }
    }
    let front = frontier(&lanes);
    if let Some(f) = front {
        // Below the frontier some bus was not read: those rows wait for
        // the next page, which starts there.
        rows.retain(|(id, s)| (s.received_ms, *id) >= f);
    }
    newest_first(&mut rows);
    rows.truncate(limit + 1);
    Ok((rows, front))
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
    async fn record_traces(&self, traces: Arc<[Trace]>) -> StoreResult<()> {
        if traces.is_empty() {
            return Ok(());
        }
        let recent = self.inner.recent_traces.clone();
        let merge_at = self.inner.trace_merge_at;
        let forget = recent.clone();
        self.run_traces_then(
            move |tx| {
                let pending = any_pending(tx)?;
                let mut insert = tx.prepare_cached(INSERT_TRACE)?;
                for trace in traces.iter() {
                    record(tx, &mut insert, &recent, trace, pending)?;
                }
                drop(insert);
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
        let plan = plan_search(query, tenant, after.and_then(TraceCursor::parts), limit);
        let tenant = tenant.to_owned();
        let budget = self.inner.search_scan;
        self.run_traces(move |tx| {
            let (mut rows, stopped) = run_search(tx, plan, &tenant, limit, budget)?;
            let more = rows.len() > limit;
            rows.truncate(limit);
            let next = if more {
                rows.last()
                    .map(|(id, s)| TraceCursor::at(s.received_ms, *id))
            } else {
                stopped.map(|(ms, id)| TraceCursor::at(ms, id))
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The planner's idea of the common states and the index's `WHERE`
    /// agree: a search for a state the index leaves out must not walk it.
    #[test]
    fn the_uncommon_states_index_leaves_out_exactly_the_common_states() {
        for state in TraceState::ALL {
            assert_eq!(
                UNCOMMON_STATE.contains(&format!("'{}'", state.as_str())),
                COMMON_STATES.contains(&state),
                "{state:?}"
            );
        }
        let index_where = UNCOMMON_STATE.replace("t.state", "state");
        assert!(
            super::super::schema::TRACES_V5.contains(&format!("WHERE {index_where};")),
            "traces_uncommon is made with {index_where}"
        );
    }
}
