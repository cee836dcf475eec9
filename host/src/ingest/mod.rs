//! Ingest: turns what arrives over HTTP into validated CloudEvents.
//!
//! Two front doors, both pure functions of a request's headers and body (no
//! I/O; the HTTP server calls them and maps [`IngestError`] to its error body):
//!
//! - [`parse_cloudevents`]: the CloudEvents 1.0 HTTP protocol binding, in
//!   structured (`application/cloudevents+json`), batched
//!   (`application/cloudevents-batch+json`) and binary (`ce-*` headers) mode.
//! - [`parse_put_events`]: EventBridge's `PutEvents` JSON, each entry mapped
//!   to a CloudEvent.
//!
//! Every event ends as the CloudEvents JSON format object ([`Event`]), or,
//! on the HTTP path, as that object's stored JSON
//! ([`StoredEvent`](crate::event::StoredEvent), the object built only if
//! something asks for it), made only once all of these hold (CloudEvents 1.0
//! spec and JSON format):
//!
//! - `specversion` is exactly `"1.0"`; `id`, `source`, `type` are present
//!   non-empty strings; `null` attributes count as absent (and are dropped),
//!   except `data: null`, an explicit null payload.
//! - Strings hold no control characters or noncharacters; `source` is an
//!   RFC 3986 URI-reference; `dataschema` a URI with a scheme (fragment
//!   allowed); `time` RFC 3339 (kept as sent); `datacontenttype` a media type;
//!   `subject` non-empty.
//! - Extension names are `[a-z0-9]+` (not `data`). Longer than the spec's
//!   recommended 20 characters is accepted: that SHOULD binds producers, and
//!   refusing would only break interoperability. Extension values are strings,
//!   booleans or integers in the signed 32-bit range.
//! - No member name appears twice in the event object, a PutEvents entry or
//!   the PutEvents request (400 `duplicate_member`): which value counts would
//!   depend on the parser. Objects inside `data` are not checked (see
//!   `members.rs` for why).
//! - `data` and `data_base64` never both; `data_base64` is padded standard
//!   base64; with a non-JSON `datacontenttype`, `data` must be a string.
//! - The event's compact JSON form is at most `max_event_bytes` (413
//!   `event_too_large`; in a batch only that entry fails).
//!
//! Errors name their field: a header (`ce-id`, `content-type`), a JSON path
//! (`time`, `[3].source`) or a PutEvents path (`Entries[2].Detail`).
//!
//! Decisions where the specs leave room:
//!
//! - A batch with more than `max_batch_entries` events (and a PutEvents
//!   request with more than `max_put_events_entries`) is refused whole with
//!   413 `too_many_entries`: the request is too large, not malformed.
//! - Binary mode: `ce-*` values are strings (headers carry no JSON types);
//!   `ce-datacontenttype` is refused (the binding says MUST NOT; Content-Type
//!   carries it); a repeated `ce-*` header is refused; raw UTF-8 in a header
//!   is tolerated; a `text/*` body that is not UTF-8, or a body without a
//!   Content-Type, is kept byte-exact as `data_base64`.
//! - Structured mode ignores any `ce-*` headers (the binding allows them).
//! - Sizes are those of the stored compact JSON (whitespace in the request
//!   does not count): the length of the JSON written for the store where
//!   ingest writes it (structured and batched mode, and binary mode with a
//!   JSON body in stored form); otherwise a bound that costs nothing for
//!   events far below the limit, and a count near it.
//!
//! # Why the validation is ours and not `cloudevents-sdk`'s
//!
//! `cloudevents-sdk` 0.9 was evaluated as the validator and found unfit for
//! it: its builder and JSON deserializer only check that `source` is
//! non-empty (no URI-reference rule), accept `specversion` 0.3, check neither
//! extension names nor string characters, read `dataschema` with the WHATWG
//! URL parser, convert `time` to UTC (losing the sender's offset), and report
//! errors as text without the field path the API must return. Going through it
//! would also parse every event twice (JSON → SDK types → JSON map for
//! patterns and storage). So the rules above are checked directly on the
//! event's attributes as `serde_json` read them; `data` (in structured and
//! batched mode, and a binary-mode JSON body) is not even parsed into values
//! when its text is already in the form the store keeps (`canonical.rs`): it
//! is copied.
//!
//! The SDK is used where it fits: [`to_sdk_event`] and [`from_sdk_event`]
//! convert between bus events and SDK events (for Rust clients and bindings
//! built on the SDK; the latter runs the bus's rules), and the tests use the
//! SDK as an independent oracle: every event this module accepts must also
//! be accepted by the SDK's own JSON-format reader.

mod canonical;
mod cloudevents;
mod error;
mod members;
mod put_events;
mod sdk;
mod syntax;
mod validate;

pub(crate) use self::canonical::is_canonical;
pub use self::cloudevents::{
    BATCH_MEDIA_TYPE, CloudEventsBody, STRUCTURED_MEDIA_TYPE, parse_batch, parse_binary,
    parse_cloudevents, parse_structured, read_structured,
};
pub use self::error::{Field, IngestError};
pub use self::put_events::{DEFAULT_BUS, PutEventsEntry, parse_put_events};
pub use self::sdk::{from_sdk_event, to_sdk_event};
pub use crate::event::Event;

/// The largest `max_event_bytes` that may be configured (1 MiB).
pub const MAX_EVENT_BYTES_CEILING: usize = 1 << 20;

/// Size and count limits applied while ingesting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngestLimits {
    /// Largest CloudEvents JSON form of one event, in bytes (256 KiB by
    /// default, like EventBridge; at most [`MAX_EVENT_BYTES_CEILING`]).
    pub max_event_bytes: usize,
    /// Most events in one CloudEvents batch request (default 1000).
    pub max_batch_entries: usize,
    /// Most entries in one PutEvents request (default 10, like EventBridge).
    pub max_put_events_entries: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_event_bytes: 256 * 1024,
            max_batch_entries: 1000,
            max_put_events_entries: 10,
        }
    }
}

/// A configured [`IngestLimits`] that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid ingest limit {field}: {reason}")]
pub struct InvalidLimits {
    /// The limit at fault, e.g. `max_event_bytes`.
    pub field: &'static str,
    /// Why.
    pub reason: &'static str,
}

impl IngestLimits {
    /// Checks configured limits: every limit at least 1, and
    /// `max_event_bytes` at most [`MAX_EVENT_BYTES_CEILING`].
    pub fn validate(&self) -> Result<(), InvalidLimits> {
        let at_least_one = |field, value: usize| match value {
            0 => Err(InvalidLimits {
                field,
                reason: "must be at least 1",
            }),
            _ => Ok(()),
        };
        at_least_one("max_event_bytes", self.max_event_bytes)?;
        at_least_one("max_batch_entries", self.max_batch_entries)?;
        at_least_one("max_put_events_entries", self.max_put_events_entries)?;
        if self.max_event_bytes > MAX_EVENT_BYTES_CEILING {
            return Err(InvalidLimits {
                field: "max_event_bytes",
                reason: "must be at most 1 MiB (1048576)",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_are_valid() {
        let limits = IngestLimits::default();
        assert_eq!(limits.max_event_bytes, 262_144);
        assert_eq!(limits.validate(), Ok(()));
    }

    #[test]
    fn limits_are_bounded() {
        let too_big = IngestLimits {
            max_event_bytes: MAX_EVENT_BYTES_CEILING + 1,
            ..IngestLimits::default()
        };
        assert_eq!(too_big.validate().unwrap_err().field, "max_event_bytes");
        let ceiling = IngestLimits {
            max_event_bytes: MAX_EVENT_BYTES_CEILING,
            ..IngestLimits::default()
        };
        assert_eq!(ceiling.validate(), Ok(()));
        let zero = IngestLimits {
            max_batch_entries: 0,
            ..IngestLimits::default()
        };
        assert_eq!(zero.validate().unwrap_err().field, "max_batch_entries");
    }
}
