//! Per-invocation resource limits of a plugin, and how they are set: the
//! server's defaults (`[plugins.limits]`, refined per kind by
//! `[plugins.filter_limits]` and friends), then the admin's overrides for a
//! tenant (`PUT /v1/admin/tenants/{tenant}/plugin-limits`).

use serde::{Deserialize, Serialize};

use super::PluginKind;
use super::engine::MAX_MEMORY_BYTES;

/// The limits one plugin invocation runs under. Missing fields take the
/// defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// CPU deadline in milliseconds: the invocation's own CPU time, checked
    /// every epoch tick; a guest that computes longer traps
    /// ([`super::FailureKind::Deadline`]).
    pub cpu_ms: u64,
    /// Wall-clock limit in milliseconds for a whole invocation, including
    /// time blocked in host calls (outbound HTTP), which epochs cannot
    /// interrupt ([`super::FailureKind::Timeout`]). Time spent waiting for a
    /// CPU on a busy machine is not counted, so a computing guest always
    /// meets its CPU deadline first (when `cpu_ms` < `timeout_ms`).
    pub timeout_ms: u64,
    /// Largest linear memory in bytes; growing beyond it traps
    /// ([`super::FailureKind::OutOfMemory`]).
    pub memory_bytes: usize,
    /// Bytes a guest may pass into a single host call (log messages, HTTP
    /// bodies, ...), and a filter's or connector's result; more is
    /// [`super::FailureKind::OutputLimit`].
    pub hostcall_bytes: usize,
    /// Events a transformer may return for one input event
    /// ([`super::FailureKind::OutputLimit`]).
    pub max_output_events: usize,
    /// Total bytes (attributes and data) a transformer may return
    /// ([`super::FailureKind::OutputLimit`]).
    pub max_output_bytes: usize,
    /// Log bytes kept per invocation; the rest is dropped and counted.
    pub log_bytes: usize,
    /// Component resource handles (streams, requests, ...) alive at once.
    pub max_handles: usize,
    /// Fuel budget when the runtime meters fuel; `None` for unlimited.
    pub fuel: Option<u64>,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            cpu_ms: 100,
            timeout_ms: 10_000,
            memory_bytes: 64 << 20,
            hostcall_bytes: 4 << 20,
            max_output_events: 100,
            max_output_bytes: 1 << 20,
            log_bytes: 16 << 10,
            max_handles: 1_000,
            fuel: None,
        }
    }
}

/// One problem found by [`PluginLimits::validate`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct LimitError {
    /// The offending field, e.g. `memory_bytes` (or `connector.memory_bytes`
    /// when checking [`KindLimits`]).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl PluginLimits {
    /// Checks every field; reports all problems at once.
    pub fn validate(&self) -> Result<(), Vec<LimitError>> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, field: &str, message: String| {
            if !ok {
                errors.push(LimitError {
                    field: field.to_owned(),
                    message,
                });
            }
        };
        check(
            (1..=60_000).contains(&self.cpu_ms),
            "cpu_ms",
            "must be between 1 and 60000".into(),
        );
        check(
            (1..=300_000).contains(&self.timeout_ms),
            "timeout_ms",
            "must be between 1 and 300000".into(),
        );
        check(
            (1 << 16..=MAX_MEMORY_BYTES).contains(&self.memory_bytes),
            "memory_bytes",
            format!("must be between 65536 and {MAX_MEMORY_BYTES}"),
        );
        check(
            self.hostcall_bytes >= 1024,
            "hostcall_bytes",
            "must be at least 1024".into(),
        );
        check(
            self.max_output_events >= 1,
            "max_output_events",
            "must be at least 1".into(),
        );
        check(
            self.max_output_bytes >= 1024,
            "max_output_bytes",
            "must be at least 1024".into(),
        );
        check(
            self.max_handles >= 16,
            "max_handles",
            "must be at least 16".into(),
        );
        check(
            self.fuel != Some(0),
            "fuel",
            "must be positive when set".into(),
        );
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Some of the fields of [`PluginLimits`]: those set replace the ones of the
/// limits it is applied to. (Fuel is not here: it is metered only by
/// `busbar plugin test`.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsOverride {
    /// See [`PluginLimits::cpu_ms`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// See [`PluginLimits::timeout_ms`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// See [`PluginLimits::memory_bytes`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<usize>,
    /// See [`PluginLimits::hostcall_bytes`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostcall_bytes: Option<usize>,
    /// See [`PluginLimits::max_output_events`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_events: Option<usize>,
    /// See [`PluginLimits::max_output_bytes`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<usize>,
    /// See [`PluginLimits::log_bytes`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<usize>,
    /// See [`PluginLimits::max_handles`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_handles: Option<usize>,
}

impl LimitsOverride {
    /// `base` with this override's fields in place of its own.
    pub fn apply(&self, base: &PluginLimits) -> PluginLimits {
        PluginLimits {
            cpu_ms: self.cpu_ms.unwrap_or(base.cpu_ms),
            timeout_ms: self.timeout_ms.unwrap_or(base.timeout_ms),
            memory_bytes: self.memory_bytes.unwrap_or(base.memory_bytes),
            hostcall_bytes: self.hostcall_bytes.unwrap_or(base.hostcall_bytes),
            max_output_events: self.max_output_events.unwrap_or(base.max_output_events),
            max_output_bytes: self.max_output_bytes.unwrap_or(base.max_output_bytes),
            log_bytes: self.log_bytes.unwrap_or(base.log_bytes),
            max_handles: self.max_handles.unwrap_or(base.max_handles),
            fuel: base.fuel,
        }
    }

    /// Whether it overrides nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Overrides for every plugin kind (`all`) and for each kind (applied after
/// `all`): a tenant's plugin limits, as the admin API takes and shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsOverrides {
    /// For filters, transformers and connectors alike.
    pub all: LimitsOverride,
    /// For filters.
    pub filter: LimitsOverride,
    /// For transformers.
    pub transformer: LimitsOverride,
    /// For connectors.
    pub connector: LimitsOverride,
}

impl LimitsOverrides {
    /// The limits of `kind`: `base`'s, changed by `all`, then by the kind's
    /// override.
    pub fn apply(&self, base: &KindLimits, kind: PluginKind) -> PluginLimits {
        let one = match kind {
            PluginKind::Filter => &self.filter,
            PluginKind::Transformer => &self.transformer,
            PluginKind::Connector => &self.connector,
        };
        one.apply(&self.all.apply(base.get(kind)))
    }
}

/// The complete limits of each plugin kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KindLimits {
    /// Limits of filters.
    pub filter: PluginLimits,
    /// Limits of transformers.
    pub transformer: PluginLimits,
    /// Limits of connectors.
    pub connector: PluginLimits,
}

impl KindLimits {
    /// The same limits for every kind.
    pub fn uniform(limits: &PluginLimits) -> Self {
        Self {
            filter: limits.clone(),
            transformer: limits.clone(),
            connector: limits.clone(),
        }
    }

    /// The limits of `kind`.
    pub fn get(&self, kind: PluginKind) -> &PluginLimits {
        match kind {
            PluginKind::Filter => &self.filter,
            PluginKind::Transformer => &self.transformer,
            PluginKind::Connector => &self.connector,
        }
    }

    /// These limits with `overrides` applied (`all` first, then the kind's).
    /// Cannot fail; see [`Self::validate`].
    pub fn with(&self, overrides: &LimitsOverrides) -> Self {
        Self {
            filter: overrides.apply(self, PluginKind::Filter),
            transformer: overrides.apply(self, PluginKind::Transformer),
            connector: overrides.apply(self, PluginKind::Connector),
        }
    }

    /// Checks every kind's limits; fields are named `filter.cpu_ms`, ...
    pub fn validate(&self) -> Result<(), Vec<LimitError>> {
        let mut errors = Vec::new();
        for kind in [
            PluginKind::Filter,
            PluginKind::Transformer,
            PluginKind::Connector,
        ] {
            if let Err(problems) = self.get(kind).validate() {
                errors.extend(problems.into_iter().map(|p| LimitError {
                    field: format!("{}.{}", kind.as_str(), p.field),
                    message: p.message,
                }));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        PluginLimits::default().validate().unwrap();
    }

    #[test]
    fn reports_every_problem() {
        let limits = PluginLimits {
            cpu_ms: 0,
            memory_bytes: usize::MAX,
            fuel: Some(0),
            ..PluginLimits::default()
        };
        let fields: Vec<_> = limits
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["cpu_ms", "memory_bytes", "fuel"]);
    }

    #[test]
    fn unknown_fields_are_refused_and_missing_ones_default() {
        let l: PluginLimits = serde_json::from_str(r#"{"cpu_ms": 5}"#).unwrap();
        assert_eq!(l.cpu_ms, 5);
        assert_eq!(l.memory_bytes, PluginLimits::default().memory_bytes);
        assert!(serde_json::from_str::<PluginLimits>(r#"{"cpu": 5}"#).is_err());
    }

    #[test]
    fn overrides_apply_all_then_kind() {
        let base = KindLimits::uniform(&PluginLimits::default());
        let overrides: LimitsOverrides = serde_json::from_str(
            r#"{"all": {"cpu_ms": 50, "memory_bytes": 1048576},
                "connector": {"cpu_ms": 500, "timeout_ms": 30000}}"#,
        )
        .unwrap();
        let l = base.with(&overrides);
        assert_eq!((l.filter.cpu_ms, l.filter.memory_bytes), (50, 1 << 20));
        assert_eq!(l.transformer.cpu_ms, 50);
        assert_eq!((l.connector.cpu_ms, l.connector.timeout_ms), (500, 30_000));
        assert_eq!(l.connector.memory_bytes, 1 << 20);
        assert_eq!(l.filter.timeout_ms, PluginLimits::default().timeout_ms);
        assert!(LimitsOverrides::default().all.is_empty());
        assert_eq!(base.with(&LimitsOverrides::default()), base);
    }

    #[test]
    fn kind_limits_name_the_kind_of_each_problem() {
        let overrides: LimitsOverrides =
            serde_json::from_str(r#"{"transformer": {"cpu_ms": 0}, "all": {"max_handles": 1}}"#)
                .unwrap();
        let fields: Vec<_> = KindLimits::uniform(&PluginLimits::default())
            .with(&overrides)
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "filter.max_handles",
                "transformer.cpu_ms",
                "transformer.max_handles",
                "connector.max_handles"
            ]
        );
        assert!(serde_json::from_str::<LimitsOverrides>(r#"{"filters": {}}"#).is_err());
        assert!(serde_json::from_str::<LimitsOverrides>(r#"{"all": {"fuel": 1}}"#).is_err());
    }
}
