//! The `bus` target: sends events on to another bus of the same tenant,
//! counting hops so a loop of bus targets ends in the dead-letter queue
//! instead of circling forever.

use super::target::{BuildContext, Item, Reference, Target, read_spec};
use super::{Failure, FailureCode, Outcome};
use crate::clock::SharedClock;
use crate::event::Event;
use crate::resource::{NAME_RULE, Problems, valid_name};
use crate::store::{EventLog, NewEvent};
use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

/// The extension that counts how many `bus` targets an event passed through.
pub const HOPS_EXTENSION: &str = "busbarhops";

/// Events one append writes at most.
const MAX_BATCH: usize = 256;

/// A `bus` target as written in a rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BusTargetSpec {
    /// The destination bus (of the rule's tenant).
    bus: String,
}

/// Delivers to another bus of the rule's tenant.
pub struct BusTarget {
    tenant: String,
    bus: String,
    log: Arc<dyn EventLog>,
    max_hops: u32,
    clock: SharedClock,
}

impl std::fmt::Debug for BusTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusTarget")
            .field("tenant", &self.tenant)
            .field("bus", &self.bus)
            .field("max_hops", &self.max_hops)
            .finish_non_exhaustive()
    }
}

/// Builds a `bus` target.
pub(super) fn build(
    members: &serde_json::Map<String, Value>,
    cx: &BuildContext<'_>,
) -> Result<Arc<dyn Target>, Problems> {
    let spec: BusTargetSpec = read_spec(members)?;
    if !valid_name(&spec.bus) {
        return Err(Problems::one("bus", NAME_RULE));
    }
    Ok(Arc::new(BusTarget {
        tenant: cx.tenant.to_owned(),
        bus: spec.bus,
        log: cx.services.log.clone(),
        max_hops: cx.services.max_hops,
        clock: cx.services.clock.clone(),
    }))
}

impl BusTarget {
    /// The event as forwarded (one more hop), or why it may not go on.
    fn forwarded(&self, event: &Event, now: i64) -> Result<NewEvent, Failure> {
        let hops = event
            .as_map()
            .get(HOPS_EXTENSION)
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if hops >= u64::from(self.max_hops) {
            return Err(Failure::new(
                FailureCode::LoopDetected,
                format!(
                    "event passed through {hops} bus targets (limit {})",
                    self.max_hops
                ),
            ));
        }
        let mut map = event.as_map().clone();
        map.insert(HOPS_EXTENSION.to_owned(), Value::from(hops + 1));
        let forwarded = Event::from_validated(map);
        Ok(NewEvent {
            tenant: self.tenant.clone(),
            bus: self.bus.clone(),
            event_id: forwarded.id().to_owned(),
            body: Bytes::from(forwarded.to_json_bytes()),
            ingested_ms: now,
            ..Default::default()
        })
    }
}

#[async_trait]
impl Target for BusTarget {
    fn kind(&self) -> &'static str {
        "bus"
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    async fn send(&self, batch: &[Item]) -> Vec<Outcome> {
        let now = self.clock.now_ms();
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        for item in batch {
            match self.forwarded(item.event.event(), now) {
                Ok(event) => {
                    events.push(event);
                    outcomes.push(None);
                }
                Err(failure) => outcomes.push(Some(Outcome::Permanent(failure))),
            }
        }
        let appended = if events.is_empty() {
            Outcome::Delivered { status: None }
        } else {
            match self.log.append(events).await {
                Ok(()) => Outcome::Delivered { status: None },
                Err(e) => Outcome::Retry(Failure::new(
                    FailureCode::StoreError,
                    format!("cannot append to bus {:?}: {e}", self.bus),
                )),
            }
        };
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| appended.clone()))
            .collect()
    }

    fn references(&self) -> Vec<(&'static str, Reference)> {
        vec![("bus", Reference::Bus(self.bus.clone()))]
    }
}
