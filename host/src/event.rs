//! The event as the bus stores, routes and delivers it.
//!
//! Every accepted event — whatever mode it arrived in — is normalised to the
//! CloudEvents 1.0 JSON format: context attributes and extensions at the top
//! level, the payload under `data` (JSON) or `data_base64` (binary). Patterns
//! match this form, the store keeps its bytes, and targets render it back into
//! binary or structured mode.

use bytes::Bytes;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// The CloudEvents extension a replayed event carries: the replay's name.
pub const REPLAY_EXTENSION: &str = "replayname";

/// The attributes of an event its trace shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventHead {
    /// The CloudEvents `source` (empty when missing).
    pub source: String,
    /// The CloudEvents `type` (empty when missing).
    pub event_type: String,
    /// The `replayname` extension, on a replayed event.
    pub replayname: Option<String>,
}

/// [`EventHead`] as read from JSON, borrowing where it can.
#[derive(serde::Deserialize)]
struct RawHead<'a> {
    #[serde(borrow, default)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    replayname: Option<Cow<'a, str>>,
}

impl EventHead {
    /// Reads the head of an event's CloudEvents JSON without building the
    /// event; `None` when it is not a JSON object whose head attributes,
    /// where present, are strings.
    pub fn parse(json: &[u8]) -> Option<Self> {
        let raw: RawHead<'_> = serde_json::from_slice(json).ok()?;
        Some(Self {
            source: raw.source.map(Cow::into_owned).unwrap_or_default(),
            event_type: raw.event_type.map(Cow::into_owned).unwrap_or_default(),
            replayname: raw.replayname.map(Cow::into_owned),
        })
    }

    /// The head of a built event: what [`Self::parse`] reads from its JSON.
    pub fn of(event: &Event) -> Option<Self> {
        Self::of_members(&event.0)
    }

    /// The head of an event's members (all of them, or all but `data`).
    pub fn of_members(members: &Map<String, Value>) -> Option<Self> {
        let text = |name: &str| match members.get(name) {
            None => Some(None),
            Some(Value::String(s)) => Some(Some(s.clone())),
            Some(_) => None,
        };
        Some(Self {
            source: text("source")?.unwrap_or_default(),
            event_type: text("type")?.unwrap_or_default(),
            replayname: text(REPLAY_EXTENSION)?,
        })
    }
}

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

/// An event on its way to its targets: its `id`, its CloudEvents JSON as
/// the store holds it, and its JSON object, built only when something asks
/// for it.
///
/// Most deliveries never need the object: a webhook sends the stored bytes
/// (structured and batched mode) or reads the few attributes binary mode
/// needs straight from them. Building the object of every matched event
/// was a second full parse per event (the matcher reads the JSON once
/// already), allocating a map for every object in its `data`. A filter or
/// transform plugin, an input transformer, a `bus` target, a Wasm
/// connector or a FIFO target asks for the object, and the first to ask
/// builds it once for all.
#[derive(Clone)]
pub struct StoredEvent(Arc<Stored>);

struct Stored {
    id: String,
    json: Bytes,
    event: OnceLock<Event>,
    /// `None` inside: the event has no head (see [`EventHead::parse`]).
    head: OnceLock<Option<Arc<EventHead>>>,
}

impl StoredEvent {
    /// An event whose object is at hand, with its CloudEvents JSON.
    pub fn built(event: Event, json: Bytes) -> Self {
        Self(Arc::new(Stored {
            id: event.id().to_owned(),
            json,
            event: OnceLock::from(event),
            head: OnceLock::new(),
        }))
    }

    /// An event built in memory (a transform's output, say), serialised
    /// here once for all its deliveries.
    pub fn of(event: Event) -> Self {
        let json = Bytes::from(event.to_json_bytes());
        Self::built(event, json)
    }

    /// An event known only by its stored JSON, which must be a CloudEvents
    /// JSON object (one the matcher has read whole, say); the object is
    /// built when first asked for.
    pub fn from_json(id: String, json: Bytes) -> Self {
        Self(Arc::new(Stored {
            id,
            json,
            event: OnceLock::new(),
            head: OnceLock::new(),
        }))
    }

    /// An event ingest has just read: its stored JSON, written by ingest,
    /// and the head it read on the way, so neither the door nor the log
    /// reads the JSON again for them.
    pub fn ingested(id: String, json: Bytes, head: Option<EventHead>) -> Self {
        Self(Arc::new(Stored {
            id,
            json,
            event: OnceLock::new(),
            head: OnceLock::from(head.map(Arc::new)),
        }))
    }

    /// The event's `id` (it identifies the delivery across retries).
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The event in CloudEvents JSON format, as stored.
    pub fn json(&self) -> &Bytes {
        &self.0.json
    }

    /// The event's JSON object, built from [`Self::json`] on first use.
    ///
    /// JSON that is not an object (which [`Self::from_json`]'s callers rule
    /// out) gives an event with only its `id`, and an error in the log, so
    /// a broken entry fails its own delivery rather than the process.
    pub fn event(&self) -> &Event {
        self.0.event.get_or_init(|| build(&self.0.id, &self.0.json))
    }

    /// The event's head: as its producer read it, else from the built
    /// object, else read from the JSON (once).
    pub fn head(&self) -> Option<Arc<EventHead>> {
        self.0
            .head
            .get_or_init(|| {
                match self.0.event.get() {
                    Some(event) => EventHead::of(event),
                    None => EventHead::parse(&self.0.json),
                }
                .map(Arc::new)
            })
            .clone()
    }

    /// Consumes the handle into the event's object, building it if no one
    /// has (and cloning it if another handle shares it).
    pub fn into_event(self) -> Event {
        match Arc::try_unwrap(self.0) {
            Ok(stored) => match stored.event.into_inner() {
                Some(event) => event,
                None => build(&stored.id, &stored.json),
            },
            Err(shared) => StoredEvent(shared).event().clone(),
        }
    }

    /// Whether the object has been built (for tests and diagnostics).
    pub fn is_built(&self) -> bool {
        self.0.event.get().is_some()
    }
}

/// Builds the object of an event from its stored JSON; see [`StoredEvent::event`].
fn build(id: &str, json: &[u8]) -> Event {
    match serde_json::from_slice::<Value>(json) {
        Ok(Value::Object(map)) => Event(map),
        _ => {
            tracing::error!(event_id = %id, "a stored event is not a JSON object");
            let mut map = Map::new();
            map.insert("id".to_owned(), Value::String(id.to_owned()));
            Event(map)
        }
    }
}

impl fmt::Debug for StoredEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredEvent")
            .field("id", &self.0.id)
            .field("bytes", &self.0.json.len())
            .field("built", &self.is_built())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(value: Value) -> Event {
        match value {
            Value::Object(map) => Event::from_validated(map),
            other => panic!("not an object: {other}"),
        }
    }

    /// The router traces an event with the head ingest handed over when
    /// there is one, and with the head it reads otherwise: both must be
    /// the same, including where the reading finds none.
    #[test]
    fn the_head_of_a_built_event_is_the_head_read_from_its_json() {
        let base = json!({"specversion": "1.0", "id": "e1", "source": "s\u{e9}/\"q\"", "type": "t.x",
                          "data": {"source": "not this one", "replayname": 3}});
        let mut replayed = base.clone();
        replayed[REPLAY_EXTENSION] = json!("fix-1");
        let mut odd = base.clone();
        odd[REPLAY_EXTENSION] = json!(7);
        let mut bare = base.clone();
        bare.as_object_mut().map(|m| m.remove("type"));
        for (value, expected) in [
            (base, Some(("s\u{e9}/\"q\"", "t.x", None))),
            (replayed, Some(("s\u{e9}/\"q\"", "t.x", Some("fix-1")))),
            (odd, None),
            (bare, Some(("s\u{e9}/\"q\"", "", None))),
        ] {
            let event = event(value);
            let built = EventHead::of(&event);
            let read = EventHead::parse(&event.to_json_bytes());
            assert_eq!(built, read, "{event:?}");
            let expected =
                expected.map(|(source, event_type, replay): (&str, &str, Option<&str>)| {
                    EventHead {
                        source: source.into(),
                        event_type: event_type.into(),
                        replayname: replay.map(str::to_owned),
                    }
                });
            assert_eq!(built, expected, "{event:?}");
        }
    }
}
