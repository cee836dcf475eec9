//! Bus and queue settings: what `PUT /v1/buses/{bus}` and
//! `PUT /v1/queues/{queue}` may say, checked member by member.

use crate::resource::{Fields, Problems};
use serde_json::Value;

/// A bus's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct BusSettings {
    /// Free text.
    pub description: Option<String>,
    /// Whether each event gets a trace ("where did my event go?"); on
    /// unless the bus says `"trace": false`.
    pub trace: bool,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            description: None,
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
            f.deny_unknown(&["description", "trace"]);
            settings.description = f.optional::<String>("description");
            settings.trace = f.optional::<bool>("trace").unwrap_or(true);
        }
        problems.finish().map(|()| settings)
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
                trace: true,
            }
        );
        assert!(!BusSettings::parse(&json!({"trace": false})).unwrap().trace);
        assert!(BusSettings::parse(&json!({"trace": 1})).is_err());
        let p = BusSettings::parse(&json!({"description": 5, "colour": "red"})).unwrap_err();
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["colour", "description"]);
        assert!(QueueSettings::parse(&json!([])).is_err());
    }
}
