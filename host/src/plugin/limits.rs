//! Per-invocation resource limits of a plugin.

use serde::{Deserialize, Serialize};

use super::engine::MAX_MEMORY_BYTES;

/// The limits one plugin invocation runs under. A rule or target may override
/// any of them; missing fields take the defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// CPU deadline in milliseconds, enforced with epoch ticks: a guest that
    /// computes longer traps ([`super::FailureKind::Deadline`]).
    pub cpu_ms: u64,
    /// Wall-clock limit in milliseconds for a whole invocation, including
    /// time blocked in host calls (outbound HTTP), which epochs cannot
    /// interrupt ([`super::FailureKind::Timeout`]).
    pub timeout_ms: u64,
    /// Largest linear memory in bytes; growing beyond it traps
    /// ([`super::FailureKind::OutOfMemory`]).
    pub memory_bytes: usize,
    /// Bytes a guest may pass into a single host call (log messages, HTTP
    /// bodies, ...).
    pub hostcall_bytes: usize,
    /// Events a transformer may return for one input event.
    pub max_output_events: usize,
    /// Total bytes (attributes and data) a transformer may return.
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
    /// The offending field, e.g. `memory_bytes`.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl PluginLimits {
    /// Checks every field; reports all problems at once.
    pub fn validate(&self) -> Result<(), Vec<LimitError>> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, field: &'static str, message: String| {
            if !ok {
                errors.push(LimitError { field, message });
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
            .iter()
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
}
