//! Replay records on JetStream: the table `P_REPLAYS` (one message per
//! key). `r.<tenant>.<id>` holds the record; `i.<id>` and
//! `n.<tenant>.<name>` are created with compare-and-set (`0`: must not
//! exist) to keep ids unique across tenants and names unique per tenant.
//! State changes are compare-and-set updates of the record.
//!
//! The replayer's append cannot be one commit with the progress here (a
//! stream publish and a table write are two writes), so it is made safe
//! to repeat: the batch is published first, each event with the message id
//! `replay/<id>/<events replayed after the batch>/<index>`, then the
//! progress is written against the revision read. A crash in between
//! resumes from the old progress, publishes the same batch with the same
//! ids, and the log stream stores none of it twice (within its 2-minute
//! duplicate window). A cancel that lands while a batch is being published
//! lets that one batch through.

use super::NatsStore;
use super::table::{self, Expect, TableError};
use crate::store::replays::{ReplayProgress, ReplayRecord, ReplayState, Replays, StoredReplay};
use crate::store::{Millis, NewEvent, StoreError, StoreResult};
use async_trait::async_trait;

fn record_key(tenant: &str, id: &str) -> String {
    format!("r.{}", table::key(&[tenant, id]))
}

impl NatsStore {
    /// A replay's record and its revision.
    async fn load_replay(
        &self,
        tenant: &str,
        id: &str,
    ) -> StoreResult<Option<(u64, ReplayRecord)>> {
        let s = &self.inner;
        let Some(record) = s
            .replays
            .get(&record_key(tenant, id))
            .await
            .map_err(|e| e.into_store(s, "read a replay"))?
        else {
            return Ok(None);
        };
        Ok(table::parse::<StoredReplay>(&record)?.map(|r| (record.rev, r.into())))
    }

    /// Every record under the key filter.
    async fn replays_under(&self, filter: &str) -> StoreResult<Vec<ReplayRecord>> {
        let s = &self.inner;
        let mut out = Vec::new();
        for (_, record) in s
            .replays
            .scan(filter)
            .await
            .map_err(|e| e.into_store(s, "read replays"))?
        {
            if let Some(r) = table::parse::<StoredReplay>(&record)? {
                out.push(r.into());
            }
        }
        Ok(out)
    }

    /// Changes a replay that has not ended with `change`, against the
    /// revision read (again on a conflict); false if it is unknown or ended.
    async fn change_replay(
        &self,
        tenant: &str,
        id: &str,
        change: impl Fn(&mut ReplayRecord),
    ) -> StoreResult<bool> {
        let s = &self.inner;
        loop {
            let Some((rev, mut record)) = self.load_replay(tenant, id).await? else {
                return Ok(false);
            };
            if record.state.is_final() {
                return Ok(false);
            }
            change(&mut record);
            let value = table::json(&StoredReplay::from(&record))?;
            match s
                .replays
                .put(&record_key(tenant, id), Some(value), Expect::Rev(rev))
                .await
            {
                Ok(_) => return Ok(true),
                Err(TableError::Conflict) => continue,
                Err(e) => return Err(e.into_store(s, "update a replay")),
            }
        }
    }
}

#[async_trait]
impl Replays for NatsStore {
    async fn create_replay(&self, record: ReplayRecord) -> StoreResult<()> {
        let s = &self.inner;
        let conflict = || StoreError::Conflict(format!("replay {:?}", record.replay_name()));
        let claim = |key: String, value: String| async move {
            match s
                .replays
                .put(&key, Some(value.into()), Expect::Rev(0))
                .await
            {
                Ok(_) => Ok(true),
                Err(TableError::Conflict) => Ok(false),
                Err(e) => Err(e.into_store(s, "create a replay")),
            }
        };
        let id_key = format!("i.{}", table::key(&[&record.id]));
        if !claim(id_key.clone(), record.tenant.clone()).await? {
            return Err(conflict());
        }
        if let Some(name) = &record.name {
            let name_key = format!("n.{}", table::key(&[&record.tenant, name]));
            if !claim(name_key, record.id.clone()).await? {
                let _ = s.replays.remove(&id_key).await;
                return Err(conflict());
            }
        }
        let value = table::json(&StoredReplay::from(&record))?;
        s.replays
            .put(
                &record_key(&record.tenant, &record.id),
                Some(value),
                Expect::Any,
            )
            .await
            .map_err(|e| e.into_store(s, "create a replay"))?;
        Ok(())
    }

    async fn replay(&self, tenant: &str, id: &str) -> StoreResult<Option<ReplayRecord>> {
        Ok(self.load_replay(tenant, id).await?.map(|(_, r)| r))
    }

    async fn list_replays(&self, tenant: &str) -> StoreResult<Vec<ReplayRecord>> {
        let mut all = self
            .replays_under(&format!("r.{}.*", table::key(&[tenant])))
            .await?;
        all.sort_by(|a, b| (b.started_ms, &b.id).cmp(&(a.started_ms, &a.id)));
        Ok(all)
    }

    async fn unfinished_replays(&self) -> StoreResult<Vec<ReplayRecord>> {
        let mut all: Vec<ReplayRecord> = self
            .replays_under("r.>")
            .await?
            .into_iter()
            .filter(|r| !r.state.is_final())
            .collect();
        all.sort_by(|a, b| (a.started_ms, &a.id).cmp(&(b.started_ms, &b.id)));
        Ok(all)
    }

    async fn set_replay_state(
        &self,
        tenant: &str,
        id: &str,
        state: ReplayState,
        reason: Option<String>,
        ended_ms: Option<Millis>,
    ) -> StoreResult<bool> {
        self.change_replay(tenant, id, |r| {
            r.state = state;
            r.state_reason = reason.clone();
            r.ended_ms = ended_ms;
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
        match self.load_replay(tenant, id).await? {
            Some((_, r)) if !r.state.is_final() => {}
            _ => return Ok(false),
        }
        let batch = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let msg_id = format!("replay/{id}/{}/{i}", progress.events_replayed);
                (e, msg_id)
            })
            .collect();
        self.publish_events(batch).await?;
        self.change_replay(tenant, id, |r| {
            r.state = ReplayState::Running;
            r.progress = progress.clone();
        })
        .await
    }
}
