//! The event as the bus stores, routes and delivers it.
//!
//! Every accepted event — whatever mode it arrived in — is normalised to the
//! CloudEvents 1.0 JSON format: context attributes and extensions at the top
//! level, the payload under `data` (JSON) or `data_base64` (binary). Patterns
//! match this form, the store keeps its bytes, and targets render it back into
//! binary or structured mode.

use serde_json::{Map, Value};

/// A validated CloudEvent in JSON format.
///
/// Invariant: the map holds at least `specversion`, `id`, `source` and `type`
/// as strings (the ingest module only builds valid events).
#[derive(Clone, Debug, PartialEq)]
pub struct Event(Map<String, Value>);

impl Event {
    /// Wraps an already validated CloudEvents JSON object.
    ///
    /// Callers outside `ingest` use this only for events read back from the store.
    pub fn from_validated(map: Map<String, Value>) -> Self {
        Self(map)
    }

    /// The `id` attribute.
    pub fn id(&self) -> &str {
        self.str_attr("id").unwrap_or_default()
    }

    /// The `source` attribute.
    pub fn source(&self) -> &str {
        self.str_attr("source").unwrap_or_default()
    }

    /// The `type` attribute.
    pub fn event_type(&self) -> &str {
        self.str_attr("type").unwrap_or_default()
    }

    /// A string attribute or extension, if present.
    pub fn str_attr(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }

    /// The JSON object (what patterns match against).
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// Mutable access, for the bus's own extensions (e.g. the hop counter).
    pub fn as_map_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.0
    }

    /// Consumes the event into its JSON object.
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }

    /// Serialises the event in CloudEvents JSON format.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Serialising a map of JSON values cannot fail.
        serde_json::to_vec(&self.0).unwrap_or_default()
    }
}
