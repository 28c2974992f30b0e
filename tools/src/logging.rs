//! Log setup: `tracing` to stderr, text or JSON, with a filter from the command line,
//! `RUST_LOG`, or the configuration, in that order of precedence — and a handle to
//! change the filter while running (`vdpactl log-level`).
//!
//! When stderr is the systemd journal (`JOURNAL_STREAM` names stderr's device and
//! inode, see systemd.exec(5)), every line starts with its syslog priority, `<3>` for
//! an error ... `<7>` for debug and trace (sd-daemon(3)'s convention), so
//! `journalctl -p warning` works; the timestamp is left to the journal.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::MetadataExt;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};
use vdpad_config::LogFormat;

/// Changes the log filter of a running daemon.
#[derive(Clone)]
pub struct LogControl {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
}

impl LogControl {
    /// Replaces the filter with `directive` (`debug`, `info,vdpa=trace`, ...).
    pub fn set(&self, directive: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(directive).map_err(|e| format!("{directive:?}: {e}"))?;
        match &self.handle {
            Some(h) => h.reload(filter).map_err(|e| e.to_string()),
            None => Err("logging is not initialised by this process".into()),
        }
    }
}

/// Installs the global subscriber. `cli` overrides everything; `RUST_LOG` overrides
/// the configured level.
pub fn init(cli: Option<&str>, configured: &str, format: LogFormat) -> LogControl {
    let directive = cli
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| configured.to_owned());
    let filter = EnvFilter::try_new(&directive).unwrap_or_else(|e| {
        eprintln!("vdpad: ignoring log filter {directive:?}: {e}; using \"info\"");
        EnvFilter::new("info")
    });
    let (filter, handle) = reload::Layer::new(filter);
    let journal = stderr_is_journal();
    let ansi = std::io::stderr().is_terminal() && !journal;
    let writer = Stderr { journal };
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match (format, journal) {
        (LogFormat::Json, _) => registry
            .with(
                fmt::layer()
                    .json()
                    .with_writer(writer)
                    .with_thread_names(true),
            )
            .try_init(),
        (LogFormat::Text, false) => registry
            .with(
                fmt::layer()
                    .with_writer(writer)
                    .with_ansi(ansi)
                    .with_thread_names(true),
            )
            .try_init(),
        // The journal stamps every line itself.
        (LogFormat::Text, true) => registry
            .with(
                fmt::layer()
                    .without_time()
                    .with_writer(writer)
                    .with_ansi(false)
                    .with_thread_names(true),
            )
            .try_init(),
    };
    LogControl {
        handle: installed.is_ok().then_some(handle),
    }
}

/// Whether stderr is the journal: `JOURNAL_STREAM` is `DEVICE:INODE` of the stream
/// systemd connected, and it counts only while fd 2 is still that stream (a shell
/// started from the unit that redirects stderr inherits the variable, not the stream).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // stat(2) on the /proc link reaches the open file itself (a socket under systemd).
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// The syslog priority sd-daemon(3) prefixes a line with for `level`.
pub fn journal_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Makes the writer for each log event: plain stderr, or, under the journal, stderr
/// with the event's priority in front of each of its lines.
#[derive(Clone, Copy)]
struct Stderr {
    journal: bool,
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            prefix: None,
            line_start: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> EventWriter {
        EventWriter {
            prefix: self
                .journal
                .then(|| format!("<{}>", journal_priority(meta.level()))),
            line_start: true,
        }
    }
}

/// Writes one event to stderr, each line of it prefixed with `prefix` if there is one
/// (a multi-line message, such as a configuration error, keeps its priority on every
/// line, because the journal makes each line a record of its own).
struct EventWriter {
    prefix: Option<String>,
    line_start: bool,
}

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(prefix) = &self.prefix else {
            return std::io::stderr().lock().write(buf);
        };
        let mut out = Vec::with_capacity(buf.len() + 2 * prefix.len());
        for &b in buf {
            if self.line_start {
                out.extend_from_slice(prefix.as_bytes());
            }
            out.push(b);
            self.line_start = b == b'\n';
        }
        // One write per event, so lines of threads logging at once do not interleave.
        std::io::stderr().lock().write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().lock().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_sd_daemon() {
        let p: Vec<u8> = [
            Level::ERROR,
            Level::WARN,
            Level::INFO,
            Level::DEBUG,
            Level::TRACE,
        ]
        .iter()
        .map(journal_priority)
        .collect();
        assert_eq!(p, [3, 4, 6, 7, 7]);
    }

    #[test]
    fn journal_stream_must_name_stderr() {
        // Nothing in this test process has inode 1 on device 1.
        std::env::set_var("JOURNAL_STREAM", "1:1");
        assert!(!stderr_is_journal());
        std::env::set_var("JOURNAL_STREAM", "garbage");
        assert!(!stderr_is_journal());
        let m = std::fs::metadata("/proc/self/fd/2").expect("stat stderr");
        std::env::set_var("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
        assert!(stderr_is_journal());
        std::env::remove_var("JOURNAL_STREAM");
    }
}
