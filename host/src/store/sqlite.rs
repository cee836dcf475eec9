//! SQLite backend: one file in WAL mode, one writer thread with group commit.
//!
//! Every operation is a closure run on the writer thread. The thread takes
//! whatever operations are waiting, runs each inside its own savepoint of one
//! transaction, commits once, and only then answers the callers. Concurrent
//! requests therefore share one commit (and one sync), and a caller never sees
//! success for data that is not committed.
//!
//! Durability: `synchronous=NORMAL` in WAL mode means a commit is in the OS
//! before it is acknowledged, so a killed process (`kill -9`) loses nothing;
//! `Durability::Always` (`synchronous=FULL`) also syncs the WAL on every commit,
//! surviving power loss.

use super::*;
use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

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

/// Most operations one commit may carry; bounds commit latency under load.
const MAX_OPS_PER_COMMIT: usize = 2048;
/// Recently committed events kept in memory so routing rarely reads the file.
const RECENT_EVENTS: usize = 32 * 1024;

type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
type Op = Box<dyn FnOnce(&Transaction<'_>) -> (bool, Completion) + Send>;

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    ops: mpsc::Sender<Op>,
    tail: Arc<Tail>,
}

/// The newest committed events, so the router reads them from memory.
struct Tail {
    ring: Mutex<VecDeque<LoggedEvent>>,
    committed: watch::Sender<Seq>,
}

impl Tail {
    fn publish(&self, events: &[LoggedEvent]) {
        let Some(last) = events.last() else { return };
        if let Ok(mut ring) = self.ring.lock() {
            for e in events {
                if ring.len() == RECENT_EVENTS {
                    ring.pop_front();
                }
                ring.push_back(e.clone());
            }
        }
        self.committed.send_replace(last.seq);
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/busbar.db` and starts the writer thread.
    pub fn open(dir: &Path, durability: Durability) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("busbar.db");
        let conn =
            Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let sync = match durability {
            Durability::Normal => "NORMAL",
            Durability::Always => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA foreign_keys=OFF;
             PRAGMA busy_timeout=5000; PRAGMA cache_size=-65536; PRAGMA temp_store=MEMORY;"
        ))?;
        conn.execute_batch(SCHEMA).context("creating schema")?;
        let last: Seq =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
        let last = last.max(
            conn.query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name='events'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0),
        );
        let (committed, _) = watch::channel(last);
        let tail = Arc::new(Tail {
            ring: Mutex::new(VecDeque::with_capacity(RECENT_EVENTS)),
            committed,
        });
        let (ops, rx) = mpsc::channel::<Op>(8192);
        std::thread::Builder::new()
            .name("busbar-store-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .context("starting the store writer")?;
        Ok(Self { ops, tail })
    }

    /// Runs `f` inside the next group commit and returns its result once committed.
    async fn run<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> anyhow::Result<R> + Send + 'static,
    {
        self.run_hooked(f, |_| {}).await
    }

    /// Like [`Self::run`], and calls `on_commit` on the writer thread right after
    /// a successful commit, in commit order (used to publish appended events).
    async fn run_hooked<R, F, H>(&self, f: F, on_commit: H) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> anyhow::Result<R> + Send + 'static,
        H: FnOnce(&R) + Send + 'static,
    {
        let (reply, rx) = oneshot::channel::<StoreResult<R>>();
        let op: Op = Box::new(move |tx| {
            let result = f(tx);
            let ok = result.is_ok();
            let completion: Completion = Box::new(move |commit| {
                let answer = match (commit, result) {
                    (Ok(()), Ok(r)) => {
                        on_commit(&r);
                        Ok(r)
                    }
                    (Ok(()), Err(e)) => Err(classify(e)),
                    (Err(e), _) => Err(StoreError::Backend(anyhow::anyhow!("commit failed: {e}"))),
                };
                let _ = reply.send(answer);
            });
            (ok, completion)
        });
        self.ops.send(op).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
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

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Op>) {
    let mut batch: Vec<Op> = Vec::with_capacity(MAX_OPS_PER_COMMIT);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_OPS_PER_COMMIT {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut completions = Vec::with_capacity(batch.len());
        let outcome = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // One savepoint per op, so a failed op rolls back alone. The
            // statements are cached: parsing them per op showed up in profiles.
            for op in batch.drain(..) {
                tx.prepare_cached("SAVEPOINT op")?.execute([])?;
                let (ok, completion) = op(&tx);
                if !ok {
                    tx.prepare_cached("ROLLBACK TO op")?.execute([])?;
                }
                tx.prepare_cached("RELEASE op")?.execute([])?;
                completions.push(completion);
            }
            tx.commit()
        })();
        let result = outcome.map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, "store commit failed");
        }
        for completion in completions {
            completion(result.clone());
        }
        // Ops that completed before a failed commit got their error above;
        // anything left over (a failure before all ops ran) is dropped, which
        // its caller sees as `Closed`.
        batch.clear();
    }
}

const SCHEMA: &str = r#"
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

fn random_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let code: Option<String> = r.get(11)?;
    let last_error = match code {
        Some(code) => Some(AttemptError {
            code,
            message: r.get::<_, Option<String>>(12)?.unwrap_or_default(),
            status: r.get::<_, Option<u16>>(13)?,
        }),
        None => None,
    };
    Ok(Job {
        id: r.get(0)?,
        job: NewJob {
            tenant: r.get(1)?,
            bus: r.get(2)?,
            rule: r.get(3)?,
            target: r.get(4)?,
            event_id: r.get(5)?,
            event: Bytes::from(r.get::<_, Vec<u8>>(6)?),
            body: r.get(7)?,
            attempts: r.get(8)?,
            ingested_ms: r.get(9)?,
            due_ms: r.get(10)?,
            last_error,
        },
    })
}

const JOB_COLUMNS: &str = "id, tenant, bus, rule, target, event_id, event, body, attempts, ingested_ms, due_ms, \
                           error_code, error_message, last_status";

fn row_to_dead_letter(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: r.get(0)?,
        tenant: r.get(1)?,
        bus: r.get(2)?,
        rule: r.get(3)?,
        target: r.get(4)?,
        event_id: r.get(5)?,
        event: Bytes::from(r.get::<_, Vec<u8>>(6)?),
        body: r.get(7)?,
        error_code: r.get(8)?,
        error_message: r.get(9)?,
        attempts: r.get(10)?,
        last_status: r.get(11)?,
        exhausted: r.get(12)?,
        ingested_ms: r.get(13)?,
        created_ms: r.get(14)?,
    })
}

const DEAD_LETTER_COLUMNS: &str = "id, tenant, bus, rule, target, event_id, event, body, error_code, error_message, \
                                   attempts, last_status, exhausted, ingested_ms, created_ms";

/// Builds `AND col = ?` clauses for a dead-letter filter.
fn filter_sql(filter: &DeadLetterFilter, args: &mut Vec<rusqlite::types::Value>) -> String {
    let mut sql = String::new();
    for (col, value) in [
        ("bus", &filter.bus),
        ("rule", &filter.rule),
        ("target", &filter.target),
    ] {
        if let Some(v) = value {
            sql.push_str(&format!(" AND {col} = ?"));
            args.push(rusqlite::types::Value::Text(v.clone()));
        }
    }
    sql
}

fn insert_job(tx: &Transaction<'_>, j: &NewJob) -> rusqlite::Result<()> {
    let (code, message, status) = match &j.last_error {
        Some(e) => (Some(e.code.as_str()), Some(e.message.as_str()), e.status),
        None => (None, None, None),
    };
    tx.prepare_cached(
        "INSERT INTO jobs (tenant, bus, rule, target, event_id, event, body, attempts, ingested_ms, due_ms, \
         error_code, error_message, last_status) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
    )?
    .execute(params![
        j.tenant,
        j.bus,
        j.rule,
        j.target,
        j.event_id,
        &j.event[..],
        j.body,
        j.attempts,
        j.ingested_ms,
        j.due_ms,
        code,
        message,
        status
    ])?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn load_catalog(&self) -> StoreResult<CatalogSnapshot> {
        self.run(|tx| {
            let tenants = tx
                .prepare("SELECT name, created_ms FROM tenants ORDER BY name")?
                .query_map([], |r| {
                    Ok(TenantRecord {
                        name: r.get(0)?,
                        created_ms: r.get(1)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let keys = tx
                .prepare(
                    "SELECT id, tenant, hash, created_ms FROM api_keys WHERE revoked_ms IS NULL",
                )?
                .query_map([], |r| {
                    Ok(KeyRecord {
                        id: r.get(0)?,
                        tenant: r.get(1)?,
                        hash: r.get(2)?,
                        created_ms: r.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut resources = Vec::new();
            let mut stmt = tx.prepare(
                "SELECT tenant, kind, name, spec, updated_ms FROM resources ORDER BY kind, name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?;
            for row in rows {
                let (tenant, kind, name, spec, updated_ms) = row?;
                let kind = ResourceKind::parse(&kind)
                    .with_context(|| format!("unknown resource kind {kind}"))?;
                let spec = serde_json::from_str(&spec)
                    .with_context(|| format!("resource {name} has bad JSON"))?;
                resources.push(Resource {
                    tenant,
                    kind,
                    name,
                    spec,
                    updated_ms,
                });
            }
            Ok(CatalogSnapshot {
                tenants,
                keys,
                resources,
            })
        })
        .await
    }

    async fn create_tenant(&self, tenant: TenantRecord) -> StoreResult<()> {
        let name = tenant.name.clone();
        self.run(move |tx| {
            tx.execute(
                "INSERT INTO tenants (name, created_ms) VALUES (?, ?)",
                params![tenant.name, tenant.created_ms],
            )?;
            Ok(())
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => StoreError::Conflict(format!("tenant {name}")),
            other => other,
        })
    }

    async fn put_key(&self, key: KeyRecord) -> StoreResult<()> {
        self.run(move |tx| {
            tx.execute(
                "INSERT INTO api_keys (id, tenant, hash, created_ms) VALUES (?, ?, ?, ?)",
                params![key.id, key.tenant, key.hash, key.created_ms],
            )?;
            Ok(())
        })
        .await
    }

    async fn revoke_key(&self, tenant: &str, key_id: &str) -> StoreResult<bool> {
        let (tenant, key_id) = (tenant.to_owned(), key_id.to_owned());
        self.run(move |tx| {
            let n = tx.execute(
                "UPDATE api_keys SET revoked_ms = ? WHERE tenant = ? AND id = ? AND revoked_ms IS NULL",
                params![crate::clock::now_ms(), tenant, key_id],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_resource(&self, r: Resource) -> StoreResult<()> {
        self.run(move |tx| {
            tx.execute(
                "INSERT INTO resources (tenant, kind, name, spec, updated_ms) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (tenant, kind, name) DO UPDATE SET spec = excluded.spec, updated_ms = excluded.updated_ms",
                params![r.tenant, r.kind.as_str(), r.name, r.spec.to_string(), r.updated_ms],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_resource(
        &self,
        tenant: &str,
        kind: ResourceKind,
        name: &str,
    ) -> StoreResult<bool> {
        let (tenant, name) = (tenant.to_owned(), name.to_owned());
        self.run(move |tx| {
            let n = tx.execute(
                "DELETE FROM resources WHERE tenant = ? AND kind = ? AND name = ?",
                params![tenant, kind.as_str(), name],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        let key = key.to_owned();
        self.run(move |tx| {
            Ok(tx
                .query_row("SELECT value FROM settings WHERE key = ?", [key], |r| {
                    r.get(0)
                })
                .optional()?)
        })
        .await
    }

    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.run(move |tx| {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?;
            Ok(())
        })
        .await
    }

    async fn append(&self, events: Vec<NewEvent>) -> StoreResult<Vec<Seq>> {
        let tail = self.tail.clone();
        let logged = self
            .run_hooked(
                move |tx| {
                    let mut stmt = tx.prepare_cached(
                        "INSERT INTO events (tenant, bus, event_id, body, ingested_ms) VALUES (?, ?, ?, ?, ?)",
                    )?;
                    let mut logged = Vec::with_capacity(events.len());
                    for e in events {
                        stmt.execute(params![e.tenant, e.bus, e.event_id, &e.body[..], e.ingested_ms])?;
                        logged.push(LoggedEvent {
                            seq: tx.last_insert_rowid(),
                            tenant: e.tenant,
                            bus: e.bus,
                            event_id: e.event_id,
                            body: e.body,
                            ingested_ms: e.ingested_ms,
                        });
                    }
                    Ok(logged)
                },
                move |logged: &Vec<LoggedEvent>| tail.publish(logged),
            )
            .await?;
        Ok(logged.iter().map(|e| e.seq).collect())
    }

    async fn read_log(&self, after: Seq, limit: usize) -> StoreResult<Vec<LoggedEvent>> {
        if let Ok(ring) = self.tail.ring.lock()
            && let Some(front) = ring.front()
            && front.seq <= after + 1
        {
            let skip = ring.partition_point(|e| e.seq <= after);
            return Ok(ring.iter().skip(skip).take(limit).cloned().collect());
        }
        self.run(move |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT seq, tenant, bus, event_id, body, ingested_ms FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            )?;
            let rows = stmt.query_map(params![after, limit as i64], |r| {
                Ok(LoggedEvent {
                    seq: r.get(0)?,
                    tenant: r.get(1)?,
                    bus: r.get(2)?,
                    event_id: r.get(3)?,
                    body: Bytes::from(r.get::<_, Vec<u8>>(4)?),
                    ingested_ms: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    fn committed(&self) -> watch::Receiver<Seq> {
        self.tail.committed.subscribe()
    }

    async fn route_cursor(&self) -> StoreResult<Seq> {
        self.run(|tx| {
            Ok(tx
                .query_row("SELECT seq FROM cursors WHERE name = 'route'", [], |r| {
                    r.get(0)
                })
                .optional()?
                .unwrap_or(0))
        })
        .await
    }

    async fn set_route_cursor(&self, seq: Seq) -> StoreResult<()> {
        self.run(move |tx| {
            tx.prepare_cached(
                "INSERT INTO cursors (name, seq) VALUES ('route', ?) ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
            )?
            .execute([seq])?;
            Ok(())
        })
        .await
    }

    async fn prune_log(&self, before: Millis) -> StoreResult<u64> {
        self.run(move |tx| {
            let cursor: Seq = tx
                .query_row("SELECT seq FROM cursors WHERE name = 'route'", [], |r| {
                    r.get(0)
                })
                .optional()?
                .unwrap_or(0);
            let n = tx.execute(
                "DELETE FROM events WHERE seq <= ? AND ingested_ms < ?",
                params![cursor, before],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn enqueue_jobs(&self, jobs: Vec<NewJob>) -> StoreResult<()> {
        self.run(move |tx| {
            for j in &jobs {
                insert_job(tx, j)?;
            }
            Ok(())
        })
        .await
    }

    async fn lease_due(
        &self,
        now: Millis,
        lease_ms: Millis,
        limit: usize,
    ) -> StoreResult<Vec<Job>> {
        self.run(move |tx| {
            let jobs = tx
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE due_ms <= ?1 AND lease_until <= ?1 ORDER BY due_ms LIMIT ?2"
                ))?
                .query_map(params![now, limit as i64], row_to_job)?
                .collect::<Result<Vec<_>, _>>()?;
            let mut lease = tx.prepare_cached("UPDATE jobs SET lease_until = ? WHERE id = ?")?;
            for j in &jobs {
                lease.execute(params![now + lease_ms, j.id])?;
            }
            Ok(jobs)
        })
        .await
    }

    async fn ack_job(&self, id: i64) -> StoreResult<()> {
        self.run(move |tx| {
            tx.prepare_cached("DELETE FROM jobs WHERE id = ?")?
                .execute([id])?;
            Ok(())
        })
        .await
    }

    async fn retry_job(
        &self,
        id: i64,
        due: Millis,
        attempts: u32,
        error: AttemptError,
    ) -> StoreResult<()> {
        self.run(move |tx| {
            tx.prepare_cached(
                "UPDATE jobs SET due_ms = ?, lease_until = 0, attempts = ?, error_code = ?, error_message = ?, \
                 last_status = ? WHERE id = ?",
            )?
            .execute(params![due, attempts, error.code, error.message, error.status, id])?;
            Ok(())
        })
        .await
    }

    async fn dead_letter(
        &self,
        id: Option<i64>,
        job: NewJob,
        exhausted: &str,
        now: Millis,
    ) -> StoreResult<i64> {
        let exhausted = exhausted.to_owned();
        self.run(move |tx| {
            if let Some(id) = id {
                tx.prepare_cached("DELETE FROM jobs WHERE id = ?")?.execute([id])?;
            }
            let err = job.last_error.clone().unwrap_or_default();
            tx.prepare_cached(
                "INSERT INTO dead_letters (tenant, bus, rule, target, event_id, event, body, error_code, error_message, \
                 attempts, last_status, exhausted, ingested_ms, created_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            )?
            .execute(params![
                job.tenant,
                job.bus,
                job.rule,
                job.target,
                job.event_id,
                &job.event[..],
                job.body,
                err.code,
                err.message,
                job.attempts,
                err.status,
                exhausted,
                job.ingested_ms,
                now
            ])?;
            Ok(tx.last_insert_rowid())
        })
        .await
    }

    async fn next_due(&self) -> StoreResult<Option<Millis>> {
        self.run(|tx| {
            Ok(
                tx.query_row("SELECT MIN(MAX(due_ms, lease_until)) FROM jobs", [], |r| {
                    r.get::<_, Option<i64>>(0)
                })?,
            )
        })
        .await
    }

    async fn list_dead_letters(
        &self,
        tenant: &str,
        filter: &DeadLetterFilter,
        before: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetter>> {
        let mut args = vec![rusqlite::types::Value::Text(tenant.to_owned())];
        let mut sql = format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE tenant = ?");
        sql.push_str(&filter_sql(filter, &mut args));
        if let Some(before) = before {
            sql.push_str(" AND id < ?");
            args.push(rusqlite::types::Value::Integer(before));
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        args.push(rusqlite::types::Value::Integer(limit as i64));
        self.run(move |tx| {
            Ok(tx
                .prepare(&sql)?
                .query_map(rusqlite::params_from_iter(args), row_to_dead_letter)?
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn dead_letter_entry(&self, tenant: &str, id: i64) -> StoreResult<Option<DeadLetter>> {
        let tenant = tenant.to_owned();
        self.run(move |tx| {
            Ok(tx
                .query_row(
                    &format!(
                        "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE tenant = ? AND id = ?"
                    ),
                    params![tenant, id],
                    row_to_dead_letter,
                )
                .optional()?)
        })
        .await
    }

    async fn delete_dead_letter(&self, tenant: &str, id: i64) -> StoreResult<bool> {
        let tenant = tenant.to_owned();
        self.run(move |tx| {
            Ok(tx.execute(
                "DELETE FROM dead_letters WHERE tenant = ? AND id = ?",
                params![tenant, id],
            )? > 0)
        })
        .await
    }

    async fn redrive(
        &self,
        tenant: &str,
        ids: Option<&[i64]>,
        filter: &DeadLetterFilter,
        now: Millis,
    ) -> StoreResult<Vec<i64>> {
        let mut args = vec![rusqlite::types::Value::Text(tenant.to_owned())];
        let mut sql = format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE tenant = ?");
        sql.push_str(&filter_sql(filter, &mut args));
        if let Some(ids) = ids {
            let list = ids
                .iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(",");
            sql.push_str(&format!(" AND id IN ({list})"));
        }
        self.run(move |tx| {
            let letters = tx
                .prepare(&sql)?
                .query_map(rusqlite::params_from_iter(args), row_to_dead_letter)?
                .collect::<Result<Vec<_>, _>>()?;
            let mut moved = Vec::with_capacity(letters.len());
            for d in letters {
                insert_job(
                    tx,
                    &NewJob {
                        tenant: d.tenant,
                        bus: d.bus,
                        rule: d.rule,
                        target: d.target,
                        event_id: d.event_id,
                        event: d.event,
                        body: d.body,
                        attempts: 0,
                        // A redriven event gets a fresh age budget.
                        ingested_ms: now,
                        due_ms: now,
                        last_error: None,
                    },
                )?;
                tx.execute("DELETE FROM dead_letters WHERE id = ?", [d.id])?;
                moved.push(d.id);
            }
            Ok(moved)
        })
        .await
    }

    async fn queue_push(&self, messages: Vec<NewQueueMessage>) -> StoreResult<()> {
        self.run(move |tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO queue_messages (tenant, queue, body) VALUES (?, ?, ?)",
            )?;
            for m in &messages {
                stmt.execute(params![m.tenant, m.queue, &m.body[..]])?;
            }
            Ok(())
        })
        .await
    }

    async fn queue_receive(
        &self,
        tenant: &str,
        queue: &str,
        max: usize,
        visibility_ms: Millis,
        now: Millis,
    ) -> StoreResult<Vec<ReceivedMessage>> {
        let (tenant, queue) = (tenant.to_owned(), queue.to_owned());
        self.run(move |tx| {
            let rows = tx
                .prepare_cached(
                    "SELECT id, body, receive_count FROM queue_messages WHERE tenant = ? AND queue = ? AND visible_ms <= ? \
                     ORDER BY id LIMIT ?",
                )?
                .query_map(params![tenant, queue, now, max as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, u32>(2)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut update = tx.prepare_cached(
                "UPDATE queue_messages SET visible_ms = ?, receive_count = ?, receipt = ? WHERE id = ?",
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for (id, body, count) in rows {
                let receipt = format!("{id}.{}", random_token());
                update.execute(params![now + visibility_ms, count + 1, receipt, id])?;
                out.push(ReceivedMessage { receipt, body: Bytes::from(body), receive_count: count + 1 });
            }
            Ok(out)
        })
        .await
    }

    async fn queue_ack(
        &self,
        tenant: &str,
        queue: &str,
        receipts: &[String],
    ) -> StoreResult<usize> {
        let (tenant, queue, receipts) = (tenant.to_owned(), queue.to_owned(), receipts.to_vec());
        self.run(move |tx| {
            let mut stmt = tx.prepare_cached(
                "DELETE FROM queue_messages WHERE tenant = ? AND queue = ? AND receipt = ?",
            )?;
            let mut n = 0;
            for r in &receipts {
                n += stmt.execute(params![tenant, queue, r])?;
            }
            Ok(n)
        })
        .await
    }

    async fn queue_depth(&self, tenant: &str, queue: &str) -> StoreResult<u64> {
        let (tenant, queue) = (tenant.to_owned(), queue.to_owned());
        self.run(move |tx| {
            Ok(tx.query_row(
                "SELECT COUNT(*) FROM queue_messages WHERE tenant = ? AND queue = ?",
                params![tenant, queue],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })
        .await
    }

    async fn queue_depths(&self) -> StoreResult<Vec<(String, String, u64)>> {
        self.run(|tx| {
            Ok(tx
                .prepare_cached(
                    "SELECT tenant, queue, COUNT(*) FROM queue_messages GROUP BY tenant, queue",
                )?
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
                })?
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn queue_purge(&self, tenant: &str, queue: &str) -> StoreResult<()> {
        let (tenant, queue) = (tenant.to_owned(), queue.to_owned());
        self.run(move |tx| {
            tx.execute(
                "DELETE FROM queue_messages WHERE tenant = ? AND queue = ?",
                params![tenant, queue],
            )?;
            Ok(())
        })
        .await
    }
}
