//! [`EventLog`] on SQLite: the `events` table, a ring of the newest
//! committed events in memory, and one persisted cursor.
//!
//! Positions are the table's `seq` (strictly increasing in commit order).
//! The consumer hands out entries after the highest position it handed out,
//! reading from the ring while it still holds them (the common case: routing
//! keeps up with ingest) and from the file otherwise. Acks go into a
//! [`Watermark`]; when its low mark rises, that mark is persisted as the
//! `route` cursor, where the next consumer (after a restart) resumes.

use super::SqliteStore;
use super::archives::{PendingCounts, PosShift};
use super::log_archives::{BusRanges, Placement, RangeCache};
use crate::event::EventHead;
use crate::store::watermark::Watermark;
use crate::store::{
    AckToken, EventLog, LogConsumer, LogEntry, LoggedEvent, Millis, NewEvent, StoreError,
    StoreResult,
};
use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// A position in the log.
pub(super) type Seq = i64;

/// The newest committed events, so the consumer reads them from memory.
pub(super) struct Tail {
    ring: Mutex<Ring>,
    /// The highest committed position, sent after the ring has the events.
    committed: watch::Sender<Seq>,
}

struct Ring {
    events: VecDeque<(Seq, LoggedEvent)>,
    capacity: usize,
    /// The bodies' bytes held, and the most held: under a backlog the ring
    /// is always full, so its size in memory must not depend on how large
    /// the events are (issue 13's memory profile: 32,768 events of ~1 KB
    /// were the largest single item of the heap under load).
    bytes: usize,
    max_bytes: usize,
    /// The ring holds every committed event after this position.
    covers_after: Seq,
}

impl Tail {
    /// An empty ring after position `last` (everything up to it is in the
    /// file) that holds at most `capacity` events and `max_bytes` of bodies.
    pub(super) fn new(last: Seq, capacity: usize, max_bytes: usize) -> Self {
        Self {
            ring: Mutex::new(Ring {
                events: VecDeque::with_capacity(capacity.min(4096)),
                capacity: capacity.max(1),
                bytes: 0,
                max_bytes,
                covers_after: last,
            }),
            committed: watch::channel(last).0,
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        // The ring is only ever left consistent; a panic elsewhere while
        // holding the lock does not make it unusable.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds newly committed events (in position order), then announces them.
    pub(super) fn publish(&self, events: Vec<(Seq, LoggedEvent)>) {
        let Some(&(last, _)) = events.last() else {
            return;
        };
        {
            let mut ring = self.ring();
            for entry in events {
                let size = entry.1.body.len();
                while !ring.events.is_empty()
                    && (ring.events.len() == ring.capacity || ring.bytes + size > ring.max_bytes)
                    && let Some((dropped, event)) = ring.events.pop_front()
                {
                    ring.covers_after = dropped;
                    ring.bytes -= event.body.len();
                }
                ring.bytes += size;
                ring.events.push_back(entry);
            }
        }
        self.committed.send_replace(last);
    }

    /// Up to `max` events after `after`, if the ring still holds all of them.
    fn read(&self, after: Seq, max: usize) -> Option<Vec<(Seq, LoggedEvent)>> {
        let ring = self.ring();
        if after < ring.covers_after {
            return None;
        }
        let skip = ring.events.partition_point(|(seq, _)| *seq <= after);
        Some(ring.events.iter().skip(skip).take(max).cloned().collect())
    }
}

/// The highest position ever used (also after the newest events were pruned).
pub(super) fn last_seq(conn: &Connection) -> rusqlite::Result<Seq> {
    let in_table: Seq =
        conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
    let used: Option<Seq> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(in_table.max(used.unwrap_or(0)))
}

/// The columns [`logged_event`] reads, after the position.
pub(super) const LOGGED_COLUMNS: &str =
    "tenant, bus, event_id, body, ingested_ms, only_rules, source IS NOT NULL";

/// Reads an event from a row of [`LOGGED_COLUMNS`] starting at column 1.
pub(super) fn logged_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<LoggedEvent> {
    let only_rules: Option<String> = r.get(6)?;
    Ok(LoggedEvent {
        tenant: r.get(1)?,
        bus: r.get(2)?,
        event_id: r.get(3)?,
        body: Bytes::from(r.get::<_, Vec<u8>>(4)?),
        ingested_ms: r.get(5)?,
        only_rules: only_rules.and_then(|s| serde_json::from_str(&s).ok()),
        archives: Vec::new(),
        bus_archives: Vec::new(),
        head: Default::default(),
        traced: r.get(7)?,
    })
}

/// The head a traced entry keeps in its row: the producer's, or read
/// from the event (an event without one still has a trace: empty names).
fn head_columns(e: &NewEvent) -> (Option<Cow<'_, str>>, Option<Cow<'_, str>>) {
    if !e.traced {
        return (None, None);
    }
    match &e.head.0 {
        Some(head) => (
            Some(Cow::Borrowed(&head.source)),
            Some(Cow::Borrowed(&head.event_type)),
        ),
        None => {
            let head = EventHead::parse(&e.body).unwrap_or_default();
            (
                Some(Cow::Owned(head.source)),
                Some(Cow::Owned(head.event_type)),
            )
        }
    }
}

/// Inserts events (and their archive rows) inside a transaction; returns
/// them with their positions, ready for [`Tail::publish`] after the commit.
/// An entry counts the archive rows that refer to it and the archive
/// ranges it is in (`archive_refs`), so the log keeps it while they do.
/// Counters of archives are added to now, or, given `pending`, when the
/// commit writes them.
pub(super) fn insert_events(
    tx: &rusqlite::Transaction<'_>,
    events: Vec<NewEvent>,
    archiving: Archiving<'_>,
    pending: Option<&mut PendingCounts>,
) -> anyhow::Result<Vec<(Seq, LoggedEvent)>> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO events \
         (tenant, bus, event_id, body, ingested_ms, only_rules, archive_refs, source, type, whole) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?;
    let mut now = PendingCounts::default();
    let counts = match pending {
        Some(pending) => pending,
        None => &mut now,
    };
    let mut logged = Vec::with_capacity(events.len());
    let mut archived = Vec::new();
    let mut ranges = BusRanges::new(archiving.ranges);
    for mut e in events {
        let only = match &e.only_rules {
            Some(rules) => Some(serde_json::to_string(rules)?),
            None => None,
        };
        if logged
            .last()
            .is_none_or(|(_, p): &(Seq, NewEvent)| p.tenant != e.tenant || p.bus != e.bus)
        {
            ranges.next_bus();
        }
        let mut rows = std::mem::take(&mut e.archives);
        let at = (e.tenant.as_str(), e.bus.as_str(), e.ingested_ms);
        let placement = Placement::of(
            tx,
            &mut ranges,
            at,
            (std::mem::take(&mut e.bus_archives), &mut rows),
            (e.body.len() as i64, &mut *counts),
        )?;
        let (source, event_type) = head_columns(&e);
        stmt.execute(params![
            e.tenant,
            e.bus,
            e.event_id,
            &e.body[..],
            e.ingested_ms,
            only,
            (rows.len() + placement.ranges) as i64,
            source.as_deref(),
            event_type.as_deref(),
            placement.whole().then_some(1)
        ])?;
        let seq = tx.last_insert_rowid();
        placement.write(tx, &mut ranges, at, seq)?;
        archived.extend(rows.into_iter().map(|archive| (archive, logged.len())));
        logged.push((seq, e));
    }
    if !archived.is_empty() {
        super::archives::write_rows(tx, &archived, &logged, archiving.shift, counts)?;
    }
    now.write(tx)?;
    Ok(logged)
}

/// What an append needs to archive its events: the archive rows' shift
/// and the archives' ranges of the log.
#[derive(Clone, Copy)]
pub(super) struct Archiving<'a> {
    pub shift: PosShift,
    pub ranges: &'a RangeCache,
}

/// Reads the persisted cursor (0 when routing never acknowledged anything).
pub(super) fn route_cursor(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<Seq> {
    Ok(tx
        .prepare_cached("SELECT seq FROM cursors WHERE name = 'route'")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// The log's prune point: every entry at or below it that no archive row
/// refers to is deleted.
pub(super) fn pruned_cursor(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<Seq> {
    Ok(tx
        .prepare_cached("SELECT seq FROM cursors WHERE name = 'pruned'")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

impl SqliteStore {
    /// What happens to appended entries once committed: traced ones note
    /// their event ids for trace lookups (see `trace_ids`), then all go
    /// into the ring and are announced.
    pub(super) fn publisher(&self) -> impl FnOnce(Vec<(Seq, LoggedEvent)>) + Send + 'static {
        let tail = self.inner.tail.clone();
        let recent = self.inner.recent_traces.clone();
        move |logged| {
            recent.note_log_entries(&logged);
            tail.publish(logged);
        }
    }

    /// Up to `max` committed events after `after`, from the ring when it
    /// holds them, else from the file.
    async fn read_log(&self, after: Seq, max: usize) -> StoreResult<Vec<(Seq, LoggedEvent)>> {
        let tail = &self.inner.tail;
        if let Some(events) = tail.read(after, max) {
            return Ok(events);
        }
        // Only what is committed: the read runs inside a group commit, where
        // earlier operations' uncommitted appends are visible.
        let committed = *tail.committed.borrow();
        self.run(move |tx| {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT seq, {LOGGED_COLUMNS} FROM events \
                     WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![after, committed, max as i64], |r| {
                Ok((r.get(0)?, logged_event(r)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

#[async_trait]
impl EventLog for SqliteStore {
    async fn append(&self, events: Vec<NewEvent>) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let published = self.publisher();
        // An append breaks no constraint (positions are the log's own,
        // archive rows are keyed by them, and a range is started only for
        // an archive that has none, as read in this transaction): it fails
        // only with the file.
        let shift = self.inner.archive_pos_shift;
        let ranges = self.inner.log_ranges.clone();
        self.run_then_unisolated(
            move |tx, at_commit| {
                let archiving = Archiving {
                    shift,
                    ranges: &ranges,
                };
                insert_events(tx, events, archiving, Some(&mut at_commit.counts))
            },
            published,
        )
        .await?;
        self.merge_trace_ids_if_due();
        Ok(())
    }

    async fn consumer(&self) -> StoreResult<Arc<dyn LogConsumer>> {
        let routed = self.run(|tx| Ok(route_cursor(tx)?)).await?;
        Ok(Arc::new(SqliteConsumer {
            store: self.clone(),
            reader: tokio::sync::Mutex::new(self.inner.tail.committed.subscribe()),
            acks: Mutex::new(Acks {
                watermark: Watermark::starting_after(routed),
                durable: routed,
            }),
            cursor_write: tokio::sync::Mutex::new(()),
        }))
    }

    /// Deletes routed entries older than `before`, but none a trace row
    /// or archive row still refers to (both keep their event's position,
    /// not a copy), nor a traced entry the trace retention has not passed
    /// (the entry is the trace, with its `entry_traces` row if it matched
    /// a rule; see `TRACES_V6` and `TRACES_V8` — such a row pins its entry
    /// alone, not the log after it, as a `traces` row does). The cursor is read
    /// before the traces: an entry is routed only after its trace is
    /// committed, so every entry at or below that cursor with a trace row
    /// is counted in the lowest position read after it. The prune starts
    /// at the previous one's end (the `pruned` cursor): below it only
    /// archived entries and traced ones not yet expired are left, and
    /// walking them again on every prune would cost as much as the
    /// archives are long; the traced ones below it are taken once the
    /// retention passes them (the `pruned_traced` cursor follows).
    async fn prune(&self, before: Millis) -> StoreResult<u64> {
        let cursor = self.run(|tx| Ok(route_cursor(tx)?)).await?;
        let traced = self.traced_floor().await?;
        let last = traced.lowest_row.map_or(cursor, |seq| cursor.min(seq - 1));
        let expired = traced.log_expired;
        self.run(move |tx| {
            let pruned = pruned_cursor(tx)?;
            // Up to the first entry too young to go: positions follow commit
            // order, so this is where ingest times reach `before`.
            let young: Option<Seq> = tx
                .prepare_cached(
                    "SELECT seq FROM events WHERE seq > ?1 AND seq <= ?2 AND ingested_ms >= ?3 \
                     ORDER BY seq LIMIT 1",
                )?
                .query_row(params![pruned, last, before], |r| r.get(0))
                .optional()?;
            let upto = young.map_or(last, |seq| seq - 1);
            let mut n = 0;
            if upto > pruned {
                n = tx
                    .prepare_cached(
                        "DELETE FROM events WHERE seq > ?1 AND seq <= ?2 AND archive_refs <= 0 \
                         AND (source IS NULL OR seq <= ?3)",
                    )?
                    .execute(params![pruned, upto, expired])?;
                set_cursor(tx, "pruned", upto)?;
            }
            let pruned = pruned.max(upto);
            let done = pruned_traced_cursor(tx)?;
            let reach = expired.min(pruned);
            if reach > done {
                n += tx
                    .prepare_cached(
                        "DELETE FROM events WHERE seq > ? AND seq <= ? AND archive_refs <= 0",
                    )?
                    .execute(params![done, reach])?;
                set_cursor(tx, "pruned_traced", reach)?;
            }
            super::jobs::prune_chains(tx)?;
            Ok(n as u64)
        })
        .await
    }
}

/// Moves a cursor of the main file up to `seq`.
fn set_cursor(tx: &rusqlite::Transaction<'_>, name: &str, seq: Seq) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO cursors (name, seq) VALUES (?, ?) \
         ON CONFLICT (name) DO UPDATE SET seq = MAX(seq, excluded.seq)",
    )?
    .execute(params![name, seq])?;
    Ok(())
}

/// The prune's point for traced entries: every entry at or below it that
/// no archive row refers to is deleted (at most the `pruned` cursor).
pub(super) fn pruned_traced_cursor(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<Seq> {
    Ok(tx
        .prepare_cached("SELECT seq FROM cursors WHERE name = 'pruned_traced'")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// The routing consumer.
struct SqliteConsumer {
    store: SqliteStore,
    /// Serialises `next` (so two callers never get the same entries) and
    /// holds its view of the committed position.
    reader: tokio::sync::Mutex<watch::Receiver<Seq>>,
    acks: Mutex<Acks>,
    /// Held while the cursor is being written.
    cursor_write: tokio::sync::Mutex<()>,
}

struct Acks {
    watermark: Watermark,
    /// The cursor as committed: everything up to it is acknowledged durably.
    durable: Seq,
}

impl SqliteConsumer {
    fn acks(&self) -> MutexGuard<'_, Acks> {
        self.acks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl LogConsumer for SqliteConsumer {
    async fn next(&self, max: usize, wait: Duration) -> StoreResult<Vec<LogEntry>> {
        let mut committed = self.reader.lock().await;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Seen before reading, so a commit after the read wakes the wait.
            committed.borrow_and_update();
            let after = self.acks().watermark.high();
            let events = self.store.read_log(after, max).await?;
            if !events.is_empty() || max == 0 {
                let mut acks = self.acks();
                return Ok(events
                    .into_iter()
                    .map(|(seq, event)| {
                        acks.watermark.handed_out(seq);
                        LogEntry {
                            event,
                            ack: AckToken::seq(seq),
                            position: seq,
                        }
                    })
                    .collect());
            }
            match tokio::time::timeout_at(deadline, committed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(StoreError::Closed),
                Err(_) => return Ok(Vec::new()),
            }
        }
    }

    async fn ack(&self, tokens: Vec<AckToken>) -> StoreResult<()> {
        let wanted = {
            let mut acks = self.acks();
            for token in &tokens {
                if let Some(seq) = token.as_seq() {
                    acks.watermark.acked(seq);
                }
            }
            acks.watermark.low()
        };
        if wanted <= self.acks().durable {
            // Nothing new below which everything is acknowledged (or
            // someone else's write already covers it).
            return Ok(());
        }
        // One cursor write at a time: acks that arrive meanwhile wait here,
        // and the next write covers all of them (the router may ack entry by
        // entry; this keeps that from costing the writer an op per entry).
        let _writing = self.cursor_write.lock().await;
        let low = {
            let acks = self.acks();
            if wanted <= acks.durable {
                return Ok(());
            }
            acks.watermark.low()
        };
        self.store
            .run(move |tx| {
                tx.prepare_cached(
                    "INSERT INTO cursors (name, seq) VALUES ('route', ?) \
                     ON CONFLICT (name) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                )?
                .execute([low])?;
                Ok(())
            })
            .await?;
        let mut acks = self.acks();
        acks.durable = acks.durable.max(low);
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.acks().watermark.in_flight()
    }
}
