//! [`Traces`] on SQLite.
//!
//! - **A trace that matched no rule is its log entry alone.** An event on a
//!   bus that traces keeps its trace's searchable head (source, type) in
//!   its log entry, under one index (`events_history`, main file version 9),
//!   and such a trace writes nothing here: the entry says when it was
//!   received, where and what, and the route cursor whether it is routed
//!   (`no_match`) or not yet (`in_flight`). Most traces are these; their
//!   row was most of what tracing cost (issue 10).
//! - **Every other trace of such an entry is an `entry_traces` row**
//!   keyed by the entry's position: its state, rule names and routing
//!   record (JSON), and of what the entry says only the tenant and time
//!   (`TRACES_V8`).
//! - **A trace without such an entry has a `traces` row** (the head in
//!   columns); one made from a log entry keeps the entry's position
//!   (`seq`) instead of a copy of the event, and the log keeps the entry
//!   while a row refers to it (`EventLog::prune`). Both kinds have one
//!   `trace_rules` row per matched rule (search by rule; an entry's trace
//!   as `-seq`), and `trace_pending` keeps facts that arrived before
//!   their trace.
//! - **Search** walks, per bus, the traced log entries (with their
//!   `entry_traces` rows, if any) and the rows without such an entry
//!   (`traces_rows`) together, newest first, filtering on the head; a
//!   rule's search walks `trace_rules`, an uncommon state's
//!   `traces_uncommon` and `entry_traces_uncommon`. A walk stops after a
//!   page or its scan budget.
//! - **An event id finds its trace** through [`trace_ids`] (recent ones in
//!   memory, older ones merged in bulk into sorted runs), rows by id and
//!   log entries as `-seq`, not through an index written per trace.
//! - **Retention**: rows expire one by one; the log's traces by a point
//!   that the sweep moves up the log (`log_traces.expired`), which the
//!   prune follows. Their ids go with whole runs ([`trace_id_runs`]).
//!
//! The main file is attached read-only (as `log`) to this file's
//! connection, so one statement reads entries and rows together.

use super::SqliteStore;
use super::log::{LOGGED_COLUMNS, logged_event, route_cursor};
use super::trace_id_runs;
use super::trace_ids::{self, Look, RecentTraceIds};
use crate::store::traces::TraceBody;
use crate::store::{
    Millis, StoreResult, Trace, TraceCursor, TraceFact, TraceKey, TraceQuery, TraceState,
    TraceSummary, Traces,
};
use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::types::Value as Sql;
use rusqlite::{OptionalExtension, Transaction, params, params_from_iter};
use std::borrow::Cow;
use std::sync::Arc;

/// The rule names of a trace, as stored in `traces.rules` (one per line).
fn rule_names(body: &TraceBody) -> Cow<'_, str> {
    // Most traces with rules matched one: its name as it is, no list to
    // sort and join.
    match body.rules.as_slice() {
        [] => Cow::Borrowed(""),
        [only] => Cow::Borrowed(&only.rule),
        rules => {
            let mut names: Vec<&str> = rules.iter().map(|r| r.rule.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            Cow::Owned(names.join("\n"))
        }
    }
}

/// The statements that insert a trace row and its `trace_rules` rows,
/// prepared once for a batch of traces: finding a cached statement hashes
/// its SQL, two of them a matched event's 0.16 µs on the traces' writer.
struct Inserts<'t> {
    trace: rusqlite::CachedStatement<'t>,
    entry: rusqlite::CachedStatement<'t>,
    rule: rusqlite::CachedStatement<'t>,
}

impl<'t> Inserts<'t> {
    fn prepare(tx: &'t Transaction<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            trace: tx.prepare_cached(INSERT_TRACE)?,
            entry: tx.prepare_cached(INSERT_ENTRY_TRACE)?,
            rule: tx.prepare_cached(INSERT_RULE)?,
        })
    }
}

/// Inserts the `entry_traces` row of a log entry, unless it has one (then
/// the caller replaces it). Not `OR REPLACE`: a statement that may delete
/// a row before it inserts one writes every page it changes to a
/// statement journal too (1.5 times the traces' writer's CPU a matched
/// event, measured); `OR IGNORE` skips the insert without one.
const INSERT_ENTRY_TRACE: &str = "INSERT OR IGNORE INTO entry_traces \
     (seq, tenant, received_ms, state, rules, body) VALUES (?, ?, ?, ?, ?, ?)";

/// Where a trace is kept: a `traces` row, or log entry `seq` — with its
/// `entry_traces` row (`recorded`) or alone (it matched no rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Row(i64),
    Entry { seq: i64, recorded: bool },
}

impl Place {
    /// The name a trace's `trace_rules` rows and runs of trace ids give
    /// it: a row's id, an entry's `-seq`. Of two traces received in the
    /// same millisecond, the one with the greater name is the newer.
    fn name(self) -> i64 {
        match self {
            Self::Row(id) => id,
            Self::Entry { seq, .. } => -seq,
        }
    }
}

/// Inserts a `trace_rules` row (see [`Inserts`]).
const INSERT_RULE: &str =
    "INSERT OR IGNORE INTO trace_rules (tenant, rule, received_ms, trace) VALUES (?, ?, ?, ?)";

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
        INSERT_RULE
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

const COLUMNS: &str = "id, tenant, bus, event_id, received_ms, source, type, state, size, replay, \
     body, event, seq, in_log";
/// [`COLUMNS`] without the event itself (an empty blob in its place): a
/// fact changes the routing record, never the event, so it need not read it.
const RECORD_COLUMNS: &str = "id, tenant, bus, event_id, received_ms, source, type, state, size, \
     replay, body, X'', seq, in_log";

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
            head_in_log: r.get(13)?,
        },
    ))
}

/// Whether a trace is its log entry alone: the entry keeps its head, and
/// nothing was routed beyond "no rule matched". Such a trace gets no row
/// (see `TRACES_V6`); search and lookups read the entry.
fn is_log_only(trace: &Trace) -> bool {
    trace.head_in_log
        && trace.position.is_some()
        && trace.body.rules.is_empty()
        && trace.body.replays.is_empty()
}

/// The log entries at or below this hold no trace (expired).
fn log_expired(tx: &Transaction<'_>) -> rusqlite::Result<i64> {
    tx.prepare_cached("SELECT expired FROM log_traces")?
        .query_row([], |r| r.get(0))
}

/// The route cursor of the main file, as committed: entries at or below it
/// are routed.
fn log_routed(tx: &Transaction<'_>) -> rusqlite::Result<i64> {
    Ok(tx
        .prepare_cached("SELECT seq FROM log.cursors WHERE name = 'route'")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// The trace that is log entry `seq` alone, if it is one of `tenant`'s
/// event `event_id` (on `bus`, received at `received_ms`, where given): a
/// traced entry, not expired, as the entry alone says it (see
/// [`entry_trace`] for its `entry_traces` row): `no_match` once routed,
/// `in_flight` before. With `with_event`, the event too.
fn log_trace(
    tx: &Transaction<'_>,
    seq: i64,
    key: (&str, &str, Option<&str>, Option<Millis>),
    with_event: bool,
) -> anyhow::Result<Option<Trace>> {
    let (tenant, event_id, bus, received_ms) = key;
    if seq <= log_expired(tx)? {
        return Ok(None);
    }
    let found = tx
        .prepare_cached(
            "SELECT bus, ingested_ms, source, type, body FROM log.events \
             WHERE seq = ?1 AND tenant = ?2 AND event_id = ?3 AND source IS NOT NULL \
             AND (?4 IS NULL OR bus = ?4) AND (?5 IS NULL OR ingested_ms = ?5)",
        )?
        .query_row(params![seq, tenant, event_id, bus, received_ms], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Millis>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Vec<u8>>(4)?,
            ))
        })
        .optional()?;
    let Some((bus, received_ms, source, event_type, body)) = found else {
        return Ok(None);
    };
    let routed = seq <= log_routed(tx)?;
    let body_routed = TraceBody {
        routed,
        ..TraceBody::default()
    };
    Ok(Some(Trace {
        tenant: tenant.to_owned(),
        bus,
        event_id: event_id.to_owned(),
        received_ms,
        source,
        event_type,
        size_bytes: body.len() as u64,
        replay: crate::event::EventHead::parse(&body).and_then(|h| h.replayname),
        event: if with_event {
            Bytes::from(body)
        } else {
            Bytes::new()
        },
        position: Some(seq),
        head_in_log: true,
        state: Trace::derive_state(&body_routed),
        body: body_routed,
    }))
}

/// The trace of log entry `seq`, if it is `tenant`'s event `event_id` (on
/// `bus`, received at `received_ms`, where given) and a traced entry not
/// expired: the entry's head with its `entry_traces` row, if it has one,
/// or the entry alone (see [`log_trace`]). With `with_event`, the event
/// too.
fn entry_trace(
    tx: &Transaction<'_>,
    seq: i64,
    key: (&str, &str, Option<&str>, Option<Millis>),
    with_event: bool,
) -> anyhow::Result<Option<(Place, Trace)>> {
    let Some(mut trace) = log_trace(tx, seq, key, with_event)? else {
        return Ok(None);
    };
    let recorded = match recorded_entry(tx, seq)? {
        Some((state, body)) => {
            trace.state = state;
            trace.body = body;
            true
        }
        None => false,
    };
    Ok(Some((Place::Entry { seq, recorded }, trace)))
}

/// The state and routing record of log entry `seq`'s `entry_traces` row.
fn recorded_entry(
    tx: &Transaction<'_>,
    seq: i64,
) -> anyhow::Result<Option<(TraceState, TraceBody)>> {
    let found: Option<(String, String)> = tx
        .prepare_cached("SELECT state, body FROM entry_traces WHERE seq = ?")?
        .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(found.map(|(state, body)| {
        (
            TraceState::parse(&state).unwrap_or(TraceState::InFlight),
            serde_json::from_str(&body).unwrap_or_default(),
        )
    }))
}

/// Writes a trace's changed body and state where it is kept (a row, or an
/// entry's `entry_traces` row: a trace that is its entry alone gets one
/// through [`insert_row`]).
fn update(tx: &Transaction<'_>, place: Place, trace: &Trace) -> anyhow::Result<()> {
    debug_assert!(
        !matches!(
            place,
            Place::Entry {
                recorded: false,
                ..
            }
        ),
        "an entry's first row is inserted"
    );
    let (state, rules, body) = (
        trace.state.as_str(),
        rule_names(&trace.body),
        serde_json::to_string(&trace.body)?,
    );
    match place {
        Place::Row(id) => tx
            .prepare_cached("UPDATE traces SET state = ?, rules = ?, body = ? WHERE id = ?")?
            .execute(params![state, rules, body, id])?,
        Place::Entry { seq, .. } => tx
            .prepare_cached("UPDATE entry_traces SET state = ?, rules = ?, body = ? WHERE seq = ?")?
            .execute(params![state, rules, body, seq])?,
    };
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
    look: Look,
) -> rusqlite::Result<Vec<i64>> {
    let key = trace_ids::key(tenant, event_id);
    let mut rows = recent.rows(key, received_ms);
    if received_ms.is_none_or(|ms| recent.may_be_merged(ms, look)) {
        rows.extend(trace_id_runs::lookup(tx, key, received_ms)?);
    }
    Ok(rows)
}

/// The newest trace of `tenant`'s event `event_id` (on `bus`, received at
/// `received_ms`, where given), read with `columns` (a row's; an entry's
/// trace has the event with [`COLUMNS`]), and where it is kept.
fn find(
    tx: &Transaction<'_>,
    recent: &RecentTraceIds,
    columns: &str,
    key: (&str, &str, Option<&str>, Option<Millis>),
    look: Look,
) -> anyhow::Result<Option<(Place, Trace)>> {
    let (tenant, event_id, bus, received_ms) = key;
    let mut newest: Option<(Place, Trace)> = None;
    for name in candidates(tx, recent, tenant, event_id, received_ms, look)? {
        // A run written before `entry_traces` may name a moved row by its
        // old id: no such row is left, and its entry's `-seq` finds it.
        let found = if name < 0 {
            if look == Look::Rows {
                continue;
            }
            entry_trace(tx, -name, key, columns == COLUMNS)?
        } else {
            tx.prepare_cached(&format!(
                "SELECT {columns} FROM traces WHERE id = ?1 AND tenant = ?2 AND event_id = ?3 \
                 AND (?4 IS NULL OR bus = ?4) AND (?5 IS NULL OR received_ms = ?5)"
            ))?
            .query_row(
                params![name, tenant, event_id, bus, received_ms],
                read_trace,
            )
            .optional()?
            .map(|(id, t)| (Place::Row(id), t))
        };
        if let Some((place, trace)) = found
            && newest
                .as_ref()
                .is_none_or(|(p, n)| (trace.received_ms, place.name()) > (n.received_ms, p.name()))
        {
            newest = Some((place, trace));
        }
    }
    Ok(newest)
}

/// Inserts a new trace row (see [`record`]).
const INSERT_TRACE: &str = "INSERT INTO traces (tenant, bus, event_id, received_ms, source, \
     type, state, size, replay, rules, body, event, seq, in_log) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// Records a trace: a new row through `inserts` (prepared once for a
/// whole batch of traces), or the row of an earlier record of it replaced.
fn record(
    tx: &Transaction<'_>,
    inserts: &mut Inserts<'_>,
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
    let log_only = is_log_only(trace);
    if trace.position.is_some() && !recent.may_have_row(trace.received_ms) {
        // The first record of a log entry's trace (nearly every record):
        // nothing to replace, so no lookup (it was a third of a matched
        // event's record) — and should the entry have a row after all, the
        // insert says so and the row is replaced below.
        if log_only || insert_row(tx, inserts, recent, trace, &rule_names(&trace.body))? {
            return Ok(());
        }
    }
    let key = (
        trace.tenant.as_str(),
        trace.event_id.as_str(),
        Some(trace.bus.as_str()),
        Some(trace.received_ms),
    );
    let before = match trace.position {
        Some(seq) if trace.head_in_log => recorded_entry(tx, seq)?.map(|(state, body)| {
            let mut old = trace.clone();
            (old.state, old.body) = (state, body);
            (
                Place::Entry {
                    seq,
                    recorded: true,
                },
                old,
            )
        }),
        _ => find(tx, recent, RECORD_COLUMNS, key, Look::Rows)?,
    };
    if before.is_none() && log_only {
        return Ok(());
    }
    if let Some((place, old)) = before {
        // Recorded before: the event was routed again after a restart, or
        // a replay mark gave its log entry a row before routing recorded
        // it. Replace the row, keeping the replays it already shows
        // (routing knows none).
        let with_replays;
        let trace = if old
            .body
            .replays
            .iter()
            .any(|r| !trace.body.replays.contains(r))
        {
            let mut t = trace.clone();
            for r in old.body.replays.iter() {
                if !t.body.replays.contains(r) {
                    t.body.replays.push(r.clone());
                }
            }
            with_replays = t;
            &with_replays
        } else {
            trace
        };
        let name = place.name();
        let rules = rule_names(&trace.body);
        index_rules(
            tx,
            &trace.tenant,
            &rule_names(&old.body),
            trace.received_ms,
            name,
            false,
        )?;
        update(tx, place, trace)?;
        index_rules(tx, &trace.tenant, &rules, trace.received_ms, name, true)?;
        return Ok(());
    }
    inserted(insert_row(
        tx,
        inserts,
        recent,
        trace,
        &rule_names(&trace.body),
    )?)
}

/// A new trace's write where its place was looked up and found empty.
fn inserted(new: bool) -> anyhow::Result<()> {
    anyhow::ensure!(new, "a trace row appeared where none was found");
    Ok(())
}

/// Writes a new trace (`rules`: its [`rule_names`]): the `entry_traces`
/// row of a log entry that keeps its head, or a `traces` row. Answers
/// `false`, writing nothing, when the entry has its row already.
fn insert_row(
    tx: &Transaction<'_>,
    inserts: &mut Inserts<'_>,
    recent: &RecentTraceIds,
    trace: &Trace,
    rules: &str,
) -> anyhow::Result<bool> {
    let body = serde_json::to_string(&trace.body)?;
    // The name its `trace_rules` rows give it (see [`Place::name`]).
    let name = if let Some(seq) = trace.position.filter(|_| trace.head_in_log) {
        // Found through its entry (`trace_ids` has the entry's `-seq`).
        let new = inserts.entry.execute(params![
            seq,
            trace.tenant,
            trace.received_ms,
            trace.state.as_str(),
            rules,
            body
        ])? > 0;
        if !new {
            return Ok(false);
        }
        Place::Entry {
            seq,
            recorded: true,
        }
        .name()
    } else {
        // A trace of a log entry refers to the entry, which the log keeps
        // as long as the trace (see `prune`): the copy was two thirds of
        // the bytes a trace wrote, and written again at every checkpoint.
        let event: &[u8] = if trace.position.is_some() {
            &[]
        } else {
            &trace.event
        };
        inserts.trace.execute(params![
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
            trace.position,
            false
        ])?;
        let id = tx.last_insert_rowid();
        recent.note_row(trace_ids::key(&trace.tenant, &trace.event_id), id);
        id
    };
    for rule in rules.split('\n').filter(|r| !r.is_empty()) {
        inserts
            .rule
            .execute(params![trace.tenant, rule, trace.received_ms, name])?;
    }
    Ok(true)
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
        Look::RowsAndLog,
    )?;
    match found {
        // A replay mark on a trace that is its log entry alone: the trace
        // gets its row now.
        Some((
            Place::Entry {
                recorded: false, ..
            },
            mut trace,
        )) if !fact.waits_for_trace() => {
            if !trace.body.routed {
                recent.row_ahead_of_routing(trace.received_ms);
            }
            trace.apply(fact);
            let mut inserts = Inserts::prepare(tx)?;
            inserted(insert_row(
                tx,
                &mut inserts,
                recent,
                &trace,
                &rule_names(&trace.body),
            )?)?;
        }
        Some((place @ (Place::Row(_) | Place::Entry { recorded: true, .. }), mut trace)) => {
            let before = rule_names(&trace.body).into_owned();
            trace.apply(fact);
            let after = rule_names(&trace.body);
            if before != after {
                let name = place.name();
                index_rules(tx, &trace.tenant, &before, trace.received_ms, name, false)?;
                index_rules(tx, &trace.tenant, &after, trace.received_ms, name, true)?;
            }
            update(tx, place, &trace)?;
        }
        // Not recorded yet — or still its log entry alone, while the
        // routing record (it has rules, so it writes a row) is on its way.
        _ if fact.waits_for_trace() => {
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
        _ => {}
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

/// How many entries one filtering search call scans at most (10–30 ms
/// here at 1,000,000 traces): see [`run_search`].
pub(super) const SEARCH_SCAN: usize = 100_000;

/// How many entries one step of a filtering walk reads from one lane (see
/// [`run_search`]).
const SEARCH_STEP: usize = 1_000;

/// `traces_uncommon`'s `WHERE`, which a statement must repeat to walk it
/// (SQLite does not prove `state = 'retrying'` implies it). Comparisons,
/// not `NOT IN` a list: see `TRACES_V5` in `schema.rs`.
const UNCOMMON_STATE: &str =
    "t.state <> 'delivered' AND t.state <> 'no_match' AND t.state <> 'filtered_out'";

/// [`UNCOMMON_STATE`] for `entry_traces_uncommon` (as `x`).
const ENTRY_UNCOMMON_STATE: &str =
    "x.state <> 'delivered' AND x.state <> 'no_match' AND x.state <> 'filtered_out'";

/// Above every trace: where a walk without a cursor starts.
const START: (Millis, i64) = (Millis::MAX, i64::MAX);

/// How far a trace row's place in a head walk is shifted: a bus's log
/// entries (placed by their position) and its rows without an entry that
/// keeps the head (placed by this plus their id) then share one (received,
/// place) order, and a cursor says where in both a page ended.
const ROW_PLACE: i64 = 1 << 50;

/// The two kinds of traces a head walk reads: log entries that keep their
/// head (with their trace row, if they have one), and trace rows whose
/// event's log entry does not (`traces_rows`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LaneKind {
    Log,
    Rows,
}

impl LaneKind {
    /// What is added to an id to place it in the walk's order.
    fn shift(self) -> i64 {
        match self {
            Self::Log => 0,
            Self::Rows => ROW_PLACE,
        }
    }
}

/// One kind's statements of a head walk. In both, `?1` is the tenant, `?2`
/// the bus and `(?3, ?4)` the (received, id) the step reads below; `sql`
/// reads down to `(?5, ?6)` inclusive, `stop_sql` finds that point `?5`
/// entries down.
struct LaneSql {
    kind: LaneKind,
    sql: String,
    args: Vec<Sql>,
    stop_sql: String,
    stop_args: Vec<Sql>,
}

/// A search as SQL: a rule's or an uncommon state's walk (one statement,
/// every bus), or a walk of the buses' heads newest first.
enum SearchPlan {
    Rows {
        sql: String,
        args: Vec<Sql>,
    },
    Head {
        /// The query's bus, or `None`: each bus the tenant has traces on.
        bus: Option<String>,
        lanes: Box<[LaneSql; 2]>,
        /// Whether it filters on the head (else every entry is a hit).
        filters: bool,
        start: (Millis, i64),
    },
}

/// Plans a search. A rule's search walks its `trace_rules` rows; a search
/// for an uncommon state walks `traces_uncommon`; every other walks the
/// heads of the query's bus, or each of the tenant's buses, newest first
/// — traced log entries (`events_history`, with their rows when they have
/// one) and rows without such an entry (`traces_rows`) — filtering on the
/// head and stopping after a page (plus one row, to know whether there is
/// more) or, when it filters, after its scan budget (see [`run_search`]).
fn plan_search(
    query: &TraceQuery,
    tenant: &str,
    after: Option<(Millis, i64)>,
    limit: usize,
    log: (i64, i64),
) -> SearchPlan {
    let uncommon = query.state.filter(|s| !COMMON_STATES.contains(s));
    if query.rule.is_none() && uncommon == Some(TraceState::InFlight) {
        return in_flight_plan(query, tenant, after, limit, log);
    }
    if query.rule.is_none() && uncommon.is_none() {
        let filters = query.source.is_some() || query.event_type.is_some() || query.state.is_some();
        return SearchPlan::Head {
            bus: query.bus.clone(),
            lanes: Box::new([
                lane_sql(LaneKind::Log, query, tenant, log),
                lane_sql(LaneKind::Rows, query, tenant, log),
            ]),
            filters,
            // A walk's upper bound is a row value, which SQLite seeks by
            // on its own: without a bound at the window's end, a window in
            // the past would be found by scanning down to it from the
            // newest entry (86 ms at 1,000,000 traces for one in the
            // middle). `(to, MIN)` bounds the same rows as `time < to`.
            start: after
                .unwrap_or(START)
                .min(query.to_ms.map_or(START, |to| (to, i64::MIN))),
        };
    }
    let text = |s: &str| Sql::Text(s.to_owned());
    let (expired, _) = log;
    let mut args: Vec<Sql> = vec![text(tenant), Sql::Integer(expired)];
    let arg = |args: &mut Vec<Sql>, v: Sql| {
        args.push(v);
        format!("?{}", args.len())
    };
    let order =
        |ms: &str, place: &str| format!("ORDER BY {ms} DESC, {place} DESC LIMIT {}", limit + 1);
    let sql = if let Some(rule) = &query.rule {
        // One walk of the rule's `trace_rules` rows, newest first, each
        // joined to its `traces` row or its entry and `entry_traces` row.
        let columns = SearchColumns {
            bus: "COALESCE(t.bus, e.bus)",
            time: "r.received_ms",
            cursor: ("r.received_ms", "r.trace"),
            source: "COALESCE(t.source, e.source)",
            event_type: "COALESCE(t.type, e.type)",
        };
        let rule = arg(&mut args, text(rule));
        let mut conditions = search_conditions(query, after, &columns, &mut args);
        if let Some(state) = query.state {
            let state = arg(&mut args, text(state.as_str()));
            conditions += &format!(" AND COALESCE(t.state, x.state) = {state}");
        }
        format!(
            "SELECT r.trace, COALESCE(t.event_id, e.event_id), COALESCE(t.bus, e.bus), \
                    COALESCE(t.source, e.source), COALESCE(t.type, e.type), r.received_ms, \
                    COALESCE(t.state, x.state) \
             FROM trace_rules r \
             LEFT JOIN traces t ON r.trace > 0 AND t.id = r.trace AND t.tenant = ?1 \
             LEFT JOIN entry_traces x ON r.trace < 0 AND x.seq = -r.trace AND -r.trace > ?2 \
             LEFT JOIN log.events e ON x.seq IS NOT NULL AND e.seq = x.seq AND e.tenant = ?1 \
             WHERE r.tenant = ?1 AND r.rule = {rule} \
               AND (t.id IS NOT NULL OR e.seq IS NOT NULL){conditions} {}",
            order("r.received_ms", "r.trace")
        )
    } else {
        // The rows and the entries' traces in an uncommon state, merged
        // newest first: the entries' walk of `entry_traces_uncommon` is in
        // (time, position) order, so a page reads a page of them, however
        // many a tenant has (a bus dead-lettering everything). Rows are
        // placed above entries in the same millisecond, as in a head walk.
        let state = arg(&mut args, text(uncommon.map_or("", |s| s.as_str())));
        let row_columns = SearchColumns {
            bus: "t.bus",
            time: "t.received_ms",
            cursor: ("t.received_ms", "t.id"),
            source: "t.source",
            event_type: "t.type",
        };
        let rows_after = after.map(|(ms, place)| (ms, place.saturating_sub(ROW_PLACE)));
        let row_conditions = search_conditions(query, rows_after, &row_columns, &mut args);
        let entry_columns = SearchColumns {
            bus: "e.bus",
            time: "x.received_ms",
            cursor: ("x.received_ms", "x.seq"),
            source: "e.source",
            event_type: "e.type",
        };
        let entry_conditions = search_conditions(query, after, &entry_columns, &mut args);
        format!(
            "{}{row_conditions} UNION ALL {}{entry_conditions} {}",
            uncommon_rows(&state),
            uncommon_entries(&state, "?2"),
            order("6", "1")
        )
    };
    SearchPlan::Rows { sql, args }
}

/// The `traces` rows of tenant `?1` in uncommon state `state` (a bound
/// parameter), placed as a head walk places them, in (time, place) order.
fn uncommon_rows(state: &str) -> String {
    format!(
        "SELECT t.id + {ROW_PLACE} AS place, t.event_id, t.bus, t.source, t.type, \
                t.received_ms, t.state \
         FROM traces t INDEXED BY traces_uncommon \
         WHERE t.tenant = ?1 AND {UNCOMMON_STATE} AND t.state = {state}"
    )
}

/// The traced log entries of tenant `?1` whose `entry_traces` row is in
/// uncommon state `state`, above the log's expired point `expired` (both
/// bound parameters), placed by position, in (time, place) order.
fn uncommon_entries(state: &str, expired: &str) -> String {
    format!(
        "SELECT x.seq, e.event_id, e.bus, e.source, e.type, x.received_ms, x.state \
         FROM entry_traces x INDEXED BY entry_traces_uncommon JOIN log.events e ON e.seq = x.seq \
         WHERE x.tenant = ?1 AND {ENTRY_UNCOMMON_STATE} AND x.state = {state} \
           AND x.seq > {expired}"
    )
}

/// The columns a search's conditions name.
struct SearchColumns<'a> {
    bus: &'a str,
    /// The receive time (the query's window).
    time: &'a str,
    /// What a cursor orders by: (time, place).
    cursor: (&'a str, &'a str),
    source: &'a str,
    event_type: &'a str,
}

/// The query's bus, time window, source and type, and the cursor
/// (`after`), as SQL conditions on `columns`, each starting with ` AND `;
/// their values are bound in `args`, numbered after what is there.
fn search_conditions(
    query: &TraceQuery,
    after: Option<(Millis, i64)>,
    columns: &SearchColumns<'_>,
    args: &mut Vec<Sql>,
) -> String {
    let mut arg = |v: Sql| {
        args.push(v);
        format!("?{}", args.len())
    };
    let mut conditions = String::new();
    if let Some(bus) = &query.bus {
        conditions += &format!(" AND {} = {}", columns.bus, arg(Sql::Text(bus.clone())));
    }
    if let Some(f) = query.from_ms {
        conditions += &format!(" AND {} >= {}", columns.time, arg(Sql::Integer(f)));
    }
    if let Some(to) = query.to_ms {
        conditions += &format!(" AND {} < {}", columns.time, arg(Sql::Integer(to)));
    }
    if let Some((after_ms, after_place)) = after {
        let (a, b) = (arg(Sql::Integer(after_ms)), arg(Sql::Integer(after_place)));
        let (ms, place) = columns.cursor;
        conditions += &format!(" AND ({ms}, {place}) < ({a}, {b})");
    }
    if let Some(s) = &query.source {
        conditions += &format!(" AND {} = {}", columns.source, arg(Sql::Text(s.clone())));
    }
    if let Some(s) = &query.event_type {
        conditions += &format!(
            " AND {} = {}",
            columns.event_type,
            arg(Sql::Text(s.clone()))
        );
    }
    conditions
}

/// Plans a search for traces in flight: the rows in that state
/// (`traces_uncommon`, `entry_traces_uncommon`) and the traced log entries
/// routing has not reached yet that have no row — a trace that is its log
/// entry alone is in flight until then, and while routing is behind those
/// are most of what such a search is for. Both are few; they are placed as a head walk
/// places them (entries by position, rows shifted by [`ROW_PLACE`]), so a
/// cursor says where in both a page ended. The entries are read by
/// position from the routed point on (`NOT INDEXED`: the tenant's prefix
/// of `events_history` would walk every traced entry the tenant has).
fn in_flight_plan(
    query: &TraceQuery,
    tenant: &str,
    after: Option<(Millis, i64)>,
    limit: usize,
    log: (i64, i64),
) -> SearchPlan {
    let (expired, routed) = log;
    let text = |s: &str| Sql::Text(s.to_owned());
    let mut args: Vec<Sql> = vec![
        text(tenant),
        Sql::Integer(expired.max(routed)),
        text(TraceState::InFlight.as_str()),
        Sql::Integer(expired),
    ];
    let columns = SearchColumns {
        bus: "bus",
        time: "received_ms",
        cursor: ("received_ms", "place"),
        source: "source",
        event_type: "type",
    };
    let conditions = search_conditions(query, after, &columns, &mut args);
    let sql = format!(
        "SELECT place, event_id, bus, source, type, received_ms, state FROM ( \
           {} UNION ALL {} UNION ALL \
           SELECT e.seq, e.event_id, e.bus, e.source, e.type, e.ingested_ms, ?3 \
           FROM log.events e NOT INDEXED \
           WHERE e.seq > ?2 AND e.tenant = ?1 AND e.source IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM entry_traces x WHERE x.seq = e.seq)) \
         WHERE 1{conditions} ORDER BY received_ms DESC, place DESC LIMIT {}",
        uncommon_rows("?3"),
        uncommon_entries("?3", "?4"),
        limit + 1
    );
    SearchPlan::Rows { sql, args }
}

/// One kind's statements of a head walk (see [`LaneSql`]); `log` is the
/// log's (expired, routed) positions.
fn lane_sql(kind: LaneKind, query: &TraceQuery, tenant: &str, log: (i64, i64)) -> LaneSql {
    let text = |s: &str| Sql::Text(s.to_owned());
    let (expired, routed) = log;
    // ?1 tenant, ?2 bus, ?3 ?4 upper, then ?5 ?6 lower (or ?5 the step).
    let mut args: Vec<Sql> = vec![
        text(tenant),
        Sql::Null,
        Sql::Null,
        Sql::Null,
        Sql::Null,
        Sql::Null,
    ];
    let mut stop_args: Vec<Sql> = args[..5].to_vec();
    let arg = |args: &mut Vec<Sql>, v: Sql| {
        args.push(v);
        format!("?{}", args.len())
    };
    let (from, ms, id, state) = match kind {
        LaneKind::Log => (
            "log.events e INDEXED BY events_history",
            "e.ingested_ms",
            "e.seq",
            format!(
                "COALESCE(t.state, CASE WHEN e.seq <= {} THEN 'no_match' ELSE 'in_flight' END)",
                arg(&mut args, Sql::Integer(routed))
            ),
        ),
        LaneKind::Rows => (
            "traces t INDEXED BY traces_rows",
            "t.received_ms",
            "t.id",
            "t.state".to_owned(),
        ),
    };
    let (event_id, source, event_type, bus, tenant_col) = match kind {
        LaneKind::Log => ("e.event_id", "e.source", "e.type", "e.bus", "e.tenant"),
        LaneKind::Rows => ("t.event_id", "t.source", "t.type", "t.bus", "t.tenant"),
    };
    // The walk's range, in both statements.
    let range = |args: &mut Vec<Sql>| {
        let mut c = format!("{tenant_col} = ?1 AND {bus} = ?2 AND ({ms}, {id}) < (?3, ?4)");
        match kind {
            LaneKind::Log => {
                c += &format!(
                    " AND e.untraced = 0 AND e.source IS NOT NULL AND e.seq > {}",
                    arg(args, Sql::Integer(expired))
                );
            }
            LaneKind::Rows => c += " AND t.in_log = 0",
        }
        if let Some(f) = query.from_ms {
            c += &format!(" AND {ms} >= {}", arg(args, Sql::Integer(f)));
        }
        if let Some(to) = query.to_ms {
            c += &format!(" AND {ms} < {}", arg(args, Sql::Integer(to)));
        }
        c
    };
    let stop_range = range(&mut stop_args);
    let mut conditions = range(&mut args);
    conditions += &format!(" AND ({ms}, {id}) >= (?5, ?6)");
    if let Some(s) = &query.source {
        conditions += &format!(" AND {source} = {}", arg(&mut args, text(s)));
    }
    if let Some(s) = &query.event_type {
        conditions += &format!(" AND {event_type} = {}", arg(&mut args, text(s)));
    }
    if let Some(s) = query.state {
        conditions += &format!(" AND {state} = {}", arg(&mut args, text(s.as_str())));
    }
    let join = match kind {
        LaneKind::Log => " LEFT JOIN entry_traces t ON t.seq = e.seq",
        LaneKind::Rows => "",
    };
    let order = format!("ORDER BY {ms} DESC, {id} DESC");
    let place = match kind {
        LaneKind::Log => "e.seq".to_owned(),
        LaneKind::Rows => format!("t.id + {ROW_PLACE}"),
    };
    LaneSql {
        kind,
        sql: format!(
            "SELECT {place}, {event_id}, {bus}, {source}, {event_type}, {ms}, {state} \
             FROM {from}{join} WHERE {conditions} {order}"
        ),
        args,
        stop_sql: format!(
            "SELECT {ms}, {id} FROM {from} WHERE {stop_range} {order} LIMIT 1 OFFSET ?5"
        ),
        stop_args,
    }
}

/// The buses `tenant` has traces on, read one step per bus (a skip from
/// each bus to the next) from both kinds of a head walk. The log's index
/// also holds entries only archives keep, after a bus's traced ones: each
/// bus found there is kept if it has a traced entry (one more seek), so a
/// bus archived but not traced costs a step, not a walk of its entries.
fn traced_buses(tx: &Transaction<'_>, tenant: &str) -> rusqlite::Result<Vec<String>> {
    let mut buses = std::collections::BTreeSet::new();
    let mut traced = tx.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM log.events INDEXED BY events_history \
         WHERE tenant = ?1 AND bus = ?2 AND untraced = 0 AND source IS NOT NULL)",
    )?;
    for (sql, check) in [
        (
            "SELECT bus FROM log.events INDEXED BY events_history \
             WHERE tenant = ?1 AND bus > ?2 AND (source IS NOT NULL OR whole IS NOT NULL) \
             ORDER BY bus LIMIT 1",
            true,
        ),
        (
            "SELECT bus FROM traces INDEXED BY traces_rows \
             WHERE tenant = ?1 AND bus > ?2 AND in_log = 0 ORDER BY bus LIMIT 1",
            false,
        ),
    ] {
        let mut next = tx.prepare_cached(sql)?;
        let mut last = String::new();
        while let Some(bus) = next
            .query_row(params![tenant, last], |r| r.get::<_, String>(0))
            .optional()?
        {
            if !check || traced.query_row(params![tenant, bus], |r| r.get::<_, bool>(0))? {
                buses.insert(bus.clone());
            }
            last = bus;
        }
    }
    Ok(buses.into_iter().collect())
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
/// A head walk goes in steps, always on the lane (a bus and a kind of
/// trace) whose next step is the newest, so the lanes are read together
/// from the newest trace down, and it stops once the page is full or it
/// has scanned `budget` entries. Without a budget a value no index leads
/// with (a rare source, say) would scan a bus's every trace in one call,
/// on the thread that writes traces; with it, such a call answers what it
/// found with a cursor where it stopped, and paging on finds the rest.
fn run_search(
    tx: &Transaction<'_>,
    plan: SearchPlan,
    tenant: &str,
    limit: usize,
    budget: usize,
) -> rusqlite::Result<Searched> {
    let (bus, lanes, filters, start) = match plan {
        SearchPlan::Rows { sql, args } => {
            return Ok((read_rows(&mut tx.prepare_cached(&sql)?, &args)?, None));
        }
        SearchPlan::Head {
            bus,
            lanes,
            filters,
            start,
        } => (bus, lanes, filters, start),
    };
    let buses = match bus {
        Some(bus) => vec![bus],
        None => traced_buses(tx, tenant)?,
    };
    // Without a filter every entry is a hit: each lane's newest page (and
    // one) holds the page, and no budget is needed.
    let (step, budget) = if filters {
        (SEARCH_STEP.clamp(1, budget.max(1)), budget)
    } else {
        (limit + 1, usize::MAX)
    };
    /// One bus's walk through one kind: read down to `upper` (exclusive,
    /// in the walk's order), or to the end.
    struct Lane {
        bus: String,
        kind: usize,
        upper: Option<(Millis, i64)>,
    }
    let mut walks: Vec<Lane> = buses
        .iter()
        .flat_map(|bus| {
            (0..lanes.len()).map(|kind| Lane {
                bus: bus.clone(),
                kind,
                upper: Some(start),
            })
        })
        .collect();
    let mut statements = Vec::with_capacity(lanes.len());
    for lane in lanes.iter() {
        statements.push((
            tx.prepare_cached(&lane.sql)?,
            tx.prepare_cached(&lane.stop_sql)?,
            lane.args.clone(),
            lane.stop_args.clone(),
        ));
    }
    // Every lane has read everything at or above the highest lane's upper
    // bound: rows there are final.
    let frontier = |walks: &[Lane]| walks.iter().filter_map(|l| l.upper).max();
    let mut rows = Found::new();
    let mut scanned = 0;
    while let Some(walk) = walks
        .iter_mut()
        .filter(|l| l.upper.is_some())
        .max_by_key(|l| l.upper)
    {
        let Some((upper_ms, upper_place)) = walk.upper else {
            break;
        };
        let shift = lanes[walk.kind].kind.shift();
        let (stmt, stop_stmt, args, stop_args) = &mut statements[walk.kind];
        for a in [&mut *args, &mut *stop_args] {
            a[1] = Sql::Text(walk.bus.clone());
            a[2] = Sql::Integer(upper_ms);
            a[3] = Sql::Integer(upper_place.saturating_sub(shift));
        }
        stop_args[4] = Sql::Integer(i64::try_from(step).unwrap_or(i64::MAX));
        let stop: Option<(Millis, i64)> = stop_stmt
            .query_row(params_from_iter(stop_args.iter()), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let (lower_ms, lower_id) = stop.unwrap_or((Millis::MIN, i64::MIN));
        args[4] = Sql::Integer(lower_ms);
        args[5] = Sql::Integer(lower_id);
        rows.extend(read_rows(stmt, args)?);
        walk.upper = stop.map(|(ms, id)| (ms, id + shift));
        scanned += step;
        let front = frontier(&walks);
        let done = rows
            .iter()
            .filter(|(id, s)| front.is_none_or(|f| (s.received_ms, *id) >= f))
            .count();
        // Out of budget only once every lane has been read a step (before
        // that nothing is final, and the cursor would not move).
        if done > limit || (scanned >= budget && front != Some(start)) {
            break;
        }
    }
    let front = frontier(&walks);
    if let Some(f) = front {
        // Below the frontier some lane was not read: those rows wait for
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
        let Some(seq) = trace.position.filter(|_| trace.event.is_empty()) else {
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

    /// What the log must keep for traces (see [`EventLog::prune`]).
    ///
    /// [`EventLog::prune`]: crate::store::EventLog::prune
    pub(super) async fn traced_floor(&self) -> StoreResult<TracedFloor> {
        self.run_traces(|tx| {
            Ok(TracedFloor {
                lowest_row: tx
                    .prepare_cached("SELECT MIN(seq) FROM traces WHERE seq IS NOT NULL")?
                    .query_row([], |r| r.get(0))?,
                log_expired: log_expired(tx)?,
            })
        })
        .await
    }
}

/// What the log must keep for traces.
pub(super) struct TracedFloor {
    /// The lowest position a trace row refers to (`None`: none does).
    pub(super) lowest_row: Option<i64>,
    /// Traced entries at or below this are no longer traces (the retention
    /// sweep passed them); those above are.
    pub(super) log_expired: i64,
}

#[async_trait]
impl Traces for SqliteStore {
    async fn record_traces(&self, traces: Arc<[Trace]>) -> StoreResult<()> {
        // Traces that are their log entries alone have nothing to write (a
        // fact waits only for a trace with rules, so none waits for them),
        // unless a replay mark gave one a row ahead of routing.
        let recent = self.inner.recent_traces.clone();
        if traces
            .iter()
            .all(|t| is_log_only(t) && !recent.may_have_row(t.received_ms))
        {
            return Ok(());
        }
        let tiering = self.inner.trace_maintenance.tiering();
        let forget = recent.clone();
        let maintenance = self.inner.trace_maintenance.clone();
        self.run_traces_then(
            move |tx| {
                let pending = any_pending(tx)?;
                let mut inserts = Inserts::prepare(tx)?;
                for trace in traces.iter() {
                    record(tx, &mut inserts, &recent, trace, pending)?;
                }
                drop(inserts);
                if recent.len() >= tiering.merge_at {
                    return trace_ids::merge(tx, Some(&recent), tiering);
                }
                Ok(None)
            },
            move |merged| {
                if let Some(merged) = merged {
                    forget.forget_merged(merged);
                    maintenance.wake();
                }
            },
        )
        .await
    }

    async fn add_trace_facts(&self, facts: Arc<[(TraceKey, TraceFact)]>) -> StoreResult<()> {
        if facts.is_empty() {
            return Ok(());
        }
        let now = self.now_ms();
        let recent = self.inner.recent_traces.clone();
        self.run_traces(move |tx| {
            for (key, fact) in facts.iter() {
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
                    .prepare_cached(&format!(
                        "SELECT seq, {LOGGED_COLUMNS} FROM events \
                         WHERE seq > ?1 AND tenant = ?2 AND event_id = ?3 AND (?4 IS NULL OR bus = ?4) \
                         ORDER BY seq DESC LIMIT 1"
                    ))?
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
                    Look::RowsAndLog,
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
        let (query, after) = (query.clone(), after.and_then(TraceCursor::parts));
        let tenant = tenant.to_owned();
        let budget = self.inner.search_scan;
        self.run_traces(move |tx| {
            let log = (log_expired(tx)?, log_routed(tx)?);
            let plan = plan_search(&query, &tenant, after, limit, log);
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
        let maintenance = self.inner.trace_maintenance.clone();
        self.run_traces(move |tx| {
            let rows: i64 = tx.prepare_cached(ROWS_SPAN)?.query_row([], |r| r.get(0))?;
            // The log's traces count as every entry above the expired
            // point (untraced ones too: the cap may then act a little
            // early, never late) — a count of traced entries would read
            // them all.
            let expired = log_expired(tx)?;
            let last: i64 = tx
                .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM log.events")?
                .query_row([], |r| r.get(0))?;
            let in_log = (last - expired).max(0) as u64;
            let over = (rows.max(0) as u64 + in_log).saturating_sub(keep_at_most);
            let mut dropped = expire_rows(tx, before, over, max)?;
            if (dropped as usize) < max {
                let over = over.saturating_sub(dropped);
                dropped += expire_log(tx, before, over, max - dropped as usize)?;
            }
            tx.prepare_cached("DELETE FROM trace_pending WHERE at_ms < ?")?
                .execute([before])?;
            // Retired runs are deleted while the writer is idle.
            if trace_id_runs::retire_expired(tx, log_expired(tx)?)? > 0 {
                maintenance.wake();
            }
            Ok(dropped)
        })
        .await
    }
}

/// How many trace rows the cap counts: the span of their ids. `COUNT(*)`
/// reads every page of the table (no index holds every row), in every
/// chunk of a sweep, which made the sweep at the cap cost more than the
/// traces it dropped: 80 % of the traces' writer in session 18's profile
/// of the load generator. The span takes two seeks — as two subqueries:
/// SQLite seeks for `MIN` or `MAX` only when it is a query's one
/// aggregate. Ids only grow and rows go mostly oldest first, so the span
/// exceeds the count by the few rows gone out of order: the cap may act a
/// little early, never late.
const ROWS_SPAN: &str = "SELECT COALESCE((SELECT MAX(id) FROM traces) - (SELECT MIN(id) FROM traces) \
     + 1, 0)";

/// Drops up to `max` trace rows: those received before `before`, and the
/// `over` oldest. Returns how many.
fn expire_rows(tx: &Transaction<'_>, before: Millis, over: u64, max: usize) -> anyhow::Result<u64> {
    // Traces are recorded about when they are received, so the
    // oldest by id are (nearly) the oldest received: look at those.
    let oldest: Vec<(i64, String, Millis, String)> = tx
        .prepare_cached("SELECT id, tenant, received_ms, rules FROM traces ORDER BY id LIMIT ?")?
        .query_map([max as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut delete = tx.prepare_cached("DELETE FROM traces WHERE id = ?")?;
    let mut dropped = 0u64;
    for (i, (id, tenant, received_ms, rules)) in oldest.iter().enumerate() {
        if (i as u64) >= over && *received_ms >= before {
            continue;
        }
        index_rules(tx, tenant, rules, *received_ms, *id, false)?;
        // Its key stays (in memory, or in a run until the run retires):
        // readers check every row a key names.
        delete.execute([id])?;
        dropped += 1;
    }
    Ok(dropped)
}

/// Drops the `entry_traces` rows of the log entries in `(from, to]`, and
/// their `trace_rules` rows: those traces expired with their entries.
fn drop_entry_traces(tx: &Transaction<'_>, from: i64, to: i64) -> anyhow::Result<()> {
    let dropped: Vec<(i64, String, Millis, String)> = tx
        .prepare_cached(
            "SELECT seq, tenant, received_ms, rules FROM entry_traces \
             WHERE seq > ?1 AND seq <= ?2 AND rules <> ''",
        )?
        .query_map([from, to], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    for (seq, tenant, received_ms, rules) in &dropped {
        index_rules(tx, tenant, rules, *received_ms, -seq, false)?;
    }
    tx.prepare_cached("DELETE FROM entry_traces WHERE seq > ?1 AND seq <= ?2")?
        .execute([from, to])?;
    Ok(())
}

/// How many log entries one call of [`expire_log`] reads at most: most
/// entries it passes hold no trace (their bus does not trace), and it
/// must pass them all.
const LOG_EXPIRY_SCAN: usize = 16_384;

/// Moves the log's expired point up over entries that hold no trace, and
/// over traced ones received before `before` or among the `over` oldest
/// (up to `max` of those). The log keeps every traced entry above the
/// point (see `traced_floor`). Returns
/// how many traces it dropped — or `max` when it stopped at its scan
/// bound with more to read, so the sweep calls again.
fn expire_log(tx: &Transaction<'_>, before: Millis, over: u64, max: usize) -> anyhow::Result<u64> {
    let expired = log_expired(tx)?;
    let mut point = expired;
    let mut dropped = 0u64;
    let mut scanned = 0;
    {
        let mut stmt = tx.prepare_cached(
            "SELECT seq, ingested_ms, source IS NOT NULL FROM log.events \
             WHERE seq > ? ORDER BY seq LIMIT ?",
        )?;
        let mut rows = stmt.query(params![expired, LOG_EXPIRY_SCAN as i64])?;
        while let Some(r) = rows.next()? {
            scanned += 1;
            let (seq, traced): (i64, bool) = (r.get(0)?, r.get(2)?);
            if traced {
                let received: Millis = r.get(1)?;
                if dropped as usize >= max || (dropped >= over && received >= before) {
                    break;
                }
                dropped += 1;
            }
            point = seq;
        }
    }
    if point != expired {
        tx.prepare_cached("UPDATE log_traces SET expired = ?")?
            .execute([point])?;
        drop_entry_traces(tx, expired, point)?;
    }
    if scanned == LOG_EXPIRY_SCAN && (dropped as usize) < max {
        return Ok(max as u64);
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window's walk starts at the window's end, not at the newest
    /// entry: SQLite seeks by the walk's row-value bound alone, so a start
    /// above the window would scan every newer entry first.
    #[test]
    fn a_search_in_a_window_starts_at_its_end() {
        let window = TraceQuery {
            from_ms: Some(1_000),
            to_ms: Some(2_000),
            ..Default::default()
        };
        let start = |query: &TraceQuery, after| match plan_search(query, "t", after, 10, (0, 0)) {
            SearchPlan::Head { start, .. } => start,
            SearchPlan::Rows { .. } => panic!("a head walk"),
        };
        assert_eq!(start(&window, None), (2_000, i64::MIN));
        // A cursor inside the window goes on from it; one above it (a page
        // of a wider search) starts at the window's end.
        assert_eq!(start(&window, Some((1_500, 7))), (1_500, 7));
        assert_eq!(start(&window, Some((9_000, 7))), (2_000, i64::MIN));
        assert_eq!(start(&TraceQuery::default(), None), START);
    }

    /// An in-flight search reads the unrouted log entries by position,
    /// not through the tenant's prefix of `events_history` (every traced
    /// entry the tenant has, and the ones archives keep).
    #[test]
    fn an_in_flight_search_reads_unrouted_entries_by_position() {
        let query = TraceQuery {
            state: Some(TraceState::InFlight),
            ..Default::default()
        };
        let plan = rows_plan(&query, None);
        assert!(
            plan.iter()
                .any(|step| step.contains("SEARCH e USING INTEGER PRIMARY KEY")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.contains("events_history")),
            "{plan:?}"
        );
    }

    /// The steps SQLite plans for `query`'s search, a plan of rows, on a
    /// new store's files (`after`: the page's cursor).
    fn rows_plan(query: &TraceQuery, after: Option<(Millis, i64)>) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let clock: crate::clock::SharedClock =
            std::sync::Arc::new(crate::clock::ManualClock::new(0));
        drop(SqliteStore::open(dir.path(), super::super::Durability::Normal, clock).unwrap());
        let conn = rusqlite::Connection::open(dir.path().join(super::super::TRACES_FILE)).unwrap();
        super::super::attach_log(&conn, &dir.path().join(super::super::DB_FILE)).unwrap();
        let SearchPlan::Rows { sql, args } = plan_search(query, "t", after, 10, (0, 0)) else {
            panic!("a plan of rows");
        };
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(params_from_iter(args), |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A search by rule walks the rule's `trace_rules` rows in their
    /// order and reads each trace by its key (a row's id, an entry's
    /// position): no sort, no scan, however many traces the rule has.
    #[test]
    fn a_search_by_rule_walks_the_rules_rows_in_order() {
        for state in [
            None,
            Some(TraceState::Delivered),
            Some(TraceState::Retrying),
        ] {
            let query = TraceQuery {
                rule: Some("r".into()),
                source: Some("shop".into()),
                state,
                ..Default::default()
            };
            let plan = rows_plan(&query, Some((5, -3)));
            assert!(
                plan.iter()
                    .any(|step| step.starts_with("SEARCH r USING PRIMARY KEY")),
                "{plan:?}"
            );
            for table in ["t", "x", "e"] {
                assert!(
                    plan.iter().any(|step| step
                        .starts_with(&format!("SEARCH {table} USING INTEGER PRIMARY KEY"))),
                    "{table}: {plan:?}"
                );
            }
            assert!(
                !plan
                    .iter()
                    .any(|step| step.contains("TEMP B-TREE") || step.starts_with("SCAN")),
                "{plan:?}"
            );
        }
    }

    /// A search for an uncommon state merges the rows' and the entries'
    /// walks: the entries' (most traces) is read in the page's order, not
    /// sorted, so a tenant with a million dead letters pages through them
    /// a page at a time.
    #[test]
    fn a_search_for_an_uncommon_state_walks_the_entries_in_order() {
        let query = TraceQuery {
            state: Some(TraceState::DeadLettered),
            source: Some("shop".into()),
            ..Default::default()
        };
        let plan = rows_plan(&query, Some((5, 3)));
        let entries = plan
            .iter()
            .position(|step| step.starts_with("SEARCH x") && step.contains("entry_traces_uncommon"))
            .unwrap_or_else(|| panic!("{plan:?}"));
        assert!(plan.iter().any(|s| s.contains("MERGE")), "{plan:?}");
        assert!(
            !plan[entries..].iter().any(|s| s.contains("TEMP B-TREE")),
            "{plan:?}"
        );
    }

    /// The cap's count of rows seeks both ends of the table instead of
    /// reading it.
    #[test]
    fn counting_rows_for_the_cap_reads_no_table() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(super::super::schema::TRACES_STEPS[0].1)
            .unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {ROWS_SPAN}"))
            .unwrap()
            .query_map([], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().all(|step| !step.starts_with("SCAN traces")),
            "{plan:?}"
        );
        assert_eq!(
            plan.iter()
                .filter(|step| step.starts_with("SEARCH traces"))
                .count(),
            2,
            "{plan:?}"
        );
    }

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
        assert_eq!(
            ENTRY_UNCOMMON_STATE.replace("x.state", "state"),
            index_where
        );
        assert!(
            super::super::schema::TRACES_V8.contains(&format!("WHERE {index_where};")),
            "entry_traces_uncommon is made with {index_where}"
        );
    }
}
