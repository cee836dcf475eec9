//! Archives that take every event of their bus (no pattern), kept as a
//! range of the log instead of a row per event.
//!
//! Such an archive holds every entry of its bus marked `whole` (stamped
//! with an archive of that kind; replayed events never are) from the
//! first entry stamped with it on: the log keeps those entries, and the
//! same partial index that serves trace search (`events_history`, main
//! file version 9) serves the archive's reads, so archiving a traced event
//! costs nothing beyond the entry's own index entry. An archive row per
//! event was the largest part of what history cost batches of 10
//! (`examples/history-rows.py both-rows` against `both-in-log`: +2.8 µs an
//! event for the row, before its WAL frames and their checkpoint).
//!
//! An archive's range (`log_archives`) is the bus's `whole` entries with a
//! position of at least `first_seq` (and at most `last_seq` once closed)
//! and an (ingest time, position) above `from`. Expiry moves `from` up;
//! an entry counts the ranges it is in, with the archive rows that refer
//! to it, in `archive_refs`, so the log keeps it while one does. An
//! archive made a range at its first event stays one until its pattern
//! changes or it is purged (the range is closed, and later events take
//! rows); one that already has rows (from before version 9, or a pattern
//! it had) keeps taking rows. Reads take both and merge them: a row's
//! place is its log position plus the shift, a range entry's too, so one
//! order and one kind of resume point cover both.

use super::archives::PendingCounts;
use super::log::Seq;
use crate::store::{ArchiveId, Millis};
use rusqlite::{OptionalExtension, Transaction, params};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// How far before its first entry's ingest time a range starts. Ingest
/// times are taken before the commit, so an entry committed after the
/// first one may have been accepted a little earlier; a range reaches
/// back this far for them, and no further, so that its reads do not walk
/// the bus's older traced entries.
const SKEW_MS: Millis = 60_000;

/// One archive's range of its bus's log.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Range {
    pub archive: ArchiveId,
    pub tenant: String,
    pub bus: String,
    pub first_seq: Seq,
    /// The range holds entries above this (ingest time, position).
    pub from: (Millis, Seq),
    /// Its last position once closed (no new entry enters it).
    pub last_seq: Option<Seq>,
}

impl Range {
    /// Whether an entry appended now, accepted at `ms`, enters the range
    /// (its position is above every position in the file).
    fn takes_new(&self, ms: Millis) -> bool {
        self.last_seq.is_none() && ms >= self.from.0
    }
}

const RANGE_COLUMNS: &str = "archive, tenant, bus, first_seq, from_ms, from_seq, last_seq";

fn range(r: &rusqlite::Row<'_>) -> rusqlite::Result<Range> {
    Ok(Range {
        archive: r.get(0)?,
        tenant: r.get(1)?,
        bus: r.get(2)?,
        first_seq: r.get(3)?,
        from: (r.get(4)?, r.get(5)?),
        last_seq: r.get(6)?,
    })
}

/// The range of `archive`, if it has one.
pub(super) fn range_of(tx: &Transaction<'_>, archive: &str) -> rusqlite::Result<Option<Range>> {
    tx.prepare_cached(&format!(
        "SELECT {RANGE_COLUMNS} FROM log_archives WHERE archive = ?"
    ))?
    .query_row([archive], range)
    .optional()
}

/// Each tenant's buses' ranges.
type ByTenant = HashMap<String, HashMap<String, Arc<[Range]>>>;

/// The ranges of each bus, read from the file when first needed, so an
/// append looks up its bus's ranges in memory. Every change to a bus's
/// ranges writes the file and forgets the bus here (the next append reads
/// it again, seeing exactly what its transaction sees, also after a
/// savepoint rolled the change back); a failed commit forgets everything.
#[derive(Debug, Default)]
pub(super) struct RangeCache {
    /// Tenant → bus → ranges (looked up without building a key).
    buses: Mutex<ByTenant>,
    /// Archives known to have rows (they take rows, never a range).
    with_rows: Mutex<HashSet<ArchiveId>>,
}

impl RangeCache {
    fn buses(&self) -> MutexGuard<'_, ByTenant> {
        self.buses.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_rows(&self) -> MutexGuard<'_, HashSet<ArchiveId>> {
        self.with_rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets everything (the commit that read it failed).
    pub(super) fn clear(&self) {
        self.buses().clear();
        self.with_rows().clear();
    }

    fn forget(&self, tenant: &str, bus: &str) {
        if let Some(buses) = self.buses().get_mut(tenant) {
            buses.remove(bus);
        }
    }

    fn of_bus(
        &self,
        tx: &Transaction<'_>,
        tenant: &str,
        bus: &str,
    ) -> rusqlite::Result<Arc<[Range]>> {
        if let Some(ranges) = self.buses().get(tenant).and_then(|b| b.get(bus)) {
            return Ok(ranges.clone());
        }
        let ranges: Arc<[Range]> = tx
            .prepare_cached(&format!(
                "SELECT {RANGE_COLUMNS} FROM log_archives WHERE tenant = ? AND bus = ?"
            ))?
            .query_map(params![tenant, bus], range)?
            .collect::<Result<Vec<_>, _>>()?
            .into();
        self.buses()
            .entry(tenant.to_owned())
            .or_default()
            .insert(bus.to_owned(), ranges.clone());
        Ok(ranges)
    }

    fn has_rows(&self, tx: &Transaction<'_>, archive: &str) -> rusqlite::Result<bool> {
        if self.with_rows().contains(archive) {
            return Ok(true);
        }
        let has: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM archive_rows WHERE archive = ?)")?
            .query_row([archive], |r| r.get(0))?;
        if has {
            self.with_rows().insert(archive.to_owned());
        }
        Ok(has)
    }
}

/// Where an entry about to be appended is archived.
#[derive(Debug, Default)]
pub(super) struct Placement {
    /// How many ranges it enters (counted in its `archive_refs`).
    pub ranges: usize,
    /// Archives that start a range with it.
    start: Vec<ArchiveId>,
    /// Ranges its position closes (their archive takes rows from now on).
    close: Vec<ArchiveId>,
}

impl Placement {
    /// Whether the entry is marked as taken by its bus's ranges.
    pub fn whole(&self) -> bool {
        self.ranges > 0
    }

    /// Places an entry of `tenant`'s `bus` accepted at `ms`, `size` bytes,
    /// stamped with the archives that take every event of the bus
    /// (`bus_archives`) and those with a pattern (`rows`, to which it adds
    /// the archives of the first kind that take rows). The ranges it
    /// enters are added to `counts`; `ranges` are the bus's (see
    /// [`BusRanges`]).
    pub fn of(
        tx: &Transaction<'_>,
        ranges: &mut BusRanges<'_>,
        (tenant, bus, ms): (&str, &str, Millis),
        (bus_archives, rows): (Vec<ArchiveId>, &mut Vec<ArchiveId>),
        (size, counts): (i64, &mut PendingCounts),
    ) -> rusqlite::Result<Self> {
        let mut placement = Self::default();
        if bus_archives.is_empty() && rows.is_empty() {
            return Ok(placement);
        }
        let cache = ranges.cache;
        let ranges = ranges.of(tx, tenant, bus)?;
        for archive in rows.iter() {
            if ranges
                .iter()
                .any(|r| r.archive == *archive && r.last_seq.is_none())
            {
                placement.close.push(archive.clone());
            }
        }
        if bus_archives.is_empty() {
            return Ok(placement);
        }
        // Every open range of the bus takes a stamped entry, also one
        // stamped before its archive existed (its range started at an
        // entry stamped with it, which committed first): the range, its
        // reads and its counters agree on what it holds.
        for r in ranges.iter() {
            if r.takes_new(ms) && !placement.close.contains(&r.archive) {
                placement.ranges += 1;
                counts.add(&r.archive, 1, size);
            }
        }
        for archive in bus_archives {
            match ranges.iter().find(|r| r.archive == archive) {
                Some(r) if r.last_seq.is_none() => {}
                Some(_) => rows.push(archive),
                None if cache.has_rows(tx, &archive)? => rows.push(archive),
                None => {
                    placement.ranges += 1;
                    counts.add(&archive, 1, size);
                    placement.start.push(archive);
                }
            }
        }
        Ok(placement)
    }

    /// Writes the ranges the entry at `seq` starts and closes.
    pub fn write(
        self,
        tx: &Transaction<'_>,
        ranges: &mut BusRanges<'_>,
        (tenant, bus, ms): (&str, &str, Millis),
        seq: Seq,
    ) -> rusqlite::Result<()> {
        if self.start.is_empty() && self.close.is_empty() {
            return Ok(());
        }
        let mut start = tx.prepare_cached(
            "INSERT INTO log_archives \
             (archive, tenant, bus, first_seq, from_ms, from_seq, last_seq) \
             VALUES (?, ?, ?, ?, ?, ?, NULL)",
        )?;
        for archive in &self.start {
            start.execute(params![archive, tenant, bus, seq, ms - SKEW_MS, i64::MIN])?;
        }
        for archive in &self.close {
            close(tx, archive, seq - 1)?;
        }
        ranges.last = None;
        ranges.cache.forget(tenant, bus);
        Ok(())
    }
}

/// The ranges of the bus an append's entries are on, kept from one entry
/// to the next while the bus stays the same (the entries of an append
/// are mostly of one bus). The appender says when the bus changes
/// ([`BusRanges::next_bus`]), so no copy of the bus's name is kept.
pub(super) struct BusRanges<'a> {
    cache: &'a RangeCache,
    last: Option<Arc<[Range]>>,
}

impl<'a> BusRanges<'a> {
    pub fn new(cache: &'a RangeCache) -> Self {
        Self { cache, last: None }
    }

    /// The next entry is on another bus than the one before it.
    pub fn next_bus(&mut self) {
        self.last = None;
    }

    fn of(
        &mut self,
        tx: &Transaction<'_>,
        tenant: &str,
        bus: &str,
    ) -> rusqlite::Result<Arc<[Range]>> {
        if let Some(ranges) = &self.last {
            return Ok(ranges.clone());
        }
        let ranges = self.cache.of_bus(tx, tenant, bus)?;
        self.last = Some(ranges.clone());
        Ok(ranges)
    }
}

/// Closes a range at `last` (an open one only).
fn close(tx: &Transaction<'_>, archive: &str, last: Seq) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE log_archives SET last_seq = ? WHERE archive = ? AND last_seq IS NULL",
    )?
    .execute(params![last, archive])?;
    Ok(())
}

/// One of a range's entries, as a walk reads it.
pub(super) struct RangeEntry {
    pub seq: Seq,
    pub ingested_ms: Millis,
}

/// The statement that walks one lane of a range (`untraced` = 0 or 1)
/// from `?3, ?4` (exclusive) to `?5` (ingest time, exclusive), positions
/// from `?6` to `?7`; `columns` after `seq, ingested_ms`.
fn lane(untraced: u8, columns: &str) -> String {
    format!(
        "SELECT seq, ingested_ms{columns} FROM events INDEXED BY events_history \
         WHERE tenant = ?1 AND bus = ?2 AND untraced = {untraced} AND whole = 1 \
           AND (ingested_ms, seq) > (?3, ?4) AND ingested_ms < ?5 AND seq >= ?6 AND seq <= ?7"
    )
}

/// A range's entries after `after` (or its start) accepted before
/// `before`, in (ingest time, position) order, at most `max` of them
/// (`descending`: the newest first, from the end); `columns` are read
/// after the position and the time. Both lanes of the index (traced
/// entries and the others) are walked and merged by SQLite.
pub(super) fn walk<T>(
    tx: &Transaction<'_>,
    r: &Range,
    (after, before): ((Millis, Seq), Millis),
    (max, descending): (usize, bool),
    columns: &str,
    read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let order = if descending { "DESC" } else { "" };
    let sql = format!(
        "{} UNION ALL {} ORDER BY 2 {order}, 1 {order} LIMIT ?8",
        lane(0, columns),
        lane(1, columns)
    );
    let from = after.max(r.from);
    let mut stmt = tx.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        params![
            r.tenant,
            r.bus,
            from.0,
            from.1,
            before,
            r.first_seq,
            r.last_seq.unwrap_or(i64::MAX),
            max as i64
        ],
        read,
    )?;
    rows.collect()
}

/// How many of a range's entries were accepted in `[from, to)`.
pub(super) fn count(
    tx: &Transaction<'_>,
    r: &Range,
    (from, to): (Millis, Millis),
) -> rusqlite::Result<u64> {
    let lane_count = |untraced: u8| {
        format!(
            "SELECT COUNT(*) FROM events INDEXED BY events_history \
             WHERE tenant = ?1 AND bus = ?2 AND untraced = {untraced} AND whole = 1 \
               AND (ingested_ms, seq) > (?3, ?4) AND ingested_ms < ?5 AND seq >= ?6 AND seq <= ?7"
        )
    };
    let start = (from, i64::MIN).max(r.from);
    let n: i64 = tx
        .prepare_cached(&format!("SELECT ({}) + ({})", lane_count(0), lane_count(1)))?
        .query_row(
            params![
                r.tenant,
                r.bus,
                start.0,
                start.1,
                to,
                r.first_seq,
                r.last_seq.unwrap_or(i64::MAX)
            ],
            |row| row.get(0),
        )?;
    Ok(n.max(0) as u64)
}

/// Lets go of a range's entries up to `upto` (the last one a walk
/// read): the range starts after it from now on.
pub(super) fn release_upto(
    tx: &Transaction<'_>,
    cache: &RangeCache,
    r: &Range,
    upto: &RangeEntry,
) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE log_archives SET from_ms = ?, from_seq = ? WHERE archive = ?")?
        .execute(params![upto.ingested_ms, upto.seq, r.archive])?;
    cache.forget(&r.tenant, &r.bus);
    Ok(())
}

/// Closes a range being purged at the log's end (no entry appended from
/// now on enters it), so the purge has an end however busy the bus is.
pub(super) fn close_for_purge(
    tx: &Transaction<'_>,
    cache: &RangeCache,
    r: &mut Range,
) -> rusqlite::Result<()> {
    if r.last_seq.is_none() {
        let last = super::log::last_seq(tx)?;
        close(tx, &r.archive, last)?;
        r.last_seq = Some(last);
        cache.forget(&r.tenant, &r.bus);
    }
    Ok(())
}

/// Forgets a purged range.
pub(super) fn drop_range(
    tx: &Transaction<'_>,
    cache: &RangeCache,
    r: &Range,
) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM log_archives WHERE archive = ?")?
        .execute([&r.archive])?;
    cache.forget(&r.tenant, &r.bus);
    Ok(())
}
