//! Deduplicated appends on JetStream: the table `P_DEDUP` (one message per
//! key, subject `<prefix>.dedup.<tenant>.<bus>.<key hex>`), written with
//! compare-and-set before the event is published.
//!
//! The bus's window follows the bus's clock (a test's virtual time too), so
//! it cannot be the stream's `duplicate_window` (server time, one value per
//! stream). Instead each key is a record — accepted time, expiry, the
//! `Nats-Msg-Id` its event is published with, and whether that publish was
//! acknowledged — created with `Nats-Expected-Last-Subject-Sequence`: of
//! two nodes racing with one key, exactly one creates the record, on any
//! node of the cluster.
//!
//! Steps for an event with a key: read the record; a live one (accepted
//! within the window) makes the event a duplicate. Otherwise write the
//! record (`committed: false`) against the revision read (a conflict means
//! someone wrote in between: read again), publish the event with the
//! record's message id, then mark the record committed. A crash between
//! the record and the publish must not lose the event: whoever next finds
//! the record uncommitted publishes its event with the record's message id,
//! which the log stream stores once (its duplicate window is 2 minutes of
//! server time, far longer than a crash-and-retry).
//!
//! Pruning scans the table and purges expired keys. (A key recorded again
//! between the scan and the purge loses its record early; the next copy of
//! that event inside its window would then be appended again.)

use super::NatsStore;
use super::table::{self, Expect, TableError};
use crate::store::dedup::{AdmittedEvent, Appended, DedupLog};
use crate::store::{Millis, NewEvent, StoreResult};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// One key's record.
#[derive(Clone, Serialize, Deserialize)]
struct KeyRecord {
    accepted_ms: Millis,
    expires_ms: Millis,
    /// The `Nats-Msg-Id` of the event it admitted.
    msg_id: String,
    /// Whether that event's publish was acknowledged.
    committed: bool,
}

#[async_trait]
impl DedupLog for NatsStore {
    async fn append_deduplicated(&self, events: Vec<AdmittedEvent>) -> StoreResult<Vec<Appended>> {
        let s = &self.inner;
        let mut answers = Vec::with_capacity(events.len());
        let mut batch: Vec<(NewEvent, String)> = Vec::with_capacity(events.len());
        // Uncommitted records of others: their events, published again.
        let mut again: Vec<(NewEvent, String)> = Vec::new();
        let mut recorded: Vec<(String, u64, KeyRecord)> = Vec::new();
        let mut ours = HashSet::new();
        for AdmittedEvent { event, dedup } in events {
            let Some(d) = dedup else {
                batch.push((event, uuid::Uuid::now_v7().to_string()));
                answers.push(Appended::New);
                continue;
            };
            let key = format!(
                "{}.{}",
                table::key(&[&event.tenant, &event.bus]),
                d.key.hex()
            );
            loop {
                let current = s
                    .dedup
                    .get(&key)
                    .await
                    .map_err(|e| e.into_store(s, "read a dedup key"))?;
                let rev = current.as_ref().map_or(0, |r| r.rev);
                let existing = match &current {
                    Some(r) => table::parse::<KeyRecord>(r)?,
                    None => None,
                };
                if let Some(k) = existing
                    && k.accepted_ms > event.ingested_ms - d.window_ms
                {
                    if !k.committed && !ours.contains(&key) {
                        again.push((event, k.msg_id));
                    }
                    answers.push(Appended::Duplicate);
                    break;
                }
                let record = KeyRecord {
                    accepted_ms: event.ingested_ms,
                    expires_ms: event.ingested_ms + d.window_ms,
                    msg_id: uuid::Uuid::now_v7().to_string(),
                    committed: false,
                };
                match s
                    .dedup
                    .put(&key, Some(table::json(&record)?), Expect::Rev(rev))
                    .await
                {
                    Ok(rev) => {
                        batch.push((event, record.msg_id.clone()));
                        ours.insert(key.clone());
                        recorded.push((key, rev, record));
                        answers.push(Appended::New);
                        break;
                    }
                    // Written in between: look again.
                    Err(TableError::Conflict) => continue,
                    Err(e) => return Err(e.into_store(s, "record a dedup key")),
                }
            }
        }
        batch.extend(again);
        self.publish_events(batch).await?;
        // The events are durable: a record left uncommitted only costs a
        // publish that the log stream drops.
        let commits = recorded
            .into_iter()
            .map(|(key, rev, mut record)| async move {
                record.committed = true;
                let value = table::json(&record)?;
                match s.dedup.put(&key, Some(value), Expect::Rev(rev)).await {
                    Ok(_) | Err(TableError::Conflict) => Ok(()),
                    Err(e) => Err(e.into_store(s, "commit a dedup key")),
                }
            });
        for result in futures_util::future::join_all(commits).await {
            if let Err(e) = result {
                tracing::warn!(error = %e, "dedup key left uncommitted");
            }
        }
        Ok(answers)
    }

    async fn prune_dedup_keys(&self, now: Millis) -> StoreResult<u64> {
        let s = &self.inner;
        let all = s
            .dedup
            .scan(">")
            .await
            .map_err(|e| e.into_store(s, "scan dedup keys"))?;
        let mut pruned = 0;
        for (key, record) in all {
            let Some(k) = table::parse::<KeyRecord>(&record)? else {
                continue;
            };
            if k.expires_ms < now {
                s.dedup
                    .remove(&key)
                    .await
                    .map_err(|e| e.into_store(s, "prune dedup keys"))?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }
}
