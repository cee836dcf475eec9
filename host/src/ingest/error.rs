//! What can be wrong with an incoming event, and how the HTTP edge reports it.

use std::borrow::Cow;

/// Where in the request the fault is: a header name (`ce-specversion`), a JSON
/// path (`specversion`, `[3].source`) or a PutEvents path (`Entries[2].Detail`).
///
/// Static in the common single-event case; owned once a batch index is prefixed.
pub type Field = Cow<'static, str>;

/// Why an event (or a whole request) was refused.
///
/// Every variant knows its HTTP status ([`status`](Self::status)), a stable
/// snake_case code for the `{"error": {"code", ...}}` body ([`code`](Self::code)),
/// the field at fault ([`field`](Self::field)), and its EventBridge `ErrorCode`
/// for per-entry PutEvents results ([`put_events_code`](Self::put_events_code)).
/// `Display` is the human message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The Content-Type is neither a CloudEvents JSON format nor binary mode
    /// (no `ce-*` headers were sent). HTTP 415.
    #[error(
        "unsupported media type {content_type:?}: send application/cloudevents+json, \
         application/cloudevents-batch+json, or the event's attributes as ce-* headers"
    )]
    UnsupportedMediaType {
        /// The Content-Type received (empty when there was none).
        content_type: String,
    },

    /// The body (or a JSON-valued header-mode `data`) is not JSON. HTTP 400.
    #[error("{} is not valid JSON: {reason}", field_or_body(field))]
    MalformedJson {
        /// `None` for the whole body.
        field: Option<Field>,
        /// What the JSON parser reported.
        reason: String,
    },

    /// Valid JSON of the wrong shape (an event that is not an object, a batch
    /// that is not an array). HTTP 400.
    #[error("{} must be {expected}", field_or_body(field))]
    WrongShape {
        /// `None` for the whole body.
        field: Option<Field>,
        /// What was expected, e.g. "a JSON object".
        expected: &'static str,
    },

    /// A REQUIRED CloudEvents attribute is absent (or `null`). HTTP 400.
    #[error("the required attribute {field} is missing")]
    MissingAttribute {
        /// The attribute (or its `ce-` header) at fault.
        field: Field,
    },

    /// `specversion` is not `1.0`. HTTP 400.
    #[error("{field} is {value:?}; only CloudEvents \"1.0\" is accepted")]
    UnsupportedSpecVersion {
        /// `specversion` or `ce-specversion`.
        field: Field,
        /// The value received.
        value: String,
    },

    /// An attribute's value breaks its type rule (wrong JSON type, empty,
    /// not a URI, not RFC 3339, not a media type, ...). HTTP 400.
    #[error("{field} is invalid: {reason}")]
    InvalidAttribute {
        /// The attribute (or header) at fault.
        field: Field,
        /// Which rule it breaks.
        reason: Cow<'static, str>,
    },

    /// A member or `ce-` header names no valid attribute: names are lowercase
    /// ASCII letters and digits, and `data` is reserved. HTTP 400.
    #[error(
        "{field} is not a valid CloudEvents attribute name \
         (lowercase letters a-z and digits 0-9 only; `data` is reserved)"
    )]
    InvalidAttributeName {
        /// The member name (or header) at fault.
        field: Field,
    },

    /// A binary-mode header cannot be decoded (bad percent-encoding, bad
    /// quoting, not UTF-8), is repeated, or must not be sent. HTTP 400.
    #[error("header {field} is invalid: {reason}")]
    InvalidHeader {
        /// The header name.
        field: Field,
        /// Which rule it breaks.
        reason: Cow<'static, str>,
    },

    /// Both `data` and `data_base64` are present. HTTP 400.
    #[error("{field}: an event carries either data or data_base64, never both")]
    ConflictingData {
        /// The `data_base64` member.
        field: Field,
    },

    /// The payload does not fit its declared form (`data_base64` not base64,
    /// non-string `data` for a non-JSON content type, a binary-mode JSON body
    /// that does not parse). HTTP 400.
    #[error("{field} is invalid: {reason}")]
    InvalidData {
        /// `data` or `data_base64`.
        field: Field,
        /// Which rule it breaks.
        reason: Cow<'static, str>,
    },

    /// The event's stored (CloudEvents JSON) form is larger than the limit. HTTP 413.
    #[error(
        "{} is {size} bytes in CloudEvents JSON form, over the limit of {limit} bytes",
        field_or_event(field)
    )]
    EventTooLarge {
        /// `None` for a single event; the entry in a batch.
        field: Option<Field>,
        /// The serialised size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// A batch or PutEvents request holds more entries than allowed. HTTP 413.
    /// (A batch is refused as soon as entry `limit + 1` is seen, so the total
    /// is not counted.)
    #[error("{} holds more than {limit} entries", field_or_body(field))]
    TooManyEntries {
        /// `None` for a batch body; `Entries` for PutEvents.
        field: Option<Field>,
        /// The configured limit.
        limit: usize,
    },

    /// A required PutEvents field is absent. HTTP 400.
    #[error("{field} is required")]
    MissingField {
        /// The PutEvents path, e.g. `Entries[0].Source`.
        field: Field,
    },

    /// A PutEvents field has the wrong type or value. HTTP 400.
    #[error("{field} is invalid: {reason}")]
    InvalidField {
        /// The PutEvents path.
        field: Field,
        /// Which rule it breaks.
        reason: Cow<'static, str>,
    },

    /// A member name appears twice in an event's JSON object (or a PutEvents
    /// entry or request): which value counts would depend on the parser. HTTP 400.
    #[error("{field} is given more than once; member names must be unique")]
    DuplicateMember {
        /// The repeated member (`id`, `[2].source`, `Entries[0].Source`).
        field: Field,
    },

    /// A PutEvents `Detail` is not a string holding a JSON object. HTTP 400.
    #[error("{field} is malformed: {reason}")]
    MalformedDetail {
        /// The PutEvents path, e.g. `Entries[1].Detail`.
        field: Field,
        /// Why.
        reason: Cow<'static, str>,
    },
}

fn field_or_body(field: &Option<Field>) -> &str {
    field.as_deref().unwrap_or("the body")
}

fn field_or_event(field: &Option<Field>) -> &str {
    field.as_deref().unwrap_or("the event")
}

impl IngestError {
    /// The HTTP status this error answers with: 400, 413 or 415.
    pub fn status(&self) -> u16 {
        match self {
            Self::UnsupportedMediaType { .. } => 415,
            Self::EventTooLarge { .. } | Self::TooManyEntries { .. } => 413,
            _ => 400,
        }
    }

    /// The stable snake_case code of the API's error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::MalformedJson { .. } => "malformed_json",
            Self::WrongShape { .. } => "wrong_shape",
            Self::MissingAttribute { .. } => "missing_attribute",
            Self::UnsupportedSpecVersion { .. } => "unsupported_specversion",
            Self::InvalidAttribute { .. } => "invalid_attribute",
            Self::InvalidAttributeName { .. } => "invalid_attribute_name",
            Self::InvalidHeader { .. } => "invalid_header",
            Self::ConflictingData { .. } => "conflicting_data",
            Self::InvalidData { .. } => "invalid_data",
            Self::EventTooLarge { .. } => "event_too_large",
            Self::TooManyEntries { .. } => "too_many_entries",
            Self::MissingField { .. } => "missing_field",
            Self::InvalidField { .. } => "invalid_field",
            Self::MalformedDetail { .. } => "malformed_detail",
            Self::DuplicateMember { .. } => "duplicate_member",
        }
    }

    /// The header, JSON path or PutEvents path at fault, if one input is.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::UnsupportedMediaType { .. } => Some("content-type"),
            Self::MalformedJson { field, .. }
            | Self::WrongShape { field, .. }
            | Self::EventTooLarge { field, .. }
            | Self::TooManyEntries { field, .. } => field.as_deref(),
            Self::MissingAttribute { field }
            | Self::UnsupportedSpecVersion { field, .. }
            | Self::InvalidAttribute { field, .. }
            | Self::InvalidAttributeName { field }
            | Self::InvalidHeader { field, .. }
            | Self::ConflictingData { field }
            | Self::InvalidData { field, .. }
            | Self::MissingField { field }
            | Self::InvalidField { field, .. }
            | Self::MalformedDetail { field, .. }
            | Self::DuplicateMember { field } => Some(field),
        }
    }

    /// The EventBridge `ErrorCode` of a failed PutEvents entry:
    /// `MalformedDetail` when the Detail is not a JSON object, otherwise
    /// `InvalidArgument` (the only other non-retryable code that fits input
    /// errors; EventBridge has no per-entry code for an oversized entry).
    pub fn put_events_code(&self) -> &'static str {
        match self {
            Self::MalformedDetail { .. } => "MalformedDetail",
            _ => "InvalidArgument",
        }
    }

    /// Rewrites the field at fault (an attribute name becomes a header name,
    /// a batch path or a PutEvents path); `None` means "the event itself" and
    /// is offered as the empty string.
    pub(crate) fn map_field(self, f: impl Fn(&str) -> Field) -> Self {
        let opt = |field: Option<Field>| Some(f(field.as_deref().unwrap_or_default()));
        match self {
            Self::UnsupportedMediaType { .. } => self,
            Self::MalformedJson { field, reason } => Self::MalformedJson {
                field: opt(field),
                reason,
            },
            Self::WrongShape { field, expected } => Self::WrongShape {
                field: opt(field),
                expected,
            },
            Self::EventTooLarge { field, size, limit } => Self::EventTooLarge {
                field: opt(field),
                size,
                limit,
            },
            Self::TooManyEntries { field, limit } => Self::TooManyEntries {
                field: opt(field),
                limit,
            },
            Self::MissingAttribute { field } => Self::MissingAttribute { field: f(&field) },
            Self::UnsupportedSpecVersion { field, value } => Self::UnsupportedSpecVersion {
                field: f(&field),
                value,
            },
            Self::InvalidAttribute { field, reason } => Self::InvalidAttribute {
                field: f(&field),
                reason,
            },
            Self::InvalidAttributeName { field } => Self::InvalidAttributeName { field: f(&field) },
            Self::InvalidHeader { field, reason } => Self::InvalidHeader {
                field: f(&field),
                reason,
            },
            Self::ConflictingData { field } => Self::ConflictingData { field: f(&field) },
            Self::InvalidData { field, reason } => Self::InvalidData {
                field: f(&field),
                reason,
            },
            Self::MissingField { field } => Self::MissingField { field: f(&field) },
            Self::InvalidField { field, reason } => Self::InvalidField {
                field: f(&field),
                reason,
            },
            Self::MalformedDetail { field, reason } => Self::MalformedDetail {
                field: f(&field),
                reason,
            },
            Self::DuplicateMember { field } => Self::DuplicateMember { field: f(&field) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &'static str) -> Field {
        Cow::Borrowed(s)
    }

    #[test]
    fn every_variant_has_status_code_field_and_message() {
        let r = || Cow::Borrowed("why");
        let cases = [
            (
                IngestError::UnsupportedMediaType {
                    content_type: "a/b".into(),
                },
                415,
                "unsupported_media_type",
                Some("content-type"),
            ),
            (
                IngestError::MalformedJson {
                    field: None,
                    reason: "eof".into(),
                },
                400,
                "malformed_json",
                None,
            ),
            (
                IngestError::WrongShape {
                    field: Some(f("[1]")),
                    expected: "an object",
                },
                400,
                "wrong_shape",
                Some("[1]"),
            ),
            (
                IngestError::MissingAttribute { field: f("id") },
                400,
                "missing_attribute",
                Some("id"),
            ),
            (
                IngestError::UnsupportedSpecVersion {
                    field: f("specversion"),
                    value: "0.3".into(),
                },
                400,
                "unsupported_specversion",
                Some("specversion"),
            ),
            (
                IngestError::InvalidAttribute {
                    field: f("time"),
                    reason: r(),
                },
                400,
                "invalid_attribute",
                Some("time"),
            ),
            (
                IngestError::InvalidAttributeName { field: f("Ext") },
                400,
                "invalid_attribute_name",
                Some("Ext"),
            ),
            (
                IngestError::InvalidHeader {
                    field: f("ce-id"),
                    reason: r(),
                },
                400,
                "invalid_header",
                Some("ce-id"),
            ),
            (
                IngestError::ConflictingData {
                    field: f("data_base64"),
                },
                400,
                "conflicting_data",
                Some("data_base64"),
            ),
            (
                IngestError::InvalidData {
                    field: f("data"),
                    reason: r(),
                },
                400,
                "invalid_data",
                Some("data"),
            ),
            (
                IngestError::EventTooLarge {
                    field: None,
                    size: 2,
                    limit: 1,
                },
                413,
                "event_too_large",
                None,
            ),
            (
                IngestError::TooManyEntries {
                    field: Some(f("Entries")),
                    limit: 10,
                },
                413,
                "too_many_entries",
                Some("Entries"),
            ),
            (
                IngestError::MissingField {
                    field: f("Entries[0].Source"),
                },
                400,
                "missing_field",
                Some("Entries[0].Source"),
            ),
            (
                IngestError::InvalidField {
                    field: f("Entries[0].Time"),
                    reason: r(),
                },
                400,
                "invalid_field",
                Some("Entries[0].Time"),
            ),
            (
                IngestError::MalformedDetail {
                    field: f("Entries[0].Detail"),
                    reason: r(),
                },
                400,
                "malformed_detail",
                Some("Entries[0].Detail"),
            ),
        ];
        for (err, status, code, field) in cases {
            assert_eq!(
                (err.status(), err.code(), err.field()),
                (status, code, field),
                "{err:?}"
            );
            assert!(!err.to_string().is_empty());
            let expected = if code == "malformed_detail" {
                "MalformedDetail"
            } else {
                "InvalidArgument"
            };
            assert_eq!(err.put_events_code(), expected);
        }
    }

    #[test]
    fn messages_read_as_sentences() {
        let err = IngestError::InvalidAttribute {
            field: f("time"),
            reason: Cow::Borrowed("must be RFC 3339"),
        };
        assert_eq!(err.to_string(), "time is invalid: must be RFC 3339");
        let err = IngestError::EventTooLarge {
            field: None,
            size: 300,
            limit: 200,
        };
        assert_eq!(
            err.to_string(),
            "the event is 300 bytes in CloudEvents JSON form, over the limit of 200 bytes"
        );
    }

    #[test]
    fn fields_are_remapped() {
        let prefix = |s: &str| Cow::Owned(format!("[2].{s}"));
        let err = IngestError::MissingAttribute { field: f("id") }.map_field(prefix);
        assert_eq!(err.field(), Some("[2].id"));
        let whole = |s: &str| {
            Cow::Owned(if s.is_empty() {
                "[2]".to_owned()
            } else {
                s.to_owned()
            })
        };
        let err = IngestError::EventTooLarge {
            field: None,
            size: 2,
            limit: 1,
        }
        .map_field(whole);
        assert_eq!(err.field(), Some("[2]"));
        let err = IngestError::UnsupportedMediaType {
            content_type: String::new(),
        }
        .map_field(prefix);
        assert_eq!(err.field(), Some("content-type"));
    }
}
