//! Wake-ups for long-polling queue consumers.
//!
//! Messages live in the store; this only lets a `receive` call that found the
//! queue empty sleep until something is pushed, instead of polling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// One [`Notify`] per (tenant, queue), created on demand.
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
