//! The `http` target as a [`Target`]: building it from a rule and sending
//! through [`HttpTarget`] — one event per call, or with `batch`, up to
//! `batch.max_events` per call in CloudEvents batch mode.

use super::http::{HttpTarget, HttpTargetSpec};
use super::target::{Batching, BuildContext, Item, Target, read_spec};
use super::{Outcome, Payload};
use crate::resource::Problems;
use async_trait::async_trait;
use serde_json::{Map, Value};
use std::sync::Arc;

/// Builds an `http` target.
pub(super) fn build(
    members: &Map<String, Value>,
    cx: &BuildContext<'_>,
) -> Result<Arc<dyn Target>, Problems> {
    let spec: HttpTargetSpec = read_spec(members)?;
    // Each tenant's webhooks go through its own egress allow-list.
    let target = HttpTarget::new(spec, cx.services.http.for_tenant(cx.tenant))?;
    Ok(Arc::new(target))
}

#[async_trait]
impl Target for HttpTarget {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn batching(&self) -> Batching {
        match self.batch_limits() {
            Some(limits) => Batching {
                max_items: limits.max_events,
                max_bytes: Some(limits.max_bytes),
                max_wait: limits.max_wait,
            },
            None => Batching::up_to(1),
        }
    }

    async fn send(&self, batch: &[Item]) -> Vec<Outcome> {
        if self.batch_limits().is_some() {
            let payloads: Vec<Payload<'_>> = batch
                .iter()
                .map(|item| Payload {
                    event: &item.event,
                    body: item.body.as_deref(),
                })
                .collect();
            return self.deliver_batch(&payloads).await;
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        for item in batch {
            let payload = Payload {
                event: &item.event,
                body: item.body.as_deref(),
            };
            outcomes.push(self.deliver(payload).await);
        }
        outcomes
    }
}
