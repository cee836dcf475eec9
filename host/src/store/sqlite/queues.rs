//! [`Queues`] on SQLite: the `queue_messages` table.
//!
//! A receive hides a message until `visible_ms` and gives it a new receipt,
//! `<row id>.<random>`; an ack deletes the row only if it still carries that
//! receipt, so a receipt from an earlier receive no longer works.

use super::{SqliteStore, random_token};
use crate::clock::millis;
use crate::store::{NewQueueMessage, QueueDepth, Queues, ReceivedMessage, StoreResult};
use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::params;
use std::time::Duration;

#[async_trait]
impl Queues for SqliteStore {
    async fn queue_push(&self, messages: Vec<NewQueueMessage>) -> StoreResult<()> {
        if messages.is_empty() {
            return Ok(());
        }
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
        visibility: Duration,
    ) -> StoreResult<Vec<ReceivedMessage>> {
        let (tenant, queue) = (tenant.to_owned(), queue.to_owned());
        let clock = self.inner.clock.clone();
        let visibility = millis(visibility);
        self.run(move |tx| {
            let now = clock.now_ms();
            let rows = tx
                .prepare_cached(
                    "SELECT id, body, receive_count FROM queue_messages \
                     WHERE tenant = ? AND queue = ? AND visible_ms <= ? ORDER BY id LIMIT ?",
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
                let receive_count = count.saturating_add(1);
                update.execute(params![now + visibility, receive_count, receipt, id])?;
                out.push(ReceivedMessage {
                    receipt,
                    body: Bytes::from(body),
                    receive_count,
                });
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
        // The row id leads the receipt, so the delete is a key lookup; a
        // receipt that does not parse cannot be current.
        let receipts: Vec<(i64, String)> = receipts
            .iter()
            .filter_map(|r| Some((r.split_once('.')?.0.parse().ok()?, r.clone())))
            .collect();
        if receipts.is_empty() {
            return Ok(0);
        }
        let (tenant, queue) = (tenant.to_owned(), queue.to_owned());
        self.run(move |tx| {
            let mut stmt = tx.prepare_cached(
                "DELETE FROM queue_messages WHERE id = ? AND receipt = ? AND tenant = ? AND queue = ?",
            )?;
            let mut n = 0;
            for (id, receipt) in &receipts {
                n += stmt.execute(params![id, receipt, tenant, queue])?;
            }
            Ok(n)
        })
        .await
    }

    async fn queue_depth(&self, tenant: &str, queue: &str) -> StoreResult<u64> {
        let (tenant, queue) = (tenant.to_owned(), queue.to_owned());
        self.run(move |tx| {
            Ok(tx
                .prepare_cached(
                    "SELECT COUNT(*) FROM queue_messages WHERE tenant = ? AND queue = ?",
                )?
                .query_row(params![tenant, queue], |r| r.get::<_, i64>(0))?
                .unsigned_abs())
        })
        .await
    }

    async fn queue_depths(&self) -> StoreResult<Vec<QueueDepth>> {
        self.run(|tx| {
            Ok(tx
                .prepare_cached(
                    "SELECT tenant, queue, COUNT(*) FROM queue_messages GROUP BY tenant, queue \
                     ORDER BY tenant, queue",
                )?
                .query_map([], |r| {
                    Ok(QueueDepth {
                        tenant: r.get(0)?,
                        queue: r.get(1)?,
                        messages: r.get::<_, i64>(2)?.unsigned_abs(),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn queue_purge(&self, tenant: &str, queue: &str) -> StoreResult<()> {
        let (tenant, queue) = (tenant.to_owned(), queue.to_owned());
        self.run(move |tx| {
            tx.prepare_cached("DELETE FROM queue_messages WHERE tenant = ? AND queue = ?")?
                .execute(params![tenant, queue])?;
            Ok(())
        })
        .await
    }
}
