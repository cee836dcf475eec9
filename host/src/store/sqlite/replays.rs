//! [`Replays`] on SQLite: one row per replay (the record as JSON, with its
//! tenant, name and state in columns), and the atomic append: the replayed
//! batch goes into the log in the same transaction that records the progress.

use super::SqliteStore;
use super::log::insert_events;
use crate::store::{
    ArchivePosition, Millis, NewEvent, ReplayProgress, ReplayRecord, ReplayState, Replays,
    StoreError, StoreResult, Window,
};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

/// A replay record as stored.
#[derive(Serialize, Deserialize)]
struct Stored {
    id: String,
    tenant: String,
    name: Option<String>,
    bus: String,
    archive: String,
    archive_id: String,
    from_ms: Millis,
    to_ms: Millis,
    destination_bus: String,
    rules: Vec<String>,
    state: ReplayState,
    state_reason: Option<String>,
    events_total: u64,
    events_replayed: u64,
    last_replayed_ms: Option<Millis>,
    position: Option<String>,
    started_ms: Millis,
    ended_ms: Option<Millis>,
}

impl From<&ReplayRecord> for Stored {
    fn from(r: &ReplayRecord) -> Self {
        Self {
            id: r.id.clone(),
            tenant: r.tenant.clone(),
            name: r.name.clone(),
            bus: r.bus.clone(),
            archive: r.archive.clone(),
            archive_id: r.archive_id.clone(),
            from_ms: r.window.from_ms,
            to_ms: r.window.to_ms,
            destination_bus: r.destination_bus.clone(),
            rules: r.rules.clone(),
            state: r.state,
            state_reason: r.state_reason.clone(),
            events_total: r.events_total,
            events_replayed: r.progress.events_replayed,
            last_replayed_ms: r.progress.last_replayed_ms,
            position: r.progress.position.as_ref().map(|p| p.as_str().to_owned()),
            started_ms: r.started_ms,
            ended_ms: r.ended_ms,
        }
    }
}

impl From<Stored> for ReplayRecord {
    fn from(s: Stored) -> Self {
        Self {
            id: s.id,
            tenant: s.tenant,
            name: s.name,
            bus: s.bus,
            archive: s.archive,
            archive_id: s.archive_id,
            window: Window {
                from_ms: s.from_ms,
                to_ms: s.to_ms,
            },
            destination_bus: s.destination_bus,
            rules: s.rules,
            state: s.state,
            state_reason: s.state_reason,
            events_total: s.events_total,
            progress: ReplayProgress {
                events_replayed: s.events_replayed,
                last_replayed_ms: s.last_replayed_ms,
                position: s.position.map(ArchivePosition::from_stored),
            },
            started_ms: s.started_ms,
            ended_ms: s.ended_ms,
        }
    }
}

fn decode(text: String) -> rusqlite::Result<ReplayRecord> {
    serde_json::from_str::<Stored>(&text)
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
            serde_json::to_string(&Stored::from(record))?,
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
                    serde_json::to_string(&Stored::from(&record))?
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
        let tail = self.inner.tail.clone();
        self.run_then(
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
                Ok(Some(insert_events(tx, events)?))
            },
            move |logged| match logged {
                Some(logged) => {
                    tail.publish(logged);
                    true
                }
                None => false,
            },
        )
        .await
    }
}
