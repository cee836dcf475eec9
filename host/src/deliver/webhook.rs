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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::http::HttpClient;
    use serde_json::json;
    use std::time::Duration;

    /// Builds an `http` target from its members as a rule would.
    fn built(members: Value) -> Result<HttpTarget, Vec<String>> {
        let client = HttpClient::new(&crate::net::EgressPolicy::default()).unwrap();
        let spec: HttpTargetSpec = read_spec(members.as_object().unwrap())
            .map_err(|p| p.iter().map(|p| p.field.clone()).collect::<Vec<_>>())?;
        HttpTarget::new(spec, client).map_err(|e| e.problems().map(|p| p.field).collect())
    }

    #[test]
    fn batch_limits_are_read_with_defaults_and_checked() {
        let target = built(json!({"url": "https://hooks.example/", "batch": {}})).unwrap();
        assert_eq!(
            target.batching(),
            Batching {
                max_items: 100,
                max_bytes: Some(1024 * 1024),
                max_wait: Duration::ZERO
            }
        );
        let target = built(json!({"url": "https://hooks.example/",
            "batch": {"max_events": 1000, "max_bytes": 2048, "max_wait_ms": 10000}}))
        .unwrap();
        assert_eq!(
            target.batching(),
            Batching {
                max_items: 1000,
                max_bytes: Some(2048),
                max_wait: Duration::from_secs(10)
            }
        );
        let plain = built(json!({"url": "https://hooks.example/"})).unwrap();
        assert_eq!(plain.batching(), Batching::up_to(1));

        let cases = [
            (json!({"max_events": 0}), "batch.max_events"),
            (json!({"max_events": 1001}), "batch.max_events"),
            (json!({"max_events": -1}), "batch.max_events"),
            (json!({"max_bytes": 1023}), "batch.max_bytes"),
            (
                json!({"max_bytes": 16 * 1024 * 1024 + 1}),
                "batch.max_bytes",
            ),
            (json!({"max_wait_ms": 10001}), "batch.max_wait_ms"),
            (json!({"max_wait_ms": "soon"}), "batch.max_wait_ms"),
            (json!({"max_events": 5, "colour": 1}), "batch.colour"),
            (json!(true), "batch"),
        ];
        for (batch, field) in cases {
            let err = built(json!({"url": "https://hooks.example/", "batch": batch}))
                .map(|_| ())
                .unwrap_err();
            assert_eq!(err, [field], "{batch}");
        }
        let err = built(json!({"url": "https://hooks.example/",
            "batch": {"max_events": 0, "max_bytes": 1, "max_wait_ms": 99999}}))
        .map(|_| ())
        .unwrap_err();
        assert_eq!(
            err,
            ["batch.max_events", "batch.max_bytes", "batch.max_wait_ms"]
        );
    }
}
