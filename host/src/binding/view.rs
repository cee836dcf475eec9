//! An event's stored CloudEvents JSON read as binary mode needs it, without
//! building the event: each attribute as a JSON value (attributes are a few
//! short strings), the payload (`data`) as the JSON text it is stored as.
//!
//! Binary mode sends the attributes as headers and the payload as the body.
//! Building the whole event for that allocated a map for every object in
//! its `data` only to serialise them again; here `data` stays a slice of the
//! stored bytes, and a JSON payload goes out as that slice. The store holds
//! the compact form `serde_json` writes, so the slice is byte for byte what
//! serialising the parsed payload gives.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

/// The attributes and payload of an event's CloudEvents JSON, borrowed.
#[derive(Debug)]
pub struct EventView<'a> {
    /// Every member but `data`, in stored order (a repeated name keeps its
    /// last value, as the event's map does).
    attributes: Vec<(Cow<'a, str>, Value)>,
    /// `data` as its JSON text, when present.
    data: Option<&'a RawValue>,
}

impl<'a> EventView<'a> {
    /// Reads an event's CloudEvents JSON; fails when it is not a JSON object.
    pub fn parse(json: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(json)
    }

    /// The attributes and extensions, `data` aside (`data_base64` and
    /// `datacontenttype` included).
    pub fn attributes(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.attributes.iter().map(|(name, value)| (&**name, value))
    }

    /// One attribute's value, if present (names are unique: a repeated
    /// one replaced its earlier value while reading).
    pub fn attribute(&self, name: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value)
    }

    /// A string attribute, if present.
    pub fn str_attr(&self, name: &str) -> Option<&str> {
        self.attribute(name).and_then(Value::as_str)
    }

    /// `data` as its JSON text; `None` when absent or `null`.
    pub fn data(&self) -> Option<&'a RawValue> {
        self.data.filter(|raw| raw.get() != "null")
    }

    /// `data` as its JSON text, `null` included; `None` when absent.
    pub fn data_text(&self) -> Option<&'a RawValue> {
        self.data
    }
}

impl<'de> Deserialize<'de> for EventView<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ViewVisitor)
    }
}

struct ViewVisitor;

impl<'de> Visitor<'de> for ViewVisitor {
    type Value = EventView<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CloudEvent as a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<EventView<'de>, A::Error> {
        let mut view = EventView {
            attributes: Vec::with_capacity(8),
            data: None,
        };
        while let Some(Name(name)) = access.next_key()? {
            if name == "data" {
                view.data = Some(access.next_value()?);
            } else {
                let value: Value = access.next_value()?;
                view.attributes.retain(|(n, _)| *n != name);
                view.attributes.push((name, value));
            }
        }
        Ok(view)
    }
}

/// A member name, borrowed unless it holds escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(NameVisitor)
    }
}

struct NameVisitor;

impl<'de> Visitor<'de> for NameVisitor {
    type Value = Name<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: de::Error>(self, name: &'de str) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Borrowed(name)))
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Owned(name.to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn attributes_are_values_and_data_is_its_stored_text() {
        let json = br#"{"specversion":"1.0","id":"e\u0031","source":"s","type":"t","n":3,
                        "data":{"a":[1,{"b":null}],"c":"\u00e9"},"x\u0079":true}"#;
        let view = EventView::parse(json).unwrap();
        let names: Vec<&str> = view.attributes().map(|(n, _)| n).collect();
        assert_eq!(names, ["specversion", "id", "source", "type", "n", "xy"]);
        assert_eq!(view.str_attr("id"), Some("e1"));
        assert_eq!(view.attribute("n"), Some(&json!(3)));
        assert_eq!(view.attribute("data"), None);
        assert_eq!(
            view.data().map(RawValue::get),
            Some(r#"{"a":[1,{"b":null}],"c":"\u00e9"}"#)
        );
    }

    #[test]
    fn null_or_absent_data_is_none_and_a_repeated_name_keeps_its_last_value() {
        let view = EventView::parse(br#"{"id":"a","data":null,"id":"b"}"#).unwrap();
        assert_eq!(view.data().map(RawValue::get), None);
        assert_eq!(view.str_attr("id"), Some("b"));
        assert_eq!(view.attributes().count(), 1);
        assert!(EventView::parse(br#"{"id":"a"}"#).unwrap().data().is_none());
    }

    #[test]
    fn what_is_not_an_object_is_refused() {
        for bad in [&b"[1]"[..], b"\"s\"", b"{\"id\":", b""] {
            assert!(EventView::parse(bad).is_err(), "{bad:?}");
        }
    }
}
