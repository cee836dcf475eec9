//! Pull queues on JetStream: messages in stream `P_QUEUES` (subject
//! `<prefix>.queue.<tenant>.<queue>`), each message's receive state — when
//! it becomes visible again, how often it was received, the current
//! receipt's token — in the table `P_QSTATE` (key
//! `<tenant>.<queue>.<sequence>`).
//!
//! Why not a consumer with `AckWait` as the visibility timeout: a queue's
//! consumers are HTTP clients of any node, the visibility timeout is given
//! per receive, and a receipt must work on any node. So visibility is
//! application state: a receive walks the queue's messages oldest first
//! (leader reads by subject), skips those still hidden on the bus's clock,
//! and claims each visible one with a compare-and-set on its state — two
//! nodes receiving at once never both get a message. The receipt is
//! `<sequence>.<token>`; it acknowledges only while its token is the
//! message's current one (a later receive replaces it). An ack deletes the
//! message and its state. A receive costs a few requests per message it
//! looks at, so a queue's in-flight (hidden) messages make receives slower;
//! queues are for modest rates, the event path does not go through here.
//!
//! Depths are the stream's per-subject counts (one request for all queues);
//! a purge is a purge by subject of both streams.

use super::table::{Expect, TableError};
use super::{NatsStore, random_u64, token, untoken};
use crate::clock::millis;
use crate::store::queues::{NewQueueMessage, QueueDepth, Queues, ReceivedMessage};
use crate::store::{Millis, StoreResult};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A message's receive state.
#[derive(Serialize, Deserialize)]
struct State {
    visible_ms: Millis,
    receive_count: u32,
    token: u64,
}

impl NatsStore {
    fn queue_subject(&self, tenant: &str, queue: &str) -> String {
        self.inner.subject("queue", &[tenant, queue])
    }

    fn state_key(tenant: &str, queue: &str, seq: u64) -> String {
        format!("{}.{}.{seq}", token(tenant), token(queue))
    }
}

fn parse_receipt(receipt: &str) -> Option<(u64, u64)> {
    let (seq, tok) = receipt.split_once('.')?;
    Some((seq.parse().ok()?, u64::from_str_radix(tok, 16).ok()?))
}

#[async_trait]
impl Queues for NatsStore {
    async fn queue_push(&self, messages: Vec<NewQueueMessage>) -> StoreResult<()> {
        let s = &self.inner;
        let mut acks = Vec::with_capacity(messages.len());
        let mut sent = Vec::with_capacity(messages.len());
        for m in messages {
            let subject = self.queue_subject(&m.tenant, &m.queue);
            let id = uuid::Uuid::now_v7().to_string();
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(m.body.clone())
                .message_id(&id);
            acks.push(
                s.timed("push", s.js.send_publish(subject.clone(), publish))
                    .await?,
            );
            sent.push((subject, m.body, id));
        }
        let results = futures_util::future::join_all(
            acks.into_iter()
                .map(|ack| tokio::time::timeout(s.options.request_timeout * 2, ack)),
        )
        .await;
        for ((subject, body, id), result) in sent.into_iter().zip(results) {
            if !matches!(result, Ok(Ok(_))) {
                s.publish("push", subject, body, Some(&id)).await?;
            }
        }
        Ok(())
    }

    async fn queue_receive(
        &self,
        tenant: &str,
        queue: &str,
        max: usize,
        visibility: Duration,
    ) -> StoreResult<Vec<ReceivedMessage>> {
        let s = &self.inner;
        let subject = self.queue_subject(tenant, queue);
        let now = s.now();
        let mut out = Vec::new();
        let mut seq = 1;
        while out.len() < max {
            let Some(m) = s.first_at_or_after(&s.queues, &subject, seq).await? else {
                break;
            };
            seq = m.sequence + 1;
            let key = Self::state_key(tenant, queue, m.sequence);
            let current = s
                .qstate
                .get(&key)
                .await
                .map_err(|e| e.into_store(s, "read queue state"))?;
            let (rev, count) = match &current {
                None => (0, 0),
                Some(r) => match &r.value {
                    None => (r.rev, 0),
                    Some(v) => {
                        let st: State = serde_json::from_slice(v).map_err(|e| {
                            crate::store::StoreError::Backend(anyhow::anyhow!(
                                "queue state is unreadable: {e}"
                            ))
                        })?;
                        if st.visible_ms > now {
                            continue;
                        }
                        (r.rev, st.receive_count)
                    }
                },
            };
            let state = State {
                visible_ms: now.saturating_add(millis(visibility)),
                receive_count: count + 1,
                token: random_u64(),
            };
            let value = serde_json::to_vec(&state)
                .map_err(|e| crate::store::StoreError::Backend(e.into()))?;
            match s
                .qstate
                .put(&key, Some(value.into()), Expect::Rev(rev))
                .await
            {
                Ok(_) => out.push(ReceivedMessage {
                    receipt: format!("{}.{:016x}", m.sequence, state.token),
                    body: m.payload,
                    receive_count: state.receive_count,
                }),
                // Another receive claimed it first.
                Err(TableError::Conflict) => continue,
                Err(e) => return Err(e.into_store(s, "write queue state")),
            }
        }
        Ok(out)
    }

    async fn queue_ack(
        &self,
        tenant: &str,
        queue: &str,
        receipts: &[String],
    ) -> StoreResult<usize> {
        let s = &self.inner;
        let subject = self.queue_subject(tenant, queue);
        let mut acked = 0;
        for (seq, tok) in receipts.iter().filter_map(|r| parse_receipt(r)) {
            let key = Self::state_key(tenant, queue, seq);
            let Some(value) = s
                .qstate
                .get(&key)
                .await
                .map_err(|e| e.into_store(s, "read queue state"))?
                .and_then(|r| r.value)
            else {
                continue;
            };
            let Ok(state) = serde_json::from_slice::<State>(&value) else {
                continue;
            };
            if state.token != tok {
                continue;
            }
            // The state key names the queue, but check the message too.
            match s.message_at(&s.queues, seq).await? {
                Some(m) if m.subject.as_str() == subject => {}
                _ => continue,
            }
            if s.delete_message(&s.queues, seq).await? {
                acked += 1;
            }
            s.qstate
                .remove(&key)
                .await
                .map_err(|e| e.into_store(s, "write queue state"))?;
        }
        Ok(acked)
    }

    async fn queue_depth(&self, tenant: &str, queue: &str) -> StoreResult<u64> {
        let subject = self.queue_subject(tenant, queue);
        Ok(self
            .subject_counts(&subject)
            .await?
            .into_iter()
            .map(|(_, n)| n)
            .sum())
    }

    async fn queue_depths(&self) -> StoreResult<Vec<QueueDepth>> {
        let filter = format!("{}.queue.>", self.inner.sub);
        let mut out = Vec::new();
        for (subject, messages) in self.subject_counts(&filter).await? {
            let parts: Vec<&str> = subject.split('.').collect();
            if let [_, "queue", tenant, queue] = parts.as_slice()
                && let (Some(tenant), Some(queue)) = (untoken(tenant), untoken(queue))
                && messages > 0
            {
                out.push(QueueDepth {
                    tenant,
                    queue,
                    messages,
                });
            }
        }
        Ok(out)
    }

    async fn queue_purge(&self, tenant: &str, queue: &str) -> StoreResult<()> {
        let s = &self.inner;
        let subject = self.queue_subject(tenant, queue);
        s.timed(
            "purge queue",
            s.queues.purge().filter(subject).into_future(),
        )
        .await?;
        s.qstate
            .remove(&format!("{}.{}.>", token(tenant), token(queue)))
            .await
            .map_err(|e| e.into_store(s, "purge queue state"))?;
        Ok(())
    }
}

impl NatsStore {
    /// Messages per subject of the queue stream under `filter`.
    async fn subject_counts(&self, filter: &str) -> StoreResult<Vec<(String, u64)>> {
        let s = &self.inner;
        let mut info = s
            .timed("queue depth", s.queues.info_with_subjects(filter))
            .await?;
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(s.options.request_timeout * 2, info.next()).await {
                Ok(Some(Ok((subject, n)))) => out.push((subject, u64::try_from(n).unwrap_or(0))),
                Ok(Some(Err(e))) => return Err(s.fail("queue depth", e)),
                Ok(None) => return Ok(out),
                Err(_) => {
                    return Err(crate::store::StoreError::Unavailable(
                        "NATS: queue depth: timed out".into(),
                    ));
                }
            }
        }
    }
}
