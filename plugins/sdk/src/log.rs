//! Logging to the host: [`log()`] and the [`trace!`](crate::trace),
//! [`debug!`](crate::debug), [`info!`](crate::info), [`warn!`](crate::warn)
//! and [`error!`](macro@crate::error) macros.
//!
//! In a component, messages go to the host's `log` import, which attributes
//! them to the plugin and the event and bounds their volume. Natively (unit
//! tests) they are captured per thread; read them with
//! [`testing::take_logs`](crate::testing::take_logs).

/// Severity of a log message: the `log-level` enum of the WIT.
///
/// ```
/// use busbar_sdk::log::Level;
/// assert!(Level::Warn > Level::Info);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Fine-grained diagnostics.
    Trace,
    /// Diagnostics useful while developing a plugin.
    Debug,
    /// Normal operation worth recording.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// A failure.
    Error,
}

/// Records `message` at `level`. Never fails; the host may drop messages
/// beyond its volume limit.
///
/// ```
/// use busbar_sdk::log::{Level, log};
/// use busbar_sdk::testing::take_logs;
///
/// log(Level::Info, "hello");
/// assert_eq!(take_logs(), vec![(Level::Info, "hello".to_owned())]);
/// ```
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::__private::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::record_log(level, message);
}

/// Logs a `format!`-style message at [`Level::Trace`].
///
/// ```
/// busbar_sdk::trace!("value = {}", 1);
/// ```
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => {
        $crate::log::log($crate::log::Level::Trace, &::std::format!($($arg)+))
    };
}

/// Logs a `format!`-style message at [`Level::Debug`].
///
/// ```
/// busbar_sdk::debug!("value = {}", 1);
/// ```
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => {
        $crate::log::log($crate::log::Level::Debug, &::std::format!($($arg)+))
    };
}

/// Logs a `format!`-style message at [`Level::Info`].
///
/// ```
/// busbar_sdk::info!("delivered {} events", 3);
/// ```
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => {
        $crate::log::log($crate::log::Level::Info, &::std::format!($($arg)+))
    };
}

/// Logs a `format!`-style message at [`Level::Warn`].
///
/// ```
/// busbar_sdk::warn!("field {} missing, using default", "amount");
/// ```
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => {
        $crate::log::log($crate::log::Level::Warn, &::std::format!($($arg)+))
    };
}

/// Logs a `format!`-style message at [`Level::Error`].
///
/// ```
/// busbar_sdk::error!("receiver answered {}", 500);
/// ```
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => {
        $crate::log::log($crate::log::Level::Error, &::std::format!($($arg)+))
    };
}
