//! SQLite backend: one file in WAL mode, one writer thread with group commit.
//!
//! Every operation is a closure run on the writer thread. The thread takes
//! whatever operations are waiting, runs each inside its own savepoint of one
//! transaction, commits once, and only then answers the callers. Concurrent
//! requests therefore share one commit (and one sync), and a caller never sees
//! success for data that is not committed. Appends, which can fail only
//! with the file, run without a savepoint: one that fails fails its commit
//! (see [`Isolation`]).
//!
//! Traces live in a second file, `traces.db`, with a writer thread of their
//! own: a trace is written for every routed event, and in the main file its
//! commits queued ahead of ingest commits and made every acknowledged append
//! wait for them (issue 10 measured ingest at under half its speed with
//! tracing on). Nothing needs a trace and a log entry in one transaction:
//! the router writes an event's trace before it acknowledges the entry, so
//! a trace lookup that reads the unrouted log first and the traces second
//! never misses an event in between.
//!
//! Durability: `synchronous=NORMAL` in WAL mode means a commit is in the OS
//! before it is acknowledged, so a killed process (`kill -9`) loses nothing;
//! [`Durability::Always`] (`synchronous=FULL`) also syncs the WAL on every
//! commit, surviving power loss.
//!
//! One process owns a data dir: [`SqliteStore::open`] takes an exclusive lock
//! on `busbar.lock` (released by the OS when the process ends, `kill -9`
//! included), and because nobody else can hold a job's lease it makes every
//! leased job due again at once — a restart after a crash resumes delivery
//! immediately instead of waiting for the dead process's leases to run out.
//!
//! The interfaces live one per file: [`config`], [`log`] (with the in-memory
//! tail of recent events), [`jobs`], [`dead_letters`], [`queues`],
//! [`dedup`] (deduplicated appends), [`schemas`] (the schema registry),
//! [`archives`] (with [`log_archives`], archives kept as ranges of the
//! log), [`traces`], [`replays`]; the schema and its migrations in
//! [`schema`]; WAL checkpoints, on a thread of their own so no commit
//! waits for one, in [`checkpoint`].

mod archives;
mod checkpoint;
mod config;
mod dead_letters;
mod dedup;
mod jobs;
mod log;
mod log_archives;
mod queues;
mod replays;
mod schema;
mod schemas;
#[cfg(test)]
mod tests;
mod trace_id_runs;
mod trace_ids;
mod traces;

use self::log::Tail;
use self::trace_id_runs::{Maintenance, Tiering};
use self::trace_ids::RecentTraceIds;
use super::{StoreError, StoreResult};
use crate::clock::SharedClock;
use anyhow::Context;
use rusqlite::{Connection, Transaction};
use std::collections::VecDeque;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Notify, mpsc, oneshot};

/// How hard commits are synced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Survives a crash of the process (WAL, `synchronous=NORMAL`): config `fsync = "normal"`.
    #[default]
    #[serde(alias = "process")]
    Normal,
    /// Survives power loss: fsync on every commit (`synchronous=FULL`): config `fsync = "always"`.
    Always,
}

/// Why a data dir could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process (or another store in this process) holds the data
    /// dir's lock. Two writers would take each other's job leases.
    #[error("data dir {} is in use by another busbar process", .0.display())]
    InUse(PathBuf),
    /// The database was written by a newer Busbar, whose schema this version
    /// does not know.
    #[error(
        "data dir {} was written by a newer busbar (schema version {found}, this version knows up to {known})",
        .dir.display()
    )]
    NewerSchema {
        /// The data dir.
        dir: PathBuf,
        /// The schema version found in the file.
        found: i64,
        /// The newest schema version this build knows.
        known: i64,
    },
    /// Anything else (I/O, a corrupt file, ...).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The lock file that marks a data dir as owned by one process.
const LOCK_FILE: &str = "busbar.lock";
/// The database file in the data dir.
const DB_FILE: &str = "busbar.db";
/// The traces' database file in the data dir.
const TRACES_FILE: &str = "traces.db";
/// Most operations one commit may carry; bounds commit latency under load.
const MAX_OPS_PER_COMMIT: usize = 2048;
/// Recently committed events kept in memory so routing rarely reads the file.
const RECENT_EVENTS: usize = 32 * 1024;
/// ... and at most this many bytes of their bodies: routing waits once
/// 2,048 entries are unacknowledged, so a ring of ~14,000 events of 1 KB
/// serves it from memory when it keeps up and for a while when delivery
/// falls behind (a 4 MB ring made backlogged delivery 13 % slower), while a
/// backlog of large events cannot grow the ring past this.
const RECENT_BYTES: usize = 16 << 20;
/// Prepared statements kept per connection: every fixed statement of the
/// backend fits, so none is parsed twice (parsing showed up in profiles).
const STATEMENT_CACHE: usize = 128;
/// WAL pages after which the main file is checkpointed (SQLite's default).
const CHECKPOINT_PAGES: u32 = 1_000;
/// ... and `traces.db`: traces are written in large batches and read
/// rarely, so a page their indexes dirty in many commits is copied back to
/// the file once (the WAL grows to ~16 MB).
const TRACES_CHECKPOINT_PAGES: u32 = 4_000;
/// Page cache per connection, in KiB. SQLite fills its cache with every
/// page it touches and only then evicts, so under load each connection
/// holds its whole cache: cutting them from 64 MB to 16 MB apiece lowered
/// the peak resident set of issue 13's memory scenario from 371 MB to
/// 290–316 MB (its target is 150 MB in all), and 8 MB (with the router's
/// smaller backlog) to 238–251 MB. What is hot is small — the log's and
/// the traces' newest pages, the jobs — and a page that falls out of this
/// cache is still in the OS's, so 8 MB each costs little.
const CACHE_KIB: i64 = 8 * 1024;

type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;

/// One operation for a writer thread: it runs inside the next group
/// commit and says whether it succeeded; its completion hears how the
/// commit went.
struct Op {
    run: OpRun,
    isolation: Isolation,
}

/// An operation's work: it says whether it succeeded, and returns what to
/// tell its caller once the commit is known.
type OpRun = Box<dyn FnOnce(&Transaction<'_>, &mut AtCommit) -> (bool, Completion) + Send>;

/// What unisolated operations leave for their commit to write: it is
/// written before the next operation with a savepoint runs (outside that
/// savepoint, so its rollback keeps it) and before the commit.
#[derive(Debug, Default)]
struct AtCommit {
    /// Additions to archive counters.
    counts: archives::PendingCounts,
}

impl AtCommit {
    fn write(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        self.counts.write(tx)
    }
}

/// What an operation's failure rolls back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isolation {
    /// Its own writes alone (a savepoint around it): an operation that may
    /// fail as part of its work (a constraint, a row that is not there).
    Savepoint,
    /// Its whole commit, and the other operations that ran in it fail
    /// with it: for an operation whose statements break no constraint, so
    /// that it fails only with the file, which fails the commit anyway.
    /// Appends, the hottest operations, skip the savepoint: it copies
    /// every existing page the operation touches, per operation (with an
    /// archive and tracing on, the log's, the index's, the archive's and
    /// its counters' newest pages: 2.6 % of the process in a profile of
    /// single-event ingest, `subjournalPageIfRequired`).
    Commit,
}

/// The SQLite store. Cheap to clone; the file is closed (and the data dir
/// unlocked) when the last clone is dropped.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Operations for the writer thread; taken on drop to stop it.
    ops: Option<mpsc::Sender<Op>>,
    /// Operations for the traces' writer thread; taken on drop to stop it.
    trace_ops: Option<mpsc::Sender<Op>>,
    /// The writer thread, joined on drop so the files and the lock are
    /// released when the store is gone (it joins the traces' writer before
    /// it lets the lock go).
    writer: Option<std::thread::JoinHandle<()>>,
    /// The traces' writer thread (dropping the store there must not join
    /// the main writer, which joins this one).
    trace_writer: std::thread::ThreadId,
    /// Recently appended events and the committed position.
    tail: Arc<Tail>,
    /// What new archive rows add to their log position.
    archive_pos_shift: archives::PosShift,
    /// The archives' ranges of the log, by bus (see `log_archives`).
    log_ranges: Arc<log_archives::RangeCache>,
    /// The event ids of the traces recorded since the last merge into a
    /// run of `trace_id_keys`.
    recent_traces: Arc<RecentTraceIds>,
    /// Set while a merge started by an append is queued or running.
    merging: Arc<std::sync::atomic::AtomicBool>,
    /// Whether the merged runs may need compacting or deleting (the
    /// traces' writer does it when idle), and how many recent traces
    /// trigger a merge ([`Maintenance::tiering`]).
    trace_maintenance: Arc<Maintenance>,
    /// How many index entries one trace search scans at most.
    search_scan: usize,
    /// The only source of "now".
    clock: SharedClock,
    /// Woken when jobs may have become due earlier than a waiting
    /// `lease_due` thought (enqueue, retry, redrive).
    jobs_changed: Notify,
    /// What the writer did; the tests read it to see operations share
    /// commits and acks share cursor writes.
    #[cfg_attr(not(test), allow(dead_code))]
    stats: Arc<WriterStats>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channels ends the writer loops after the ops they hold.
        self.ops.take();
        self.trace_ops.take();
        let here = std::thread::current().id();
        if let Some(writer) = self.writer.take()
            && writer.thread().id() != here
            && self.trace_writer != here
        {
            let _ = writer.join();
        }
    }
}

/// Knobs that tests turn (the ring's size, to see it wrap).
#[derive(Clone, Copy, Debug)]
struct Tuning {
    recent_events: usize,
    recent_bytes: usize,
    trace_merge_at: usize,
    trace_fanout: usize,
    trace_step_keys: usize,
    search_scan: usize,
    checkpoint_pages: u32,
}

impl Tuning {
    fn trace_tiering(&self) -> Tiering {
        Tiering {
            merge_at: self.trace_merge_at,
            fanout: self.trace_fanout,
            step_keys: self.trace_step_keys,
        }
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            recent_events: RECENT_EVENTS,
            recent_bytes: RECENT_BYTES,
            trace_merge_at: trace_ids::MERGE_AT,
            trace_fanout: trace_id_runs::FANOUT,
            trace_step_keys: trace_id_runs::STEP_KEYS,
            search_scan: traces::SEARCH_SCAN,
            checkpoint_pages: CHECKPOINT_PAGES,
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/busbar.db`, migrates its schema, makes
    /// every leased job due again and starts the writer thread. Fails with
    /// [`OpenError::InUse`] if another process has the dir open. All times
    /// (due jobs, leases, visibility, revocation) come from `clock`.
    pub fn open(dir: &Path, durability: Durability, clock: SharedClock) -> Result<Self, OpenError> {
        Self::open_tuned(dir, durability, clock, Tuning::default())
    }

    fn open_tuned(
        dir: &Path,
        durability: Durability,
        clock: SharedClock,
        tuning: Tuning,
    ) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock = lock_dir(dir)?;
        let mut conn = connect(&dir.join(DB_FILE), durability)?;
        let mut traces = connect(&dir.join(TRACES_FILE), durability)?;
        let checkpointers = [
            checkpoint::hand_off(
                &mut conn,
                &dir.join(DB_FILE),
                durability,
                tuning.checkpoint_pages,
                "busbar-store-ckpt",
            )?,
            checkpoint::hand_off(
                &mut traces,
                &dir.join(TRACES_FILE),
                durability,
                TRACES_CHECKPOINT_PAGES,
                "busbar-trace-ckpt",
            )?,
        ];
        schema::migrate_traces(&mut traces, &conn, dir)?;
        schema::migrate(&mut conn, dir)?;
        let archive_pos_shift =
            archives::PosShift::read(&conn).context("reading the archive rows' shift")?;
        attach_log(&traces, &dir.join(DB_FILE))?;
        // Whatever the last run left unmerged (or a migration brought) is
        // merged now, so memory starts empty whatever the file's history.
        {
            let tx = traces.transaction().context("merging recent traces")?;
            trace_ids::merge(&tx, None, tuning.trace_tiering()).context("merging recent traces")?;
            tx.commit().context("merging recent traces")?;
        }
        let recent_traces = Arc::new(
            RecentTraceIds::merged_before(&traces).context("reading the traces' merge mark")?,
        );
        let reclaimed = jobs::reclaim_leases(&conn).context("reclaiming job leases")?;
        if reclaimed > 0 {
            tracing::info!(
                jobs = reclaimed,
                "made jobs leased before the restart due again"
            );
        }
        let tail = Arc::new(Tail::new(
            log::last_seq(&conn).context("reading the log's end")?,
            tuning.recent_events,
            tuning.recent_bytes,
        ));
        let stats = Arc::new(WriterStats::default());
        let log_ranges = Arc::new(log_archives::RangeCache::default());
        let (trace_ops, trace_rx) = mpsc::channel::<Op>(8192);
        // Anything a restart interrupted (a compaction, retired runs) goes
        // on at once.
        let trace_maintenance = Arc::new(Maintenance::new(tuning.trace_tiering()));
        let trace_writer = {
            let maintenance = trace_maintenance.clone();
            std::thread::Builder::new()
                .name("busbar-trace-writer".into())
                .spawn(move || {
                    writer_loop(
                        traces,
                        trace_rx,
                        &WriterStats::default(),
                        rusqlite::TransactionBehavior::Deferred,
                        || {},
                        |conn| maintenance.step(conn),
                    )
                })
                .context("starting the traces' writer")?
        };
        let trace_writer_id = trace_writer.thread().id();
        let (ops, rx) = mpsc::channel::<Op>(8192);
        let writer = {
            let stats = stats.clone();
            let ranges = log_ranges.clone();
            std::thread::Builder::new()
                .name("busbar-store-writer".into())
                .spawn(move || {
                    writer_loop(
                        conn,
                        rx,
                        &stats,
                        rusqlite::TransactionBehavior::Immediate,
                        || ranges.clear(),
                        |_| false,
                    );
                    // Every connection is closed (a checkpointer closes its
                    // own once its writer's is); only now may another
                    // process take the dir.
                    let _ = trace_writer.join();
                    for checkpointer in checkpointers {
                        let _ = checkpointer.join();
                    }
                    drop(lock);
                })
                .context("starting the store writer")?
        };
        Ok(Self {
            inner: Arc::new(Inner {
                ops: Some(ops),
                trace_ops: Some(trace_ops),
                writer: Some(writer),
                trace_writer: trace_writer_id,
                tail,
                archive_pos_shift,
                log_ranges,
                recent_traces,
                merging: Arc::default(),
                trace_maintenance,
                search_scan: tuning.search_scan,
                clock,
                jobs_changed: Notify::new(),
                stats,
            }),
        })
    }

    /// Now, by the store's clock.
    fn now_ms(&self) -> crate::clock::Millis {
        self.inner.clock.now_ms()
    }

    /// Runs `f` inside the next group commit and returns its result once committed.
    async fn run<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> anyhow::Result<R> + Send + 'static,
    {
        self.run_then(f, |r| r).await
    }

    /// Like [`Self::run`], on the traces' file and writer.
    async fn run_traces<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> anyhow::Result<R> + Send + 'static,
    {
        self.run_traces_then(f, |r| r).await
    }

    /// Like [`Self::run_then`], on the traces' file and writer.
    async fn run_traces_then<R, T, F, H>(&self, f: F, on_commit: H) -> StoreResult<T>
    where
        R: Send + 'static,
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> anyhow::Result<R> + Send + 'static,
        H: FnOnce(R) -> T + Send + 'static,
    {
        let ops = self.inner.trace_ops.as_ref().ok_or(StoreError::Closed)?;
        submit(ops, Isolation::Savepoint, move |tx, _| f(tx), on_commit).await
    }

    /// Like [`Self::run`], and passes the result through `on_commit` on the
    /// writer thread right after a successful commit, in commit order (used
    /// to publish appended events before anyone can see the commit).
    async fn run_then<R, T, F, H>(&self, f: F, on_commit: H) -> StoreResult<T>
    where
        R: Send + 'static,
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> anyhow::Result<R> + Send + 'static,
        H: FnOnce(R) -> T + Send + 'static,
    {
        let ops = self.inner.ops.as_ref().ok_or(StoreError::Closed)?;
        submit(ops, Isolation::Savepoint, move |tx, _| f(tx), on_commit).await
    }

    /// Like [`Self::run_then`], for an `f` that can fail only with the
    /// file: its failure fails its whole commit ([`Isolation::Commit`]),
    /// and it may leave writes for the commit ([`AtCommit`]).
    async fn run_then_unisolated<R, T, F, H>(&self, f: F, on_commit: H) -> StoreResult<T>
    where
        R: Send + 'static,
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &mut AtCommit) -> anyhow::Result<R> + Send + 'static,
        H: FnOnce(R) -> T + Send + 'static,
    {
        let ops = self.inner.ops.as_ref().ok_or(StoreError::Closed)?;
        submit(ops, Isolation::Commit, f, on_commit).await
    }
}

impl SqliteStore {
    /// Starts a merge of the recent trace ids when enough wait (appends
    /// call it: when no event matches a rule, no trace is recorded to
    /// start one). One at a time; it runs on the traces' writer.
    fn merge_trace_ids_if_due(&self) {
        use std::sync::atomic::Ordering;
        let recent = self.inner.recent_traces.clone();
        let tiering = self.inner.trace_maintenance.tiering();
        if recent.len() < tiering.merge_at || self.inner.merging.swap(true, Ordering::AcqRel) {
            return;
        }
        let (store, merging) = (self.clone(), self.inner.merging.clone());
        let maintenance = self.inner.trace_maintenance.clone();
        tokio::spawn(async move {
            let noted = recent.clone();
            let merged = store
                .run_traces_then(
                    move |tx| trace_ids::merge(tx, Some(&noted), tiering),
                    move |merged| {
                        if let Some(merged) = merged {
                            recent.forget_merged(merged);
                            maintenance.wake();
                        }
                    },
                )
                .await;
            merging.store(false, Ordering::Release);
            if let Err(e) = merged {
                tracing::warn!(error = %e, "merging trace ids failed; the next append tries again");
            }
        });
    }
}

/// Attaches the main file to the traces' connection, read-only, as `log`:
/// a trace that is only a log entry is read from there. Read-only, so the
/// traces' write transactions never lock the main file (SQLite begins a
/// read transaction on a read-only attachment).
fn attach_log(traces: &Connection, main: &Path) -> Result<(), OpenError> {
    let mut uri = String::from("file:");
    for c in main.to_string_lossy().chars() {
        match c {
            '%' | '?' | '#' => uri.push_str(&format!("%{:02X}", c as u32)),
            c => uri.push(c),
        }
    }
    uri.push_str("?mode=ro");
    traces
        .execute("ATTACH DATABASE ?1 AS log", [&uri])
        .with_context(|| format!("attaching {} to the traces", main.display()))?;
    Ok(())
}

/// Queues `f` for a writer thread and waits for its committed result.
async fn submit<R, T, F, H>(
    ops: &mpsc::Sender<Op>,
    isolation: Isolation,
    f: F,
    on_commit: H,
) -> StoreResult<T>
where
    R: Send + 'static,
    T: Send + 'static,
    F: FnOnce(&Transaction<'_>, &mut AtCommit) -> anyhow::Result<R> + Send + 'static,
    H: FnOnce(R) -> T + Send + 'static,
{
    let (reply, rx) = oneshot::channel::<StoreResult<T>>();
    let run = Box::new(move |tx: &Transaction<'_>, at_commit: &mut AtCommit| {
        let result = f(tx, at_commit);
        let ok = result.is_ok();
        let completion: Completion = Box::new(move |commit| {
            let answer = match (commit, result) {
                (Ok(()), Ok(r)) => Ok(on_commit(r)),
                // Its own error says more than the commit it failed.
                (_, Err(e)) => Err(classify(e)),
                (Err(e), Ok(_)) => Err(StoreError::Backend(anyhow::anyhow!("commit failed: {e}"))),
            };
            let _ = reply.send(answer);
        });
        (ok, completion)
    });
    let op = Op { run, isolation };
    ops.send(op).await.map_err(|_| StoreError::Closed)?;
    rx.await.map_err(|_| StoreError::Closed)?
}

/// Opens one of the store's files and sets it up (WAL, the sync level,
/// the cache).
fn connect(path: &Path, durability: Durability) -> Result<Connection, OpenError> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    let sync = match durability {
        Durability::Normal => "NORMAL",
        Durability::Always => "FULL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA foreign_keys=OFF;
         PRAGMA busy_timeout=5000; PRAGMA cache_size=-{CACHE_KIB}; PRAGMA temp_store=MEMORY;"
    ))
    .with_context(|| format!("configuring {}", path.display()))?;
    // The query planner stability guarantee: a statement's plan does not
    // depend on the values bound to it. Without it, SQLite (built with
    // STAT4) re-plans a cached statement every time a parameter that reaches
    // an index changes — every trace write re-parsed its own SQL (measured:
    // one re-prepare per execution, ~10 % of the CPU with tracing on). Our
    // statements name their indexes where the choice matters.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .with_context(|| format!("configuring {}", path.display()))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Takes the data dir's lock, or says who has it.
fn lock_dir(dir: &Path) -> Result<File, OpenError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(OpenError::InUse(dir.to_path_buf())),
        Err(TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e).context(format!("locking {}", path.display())))?
        }
    }
}

/// Maps a constraint violation to `Conflict`, everything else to `Backend`.
fn classify(e: anyhow::Error) -> StoreError {
    if let Some(rusqlite::Error::SqliteFailure(f, _)) = e.downcast_ref::<rusqlite::Error>()
        && f.code == rusqlite::ErrorCode::ConstraintViolation
    {
        return StoreError::Conflict(e.to_string());
    }
    StoreError::Backend(e)
}

/// Counts of the writer's work (cheap: two atomic adds per commit).
#[derive(Debug, Default)]
struct WriterStats {
    /// Commits made (group commit makes this far smaller than `ops`).
    commits: AtomicU64,
    /// Operations run.
    ops: AtomicU64,
}

/// Runs a writer: takes the waiting ops, runs them in one transaction
/// begun with `begin`, commits, answers. The main writer begins
/// `IMMEDIATE`; the traces' writer `DEFERRED`, because its connection has
/// the main file attached (read-only): an immediate begin opens a read of
/// every attached file, and a reader held on the main file in every trace
/// commit keeps that file's checkpoints from resetting its WAL. Deferred,
/// only the ops that read the log (lookups, searches, the sweep) open one.
/// It is the only writer of `traces.db`, so deferring its write lock
/// never meets another. `rolled_back` hears of every failed commit (what
/// was kept in memory of its writes is void). `idle` runs whenever no op
/// waits, until it says it did nothing (background work in bounded steps,
/// each its own transaction: ops arriving meanwhile wait one step at most).
fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Op>,
    stats: &WriterStats,
    begin: rusqlite::TransactionBehavior,
    rolled_back: impl Fn(),
    mut idle: impl FnMut(&mut Connection) -> bool,
) {
    let mut batch: VecDeque<Op> = VecDeque::with_capacity(MAX_OPS_PER_COMMIT);
    loop {
        // Ops left by a commit that failed early go first, without waiting.
        if batch.is_empty() {
            match rx.try_recv() {
                Ok(op) => batch.push_back(op),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if idle(&mut conn) {
                        continue;
                    }
                    match rx.blocking_recv() {
                        Some(op) => batch.push_back(op),
                        None => break,
                    }
                }
            }
        }
        while batch.len() < MAX_OPS_PER_COMMIT {
            match rx.try_recv() {
                Ok(op) => batch.push_back(op),
                Err(_) => break,
            }
        }
        let mut completions = Vec::with_capacity(batch.len());
        let mut op_failed_commit = false;
        let outcome = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(begin)?;
            let mut at_commit = AtCommit::default();
            while let Some(op) = batch.pop_front() {
                if op.isolation == Isolation::Commit {
                    let (ok, completion) = (op.run)(&tx, &mut at_commit);
                    completions.push(completion);
                    if !ok {
                        // Its writes cannot be told apart from the others':
                        // the commit goes (the ops after it wait for the next).
                        op_failed_commit = true;
                        return Err(rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                            Some("an operation failed, and its whole commit with it".into()),
                        ));
                    }
                    continue;
                }
                at_commit.write(&tx)?;
                tx.prepare_cached("SAVEPOINT op")?.execute([])?;
                let (ok, completion) = (op.run)(&tx, &mut at_commit);
                if !ok {
                    tx.prepare_cached("ROLLBACK TO op")?.execute([])?;
                }
                tx.prepare_cached("RELEASE op")?.execute([])?;
                completions.push(completion);
            }
            at_commit.write(&tx)?;
            tx.commit()
        })();
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats
            .ops
            .fetch_add(completions.len() as u64, Ordering::Relaxed);
        let result = outcome.map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, "store commit failed");
            rolled_back();
        }
        for completion in completions {
            completion(result.clone());
        }
        // Ops that ran before a failed commit got its error above. Those an
        // operation's failure kept from running go in the next commit; after
        // any other failure (the file's), they are dropped, which their
        // callers see as `Closed`, rather than retried in a loop.
        if !op_failed_commit {
            batch.clear();
        }
    }
}

/// A random hex token (queue receipts).
fn random_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
