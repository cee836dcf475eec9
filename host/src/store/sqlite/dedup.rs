//! [`DedupLog`] on SQLite: the `dedup_keys` table, checked and written in
//! the same savepoint as the events it admits.
//!
//! The writer thread runs operations one at a time, so two requests with
//! the same key can never both pass the check: the second one's savepoint
//! sees the first one's row (in the same group commit or an earlier one).

use super::SqliteStore;
use crate::store::{AdmittedEvent, Appended, DedupLog, Millis, StoreResult};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

#[async_trait]
impl DedupLog for SqliteStore {
    async fn append_deduplicated(&self, events: Vec<AdmittedEvent>) -> StoreResult<Vec<Appended>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let published = self.publisher();
        let shift = self.inner.archive_pos_shift;
        let ranges = self.inner.log_ranges.clone();
        let answers = self
            .run_then(
                move |tx| {
                    let mut seen =
                        tx.prepare_cached("SELECT accepted_ms FROM dedup_keys WHERE key = ?")?;
                    let mut record = tx.prepare_cached(
                        "INSERT INTO dedup_keys (key, accepted_ms, expires_ms) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (key) DO UPDATE SET accepted_ms = ?2, expires_ms = ?3",
                    )?;
                    let archiving = super::log::Archiving {
                        shift,
                        ranges: &ranges,
                    };
                    let mut answers = Vec::with_capacity(events.len());
                    let mut logged = Vec::new();
                    for AdmittedEvent { event: e, dedup } in events {
                        if let Some(d) = dedup {
                            let accepted: Option<Millis> =
                                seen.query_row([&d.key.0[..]], |r| r.get(0)).optional()?;
                            if accepted.is_some_and(|at| at > e.ingested_ms - d.window_ms) {
                                answers.push(Appended::Duplicate);
                                continue;
                            }
                            record.execute(params![
                                &d.key.0[..],
                                e.ingested_ms,
                                e.ingested_ms + d.window_ms
                            ])?;
                        }
                        // The same insert as a plain append: archive rows included.
                        logged.extend(super::log::insert_events(tx, vec![e], archiving, None)?);
                        answers.push(Appended::New);
                    }
                    Ok((answers, logged))
                },
                move |(answers, logged)| {
                    published(logged);
                    answers
                },
            )
            .await?;
        self.merge_trace_ids_if_due();
        Ok(answers)
    }

    async fn prune_dedup_keys(&self, now: Millis) -> StoreResult<u64> {
        self.run(move |tx| {
            let n = tx
                .prepare_cached("DELETE FROM dedup_keys WHERE expires_ms < ?")?
                .execute([now])?;
            Ok(n as u64)
        })
        .await
    }
}
