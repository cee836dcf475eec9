//! EventBridge input transformers: `input`, `input_path`, and
//! `input_paths_map` + `input_template`.
//!
//! (Stub with the public API; the implementation lands on the `transform` branch.)

use serde::Deserialize;
use serde_json::Value;

/// A transform as written in a rule (`transform` field) or sent to the tester.
///
/// Exactly one mode: `input` (constant JSON), `input_path` (select part of the
/// event), or `input_paths_map` + `input_template`.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    /// Variables: name → JSONPath into the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_paths_map: Option<serde_json::Map<String, Value>>,
    /// Template with `<var>` placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_template: Option<String>,
    /// Constant JSON sent instead of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// JSONPath selecting the part of the event to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_path: Option<String>,
}

/// Why a transform spec is invalid.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct TransformError {
    /// The offending field, e.g. `input_paths_map.id` or `input_template`.
    pub field: String,
    /// Human-readable reason.
    pub reason: String,
}

/// Why rendering failed for one event (permanent for that delivery).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

/// Values for the reserved variables (`<busbar.rule-name>`, ...).
#[derive(Clone, Debug, Default)]
pub struct RenderContext<'a> {
    /// The rule being applied.
    pub rule_name: &'a str,
    /// When the bus accepted the event, RFC 3339.
    pub ingestion_time: &'a str,
}

/// A compiled transform, ready to render events.
#[derive(Clone, Debug)]
pub struct Transform {}

impl TransformSpec {
    /// Validates and compiles the spec.
    pub fn compile(&self) -> Result<Transform, TransformError> {
        Err(TransformError {
            field: String::new(),
            reason: "not implemented".into(),
        })
    }
}

impl Transform {
    /// Renders the target input for one event.
    pub fn render(&self, _event: &Value, _ctx: &RenderContext<'_>) -> Result<String, RenderError> {
        Err(RenderError("not implemented".into()))
    }
}
