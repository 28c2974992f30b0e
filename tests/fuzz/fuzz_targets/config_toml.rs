//! The configuration loader on arbitrary text: `Config::from_toml_str` (a whole file)
//! or, when the first byte is odd, `DeviceConfig::parse_snippet` (a `vdpactl add`
//! snippet). It must never panic; every error must render, and every error about the
//! text must carry a line and a column that exist in it; a configuration that loads
//! must render (Display) to TOML that loads back to the same configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdpad_config::{Config, ConfigError, DeviceConfig, ErrorKind};

fn check_error(e: &ConfigError, text: &str, snippet: bool) {
    let _ = e.to_string();
    if snippet && e.kind() == ErrorKind::MissingKey && e.line().is_none() {
        // "the snippet has no [[device]] table": about the whole snippet.
        return;
    }
    let (Some(line), Some(column)) = (e.line(), e.column()) else {
        panic!("error without a position: {e}");
    };
    let lines = text.split('\n').count();
    assert!(line >= 1 && line <= lines, "line {line} of {lines}: {e}");
    assert!(column >= 1, "column {column}: {e}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if mode & 1 == 1 {
        let daemon = Config::embedded_default().daemon;
        if let Err(e) = DeviceConfig::parse_snippet(text, "fuzz-snippet.toml", &daemon) {
            check_error(&e, text, true);
        }
        return;
    }
    match Config::from_toml_str(text, "fuzz.toml") {
        Ok(config) => {
            let rendered = config.to_string();
            let again = Config::from_toml_str(&rendered, "rendered.toml").unwrap_or_else(|e| {
                panic!("the rendered configuration does not load: {e}\n{rendered}")
            });
            assert_eq!(
                again, config,
                "rendering changed the configuration:\n{rendered}"
            );
        }
        Err(e) => check_error(&e, text, false),
    }
});
