//! The errors a plugin returns to the host: [`PluginError`] from filters,
//! transformers and configuration checks, [`DeliveryError`] per event from
//! connectors.

use std::fmt;

/// Why a filter or transformer could not handle an event, or why a
/// configuration is unusable: the `plugin-error` variant of the WIT.
///
/// ```
/// use busbar_sdk::PluginError;
///
/// let err = PluginError::invalid_config("`threshold` must be a number");
/// assert_eq!(err.to_string(), "invalid config: `threshold` must be a number");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginError {
    /// The event cannot be handled by this plugin (missing field, malformed
    /// data); the message says what is wrong with it.
    InvalidEvent(String),
    /// The configuration lacks a key or has an unusable value; the message
    /// names the key.
    InvalidConfig(String),
    /// Any other failure inside the plugin.
    Internal(String),
}

impl PluginError {
    /// An [`PluginError::InvalidEvent`] with `message`.
    ///
    /// ```
    /// # use busbar_sdk::PluginError;
    /// assert!(matches!(PluginError::invalid_event("x"), PluginError::InvalidEvent(_)));
    /// ```
    pub fn invalid_event(message: impl Into<String>) -> Self {
        Self::InvalidEvent(message.into())
    }

    /// An [`PluginError::InvalidConfig`] with `message`.
    ///
    /// ```
    /// # use busbar_sdk::PluginError;
    /// assert!(matches!(PluginError::invalid_config("x"), PluginError::InvalidConfig(_)));
    /// ```
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::InvalidConfig(message.into())
    }

    /// An [`PluginError::Internal`] with `message`.
    ///
    /// ```
    /// # use busbar_sdk::PluginError;
    /// assert!(matches!(PluginError::internal("x"), PluginError::Internal(_)));
    /// ```
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }

    /// The message, without the kind.
    ///
    /// ```
    /// # use busbar_sdk::PluginError;
    /// assert_eq!(PluginError::internal("boom").message(), "boom");
    /// ```
    pub fn message(&self) -> &str {
        match self {
            Self::InvalidEvent(m) | Self::InvalidConfig(m) | Self::Internal(m) => m,
        }
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidEvent(m) => write!(f, "invalid event: {m}"),
            Self::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            Self::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl std::error::Error for PluginError {}

/// Why a connector failed to deliver one event: the `delivery-error`
/// variant of the WIT.
///
/// ```
/// use busbar_sdk::DeliveryError;
///
/// let err = DeliveryError::retry_after("503 Service Unavailable", 2_000);
/// assert!(err.is_retryable());
/// assert!(!DeliveryError::permanent("400 Bad Request").is_retryable());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// A transient failure: the host retries the event under the rule's
    /// retry policy.
    Retryable {
        /// Why the attempt failed.
        message: String,
        /// How long the receiver asked to wait before retrying, in
        /// milliseconds (e.g. from `Retry-After`).
        retry_after_ms: Option<u64>,
    },
    /// A failure retrying cannot fix: the host dead-letters the event.
    Permanent(String),
}

impl DeliveryError {
    /// A [`DeliveryError::Retryable`] without a requested delay.
    ///
    /// ```
    /// # use busbar_sdk::DeliveryError;
    /// assert_eq!(DeliveryError::retryable("timeout").retry_after_ms(), None);
    /// ```
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable {
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// A [`DeliveryError::Retryable`] asking to wait `retry_after_ms`.
    ///
    /// ```
    /// # use busbar_sdk::DeliveryError;
    /// assert_eq!(DeliveryError::retry_after("429", 1000).retry_after_ms(), Some(1000));
    /// ```
    pub fn retry_after(message: impl Into<String>, retry_after_ms: u64) -> Self {
        Self::Retryable {
            message: message.into(),
            retry_after_ms: Some(retry_after_ms),
        }
    }

    /// A [`DeliveryError::Permanent`].
    ///
    /// ```
    /// # use busbar_sdk::DeliveryError;
    /// assert!(matches!(DeliveryError::permanent("gone"), DeliveryError::Permanent(_)));
    /// ```
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent(message.into())
    }

    /// Whether the host will retry the event.
    ///
    /// ```
    /// # use busbar_sdk::DeliveryError;
    /// assert!(DeliveryError::retryable("x").is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. })
    }

    /// The requested retry delay of a retryable error.
    ///
    /// ```
    /// # use busbar_sdk::DeliveryError;
    /// assert_eq!(DeliveryError::permanent("x").retry_after_ms(), None);
    /// ```
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::Retryable { retry_after_ms, .. } => *retry_after_ms,
            Self::Permanent(_) => None,
        }
    }
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retryable {
                message,
                retry_after_ms: Some(ms),
            } => write!(f, "retryable: {message} (retry after {ms} ms)"),
            Self::Retryable { message, .. } => write!(f, "retryable: {message}"),
            Self::Permanent(message) => write!(f, "permanent: {message}"),
        }
    }
}

impl std::error::Error for DeliveryError {}

/// A configuration problem found while delivering is permanent: retrying
/// with the same configuration cannot succeed.
impl From<PluginError> for DeliveryError {
    fn from(err: PluginError) -> Self {
        Self::Permanent(err.to_string())
    }
}
