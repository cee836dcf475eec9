//! Bus and queue settings: what `PUT /v1/buses/{bus}` and
//! `PUT /v1/queues/{queue}` may say, checked member by member.

use crate::door::{DoorSettings, MAX_DEDUP_WINDOW_S};
use crate::resource::{Fields, Problems};
use serde_json::Value;

/// A bus's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct BusSettings {
    /// Free text.
    pub description: Option<String>,
    /// Deduplication window in seconds (0, the default: off; at most
    /// [`MAX_DEDUP_WINDOW_S`]).
    pub dedup_window_s: u32,
    /// Whether schemas are inferred from the events the bus accepts.
    pub schema_discovery: bool,
    /// Whether each event gets a trace ("where did my event go?"); on
    /// unless the bus says `"trace": false`.
    pub trace: bool,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            description: None,
            dedup_window_s: 0,
            schema_discovery: false,
            trace: true,
        }
    }
}

/// A queue's settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueSettings {
    /// Free text.
    pub description: Option<String>,
}

/// Reads a settings object whose only member is `description`.
fn description_only(value: &Value, what: &str) -> Result<Option<String>, Problems> {
    let mut problems = Problems::new();
    let mut description = None;
    if let Some(mut f) = Fields::of(value, "", what, &mut problems) {
        f.deny_unknown(&["description"]);
        description = f.optional::<String>("description");
    }
    problems.finish().map(|()| description)
}

impl BusSettings {
    /// Reads bus settings; every problem is reported.
    pub fn parse(value: &Value) -> Result<Self, Problems> {
        let mut problems = Problems::new();
        let mut settings = Self::default();
        if let Some(mut f) = Fields::of(value, "", "a bus body", &mut problems) {
            f.deny_unknown(&["description", "dedup_window_s", "schema_discovery", "trace"]);
            settings.description = f.optional::<String>("description");
            if let Some(window) = f.raw("dedup_window_s") {
                match window.as_u64().and_then(|w| u32::try_from(w).ok()) {
                    Some(w) if w <= MAX_DEDUP_WINDOW_S => settings.dedup_window_s = w,
                    _ => f.problem(
                        "dedup_window_s",
                        format!(
                            "must be a whole number of seconds from 0 (off) to {MAX_DEDUP_WINDOW_S}"
                        ),
                    ),
                }
            }
            settings.schema_discovery = f.optional::<bool>("schema_discovery").unwrap_or(false);
            settings.trace = f.optional::<bool>("trace").unwrap_or(true);
        }
        problems.finish().map(|()| settings)
    }

    /// What the ingest door needs of these settings.
    pub fn door(&self) -> DoorSettings {
        DoorSettings {
            dedup_window_s: self.dedup_window_s,
            schema_discovery: self.schema_discovery,
        }
    }
}

impl QueueSettings {
    /// Reads queue settings; every problem is reported.
    pub fn parse(value: &Value) -> Result<Self, Problems> {
        Ok(Self {
            description: description_only(value, "a queue body")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settings_refuse_wrong_types_and_unknown_members() {
        assert_eq!(
            BusSettings::parse(&json!({"description": "orders"})).unwrap(),
            BusSettings {
                description: Some("orders".into()),
                ..BusSettings::default()
            }
        );
        assert!(!BusSettings::parse(&json!({"trace": false})).unwrap().trace);
        assert!(BusSettings::parse(&json!({"trace": 1})).is_err());
        let p = BusSettings::parse(&json!({"description": 5, "colour": "red"})).unwrap_err();
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["colour", "description"]);
        assert!(QueueSettings::parse(&json!([])).is_err());
    }

    #[test]
    fn door_settings_are_checked() {
        let s =
            BusSettings::parse(&json!({"dedup_window_s": 300, "schema_discovery": true})).unwrap();
        assert_eq!(
            s.door(),
            DoorSettings {
                dedup_window_s: 300,
                schema_discovery: true
            }
        );
        let p = BusSettings::parse(&json!({"dedup_window_s": 86_401, "schema_discovery": "yes"}))
            .unwrap_err();
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["dedup_window_s", "schema_discovery"]);
        for bad in [json!(-1), json!(1.5), json!("300")] {
            assert!(BusSettings::parse(&json!({ "dedup_window_s": bad })).is_err());
        }
        assert_eq!(
            BusSettings::parse(&json!({"dedup_window_s": 0}))
                .unwrap()
                .dedup_window_s,
            0
        );
    }
}
