//! A filter that logs megabytes, through the `log` import and on
//! stdout/stderr: the host must truncate and count instead of buffering it
//! all or failing.
//!
//! Config: `bytes` (default 16 MiB) through the log import in messages of
//! `message_bytes` (default 64 KiB); `stdio_bytes` (default 4 MiB) each to
//! stdout and stderr.

use std::io::Write;

use busbar_sdk::prelude::*;

/// Logs a flood, then passes the event.
pub struct FloodLog;

impl Filter for FloodLog {
    fn filter(_event: &Event, cx: &Context) -> Result<bool, PluginError> {
        let total: usize = cx.config().parse_or("bytes", 16 << 20)?;
        let size: usize = cx.config().parse_or("message_bytes", 64 << 10)?;
        let stdio: usize = cx.config().parse_or("stdio_bytes", 4 << 20)?;
        let message = "x".repeat(size.max(1));
        let mut sent = 0;
        while sent < total {
            info!("{message}");
            sent += message.len();
        }
        let line = [b'y'; 4096];
        let mut written = 0;
        while written < stdio {
            // A host that closes the streams is fine: the flood just stops.
            let out = std::io::stdout().write_all(&line);
            let err = std::io::stderr().write_all(&line);
            if out.is_err() && err.is_err() {
                break;
            }
            written += line.len();
        }
        Ok(true)
    }
}

busbar_sdk::filter!(FloodLog);

#[cfg(test)]
mod tests {
    use super::*;
    use busbar_sdk::testing::take_logs;

    #[test]
    fn logs_the_configured_volume() {
        let cx = Context::new(Config::from_pairs([
            ("bytes", "1000"),
            ("message_bytes", "100"),
            ("stdio_bytes", "0"),
        ]));
        assert!(FloodLog::filter(&Event::new("1", "s", "t"), &cx).unwrap());
        let logs = take_logs();
        assert_eq!(logs.len(), 10);
        assert_eq!(logs[0].1.len(), 100);
    }
}
