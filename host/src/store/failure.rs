//! Why a delivery failed, in the words the store keeps (and dead letters,
//! traces and metrics show): a [`FailureCode`], a message and the HTTP status
//! of the last answer, plus [`Exhausted`] — which limit ended the retries.

use serde::{Deserialize, Serialize};

macro_rules! failure_codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal,)+) => {
        /// A stable, machine-readable reason for a failed delivery attempt.
        ///
        /// Serialised in `snake_case` (the strings below); these strings are
        /// part of the API (dead letters' `error_code`) and of the store.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum FailureCode {
            $($(#[$doc])* $variant,)+
        }

        impl FailureCode {
            /// Every code.
            pub const ALL: &'static [FailureCode] = &[$(Self::$variant,)+];

            /// The code as stored and shown.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }
    };
}

failure_codes! {
    /// The target answered with a status that is not 2xx (see the HTTP target's table).
    HttpStatus = "http_status",
    /// The target answered 429.
    RateLimited = "rate_limited",
    /// No TCP/TLS connection could be made.
    ConnectError = "connect_error",
    /// No complete answer within the target's timeout.
    Timeout = "timeout",
    /// The OAuth2 token endpoint failed.
    AuthError = "auth_error",
    /// The event could not be rendered for the target (bad base64, ...).
    RenderError = "render_error",
    /// The connection failed mid-request.
    RequestError = "request_error",
    /// The destination is refused by the egress policy.
    ForbiddenDestination = "forbidden_destination",
    /// An input transformer produced text that is not the JSON its template promised.
    TransformInvalidJson = "transform_invalid_json",
    /// A connector said the delivery may succeed later.
    ConnectorRetryable = "connector_retryable",
    /// A connector said the delivery cannot succeed.
    ConnectorPermanent = "connector_permanent",
    /// The plugin (or the version a rule pins) no longer exists.
    PluginMissing = "plugin_missing",
    /// The plugin is of another kind than the rule needs.
    PluginKind = "plugin_kind",
    /// The plugin version is paused after repeated crashes.
    PluginPaused = "plugin_paused",
    /// The plugin could not be loaded.
    PluginLoad = "plugin_load",
    /// The plugin ran out of CPU time.
    PluginDeadline = "plugin_deadline",
    /// The plugin tried to grow its memory beyond the limit.
    PluginOutOfMemory = "plugin_out_of_memory",
    /// The plugin trapped (panic, stack overflow, ...).
    PluginTrap = "plugin_trap",
    /// The plugin said the event is invalid.
    PluginInvalidEvent = "plugin_invalid_event",
    /// The plugin said its configuration is unusable.
    PluginInvalidConfig = "plugin_invalid_config",
    /// The plugin returned too many events or bytes.
    PluginOutputLimit = "plugin_output_limit",
    /// The plugin reported an internal error (or the host failed).
    PluginInternal = "plugin_internal",
    /// The plugin did not finish within its wall-clock timeout.
    PluginTimeout = "plugin_timeout",
    /// The plugin returned something the bus cannot use.
    PluginInvalidOutput = "plugin_invalid_output",
    /// The event passed through too many `bus` targets.
    LoopDetected = "loop_detected",
    /// The rule or target of a scheduled delivery no longer exists.
    TargetRemoved = "target_removed",
    /// A delivery was deferred because its target was at its in-flight cap.
    TargetBusy = "target_busy",
    /// The store refused a write the target needed (queue and bus targets).
    StoreError = "store_error",
    /// A stored delivery could not be read back (should not happen).
    Corrupt = "corrupt",
    /// A code this version does not know (written by a newer version).
    Unknown = "unknown",
}

impl FailureCode {
    /// Parses a stored code; codes this version does not know read as [`Unknown`](Self::Unknown).
    pub fn parse(s: &str) -> Self {
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == s)
            .unwrap_or(Self::Unknown)
    }
}

/// Codes compare with their stored strings (`code == "http_status"`).
impl PartialEq<&str> for FailureCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for FailureCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl std::fmt::Display for FailureCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the last attempt failed, as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptError {
    /// Machine-readable code.
    pub code: FailureCode,
    /// Human-readable detail.
    pub message: String,
    /// HTTP status of the last response, if there was one.
    pub status: Option<u16>,
}

impl AttemptError {
    /// An error without an HTTP status.
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            status: None,
        }
    }
}

/// Which limit ended a delivery's retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exhausted {
    /// The retry policy's `max_attempts` ran out.
    MaxAttempts,
    /// The retry policy's `max_event_age_s` ran out (or the next attempt would
    /// have come after it).
    MaxEventAge,
    /// The failure was permanent: retrying cannot help.
    Permanent,
}

impl Exhausted {
    /// Every value.
    pub const ALL: [Exhausted; 3] = [Self::MaxAttempts, Self::MaxEventAge, Self::Permanent];

    /// The name as stored and shown (`max_attempts`, `max_event_age`, `permanent`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxAttempts => "max_attempts",
            Self::MaxEventAge => "max_event_age",
            Self::Permanent => "permanent",
        }
    }

    /// Parses a stored name. A name this version does not know (written
    /// by a newer version) reads as [`Permanent`](Self::Permanent): the
    /// retries ended for a reason this version cannot name, and reading
    /// the rest of the dead letter matters more.
    pub fn parse(s: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .unwrap_or(Self::Permanent)
    }
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_match_serde() {
        for code in FailureCode::ALL {
            assert_eq!(FailureCode::parse(code.as_str()), *code);
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::Value::String(code.as_str().to_owned())
            );
        }
        assert_eq!(FailureCode::parse("from_the_future"), FailureCode::Unknown);
        assert_eq!(Exhausted::parse("from_the_future"), Exhausted::Permanent);
        for e in Exhausted::ALL {
            assert_eq!(Exhausted::parse(e.as_str()), e);
            assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
        }
    }
}
