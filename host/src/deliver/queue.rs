//! The `queue` target: puts events on one of the tenant's pull queues, and
//! the wake-ups that let long-polling consumers sleep until it does.

use super::target::{BuildContext, Item, Reference, Target, read_spec};
use super::{Failure, FailureCode, Outcome};
use crate::resource::{NAME_RULE, Problems, valid_name};
use crate::store::{NewQueueMessage, Queues};
use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Messages one push writes at most (one store write for a burst).
const MAX_BATCH: usize = 256;

/// A `queue` target as written in a rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueTargetSpec {
    /// The destination queue (of the rule's tenant).
    queue: String,
}

/// Delivers to a pull queue of the rule's tenant.
pub struct QueueTarget {
    tenant: String,
    queue: String,
    queues: Arc<dyn Queues>,
    signals: Arc<QueueSignals>,
}

impl std::fmt::Debug for QueueTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueTarget")
            .field("tenant", &self.tenant)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// Builds a `queue` target.
pub(super) fn build(
    members: &serde_json::Map<String, serde_json::Value>,
    cx: &BuildContext<'_>,
) -> Result<Arc<dyn Target>, Problems> {
    let spec: QueueTargetSpec = read_spec(members)?;
    if !valid_name(&spec.queue) {
        return Err(Problems::one("queue", NAME_RULE));
    }
    Ok(Arc::new(QueueTarget {
        tenant: cx.tenant.to_owned(),
        queue: spec.queue,
        queues: cx.services.queues.clone(),
        signals: cx.services.queue_signals.clone(),
    }))
}

#[async_trait]
impl Target for QueueTarget {
    fn kind(&self) -> &'static str {
        "queue"
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    async fn send(&self, batch: &[Item]) -> Vec<Outcome> {
        let messages = batch
            .iter()
            .map(|item| NewQueueMessage {
                tenant: self.tenant.clone(),
                queue: self.queue.clone(),
                body: match &item.body {
                    Some(body) => Bytes::copy_from_slice(body.as_bytes()),
                    None => item.event.json().clone(),
                },
            })
            .collect();
        let outcome = match self.queues.queue_push(messages).await {
            Ok(()) => {
                self.signals.signal(&self.tenant, &self.queue);
                Outcome::Delivered { status: None }
            }
            Err(e) => Outcome::Retry(Failure::new(
                FailureCode::StoreError,
                format!("cannot write to queue {:?}: {e}", self.queue),
            )),
        };
        vec![outcome; batch.len()]
    }

    fn references(&self) -> Vec<(&'static str, Reference)> {
        vec![("queue", Reference::Queue(self.queue.clone()))]
    }
}

/// One [`Notify`] per (tenant, queue), created on demand.
///
/// Messages live in the store; this only lets a `receive` call that found
/// the queue empty sleep until something is pushed, instead of polling.
#[derive(Debug, Default)]
pub struct QueueSignals {
    map: Mutex<HashMap<(String, String), Arc<Notify>>>,
}

impl QueueSignals {
    /// The notifier consumers of this queue wait on.
    pub fn waiter(&self, tenant: &str, queue: &str) -> Arc<Notify> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((tenant.to_owned(), queue.to_owned()))
            .or_default()
            .clone()
    }

    /// Wakes every consumer waiting on this queue.
    pub fn signal(&self, tenant: &str, queue: &str) {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get(&(tenant.to_owned(), queue.to_owned())) {
            n.notify_waiters();
        }
    }
}
