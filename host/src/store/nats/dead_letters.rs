//! Dead letters on JetStream: stream `P_DLQ`, subjects
//! `<prefix>.dlq.<tenant>.<bus>.<rule>.<target>`, one message per letter
//! (a JSON header line, then the event). A letter's id is its stream
//! sequence: unique, increasing in the order letters were recorded, never
//! reused (JetStream does not reuse sequences).
//!
//! Reads go to the stream leader (`MSG.GET`), so a letter is readable as
//! soon as it was recorded. The bus/rule/target filter is a subject filter
//! (`<prefix>.dlq.<tenant>.<bus or *>.<rule or *>.<target or *>`) that the
//! server answers from its subject index, so other tenants' letters are
//! never read. A list is newest first: the server reads forward only, so
//! the list walks the tenant's matching letters below `before` forward and
//! keeps the last `limit` — a page costs one request per matching letter
//! below `before`. That is fine for the hundreds of letters a tenant looks
//! through; a tenant with very many would want a batched read (nats-server
//! 2.11 batch gets, not yet in async-nats) or a page index.
//!
//! Redrive publishes each letter back as a job (`Nats-Msg-Id` derived from
//! the letter's id, so a repeated redrive stores it once) and then deletes
//! the letter. Retention: `dead_letter_max_age` bounds how long letters stay.

use super::jobs::ErrorJson;
use super::{NatsStore, frame, token, unframe};
use crate::store::dead_letters::{DeadLetter, DeadLetterFilter, DeadLetterId, DeadLetters};
use crate::store::failure::{AttemptError, Exhausted, FailureCode};
use crate::store::jobs::NewJob;
use crate::store::{Millis, StoreResult};
use async_nats::jetstream::message::StreamMessage;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// A letter's header line.
#[derive(Serialize, Deserialize)]
struct Meta {
    tenant: String,
    bus: String,
    rule: String,
    target: String,
    event_id: String,
    body: Option<String>,
    error: ErrorJson,
    attempts: u32,
    exhausted: String,
    ingested_ms: Millis,
    created_ms: Millis,
}

impl NatsStore {
    /// Records a dead letter; its id.
    pub(super) async fn record_dead_letter(
        &self,
        job: &NewJob,
        exhausted: Exhausted,
        msg_id: Option<String>,
    ) -> StoreResult<DeadLetterId> {
        let s = &self.inner;
        let error = job
            .last_error
            .clone()
            .unwrap_or_else(|| AttemptError::new(FailureCode::Unknown, ""));
        let payload = frame(
            &Meta {
                tenant: job.tenant.clone(),
                bus: job.bus.clone(),
                rule: job.rule.clone(),
                target: job.target.clone(),
                event_id: job.event_id.clone(),
                body: job.body.clone(),
                error: ErrorJson::from_error(&error),
                attempts: job.attempts,
                exhausted: exhausted.as_str().to_owned(),
                ingested_ms: job.ingested_ms,
                created_ms: s.now(),
            },
            &job.event,
        )?;
        let subject = s.subject("dlq", &[&job.tenant, &job.bus, &job.rule, &job.target]);
        let ack = s
            .publish("dead-letter", subject, payload, msg_id.as_deref())
            .await?;
        Ok(i64::try_from(ack.sequence).unwrap_or(i64::MAX))
    }

    /// The subject filter of a tenant's letters passing `filter`.
    fn dlq_filter(&self, tenant: &str, filter: &DeadLetterFilter) -> String {
        let part = |f: &Option<String>| f.as_deref().map_or_else(|| "*".to_owned(), token);
        format!(
            "{}.dlq.{}.{}.{}.{}",
            self.inner.sub,
            token(tenant),
            part(&filter.bus),
            part(&filter.rule),
            part(&filter.target)
        )
    }

    /// One of the tenant's letters, if `id` is one.
    async fn letter(&self, tenant: &str, id: DeadLetterId) -> StoreResult<Option<DeadLetter>> {
        let s = &self.inner;
        let Ok(seq) = u64::try_from(id) else {
            return Ok(None);
        };
        if seq == 0 {
            return Ok(None);
        }
        let Some(m) = s.message_at(&s.dlq, seq).await? else {
            return Ok(None);
        };
        let letter = decode(&m)?;
        Ok((letter.tenant == tenant).then_some(letter))
    }

    /// The tenant's letters passing `filter` with ids below `before`, oldest
    /// first, handing each to `keep` (which may stop the walk by returning false).
    async fn walk(
        &self,
        tenant: &str,
        filter: &DeadLetterFilter,
        before: Option<DeadLetterId>,
        mut keep: impl FnMut(DeadLetter) -> bool,
    ) -> StoreResult<()> {
        let s = &self.inner;
        let subject = self.dlq_filter(tenant, filter);
        let below = before
            .and_then(|b| u64::try_from(b).ok())
            .unwrap_or(u64::MAX);
        let mut seq = 1;
        while seq < below {
            let Some(m) = s.first_at_or_after(&s.dlq, &subject, seq).await? else {
                return Ok(());
            };
            if m.sequence >= below {
                return Ok(());
            }
            seq = m.sequence + 1;
            if !keep(decode(&m)?) {
                return Ok(());
            }
        }
        Ok(())
    }
}

fn decode(m: &StreamMessage) -> StoreResult<DeadLetter> {
    let (meta, event) = unframe::<Meta>(&m.payload)?;
    Ok(DeadLetter {
        id: i64::try_from(m.sequence).unwrap_or(i64::MAX),
        tenant: meta.tenant,
        bus: meta.bus,
        rule: meta.rule,
        target: meta.target,
        event_id: meta.event_id,
        event,
        body: meta.body,
        error: meta.error.into_error(),
        attempts: meta.attempts,
        exhausted: Exhausted::parse(&meta.exhausted),
        ingested_ms: meta.ingested_ms,
        created_ms: meta.created_ms,
    })
}

#[async_trait]
impl DeadLetters for NatsStore {
    async fn list_dead_letters(
        &self,
        tenant: &str,
        filter: &DeadLetterFilter,
        before: Option<DeadLetterId>,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetter>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut last = VecDeque::with_capacity(limit);
        self.walk(tenant, filter, before, |letter| {
            if last.len() == limit {
                last.pop_front();
            }
            last.push_back(letter);
            true
        })
        .await?;
        Ok(last.into_iter().rev().collect())
    }

    async fn dead_letter_entry(
        &self,
        tenant: &str,
        id: DeadLetterId,
    ) -> StoreResult<Option<DeadLetter>> {
        self.letter(tenant, id).await
    }

    async fn delete_dead_letter(&self, tenant: &str, id: DeadLetterId) -> StoreResult<bool> {
        let s = &self.inner;
        match self.letter(tenant, id).await? {
            Some(letter) => {
                s.delete_message(&s.dlq, u64::try_from(letter.id).unwrap_or(0))
                    .await
            }
            None => Ok(false),
        }
    }

    async fn redrive(
        &self,
        tenant: &str,
        ids: Option<&[DeadLetterId]>,
        filter: &DeadLetterFilter,
    ) -> StoreResult<Vec<DeadLetterId>> {
        let s = &self.inner;
        let mut chosen = Vec::new();
        match ids {
            Some(ids) => {
                let mut ids = ids.to_vec();
                ids.sort_unstable();
                ids.dedup();
                for id in ids {
                    if let Some(letter) = self.letter(tenant, id).await?
                        && filter.matches(&letter)
                    {
                        chosen.push(letter);
                    }
                }
            }
            None => {
                self.walk(tenant, filter, None, |letter| {
                    chosen.push(letter);
                    true
                })
                .await?;
            }
        }
        let now = s.now();
        let mut moved = Vec::with_capacity(chosen.len());
        for letter in chosen {
            let job = NewJob {
                tenant: letter.tenant,
                bus: letter.bus,
                rule: letter.rule,
                target: letter.target,
                event_id: letter.event_id,
                event: letter.event,
                body: letter.body,
                attempts: 0,
                // A redriven event gets a fresh age budget.
                ingested_ms: now,
                due_ms: now,
                chain: None,
                last_error: None,
            };
            self.publish_jobs(vec![(job, Some(format!("redrive-{}", letter.id)))])
                .await?;
            if s.delete_message(&s.dlq, u64::try_from(letter.id).unwrap_or(0))
                .await?
            {
                moved.push(letter.id);
            }
        }
        Ok(moved)
    }
}
