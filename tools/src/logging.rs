//! Log setup: `tracing` to stderr, text or JSON, with a filter from the command line,
//! `RUST_LOG`, or the configuration, in that order of precedence.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use vdpad_config::LogFormat;

/// Installs the global subscriber. `cli` overrides everything; `RUST_LOG` overrides
/// the configured level.
pub fn init(cli: Option<&str>, configured: &str, format: LogFormat) {
    let directive = cli
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| configured.to_owned());
    let filter = EnvFilter::try_new(&directive).unwrap_or_else(|e| {
        eprintln!("vdpad: ignoring log filter {directive:?}: {e}; using \"info\"");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_thread_names(true);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
