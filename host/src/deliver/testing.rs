//! Targets for tests of the engine and the router.
#![allow(clippy::unwrap_used, missing_docs)]

use super::Outcome;
use super::target::{Item, Target};
use crate::clock::{Millis, SharedClock};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};

/// A target that answers from a script (then delivers), recording each call.
#[derive(Debug, Default)]
pub struct Scripted {
    pub script: Mutex<Vec<Outcome>>,
    pub calls: Mutex<Vec<(Millis, usize)>>,
    pub clock: Mutex<Option<SharedClock>>,
    pub max_batch: usize,
}

impl Scripted {
    pub fn new(clock: SharedClock, script: Vec<Outcome>) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script),
            calls: Mutex::new(Vec::new()),
            clock: Mutex::new(Some(clock)),
            max_batch: 1,
        })
    }

    pub fn calls(&self) -> Vec<(Millis, usize)> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Target for Scripted {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn max_batch(&self) -> usize {
        self.max_batch.max(1)
    }

    async fn send(&self, batch: &[Item]) -> Vec<Outcome> {
        let now = self.clock.lock().unwrap().as_ref().unwrap().now_ms();
        self.calls.lock().unwrap().push((now, batch.len()));
        let mut script = self.script.lock().unwrap();
        batch
            .iter()
            .map(|_| {
                if script.is_empty() {
                    Outcome::Delivered { status: Some(200) }
                } else {
                    script.remove(0)
                }
            })
            .collect()
    }
}

/// A target that panics on events whose id is `boom` and delivers the rest,
/// recording the ids it delivered and whether each event came built.
#[derive(Debug, Default)]
pub struct PanicsOnBoom {
    /// Ids delivered.
    pub delivered: Mutex<Vec<String>>,
    /// For each delivered id, whether its event's object had been built.
    pub built: Mutex<Vec<bool>>,
}

#[async_trait]
impl Target for PanicsOnBoom {
    fn kind(&self) -> &'static str {
        "panics"
    }

    async fn send(&self, batch: &[Item]) -> Vec<Outcome> {
        for item in batch {
            assert!(item.event.id() != "boom", "a bug in a target");
            self.delivered
                .lock()
                .unwrap()
                .push(item.event.id().to_owned());
            self.built.lock().unwrap().push(item.event.is_built());
        }
        vec![Outcome::Delivered { status: None }; batch.len()]
    }
}

/// A target that fails chosen event ids a number of times (503), takes
/// `delay` per call, and records every call: (time, id, delivered?), and
/// the most calls it saw at once per `partitionkey`.
#[derive(Debug)]
pub struct FailsIds {
    pub fail: Mutex<std::collections::HashMap<String, u32>>,
    pub calls: Mutex<Vec<(Millis, String, bool)>>,
    pub clock: SharedClock,
    pub delay: std::time::Duration,
    in_flight: Mutex<std::collections::HashMap<String, usize>>,
    pub most_at_once: Mutex<std::collections::HashMap<String, usize>>,
}

impl FailsIds {
    pub fn new(clock: SharedClock, fail: &[(&str, u32)], delay: std::time::Duration) -> Arc<Self> {
        Arc::new(Self {
            fail: Mutex::new(fail.iter().map(|(id, n)| ((*id).to_owned(), *n)).collect()),
            calls: Mutex::default(),
            clock,
            delay,
            in_flight: Mutex::default(),
            most_at_once: Mutex::default(),
        })
    }

    /// Ids delivered, in delivery order.
    pub fn delivered(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, ok)| *ok)
            .map(|(_, id, _)| id.clone())
            .collect()
    }
}

#[async_trait]
impl Target for FailsIds {
    fn kind(&self) -> &'static str {
        "fails-ids"
    }

    async fn send(&self, batch: &[Item]) -> Vec<Outcome> {
        let keys: Vec<String> = batch
            .iter()
            .map(|i| {
                i.event
                    .event()
                    .str_attr("partitionkey")
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        for key in &keys {
            let mut in_flight = self.in_flight.lock().unwrap();
            let n = in_flight.entry(key.clone()).or_insert(0);
            *n += 1;
            let mut most = self.most_at_once.lock().unwrap();
            let m = most.entry(key.clone()).or_insert(0);
            *m = (*m).max(*n);
        }
        tokio::time::sleep(self.delay).await;
        let mut out = Vec::with_capacity(batch.len());
        for (item, key) in batch.iter().zip(&keys) {
            *self.in_flight.lock().unwrap().get_mut(key).unwrap() -= 1;
            let id = item.event.id().to_owned();
            let fail = {
                let mut fail = self.fail.lock().unwrap();
                match fail.get_mut(&id) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        true
                    }
                    _ => false,
                }
            };
            self.calls
                .lock()
                .unwrap()
                .push((self.clock.now_ms(), id, !fail));
            out.push(if fail {
                Outcome::Retry(super::Failure {
                    status: Some(503),
                    // A fixed wait (no jitter), so tests know a retry takes time.
                    retry_after: Some(std::time::Duration::from_secs(2)),
                    ..super::Failure::new(crate::store::FailureCode::HttpStatus, "HTTP 503")
                })
            } else {
                Outcome::Delivered { status: Some(200) }
            });
        }
        out
    }
}

/// A target that batches like an `http` target with `batch`: each call
/// gets one outcome for all its items (from the script, then delivered),
/// and is recorded as (time, ids, delivered?).
#[derive(Debug)]
pub struct Batched {
    pub batching: super::target::Batching,
    pub script: Mutex<Vec<Outcome>>,
    pub calls: Mutex<Vec<(Millis, Vec<String>, bool)>>,
    pub clock: SharedClock,
}

impl Batched {
    pub fn new(
        clock: SharedClock,
        batching: super::target::Batching,
        script: Vec<Outcome>,
    ) -> Arc<Self> {
        Arc::new(Self {
            batching,
            script: Mutex::new(script),
            calls: Mutex::default(),
            clock,
        })
    }

    pub fn calls(&self) -> Vec<(Millis, Vec<String>, bool)> {
        self.calls.lock().unwrap().clone()
    }

    /// Ids of the calls answered with a delivery, in order.
    pub fn delivered(&self) -> Vec<String> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(_, _, ok)| *ok)
            .flat_map(|(_, ids, _)| ids.clone())
            .collect()
    }
}

#[async_trait]
impl Target for Batched {
    fn kind(&self) -> &'static str {
        "batched"
    }

    fn batching(&self) -> super::target::Batching {
        self.batching
    }

    async fn send(&self, batch: &[Item]) -> Vec<Outcome> {
        let outcome = {
            let mut script = self.script.lock().unwrap();
            if script.is_empty() {
                Outcome::Delivered { status: Some(200) }
            } else {
                script.remove(0)
            }
        };
        let ids = batch.iter().map(|i| i.event.id().to_owned()).collect();
        let ok = outcome.failure().is_none();
        self.calls
            .lock()
            .unwrap()
            .push((self.clock.now_ms(), ids, ok));
        vec![outcome; batch.len()]
    }
}
