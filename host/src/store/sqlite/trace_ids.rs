//! Finding a trace by its event id without a B-tree insert per trace.
//!
//! Event ids are random, so an index on them takes each new trace to a
//! different leaf page: a commit of 500 traces dirtied ~500 pages and wrote
//! each (4 KB) to the WAL, about 16 µs per trace — more than half of what a
//! trace cost (issue 10's profile). Instead, a trace's id is indexed in two
//! places:
//!
//! - **Recent traces** (ids above the merge mark) in memory: a map from the
//!   event id's [`key`] to the trace rows, filled as traces are recorded.
//! - **Older traces** in `trace_ids (key, trace)`, written by a [merge]
//!   that takes every recent trace in key order in one transaction, so each
//!   leaf page is written once per merge instead of once per commit.
//!
//! The mark (`trace_ids_merged`) moves in the merge's transaction, so the
//! traces above it are exactly the ones not merged yet; opening the store
//! merges them, and memory starts empty. The mark also keeps the latest
//! receive time among merged traces: recording a trace received after it
//! needs no look into `trace_ids` for an earlier record of the same trace
//! (the usual case — only a trace recorded again after a restart is
//! older), so the common write reads nothing from the file. A key is a hash: it may name rows of
//! other events (a collision, or a rolled-back insert whose row id was never
//! used), so readers always check the row they fetch.
//!
//! [merge]: merge

use anyhow::Context;
use rusqlite::{Connection, Transaction, params};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

/// How many recent traces trigger a merge. Bigger merges write each leaf
/// page of `trace_ids` for more traces; the memory they hold is ~40 bytes a
/// trace (a map entry), and a merge of this many took the traces' writer
/// ~100 ms (the 1,000,000-trace fill spent 6 % of its time in 15 merges).
pub(super) const MERGE_AT: usize = 64 * 1024;

/// The lookup key of an event id within its tenant: a 48-bit hash (keys
/// stay 6 bytes in SQLite's record format, and collisions among tens of
/// millions of traces are still rare). FNV-1a with a final mix, fixed
/// forever: keys are stored.
pub(super) fn key(tenant: &str, event_id: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant
        .bytes()
        .chain(std::iter::once(0xff))
        .chain(event_id.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser, so every input bit reaches the kept bits.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 16) as i64
}

/// The traces recorded since the last merge, by key.
#[derive(Debug, Default)]
pub(super) struct RecentTraceIds {
    by_key: Mutex<HashMap<i64, Rows>>,
    /// The latest receive time among merged traces: a trace received after
    /// it is not in `trace_ids`.
    merged_received_ms: AtomicI64,
}

/// What a merge wrote: every trace row up to `mark`, received at the latest
/// at `received_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Merged {
    pub(super) mark: i64,
    pub(super) received_ms: i64,
}

/// The trace rows of one key: nearly always one.
#[derive(Debug)]
enum Rows {
    One(i64),
    Many(Vec<i64>),
}

impl RecentTraceIds {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Rows>> {
        // A panic while holding the lock leaves the map whole (every update
        // is one insert or retain), so a poisoned lock is still usable.
        self.by_key.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers that trace row `id` has key `key`.
    pub(super) fn note(&self, key: i64, id: i64) {
        let mut map = self.map();
        match map.get_mut(&key) {
            None => {
                map.insert(key, Rows::One(id));
            }
            Some(Rows::One(first)) => {
                let first = *first;
                map.insert(key, Rows::Many(vec![first, id]));
            }
            Some(Rows::Many(ids)) => ids.push(id),
        }
    }

    /// The recent rows that may hold `key`'s trace.
    pub(super) fn rows(&self, key: i64) -> Vec<i64> {
        match self.map().get(&key) {
            None => Vec::new(),
            Some(Rows::One(id)) => vec![*id],
            Some(Rows::Many(ids)) => ids.clone(),
        }
    }

    /// How many keys wait for a merge.
    pub(super) fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether a trace received at `received_ms` may be in `trace_ids`.
    pub(super) fn may_be_merged(&self, received_ms: i64) -> bool {
        received_ms <= self.merged_received_ms.load(Ordering::Acquire)
    }

    /// Starts empty after the merge recorded in the file (at open, once
    /// everything is merged).
    pub(super) fn merged_before(conn: &Connection) -> anyhow::Result<Self> {
        Ok(Self {
            by_key: Mutex::default(),
            merged_received_ms: AtomicI64::new(merged_mark(conn)?.received_ms),
        })
    }

    /// Forgets the rows a committed merge wrote to `trace_ids` (all up to
    /// its mark); called only after that commit, so a lookup between the
    /// merge and its commit still finds them here.
    pub(super) fn forget_merged(&self, merged: Merged) {
        self.merged_received_ms
            .fetch_max(merged.received_ms, Ordering::AcqRel);
        let mark = merged.mark;
        self.map().retain(|_, rows| match rows {
            Rows::One(id) => *id > mark,
            Rows::Many(ids) => {
                ids.retain(|id| *id > mark);
                !ids.is_empty()
            }
        });
    }
}

/// The highest trace row whose key is in `trace_ids`, and the latest
/// receive time among those rows.
fn merged_mark(conn: &Connection) -> anyhow::Result<Merged> {
    conn.prepare_cached("SELECT mark, received_ms FROM trace_ids_merged")?
        .query_row([], |r| {
            Ok(Merged {
                mark: r.get(0)?,
                received_ms: r.get(1)?,
            })
        })
        .context("reading the traces' merge mark")
}

/// Writes the keys of every trace above the merge mark to `trace_ids` in
/// key order and moves the mark; returns the new mark (for
/// [`RecentTraceIds::forget_merged`] once committed), `None` if nothing
/// was waiting. Reads the rows themselves, not the map, so a rolled-back
/// insert that left a key in memory never reaches the index.
pub(super) fn merge(tx: &Transaction<'_>) -> anyhow::Result<Option<Merged>> {
    let before = merged_mark(tx)?;
    let mut received_ms = before.received_ms;
    let mut keys: Vec<(i64, i64)> = Vec::new();
    {
        let mut stmt =
            tx.prepare_cached("SELECT id, tenant, event_id, received_ms FROM traces WHERE id > ?")?;
        let mut rows = stmt.query([before.mark])?;
        while let Some(r) = rows.next()? {
            let (tenant, event_id): (String, String) = (r.get(1)?, r.get(2)?);
            keys.push((key(&tenant, &event_id), r.get(0)?));
            received_ms = received_ms.max(r.get(3)?);
        }
    }
    let Some(mark) = keys.iter().map(|(_, id)| *id).max() else {
        return Ok(None);
    };
    keys.sort_unstable();
    let mut insert =
        tx.prepare_cached("INSERT OR IGNORE INTO trace_ids (key, trace) VALUES (?, ?)")?;
    for (key, id) in keys {
        insert.execute(params![key, id])?;
    }
    tx.prepare_cached("UPDATE trace_ids_merged SET mark = ?, received_ms = ?")?
        .execute([mark, received_ms])?;
    Ok(Some(Merged { mark, received_ms }))
}

/// The rows of `trace_ids` that may hold `key`'s trace.
pub(super) fn merged_rows(tx: &Transaction<'_>, key: i64) -> rusqlite::Result<Vec<i64>> {
    tx.prepare_cached("SELECT trace FROM trace_ids WHERE key = ?")?
        .query_map([key], |r| r.get(0))?
        .collect()
}

/// Drops trace row `id`'s key from `trace_ids` (the row is being expired).
pub(super) fn drop_merged(tx: &Transaction<'_>, key: i64, id: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM trace_ids WHERE key = ? AND trace = ?")?
        .execute(params![key, id])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_and_tell_tenants_apart() {
        // Stored keys must never change between builds.
        assert_eq!(key("acme", "e1"), key("acme", "e1"));
        assert_ne!(key("acme", "e1"), key("acme", "e2"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(key("ab", "c"), key("a", "bc"));
        assert!(key("acme", "e1") >= 0 && key("acme", "e1") < 1 << 48);
        assert_eq!(key("acme", "e1"), 0x9f72_60e8_3136);
    }

    #[test]
    fn forgetting_a_merge_keeps_rows_recorded_after_it() {
        let recent = RecentTraceIds::default();
        recent.note(7, 1);
        recent.note(7, 5);
        recent.note(8, 2);
        assert_eq!(recent.rows(7), vec![1, 5]);
        assert!(!recent.may_be_merged(1));
        recent.forget_merged(Merged {
            mark: 2,
            received_ms: 100,
        });
        assert_eq!(recent.rows(7), vec![5]);
        assert_eq!(recent.rows(8), Vec::<i64>::new());
        assert_eq!(recent.len(), 1);
        assert!(recent.may_be_merged(100) && !recent.may_be_merged(101));
    }
}
