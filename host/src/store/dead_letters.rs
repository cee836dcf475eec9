//! Dead letters: deliveries given up on, kept with their reason until the
//! tenant redrives or deletes them.

use super::failure::{AttemptError, Exhausted};
use super::{Millis, StoreResult};
use async_trait::async_trait;
use bytes::Bytes;

/// A dead letter's id: unique in its backend, increasing in the order dead
/// letters were recorded (lists page on it), never reused.
pub type DeadLetterId = i64;

/// A delivery that will not be retried.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// Its id.
    pub id: DeadLetterId,
    /// Owning tenant.
    pub tenant: String,
    /// Bus of the rule.
    pub bus: String,
    /// Rule name.
    pub rule: String,
    /// Target id.
    pub target: String,
    /// The CloudEvents `id`.
    pub event_id: String,
    /// The event in CloudEvents JSON format.
    pub event: Bytes,
    /// The rendered transform output, if any.
    pub body: Option<String>,
    /// The last attempt's failure.
    pub error: AttemptError,
    /// Attempts made.
    pub attempts: u32,
    /// Which limit ran out.
    pub exhausted: Exhausted,
    /// When the event was accepted.
    pub ingested_ms: Millis,
    /// When it was dead-lettered.
    pub created_ms: Millis,
}

/// Selects dead letters (all fields optional, combined with AND).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only this bus.
    pub bus: Option<String>,
    /// Only this rule.
    pub rule: Option<String>,
    /// Only this target.
    pub target: Option<String>,
}

impl DeadLetterFilter {
    /// Whether a dead letter passes the filter.
    pub fn matches(&self, d: &DeadLetter) -> bool {
        let ok = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        ok(&self.bus, &d.bus) && ok(&self.rule, &d.rule) && ok(&self.target, &d.target)
    }
}

/// Deliveries given up on (recorded by [`DeliveryJobs::dead_letter`](super::DeliveryJobs::dead_letter)).
#[async_trait]
pub trait DeadLetters: Send + Sync + 'static {
    /// A tenant's dead letters passing `filter`, newest first, with ids below
    /// `before` when given (paging), at most `limit`.
    async fn list_dead_letters(
        &self,
        tenant: &str,
        filter: &DeadLetterFilter,
        before: Option<DeadLetterId>,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetter>>;

    /// One of a tenant's dead letters.
    async fn dead_letter_entry(
        &self,
        tenant: &str,
        id: DeadLetterId,
    ) -> StoreResult<Option<DeadLetter>>;

    /// Deletes one of a tenant's dead letters; false if absent.
    async fn delete_dead_letter(&self, tenant: &str, id: DeadLetterId) -> StoreResult<bool>;

    /// Moves a tenant's dead letters (those with the given ids, if any, that
    /// pass `filter`) back to delivery as jobs due now with attempts reset
    /// and a fresh age budget; returns the ids moved, in increasing order.
    async fn redrive(
        &self,
        tenant: &str,
        ids: Option<&[DeadLetterId]>,
        filter: &DeadLetterFilter,
    ) -> StoreResult<Vec<DeadLetterId>>;
}
