//! Log setup: `tracing` to stderr, text or JSON, with a filter from the command line,
//! `RUST_LOG`, or the configuration, in that order of precedence — and a handle to
//! change the filter while running (`vdpactl log-level`).

use std::io::IsTerminal;

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
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_thread_names(true),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi)
                    .with_thread_names(true),
            )
            .try_init(),
    };
    LogControl {
        handle: installed.is_ok().then_some(handle),
    }
}
