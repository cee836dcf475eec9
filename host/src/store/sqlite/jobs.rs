//! [`DeliveryJobs`] on SQLite: the `jobs` table.
//!
//! A job is leasable when both its due time and its lease (`lease_until`,
//! 0 when not leased) have passed; the `jobs_ready` index orders jobs by
//! that moment, so leasing reads the earliest ones and the waiting
//! `lease_due` knows when to look again. Each lease bumps the job's
//! `lease_token`, which the [`JobLease`] carries: a lease that ran out cannot
//! retry or extend a job someone has leased since.
//!
//! FIFO chains: only a chain's head is in `jobs` (at most one per chain,
//! by a unique index); the jobs behind it wait in `waiting_jobs`, and
//! `chains` keeps each chain's last finished slot. Removing a head (ack or
//! dead letter) moves the chain's next waiting job into `jobs` in the same
//! transaction, so leasing needs no knowledge of chains at all.

use super::SqliteStore;
use super::dead_letters::insert_dead_letter;
use crate::clock::millis;
use crate::store::jobs::LeaseRepr;
use crate::store::{
    AttemptError, ChainSlot, DeadLetterId, DeliveryJobs, Exhausted, FailureCode, JobLease,
    LeasedJob, Millis, NewJob, StoreResult,
};
use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use std::time::Duration;

/// Columns read by [`row_to_job`], in its order.
const JOB_COLUMNS: &str = "id, tenant, bus, rule, target, event_id, event, body, attempts, \
                           ingested_ms, due_ms, error_code, error_message, last_status, \
                           chain_key, chain_pos, chain_sub";

/// Reads a row of [`JOB_COLUMNS`] as (id, job).
fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, NewJob)> {
    let code: Option<String> = r.get(11)?;
    let last_error = match code {
        Some(code) => Some(AttemptError {
            code: FailureCode::parse(&code),
            message: r.get::<_, Option<String>>(12)?.unwrap_or_default(),
            status: r.get(13)?,
        }),
        None => None,
    };
    Ok((
        r.get(0)?,
        NewJob {
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
            chain: match r.get::<_, Option<String>>(14)? {
                Some(key) => Some(ChainSlot {
                    key,
                    position: r.get(15)?,
                    index: r.get(16)?,
                }),
                None => None,
            },
        },
    ))
}

/// Schedules one job: a chain's job becomes its head when the chain has
/// none, else waits behind it; a slot already scheduled or finished is
/// dropped.
pub(super) fn insert_job(tx: &Transaction<'_>, j: &NewJob) -> rusqlite::Result<()> {
    let (code, message, status) = match &j.last_error {
        Some(e) => (Some(e.code.as_str()), Some(e.message.as_str()), e.status),
        None => (None, None, None),
    };
    let (Some(chain), Some(slot)) = (j.chain_name(), j.chain.as_ref()) else {
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
        return Ok(());
    };
    let done: Option<(i64, u32)> = tx
        .prepare_cached("SELECT done_pos, done_sub FROM chains WHERE chain = ?")?
        .query_row([&chain], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if done.is_some_and(|done| slot.order() <= done) {
        return Ok(());
    }
    let head: Option<(i64, u32)> = tx
        .prepare_cached("SELECT chain_pos, chain_sub FROM jobs WHERE chain = ?")?
        .query_row([&chain], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let table = match head {
        Some(head) if head == slot.order() => return Ok(()),
        Some(_) => "waiting_jobs",
        None => "jobs",
    };
    tx.prepare_cached(&format!(
        "INSERT OR IGNORE INTO {table} (tenant, bus, rule, target, event_id, event, body, attempts, \
         ingested_ms, due_ms, error_code, error_message, last_status, chain, chain_key, chain_pos, chain_sub) \
         VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    ))?
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
        status,
        chain,
        slot.key,
        slot.position,
        slot.index
    ])?;
    Ok(())
}

/// Removes job `id`; when it was a chain's head, records its slot as the
/// chain's last finished one and moves the chain's next waiting job into
/// `jobs`. Returns whether a waiting job became leasable.
fn remove_job(tx: &Transaction<'_>, id: i64) -> rusqlite::Result<bool> {
    let removed: Option<(Option<String>, Option<i64>, Option<u32>)> = tx
        .prepare_cached("DELETE FROM jobs WHERE id = ? RETURNING chain, chain_pos, chain_sub")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((Some(chain), Some(pos), Some(sub))) = removed else {
        return Ok(false);
    };
    tx.prepare_cached(
        "INSERT INTO chains (chain, done_pos, done_sub) VALUES (?1, ?2, ?3) \
         ON CONFLICT (chain) DO UPDATE SET done_pos = ?2, done_sub = ?3 \
         WHERE (done_pos, done_sub) < (?2, ?3)",
    )?
    .execute(params![chain, pos, sub])?;
    let next: Option<i64> = tx
        .prepare_cached(
            "SELECT id FROM waiting_jobs WHERE chain = ? ORDER BY chain_pos, chain_sub LIMIT 1",
        )?
        .query_row([&chain], |r| r.get(0))
        .optional()?;
    let Some(next) = next else {
        // The chain is empty. Its finished slot is needed only while the
        // router could still route that log entry again, i.e. until the
        // routing cursor has passed it.
        tx.prepare_cached(
            "DELETE FROM chains WHERE chain = ? AND done_pos <= \
             COALESCE((SELECT seq FROM cursors WHERE name = 'route'), 0)",
        )?
        .execute([&chain])?;
        return Ok(false);
    };
    tx.prepare_cached(
        "INSERT INTO jobs (tenant, bus, rule, target, event_id, event, body, attempts, ingested_ms, \
         due_ms, error_code, error_message, last_status, chain, chain_key, chain_pos, chain_sub) \
         SELECT tenant, bus, rule, target, event_id, event, body, attempts, ingested_ms, due_ms, \
         error_code, error_message, last_status, chain, chain_key, chain_pos, chain_sub \
         FROM waiting_jobs WHERE id = ?",
    )?
    .execute([next])?;
    tx.prepare_cached("DELETE FROM waiting_jobs WHERE id = ?")?
        .execute([next])?;
    Ok(true)
}

/// Forgets the finished slots of empty chains that the routing cursor has
/// passed (those `remove_job` had to keep because the cursor lagged).
pub(super) fn prune_chains(tx: &Transaction<'_>) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "DELETE FROM chains WHERE done_pos <= COALESCE((SELECT seq FROM cursors WHERE name = 'route'), 0) \
         AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.chain = chains.chain)",
    )?
    .execute([])
}

/// Ends every lease (at open: the data dir is locked, so the process that
/// held them is gone). Returns how many jobs were leased.
pub(super) fn reclaim_leases(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE jobs SET lease_until = 0, lease_token = lease_token + 1 WHERE lease_until <> 0",
        [],
    )
}

/// The job row and lease generation of a lease this backend made.
fn row_lease(lease: &JobLease) -> Option<(i64, i64)> {
    match lease.0 {
        LeaseRepr::Row { id, token } => Some((id, i64::try_from(token).ok()?)),
        LeaseRepr::Reply(_) => None,
    }
}

impl SqliteStore {
    /// Wakes `lease_due` callers: a job may be due sooner than they think.
    pub(super) fn jobs_changed(&self) {
        self.inner.jobs_changed.notify_waiters();
    }
}

#[async_trait]
impl DeliveryJobs for SqliteStore {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> StoreResult<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        self.run(move |tx| {
            for j in &jobs {
                insert_job(tx, j)?;
            }
            Ok(())
        })
        .await?;
        self.jobs_changed();
        Ok(())
    }

    async fn lease_due(
        &self,
        max: usize,
        lease_for: Duration,
        wait: Duration,
    ) -> StoreResult<Vec<LeasedJob>> {
        let deadline = tokio::time::Instant::now() + wait;
        let lease_ms = millis(lease_for);
        loop {
            // Created before looking, so a change made after the look wakes us.
            let changed = self.inner.jobs_changed.notified();
            let clock = self.inner.clock.clone();
            let (leased, next_ready) = self
                .run(move |tx| {
                    let now = clock.now_ms();
                    let due = tx
                        .prepare_cached(&format!(
                            "SELECT {JOB_COLUMNS} FROM jobs WHERE MAX(due_ms, lease_until) <= ?1 \
                             ORDER BY MAX(due_ms, lease_until), id LIMIT ?2"
                        ))?
                        .query_map(params![now, max as i64], row_to_job)?
                        .collect::<Result<Vec<_>, _>>()?;
                    let mut lease = tx.prepare_cached(
                        "UPDATE jobs SET lease_until = ?, lease_token = lease_token + 1 WHERE id = ? \
                         RETURNING lease_token",
                    )?;
                    let mut leased = Vec::with_capacity(due.len());
                    for (id, job) in due {
                        let token: i64 = lease.query_row(params![now + lease_ms, id], |r| r.get(0))?;
                        leased.push(LeasedJob {
                            lease: JobLease(LeaseRepr::Row {
                                id,
                                token: u64::try_from(token).unwrap_or_default(),
                            }),
                            job,
                        });
                    }
                    let next_ready: Option<Millis> = if leased.is_empty() {
                        tx.prepare_cached(
                            "SELECT MAX(due_ms, lease_until) FROM jobs \
                             ORDER BY MAX(due_ms, lease_until), id LIMIT 1",
                        )?
                        .query_row([], |r| r.get(0))
                        .map(Some)
                        .or_else(|e| match e {
                            rusqlite::Error::QueryReturnedNoRows => Ok(None),
                            e => Err(e),
                        })?
                    } else {
                        None
                    };
                    Ok((leased, next_ready))
                })
                .await?;
            let now = tokio::time::Instant::now();
            if !leased.is_empty() || max == 0 || now >= deadline {
                return Ok(leased);
            }
            let mut until = deadline;
            if let Some(ready) = next_ready {
                // At least 1 ms, so a clock that does not move cannot spin us.
                let in_ms = (ready - self.now_ms()).max(1);
                until = until.min(now + Duration::from_millis(in_ms.unsigned_abs()));
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn ack_job(&self, lease: &JobLease) -> StoreResult<()> {
        let Some((id, _)) = row_lease(lease) else {
            return Ok(());
        };
        if self.run(move |tx| Ok(remove_job(tx, id)?)).await? {
            self.jobs_changed();
        }
        Ok(())
    }

    async fn retry_job(
        &self,
        lease: &JobLease,
        due_ms: Millis,
        attempts: u32,
        error: AttemptError,
    ) -> StoreResult<bool> {
        let Some((id, token)) = row_lease(lease) else {
            return Ok(false);
        };
        // The retry ends the lease: its token moves on, so the same lease
        // cannot retry or extend the job again.
        let retried = self
            .run(move |tx| {
                let n = tx
                    .prepare_cached(
                        "UPDATE jobs SET due_ms = ?, lease_until = 0, lease_token = lease_token + 1, \
                         attempts = ?, error_code = ?, error_message = ?, last_status = ? \
                         WHERE id = ? AND lease_token = ?",
                    )?
                    .execute(params![
                        due_ms,
                        attempts,
                        error.code.as_str(),
                        error.message,
                        error.status,
                        id,
                        token
                    ])?;
                Ok(n > 0)
            })
            .await?;
        if retried {
            self.jobs_changed();
        }
        Ok(retried)
    }

    async fn extend_leases(&self, leases: &[JobLease], lease_for: Duration) -> StoreResult<usize> {
        let leases: Vec<(i64, i64)> = leases.iter().filter_map(row_lease).collect();
        if leases.is_empty() {
            return Ok(0);
        }
        let clock = self.inner.clock.clone();
        let lease_ms = millis(lease_for);
        self.run(move |tx| {
            let until = clock.now_ms() + lease_ms;
            let mut stmt = tx.prepare_cached(
                // MAX: a heartbeat never shortens a lease.
                "UPDATE jobs SET lease_until = MAX(lease_until, ?) \
                 WHERE id = ? AND lease_token = ? AND lease_until <> 0",
            )?;
            let mut current = 0;
            for (id, token) in leases {
                current += stmt.execute(params![until, id, token])?;
            }
            Ok(current)
        })
        .await
    }

    async fn dead_letter(
        &self,
        lease: Option<&JobLease>,
        job: NewJob,
        exhausted: Exhausted,
    ) -> StoreResult<DeadLetterId> {
        let id = lease.and_then(row_lease).map(|(id, _)| id);
        let now = self.now_ms();
        let (letter, promoted) = self
            .run(move |tx| {
                let promoted = match id {
                    Some(id) => remove_job(tx, id)?,
                    None => false,
                };
                Ok((insert_dead_letter(tx, &job, exhausted, now)?, promoted))
            })
            .await?;
        if promoted {
            self.jobs_changed();
        }
        Ok(letter)
    }
}
