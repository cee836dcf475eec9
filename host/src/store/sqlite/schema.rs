//! The schema and its migrations, tracked in SQLite's `user_version`.
//!
//! Version 1 is the schema Busbar shipped before versions were recorded (its
//! files say `user_version = 0`); every `CREATE` in it says `IF NOT EXISTS`,
//! so it both creates a new file and accepts one written by that version.
//! Each later version is one step applied in place, so a data dir from any
//! earlier version opens and keeps its events, jobs, dead letters and queues.

use super::OpenError;
use anyhow::Context;
use rusqlite::Connection;
use std::path::Path;

/// The schema before versions were recorded.
pub(super) const V1: &str = r#"
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tenants (name TEXT PRIMARY KEY, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL, revoked_ms INTEGER);
CREATE TABLE IF NOT EXISTS resources (
    tenant TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL,
    updated_ms INTEGER NOT NULL, PRIMARY KEY (tenant, kind, name));
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, bus TEXT NOT NULL,
    event_id TEXT NOT NULL, body BLOB NOT NULL, ingested_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, bus TEXT NOT NULL,
    rule TEXT NOT NULL, target TEXT NOT NULL, event_id TEXT NOT NULL, event BLOB NOT NULL,
    body TEXT, attempts INTEGER NOT NULL, ingested_ms INTEGER NOT NULL, due_ms INTEGER NOT NULL,
    lease_until INTEGER NOT NULL DEFAULT 0, error_code TEXT, error_message TEXT, last_status INTEGER);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (due_ms);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, bus TEXT NOT NULL,
    rule TEXT NOT NULL, target TEXT NOT NULL, event_id TEXT NOT NULL, event BLOB NOT NULL,
    body TEXT, error_code TEXT NOT NULL, error_message TEXT NOT NULL, attempts INTEGER NOT NULL,
    last_status INTEGER, exhausted TEXT NOT NULL, ingested_ms INTEGER NOT NULL,
    created_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS dead_letters_tenant ON dead_letters (tenant, id);
CREATE TABLE IF NOT EXISTS queue_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, queue TEXT NOT NULL,
    body BLOB NOT NULL, visible_ms INTEGER NOT NULL DEFAULT 0, receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT);
CREATE INDEX IF NOT EXISTS queue_visible ON queue_messages (tenant, queue, visible_ms, id);
"#;

/// Version 2: job leases carry a generation (`lease_token`), so a lease that
/// ran out cannot retry or extend a job leased again since; and jobs are
/// indexed by when they are next leasable (due, or the lease runs out),
/// which is what `lease_due` asks for and waits on.
const V2: &str = r#"
ALTER TABLE jobs ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
DROP INDEX IF EXISTS jobs_due;
CREATE INDEX jobs_ready ON jobs (MAX(due_ms, lease_until), id);
"#;

/// Version 3 (issue 10, history): events carry the rules a replay is
/// restricted to; archive contents with exact per-archive counters; per-event
/// traces with the indexes search uses (tenant first, then the filter, then
/// time, so every search walks one index newest first), the rules each trace
/// matched, facts waiting for their trace; and replay records.
const V3: &str = r#"
ALTER TABLE events ADD COLUMN only_rules TEXT;
CREATE TABLE archived (
    id INTEGER PRIMARY KEY AUTOINCREMENT, archive TEXT NOT NULL, ingested_ms INTEGER NOT NULL,
    tenant TEXT NOT NULL, bus TEXT NOT NULL, event_id TEXT NOT NULL, body BLOB NOT NULL);
CREATE INDEX archived_time ON archived (archive, ingested_ms, id);
CREATE TABLE archive_stats (
    archive TEXT PRIMARY KEY, events INTEGER NOT NULL, bytes INTEGER NOT NULL);
CREATE TABLE traces (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, bus TEXT NOT NULL,
    event_id TEXT NOT NULL, received_ms INTEGER NOT NULL, source TEXT NOT NULL,
    type TEXT NOT NULL, state TEXT NOT NULL, size INTEGER NOT NULL, replay TEXT,
    rules TEXT NOT NULL, body TEXT NOT NULL, event BLOB NOT NULL);
CREATE UNIQUE INDEX traces_event ON traces (tenant, event_id, bus, received_ms);
CREATE INDEX traces_time ON traces (tenant, received_ms);
CREATE INDEX traces_bus ON traces (tenant, bus, received_ms);
CREATE INDEX traces_source ON traces (tenant, source, received_ms);
CREATE INDEX traces_type ON traces (tenant, type, received_ms);
CREATE INDEX traces_state ON traces (tenant, state, received_ms);
CREATE TABLE trace_rules (
    tenant TEXT NOT NULL, rule TEXT NOT NULL, received_ms INTEGER NOT NULL, trace INTEGER NOT NULL,
    PRIMARY KEY (tenant, rule, received_ms, trace)) WITHOUT ROWID;
CREATE TABLE trace_pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, bus TEXT NOT NULL,
    event_id TEXT NOT NULL, received_ms INTEGER, at_ms INTEGER NOT NULL, fact TEXT NOT NULL);
CREATE INDEX trace_pending_event ON trace_pending (tenant, event_id, bus);
CREATE TABLE replays (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT, state TEXT NOT NULL,
    started_ms INTEGER NOT NULL, record TEXT NOT NULL);
CREATE UNIQUE INDEX replays_name ON replays (tenant, name);
CREATE INDEX replays_tenant ON replays (tenant, started_ms);
"#;

/// Version 4 (the ingest door, issue 11): the schema registry (versions
/// and discovered summaries), the deduplication keys of the buses' windows
/// (a 16-byte digest each, without rowid: one b-tree, plus the expiry
/// index pruning needs), and FIFO chains — the chain slot of a job, the
/// jobs waiting behind their chain's head, and each chain's last finished
/// slot.
const V4: &str = r#"
CREATE TABLE schema_versions (
    tenant TEXT NOT NULL, bus TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
    spec TEXT NOT NULL, created_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, bus, name, version)) WITHOUT ROWID;
CREATE TABLE discovered_schemas (
    tenant TEXT NOT NULL, bus TEXT NOT NULL, source TEXT NOT NULL, type TEXT NOT NULL,
    summary TEXT NOT NULL, revision INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, bus, source, type));
CREATE TABLE dedup_keys (
    key BLOB PRIMARY KEY, accepted_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX dedup_keys_expiry ON dedup_keys (expires_ms);
ALTER TABLE jobs ADD COLUMN chain TEXT;
ALTER TABLE jobs ADD COLUMN chain_key TEXT;
ALTER TABLE jobs ADD COLUMN chain_pos INTEGER;
ALTER TABLE jobs ADD COLUMN chain_sub INTEGER;
CREATE UNIQUE INDEX jobs_chain_head ON jobs (chain) WHERE chain IS NOT NULL;
CREATE TABLE waiting_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, bus TEXT NOT NULL,
    rule TEXT NOT NULL, target TEXT NOT NULL, event_id TEXT NOT NULL, event BLOB NOT NULL,
    body TEXT, attempts INTEGER NOT NULL, ingested_ms INTEGER NOT NULL, due_ms INTEGER NOT NULL,
    error_code TEXT, error_message TEXT, last_status INTEGER,
    chain TEXT NOT NULL, chain_key TEXT NOT NULL, chain_pos INTEGER NOT NULL, chain_sub INTEGER NOT NULL);
CREATE UNIQUE INDEX waiting_jobs_chain ON waiting_jobs (chain, chain_pos, chain_sub);
CREATE TABLE chains (
    chain TEXT PRIMARY KEY, done_pos INTEGER NOT NULL, done_sub INTEGER NOT NULL) WITHOUT ROWID;
"#;

/// Version 5 (issue 10, the cost of tracing): traces moved to their own
/// file, `traces.db` ([`TRACES_V1`]), written by their own thread so trace
/// commits never queue ahead of ingest commits. [`migrate_traces`] copies
/// the traces of an older file over before this step drops them here.
const V5: &str = r#"
DROP TABLE IF EXISTS trace_rules;
DROP TABLE IF EXISTS trace_pending;
DROP TABLE IF EXISTS traces;
"#;

/// Version 6 (issue 10, the cost of archiving): an archive row made at
/// ingest keeps the log position of its event (`archived.seq`) instead of
/// a second copy of it, and the log entry counts the archive rows that
/// refer to it (`events.archive_refs`). Archives outlive the log, so the
/// log keeps such entries row by row past its prune point; the `pruned`
/// cursor is that point (every unreferenced entry at or below it is gone),
/// so a prune starts there instead of walking the kept entries again, and
/// an archive's expiry deletes a kept entry when its last row goes. Older
/// rows keep their copy.
const V6: &str = r#"
ALTER TABLE events ADD COLUMN archive_refs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE archived ADD COLUMN seq INTEGER;
INSERT OR IGNORE INTO cursors (name, seq) SELECT 'pruned', COALESCE(MIN(seq) - 1, 0) FROM events;
"#;

/// Version 7 (issue 10, the cost of archiving): archive rows keyed by
/// their read order in one B-tree (`WITHOUT ROWID`). An archive row used
/// to cost a table insert, an index insert and the `AUTOINCREMENT`
/// counter's update; `examples/history-rows.py` (Python `sqlite3`, 100
/// rows a commit) measured +4.4 µs an event for that against +2.6 µs for
/// one insert into this table. A row's `pos` orders it among rows of
/// the same millisecond: a row written from now on takes its log
/// position plus `archive_pos_shift`, a row from before keeps its old id,
/// so the positions replays stored before the step still resume where
/// they stopped and a new row never takes an old row's key. Only rows
/// whose event is not in the log (version 5 and older) keep a copy and
/// the event's names.
const V7: &str = r#"
CREATE TABLE archive_rows (
    archive TEXT NOT NULL, ingested_ms INTEGER NOT NULL, pos INTEGER NOT NULL, seq INTEGER,
    tenant TEXT, bus TEXT, event_id TEXT, body BLOB,
    PRIMARY KEY (archive, ingested_ms, pos)) WITHOUT ROWID;
INSERT INTO archive_rows (archive, ingested_ms, pos, seq, tenant, bus, event_id, body)
    SELECT archive, ingested_ms, id, seq,
           CASE WHEN seq IS NULL THEN tenant END, CASE WHEN seq IS NULL THEN bus END,
           CASE WHEN seq IS NULL THEN event_id END, CASE WHEN seq IS NULL THEN body END
    FROM archived;
INSERT INTO cursors (name, seq) SELECT 'archive_pos_shift', MAX(
    COALESCE((SELECT MAX(id) FROM archived), 0),
    COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'archived'), 0));
DROP TABLE archived;
"#;

/// Version 8 (issue 10, the cost of tracing): the log entry of an event
/// on a bus that traces keeps its trace's searchable head (`source`,
/// `type`; both `NULL` on other entries), and one index over the traced
/// entries serves trace search by bus, time, source and type. A trace
/// that matched no rule — most traces — is then the log entry alone: its
/// row in `traces.db` (a row, two index entries and its own commit) was
/// most of what tracing cost, and the entry is written anyway.
/// `examples/history-rows.py` measured +1.0 µs an event for this against
/// +7.8 µs for the trace row (`head-in-log` against `trace`).
const V8: &str = r#"
ALTER TABLE events ADD COLUMN source TEXT;
ALTER TABLE events ADD COLUMN type TEXT;
CREATE INDEX events_traced ON events (tenant, bus, ingested_ms, seq, source, type)
    WHERE source IS NOT NULL;
INSERT OR IGNORE INTO cursors (name, seq) SELECT 'pruned_traced', seq FROM cursors WHERE name = 'pruned';
"#;

/// Version 9 (issue 10, the cost of archiving): an archive without a
/// pattern keeps a range of its bus's log instead of a row per event (see
/// `log_archives.rs`). An entry such an archive takes is marked `whole`,
/// and one partial index, `events_history`, holds the traced entries and
/// those: the traced ones first within a bus (`untraced` = 0, so a trace
/// search walks them alone), then the others. A traced event in such an
/// archive, the common case, costs one index entry for both.
const V9: &str = r#"
ALTER TABLE events ADD COLUMN whole INTEGER;
ALTER TABLE events ADD COLUMN untraced INTEGER AS (source IS NULL) VIRTUAL;
DROP INDEX events_traced;
CREATE INDEX events_history ON events (tenant, bus, untraced, ingested_ms, seq, source, type, whole)
    WHERE source IS NOT NULL OR whole IS NOT NULL;
CREATE TABLE log_archives (
    archive TEXT PRIMARY KEY, tenant TEXT NOT NULL, bus TEXT NOT NULL,
    first_seq INTEGER NOT NULL, from_ms INTEGER NOT NULL, from_seq INTEGER NOT NULL,
    last_seq INTEGER) WITHOUT ROWID;
CREATE INDEX log_archives_bus ON log_archives (tenant, bus);
"#;

/// Every version's step, in order: `(version, step)` brings a file from
/// the version before it to `version`. Numbers may skip (a step another
/// line of work adds later slots into its place).
pub(super) const STEPS: [(i64, &str); 9] = [
    (1, V1),
    (2, V2),
    (3, V3),
    (4, V4),
    (5, V5),
    (6, V6),
    (7, V7),
    (8, V8),
    (9, V9),
];

/// The main file's version from which traces live in `traces.db`.
const TRACES_MOVED: i64 = 5;

/// `traces.db`, version 1: the trace tables as version 3 of the main file
/// made them — one row per routed event with the searchable head in
/// columns (every index starts with the tenant and ends with the received
/// time, so a search walks one index newest first), the rules each trace
/// matched, and facts waiting for their trace.
const TRACES_V1: &str = r#"
CREATE TABLE traces (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, bus TEXT NOT NULL,
    event_id TEXT NOT NULL, received_ms INTEGER NOT NULL, source TEXT NOT NULL,
    type TEXT NOT NULL, state TEXT NOT NULL, size INTEGER NOT NULL, replay TEXT,
    rules TEXT NOT NULL, body TEXT NOT NULL, event BLOB NOT NULL);
CREATE UNIQUE INDEX traces_event ON traces (tenant, event_id, bus, received_ms);
CREATE INDEX traces_time ON traces (tenant, received_ms);
CREATE INDEX traces_bus ON traces (tenant, bus, received_ms);
CREATE INDEX traces_source ON traces (tenant, source, received_ms);
CREATE INDEX traces_type ON traces (tenant, type, received_ms);
CREATE INDEX traces_state ON traces (tenant, state, received_ms);
CREATE TABLE trace_rules (
    tenant TEXT NOT NULL, rule TEXT NOT NULL, received_ms INTEGER NOT NULL, trace INTEGER NOT NULL,
    PRIMARY KEY (tenant, rule, received_ms, trace)) WITHOUT ROWID;
CREATE TABLE trace_pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, bus TEXT NOT NULL,
    event_id TEXT NOT NULL, received_ms INTEGER, at_ms INTEGER NOT NULL, fact TEXT NOT NULL);
CREATE INDEX trace_pending_event ON trace_pending (tenant, event_id, bus);
"#;

/// `traces.db`, version 2: an event id finds its trace through
/// `trace_ids`, written in key order by merges of the recently recorded
/// traces, instead of a unique index on the id that every trace wrote to a
/// random page (see `trace_ids.rs`). Every existing trace lies above the
/// new mark (0), so the first open merges them all.
const TRACES_V2: &str = r#"
DROP INDEX traces_event;
CREATE TABLE trace_ids (
    key INTEGER NOT NULL, trace INTEGER NOT NULL, PRIMARY KEY (key, trace)) WITHOUT ROWID;
CREATE TABLE trace_ids_merged (mark INTEGER NOT NULL, received_ms INTEGER NOT NULL);
INSERT INTO trace_ids_merged (mark, received_ms) VALUES (0, 0);
"#;

/// `traces.db`, version 3: a trace made from a log entry keeps the entry's
/// position (`seq` in the main file's `events`) instead of a third copy of
/// the event, and the log keeps the entry as long as a trace refers to it
/// (the index gives the log the lowest such position). Older rows keep
/// their copy.
const TRACES_V3: &str = r#"
ALTER TABLE traces ADD COLUMN seq INTEGER;
CREATE INDEX traces_seq ON traces (seq) WHERE seq IS NOT NULL;
"#;

/// `traces.db`, version 4 (issue 10, the cost of tracing): two search
/// indexes instead of five. Each index a trace row enters costs its write
/// about 1.3 µs (a descent and a dirty page per commit); five were more
/// than half of a row's cost. `traces_head` orders a bus's traces newest
/// first and carries the searchable head (source, type, state), so a
/// search by any of them filters the index itself without reading rows; a
/// search across buses merges the walks of the tenant's buses.
/// `traces_uncommon` holds only the traces in a state other than the
/// three most traces end in — the failures and the unsettled, which are
/// what people search for by state and which a walk of a busy bus would
/// take longest to find. The `id` in `traces_head` makes (received, id)
/// its order, the order of a page, with the head behind it.
const TRACES_V4: &str = r#"
DROP INDEX traces_time;
DROP INDEX traces_bus;
DROP INDEX traces_source;
DROP INDEX traces_type;
DROP INDEX traces_state;
CREATE INDEX traces_head ON traces (tenant, bus, received_ms, id, source, type, state);
CREATE INDEX traces_uncommon ON traces (tenant, state, received_ms)
    WHERE state NOT IN ('delivered', 'no_match', 'filtered_out');
"#;

/// `traces.db`, version 5: `traces_uncommon`'s condition as three
/// comparisons instead of `NOT IN` a list. SQLite evaluates a partial
/// index's condition for every row written, and tests `NOT IN` a list of
/// three constants by building a temporary B-tree of the list each time:
/// 1.4 µs of every trace row, more than the index itself costs the rows
/// it takes (measured with a standalone script: 2.34 µs a row against
/// 0.98 µs with the comparisons). A statement must repeat the condition to
/// walk the index (`UNCOMMON_STATE` in `traces.rs`).
pub(super) const TRACES_V5: &str = r#"
DROP INDEX traces_uncommon;
CREATE INDEX traces_uncommon ON traces (tenant, state, received_ms)
    WHERE state <> 'delivered' AND state <> 'no_match' AND state <> 'filtered_out';
"#;

/// `traces.db`, version 6 (with the main file's version 8): a trace row
/// whose log entry keeps the head (`in_log`) is searched through the
/// log's `events_traced`, so `traces_head` becomes `traces_rows`, over the
/// rows whose entry does not (written before this version, or by a
/// caller without a log entry) — new rows enter one index fewer.
/// `log_traces.expired`: log entries at or below it hold no trace any
/// more (retention); `trace_ids_merged.log_mark`: the log entries up to it
/// have their event ids in `trace_ids`, as `-seq` (a trace row's id is
/// positive), and `log_received_ms` is the latest receive time among them
/// (`received_ms` stays the rows' own: recording a routed trace looks for
/// an earlier row only, and the log's entries are always newer).
pub(super) const TRACES_V6: &str = r#"
ALTER TABLE traces ADD COLUMN in_log INTEGER NOT NULL DEFAULT 0;
DROP INDEX traces_head;
CREATE INDEX traces_rows ON traces (tenant, bus, received_ms, id, source, type, state)
    WHERE in_log = 0;
ALTER TABLE trace_ids_merged ADD COLUMN log_mark INTEGER NOT NULL DEFAULT 0;
ALTER TABLE trace_ids_merged ADD COLUMN log_received_ms INTEGER NOT NULL DEFAULT 0;
CREATE TABLE log_traces (expired INTEGER NOT NULL);
INSERT INTO log_traces (expired) VALUES (0);
"#;

/// `traces.db`, version 7: merged trace ids as sorted runs
/// (`trace_id_runs.rs`) instead of one B-tree of random keys that every
/// merge rewrote whole. `trace_id_runs` is the catalog: a run's state (0
/// live, 1 being written by a compaction, 2 retired), its tier, how many
/// keys it holds, the receive times of its traces, the trace rows it was
/// made from (a merge takes the rows of an id range), the highest log
/// position it names, and the compaction it feeds (`into_run`).
/// `trace_id_compaction` is the compaction under way, if any. The old
/// table becomes run 1, of the tier its size gives it (merges of 262,144
/// keys, fanout 8), holding every time.
pub(super) const TRACES_V7: &str = r#"
CREATE TABLE trace_id_runs (
    run INTEGER PRIMARY KEY, state INTEGER NOT NULL, tier INTEGER NOT NULL,
    keys INTEGER NOT NULL, first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL,
    first_trace INTEGER NOT NULL, last_trace INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    into_run INTEGER);
CREATE TABLE trace_id_keys (
    run INTEGER NOT NULL, key INTEGER NOT NULL, trace INTEGER NOT NULL,
    PRIMARY KEY (run, key, trace)) WITHOUT ROWID;
CREATE TABLE trace_id_compaction (
    run INTEGER NOT NULL, next_key INTEGER NOT NULL, slice INTEGER NOT NULL,
    written INTEGER NOT NULL);
INSERT INTO trace_id_runs (run, state, tier, keys, first_ms, last_ms, first_trace, last_trace,
        last_seq)
    SELECT 1, 0, CASE WHEN COUNT(*) < 2097152 THEN 0 WHEN COUNT(*) < 16777216 THEN 1
        WHEN COUNT(*) < 134217728 THEN 2 ELSE 3 END,
        COUNT(*), -9223372036854775808, 9223372036854775807, 0,
        (SELECT mark FROM trace_ids_merged), (SELECT log_mark FROM trace_ids_merged)
    FROM trace_ids HAVING COUNT(*) > 0;
INSERT INTO trace_id_keys (run, key, trace) SELECT 1, key, trace FROM trace_ids;
DROP TABLE trace_ids;
"#;

/// `traces.db`, version 8 (issue 10, the cost of tracing): the trace of a
/// log entry that keeps its head is a row of `entry_traces`, keyed by the
/// entry's position, holding the routing record (state, rules, body) and
/// of the entry's head only the tenant and time its uncommon states are
/// searched by, instead of a `traces` row. A `traces` row cost its write
/// a table insert with the `AUTOINCREMENT` counter's update, the
/// `traces_seq` entry that led the entry to it, and copies of the
/// entry's id, bus, source and type; an `entry_traces` row is one insert
/// at the right edge of one B-tree, found by the position. Its
/// `trace_rules` rows name it as `-seq` (a `traces` row's id is
/// positive). `entry_traces_uncommon` is `traces_uncommon` for these
/// rows (in (time, position) order, a head walk's). Rows moved over
/// keep their rule rows, renamed; runs of trace ids that name a moved row
/// by its old id still name its entry as `-seq` (every traced entry's id
/// is merged as that), which finds it.
pub(super) const TRACES_V8: &str = r#"
CREATE TABLE entry_traces (
    seq INTEGER PRIMARY KEY, tenant TEXT NOT NULL, received_ms INTEGER NOT NULL,
    state TEXT NOT NULL, rules TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX entry_traces_uncommon ON entry_traces (tenant, state, received_ms)
    WHERE state <> 'delivered' AND state <> 'no_match' AND state <> 'filtered_out';
INSERT OR REPLACE INTO entry_traces (seq, tenant, received_ms, state, rules, body)
    SELECT seq, tenant, received_ms, state, rules, body FROM traces
    WHERE in_log = 1 AND seq IS NOT NULL ORDER BY id;
INSERT OR IGNORE INTO trace_rules (tenant, rule, received_ms, trace)
    SELECT r.tenant, r.rule, r.received_ms, -t.seq FROM trace_rules r JOIN traces t ON t.id = r.trace
    WHERE t.in_log = 1 AND t.seq IS NOT NULL
      AND t.id = (SELECT MAX(n.id) FROM traces n WHERE n.seq = t.seq AND n.in_log = 1);
DELETE FROM trace_rules WHERE trace IN (SELECT id FROM traces WHERE in_log = 1);
DELETE FROM traces WHERE in_log = 1;
"#;

/// `traces.db`'s steps, as [`STEPS`] for the main file.
pub(super) const TRACES_STEPS: [(i64, &str); 8] = [
    (1, TRACES_V1),
    (2, TRACES_V2),
    (3, TRACES_V3),
    (4, TRACES_V4),
    (5, TRACES_V5),
    (6, TRACES_V6),
    (7, TRACES_V7),
    (8, TRACES_V8),
];

/// The version of `traces.db` this build writes.
#[cfg(test)]
pub(super) const TRACES_CURRENT: i64 = TRACES_STEPS[TRACES_STEPS.len() - 1].0;

/// The schema version this build writes.
#[cfg(test)]
pub(super) const CURRENT: i64 = STEPS[STEPS.len() - 1].0;

/// Brings the main file to its newest version in one transaction.
pub(super) fn migrate(conn: &mut Connection, dir: &Path) -> Result<(), OpenError> {
    migrate_file(conn, dir, &STEPS)
}

/// Brings `traces.db` to its newest version, then moves the traces an older
/// main file (`main`, not migrated yet) still holds into it. The copy keeps
/// every row's id and skips rows already there, so a crash between it and
/// the main file's migration (which drops them there) just copies again.
pub(super) fn migrate_traces(
    traces: &mut Connection,
    main: &Connection,
    dir: &Path,
) -> Result<(), OpenError> {
    migrate_file(traces, dir, &TRACES_STEPS)?;
    let version: i64 = main
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .context("reading the schema version")?;
    let has_traces: bool = main
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'traces')",
            [],
            |r| r.get(0),
        )
        .context("looking for traces in the main file")?;
    if version >= TRACES_MOVED || !has_traces {
        return Ok(());
    }
    let path = main
        .path()
        .map(str::to_owned)
        .context("the main file's path")?;
    traces
        .execute("ATTACH DATABASE ?1 AS old", [&path])
        .context("attaching the main file")?;
    let moved = (|| -> anyhow::Result<usize> {
        let tx = traces.transaction()?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO main.traces (id, tenant, bus, event_id, received_ms, source, \
             type, state, size, replay, rules, body, event) SELECT id, tenant, bus, event_id, \
             received_ms, source, type, state, size, replay, rules, body, event FROM old.traces",
            [],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO main.trace_rules SELECT * FROM old.trace_rules",
            [],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO main.trace_pending SELECT * FROM old.trace_pending",
            [],
        )?;
        tx.commit()?;
        Ok(n)
    })();
    let detached = traces.execute("DETACH DATABASE old", []);
    let moved = moved.context("moving traces to their own file")?;
    detached.context("detaching the main file")?;
    if moved > 0 {
        tracing::info!(traces = moved, "moved traces to their own file");
    }
    Ok(())
}

/// Brings one file to the last of `steps` in one transaction.
fn migrate_file(conn: &mut Connection, dir: &Path, steps: &[(i64, &str)]) -> Result<(), OpenError> {
    let current = steps.last().map_or(0, |(v, _)| *v);
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .context("reading the schema version")?;
    if found > current {
        return Err(OpenError::NewerSchema {
            dir: dir.to_path_buf(),
            found,
            known: current,
        });
    }
    if found == current {
        return Ok(());
    }
    let tx = conn.transaction().context("starting the migration")?;
    for (version, step) in steps.iter().filter(|(v, _)| *v > found) {
        tx.execute_batch(step)
            .with_context(|| format!("migrating the schema to version {version}"))?;
    }
    tx.pragma_update(None, "user_version", current)
        .context("recording the schema version")?;
    tx.commit().context("committing the migration")?;
    if found > 0 {
        tracing::info!(from = found, to = current, "migrated the store's schema");
    }
    Ok(())
}
