//! Routing progress: which log entries are fully routed.
//!
//! An entry is routed when every delivery it caused is done or persisted.
//! Each piece of outstanding work holds a [`RoutingHold`] (clones of one per
//! entry); when the last clone drops, the entry is acknowledged to the log.
//! Nothing releases a hold by hand, so an early return or a panic in a
//! task holding one cannot stall routing progress: unwinding drops it too.
//! (A panic is a bug and is logged; the entry is still acknowledged, since
//! re-routing an event that makes the router panic would only panic again.)

use crate::deliver::engine::DoneGuard;
use crate::store::{AckToken, LogConsumer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Most acknowledgements sent to the log in one call.
const ACK_BATCH: usize = 4096;

/// Hands out holds and acknowledges entries whose holds are all gone.
#[derive(Debug)]
pub struct RoutingProgress {
    acks: mpsc::UnboundedSender<AckToken>,
}

/// Outstanding work for one log entry. Clone it for each piece of work;
/// the entry is acknowledged when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct RoutingHold(Arc<Hold>);

#[derive(Debug)]
struct Hold {
    token: AckToken,
    acks: mpsc::UnboundedSender<AckToken>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "a task routing an event panicked; the event counts as routed so routing goes on"
            );
        }
        // The receiver is gone only after shutdown gave up waiting.
        let _ = self.acks.send(self.token.clone());
    }
}

impl RoutingHold {
    /// This hold as the engine's done-guard for one delivery.
    pub fn guard(&self) -> DoneGuard {
        self.0.clone()
    }
}

impl RoutingProgress {
    /// Starts acknowledging to `consumer`. The returned task ends once this
    /// and every hold are dropped and the last acknowledgements are written.
    pub fn start(consumer: Arc<dyn LogConsumer>) -> (Self, JoinHandle<()>) {
        let (acks, rx) = mpsc::unbounded_channel();
        (Self { acks }, tokio::spawn(flush_acks(consumer, rx)))
    }

    /// A hold on `token`'s entry.
    pub fn hold(&self, token: AckToken) -> RoutingHold {
        RoutingHold(Arc::new(Hold {
            token,
            acks: self.acks.clone(),
        }))
    }
}

/// Writes acknowledgements in batches, retrying until the log takes them.
async fn flush_acks(consumer: Arc<dyn LogConsumer>, mut rx: mpsc::UnboundedReceiver<AckToken>) {
    let mut batch = Vec::with_capacity(ACK_BATCH);
    while rx.recv_many(&mut batch, ACK_BATCH).await > 0 {
        let mut backoff = Duration::from_millis(10);
        while let Err(e) = consumer.ack(batch.clone()).await {
            tracing::error!(error = %e, "cannot record routing progress; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        batch.clear();
    }
}
