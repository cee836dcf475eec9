//! [`Replays`] on SQLite: one row per replay (the record as JSON, with its
//! tenant, name and state in columns), and the atomic append: the replayed
//! batch goes into the log in the same transaction that records the progress.

use super::SqliteStore;
use super::log::{Archiving, insert_events};
use crate::store::replays::StoredReplay;
use crate::store::{
    Millis, NewEvent, ReplayProgress, ReplayRecord, ReplayState, Replays, StoreError, StoreResult,
};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction, params};

fn decode(text: String) -> rusqlite::Result<ReplayRecord> {
    serde_json::from_str::<StoredReplay>(&text)
        .map(ReplayRecord::from)
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
        })
}

fn load(tx: &Transaction<'_>, tenant: &str, id: &str) -> rusqlite::Result<Option<ReplayRecord>> {
    tx.prepare_cached("SELECT record FROM replays WHERE id = ? AND tenant = ?")?
        .query_row(params![id, tenant], |r| r.get::<_, String>(0))
        .optional()?
        .map(decode)
        .transpose()
}

fn save(tx: &Transaction<'_>, record: &ReplayRecord) -> anyhow::Result<()> {
    tx.prepare_cached("UPDATE replays SET state = ?, record = ? WHERE id = ?")?
        .execute(params![
            record.state.as_str(),
            serde_json::to_string(&StoredReplay::from(record))?,
            record.id
        ])?;
    Ok(())
}

fn list(tx: &Transaction<'_>, sql: &str, args: &[&str]) -> anyhow::Result<Vec<ReplayRecord>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for text in rows {
        out.push(decode(text?)?);
    }
    Ok(out)
}

#[async_trait]
impl Replays for SqliteStore {
    async fn create_replay(&self, record: ReplayRecord) -> StoreResult<()> {
        let name = record.replay_name().to_owned();
        let result = self
            .run(move |tx| {
                tx.prepare_cached(
                    "INSERT INTO replays (id, tenant, name, state, started_ms, record) VALUES (?, ?, ?, ?, ?, ?)",
                )?
                .execute(params![
                    record.id,
                    record.tenant,
                    record.name,
                    record.state.as_str(),
                    record.started_ms,
                    serde_json::to_string(&StoredReplay::from(&record))?
                ])?;
                Ok(())
            })
            .await;
        match result {
            Err(StoreError::Conflict(_)) => Err(StoreError::Conflict(format!("replay {name:?}"))),
            other => other,
        }
    }

    async fn replay(&self, tenant: &str, id: &str) -> StoreResult<Option<ReplayRecord>> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        self.run(move |tx| Ok(load(tx, &tenant, &id)?)).await
    }

    async fn list_replays(&self, tenant: &str) -> StoreResult<Vec<ReplayRecord>> {
        let tenant = tenant.to_owned();
        self.run(move |tx| {
            list(
                tx,
                "SELECT record FROM replays WHERE tenant = ? ORDER BY started_ms DESC, id DESC",
                &[&tenant],
            )
        })
        .await
    }

    async fn unfinished_replays(&self) -> StoreResult<Vec<ReplayRecord>> {
        self.run(|tx| {
            list(
                tx,
                "SELECT record FROM replays WHERE state IN ('starting', 'running') ORDER BY started_ms, id",
                &[],
            )
        })
        .await
    }

    async fn set_replay_state(
        &self,
        tenant: &str,
        id: &str,
        state: ReplayState,
        reason: Option<String>,
        ended_ms: Option<Millis>,
    ) -> StoreResult<bool> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        self.run(move |tx| {
            let Some(mut record) = load(tx, &tenant, &id)? else {
                return Ok(false);
            };
            if record.state.is_final() {
                return Ok(false);
            }
            record.state = state;
            record.state_reason = reason;
            record.ended_ms = ended_ms;
            save(tx, &record)?;
            Ok(true)
        })
        .await
    }

    async fn replay_append(
        &self,
        tenant: &str,
        id: &str,
        events: Vec<NewEvent>,
        progress: ReplayProgress,
    ) -> StoreResult<bool> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        let published = self.publisher();
        let shift = self.inner.archive_pos_shift;
        let ranges = self.inner.log_ranges.clone();
        let appended = self
            .run_then(
                move |tx| {
                    let Some(mut record) = load(tx, &tenant, &id)? else {
                        return Ok(None);
                    };
                    if record.state.is_final() {
                        return Ok(None);
                    }
                    record.state = ReplayState::Running;
                    record.progress = progress;
                    save(tx, &record)?;
                    let archiving = Archiving {
                        shift,
                        ranges: &ranges,
                    };
                    Ok(Some(insert_events(tx, events, archiving, None)?))
                },
                move |logged| match logged {
                    Some(logged) => {
                        published(logged);
                        true
                    }
                    None => false,
                },
            )
            .await?;
        self.merge_trace_ids_if_due();
        Ok(appended)
    }
}
