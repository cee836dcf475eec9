//! The conformance suite on SQLite, and what only SQLite has: group commit,
//! savepoints, the tail ring, schema migration and the data-dir lock.

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::store::testing::{self, Subject, T0};
use crate::store::{
    ArchivePosition, Archives, Backend, ConfigStore, DeadLetterFilter, DeadLetters, DeliveryJobs,
    EventLog, Exhausted, FailureCode, LogConsumer, NewEvent, Queues, Trace, Traces,
};
use bytes::Bytes;
use std::time::Duration;

fn manual() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0))
}

fn open_at(dir: &Path, clock: SharedClock) -> SqliteStore {
    SqliteStore::open(dir, Durability::Normal, clock).expect("open")
}

/// A store at `dir` with some knobs turned, on a manual clock.
fn open_tuned_at(dir: &Path, tuning: Tuning) -> SqliteStore {
    SqliteStore::open_tuned(dir, Durability::Normal, manual(), tuning).expect("open")
}

fn event(id: &str) -> NewEvent {
    NewEvent {
        tenant: "acme".into(),
        bus: "orders".into(),
        event_id: id.into(),
        body: Bytes::from(format!(r#"{{"id":"{id}"}}"#)),
        ingested_ms: T0,
        ..Default::default()
    }
}

/// Runs raw SQL on the writer (to change the file behind the store's back).
async fn exec(store: &SqliteStore, sql: &'static str) {
    store
        .run(move |tx| Ok(tx.execute_batch(sql)?))
        .await
        .expect(sql);
}

/// Every event id the consumer hands out until it has nothing more.
async fn drain(consumer: &dyn LogConsumer, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let batch = consumer.next(max, Duration::ZERO).await.expect("next");
        if batch.is_empty() {
            return out;
        }
        assert!(batch.len() <= max);
        out.extend(batch.into_iter().map(|e| e.event.event_id));
    }
}

/// Holds the writer thread inside an operation until released, so that
/// operations sent meanwhile queue up and go into the next commit together.
struct Blocked {
    release: std::sync::mpsc::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl Blocked {
    async fn writer(store: &SqliteStore) -> Self {
        let (running_tx, running) = oneshot::channel();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let blocker = store.clone();
        let done = tokio::spawn(async move {
            blocker
                .run(move |_| {
                    let _ = running_tx.send(());
                    let _ = wait.recv_timeout(Duration::from_secs(10));
                    Ok(())
                })
                .await
                .expect("blocking op");
        });
        running.await.expect("the writer ran the blocking op");
        Self { release, done }
    }

    /// Operations waiting for the writer.
    fn queued(store: &SqliteStore) -> usize {
        let ops = store.inner.ops.as_ref().expect("open");
        ops.max_capacity() - ops.capacity()
    }

    async fn until_queued(store: &SqliteStore, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Self::queued(store) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "ops were not queued"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn release(self) {
        self.release.send(()).expect("release");
        self.done.await.expect("blocking op");
    }
}

#[tokio::test]
async fn passes_the_conformance_suite() {
    testing::conformance(|clock| async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_at(dir.path(), clock);
        Subject::keeping(Arc::new(store), dir)
    })
    .await;
}

/// The suite again with the traces' event ids merged into runs every two
/// traces, every two runs of a tier compacted three keys a step (in the
/// background, while the scenario reads), and a search scan budget of two
/// index entries: with the defaults no test records enough to merge or to
/// stop a search, so this is where every trace scenario also finds traces
/// in runs, and every filtered search pages through scans cut short (its
/// pages, put together, are the same).
#[tokio::test]
async fn passes_the_conformance_suite_merging_trace_ids_and_cutting_searches_short() {
    testing::conformance(|clock| async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let tuning = Tuning {
            trace_merge_at: 2,
            trace_fanout: 2,
            trace_step_keys: 3,
            search_scan: 2,
            ..Tuning::default()
        };
        let store =
            SqliteStore::open_tuned(dir.path(), Durability::Normal, clock, tuning).expect("open");
        Subject::keeping(Arc::new(store), dir)
    })
    .await;
}

#[tokio::test]
async fn passes_the_durability_suite() {
    testing::durability(
        |dir: PathBuf, clock| async move { Arc::new(open_at(&dir, clock)) as Arc<dyn Backend> },
        true,
    )
    .await;
}

#[tokio::test]
async fn concurrent_appends_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_at(dir.path(), manual());
    let consumer = store.consumer().await.unwrap();
    let blocked = Blocked::writer(&store).await;
    let before = store.inner.stats.commits.load(Ordering::SeqCst);
    let appends: Vec<_> = (0..100)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.append(vec![event(&format!("e{i}"))]).await })
        })
        .collect();
    Blocked::until_queued(&store, 100).await;
    blocked.release().await;
    for append in appends {
        append.await.unwrap().expect("append");
    }
    let commits = store.inner.stats.commits.load(Ordering::SeqCst) - before;
    // The blocking op's commit, then one for all hundred appends.
    assert!(commits <= 2, "{commits} commits for 100 appends");
    let mut got = drain(consumer.as_ref(), 1000).await;
    got.sort();
    let mut want: Vec<String> = (0..100).map(|i| format!("e{i}")).collect();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_failed_operation_rolls_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_at(dir.path(), manual());
    store
        .create_tenant(crate::store::TenantRecord {
            name: "acme".into(),
            created_ms: T0,
        })
        .await
        .unwrap();
    let blocked = Blocked::writer(&store).await;
    let before = store.inner.stats.commits.load(Ordering::SeqCst);
    let first = tokio::spawn({
        let store = store.clone();
        async move { store.put_setting("first", "1").await }
    });
    Blocked::until_queued(&store, 1).await;
    let failing = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .run(|tx| -> anyhow::Result<()> {
                    tx.execute(
                        "INSERT INTO settings (key, value) VALUES ('partial', 'x')",
                        [],
                    )?;
                    anyhow::bail!("the op fails after writing")
                })
                .await
        }
    });
    Blocked::until_queued(&store, 2).await;
    let conflict = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .create_tenant(crate::store::TenantRecord {
                    name: "acme".into(),
                    created_ms: T0,
                })
                .await
        }
    });
    Blocked::until_queued(&store, 3).await;
    let last = tokio::spawn({
        let store = store.clone();
        async move { store.put_setting("last", "2").await }
    });
    Blocked::until_queued(&store, 4).await;
    blocked.release().await;

    first.await.unwrap().expect("first");
    assert!(matches!(
        failing.await.unwrap(),
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(
        conflict.await.unwrap(),
        Err(StoreError::Conflict(_))
    ));
    last.await.unwrap().expect("last");
    assert!(
        store.inner.stats.commits.load(Ordering::SeqCst) - before <= 2,
        "one shared commit"
    );
    assert_eq!(store.setting("first").await.unwrap().as_deref(), Some("1"));
    assert_eq!(
        store.setting("partial").await.unwrap(),
        None,
        "not rolled back"
    );
    assert_eq!(store.setting("last").await.unwrap().as_deref(), Some("2"));
    assert_eq!(store.load().await.unwrap().tenants.len(), 1);
}

/// An append runs without a savepoint of its own (`Isolation::Commit`):
/// when such an operation fails, its commit fails with it — the
/// operations that ran before it in that commit get the error and leave
/// nothing behind — and the operations it kept from running go in the next
/// commit.
#[tokio::test]
async fn an_unisolated_operation_that_fails_fails_its_commit_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_at(dir.path(), manual());
    let blocked = Blocked::writer(&store).await;
    let first = tokio::spawn({
        let store = store.clone();
        async move { store.put_setting("first", "1").await }
    });
    Blocked::until_queued(&store, 1).await;
    let appended = tokio::spawn({
        let store = store.clone();
        async move { store.append(vec![event("e1")]).await }
    });
    Blocked::until_queued(&store, 2).await;
    let failing = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .run_then_unisolated(
                    |tx, _| -> anyhow::Result<()> {
                        tx.execute(
                            "INSERT INTO settings (key, value) VALUES ('partial', 'x')",
                            [],
                        )?;
                        anyhow::bail!("the op fails after writing")
                    },
                    |r| r,
                )
                .await
        }
    });
    Blocked::until_queued(&store, 3).await;
    let last = tokio::spawn({
        let store = store.clone();
        async move { store.append(vec![event("e2")]).await }
    });
    Blocked::until_queued(&store, 4).await;
    blocked.release().await;

    let error = |r: StoreResult<()>| match r {
        Err(StoreError::Backend(e)) => e.to_string(),
        other => panic!("{other:?}"),
    };
    assert!(error(first.await.unwrap()).contains("commit failed"));
    assert!(error(appended.await.unwrap()).contains("commit failed"));
    assert!(
        error(failing.await.unwrap()).contains("the op fails after writing"),
        "the failing op hears its own error"
    );
    last.await
        .unwrap()
        .expect("the op after it runs in the next commit");
    assert_eq!(store.setting("first").await.unwrap(), None);
    assert_eq!(store.setting("partial").await.unwrap(), None);
    let consumer = store.consumer().await.unwrap();
    assert_eq!(drain(consumer.as_ref(), 1).await, ["e2"]);
}

/// Appends add to their archives' counters once per commit; an operation
/// of the same commit that reads the counters after an append still sees
/// it counted.
#[tokio::test]
async fn archive_counters_written_at_commit_are_exact_within_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_at(dir.path(), manual());
    let archived = |id: &str| NewEvent {
        archives: vec!["a".into()],
        ..event(id)
    };
    let blocked = Blocked::writer(&store).await;
    let mut queued = 0;
    let mut appends = Vec::new();
    let mut reads = Vec::new();
    for round in 0..3 {
        for i in 0..2 {
            let (appender, e) = (store.clone(), archived(&format!("e{round}-{i}")));
            appends.push(tokio::spawn(async move { appender.append(vec![e]).await }));
            queued += 1;
            Blocked::until_queued(&store, queued).await;
        }
        let reader = store.clone();
        reads.push(tokio::spawn(async move { reader.archive_stats("a").await }));
        queued += 1;
        Blocked::until_queued(&store, queued).await;
    }
    blocked.release().await;
    for append in appends {
        append.await.unwrap().unwrap();
    }
    let mut seen = Vec::new();
    for read in reads {
        seen.push(read.await.unwrap().unwrap().event_count);
    }
    assert_eq!(seen, [2, 4, 6], "each read counts the appends before it");
    let stats = store.archive_stats("a").await.unwrap();
    assert_eq!(stats.event_count, 6);
    assert_eq!(
        stats.size_bytes,
        (0..3)
            .flat_map(|r| (0..2).map(move |i| event(&format!("e{r}-{i}")).body.len() as u64))
            .sum::<u64>()
    );
}

#[tokio::test]
async fn the_tail_ring_serves_recent_events_without_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_at(dir.path(), manual());
    let consumer = store.consumer().await.unwrap();
    store.append(vec![event("e1"), event("e2")]).await.unwrap();
    store.append(vec![event("e3")]).await.unwrap();
    exec(&store, "DELETE FROM events").await;
    assert_eq!(drain(consumer.as_ref(), 2).await, ["e1", "e2", "e3"]);
}

/// Checkpoints run on their own thread (see `checkpoint.rs`), not in the
/// writer's commits: while the store stays open, what was committed still
/// reaches the database file, not only the WAL (with the automatic
/// checkpoint off and nothing in its place, it would reach the file only
/// when the store closed).
#[tokio::test]
async fn commits_reach_the_database_file_while_the_store_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = Tuning {
        checkpoint_pages: 8,
        ..Tuning::default()
    };
    let store = open_tuned_at(dir.path(), tuning);
    let file = dir.path().join(DB_FILE);
    let before = std::fs::metadata(&file).unwrap().len();
    // 200 commits of a 4 KB body each: at least 800 KB of new pages.
    for i in 0..200 {
        let mut e = event(&format!("e{i}"));
        e.body = Bytes::from(format!(r#"{{"id":"e{i}","pad":"{}"}}"#, "x".repeat(4096)));
        store.append(vec![e]).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = std::fs::metadata(&file).unwrap().len();
        if now >= before + 800 * 1024 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the database file grew from {before} to only {now} bytes: nothing checkpoints"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn after_the_ring_wraps_reads_fall_back_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = Tuning {
        recent_events: 4,
        ..Tuning::default()
    };
    let store = open_tuned_at(dir.path(), tuning);
    for i in 1..=10 {
        store.append(vec![event(&format!("e{i}"))]).await.unwrap();
    }
    let consumer = store.consumer().await.unwrap();
    let first: Vec<String> = consumer
        .next(3, Duration::ZERO)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event.event_id)
        .collect();
    assert_eq!(
        first,
        ["e1", "e2", "e3"],
        "from the file: the ring holds e7..e10"
    );
    // The ring still holds e7..e10: without them in the file, only the ring
    // can hand them out.
    exec(&store, "DELETE FROM events WHERE seq >= 7").await;
    assert_eq!(
        drain(consumer.as_ref(), 3).await,
        ["e4", "e5", "e6", "e7", "e8", "e9", "e10"]
    );
}

#[tokio::test]
async fn the_ring_holds_a_bounded_number_of_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // Bodies are `{"id":"eN"}`: 11 bytes for one digit. Room for three.
    let tuning = Tuning {
        recent_bytes: 33,
        ..Tuning::default()
    };
    let store = open_tuned_at(dir.path(), tuning);
    for i in 1..=6 {
        store.append(vec![event(&format!("e{i}"))]).await.unwrap();
    }
    // e1..e3 are gone from the file. A ring holding them would still hand
    // them out; this one holds only e4..e6, so reading from the start goes
    // to the file, which has e4..e6.
    exec(&store, "DELETE FROM events WHERE seq <= 3").await;
    let consumer = store.consumer().await.unwrap();
    assert_eq!(drain(consumer.as_ref(), 10).await, ["e4", "e5", "e6"]);
}

#[tokio::test]
async fn a_second_open_of_the_same_dir_fails_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let first = open_at(dir.path(), manual());
    first.put_setting("k", "v").await.unwrap();
    let second = SqliteStore::open(dir.path(), Durability::Normal, manual());
    match second {
        Err(e @ OpenError::InUse(_)) => {
            let text = e.to_string();
            assert!(
                text.contains(&dir.path().display().to_string())
                    && text.contains("is in use by another busbar process"),
                "{text}"
            );
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a data dir in use"),
    }
    // Still usable: the failed open changed nothing.
    assert_eq!(first.setting("k").await.unwrap().as_deref(), Some("v"));
    drop(first);
    let again = open_at(dir.path(), manual());
    assert_eq!(again.setting("k").await.unwrap().as_deref(), Some("v"));
}

#[tokio::test]
async fn a_reopen_makes_leased_jobs_due_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual();
    {
        let store = open_at(dir.path(), clock.clone());
        let job = crate::store::NewJob {
            tenant: "acme".into(),
            bus: "orders".into(),
            rule: "r".into(),
            target: "t".into(),
            event_id: "e1".into(),
            event: Bytes::from_static(b"{}"),
            body: None,
            attempts: 0,
            ingested_ms: T0,
            due_ms: T0,
            last_error: None,
            chain: None,
        };
        store.enqueue(vec![job]).await.unwrap();
        let leased = store
            .lease_due(10, Duration::from_secs(120), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(leased.len(), 1);
    }
    let store = open_at(dir.path(), clock.clone());
    let leased = store
        .lease_due(10, Duration::from_secs(120), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1, "the job stayed leased across the restart");
}

/// The schema of the version before `user_version` was recorded, verbatim.
const OLD_SCHEMA: &str = r#"
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

#[tokio::test]
async fn a_data_dir_of_the_previous_version_opens_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What the previous version left behind: a routed event and two
        // unrouted ones, a job its (killed) process had leased, a dead
        // letter, a queue message, config.
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        conn.execute_batch(OLD_SCHEMA).unwrap();
        conn.execute_batch(&format!(
            r#"
            INSERT INTO tenants VALUES ('acme', {T0});
            INSERT INTO api_keys (id, tenant, hash, created_ms) VALUES ('k1', 'acme', 'h1', {T0});
            INSERT INTO resources VALUES ('acme', 'bus', 'orders', '{{"description":"d"}}', {T0});
            INSERT INTO settings VALUES ('admin_key_hash', 'abc');
            INSERT INTO events (tenant, bus, event_id, body, ingested_ms) VALUES
                ('acme', 'orders', 'e1', X'7B7D', {T0}),
                ('acme', 'orders', 'e2', X'7B7D', {T0}),
                ('acme', 'orders', 'e3', X'7B7D', {T0});
            INSERT INTO cursors VALUES ('route', 1);
            INSERT INTO jobs (tenant, bus, rule, target, event_id, event, body, attempts, ingested_ms,
                due_ms, lease_until, error_code, error_message, last_status)
                VALUES ('acme', 'orders', 'r', 't', 'e1', X'7B7D', NULL, 2, {T0}, {T0}, {lease},
                        'http_status', '503 Service Unavailable', 503);
            INSERT INTO dead_letters (tenant, bus, rule, target, event_id, event, body, error_code,
                error_message, attempts, last_status, exhausted, ingested_ms, created_ms)
                VALUES ('acme', 'orders', 'r', 't', 'e0', X'7B7D', 'rendered', 'timeout', 'slow', 5,
                        NULL, 'max_attempts', {T0}, {T0});
            INSERT INTO queue_messages (tenant, queue, body) VALUES ('acme', 'q', X'6D31');
            "#,
            lease = T0 + 120_000
        ))
        .unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 0);
    }
    let store = open_at(dir.path(), manual());

    let config = store.load().await.unwrap();
    assert_eq!(config.tenants.len(), 1);
    assert_eq!(config.keys.len(), 1);
    assert_eq!(config.resources.len(), 1);
    assert_eq!(
        store.setting("admin_key_hash").await.unwrap().as_deref(),
        Some("abc")
    );

    let consumer = store.consumer().await.unwrap();
    assert_eq!(drain(consumer.as_ref(), 10).await, ["e2", "e3"]);

    let jobs = store
        .lease_due(10, Duration::from_secs(60), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1, "the old lease was ended at open");
    let job = &jobs[0].job;
    assert_eq!((job.event_id.as_str(), job.attempts), ("e1", 2));
    let error = job.last_error.as_ref().unwrap();
    assert_eq!(
        (error.code, error.status),
        (FailureCode::HttpStatus, Some(503))
    );
    let err = crate::store::AttemptError::new(FailureCode::Timeout, "again");
    assert!(store.retry_job(&jobs[0].lease, T0, 3, err).await.unwrap());

    let letters = store
        .list_dead_letters("acme", &DeadLetterFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        (
            letter.error.code,
            letter.error.message.as_str(),
            letter.exhausted
        ),
        (FailureCode::Timeout, "slow", Exhausted::MaxAttempts)
    );
    assert_eq!(letter.body.as_deref(), Some("rendered"));

    let messages = store
        .queue_receive("acme", "q", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        store
            .queue_ack("acme", "q", &[messages[0].receipt.clone()])
            .await
            .unwrap(),
        1
    );

    drop(consumer);
    drop(store);
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::CURRENT);
}

/// Writes the main file as schema version `version` made it, with `rows`.
fn write_data_dir_at_version(dir: &Path, version: i64, rows: &str) {
    let conn = Connection::open(dir.join(DB_FILE)).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
    for (_, step) in schema::STEPS.iter().filter(|(v, _)| *v <= version) {
        conn.execute_batch(step).unwrap();
    }
    conn.execute_batch(rows).unwrap();
    conn.pragma_update(None, "user_version", version).unwrap();
}

#[tokio::test]
async fn traces_of_a_version_4_data_dir_move_to_their_own_file() {
    let dir = tempfile::tempdir().unwrap();
    // Version 4 kept traces in the main file.
    write_data_dir_at_version(
        dir.path(),
        4,
        &format!(
            r#"
            INSERT INTO traces (tenant, bus, event_id, received_ms, source, type, state, size,
                replay, rules, body, event)
                VALUES ('acme', 'orders', 'e1', {T0}, 'shop', 'order.placed', 'delivered', 2,
                        NULL, 'r1', '{{"routed":true}}', X'7B7D');
            INSERT INTO trace_rules VALUES ('acme', 'r1', {T0}, 1);
            "#
        ),
    );
    for _ in 0..2 {
        // Twice: a second open finds nothing left to move and keeps what moved.
        let store = open_at(dir.path(), manual());
        let trace = store.trace("acme", "e1", None).await.unwrap().unwrap();
        assert_eq!(
            (trace.source.as_str(), trace.state, &trace.event[..]),
            ("shop", crate::store::TraceState::Delivered, &b"{}"[..])
        );
        let query = crate::store::TraceQuery {
            rule: Some("r1".into()),
            ..Default::default()
        };
        let (found, _) = store.search_traces("acme", &query, None, 10).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].event_id, "e1");
    }
    let main = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let left: i64 = main
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'traces'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "the main file no longer holds traces");
    let traces = Connection::open(dir.path().join(TRACES_FILE)).unwrap();
    let version: i64 = traces
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::TRACES_CURRENT);
}

/// Version 8 of `traces.db` moves the rows of traced log entries to
/// `entry_traces`: their traces read, search by rule and state and take
/// facts as before, an entry with two rows keeps the newer, and a run of
/// trace ids that names a moved row by its old id still finds it through
/// the entry.
#[tokio::test]
async fn rows_of_traced_entries_of_a_version_7_traces_file_move_to_entry_traces() {
    use crate::store::{TraceKey, TraceQuery, TraceState};
    let dir = tempfile::tempdir().unwrap();
    let positions: Vec<i64> = {
        let store = open_at(dir.path(), manual());
        let consumer = store.consumer().await.unwrap();
        store
            .append(vec![
                traced_event("a", T0, "shop"),
                traced_event("b", T0 + 1, "shop"),
            ])
            .await
            .unwrap();
        let entries = consumer.next(10, Duration::ZERO).await.unwrap();
        consumer
            .ack(entries.iter().map(|e| e.ack.clone()).collect())
            .await
            .unwrap();
        entries.iter().map(|e| e.position).collect()
    };
    {
        // The file as version 7 wrote it: rows with `in_log = 1` (b's
        // twice: the older row's rule must not survive), their rules by
        // row id, and a run naming a's row by its id.
        let conn = Connection::open(dir.path().join(TRACES_FILE)).unwrap();
        let (a, b) = (positions[0], positions[1]);
        let t1 = T0 + 1;
        conn.execute_batch(&format!(
            r#"
            DROP TABLE entry_traces;
            INSERT INTO traces (id, tenant, bus, event_id, received_ms, source, type, state, size,
                replay, rules, body, event, seq, in_log) VALUES
                (7, 'acme', 'orders', 'a', {T0}, 'shop', 'order', 'retrying', 2, NULL, 'ra',
                 '{{"routed":true,"rules":[{{"rule":"ra","outcome":"matched","targets":[{{"target":"t","state":"retrying"}}]}}]}}', X'', {a}, 1),
                (8, 'acme', 'orders', 'b', {t1}, 'shop', 'order', 'delivered', 2, NULL, 'old',
                 '{{"routed":true,"rules":[{{"rule":"old","outcome":"matched"}}]}}', X'', {b}, 1),
                (9, 'acme', 'orders', 'b', {t1}, 'shop', 'order', 'delivered', 2, NULL, 'rb',
                 '{{"routed":true,"rules":[{{"rule":"rb","outcome":"matched"}}]}}', X'', {b}, 1);
            INSERT INTO trace_rules VALUES ('acme', 'ra', {T0}, 7), ('acme', 'old', {t1}, 8),
                ('acme', 'rb', {t1}, 9);
            INSERT INTO trace_id_runs (run, state, tier, keys, first_ms, last_ms, first_trace,
                last_trace, last_seq) VALUES (99, 0, 0, 1, {T0}, {T0}, 7, 7, 0);
            INSERT INTO trace_id_keys VALUES (99, {ka}, 7);
            "#,
            ka = super::trace_ids::key("acme", "a"),
        ))
        .unwrap();
        conn.pragma_update(None, "user_version", 7).unwrap();
    }
    let store = open_at(dir.path(), manual());
    assert_eq!(count(&store, "SELECT COUNT(*) FROM traces").await, 0);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM entry_traces").await, 2);
    let a = store.trace("acme", "a", None).await.unwrap().expect("a");
    assert_eq!(
        (a.state, a.body.rules[0].rule.as_str(), &a.event[..]),
        (
            TraceState::Retrying,
            "ra",
            &traced_event("a", T0, "shop").body[..]
        )
    );
    let b = store.trace("acme", "b", None).await.unwrap().expect("b");
    assert_eq!(b.body.rules[0].rule, "rb", "the newer row");
    let by_rule = |rule: &str| TraceQuery {
        rule: Some(rule.into()),
        ..TraceQuery::default()
    };
    assert_eq!(search_all(&store, &by_rule("ra"), 10).await, ["a:retrying"]);
    assert_eq!(
        search_all(&store, &by_rule("rb"), 10).await,
        ["b:delivered"]
    );
    assert!(search_all(&store, &by_rule("old"), 10).await.is_empty());
    let retrying = TraceQuery {
        state: Some(TraceState::Retrying),
        ..TraceQuery::default()
    };
    assert_eq!(search_all(&store, &retrying, 10).await, ["a:retrying"]);
    // A fact reaches the moved trace; it leaves the uncommon states.
    let key = TraceKey {
        tenant: "acme".into(),
        bus: "orders".into(),
        event_id: "a".into(),
        received_ms: Some(T0),
    };
    store
        .add_trace_facts(vec![(key, delivered_to_t("ra"))].into())
        .await
        .unwrap();
    assert!(search_all(&store, &retrying, 10).await.is_empty());
    assert_eq!(
        search_all(&store, &TraceQuery::default(), 10).await,
        ["b:delivered", "a:delivered"]
    );
}

#[tokio::test]
async fn traces_of_a_version_3_traces_file_are_searched_through_the_new_indexes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(dir.path().join(TRACES_FILE)).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        for (_, step) in schema::TRACES_STEPS.iter().filter(|(v, _)| *v <= 3) {
            conn.execute_batch(step).unwrap();
        }
        conn.execute_batch(&format!(
            r#"
            INSERT INTO traces (tenant, bus, event_id, received_ms, source, type, state, size,
                replay, rules, body, event) VALUES
                ('acme', 'orders', 'e1', {T0}, 'shop', 'order.placed', 'delivered', 2,
                 NULL, '', '{{"routed":true}}', X'7B7D'),
                ('acme', 'audit', 'e2', {t1}, 'shop', 'order.placed', 'dead_lettered', 2,
                 NULL, '', '{{"routed":true}}', X'7B7D'),
                ('acme', 'orders', 'e3', {t2}, 'billing', 'order.paid', 'no_match', 2,
                 NULL, '', '{{"routed":true}}', X'7B7D');
            "#,
            t1 = T0 + 1,
            t2 = T0 + 2
        ))
        .unwrap();
        conn.pragma_update(None, "user_version", 3).unwrap();
    }
    let store = open_at(dir.path(), manual());
    let search = |query: crate::store::TraceQuery| {
        let store = store.clone();
        async move {
            let (found, _) = store.search_traces("acme", &query, None, 10).await.unwrap();
            found.into_iter().map(|t| t.event_id).collect::<Vec<_>>()
        }
    };
    let q = crate::store::TraceQuery::default;
    assert_eq!(search(q()).await, ["e3", "e2", "e1"]);
    let shop = crate::store::TraceQuery {
        source: Some("shop".into()),
        ..q()
    };
    assert_eq!(search(shop).await, ["e2", "e1"]);
    let dead = crate::store::TraceQuery {
        state: Some(crate::store::TraceState::DeadLettered),
        ..q()
    };
    assert_eq!(search(dead).await, ["e2"]);
    drop(store);
    let traces = Connection::open(dir.path().join(TRACES_FILE)).unwrap();
    let indexes: Vec<String> = traces
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'traces' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(indexes, ["traces_rows", "traces_seq", "traces_uncommon"]);
    // Version 5 made the uncommon states' condition comparisons (a row
    // written tested `NOT IN` through a temporary B-tree).
    let uncommon: String = traces
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'traces_uncommon'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!uncommon.contains(" IN "), "{uncommon}");
    let ids: Vec<(i64, String)> = traces
        .prepare("SELECT id, event_id FROM traces ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ids, [(1, "e1".into()), (2, "e2".into()), (3, "e3".into())]);
}

#[tokio::test]
async fn a_data_dir_of_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_at(dir.path(), manual()));
    {
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", schema::CURRENT + 1)
            .unwrap();
    }
    match SqliteStore::open(dir.path(), Durability::Normal, manual()) {
        Err(OpenError::NewerSchema { found, known, .. }) => {
            assert_eq!((found, known), (schema::CURRENT + 1, schema::CURRENT));
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a newer schema"),
    }
}

#[tokio::test]
async fn reopening_keeps_positions_increasing_after_a_prune() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual();
    {
        let store = open_at(dir.path(), clock.clone());
        let consumer = store.consumer().await.unwrap();
        store.append(vec![event("e1"), event("e2")]).await.unwrap();
        let entries = consumer.next(10, Duration::ZERO).await.unwrap();
        consumer
            .ack(entries.into_iter().map(|e| e.ack).collect())
            .await
            .unwrap();
        assert_eq!(store.prune(clock.now_ms() + 1).await.unwrap(), 2);
    }
    // The log is empty now; new entries must still come after the cursor.
    let store = open_at(dir.path(), clock.clone());
    let consumer = store.consumer().await.unwrap();
    store.append(vec![event("e3")]).await.unwrap();
    assert_eq!(drain(consumer.as_ref(), 10).await, ["e3"]);
}

#[tokio::test]
async fn acks_that_arrive_together_share_cursor_writes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual();
    {
        let store = open_at(dir.path(), clock.clone());
        let consumer = store.consumer().await.unwrap();
        let events = (0..100).map(|i| event(&format!("e{i}"))).collect();
        store.append(events).await.unwrap();
        let entries = consumer.next(100, Duration::ZERO).await.unwrap();
        assert_eq!(entries.len(), 100);
        let before = store.inner.stats.ops.load(Ordering::SeqCst);
        let acks: Vec<_> = entries
            .into_iter()
            .map(|e| {
                let consumer = consumer.clone();
                tokio::spawn(async move { consumer.ack(vec![e.ack]).await })
            })
            .collect();
        for ack in acks {
            ack.await.unwrap().expect("ack");
        }
        let ops = store.inner.stats.ops.load(Ordering::SeqCst) - before;
        assert!(ops < 10, "{ops} cursor writes for 100 acks");
        assert_eq!(consumer.in_flight(), 0);
    }
    let store = open_at(dir.path(), clock);
    let consumer = store.consumer().await.unwrap();
    assert!(
        drain(consumer.as_ref(), 100).await.is_empty(),
        "acked entries came back"
    );
}

/// SQLite built with STAT4 re-plans a cached statement whenever a value
/// bound to an indexed column changes, unless the query planner stability
/// guarantee is on: every trace write used to re-parse its lookup.
#[test]
fn cached_statements_are_not_prepared_again_for_new_parameters() {
    use rusqlite::StatementStatus;
    const LOOKUP: &str = "SELECT id, received_ms, fact FROM trace_pending \
                          WHERE tenant = ? AND event_id = ? AND bus = ? ORDER BY id";
    let dir = tempfile::tempdir().unwrap();
    let main = connect(&dir.path().join(DB_FILE), Durability::Normal).unwrap();
    let mut traces = connect(&dir.path().join(TRACES_FILE), Durability::Normal).unwrap();
    schema::migrate_traces(&mut traces, &main, dir.path()).unwrap();
    for i in 0..50 {
        let found = traces
            .prepare_cached(LOOKUP)
            .unwrap()
            .query_map(rusqlite::params!["acme", format!("e{i}"), "orders"], |_| {
                Ok(())
            })
            .unwrap()
            .count();
        assert_eq!(found, 0);
    }
    let stmt = traces.prepare_cached(LOOKUP).unwrap();
    assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0);
}

/// A trace recorded through [`Traces::record_traces`] (delivered, no rules).
fn delivered(id: &str, at: crate::store::Millis) -> crate::store::Trace {
    crate::store::Trace {
        tenant: "acme".into(),
        bus: "orders".into(),
        event_id: id.into(),
        received_ms: at,
        source: "shop".into(),
        event_type: "order.placed".into(),
        size_bytes: 2,
        event: Bytes::from_static(b"{}"),
        position: None,
        replay: None,
        head_in_log: false,
        body: Default::default(),
        state: crate::store::TraceState::NoMatch,
    }
}

/// A search that filters on the head scans at most its budget per call:
/// a source only the oldest of ten traces has is not found by the first
/// call, which answers an empty page with a cursor where it stopped; paging
/// on finds it, and nothing twice.
#[tokio::test]
async fn a_filtered_search_scans_at_most_its_budget_and_pages_on_from_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = Tuning {
        search_scan: 3,
        ..Tuning::default()
    };
    let store = open_tuned_at(dir.path(), tuning);
    let traces: Vec<Trace> = (0..10i64)
        .map(|i| {
            let mut t = delivered(&format!("e{i}"), T0 + i);
            if i == 0 {
                t.source = "rare".into();
            }
            t
        })
        .collect();
    store.record_traces(traces.into()).await.unwrap();
    let query = crate::store::TraceQuery {
        source: Some("rare".into()),
        ..Default::default()
    };
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = store
            .search_traces("acme", &query, after.as_ref(), 5)
            .await
            .unwrap();
        pages.push(page.into_iter().map(|t| t.event_id).collect::<Vec<_>>());
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    // Each call scans the budget and the entry it stopped at: e9..e6,
    // e5..e2, then the rest.
    assert_eq!(pages, [vec![], vec![], vec!["e0".to_owned()]]);
    // Without a filter every entry is a hit: no budget, one page.
    let (all, next) = store
        .search_traces("acme", &Default::default(), None, 10)
        .await
        .unwrap();
    assert_eq!((all.len(), next), (10, None));
}

async fn count(store: &SqliteStore, sql: &'static str) -> i64 {
    store
        .run_traces(move |tx| Ok(tx.query_row(sql, [], |r| r.get(0))?))
        .await
        .expect(sql)
}

#[tokio::test]
async fn trace_ids_are_merged_in_bulk_found_everywhere_and_expired_with_their_traces() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = Tuning {
        trace_merge_at: 4,
        ..Tuning::default()
    };
    let ids: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
    {
        let store = open_tuned_at(dir.path(), tuning);
        for id in &ids[..5] {
            store
                .record_traces(vec![delivered(id, T0)].into())
                .await
                .unwrap();
        }
        // The fourth trace merged the first four; the fifth waits in memory.
        assert_eq!(count(&store, "SELECT COUNT(*) FROM trace_id_keys").await, 4);
        assert_eq!(store.inner.recent_traces.len(), 1);
        for id in &ids[..5] {
            let found = store.trace("acme", id, None).await.unwrap();
            assert_eq!(found.map(|t| t.event_id).as_deref(), Some(id.as_str()));
        }
        // The same event at another time is a second trace; the newest wins.
        store
            .record_traces(vec![delivered("e0", T0 + 5)].into())
            .await
            .unwrap();
        let newest = store.trace("acme", "e0", None).await.unwrap().unwrap();
        assert_eq!(newest.received_ms, T0 + 5);
        // Recording a merged trace again replaces it.
        store
            .record_traces(vec![delivered("e1", T0)].into())
            .await
            .unwrap();
        assert_eq!(count(&store, "SELECT COUNT(*) FROM traces").await, 6);
        // Nothing leaks across tenants, whatever the index holds.
        assert!(store.trace("other", "e1", None).await.unwrap().is_none());
    }
    // Reopening merges what was left in memory.
    let store = open_at(dir.path(), manual());
    assert_eq!(count(&store, "SELECT COUNT(*) FROM trace_id_keys").await, 6);
    assert_eq!(store.inner.recent_traces.len(), 0);
    for id in &ids[5..] {
        store
            .record_traces(vec![delivered(id, T0)].into())
            .await
            .unwrap();
    }
    for id in &ids {
        assert!(
            store.trace("acme", id, None).await.unwrap().is_some(),
            "{id}"
        );
    }
    // Expiring traces deletes no key; a run goes once none of its traces
    // is left. Run 1 (e0..e3 at T0) and run 3 (e5..e8) go; run 2 keeps
    // e0 at T0 + 5 and a stale key for e4, which lookups skip.
    let dropped = store.expire_traces(T0 + 1, u64::MAX, 100).await.unwrap();
    assert_eq!(dropped, 10, "all but the trace received at T0 + 5");
    trace_ids_settled(&store).await;
    assert_eq!(count(&store, "SELECT COUNT(*) FROM trace_id_keys").await, 2);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM trace_id_runs").await, 1);
    assert!(store.trace("acme", "e3", None).await.unwrap().is_none());
    assert!(store.trace("acme", "e4", None).await.unwrap().is_none());
    assert_eq!(
        store
            .trace("acme", "e0", None)
            .await
            .unwrap()
            .map(|t| t.received_ms),
        Some(T0 + 5)
    );
}

/// Waits until the traces' writer has no maintenance of the merged runs
/// left (it works on them between ops, while idle).
async fn trace_ids_settled(store: &SqliteStore) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.inner.trace_maintenance.is_due() {
        assert!(
            std::time::Instant::now() < deadline,
            "the merged runs' maintenance never finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// The live runs, as (tier, keys), oldest first.
async fn live_runs(store: &SqliteStore) -> Vec<(i64, i64)> {
    store
        .run_traces(|tx| {
            Ok(tx
                .prepare("SELECT tier, keys FROM trace_id_runs WHERE state = 0 ORDER BY run")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?)
        })
        .await
        .unwrap()
}

/// Eight runs of two keys compact into one, a slice of the key space per
/// step, leaving out the keys of traces gone. The new run is not read
/// until complete (lookups keep probing the old runs meanwhile), and a
/// compaction a restart interrupts resumes from its last step. A lookup
/// that knows the receive time probes only the runs whose times hold it.
#[tokio::test]
async fn runs_of_trace_ids_compact_in_steps_across_a_restart_and_every_trace_stays_found() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = Tuning {
        trace_merge_at: 2,
        // No compaction of its own: the test steps one by hand.
        trace_fanout: 1000,
        trace_step_keys: 1,
        ..Tuning::default()
    };
    let ids: Vec<String> = (0..16).map(|i| format!("e{i}")).collect();
    let all_found = |store: SqliteStore| {
        let ids = ids.clone();
        async move {
            assert!(store.trace("acme", "e0", None).await.unwrap().is_none());
            for id in &ids[1..] {
                let found = store.trace("acme", id, None).await.unwrap();
                assert_eq!(found.map(|t| t.event_id).as_ref(), Some(id), "{id}");
            }
        }
    };
    {
        let store = open_tuned_at(dir.path(), tuning);
        for (i, id) in ids.iter().enumerate() {
            let trace = delivered(id, T0 + i as i64);
            store.record_traces(vec![trace].into()).await.unwrap();
        }
        trace_ids_settled(&store).await;
        assert_eq!(live_runs(&store).await, vec![(0, 2); 8]);
        // e0 goes; its run stays (e1 is in it), and keeps e0's key.
        assert_eq!(store.expire_traces(T0 + 1, u64::MAX, 100).await.unwrap(), 1);
        let e3 = super::trace_ids::key("acme", "e3");
        let probe = |at: i64| {
            let store = store.clone();
            async move {
                store
                    .run_traces(move |tx| Ok(super::trace_id_runs::lookup(tx, e3, Some(at))?))
                    .await
                    .unwrap()
            }
        };
        // e3 is in the second run (e2, e3 at T0 + 2, T0 + 3).
        assert_eq!(probe(T0 + 3).await, vec![4]);
        assert_eq!(probe(T0 + 2).await, vec![4]);
        assert!(probe(T0 + 4).await.is_empty(), "the third run not probed");
        let by_hand = super::trace_id_runs::Tiering {
            merge_at: 2,
            fanout: 8,
            step_keys: 1,
        };
        // Start, then five of its sixteen slices.
        for _ in 0..6 {
            let step = store
                .run_traces(move |tx| super::trace_id_runs::maintain(tx, by_hand))
                .await
                .unwrap();
            assert_eq!(step, super::trace_id_runs::Step::Worked);
        }
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM trace_id_runs WHERE state = 1").await,
            1,
            "one run being built"
        );
        assert_eq!(live_runs(&store).await.len(), 8, "the inputs still read");
        all_found(store.clone()).await;
    }
    // Reopened (with the fanout the runs were compacted by), the writer
    // finishes the compaction while idle and deletes the old runs.
    let store = open_tuned_at(
        dir.path(),
        Tuning {
            trace_fanout: 8,
            ..tuning
        },
    );
    trace_ids_settled(&store).await;
    // e0's key is left out; a run's tier follows its size.
    assert_eq!(live_runs(&store).await, vec![(0, 15)]);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM trace_id_runs").await, 1);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM trace_id_keys").await,
        15
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM trace_id_compaction").await,
        0
    );
    all_found(store.clone()).await;
}

/// Version 7 turns the one B-tree of merged ids into run 1, read at every
/// time; what is merged later goes in runs of its own.
#[tokio::test]
async fn merged_trace_ids_of_a_version_6_traces_file_become_the_first_run() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(dir.path().join(TRACES_FILE)).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        for (_, step) in schema::TRACES_STEPS.iter().filter(|(v, _)| *v <= 6) {
            conn.execute_batch(step).unwrap();
        }
        for (id, event) in [(1, "e1"), (2, "e2")] {
            conn.execute(
                "INSERT INTO traces (id, tenant, bus, event_id, received_ms, source, type, state, \
                 size, replay, rules, body, event) VALUES (?1, 'acme', 'orders', ?2, ?3, 'shop', \
                 'order.placed', 'delivered', 2, NULL, '', '{\"routed\":true}', X'7B7D')",
                rusqlite::params![id, event, T0],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO trace_ids (key, trace) VALUES (?1, ?2)",
                rusqlite::params![super::trace_ids::key("acme", event), id],
            )
            .unwrap();
        }
        conn.execute(
            "UPDATE trace_ids_merged SET mark = 2, received_ms = ?1",
            [T0],
        )
        .unwrap();
        conn.pragma_update(None, "user_version", 6).unwrap();
    }
    let tuning = Tuning {
        trace_merge_at: 1,
        ..Tuning::default()
    };
    let store = open_tuned_at(dir.path(), tuning);
    store
        .record_traces(vec![delivered("e3", T0 + 1)].into())
        .await
        .unwrap();
    trace_ids_settled(&store).await;
    assert_eq!(live_runs(&store).await, vec![(0, 2), (0, 1)]);
    for id in ["e1", "e2", "e3"] {
        assert!(
            store.trace("acme", id, None).await.unwrap().is_some(),
            "{id}"
        );
    }
    let e1 = super::trace_ids::key("acme", "e1");
    let probed = store
        .run_traces(move |tx| Ok(super::trace_id_runs::lookup(tx, e1, Some(T0))?))
        .await
        .unwrap();
    assert_eq!(probed, vec![1], "the first run holds every time");
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'trace_ids'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_trace_of_a_log_entry_reads_its_event_from_the_log_which_keeps_it_while_traced() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual();
    let store = open_at(dir.path(), clock.clone());
    let consumer = store.consumer().await.unwrap();
    store
        .append(vec![event("e1"), event("e2"), event("e3")])
        .await
        .unwrap();
    let entries = consumer.next(10, Duration::ZERO).await.unwrap();
    // e2's trace refers to its entry; e1 has no trace, e3's keeps a copy.
    let entry = &entries[1];
    let mut traced = Trace::received(&entry.event);
    traced.position = Some(entry.position);
    let mut copied = Trace::received(&entries[2].event);
    copied.event = Bytes::from_static(br#"{"copy":true}"#);
    store
        .record_traces(vec![traced, copied].into())
        .await
        .unwrap();
    consumer
        .ack(entries.iter().map(|e| e.ack.clone()).collect())
        .await
        .unwrap();
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM traces WHERE length(event) = 0"
        )
        .await,
        1,
        "the trace of e2 keeps no copy"
    );
    let read = |id: &'static str| {
        let store = store.clone();
        async move { store.trace("acme", id, None).await.unwrap().unwrap() }
    };
    assert_eq!(read("e2").await.event, entry.event.body);
    assert_eq!(read("e3").await.event, &br#"{"copy":true}"#[..]);

    // Every entry is routed and old enough; only e2's is still traced.
    let later = clock.now_ms() + 1;
    assert_eq!(store.prune(later).await.unwrap(), 1, "e1 only");
    assert_eq!(read("e2").await.event, entry.event.body);
    assert_eq!(store.expire_traces(later, u64::MAX, 100).await.unwrap(), 2);
    assert_eq!(store.prune(later).await.unwrap(), 2, "e2 and e3");
}

/// One value read from the main file (`count` reads `traces.db`).
async fn main_value<T: rusqlite::types::FromSql + Send + 'static>(
    store: &SqliteStore,
    sql: &'static str,
) -> T {
    store
        .run(move |tx| Ok(tx.query_row(sql, [], |r| r.get(0))?))
        .await
        .expect(sql)
}

/// Hands out the (at most 10) entries waiting and acknowledges them all,
/// as routing would.
async fn route_waiting(consumer: &dyn crate::store::LogConsumer) {
    let entries = consumer.next(10, Duration::ZERO).await.unwrap();
    consumer
        .ack(entries.iter().map(|e| e.ack.clone()).collect())
        .await
        .unwrap();
}

#[tokio::test]
async fn an_archive_row_refers_to_its_log_entry_which_the_log_keeps_until_the_archive_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual();
    let store = open_at(dir.path(), clock.clone());
    let consumer = store.consumer().await.unwrap();
    let archived = |id: &str, archives: &[&str]| NewEvent {
        archives: archives.iter().map(|a| (*a).to_owned()).collect(),
        ..event(id)
    };
    store
        .append(vec![
            archived("e1", &["a"]),
            event("e2"),
            archived("e3", &["a", "b"]),
            event("e4"),
        ])
        .await
        .unwrap();
    assert_eq!(
        main_value::<i64>(
            &store,
            "SELECT COUNT(*) FROM archive_rows \
             WHERE body IS NULL AND tenant IS NULL AND seq IS NOT NULL AND pos = seq"
        )
        .await,
        3,
        "no archive row keeps a copy"
    );
    assert_eq!(
        store.archive_stats("a").await.unwrap().size_bytes,
        2 * event("e1").body.len() as u64,
        "sizes are the events'"
    );
    route_waiting(consumer.as_ref()).await;

    let later = clock.now_ms() + 1;
    assert_eq!(store.prune(later).await.unwrap(), 2, "e2 and e4");
    let kept = "SELECT group_concat(event_id) FROM (SELECT event_id FROM events ORDER BY seq)";
    assert_eq!(
        main_value::<Option<String>>(&store, kept).await.as_deref(),
        Some("e1,e3")
    );
    assert_eq!(
        main_value::<i64>(&store, "SELECT seq FROM cursors WHERE name = 'pruned'").await,
        4,
        "the next prune starts after the last entry"
    );
    assert_eq!(store.prune(later).await.unwrap(), 0);

    // e1 goes with its only archive row; e3 stays for archive b.
    assert_eq!(store.expire_archive("a", later, 10).await.unwrap(), 2);
    assert_eq!(
        main_value::<Option<String>>(&store, kept).await.as_deref(),
        Some("e3")
    );
    let window = crate::store::Window {
        from_ms: T0,
        to_ms: later,
    };
    let rest = store.read_archive("b", window, None, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].event.body, event("e3").body);
    assert_eq!(store.purge_archive("b", 10).await.unwrap(), 1);
    assert_eq!(
        main_value::<Option<String>>(&store, kept).await,
        None,
        "the log is empty"
    );
}

#[tokio::test]
async fn an_archived_entry_above_the_prune_point_goes_with_the_next_prune() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual();
    let store = open_at(dir.path(), clock.clone());
    let mut e1 = event("e1");
    e1.archives = vec!["a".into()];
    store.append(vec![e1]).await.unwrap();
    // The archive lets go before the log is routed or pruned.
    assert_eq!(store.purge_archive("a", 10).await.unwrap(), 1);
    assert_eq!(
        main_value::<i64>(&store, "SELECT COUNT(*) FROM events").await,
        1
    );
    let consumer = store.consumer().await.unwrap();
    let entries = consumer.next(10, Duration::ZERO).await.unwrap();
    assert_eq!(entries.len(), 1, "still routed");
    consumer
        .ack(entries.iter().map(|e| e.ack.clone()).collect())
        .await
        .unwrap();
    assert_eq!(store.prune(clock.now_ms() + 1).await.unwrap(), 1);
    assert_eq!(
        main_value::<i64>(&store, "SELECT COUNT(*) FROM events").await,
        0
    );
}

#[tokio::test]
async fn archive_copies_of_a_version_5_data_dir_read_back_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    // Version 5 kept a copy of each archived event in its archive row.
    write_data_dir_at_version(
        dir.path(),
        5,
        &format!(
            r#"
            INSERT INTO events (tenant, bus, event_id, body, ingested_ms) VALUES
                ('acme', 'orders', 'e1', X'7B7D', {T0}), ('acme', 'orders', 'e2', X'7B7D', {T0});
            INSERT INTO cursors VALUES ('route', 2);
            INSERT INTO archived (archive, ingested_ms, tenant, bus, event_id, body)
                VALUES ('a', {T0}, 'acme', 'orders', 'e1', X'7B22636F7079223A747275657D');
            INSERT INTO archive_stats VALUES ('a', 1, 13);
            "#
        ),
    );
    let store = open_at(dir.path(), manual());
    assert_eq!(
        store.prune(T0 + 1).await.unwrap(),
        2,
        "no entry is archived"
    );
    let window = crate::store::Window {
        from_ms: T0,
        to_ms: T0 + 1,
    };
    let read = store.read_archive("a", window, None, 10).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(&read[0].event.body[..], br#"{"copy":true}"#);
    assert_eq!(store.expire_archive("a", T0 + 1, 10).await.unwrap(), 1);
    assert_eq!(
        store.archive_stats("a").await.unwrap(),
        crate::store::ArchiveStats::default()
    );
}

/// Trace row ids only grow, also once the highest row expired: a row given
/// an expired row's id would lie at or below the merge mark, so no merge
/// would ever index it and a lookup after a reopen would miss it. (This is
/// why `traces` keeps `AUTOINCREMENT`, whose cost session 10 could not
/// measure: 65,000 trace writes a second with and without it.)
#[tokio::test]
async fn a_trace_recorded_after_every_trace_expired_is_found_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = Tuning {
        trace_merge_at: 2,
        ..Tuning::default()
    };
    {
        let store = open_tuned_at(dir.path(), tuning);
        let both = vec![delivered("e1", T0), delivered("e2", T0)];
        store.record_traces(both.into()).await.unwrap();
        assert_eq!(count(&store, "SELECT COUNT(*) FROM trace_id_keys").await, 2);
        let dropped = store.expire_traces(T0 + 1, u64::MAX, 100).await.unwrap();
        assert_eq!(dropped, 2);
        store
            .record_traces(vec![delivered("e3", T0 + 2)].into())
            .await
            .unwrap();
        assert_eq!(count(&store, "SELECT MAX(id) FROM traces").await, 3);
    }
    let store = open_at(dir.path(), manual());
    let found = store.trace("acme", "e3", None).await.unwrap();
    assert_eq!(found.map(|t| t.received_ms), Some(T0 + 2));
}

/// Version 7 keys archive rows by their read order in one B-tree. Rows of
/// version 6 (log positions) and older (copies) keep their ids as
/// positions, so a replay position stored before the step resumes where
/// it stopped; rows written after it sort after them within the same
/// millisecond and never take an old row's key (the new entry's log
/// position, 3, is an old row's id: the shift above every old id keeps
/// them apart).
#[tokio::test]
async fn archive_rows_of_a_version_6_data_dir_keep_their_order_and_replay_positions() {
    let dir = tempfile::tempdir().unwrap();
    write_data_dir_at_version(
        dir.path(),
        6,
        &format!(
            r#"
            INSERT INTO events (tenant, bus, event_id, body, ingested_ms, archive_refs) VALUES
                ('acme', 'orders', 'e1', X'7B7D', {T0}, 1), ('acme', 'orders', 'e2', X'7B7D', {T0}, 1);
            INSERT INTO cursors VALUES ('route', 2);
            INSERT INTO archived (archive, ingested_ms, tenant, bus, event_id, body, seq) VALUES
                ('a', {T0}, 'acme', 'orders', 'e1', X'', 1), ('a', {T0}, 'acme', 'orders', 'e2', X'', 2);
            INSERT INTO archived (id, archive, ingested_ms, tenant, bus, event_id, body)
                VALUES (3, 'a', {T0}, 'acme', 'orders', 'e0', X'7B22636F7079223A747275657D');
            INSERT INTO archived (id, archive, ingested_ms, tenant, bus, event_id, body)
                VALUES (9, 'gone', {T0}, 'acme', 'orders', 'x', X'');
            DELETE FROM archived WHERE id = 9;
            INSERT INTO archive_stats VALUES ('a', 3, 17);
            "#
        ),
    );
    let store = open_at(dir.path(), manual());
    assert_eq!(
        main_value::<i64>(
            &store,
            "SELECT seq FROM cursors WHERE name = 'archive_pos_shift'"
        )
        .await,
        9,
        "above every id the old table handed out"
    );
    let mut e3 = event("e3");
    e3.archives = vec!["a".into()];
    store.append(vec![e3]).await.unwrap();
    let window = crate::store::Window {
        from_ms: T0,
        to_ms: T0 + 1,
    };
    let read = |after: Option<&str>| {
        let (store, after) = (store.clone(), after.map(ArchivePosition::from_stored));
        async move {
            store
                .read_archive("a", window, after.as_ref(), 10)
                .await
                .unwrap()
                .into_iter()
                .map(|a| (a.event.event_id, a.position.as_str().to_owned()))
                .collect::<Vec<_>>()
        }
    };
    let at = |pos: i64| format!("{T0}.{pos}");
    assert_eq!(
        read(None).await,
        [
            ("e1".to_owned(), at(1)),
            ("e2".to_owned(), at(2)),
            ("e0".to_owned(), at(3)),
            ("e3".to_owned(), at(12)),
        ]
    );
    assert_eq!(
        read(Some(&at(1))).await,
        [
            ("e2".to_owned(), at(2)),
            ("e0".to_owned(), at(3)),
            ("e3".to_owned(), at(12)),
        ],
        "a position stored before the step"
    );
    let all = store.read_archive("a", window, None, 10).await.unwrap();
    assert_eq!(&all[2].event.body[..], br#"{"copy":true}"#);
    assert_eq!(all[3].event.body, event("e3").body);
    let stats = store.archive_stats("a").await.unwrap();
    assert_eq!(
        (
            stats.event_count,
            stats.size_bytes,
            stats.oldest_ms,
            stats.newest_ms
        ),
        (4, 17 + event("e3").body.len() as u64, Some(T0), Some(T0))
    );
    assert_eq!(store.expire_archive("a", T0 + 1, 10).await.unwrap(), 4);
    assert_eq!(
        store.archive_stats("a").await.unwrap(),
        crate::store::ArchiveStats::default()
    );
}

/// Every trace `query` finds, as `id:state`, paging `limit` at a time.
async fn search_all(
    store: &SqliteStore,
    query: &crate::store::TraceQuery,
    limit: usize,
) -> Vec<String> {
    let mut found = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = store
            .search_traces("acme", query, after.as_ref(), limit)
            .await
            .unwrap();
        found.extend(
            page.into_iter()
                .map(|t| format!("{}:{}", t.event_id, t.state.as_str())),
        );
        match next {
            Some(n) => after = Some(n),
            None => return found,
        }
    }
}

/// The event [`a_trace_without_rules_is_its_log_entry_alone`] appends.
fn traced_event(id: &str, at: i64, source: &str) -> NewEvent {
    NewEvent {
        body: Bytes::from(format!(
            r#"{{"id":"{id}","source":"{source}","type":"order"}}"#
        )),
        ingested_ms: at,
        traced: true,
        ..event(id)
    }
}

/// A replay mark that reaches a trace which is its log entry alone before
/// routing has recorded it gives the entry a row (unrouted); routing's
/// record of the trace then keeps the mark, and the trace ends routed —
/// `no_match` — instead of staying `in_flight` with the mark's row.
#[tokio::test]
async fn a_replay_mark_ahead_of_routing_is_kept_by_the_routing_record() {
    use crate::store::traces::{ReplayMark, TraceBody};
    use crate::store::{TraceFact, TraceKey, TraceState};
    let dir = tempfile::tempdir().unwrap();
    let store = open_at(dir.path(), manual());
    let consumer = store.consumer().await.unwrap();
    store
        .append(vec![traced_event("n1", T0, "shop")])
        .await
        .unwrap();
    let key = TraceKey {
        tenant: "acme".into(),
        bus: "orders".into(),
        event_id: "n1".into(),
        received_ms: None,
    };
    let mark = ReplayMark {
        replay_id: "rp".into(),
        name: "again".into(),
        at_ms: T0 + 5,
        destination_bus: "orders".into(),
    };
    store
        .add_trace_facts(vec![(key, TraceFact::Replayed(mark.clone()))].into())
        .await
        .unwrap();
    let entries = consumer.next(10, Duration::ZERO).await.unwrap();
    let mut routed = Trace::received(&entries[0].event);
    routed.position = Some(entries[0].position);
    routed.body = TraceBody {
        routed: true,
        rules: Vec::new(),
        replays: Vec::new(),
    };
    routed.state = Trace::derive_state(&routed.body);
    store.record_traces(vec![routed].into()).await.unwrap();
    consumer
        .ack(entries.iter().map(|e| e.ack.clone()).collect())
        .await
        .unwrap();
    let n1 = store.trace("acme", "n1", None).await.unwrap().expect("n1");
    assert_eq!(
        (n1.state, n1.body.routed, n1.body.replays),
        (TraceState::NoMatch, true, vec![mark])
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM entry_traces").await, 1);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM traces").await, 0);
}

/// A retry of `rule`'s target `t` that delivered the event (200).
fn delivered_to_t(rule: &str) -> crate::store::TraceFact {
    use crate::store::traces::{AttemptRecord, TargetState};
    crate::store::TraceFact::Attempt {
        rule: rule.into(),
        target: "t".into(),
        attempt: AttemptRecord {
            at_ms: T0 + 10,
            duration_ms: 1,
            status: Some(200),
            error: None,
        },
        next: TargetState::Delivered,
    }
}

/// The routing record of a log entry that rule `r` matched, its target
/// `t` in `state`.
fn routed_by_rule_r(
    entry: &crate::store::LogEntry,
    state: crate::store::traces::TargetState,
) -> Trace {
    use crate::store::traces::{RuleOutcome, RuleTrace, TraceBody};
    let mut t = Trace::received(&entry.event);
    t.position = Some(entry.position);
    let mut rule = RuleTrace {
        rule: "r".into(),
        outcome: RuleOutcome::Matched,
        filter: None,
        transform: None,
        error: None,
        targets: Vec::new(),
    };
    rule.target_mut("t").state = state;
    t.body = TraceBody {
        routed: true,
        rules: vec![rule],
        replays: Vec::new(),
    };
    t.state = Trace::derive_state(&t.body);
    t
}

/// A trace of a log entry is inserted without a lookup when it cannot
/// have a row yet — but an entry routing had not acknowledged when the
/// file was closed is routed (and recorded) again after the reopen, and
/// its row is replaced, not duplicated: both a traced entry's and one whose
/// head is not in the log (traced after it was accepted). An entry new to
/// the reopened process gets its row as usual.
#[tokio::test]
async fn a_log_entry_routed_again_after_a_restart_replaces_its_trace_row() {
    use crate::store::TraceState;
    use crate::store::traces::TargetState;
    let states = |store: SqliteStore| async move {
        let mut out = Vec::new();
        for id in ["h", "u", "n"] {
            let t = store.trace("acme", id, None).await.unwrap();
            out.push(t.map(|t| t.state));
        }
        out
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_at(dir.path(), manual());
        let consumer = store.consumer().await.unwrap();
        let untraced_head = NewEvent {
            traced: false,
            // Received after the traced one: found by its own time.
            ..traced_event("u", T0 + 1, "shop")
        };
        store
            .append(vec![traced_event("h", T0, "shop"), untraced_head])
            .await
            .unwrap();
        let entries = consumer.next(10, Duration::ZERO).await.unwrap();
        let first: Vec<Trace> = entries
            .iter()
            .map(|e| routed_by_rule_r(e, TargetState::Retrying))
            .collect();
        store.record_traces(first.into()).await.unwrap();
        // Not acknowledged: the bus stops before routing's ack.
        assert_eq!(
            states(store.clone()).await,
            [Some(TraceState::Retrying), Some(TraceState::Retrying), None]
        );
    }
    let store = open_at(dir.path(), manual());
    let consumer = store.consumer().await.unwrap();
    store
        .append(vec![traced_event("n", T0 + 2, "shop")])
        .await
        .unwrap();
    let entries = consumer.next(10, Duration::ZERO).await.unwrap();
    assert_eq!(entries.len(), 3, "the unacknowledged entries come again");
    let again: Vec<Trace> = entries
        .iter()
        .map(|e| routed_by_rule_r(e, TargetState::Delivered))
        .collect();
    store.record_traces(again.into()).await.unwrap();
    // h and n are their entries' traces, u (its head not in the log) a row.
    assert_eq!(count(&store, "SELECT COUNT(*) FROM entry_traces").await, 2);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM traces").await, 1);
    assert_eq!(
        states(store.clone()).await,
        [Some(TraceState::Delivered); 3]
    );
}

/// A log entry's trace recorded twice by one process (no restart, no
/// replay mark to say a row may exist) replaces its `entry_traces` row:
/// the insert that takes no lookup finds the row there and falls back to
/// the replace, instead of failing the batch (and dropping its traces).
#[tokio::test]
async fn a_trace_recorded_twice_by_one_process_replaces_its_row() {
    use crate::store::TraceState;
    use crate::store::traces::TargetState;
    let dir = tempfile::tempdir().unwrap();
    let store = open_at(dir.path(), manual());
    let consumer = store.consumer().await.unwrap();
    store
        .append(vec![
            traced_event("m", T0, "shop"),
            traced_event("o", T0 + 1, "shop"),
        ])
        .await
        .unwrap();
    let entries = consumer.next(10, Duration::ZERO).await.unwrap();
    store
        .record_traces(vec![routed_by_rule_r(&entries[0], TargetState::Retrying)].into())
        .await
        .unwrap();
    // Again, in one batch with a trace recorded for the first time.
    store
        .record_traces(
            vec![
                routed_by_rule_r(&entries[0], TargetState::Delivered),
                routed_by_rule_r(&entries[1], TargetState::Delivered),
            ]
            .into(),
        )
        .await
        .unwrap();
    for id in ["m", "o"] {
        let t = store.trace("acme", id, None).await.unwrap().expect(id);
        assert_eq!(t.state, TraceState::Delivered, "{id}");
    }
    assert_eq!(count(&store, "SELECT COUNT(*) FROM entry_traces").await, 2);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM trace_rules").await, 2);
}

/// A matched event's row is found through its log entry (`entry_traces`):
/// the row gets no id of its own among the recent ids or in a merged run
/// — the entry's is the only one — and lookups, facts and a reopen (which
/// merges) still reach it.
#[tokio::test]
async fn a_matched_events_row_is_found_through_its_log_entry() {
    use crate::store::traces::TargetState;
    use crate::store::{TraceKey, TraceState};
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_at(dir.path(), manual());
        let consumer = store.consumer().await.unwrap();
        store
            .append(vec![traced_event("m", T0, "shop")])
            .await
            .unwrap();
        let entries = consumer.next(10, Duration::ZERO).await.unwrap();
        let t = routed_by_rule_r(&entries[0], TargetState::Retrying);
        store.record_traces(vec![t].into()).await.unwrap();
        assert_eq!(count(&store, "SELECT COUNT(*) FROM entry_traces").await, 1);
        assert_eq!(count(&store, "SELECT COUNT(*) FROM traces").await, 0);
        assert_eq!(
            store
                .inner
                .recent_traces
                .rows(super::trace_ids::key("acme", "m"), None),
            vec![-entries[0].position],
            "the entry's id alone"
        );
        let key = TraceKey {
            tenant: "acme".into(),
            bus: "orders".into(),
            event_id: "m".into(),
            received_ms: Some(T0),
        };
        store
            .add_trace_facts(vec![(key, delivered_to_t("r"))].into())
            .await
            .unwrap();
        let m = store.trace("acme", "m", None).await.unwrap().expect("m");
        assert_eq!(m.state, TraceState::Delivered);
        assert_eq!(m.body.rules[0].targets[0].attempts.len(), 1);
        consumer
            .ack(entries.iter().map(|e| e.ack.clone()).collect())
            .await
            .unwrap();
    }
    let store = open_at(dir.path(), manual());
    assert_eq!(
        count(&store, "SELECT SUM(keys) FROM trace_id_runs").await,
        1,
        "the merge at open wrote the entry's key alone"
    );
    let m = store.trace("acme", "m", None).await.unwrap().expect("m");
    assert_eq!(
        (m.state, m.body.rules[0].targets[0].attempts.len()),
        (TraceState::Delivered, 1)
    );
}

/// What [`a_trace_without_rules_is_its_log_entry_alone`] expects once
/// its events are routed, before and after a restart.
async fn check_log_only_traces(store: &SqliteStore) {
    use crate::store::{TraceQuery, TraceState};
    let n1 = store.trace("acme", "n1", None).await.unwrap().expect("n1");
    assert_eq!(
        (n1.state, n1.source.as_str(), n1.event_type.as_str()),
        (TraceState::NoMatch, "shop", "order")
    );
    assert!(n1.body.routed && n1.body.rules.is_empty());
    assert_eq!(n1.event, traced_event("n1", T0, "shop").body);
    assert!(
        store.trace("acme", "u", None).await.unwrap().is_none(),
        "untraced"
    );
    assert_eq!(
        store
            .trace("acme", "m", None)
            .await
            .unwrap()
            .map(|t| t.state),
        Some(TraceState::Delivered)
    );
    let all = TraceQuery::default;
    for limit in [1, 2, 10] {
        assert_eq!(
            search_all(store, &all(), limit).await,
            ["x:no_match", "n2:no_match", "m:delivered", "n1:no_match"],
            "pages of {limit}"
        );
    }
    let shop = TraceQuery {
        source: Some("shop".into()),
        ..all()
    };
    assert_eq!(
        search_all(store, &shop, 1).await,
        ["x:no_match", "m:delivered", "n1:no_match"]
    );
    let unmatched = TraceQuery {
        state: Some(TraceState::NoMatch),
        bus: Some("orders".into()),
        ..all()
    };
    assert_eq!(
        search_all(store, &unmatched, 2).await,
        ["x:no_match", "n2:no_match", "n1:no_match"]
    );
    let window = TraceQuery {
        from_ms: Some(T0 + 1),
        to_ms: Some(T0 + 3),
        event_type: Some("order".into()),
        ..all()
    };
    assert_eq!(
        search_all(store, &window, 10).await,
        ["n2:no_match", "m:delivered"]
    );
    let by_rule = TraceQuery {
        rule: Some("r".into()),
        ..all()
    };
    assert_eq!(search_all(store, &by_rule, 10).await, ["m:delivered"]);
    let in_flight = TraceQuery {
        state: Some(TraceState::InFlight),
        ..all()
    };
    assert!(
        search_all(store, &in_flight, 10).await.is_empty(),
        "routed: nothing is in flight"
    );
}

/// A trace that matched no rule is its log entry alone (issue 10, the cost
/// of tracing): recording it writes no row, and lookups and searches read
/// the entry — `in_flight` until routed, then `no_match` — in one order
/// with trace rows (an entry's own, and rows without an entry), before and
/// after the ids merge and a restart. A replay mark gives it a row; the
/// retention sweep ends it, and only then does the prune take the entry.
#[tokio::test]
async fn a_trace_without_rules_is_its_log_entry_alone() {
    use crate::store::traces::{
        ReplayMark, RuleOutcome, RuleTrace, TargetState, TargetTrace, TraceBody,
    };
    use crate::store::{TraceFact, TraceKey, TraceQuery, TraceState};
    let dir = tempfile::tempdir().unwrap();
    let tuning = Tuning {
        trace_merge_at: 2,
        ..Tuning::default()
    };
    let store = open_tuned_at(dir.path(), tuning);
    let consumer = store.consumer().await.unwrap();
    store
        .append(vec![
            traced_event("n1", T0, "shop"),
            traced_event("m", T0 + 1, "shop"),
            event("u"),
            traced_event("n2", T0 + 2, "crm"),
        ])
        .await
        .unwrap();
    let all = TraceQuery::default;
    assert_eq!(
        search_all(&store, &all(), 10).await,
        ["n2:in_flight", "m:in_flight", "n1:in_flight"],
        "appended, not routed"
    );
    let in_flight = || TraceQuery {
        state: Some(TraceState::InFlight),
        ..TraceQuery::default()
    };
    for page in [1, 2, 10] {
        assert_eq!(
            search_all(&store, &in_flight(), page).await,
            ["n2:in_flight", "m:in_flight", "n1:in_flight"],
            "a search for traces in flight finds entries not routed yet (pages of {page})"
        );
    }
    assert_eq!(
        search_all(
            &store,
            &TraceQuery {
                bus: Some("orders".into()),
                source: Some("shop".into()),
                ..in_flight()
            },
            10
        )
        .await,
        ["m:in_flight", "n1:in_flight"]
    );

    // Routed: n1 and n2 matched nothing, m matched a rule; x is a trace
    // without a log entry.
    let entries = consumer.next(10, Duration::ZERO).await.unwrap();
    let routed = |i: usize, rules: Vec<RuleTrace>| {
        let mut t = Trace::received(&entries[i].event);
        t.position = Some(entries[i].position);
        t.body = TraceBody {
            routed: true,
            rules,
            replays: Vec::new(),
        };
        t.state = Trace::derive_state(&t.body);
        t
    };
    let rule = RuleTrace {
        rule: "r".into(),
        outcome: RuleOutcome::Matched,
        filter: None,
        transform: None,
        error: None,
        targets: vec![TargetTrace {
            state: TargetState::Delivered,
            ..TargetTrace::new("hook")
        }],
    };
    assert!(routed(0, Vec::new()).head_in_log);
    assert!(!routed(2, Vec::new()).head_in_log);
    let mut x = delivered("x", T0 + 3);
    x.source = "shop".into();
    x.event_type = "order".into();
    store
        .record_traces(
            vec![
                routed(0, Vec::new()),
                routed(1, vec![rule]),
                routed(3, Vec::new()),
                x,
            ]
            .into(),
        )
        .await
        .unwrap();
    consumer
        .ack(entries.iter().map(|e| e.ack.clone()).collect())
        .await
        .unwrap();
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM entry_traces").await,
        1,
        "m, its entry's trace"
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM traces").await,
        1,
        "x, without an entry"
    );
    check_log_only_traces(&store).await;
    drop(consumer);
    drop(store);
    let store = open_tuned_at(dir.path(), tuning);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM trace_id_keys WHERE trace < 0").await,
        3,
        "the log's ids are merged"
    );
    check_log_only_traces(&store).await;

    // A replay mark gives n1 a row.
    let mark = ReplayMark {
        replay_id: "rp".into(),
        name: "again".into(),
        at_ms: T0 + 5,
        destination_bus: "orders".into(),
    };
    let key = TraceKey {
        tenant: "acme".into(),
        bus: "orders".into(),
        event_id: "n1".into(),
        received_ms: None,
    };
    store
        .add_trace_facts(vec![(key, TraceFact::Replayed(mark))].into())
        .await
        .unwrap();
    assert_eq!(count(&store, "SELECT COUNT(*) FROM entry_traces").await, 2);
    let n1 = store.trace("acme", "n1", None).await.unwrap().expect("n1");
    assert_eq!((n1.body.replays.len(), n1.state), (1, TraceState::NoMatch));
    assert_eq!(n1.event, traced_event("n1", T0, "shop").body);
    check_log_only_traces(&store).await;

    // No traced entry is pruned while it is a trace (u, untraced, goes);
    // the sweep ends the traces received before T0 + 3 (entries n1, m and
    // n2, with the `entry_traces` rows of n1 and m), and then the prune
    // takes their entries.
    assert_eq!(store.prune(T0 + 10).await.unwrap(), 1, "u");
    assert_eq!(store.expire_traces(T0 + 3, u64::MAX, 100).await.unwrap(), 3);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM entry_traces").await, 0);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM trace_rules WHERE trace < 0").await,
        0,
        "m's rule row went with it"
    );
    assert!(store.trace("acme", "n2", None).await.unwrap().is_none());
    assert_eq!(search_all(&store, &all(), 10).await, ["x:no_match"]);
    trace_ids_settled(&store).await;
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM trace_id_keys WHERE trace < 0").await,
        0
    );
    assert_eq!(store.prune(T0 + 10).await.unwrap(), 3, "n1, m, n2");
}

/// The prune takes an untraced entry as soon as it is routed and old, and
/// a traced one only once the retention sweep has ended its trace — also
/// when the prune has already passed it.
#[tokio::test]
async fn the_prune_keeps_a_traced_entry_until_its_trace_expires() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_at(dir.path(), manual());
    let consumer = store.consumer().await.unwrap();
    store
        .append(vec![traced_event("t1", T0, "shop"), event("u1")])
        .await
        .unwrap();
    let entries = consumer.next(10, Duration::ZERO).await.unwrap();
    let mut t1 = Trace::received(&entries[0].event);
    t1.position = Some(entries[0].position);
    t1.body.routed = true;
    store.record_traces(vec![t1].into()).await.unwrap();
    consumer
        .ack(entries.iter().map(|e| e.ack.clone()).collect())
        .await
        .unwrap();
    assert_eq!(count(&store, "SELECT COUNT(*) FROM traces").await, 0);
    assert_eq!(store.prune(T0 + 10).await.unwrap(), 1, "u1");
    assert!(store.trace("acme", "t1", None).await.unwrap().is_some());
    assert_eq!(store.expire_traces(T0 + 1, u64::MAX, 100).await.unwrap(), 1);
    assert!(store.trace("acme", "t1", None).await.unwrap().is_none());
    assert_eq!(store.prune(T0 + 10).await.unwrap(), 1, "t1");
    assert_eq!(
        main_value::<i64>(&store, "SELECT COUNT(*) FROM events").await,
        0
    );
}

#[tokio::test]
async fn an_archive_of_a_whole_bus_is_a_range_of_the_log_not_rows() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual();
    let store = open_at(dir.path(), clock.clone());
    let whole = |bus: &str, id: &str, traced: bool| NewEvent {
        bus: bus.into(),
        bus_archives: vec![format!("{bus}-all")],
        traced,
        ..event(id)
    };
    store
        .append(vec![
            whole("orders", "e1", true),
            whole("orders", "e2", false),
            // Archived, never traced.
            whole("audit", "a1", false),
            whole("audit", "a2", false),
        ])
        .await
        .unwrap();
    assert_eq!(
        main_value::<i64>(&store, "SELECT COUNT(*) FROM archive_rows").await,
        0,
        "no archive row"
    );
    assert_eq!(
        main_value::<String>(
            &store,
            "SELECT group_concat(archive || ':' || first_seq) FROM \
             (SELECT archive, first_seq FROM log_archives ORDER BY archive)"
        )
        .await,
        "audit-all:3,orders-all:1"
    );
    assert_eq!(
        main_value::<String>(
            &store,
            "SELECT group_concat(event_id || ':' || archive_refs || ':' || whole) \
             FROM (SELECT * FROM events ORDER BY seq)"
        )
        .await,
        "e1:1:1,e2:1:1,a1:1:1,a2:1:1"
    );
    // Trace search sees the traced entry alone; the archived-only bus is
    // none of its business.
    let (found, _) = store
        .search_traces("acme", &crate::store::TraceQuery::default(), None, 10)
        .await
        .unwrap();
    let ids: Vec<&str> = found.iter().map(|t| t.event_id.as_str()).collect();
    assert_eq!(ids, ["e1"]);
    let audit = crate::store::TraceQuery {
        bus: Some("audit".into()),
        ..Default::default()
    };
    let (found, _) = store.search_traces("acme", &audit, None, 10).await.unwrap();
    assert!(found.is_empty());

    // Routed and pruned, the entries stay while their range holds them.
    let consumer = store.consumer().await.unwrap();
    route_waiting(consumer.as_ref()).await;
    let later = clock.now_ms() + 1;
    store.prune(later).await.unwrap();
    assert_eq!(
        main_value::<i64>(&store, "SELECT COUNT(*) FROM events").await,
        4
    );
    assert_eq!(
        store.expire_archive("audit-all", later, 10).await.unwrap(),
        2
    );
    assert_eq!(
        main_value::<String>(
            &store,
            "SELECT group_concat(event_id) FROM (SELECT event_id FROM events ORDER BY seq)"
        )
        .await,
        "e1,e2",
        "the audit entries went with their range"
    );
    // The range starts after what it let go.
    assert_eq!(
        main_value::<i64>(
            &store,
            "SELECT from_seq FROM log_archives WHERE archive = 'audit-all'"
        )
        .await,
        4
    );
    assert_eq!(store.purge_archive("orders-all", 10).await.unwrap(), 2);
    assert_eq!(
        main_value::<i64>(&store, "SELECT COUNT(*) FROM log_archives").await,
        1,
        "a purged range is gone"
    );
}
