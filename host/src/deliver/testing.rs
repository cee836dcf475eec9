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
/// recording the ids it delivered.
#[derive(Debug, Default)]
pub struct PanicsOnBoom {
    /// Ids delivered.
    pub delivered: Mutex<Vec<String>>,
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
        }
        vec![Outcome::Delivered { status: None }; batch.len()]
    }
}
