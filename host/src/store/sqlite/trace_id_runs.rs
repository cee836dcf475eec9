//! The merged trace ids, as sorted runs with tiered compaction.
//!
//! A merge used to insert its keys, in key order, into one B-tree of random
//! keys. Random keys soon fall in every leaf page, so each merge rewrote
//! about the whole table: its cost per key grew with the table (issue 10,
//! session 17: ~7 µs a key at 1.7 M keys, history's largest cost on the
//! load generator). Here each merge writes a **run** of its own: its keys
//! under a new run number, the leading column of `trace_id_keys`, so the
//! run is appended at the end of the B-tree and every page is written once.
//! A key's cost no longer depends on how many are stored.
//!
//! - **Lookups** probe each live run (one descent each), and only the runs
//!   whose receive times (`first_ms`..`last_ms`) hold the trace's, when the
//!   caller knows it — a replay mark or a fact does; only `GET /v1/events/{id}`
//!   probes them all.
//! - **Compaction** keeps the runs few: when [`Tiering::fanout`] live runs
//!   share a tier (runs of similar size: a tier is `fanout` times the one
//!   below), they are rewritten as one run of the next tier, a slice of the
//!   key space per step, and every key is rewritten once per tier.
//!   Keys whose trace is gone are left out on the way. The new run is read
//!   only once complete (its steps commit one by one while lookups still
//!   probe the old runs); the same transaction retires the old ones.
//! - **Retention drops whole runs.** Expiring a trace deletes nothing here
//!   (readers check every row a key names, so a stale key is harmless); a
//!   run whose traces are all gone is retired, and retired runs are deleted
//!   a slice per step. Expiry used to delete each key from a random page.
//!
//! A compaction that a restart interrupts resumes where its last committed
//! step stopped (`trace_id_compaction`). All of it runs on the traces'
//! writer, which also serves every read, so a lookup sees each step whole.
//! The shape follows LSM trees (RocksDB's universal compaction), on
//! SQLite's B-tree instead of files.

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use std::sync::atomic::{AtomicBool, Ordering};

/// Keys live in 48 bits (see `trace_ids::key`): the end of the key space.
const KEY_END: i64 = 1 << 48;

/// How runs are grouped and how much one step of maintenance does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tiering {
    /// Keys a merge writes (about): the size of a tier-0 run.
    pub(super) merge_at: usize,
    /// Runs of one tier that are compacted into one of the next. Lookups
    /// without a time probe up to `fanout - 1` runs a tier; each key is
    /// rewritten once a tier.
    pub(super) fanout: usize,
    /// Keys one step copies or deletes (about). A step holds the traces'
    /// writer: `examples/trace-id-runs-steps.py` measured a compaction of
    /// eight runs of 262,144 keys at 0.63 µs a key, a step of 65,536 keys
    /// 38 ms (median; 54 ms at most), and deleting retired runs 0.24 µs a
    /// key, 13 ms a step.
    pub(super) step_keys: usize,
}

/// `trace_id_runs.state`: read by lookups. A run being written by a
/// compaction is 1 (not read until complete); a retired one (compacted or
/// expired) is 2, deleted a slice per step and never read.
const LIVE: i64 = 0;

/// Runs of one tier compacted into one.
pub(super) const FANOUT: usize = 8;

/// Keys one maintenance step handles (see [`Tiering::step_keys`]).
pub(super) const STEP_KEYS: usize = 65_536;

impl Tiering {
    /// The tier of a run of `keys` keys: 0 below `fanout` merges' worth,
    /// one more for every factor of `fanout` above.
    fn tier(&self, keys: i64) -> i64 {
        let mut size = (keys.max(0) as u64) / (self.merge_at.max(1) as u64);
        let mut tier = 0;
        while size >= self.fanout.max(2) as u64 {
            size /= self.fanout.max(2) as u64;
            tier += 1;
        }
        tier
    }
}

/// A sorted run a merge writes.
#[derive(Debug, Default)]
pub(super) struct NewRun {
    /// (key, trace) pairs, in order, without duplicates.
    pub(super) keys: Vec<(i64, i64)>,
    /// The earliest and latest receive time among its traces.
    pub(super) first_ms: i64,
    pub(super) last_ms: i64,
    /// The trace rows it was made from (every row above the last merge's
    /// mark, up to its own: 0 and 0 for none) and the highest log position
    /// it names (0: none).
    pub(super) first_trace: i64,
    pub(super) last_trace: i64,
    pub(super) last_seq: i64,
}

/// Writes `run` under a new run number, after every other run (so at the
/// B-tree's end), and makes it live.
pub(super) fn append(tx: &Transaction<'_>, run: &NewRun, tiering: Tiering) -> anyhow::Result<()> {
    if run.keys.is_empty() {
        return Ok(());
    }
    let number = next_run(tx)?;
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO trace_id_keys (run, key, trace) VALUES (?1, ?2, ?3)",
    )?;
    for (key, trace) in &run.keys {
        insert.execute(params![number, key, trace])?;
    }
    let keys = run.keys.len() as i64;
    tx.prepare_cached(
        "INSERT INTO trace_id_runs (run, state, tier, keys, first_ms, last_ms, first_trace, \
         last_trace, last_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        number,
        LIVE,
        tiering.tier(keys),
        keys,
        run.first_ms,
        run.last_ms,
        run.first_trace,
        run.last_trace,
        run.last_seq
    ])
    .context("registering a run of trace ids")?;
    Ok(())
}

/// The number after every run's (retired ones' included: their keys may
/// still be there).
fn next_run(tx: &Transaction<'_>) -> rusqlite::Result<i64> {
    tx.prepare_cached("SELECT COALESCE(MAX(run), 0) + 1 FROM trace_id_runs")?
        .query_row([], |r| r.get(0))
}

/// The traces the live runs give `key` (of a trace received at
/// `received_ms`, when known: only the runs whose times hold it are
/// probed).
pub(super) fn lookup(
    tx: &Transaction<'_>,
    key: i64,
    received_ms: Option<i64>,
) -> rusqlite::Result<Vec<i64>> {
    // CROSS JOIN keeps the catalog outside: one descent of the keys' B-tree
    // per run it names.
    tx.prepare_cached(
        "SELECT k.trace FROM trace_id_runs r CROSS JOIN trace_id_keys k \
         WHERE r.state = 0 AND (?2 IS NULL OR (r.first_ms <= ?2 AND ?2 <= r.last_ms)) \
         AND k.run = r.run AND k.key = ?1",
    )?
    .query_map(params![key, received_ms], |r| r.get(0))?
    .collect()
}

/// Retires the live runs whose traces are all gone: no trace row left in
/// the range they were made from, and every log position they name at or
/// below `log_expired` (entries there hold no trace). Runs feeding a
/// compaction are left to it. Returns how many it retired.
pub(super) fn retire_expired(tx: &Transaction<'_>, log_expired: i64) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "UPDATE trace_id_runs SET state = 2 WHERE state = 0 AND into_run IS NULL \
         AND last_seq <= ?1 \
         AND NOT EXISTS (SELECT 1 FROM traces WHERE id BETWEEN first_trace AND last_trace)",
    )?
    .execute([log_expired])
}

/// Whether the runs may need maintenance, and its steps. The traces'
/// writer runs a step whenever no op waits (see `writer_loop`), so every
/// step is its own short transaction between the ops. Due at open (a
/// restart may have interrupted a compaction), after a merge adds a run
/// and after the sweep retires some; no longer once a step finds nothing.
/// Every change happens on the writer's thread, so none is missed.
#[derive(Debug)]
pub(super) struct Maintenance {
    due: AtomicBool,
    tiering: Tiering,
}

impl Maintenance {
    pub(super) fn new(tiering: Tiering) -> Self {
        Self {
            due: AtomicBool::new(true),
            tiering,
        }
    }

    /// How runs are made and grouped (merges use its `merge_at`).
    pub(super) fn tiering(&self) -> Tiering {
        self.tiering
    }

    /// There may be work.
    pub(super) fn wake(&self) {
        self.due.store(true, Ordering::Release);
    }

    /// Whether a step may find work.
    #[cfg(test)]
    pub(super) fn is_due(&self) -> bool {
        self.due.load(Ordering::Acquire)
    }

    /// Runs one step in a transaction of its own, if due. Returns whether
    /// it did some work (then the writer calls again while idle).
    pub(super) fn step(&self, conn: &mut Connection) -> bool {
        if !self.due.load(Ordering::Acquire) {
            return false;
        }
        let result = (|| -> anyhow::Result<Step> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let step = maintain(&tx, self.tiering)?;
            tx.commit()?;
            Ok(step)
        })();
        match result {
            Ok(Step::Worked) => true,
            Ok(Step::Idle) => {
                self.due.store(false, Ordering::Release);
                false
            }
            Err(e) => {
                // Rolled back whole; the next merge or sweep tries again.
                tracing::warn!(error = %e, "compacting trace ids failed");
                self.due.store(false, Ordering::Release);
                false
            }
        }
    }
}

/// What a maintenance step found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// It did some work; more may wait.
    Worked,
    /// Nothing was left to do.
    Idle,
}

/// One bounded step of maintenance: deletes a slice of a retired run,
/// else copies a slice of the running compaction, else starts one if a
/// tier has `fanout` live runs.
pub(super) fn maintain(tx: &Transaction<'_>, tiering: Tiering) -> anyhow::Result<Step> {
    if delete_retired_slice(tx, tiering)? {
        return Ok(Step::Worked);
    }
    if let Some(compaction) = running_compaction(tx)? {
        copy_slice(tx, compaction, tiering)?;
        return Ok(Step::Worked);
    }
    Ok(if start_compaction(tx, tiering)? {
        Step::Worked
    } else {
        Step::Idle
    })
}

/// Deletes up to a step's keys of one retired run, and the run once
/// empty. Returns whether there was one.
fn delete_retired_slice(tx: &Transaction<'_>, tiering: Tiering) -> anyhow::Result<bool> {
    let Some(run): Option<i64> = tx
        .prepare_cached("SELECT run FROM trace_id_runs WHERE state = 2 ORDER BY run LIMIT 1")?
        .query_row([], |r| r.get(0))
        .optional()?
    else {
        return Ok(false);
    };
    // The key a step's worth in: deleting up to it (inclusive) removes at
    // least a step's keys, even among equal keys.
    let bound: Option<i64> = tx
        .prepare_cached(
            "SELECT key FROM trace_id_keys WHERE run = ?1 ORDER BY key LIMIT 1 OFFSET ?2",
        )?
        .query_row(params![run, tiering.step_keys.max(1) as i64 - 1], |r| {
            r.get(0)
        })
        .optional()?;
    match bound {
        Some(bound) => {
            tx.prepare_cached("DELETE FROM trace_id_keys WHERE run = ?1 AND key <= ?2")?
                .execute(params![run, bound])?;
        }
        None => {
            tx.prepare_cached("DELETE FROM trace_id_keys WHERE run = ?1")?
                .execute([run])?;
            tx.prepare_cached("DELETE FROM trace_id_runs WHERE run = ?1")?
                .execute([run])?;
        }
    }
    Ok(true)
}

/// A compaction under way: the run it writes, where its next slice starts,
/// a slice's width in keys' space, and how many keys it wrote so far.
#[derive(Clone, Copy, Debug)]
struct Compaction {
    run: i64,
    next_key: i64,
    slice: i64,
    written: i64,
}

fn running_compaction(tx: &Transaction<'_>) -> rusqlite::Result<Option<Compaction>> {
    tx.prepare_cached("SELECT run, next_key, slice, written FROM trace_id_compaction")?
        .query_row([], |r| {
            Ok(Compaction {
                run: r.get(0)?,
                next_key: r.get(1)?,
                slice: r.get(2)?,
                written: r.get(3)?,
            })
        })
        .optional()
}

/// Starts compacting the lowest tier with `fanout` live runs, if any:
/// registers the new run (building) and marks its inputs. Returns
/// whether it started one.
fn start_compaction(tx: &Transaction<'_>, tiering: Tiering) -> anyhow::Result<bool> {
    let Some(tier): Option<i64> = tx
        .prepare_cached(
            "SELECT tier FROM trace_id_runs WHERE state = 0 AND into_run IS NULL \
             GROUP BY tier HAVING COUNT(*) >= ?1 ORDER BY tier LIMIT 1",
        )?
        .query_row([tiering.fanout.max(2) as i64], |r| r.get(0))
        .optional()?
    else {
        return Ok(false);
    };
    let run = next_run(tx)?;
    // Its times and highest ids are its inputs' (the bounds hold, if
    // loosely, when stale keys are left out).
    tx.prepare_cached(
        "INSERT INTO trace_id_runs (run, state, tier, keys, first_ms, last_ms, first_trace, \
         last_trace, last_seq) SELECT ?1, 1, ?2 + 1, 0, MIN(first_ms), MAX(last_ms), \
         COALESCE(MIN(NULLIF(first_trace, 0)), 0), MAX(last_trace), MAX(last_seq) FROM trace_id_runs WHERE state = 0 AND into_run IS NULL AND tier = ?2",
    )?
    .execute(params![run, tier])?;
    let keys: i64 = tx
        .prepare_cached(
            "SELECT SUM(keys) FROM trace_id_runs WHERE state = 0 AND into_run IS NULL AND tier = ?1",
        )?
        .query_row([tier], |r| r.get(0))?;
    tx.prepare_cached(
        "UPDATE trace_id_runs SET into_run = ?1 WHERE state = 0 AND into_run IS NULL AND tier = ?2",
    )?
    .execute(params![run, tier])?;
    // Keys are uniform over their space: a slice of it holds about a
    // step's keys.
    let slices = (keys.max(1) as u64).div_ceil(tiering.step_keys.max(1) as u64);
    let slice = (KEY_END as u64).div_ceil(slices) as i64;
    tx.prepare_cached(
        "INSERT INTO trace_id_compaction (run, next_key, slice, written) VALUES (?1, 0, ?2, 0)",
    )?
    .execute(params![run, slice])?;
    Ok(true)
}

/// Copies the next slice of the compaction's inputs into its run, leaving
/// out keys whose trace is gone; after the last slice, makes the run live
/// and retires the inputs, in the same transaction.
fn copy_slice(tx: &Transaction<'_>, c: Compaction, tiering: Tiering) -> anyhow::Result<()> {
    let end = c.next_key.saturating_add(c.slice).min(KEY_END);
    // A row below the lowest that exists is gone (rows are only deleted,
    // ids only grow); so is every traced log entry at or below the
    // expired point.
    let lowest_row: i64 = tx
        .prepare_cached("SELECT COALESCE(MIN(id), ?1) FROM traces")?
        .query_row([i64::MAX], |r| r.get(0))?;
    let log_expired: i64 = tx
        .prepare_cached("SELECT expired FROM log_traces")?
        .query_row([], |r| r.get(0))?;
    let copied = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO trace_id_keys (run, key, trace) \
             SELECT ?1, k.key, k.trace FROM trace_id_runs r CROSS JOIN trace_id_keys k \
             WHERE r.into_run = ?1 AND k.run = r.run AND k.key >= ?2 AND k.key < ?3 \
             AND ((k.trace > 0 AND k.trace >= ?4) OR (k.trace < 0 AND -k.trace > ?5)) \
             ORDER BY k.key, k.trace",
        )?
        .execute(params![c.run, c.next_key, end, lowest_row, log_expired])?;
    let written = c.written + copied as i64;
    if end < KEY_END {
        tx.prepare_cached("UPDATE trace_id_compaction SET next_key = ?1, written = ?2")?
            .execute(params![end, written])?;
        return Ok(());
    }
    tx.prepare_cached("UPDATE trace_id_runs SET state = 2, into_run = NULL WHERE into_run = ?1")?
        .execute([c.run])?;
    tx.prepare_cached("UPDATE trace_id_runs SET state = 0, keys = ?2, tier = ?3 WHERE run = ?1")?
        .execute(params![c.run, written, tiering.tier(written)])?;
    tx.prepare_cached("DELETE FROM trace_id_compaction")?
        .execute([])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tier_is_a_factor_of_fanout_in_size() {
        let t = Tiering {
            merge_at: 100,
            fanout: 8,
            step_keys: 10,
        };
        assert_eq!(t.tier(0), 0);
        assert_eq!(t.tier(100), 0);
        assert_eq!(t.tier(799), 0);
        assert_eq!(t.tier(800), 1);
        assert_eq!(t.tier(6_399), 1);
        assert_eq!(t.tier(6_400), 2);
    }
}
