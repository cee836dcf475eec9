//! Finding a trace by its event id without a B-tree insert per trace.
//!
//! Event ids are random, so an index on them takes each new trace to a
//! different leaf page: a commit of 500 traces dirtied ~500 pages and wrote
//! each (4 KB) to the WAL, about 16 µs per trace — more than half of what a
//! trace cost (issue 10's profile). Instead, a trace's id is indexed in two
//! places:
//!
//! - **Recent traces** (ids above the merge mark) in memory: the traced log
//!   entries in commit order, appended in chunks, and the few rows without
//!   such an entry by the event id's [`key`] (see [`Recent`]).
//! - **Older traces** in sorted runs ([`trace_id_runs`]): a [merge] takes
//!   every recent trace, in key order, into a run of its own in one
//!   transaction, appended at the end of the B-tree, so each page is
//!   written once instead of once per commit.
//!
//! The mark (`trace_ids_merged`) moves in the merge's transaction, so the
//! traces above it are exactly the ones not merged yet; opening the store
//! merges them, and memory starts empty. The mark also keeps the latest
//! receive time among merged trace rows: recording a trace received after
//! it needs no look into the merged runs for an earlier row of the same trace
//! (the usual case — only a trace recorded again after a restart is
//! older), so the common write reads nothing from the file. A key is a
//! hash: it may name rows of other events (a collision, or a rolled-back
//! insert whose row id was never used), so readers always check the row
//! they fetch.
//!
//! Log entries that keep their trace's head (a trace that matched no rule
//! has no row: see `TRACES_V6`) are indexed the same way, as `-seq`: the
//! store notes them when their append commits, and a merge reads them
//! from the log. The `entry_traces` row routing gives such an entry's
//! trace (it matched a rule) has no key of its own: it is keyed by the
//! entry's position.
//! Their latest receive time is kept apart from the rows'
//! ([`Look`]): entries are merged as they are appended, ahead of the
//! routing that records rows, so one shared time would send every record
//! to the merged runs for nothing.
//!
//! [merge]: merge

use super::trace_id_runs::{self, NewRun, Tiering};
use anyhow::Context;
use rusqlite::{Connection, Transaction};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

/// How many recent traces trigger a merge: the size of a tier-0 run. A
/// merge appends its run (its cost a key does not depend on how many are
/// stored), so this weighs the memory held — 16 bytes an entry and 2
/// more for its chunk's filter (see [`Recent`]), about 4.6 MB at this size —
/// against the runs a lookup probes and the tiers a key is rewritten in
/// (see `trace_id_runs`).
pub(super) const MERGE_AT: usize = 256 * 1024;

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
    by_key: Mutex<Recent>,
    /// The latest receive time among merged trace rows: a row received
    /// after it is not in a merged run.
    merged_received_ms: AtomicI64,
    /// The latest receive time among merged log entries.
    merged_log_received_ms: AtomicI64,
    /// The latest receive time among noted log entries.
    noted_log_received_ms: AtomicI64,
    /// The latest receive time among log entries that may have a row
    /// before routing records their trace: one a fact gave it (a replay
    /// mark that reached a trace which was its entry alone), or one
    /// written before this process opened the file for an entry routing
    /// had not acknowledged (it is routed again). Routing's record must
    /// then replace that row, so a trace received at or before this time
    /// looks for it (and is written even when it is its entry alone); any
    /// other trace of a log entry is new — the consumer hands an entry out
    /// once per process — and is inserted without a lookup.
    log_rows_ahead_ms: AtomicI64,
}

/// What a merge wrote: every trace row up to `mark`, received at the
/// latest at `received_ms`, and every traced log entry up to `log_mark`,
/// received at the latest at `log_received_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Merged {
    pub(super) mark: i64,
    pub(super) received_ms: i64,
    pub(super) log_mark: i64,
    pub(super) log_received_ms: i64,
}

/// Where a lookup of a trace by its event id looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Look {
    /// Trace rows only, by their own keys: recording a trace of no traced
    /// log entry replaces only a row (and reading the log would cost every
    /// record a read of the main file). A row of a traced entry is found
    /// through the entry instead.
    Rows,
    /// Rows, and log entries that are a trace alone.
    RowsAndLog,
}

impl Merged {
    /// Whether the merge wrote `id` (a trace row, or `-seq` for a log entry).
    fn covers(&self, id: i64) -> bool {
        if id > 0 {
            id <= self.mark
        } else {
            -id <= self.log_mark
        }
    }
}

/// The traced log entries noted since the last merge, in commit order (so
/// in position order), in chunks that carry their receive times; and the
/// trace rows without such an entry, by key.
///
/// Noting an entry is an append — two words at the end of a chunk — where
/// a map by key took each to a random slot of a table of megabytes: two
/// cache misses an entry on the store's writer, and two more on the
/// traces' writer for the row routing gave a matched event (issue 10's
/// profile: 0.4–0.6 µs an event on each). A matched event's row is not
/// noted at all: it is keyed by its entry's position (`entry_traces`). A lookup scans the
/// keys of the chunks that may hold its key (see [`FILTER_BITS`]) — among
/// those whose receive times hold the trace's when it knows them (replay
/// marks: one or two chunks).
#[derive(Debug, Default)]
struct Recent {
    entries: VecDeque<EntryChunk>,
    rows: KeyMap<Vec<i64>>,
}

/// Up to [`CHUNK`] noted log entries: their keys and positions side by
/// side (a scan reads the keys alone), the span of their receive times,
/// and a filter of their keys (a Bloom filter: two bits a key).
#[derive(Debug)]
struct EntryChunk {
    keys: Vec<i64>,
    seqs: Vec<i64>,
    first_ms: i64,
    last_ms: i64,
    filter: Box<[u64]>,
}

/// Entries a chunk holds: a lookup that knows the receive time scans one
/// or two chunks of this many keys (32 KB), a few microseconds.
const CHUNK: usize = 4096;

/// Bits in a chunk's filter: 16 a key, 8 KB a chunk. With two bits a key,
/// a key the chunk does not hold passes it 1.4 % of the time, so a lookup
/// without a receive time (a retry's fact, a lookup by id) scans about one
/// chunk in 70 besides its own instead of every one — two probes a chunk,
/// some tens of microseconds at the most a merge lets wait, where a scan
/// of every key was a few hundred.
const FILTER_BITS: usize = CHUNK * 16;

impl EntryChunk {
    fn new() -> Self {
        Self {
            keys: Vec::with_capacity(CHUNK),
            seqs: Vec::with_capacity(CHUNK),
            first_ms: i64::MAX,
            last_ms: i64::MIN,
            filter: vec![0; FILTER_BITS / 64].into_boxed_slice(),
        }
    }

    fn holds(&self, received_ms: i64) -> bool {
        self.first_ms <= received_ms && received_ms <= self.last_ms
    }

    /// The filter's two bits for `key`: two disjoint slices of it (keys
    /// are well-mixed hashes already).
    fn bits(key: i64) -> [usize; 2] {
        let key = key as u64 as usize;
        [key % FILTER_BITS, (key >> 16) % FILTER_BITS]
    }

    fn add(&mut self, key: i64, seq: i64, received_ms: i64) {
        self.keys.push(key);
        self.seqs.push(seq);
        self.first_ms = self.first_ms.min(received_ms);
        self.last_ms = self.last_ms.max(received_ms);
        for bit in Self::bits(key) {
            self.filter[bit / 64] |= 1 << (bit % 64);
        }
    }

    /// Whether the chunk may hold `key` (it does if it was added).
    fn may_hold(&self, key: i64) -> bool {
        Self::bits(key)
            .iter()
            .all(|bit| self.filter[bit / 64] & (1 << (bit % 64)) != 0)
    }
}

impl Recent {
    /// Appends log entry `seq` (received at `received_ms`) under `key`.
    fn note_entry(&mut self, key: i64, seq: i64, received_ms: i64) {
        if self.entries.back().is_none_or(|c| c.keys.len() >= CHUNK) {
            self.entries.push_back(EntryChunk::new());
        }
        if let Some(chunk) = self.entries.back_mut() {
            chunk.add(key, seq, received_ms);
        }
    }

    /// The ids under `key`: rows, and entries as `-seq` — of the chunks
    /// whose receive times hold `received_ms` (all without it) and whose
    /// filter lets the key through.
    fn ids(&self, key: i64, received_ms: Option<i64>) -> Vec<i64> {
        let mut ids: Vec<i64> = self.rows.get(&key).cloned().unwrap_or_default();
        for chunk in &self.entries {
            if received_ms.is_some_and(|ms| !chunk.holds(ms)) || !chunk.may_hold(key) {
                continue;
            }
            for (at, k) in chunk.keys.iter().enumerate() {
                if *k == key {
                    ids.push(-chunk.seqs[at]);
                }
            }
        }
        ids
    }

    /// Drops the ids `merged` covers.
    fn forget(&mut self, merged: &Merged) {
        self.rows.retain(|_, ids| {
            ids.retain(|id| !merged.covers(*id));
            !ids.is_empty()
        });
        // Entries are in position order: the covered ones are a prefix.
        while let Some(front) = self.entries.front_mut() {
            let covered = front.seqs.partition_point(|seq| *seq <= merged.log_mark);
            if covered == 0 {
                break;
            }
            if covered == front.seqs.len() {
                self.entries.pop_front();
            } else {
                front.keys.drain(..covered);
                front.seqs.drain(..covered);
                break;
            }
        }
    }
}

impl RecentTraceIds {
    fn map(&self) -> std::sync::MutexGuard<'_, Recent> {
        // A panic while holding the lock leaves the map whole (every update
        // is one insert or retain), so a poisoned lock is still usable.
        self.by_key.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers that trace row `id`, which has no traced log entry, has
    /// key `key` (a row of a traced entry is found through the entry).
    pub(super) fn note_row(&self, key: i64, id: i64) {
        self.map().rows.entry(key).or_default().push(id);
    }

    /// Remembers the event ids of newly committed log entries that keep
    /// their trace's head (as `-seq`: see `TRACES_V6`).
    pub(super) fn note_log_entries(&self, entries: &[(i64, crate::store::LoggedEvent)]) {
        let mut latest = i64::MIN;
        let mut map = self.map();
        for (seq, e) in entries.iter().filter(|(_, e)| e.traced) {
            map.note_entry(key(&e.tenant, &e.event_id), *seq, e.ingested_ms);
            latest = latest.max(e.ingested_ms);
        }
        drop(map);
        self.noted_log_received_ms
            .fetch_max(latest, Ordering::AcqRel);
    }

    /// The noted log entries above `mark`, as (key, seq), a receive time
    /// none of them is earlier than and one none is later than.
    fn log_entries_after(&self, mark: i64) -> (Vec<(i64, i64)>, i64, i64) {
        let map = self.map();
        let mut entries = Vec::new();
        let mut earliest = i64::MAX;
        for chunk in map.entries.iter() {
            let from = chunk.seqs.partition_point(|seq| *seq <= mark);
            if from == chunk.seqs.len() {
                continue;
            }
            // The chunk's span may start before its entries above the
            // mark: an earlier bound only makes a lookup read a run for
            // nothing, never miss one.
            earliest = earliest.min(chunk.first_ms);
            entries.extend(
                chunk.keys[from..]
                    .iter()
                    .copied()
                    .zip(chunk.seqs[from..].iter().copied()),
            );
        }
        drop(map);
        // Read after the entries: an entry noted in between only makes the
        // bound later than needed (a lookup then reads the merged runs for
        // nothing), never earlier.
        let latest = self.noted_log_received_ms.load(Ordering::Acquire);
        (entries, earliest, latest)
    }

    /// The recent ids that may hold `key`'s trace (received at
    /// `received_ms`, where known): rows, and log entries as `-seq`.
    pub(super) fn rows(&self, key: i64, received_ms: Option<i64>) -> Vec<i64> {
        self.map().ids(key, received_ms)
    }

    /// How many ids wait for a merge.
    pub(super) fn len(&self) -> usize {
        let map = self.map();
        // A few dozen chunks at most: counted, not kept in step.
        map.entries.iter().map(|c| c.keys.len()).sum::<usize>() + map.rows.len()
    }

    /// Whether a trace received at `received_ms` may be in a merged run,
    /// among the keys `wanted`.
    pub(super) fn may_be_merged(&self, received_ms: i64, wanted: Look) -> bool {
        let rows = self.merged_received_ms.load(Ordering::Acquire);
        let latest = match wanted {
            Look::Rows => rows,
            Look::RowsAndLog => rows.max(self.merged_log_received_ms.load(Ordering::Acquire)),
        };
        received_ms <= latest
    }

    /// A log entry was given a row ahead of routing (see
    /// [`Self::may_have_row`]).
    pub(super) fn row_ahead_of_routing(&self, received_ms: i64) {
        self.log_rows_ahead_ms
            .fetch_max(received_ms, Ordering::AcqRel);
    }

    /// Whether the trace of a log entry received at `received_ms` may
    /// have a row before routing records it (nearly always not: one
    /// atomic read; see `log_rows_ahead_ms`).
    pub(super) fn may_have_row(&self, received_ms: i64) -> bool {
        received_ms <= self.log_rows_ahead_ms.load(Ordering::Acquire)
    }

    /// Starts empty after the merge recorded in the file (at open, once
    /// everything is merged). `conn` has the main file attached as `log`:
    /// rows given to entries that routing has not reached are found there.
    pub(super) fn merged_before(conn: &Connection) -> anyhow::Result<Self> {
        let merged = merged_mark(conn)?;
        let route: i64 = conn
            .query_row(
                "SELECT COALESCE((SELECT seq FROM log.cursors WHERE name = 'route'), 0)",
                [],
                |r| r.get(0),
            )
            .context("reading the route cursor")?;
        let rows_ahead: Option<i64> = conn
            .query_row(
                "SELECT MAX(ms) FROM ( \
                   SELECT MAX(received_ms) AS ms FROM traces WHERE seq > ?1 \
                   UNION ALL \
                   SELECT MAX(received_ms) FROM entry_traces WHERE seq > ?1)",
                [route],
                |r| r.get(0),
            )
            .context("reading the traces of entries not routed yet")?;
        Ok(Self {
            by_key: Mutex::default(),
            merged_received_ms: AtomicI64::new(merged.received_ms),
            merged_log_received_ms: AtomicI64::new(merged.log_received_ms),
            noted_log_received_ms: AtomicI64::new(i64::MIN),
            log_rows_ahead_ms: AtomicI64::new(rows_ahead.unwrap_or(i64::MIN)),
        })
    }

    /// Forgets the rows a committed merge wrote to its run (all up to
    /// its mark); called only after that commit, so a lookup between the
    /// merge and its commit still finds them here.
    pub(super) fn forget_merged(&self, merged: Merged) {
        self.merged_received_ms
            .fetch_max(merged.received_ms, Ordering::AcqRel);
        self.merged_log_received_ms
            .fetch_max(merged.log_received_ms, Ordering::AcqRel);
        self.map().forget(&merged);
    }
}

/// A map by [`key`]: keys are hashes already, so hashing one again with
/// SipHash (the standard map's default, built to resist chosen keys) is
/// wasted work on every trace. A multiplication by an odd constant spreads
/// the 48 bits over the whole word, high bits included (the map reads
/// both ends of the hash). Chosen keys cannot hurt more than a tenant
/// choosing colliding event ids could anyway: keys are hashes of ids.
type KeyMap<V> = HashMap<i64, V, BuildHasherDefault<KeyHasher>>;

/// The hasher of [`KeyMap`].
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `i64` keys are hashed; any other input still hashes whole.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_i64(&mut self, key: i64) {
        self.0 = (key as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The highest trace row whose key is in a merged run, and the latest
/// receive time among those rows.
fn merged_mark(conn: &Connection) -> anyhow::Result<Merged> {
    conn.prepare_cached(
        "SELECT mark, received_ms, log_mark, log_received_ms FROM trace_ids_merged",
    )?
    .query_row([], |r| {
        Ok(Merged {
            mark: r.get(0)?,
            received_ms: r.get(1)?,
            log_mark: r.get(2)?,
            log_received_ms: r.get(3)?,
        })
    })
    .context("reading the traces' merge mark")
}

/// Writes the keys of every trace row above the merge mark, and of every
/// traced log entry above the log mark, as a new sorted run (see
/// `trace_id_runs`) and moves the marks; returns the new marks (for
/// [`RecentTraceIds::forget_merged`] once committed), `None` if nothing
/// was waiting. Reads the trace rows themselves, not the map, so a
/// rolled-back insert that left a key in memory never reaches the index.
/// The log's keys come from `noted` (the map: noted only once committed,
/// in commit order, so it holds every traced entry above the mark) or,
/// without it (at open, when the map is empty), from the main file
/// attached as `log` — reading the log while the store appends would cost
/// the traces' writer a read of every entry's page.
pub(super) fn merge(
    tx: &Transaction<'_>,
    noted: Option<&RecentTraceIds>,
    tiering: Tiering,
) -> anyhow::Result<Option<Merged>> {
    let before = merged_mark(tx)?;
    let mut after = before;
    let mut run = NewRun {
        first_ms: i64::MAX,
        last_ms: i64::MIN,
        ..NewRun::default()
    };
    {
        // The trace of a log entry that keeps its head has no `traces`
        // row: the entry's `-seq` below leads to it (`entry_traces`).
        let mut stmt =
            tx.prepare_cached("SELECT id, tenant, event_id, received_ms FROM traces WHERE id > ?")?;
        let mut rows = stmt.query([before.mark])?;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            after.mark = after.mark.max(id);
            let (tenant, event_id): (String, String) = (r.get(1)?, r.get(2)?);
            let received_ms: i64 = r.get(3)?;
            run.keys.push((key(&tenant, &event_id), id));
            run.last_trace = run.last_trace.max(id);
            run.first_ms = run.first_ms.min(received_ms);
            run.last_ms = run.last_ms.max(received_ms);
            after.received_ms = after.received_ms.max(received_ms);
        }
        if let Some(noted) = noted {
            let (entries, earliest, latest) = noted.log_entries_after(before.log_mark);
            if !entries.is_empty() {
                after.log_received_ms = after.log_received_ms.max(latest);
                run.first_ms = run.first_ms.min(earliest);
                run.last_ms = run.last_ms.max(latest);
            }
            for (key, seq) in entries {
                run.keys.push((key, -seq));
                after.log_mark = after.log_mark.max(seq);
            }
        } else {
            let mut stmt = tx.prepare_cached(
                "SELECT seq, tenant, event_id, ingested_ms, source IS NOT NULL FROM log.events \
                 WHERE seq > ? ORDER BY seq",
            )?;
            let mut rows = stmt.query([before.log_mark])?;
            while let Some(r) = rows.next()? {
                let seq: i64 = r.get(0)?;
                after.log_mark = seq;
                if r.get(4)? {
                    let (tenant, event_id): (String, String) = (r.get(1)?, r.get(2)?);
                    let ingested_ms: i64 = r.get(3)?;
                    run.keys.push((key(&tenant, &event_id), -seq));
                    run.first_ms = run.first_ms.min(ingested_ms);
                    run.last_ms = run.last_ms.max(ingested_ms);
                    after.log_received_ms = after.log_received_ms.max(ingested_ms);
                }
            }
        }
    }
    if after == before {
        return Ok(None);
    }
    // The rows it was made from: every one above the mark.
    if run.last_trace > 0 {
        run.first_trace = before.mark + 1;
    }
    run.last_seq = run
        .keys
        .iter()
        .filter(|(_, id)| *id < 0)
        .map(|(_, id)| -id)
        .max()
        .unwrap_or(0);
    run.keys.sort_unstable();
    run.keys.dedup();
    trace_id_runs::append(tx, &run, tiering)?;
    tx.prepare_cached(
        "UPDATE trace_ids_merged SET mark = ?, received_ms = ?, log_mark = ?, log_received_ms = ?",
    )?
    .execute([
        after.mark,
        after.received_ms,
        after.log_mark,
        after.log_received_ms,
    ])?;
    Ok(Some(after))
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
    fn the_key_map_spreads_keys_over_both_ends_of_the_hash() {
        // Keys are 48 bits: the top 16 of the word are zero. The map finds
        // a key's group with the low bits and tells keys apart within it
        // by the top 7; both must vary, or every probe compares every key.
        let hash = |k: i64| {
            let mut h = KeyHasher::default();
            h.write_i64(k);
            h.finish()
        };
        let keys: Vec<i64> = (0..1000).map(|i| key("t", &format!("e{i}"))).collect();
        let top: std::collections::HashSet<u64> = keys.iter().map(|k| hash(*k) >> 57).collect();
        let low: std::collections::HashSet<u64> = keys.iter().map(|k| hash(*k) & 127).collect();
        assert!(
            top.len() > 100 && low.len() > 100,
            "{} / {}",
            top.len(),
            low.len()
        );
    }

    #[test]
    fn forgetting_a_merge_keeps_ids_noted_after_it() {
        let recent = RecentTraceIds::default();
        recent.note_row(7, 1);
        recent.note_row(7, 5);
        recent.note_row(8, 2);
        assert_eq!(recent.rows(7, None), vec![1, 5]);
        assert!(!recent.may_be_merged(1, Look::RowsAndLog));
        {
            let mut map = recent.map();
            map.note_entry(9, 3, 100);
            map.note_entry(10, 2, 100);
            map.note_entry(9, 4, 100);
        }
        assert_eq!(recent.rows(9, None), vec![-3, -4]);
        assert_eq!(recent.len(), 5);
        recent.forget_merged(Merged {
            mark: 2,
            received_ms: 100,
            log_mark: 3,
            log_received_ms: 300,
        });
        assert_eq!(recent.rows(7, None), vec![5]);
        assert_eq!(recent.rows(8, None), Vec::<i64>::new());
        assert_eq!(recent.rows(9, None), vec![-4]);
        assert_eq!(recent.rows(10, None), Vec::<i64>::new());
        assert_eq!(recent.len(), 2);
        assert!(recent.may_be_merged(100, Look::Rows));
        // Log entries merge ahead of the rows routing records: their time
        // must not send a row's record to the merged runs.
        assert!(!recent.may_be_merged(101, Look::Rows));
        assert!(recent.may_be_merged(300, Look::RowsAndLog));
        assert!(!recent.may_be_merged(301, Look::RowsAndLog));
    }

    #[test]
    fn a_chunks_filter_lets_its_keys_through_and_few_others() {
        let mut chunk = EntryChunk::new();
        let keys: Vec<i64> = (0..CHUNK).map(|i| key("t", &format!("in{i}"))).collect();
        for (seq, k) in keys.iter().enumerate() {
            chunk.add(*k, seq as i64, 0);
        }
        assert!(keys.iter().all(|k| chunk.may_hold(*k)));
        let others = (0..10_000)
            .filter(|i| chunk.may_hold(key("t", &format!("out{i}"))))
            .count();
        // 1.4 % expected.
        assert!(others < 300, "{others} of 10,000 pass");
    }

    #[test]
    fn entries_are_found_in_the_chunks_whose_receive_times_hold_theirs() {
        let recent = RecentTraceIds::default();
        // Three chunks and a bit: positions 1.., received 1 ms per 100,
        // keys repeating every 1,000 entries.
        let n = 3 * CHUNK as i64 + 10;
        {
            let mut map = recent.map();
            for seq in 1..=n {
                map.note_entry(seq % 1000, seq, seq / 100);
            }
        }
        assert_eq!(recent.map().entries.len(), 4);
        let every: Vec<i64> = (1..=n).filter(|s| s % 1000 == 7).map(|s| -s).collect();
        assert_eq!(recent.rows(7, None), every);
        // Known receive time: only the chunks that hold it are scanned,
        // and the entry is among what they hold.
        let ids = recent.rows(7, Some(5007 / 100));
        assert!(ids.contains(&-5007), "{ids:?}");
        assert!(ids.len() < every.len(), "{ids:?}");
        assert!(recent.rows(7, Some(n / 100 + 1)).is_empty());
        // A merge up to the middle of the second chunk keeps the rest.
        let mark = CHUNK as i64 + 100;
        let (after, earliest, _) = recent.log_entries_after(mark);
        assert_eq!(after.len(), (n - mark) as usize);
        assert_eq!(after.first(), Some(&((mark + 1) % 1000, mark + 1)));
        assert!(earliest <= (mark + 1) / 100);
        recent.forget_merged(Merged {
            mark: 0,
            received_ms: 0,
            log_mark: mark,
            log_received_ms: mark / 100,
        });
        assert_eq!(recent.len(), (n - mark) as usize);
        let kept: Vec<i64> = every.iter().copied().filter(|id| -id > mark).collect();
        assert_eq!(recent.rows(7, None), kept);
        assert_eq!(recent.log_entries_after(mark).0, after);
    }
}
