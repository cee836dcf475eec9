//! The CloudEvents 1.0 HTTP protocol binding and JSON-format data rules,
//! in both directions: ingest decodes requests with it, the `http` target
//! encodes deliveries with it, so the two sides cannot drift apart.
//!
//! - [`media`]: media types: which ones are JSON (the one rule the host
//!   and the guest SDK share), text, and the CloudEvents formats.
//! - [`headers`]: binary mode's attribute ↔ `ce-*` header mapping and the
//!   percent-encoding of header values.
//! - [`body`]: binary mode's body ↔ `data` / `data_base64`.
//! - [`view`]: an event's stored JSON read as binary mode needs it.
//!
//! Validation of what arrives (attribute names, types, sizes) is ingest's;
//! this module only says how the wire form maps to the event and back. It
//! depends only on [`crate::event`].

pub mod body;
pub mod headers;
pub mod media;
pub mod view;

/// Why an event cannot be laid out as an HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// An attribute name that is not a valid header name.
    #[error("attribute {0:?} cannot be an HTTP header")]
    HeaderName(String),
    /// `data_base64` that does not decode.
    #[error("data_base64 is not valid base64")]
    Base64,
    /// A `datacontenttype` that cannot be a `Content-Type` value.
    #[error("datacontenttype is not a valid Content-Type")]
    ContentType,
}
