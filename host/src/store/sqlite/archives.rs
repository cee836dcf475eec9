//! [`Archives`] on SQLite: the `archive_rows` table (one row per archived
//! event, keyed by archive, ingest time and position, so a row is one
//! B-tree insert) and exact per-archive counters in `archive_stats`, kept
//! in the same transaction as every insert and delete. An append adds to
//! them once per commit, not once per append ([`PendingCounts`]).
//!
//! A row written at ingest keeps its event's log position (`seq`) rather
//! than a copy of the event: the entry is in the same commit, and the log
//! keeps it while rows refer to it (`events.archive_refs`). Rows written by
//! version 5 and older keep their copy and the event's names; every read
//! takes the log's event when there is one, else the copy.
//!
//! An archive without a pattern has no rows at all: it is a range of its
//! bus's log (see [`log_archives`](super::log_archives)). Every verb here
//! reads and writes both kinds, so an archive whose pattern came and went
//! (a range, then rows) is still one archive in one order.

use super::SqliteStore;
use super::log::Seq;
use super::log_archives::{self, RangeCache};
use crate::store::{
    ArchiveId, ArchivePosition, ArchiveStats, ArchivedEvent, Archives, LoggedEvent, Millis,
    StoreResult, Window,
};
use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{OptionalExtension, Transaction, params};
use std::collections::BTreeMap;

/// Writes the archive rows of events just inserted: `rows` pairs an
/// archive with an index into `events`. Each row refers to the event's log
/// entry, whose `archive_refs` already counts it, and is placed after
/// every row of an older version (see `schema::V7`). The rows are added to
/// `counts`.
pub(super) fn write_rows(
    tx: &Transaction<'_>,
    rows: &[(ArchiveId, usize)],
    events: &[(Seq, LoggedEvent)],
    shift: PosShift,
    counts: &mut PendingCounts,
) -> anyhow::Result<()> {
    let PosShift(shift) = shift;
    let mut insert = tx.prepare_cached(
        "INSERT INTO archive_rows (archive, ingested_ms, pos, seq) VALUES (?, ?, ?, ?)",
    )?;
    for (archive, at) in rows {
        let Some((seq, e)) = events.get(*at) else {
            continue;
        };
        insert.execute(params![archive, e.ingested_ms, seq + shift, seq])?;
        counts.add(archive, 1, e.body.len() as i64);
    }
    Ok(())
}

/// Additions to archive counters not written yet. Every append used to
/// update its archives' counter rows itself — a statement and, in a
/// commit of many appends, the same page rewritten by each (1.5 % of the
/// process when ingesting single events into an archived bus). The
/// writer keeps an unisolated append's additions (its failure fails the
/// commit, so they cannot outlive its rows) and writes them before any
/// other operation of the commit can read the counters, and before it
/// commits.
#[derive(Debug, Default)]
pub(super) struct PendingCounts(BTreeMap<ArchiveId, (i64, i64)>);

impl PendingCounts {
    pub(super) fn add(&mut self, archive: &str, events: i64, bytes: i64) {
        let n = match self.0.get_mut(archive) {
            Some(n) => n,
            None => self.0.entry(archive.to_owned()).or_default(),
        };
        n.0 += events;
        n.1 += bytes;
    }

    /// Writes what waits to the counters and forgets it.
    pub(super) fn write(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        for (archive, (events, bytes)) in std::mem::take(&mut self.0) {
            count(tx, &archive, events, bytes)?;
        }
        Ok(())
    }
}

/// What a new archive row's `pos` adds to its log position (see the main
/// file's version 7). Fixed when the step made it, so read once when the
/// store opens instead of in every append.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct PosShift(i64);

impl PosShift {
    /// Reads it from the file (0 when the file began at version 7 or later).
    pub(super) fn read(conn: &rusqlite::Connection) -> rusqlite::Result<Self> {
        Ok(Self(
            conn.query_row(
                "SELECT seq FROM cursors WHERE name = 'archive_pos_shift'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0),
        ))
    }
}

/// Adds to (or, with negative numbers, takes from) an archive's counters.
fn count(tx: &Transaction<'_>, archive: &str, events: i64, bytes: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO archive_stats (archive, events, bytes) VALUES (?1, ?2, ?3) \
         ON CONFLICT (archive) DO UPDATE SET events = events + ?2, bytes = bytes + ?3",
    )?
    .execute(params![archive, events, bytes])?;
    Ok(())
}

/// An archive row on its way out: its key within the archive, the log
/// position it refers to (none for a row with its own copy), and its
/// event's size.
struct DoomedRow {
    ingested_ms: Millis,
    pos: i64,
    seq: Option<Seq>,
    size: i64,
}

/// Selects an archive's rows (`?1`) on their way out, with the size of the
/// event each holds or refers to; callers add their condition, order and
/// limit, binding from `?2`.
const DOOMED_ROWS: &str = "SELECT a.ingested_ms, a.pos, a.seq, \
     COALESCE(length(e.body), length(a.body), 0) \
     FROM archive_rows a LEFT JOIN events e ON e.seq = a.seq WHERE a.archive = ?1";

fn doomed_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DoomedRow> {
    Ok(DoomedRow {
        ingested_ms: r.get(0)?,
        pos: r.get(1)?,
        seq: r.get(2)?,
        size: r.get(3)?,
    })
}

/// Deletes the given rows of an archive and takes them off its counters.
fn delete_rows(tx: &Transaction<'_>, archive: &str, rows: &[DoomedRow]) -> rusqlite::Result<()> {
    let mut delete = tx.prepare_cached(
        "DELETE FROM archive_rows WHERE archive = ? AND ingested_ms = ? AND pos = ?",
    )?;
    let mut release = Release::new(tx)?;
    let mut bytes = 0;
    for row in rows {
        delete.execute(params![archive, row.ingested_ms, row.pos])?;
        bytes += row.size;
        if let Some(seq) = row.seq {
            release.entry(seq)?;
        }
    }
    uncount(tx, archive, rows.len(), bytes)
}

/// Takes events off an archive's counters, and the counters away once
/// they reach nothing.
fn uncount(tx: &Transaction<'_>, archive: &str, events: usize, bytes: i64) -> rusqlite::Result<()> {
    if events == 0 {
        return Ok(());
    }
    count(tx, archive, -(events as i64), -bytes)?;
    tx.prepare_cached("DELETE FROM archive_stats WHERE archive = ? AND events <= 0")?
        .execute([archive])?;
    Ok(())
}

/// Lets go of log entries an archive referred to (by a row or its range).
/// An entry that loses its last archive goes too if the log's prune has
/// passed it as a trace too (above that point a later prune takes it).
struct Release<'t> {
    release: rusqlite::CachedStatement<'t>,
    drop_entry: rusqlite::CachedStatement<'t>,
    pruned: Seq,
    pruned_traced: Seq,
}

impl<'t> Release<'t> {
    fn new(tx: &'t Transaction<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            release: tx.prepare_cached(
                "UPDATE events SET archive_refs = archive_refs - 1 WHERE seq = ? \
                 RETURNING archive_refs, source IS NOT NULL",
            )?,
            drop_entry: tx.prepare_cached("DELETE FROM events WHERE seq = ?")?,
            pruned: super::log::pruned_cursor(tx)?,
            pruned_traced: super::log::pruned_traced_cursor(tx)?,
        })
    }

    fn entry(&mut self, seq: Seq) -> rusqlite::Result<()> {
        let left: Option<(i64, bool)> = self
            .release
            .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let passed = |traced: bool| {
            seq <= if traced {
                self.pruned_traced
            } else {
                self.pruned
            }
        };
        if left.is_some_and(|(n, traced)| n <= 0 && passed(traced)) {
            self.drop_entry.execute([seq])?;
        }
        Ok(())
    }
}

/// Lets go of the first `max` entries of an archive's range accepted
/// before `before` and takes them off its counters; returns how many.
fn expire_range(
    tx: &Transaction<'_>,
    cache: &RangeCache,
    range: &log_archives::Range,
    before: Millis,
    max: usize,
) -> rusqlite::Result<usize> {
    let entries = log_archives::walk(
        tx,
        range,
        ((Millis::MIN, Seq::MIN), before),
        (max, false),
        ", length(body)",
        |r| {
            let entry = log_archives::RangeEntry {
                seq: r.get(0)?,
                ingested_ms: r.get(1)?,
            };
            Ok((entry, r.get::<_, i64>(2)?))
        },
    )?;
    let mut release = Release::new(tx)?;
    let mut bytes = 0;
    for (entry, size) in &entries {
        release.entry(entry.seq)?;
        bytes += size;
    }
    uncount(tx, &range.archive, entries.len(), bytes)?;
    if let Some((last, _)) = entries.last() {
        log_archives::release_upto(tx, cache, range, last)?;
    }
    Ok(entries.len())
}

fn after_of(window: Window, after: Option<&ArchivePosition>) -> (Millis, i64) {
    after
        .and_then(ArchivePosition::parts)
        .filter(|(ms, _)| *ms >= window.from_ms)
        .unwrap_or((window.from_ms, i64::MIN))
}

/// The ingest times of an archive's oldest and newest events, by rows and
/// by range.
fn ends(tx: &Transaction<'_>, archive: &str) -> rusqlite::Result<(Option<Millis>, Option<Millis>)> {
    let row_end = |order: &str| -> rusqlite::Result<Option<Millis>> {
        tx.prepare_cached(&format!(
            "SELECT ingested_ms FROM archive_rows WHERE archive = ? \
             ORDER BY ingested_ms {order}, pos {order} LIMIT 1"
        ))?
        .query_row([archive], |r| r.get(0))
        .optional()
    };
    let (mut oldest, mut newest) = (row_end("ASC")?, row_end("DESC")?);
    if let Some(range) = log_archives::range_of(tx, archive)? {
        let range_end = |descending: bool| -> rusqlite::Result<Option<Millis>> {
            let all = ((Millis::MIN, Seq::MIN), Millis::MAX);
            let found = log_archives::walk(tx, &range, all, (1, descending), "", |r| r.get(1))?;
            Ok(found.first().copied())
        };
        oldest = [oldest, range_end(false)?].into_iter().flatten().min();
        newest = [newest, range_end(true)?].into_iter().flatten().max();
    }
    Ok((oldest, newest))
}

#[async_trait]
impl Archives for SqliteStore {
    async fn archive_stats(&self, archive: &str) -> StoreResult<ArchiveStats> {
        let archive = archive.to_owned();
        self.run(move |tx| {
            let counts: Option<(i64, i64)> = tx
                .prepare_cached("SELECT events, bytes FROM archive_stats WHERE archive = ?")?
                .query_row([&archive], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((events, bytes)) = counts else {
                return Ok(ArchiveStats::default());
            };
            let (oldest_ms, newest_ms) = ends(tx, &archive)?;
            Ok(ArchiveStats {
                event_count: events.max(0) as u64,
                size_bytes: bytes.max(0) as u64,
                oldest_ms,
                newest_ms,
            })
        })
        .await
    }

    async fn count_archived(&self, archive: &str, window: Window) -> StoreResult<u64> {
        let archive = archive.to_owned();
        self.run(move |tx| {
            let n: i64 = tx
                .prepare_cached(
                    "SELECT COUNT(*) FROM archive_rows \
                     WHERE archive = ? AND ingested_ms >= ? AND ingested_ms < ?",
                )?
                .query_row(params![archive, window.from_ms, window.to_ms], |r| r.get(0))?;
            let in_range = match log_archives::range_of(tx, &archive)? {
                Some(range) => log_archives::count(tx, &range, (window.from_ms, window.to_ms))?,
                None => 0,
            };
            Ok(n.max(0) as u64 + in_range)
        })
        .await
    }

    async fn read_archive(
        &self,
        archive: &str,
        window: Window,
        after: Option<&ArchivePosition>,
        max: usize,
    ) -> StoreResult<Vec<ArchivedEvent>> {
        let archive = archive.to_owned();
        let (after_ms, after_id) = after_of(window, after);
        let PosShift(shift) = self.inner.archive_pos_shift;
        self.run(move |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT a.seq, a.ingested_ms, a.pos, COALESCE(a.tenant, e.tenant, ''), \
                 COALESCE(a.bus, e.bus, ''), COALESCE(a.event_id, e.event_id, ''), \
                 COALESCE(e.body, a.body, X'') \
                 FROM archive_rows a LEFT JOIN events e ON e.seq = a.seq \
                 WHERE a.archive = ?1 AND (a.ingested_ms, a.pos) > (?2, ?3) AND a.ingested_ms < ?4 \
                 ORDER BY a.ingested_ms, a.pos LIMIT ?5",
            )?;
            let rows = stmt
                .query_map(
                    params![archive, after_ms, after_id, window.to_ms, max as i64],
                    |r| archived_event(r, 2),
                )?
                .collect::<Result<Vec<_>, _>>()?;
            let Some(range) = log_archives::range_of(tx, &archive)? else {
                return Ok(rows);
            };
            // A range entry's place is its position plus the shift, as a
            // row's (see the module docs of `log_archives`).
            let after = (after_ms, after_id.saturating_sub(shift));
            let columns = format!(", seq + {shift}, tenant, bus, event_id, body");
            let in_range = log_archives::walk(
                tx,
                &range,
                (after, window.to_ms),
                (max, false),
                &columns,
                |r| archived_event(r, 2),
            )?;
            Ok(merge_in_order(rows, in_range, max))
        })
        .await
    }

    async fn expire_archive(&self, archive: &str, before: Millis, max: usize) -> StoreResult<u64> {
        let archive = archive.to_owned();
        let cache = self.inner.log_ranges.clone();
        self.run(move |tx| {
            let mut n = 0;
            if let Some(range) = log_archives::range_of(tx, &archive)? {
                n = expire_range(tx, &cache, &range, before, max)?;
            }
            let rows: Vec<DoomedRow> = tx
                .prepare_cached(&format!(
                    "{DOOMED_ROWS} AND a.ingested_ms < ?2 ORDER BY a.ingested_ms, a.pos LIMIT ?3"
                ))?
                .query_map(params![archive, before, (max - n) as i64], doomed_row)?
                .collect::<Result<_, _>>()?;
            delete_rows(tx, &archive, &rows)?;
            Ok((n + rows.len()) as u64)
        })
        .await
    }

    async fn purge_archive(&self, archive: &str, max: usize) -> StoreResult<u64> {
        let archive = archive.to_owned();
        let cache = self.inner.log_ranges.clone();
        self.run(move |tx| {
            let mut n = 0;
            if let Some(mut range) = log_archives::range_of(tx, &archive)? {
                log_archives::close_for_purge(tx, &cache, &mut range)?;
                n = expire_range(tx, &cache, &range, Millis::MAX, max)?;
                if n < max {
                    log_archives::drop_range(tx, &cache, &range)?;
                }
            }
            let rows: Vec<DoomedRow> = tx
                .prepare_cached(&format!(
                    "{DOOMED_ROWS} ORDER BY a.ingested_ms, a.pos LIMIT ?2"
                ))?
                .query_map(params![archive, (max - n) as i64], doomed_row)?
                .collect::<Result<_, _>>()?;
            delete_rows(tx, &archive, &rows)?;
            let n = n + rows.len();
            if n < max {
                tx.prepare_cached("DELETE FROM archive_stats WHERE archive = ?")?
                    .execute([&archive])?;
            }
            Ok(n as u64)
        })
        .await
    }

    async fn stored_archives(&self) -> StoreResult<Vec<ArchiveId>> {
        self.run(|tx| {
            let ids = tx
                .prepare_cached(
                    "SELECT archive FROM archive_stats UNION SELECT archive FROM log_archives \
                     ORDER BY 1",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(ids)
        })
        .await
    }
}

/// Reads an archived event from columns (place, tenant, bus, event id,
/// body) starting at `at`, the ingest time at column 1.
fn archived_event(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<ArchivedEvent> {
    let pos: i64 = r.get(at)?;
    let ingested_ms: Millis = r.get(1)?;
    Ok(ArchivedEvent {
        position: ArchivePosition::at(ingested_ms, pos),
        event: LoggedEvent {
            tenant: r.get(at + 1)?,
            bus: r.get(at + 2)?,
            event_id: r.get(at + 3)?,
            body: Bytes::from(r.get::<_, Vec<u8>>(at + 4)?),
            ingested_ms,
            ..Default::default()
        },
    })
}

/// The first `max` of two lists in (ingest time, place) order, merged.
fn merge_in_order(a: Vec<ArchivedEvent>, b: Vec<ArchivedEvent>, max: usize) -> Vec<ArchivedEvent> {
    let key = |e: &ArchivedEvent| e.position.parts().unwrap_or((Millis::MIN, i64::MIN));
    let mut merged = Vec::with_capacity(max.min(a.len() + b.len()));
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    while merged.len() < max {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if key(x) <= key(y) => a.next(),
            (Some(_), Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, _) => b.next(),
        };
        match next {
            Some(e) => merged.push(e),
            None => break,
        }
    }
    merged
}
