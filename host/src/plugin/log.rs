//! The `busbar:plugin/log` capability and guest stdout/stderr capture.
//!
//! Both feed one bounded buffer per invocation: at most
//! [`super::PluginLimits::log_bytes`] bytes of messages are kept; the tail of
//! an over-long message and every later message are dropped and counted,
//! never a trap. Kept records go to the host's `tracing` log (tagged with
//! tenant, plugin, version and event id) and into the invocation result, so
//! that `busbar plugin test` can print them.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::Serialize;
use wasmtime::component::HasData;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use super::bindings::log as wit;
use super::bindings::types::LogLevel as WitLevel;

/// Severity of a plugin log record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Fine-grained diagnostics.
    Trace,
    /// Development diagnostics.
    Debug,
    /// Normal operation (and guest stdout).
    Info,
    /// Handled surprises (and guest stderr).
    Warn,
    /// Failures.
    Error,
}

impl LogLevel {
    /// The level's name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// Where a log record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    /// The `busbar:plugin/log` interface.
    Log,
    /// The guest's standard output.
    Stdout,
    /// The guest's standard error.
    Stderr,
    /// The host itself (e.g. the "bytes dropped" notice).
    Host,
}

/// One log record of one plugin invocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogRecord {
    /// Severity.
    pub level: LogLevel,
    /// Where it came from.
    pub source: LogSource,
    /// The message, possibly truncated (then `truncated` is set).
    pub message: String,
    /// Whether the tail of the message was dropped by the byte limit.
    pub truncated: bool,
    /// Tenant that owns the plugin.
    pub tenant: String,
    /// Plugin name.
    pub plugin: String,
    /// Plugin version.
    pub version: u32,
    /// Id of the event being handled (empty for `validate-config`).
    pub event_id: String,
}

/// Who is logging: copied into every record.
#[derive(Clone, Debug, Default)]
pub struct LogTag {
    /// Tenant that owns the plugin.
    pub tenant: String,
    /// Plugin name.
    pub plugin: String,
    /// Plugin version.
    pub version: u32,
    /// Event being handled.
    pub event_id: String,
}

#[derive(Debug, Default)]
struct Buffer {
    tag: LogTag,
    records: Vec<LogRecord>,
    cap: usize,
    used: usize,
    dropped_bytes: usize,
    dropped_records: usize,
    stdout_line: Vec<u8>,
    stderr_line: Vec<u8>,
}

impl Buffer {
    fn push(&mut self, level: LogLevel, source: LogSource, message: &str) {
        let room = self.cap - self.used;
        if room == 0 {
            self.dropped_bytes += message.len();
            self.dropped_records += 1;
            return;
        }
        let (kept, truncated) = if message.len() <= room {
            (message, false)
        } else {
            let mut end = room;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            self.dropped_bytes += message.len() - end;
            (&message[..end], true)
        };
        // A truncated message ends the budget; an empty one still costs a
        // byte, so a flood of empty messages is bounded too.
        self.used = if truncated {
            self.cap
        } else {
            self.used + kept.len().max(1).min(room)
        };
        let record = LogRecord {
            level,
            source,
            message: kept.to_owned(),
            truncated,
            tenant: self.tag.tenant.clone(),
            plugin: self.tag.plugin.clone(),
            version: self.tag.version,
            event_id: self.tag.event_id.clone(),
        };
        emit(&record);
        self.records.push(record);
    }

    /// Appends stream bytes; complete lines become records.
    fn write_stream(&mut self, source: LogSource, bytes: &[u8]) {
        let mut line = std::mem::take(self.line_mut(source));
        // An unterminated line may not grow past the remaining budget.
        let room = self.cap - self.used;
        for &b in bytes {
            if b == b'\n' {
                self.push_line(source, &line);
                line.clear();
            } else if line.len() <= room {
                line.push(b);
            } else {
                self.dropped_bytes += 1;
            }
        }
        *self.line_mut(source) = line;
    }

    fn push_line(&mut self, source: LogSource, line: &[u8]) {
        let level = if source == LogSource::Stderr {
            LogLevel::Warn
        } else {
            LogLevel::Info
        };
        let text = String::from_utf8_lossy(line);
        self.push(level, source, text.trim_end_matches('\r'));
    }

    fn line_mut(&mut self, source: LogSource) -> &mut Vec<u8> {
        if source == LogSource::Stderr {
            &mut self.stderr_line
        } else {
            &mut self.stdout_line
        }
    }
}

fn emit(r: &LogRecord) {
    macro_rules! ev {
        ($lvl:expr) => {
            tracing::event!(target: "busbar::plugin::guest", $lvl,
                tenant = %r.tenant, plugin = %r.plugin, version = r.version,
                event_id = %r.event_id, source = ?r.source, truncated = r.truncated,
                "{}", r.message)
        };
    }
    match r.level {
        LogLevel::Trace => ev!(tracing::Level::TRACE),
        LogLevel::Debug => ev!(tracing::Level::DEBUG),
        LogLevel::Info => ev!(tracing::Level::INFO),
        LogLevel::Warn => ev!(tracing::Level::WARN),
        LogLevel::Error => ev!(tracing::Level::ERROR),
    }
}

/// The log of one invocation, shared by the log interface and the captured
/// stdout/stderr streams (which WASI requires to be `'static`).
#[derive(Clone, Debug)]
pub struct PluginLog(Arc<Mutex<Buffer>>);

impl PluginLog {
    /// An empty log keeping at most `cap` message bytes.
    pub fn new(tag: LogTag, cap: usize) -> Self {
        Self(Arc::new(Mutex::new(Buffer {
            tag,
            cap,
            ..Buffer::default()
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Buffer> {
        // A poisoned lock only means a panic elsewhere mid-push; the buffer
        // is still consistent enough to read.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a message.
    pub fn push(&self, level: LogLevel, source: LogSource, message: &str) {
        self.lock().push(level, source, message);
    }

    /// Bytes dropped so far by the limit.
    pub fn dropped_bytes(&self) -> usize {
        self.lock().dropped_bytes
    }

    /// Flushes unterminated stream lines and returns the records, followed
    /// by a host notice when anything was dropped.
    pub fn finish(&self) -> Vec<LogRecord> {
        let mut b = self.lock();
        for source in [LogSource::Stdout, LogSource::Stderr] {
            let line = std::mem::take(b.line_mut(source));
            if !line.is_empty() {
                b.push_line(source, &line);
            }
        }
        let mut records = std::mem::take(&mut b.records);
        if b.dropped_bytes > 0 {
            let notice = LogRecord {
                level: LogLevel::Warn,
                source: LogSource::Host,
                message: format!(
                    "log limit of {} bytes reached: {} bytes in {} messages dropped",
                    b.cap, b.dropped_bytes, b.dropped_records
                ),
                truncated: false,
                tenant: b.tag.tenant.clone(),
                plugin: b.tag.plugin.clone(),
                version: b.tag.version,
                event_id: b.tag.event_id.clone(),
            };
            emit(&notice);
            records.push(notice);
            b.dropped_bytes = 0;
            b.dropped_records = 0;
        }
        records
    }

    /// A WASI stdout/stderr stream writing into this log.
    pub fn stream(&self, source: LogSource) -> CapturedOutput {
        CapturedOutput {
            log: self.clone(),
            source,
        }
    }
}

/// [`HasData`] marker for linking `busbar:plugin/log` to a [`PluginLog`].
pub struct Log;

impl HasData for Log {
    type Data<'a> = &'a mut PluginLog;
}

impl wit::Host for PluginLog {
    fn log(&mut self, level: WitLevel, message: String) {
        let level = match level {
            WitLevel::Trace => LogLevel::Trace,
            WitLevel::Debug => LogLevel::Debug,
            WitLevel::Info => LogLevel::Info,
            WitLevel::Warn => LogLevel::Warn,
            WitLevel::Error => LogLevel::Error,
        };
        self.push(level, LogSource::Log, &message);
    }
}

/// Adds `busbar:plugin/log` to a linker.
pub fn add_to_linker<T: 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut PluginLog,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, Log>(linker, get)
}

/// A guest stdout or stderr that appends to a [`PluginLog`] and never fails
/// or blocks: unlike `MemoryOutputPipe`, overflow truncates instead of
/// trapping.
#[derive(Clone, Debug)]
pub struct CapturedOutput {
    log: PluginLog,
    source: LogSource,
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.log.lock().write_stream(self.source, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.log.lock().write_stream(self.source, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(cap: usize) -> PluginLog {
        PluginLog::new(LogTag::default(), cap)
    }

    #[test]
    fn truncates_on_a_char_boundary_then_drops_and_counts() {
        let l = log(5);
        l.push(LogLevel::Info, LogSource::Log, "abcdé!");
        l.push(LogLevel::Info, LogSource::Log, "more");
        let records = l.finish();
        assert_eq!(records[0].message, "abcd");
        assert!(records[0].truncated);
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].source, LogSource::Host);
        assert!(
            records[1].message.contains("7 bytes in 1 messages"),
            "{}",
            records[1].message
        );
    }

    #[test]
    fn stream_bytes_become_lines() {
        let l = log(100);
        let mut out = l.stream(LogSource::Stdout);
        out.write(Bytes::from_static(b"hello\nwor")).unwrap();
        out.write(Bytes::from_static(b"ld")).unwrap();
        let mut err = l.stream(LogSource::Stderr);
        err.write(Bytes::from_static(b"oops\n")).unwrap();
        let records = l.finish();
        let got: Vec<_> = records
            .iter()
            .map(|r| (r.level, r.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (LogLevel::Info, "hello"),
                (LogLevel::Warn, "oops"),
                (LogLevel::Info, "world")
            ]
        );
    }

    #[test]
    fn a_flood_on_stdout_never_fails() {
        let l = log(1000);
        let mut out = l.stream(LogSource::Stdout);
        for _ in 0..1000 {
            out.write(Bytes::from(vec![b'x'; 4096])).unwrap();
        }
        let records = l.finish();
        let kept: usize = records
            .iter()
            .filter(|r| r.source == LogSource::Stdout)
            .map(|r| r.message.len())
            .sum();
        assert!(kept <= 1000);
        assert_eq!(records.last().unwrap().source, LogSource::Host);
    }
}
