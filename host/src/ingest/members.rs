//! JSON objects read with their member names checked for repeats.
//!
//! RFC 8259 leaves the meaning of a repeated name to the parser, and parsers
//! disagree (serde_json keeps the last value, others the first or refuse), so an
//! event whose `id` is given twice would have an identity that depends on who reads
//! it. The objects that hold an event's attributes — a CloudEvent in structured or
//! batched mode, a PutEvents entry and the PutEvents request itself — are therefore
//! read with [`Members`], which remembers the first repeated name so the caller can
//! refuse the event (400 `duplicate_member`, naming the member).
//!
//! Objects *inside* `data` (or a PutEvents `Detail`) are not checked: the payload is
//! opaque to CloudEvents, Busbar stores it as parsed (so what rules matched is exactly
//! what targets receive), and refusing it would turn away payloads other CloudEvents
//! implementations pass through, for the cost of a name set per nested object.
//!
//! An object's `data` member is not parsed into a value here: it is kept as the text
//! it came as ([`RawData`]), which ingest copies into the stored event when it is
//! already in stored form (see `canonical.rs`), and parses only when it is not.

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::fmt;

/// The name of the member read as text rather than as a value.
const DATA: &str = "data";

/// An object's `data` member as it was sent.
#[derive(Debug)]
pub(crate) struct RawData<'de> {
    /// The member's value, as JSON text (no surrounding whitespace).
    pub text: &'de RawValue,
    /// How many members with a non-null value come before it: where it goes
    /// back among the others once `null` members are dropped.
    pub position: usize,
}

/// A top-level JSON value as ingest needs it: an object's members, or the fact that
/// it was something else.
#[derive(Debug)]
pub(crate) enum Members<'de> {
    /// An object: its members but `data`, last value kept for a repeated name;
    /// its `data`, as text; and the first repeated name.
    Object {
        map: Map<String, Value>,
        data: Option<RawData<'de>>,
        repeated: Option<String>,
    },
    /// Any other JSON value (skipped, not built).
    NotObject,
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MembersVisitor)
    }
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Members<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Members<'de>, A::Error> {
        let mut map = Map::new();
        let mut data: Option<RawData<'de>> = None;
        let mut repeated = None;
        let mut non_null = 0;
        while let Some(name) = access.next_key::<String>()? {
            if name == DATA {
                let text = access.next_value()?;
                if data.is_some() {
                    repeated.get_or_insert_with(|| name.clone());
                }
                data = Some(RawData {
                    text,
                    position: non_null,
                });
                continue;
            }
            let value: Value = access.next_value()?;
            if map.contains_key(&name) {
                repeated.get_or_insert_with(|| name.clone());
            }
            non_null += usize::from(!value.is_null());
            map.insert(name, value);
        }
        Ok(Members::Object {
            map,
            data,
            repeated,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Members<'de>, A::Error> {
        while access.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Members::NotObject)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Members<'de>, E> {
        Ok(Members::NotObject)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Members<'de>, E> {
        Ok(Members::NotObject)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Members<'de>, E> {
        Ok(Members::NotObject)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Members<'de>, E> {
        Ok(Members::NotObject)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Members<'de>, E> {
        Ok(Members::NotObject)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Members<'de>, E> {
        Ok(Members::NotObject)
    }
}

/// A PutEvents request `{"Entries": [...], ...}`: its entries read as [`Members`],
/// every other member skipped.
#[derive(Debug)]
pub(crate) enum Request<'de> {
    /// An object: its `Entries` (`None` when absent, `Some(None)` when not an array),
    /// and the first member name it repeats.
    Object {
        entries: Option<Option<Vec<Members<'de>>>>,
        repeated: Option<String>,
    },
    /// Any other JSON value.
    NotObject,
}

impl<'de> Deserialize<'de> for Request<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RequestVisitor)
    }
}

struct RequestVisitor;

impl<'de> Visitor<'de> for RequestVisitor {
    type Value = Request<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Request<'de>, A::Error> {
        let mut seen: Vec<String> = Vec::new();
        let mut repeated = None;
        let mut entries = None;
        while let Some(name) = access.next_key::<String>()? {
            if seen.contains(&name) {
                repeated.get_or_insert_with(|| name.clone());
            }
            if name == "Entries" {
                entries = Some(access.next_value::<Entries>()?.0);
            } else {
                access.next_value::<IgnoredAny>()?;
            }
            seen.push(name);
        }
        Ok(Request::Object { entries, repeated })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, access: A) -> Result<Request<'de>, A::Error> {
        MembersVisitor.visit_seq(access).map(|_| Request::NotObject)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Request<'de>, E> {
        Ok(Request::NotObject)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Request<'de>, E> {
        Ok(Request::NotObject)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Request<'de>, E> {
        Ok(Request::NotObject)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Request<'de>, E> {
        Ok(Request::NotObject)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Request<'de>, E> {
        Ok(Request::NotObject)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Request<'de>, E> {
        Ok(Request::NotObject)
    }
}

/// The value of `Entries`: the entries if it is an array.
struct Entries<'de>(Option<Vec<Members<'de>>>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EntriesVisitor)
    }
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Entries<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Entries<'de>, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = access.next_element::<Members>()? {
            entries.push(entry);
        }
        Ok(Entries(Some(entries)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Entries<'de>, A::Error> {
        while access.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Entries(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Entries<'de>, E> {
        Ok(Entries(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Entries<'de>, E> {
        Ok(Entries(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Entries<'de>, E> {
        Ok(Entries(None))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Entries<'de>, E> {
        Ok(Entries(None))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Entries<'de>, E> {
        Ok(Entries(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Entries<'de>, E> {
        Ok(Entries(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(json: &str) -> Members<'_> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_first_repeated_name_is_kept() {
        let Members::Object { map, repeated, .. } =
            members(r#"{"id": "a", "source": "s", "id": "b", "source": "t"}"#)
        else {
            panic!()
        };
        assert_eq!(repeated.as_deref(), Some("id"));
        assert_eq!(map["id"], "b", "last value, as serde_json");
        let Members::Object { repeated, .. } = members(r#"{"id": "a", "data": {"k": 1, "k": 2}}"#)
        else {
            panic!()
        };
        assert_eq!(repeated, None, "inside data is not checked");
        for other in ["[1, {}]", "1", "-1", "1.5", "\"x\"", "null", "true"] {
            assert!(matches!(members(other), Members::NotObject), "{other}");
        }
        assert!(serde_json::from_str::<Members>(r#"{"a": }"#).is_err());
    }

    #[test]
    fn data_is_kept_as_text_with_its_place_among_the_non_null_members() {
        let Members::Object {
            map,
            data: Some(data),
            repeated: None,
        } = members(r#"{"a": 1, "b": null, "data" :  {"k": [1, 2]} , "c": 2}"#)
        else {
            panic!()
        };
        assert_eq!(data.text.get(), r#"{"k": [1, 2]}"#);
        assert_eq!(
            data.position, 1,
            "after `a`; `b` is null and will be dropped"
        );
        assert!(!map.contains_key("data"));
        assert_eq!(map.len(), 3);
        let Members::Object { repeated, .. } = members(r#"{"data": 1, "d\u0061ta": 2}"#) else {
            panic!()
        };
        assert_eq!(repeated.as_deref(), Some("data"));
    }

    #[test]
    fn put_events_requests() {
        let request: Request = serde_json::from_str(
            r#"{"x": 1, "Entries": [{"Source": "a", "Source": "b"}, 3], "x": 2}"#,
        )
        .unwrap();
        let Request::Object { entries, repeated } = request else {
            panic!()
        };
        assert_eq!(repeated.as_deref(), Some("x"));
        let entries = entries.unwrap().unwrap();
        assert!(matches!(
            &entries[0],
            Members::Object { repeated: Some(name), .. } if name == "Source"
        ));
        assert!(matches!(entries[1], Members::NotObject));
        let Request::Object { entries, .. } =
            serde_json::from_str::<Request>(r#"{"Entries": {}}"#).unwrap()
        else {
            panic!()
        };
        assert!(matches!(entries, Some(None)));
        assert!(matches!(
            serde_json::from_str::<Request>("[]").unwrap(),
            Request::NotObject
        ));
    }
}
