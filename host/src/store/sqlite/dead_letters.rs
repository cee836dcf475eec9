//! [`DeadLetters`] on SQLite: the `dead_letters` table, paged on its id.

use super::SqliteStore;
use super::jobs::insert_job;
use crate::store::{
    AttemptError, DeadLetter, DeadLetterFilter, DeadLetterId, DeadLetters, Exhausted, FailureCode,
    Millis, NewJob, StoreResult,
};
use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, Transaction, params};

/// Columns read by [`row_to_dead_letter`], in its order.
const DEAD_LETTER_COLUMNS: &str = "id, tenant, bus, rule, target, event_id, event, body, error_code, \
                                   error_message, attempts, last_status, exhausted, ingested_ms, created_ms";

fn row_to_dead_letter(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    let exhausted: String = r.get(12)?;
    let exhausted = Exhausted::parse(&exhausted);
    Ok(DeadLetter {
        id: r.get(0)?,
        tenant: r.get(1)?,
        bus: r.get(2)?,
        rule: r.get(3)?,
        target: r.get(4)?,
        event_id: r.get(5)?,
        event: Bytes::from(r.get::<_, Vec<u8>>(6)?),
        body: r.get(7)?,
        error: AttemptError {
            code: FailureCode::parse(&r.get::<_, String>(8)?),
            message: r.get(9)?,
            status: r.get(11)?,
        },
        attempts: r.get(10)?,
        exhausted,
        ingested_ms: r.get(13)?,
        created_ms: r.get(14)?,
    })
}

/// Records a dead letter for `job` (its `last_error` is the reason).
pub(super) fn insert_dead_letter(
    tx: &Transaction<'_>,
    job: &NewJob,
    exhausted: Exhausted,
    now: Millis,
) -> rusqlite::Result<DeadLetterId> {
    let (code, message, status) = match &job.last_error {
        Some(e) => (e.code, e.message.as_str(), e.status),
        None => (FailureCode::Unknown, "", None),
    };
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
        code.as_str(),
        message,
        job.attempts,
        status,
        exhausted.as_str(),
        job.ingested_ms,
        now
    ])?;
    Ok(tx.last_insert_rowid())
}

/// `WHERE` clauses selecting a tenant's dead letters that pass `filter`.
/// Absent filter fields compare with NULL, so the statement text is the
/// same for every filter and is prepared once.
const FILTER_SQL: &str = "tenant = ?1 AND (?2 IS NULL OR bus = ?2) \
                          AND (?3 IS NULL OR rule = ?3) AND (?4 IS NULL OR target = ?4)";

/// The first four parameters of [`FILTER_SQL`].
fn filter_args(tenant: &str, filter: &DeadLetterFilter) -> Vec<Value> {
    let opt = |v: &Option<String>| v.clone().map_or(Value::Null, Value::Text);
    vec![
        Value::Text(tenant.to_owned()),
        opt(&filter.bus),
        opt(&filter.rule),
        opt(&filter.target),
    ]
}

#[async_trait]
impl DeadLetters for SqliteStore {
    async fn list_dead_letters(
        &self,
        tenant: &str,
        filter: &DeadLetterFilter,
        before: Option<DeadLetterId>,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetter>> {
        let mut args = filter_args(tenant, filter);
        args.push(Value::Integer(before.unwrap_or(i64::MAX)));
        args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        self.run(move |tx| {
            Ok(tx
                .prepare_cached(&format!(
                    "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE {FILTER_SQL} AND id < ?5 \
                     ORDER BY id DESC LIMIT ?6"
                ))?
                .query_map(rusqlite::params_from_iter(args), row_to_dead_letter)?
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn dead_letter_entry(
        &self,
        tenant: &str,
        id: DeadLetterId,
    ) -> StoreResult<Option<DeadLetter>> {
        let tenant = tenant.to_owned();
        self.run(move |tx| {
            Ok(tx
                .prepare_cached(&format!(
                    "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE tenant = ? AND id = ?"
                ))?
                .query_row(params![tenant, id], row_to_dead_letter)
                .optional()?)
        })
        .await
    }

    async fn delete_dead_letter(&self, tenant: &str, id: DeadLetterId) -> StoreResult<bool> {
        let tenant = tenant.to_owned();
        self.run(move |tx| {
            Ok(tx
                .prepare_cached("DELETE FROM dead_letters WHERE tenant = ? AND id = ?")?
                .execute(params![tenant, id])?
                > 0)
        })
        .await
    }

    async fn redrive(
        &self,
        tenant: &str,
        ids: Option<&[DeadLetterId]>,
        filter: &DeadLetterFilter,
    ) -> StoreResult<Vec<DeadLetterId>> {
        let mut args = filter_args(tenant, filter);
        // The ids as one JSON array parameter, so the statement text stays
        // fixed; with ids, they are looked up by primary key.
        let select = match ids {
            Some(ids) => {
                args.push(Value::Text(
                    serde_json::Value::from(ids.to_vec()).to_string(),
                ));
                format!(
                    "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters \
                     WHERE id IN (SELECT value FROM json_each(?5)) AND {FILTER_SQL} ORDER BY id"
                )
            }
            None => format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE {FILTER_SQL} ORDER BY id"
            ),
        };
        let clock = self.inner.clock.clone();
        let moved = self
            .run(move |tx| {
                let now = clock.now_ms();
                let letters = tx
                    .prepare_cached(&select)?
                    .query_map(rusqlite::params_from_iter(args), row_to_dead_letter)?
                    .collect::<Result<Vec<_>, _>>()?;
                let mut delete = tx.prepare_cached("DELETE FROM dead_letters WHERE id = ?")?;
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
                            chain: None,
                        },
                    )?;
                    delete.execute([d.id])?;
                    moved.push(d.id);
                }
                Ok(moved)
            })
            .await?;
        if !moved.is_empty() {
            self.jobs_changed();
        }
        Ok(moved)
    }
}
