//! Whole-configuration tests: every validation rule with the exact position it
//! reports, the effective values, rendering round trips, snippets and files.

mod clashes;
mod daemon_rules;
mod datapath_rules;
mod docs;
mod dropins;
mod files;
mod frontend_rules;
mod rules;
mod security_rules;
mod snippets;
mod socket_role;
mod socket_rules;

use crate::{Config, ConfigError, ErrorKind};

/// The start of a file with one device named "a".
const DEV: &str = "[[device]]\nname = \"a\"\n";

/// A one-device file with `line` as its third line.
fn dev(line: &str) -> String {
    format!("{DEV}{line}\n")
}

/// Parses `text` as `t.toml`, expecting an error.
fn err(text: &str) -> ConfigError {
    match Config::from_toml_str(text, "t.toml") {
        Ok(c) => panic!("expected an error, got {c:?}\nfor:\n{text}"),
        Err(e) => e,
    }
}

/// Parses `text` as `t.toml`, expecting success.
fn ok(text: &str) -> Config {
    Config::from_toml_str(text, "t.toml").unwrap_or_else(|e| panic!("{e}\nfor:\n{text}"))
}

/// Asserts the kind, 1-based line and column of an error and that its message
/// contains `message`.
#[track_caller]
fn assert_err(
    text: &str,
    kind: ErrorKind,
    line: usize,
    column: usize,
    message: &str,
) -> ConfigError {
    let e = err(text);
    assert_eq!(e.kind(), kind, "kind of: {e}");
    assert_eq!(
        (e.line(), e.column()),
        (Some(line), Some(column)),
        "position of: {e}"
    );
    assert!(
        e.message().contains(message),
        "message {:?} lacks {message:?}",
        e.message()
    );
    assert_eq!(e.file(), "t.toml");
    e
}

/// Renders `config`, parses the output, and checks it is equal.
#[track_caller]
fn assert_round_trip(config: &Config) {
    let rendered = config.to_string();
    let again = Config::from_toml_str(&rendered, "<rendered>")
        .unwrap_or_else(|e| panic!("{e}\n{rendered}"));
    assert_eq!(&again, config, "rendered:\n{rendered}");
}
