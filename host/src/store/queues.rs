//! Pull queues: durable messages that consumers receive, hide for a
//! visibility timeout, and acknowledge with the receipt of that receive.

use super::StoreResult;
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;

/// A message to put on a pull queue.
#[derive(Clone, Debug, PartialEq)]
pub struct NewQueueMessage {
    /// Owning tenant.
    pub tenant: String,
    /// Queue name.
    pub queue: String,
    /// The message body: the event or its rendered transform.
    pub body: Bytes,
}

/// A message handed to a consumer.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedMessage {
    /// Opaque token that acknowledges this receive of the message (a later
    /// receive of the same message gets a new one; the old one stops working).
    pub receipt: String,
    /// The message body.
    pub body: Bytes,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
}

/// How many messages one queue holds (visible or in flight).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueDepth {
    /// Owning tenant.
    pub tenant: String,
    /// Queue name.
    pub queue: String,
    /// Messages on it.
    pub messages: u64,
}

/// Durable pull queues.
#[async_trait]
pub trait Queues: Send + Sync + 'static {
    /// Puts messages on queues (in order per queue); durable when `Ok`.
    async fn queue_push(&self, messages: Vec<NewQueueMessage>) -> StoreResult<()>;

    /// Receives up to `max` visible messages, oldest first, and hides them
    /// for `visibility`.
    async fn queue_receive(
        &self,
        tenant: &str,
        queue: &str,
        max: usize,
        visibility: Duration,
    ) -> StoreResult<Vec<ReceivedMessage>>;

    /// Deletes the messages whose current receipts are given; returns how many.
    async fn queue_ack(&self, tenant: &str, queue: &str, receipts: &[String])
    -> StoreResult<usize>;

    /// Messages on a queue (visible or in flight).
    async fn queue_depth(&self, tenant: &str, queue: &str) -> StoreResult<u64>;

    /// Depth of every non-empty queue.
    async fn queue_depths(&self) -> StoreResult<Vec<QueueDepth>>;

    /// Deletes every message of a queue.
    async fn queue_purge(&self, tenant: &str, queue: &str) -> StoreResult<()>;
}
