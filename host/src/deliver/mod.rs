//! Delivery of routed events to their targets.
//!
//! Every kind of target implements one trait, [`Target`]: it takes a batch
//! of deliveries and answers one [`Outcome`] per delivery — delivered, retry
//! later, or permanent failure, with a [`FailureCode`]. The kinds live one
//! per file ([`http`] webhooks, [`queue`] pull queues, [`bus`] other buses,
//! [`wasm`] connector plugins) and are built from a rule's JSON by
//! [`target::TargetSpec`]. The [`engine`] applies the [`retry`] policy and
//! dead-lettering to every kind alike, so adding a kind is one new file.

use std::fmt;
use std::time::Duration;

use crate::event::StoredEvent;
pub use crate::store::FailureCode;

pub mod bus;
pub mod engine;
pub mod http;
pub mod queue;
pub mod retry;
pub mod target;
#[cfg(test)]
pub(crate) mod testing;
pub mod wasm;
mod webhook;

pub use self::target::{
    Batching, BoundTarget, BuildContext, Item, Reference, Target, TargetDirectory, TargetServices,
    TargetSpec,
};

/// What one delivery attempt achieved.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The target accepted the event.
    Delivered {
        /// The HTTP status the target answered with, for targets that speak HTTP.
        status: Option<u16>,
    },
    /// The attempt failed in a way that may succeed later (5xx, 408, 429,
    /// connection errors, timeouts): schedule another attempt.
    Retry(Failure),
    /// The attempt failed in a way that retrying cannot fix (most 4xx, a
    /// payload that cannot be rendered): dead-letter the event now.
    Permanent(Failure),
}

impl Outcome {
    /// The failure, unless the event was delivered.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Self::Delivered { .. } => None,
            Self::Retry(failure) | Self::Permanent(failure) => Some(failure),
        }
    }
}

/// Why a delivery attempt failed; recorded in the event's trace and in its
/// dead-letter entry (`error_code`, `error_message`, `last_status`).
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// Stable machine-readable code.
    pub code: FailureCode,
    /// Human-readable detail, e.g. the start of the target's error body.
    pub message: String,
    /// The HTTP status, when the target answered at all.
    pub status: Option<u16>,
    /// How long the target asked us to wait (`Retry-After`), uncapped; the
    /// retry policy decides how much of it to honour.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure without an HTTP status or `Retry-After`.
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            status: None,
            retry_after: None,
        }
    }

    /// The failure as the store keeps it.
    pub fn attempt_error(&self) -> crate::store::AttemptError {
        crate::store::AttemptError {
            code: self.code,
            message: self.message.clone(),
            status: self.status,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// What to deliver: the event, and optionally the rendered transform output,
/// which replaces the payload (the event still identifies the delivery).
#[derive(Clone, Copy, Debug)]
pub struct Payload<'a> {
    /// The event being delivered, with its stored JSON: structured and
    /// batched deliveries send those bytes, and binary mode reads its
    /// headers from them, rather than building and serialising the event.
    pub event: &'a StoredEvent,
    /// The rendered transform output, if the rule has a transform.
    pub body: Option<&'a str>,
}

impl Payload<'_> {
    /// The event in CloudEvents JSON format, as stored.
    pub fn event_json(&self) -> Vec<u8> {
        self.event.json().to_vec()
    }
}

/// Why a target or retry-policy configuration is invalid.
///
/// `field` and `reason` describe the first problem found; `more` lists the
/// others, so one answer can report everything that needs fixing.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {reason}{}", more_suffix(.more))]
pub struct SpecError {
    /// Path of the offending field, e.g. `auth.token_url` or `headers.X-Trace`.
    pub field: String,
    /// Human-readable reason.
    pub reason: String,
    /// Further problems found in the same spec, in document order.
    pub more: Vec<SpecProblem>,
}

/// One problem in a spec: a field path and what is wrong with it.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecProblem {
    /// Path of the offending field.
    pub field: String,
    /// Human-readable reason.
    pub reason: String,
}

impl SpecError {
    /// An error with a single problem.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
            more: Vec::new(),
        }
    }

    /// Every problem, the first one included.
    pub fn problems(&self) -> impl Iterator<Item = SpecProblem> + '_ {
        std::iter::once(SpecProblem {
            field: self.field.clone(),
            reason: self.reason.clone(),
        })
        .chain(self.more.iter().cloned())
    }

    /// Prefixes every field path, e.g. with `targets[2]` when the spec is
    /// part of a rule.
    pub fn within(mut self, prefix: &str) -> Self {
        let join = |field: &str| {
            if field.is_empty() {
                prefix.to_owned()
            } else {
                format!("{prefix}.{field}")
            }
        };
        self.field = join(&self.field);
        for problem in &mut self.more {
            problem.field = join(&problem.field);
        }
        self
    }

    /// Builds the error from collected problems; `Ok` when there are none.
    pub(crate) fn from_problems(problems: Vec<SpecProblem>) -> Result<(), Self> {
        let mut problems = problems.into_iter();
        match problems.next() {
            None => Ok(()),
            Some(first) => Err(Self {
                field: first.field,
                reason: first.reason,
                more: problems.collect(),
            }),
        }
    }
}

impl From<SpecError> for crate::resource::Problems {
    fn from(e: SpecError) -> Self {
        e.problems()
            .map(|p| crate::resource::Problem {
                field: p.field,
                message: p.reason,
            })
            .collect()
    }
}

fn more_suffix(more: &[SpecProblem]) -> String {
    more.iter()
        .map(|p| format!("; {}: {}", p.field, p.reason))
        .collect()
}

/// Collects validation problems in document order.
#[derive(Default)]
pub(crate) struct Problems(Vec<SpecProblem>);

impl Problems {
    /// Records a problem with `field`.
    pub(crate) fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(SpecProblem {
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// How many problems were recorded.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing was recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when nothing was recorded, else every problem.
    pub(crate) fn finish(self) -> Result<(), SpecError> {
        SpecError::from_problems(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_error_lists_every_problem_and_prefixes_paths() {
        let mut problems = Problems::default();
        problems.add("url", "must be http or https");
        problems.add("timeout_ms", "must be at most 60000");
        let err = problems.finish().unwrap_err().within("targets[1]");
        assert_eq!(err.field, "targets[1].url");
        assert_eq!(err.more[0].field, "targets[1].timeout_ms");
        assert_eq!(
            err.to_string(),
            "targets[1].url: must be http or https; targets[1].timeout_ms: must be at most 60000"
        );
        assert_eq!(err.problems().count(), 2);
        assert!(Problems::default().finish().is_ok());
    }
}
