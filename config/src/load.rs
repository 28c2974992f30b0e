//! The entry points: reading a file or a string, parsing device snippets, and adding
//! devices to a running configuration. Text goes through three steps: TOML syntax,
//! the schema (keys and types), then validation into the effective types.

use std::path::Path;

use serde::Deserialize;
use toml::de::DeTable;
use toml::Spanned;

use crate::error::{ConfigError, ErrorKind, Source};
use crate::model::{Config, DaemonConfig, DeviceConfig};
use crate::raw::{RawConfig, RawSnippet, TableSpec, FILE_ROOT, SNIPPET_ROOT};
use crate::{schema, validate};

/// Origin name used by [`Config::with_added_devices`] errors.
pub const ADDED_DEVICES_ORIGIN: &str = "<added devices>";

/// Parses TOML syntax and checks keys and types against `spec`.
fn parse_tree<'a>(src: &Source<'a>, spec: &TableSpec) -> Result<Spanned<DeTable<'a>>, ConfigError> {
    let tree = DeTable::parse(src.text).map_err(|e| syntax_error(src, &e))?;
    schema::check_table(src, tree.get_ref(), spec)?;
    Ok(tree)
}

/// Deserializes a schema-checked tree into its raw mirror.
fn deserialize<'a, T: Deserialize<'a>>(
    src: &Source<'a>,
    tree: Spanned<DeTable<'a>>,
) -> Result<T, ConfigError> {
    // The schema check has already caught unknown keys and wrong types, so this only
    // fails if the schema and the mirror disagree; report it with its position anyway.
    T::deserialize(toml::de::Deserializer::from(tree)).map_err(|e| {
        let message = e.message().to_owned();
        match e.span() {
            Some(span) => src.error(ErrorKind::WrongType, span, message),
            None => ConfigError::unlocated(ErrorKind::WrongType, src.origin, message),
        }
    })
}

/// Converts a TOML syntax error, naming the duplicated key where there is one.
fn syntax_error(src: &Source<'_>, e: &toml::de::Error) -> ConfigError {
    let Some(span) = e.span() else {
        return ConfigError::unlocated(
            ErrorKind::Syntax,
            src.origin,
            format!("invalid TOML: {}", e.message()),
        );
    };
    let found = src.text.get(span.clone()).unwrap_or("").trim();
    if e.message().starts_with("duplicate key") && !found.is_empty() {
        let header = src.text[..span.start]
            .trim_end_matches([' ', '\t'])
            .ends_with('[');
        let (msg, help) = if header {
            (
                format!("table [{found}] is defined twice"),
                format!(
                    "merge the two [{found}] tables into one (each device gets its own [[device]])"
                ),
            )
        } else {
            (
                format!("duplicate key `{found}`"),
                "each key may appear only once in a table".to_owned(),
            )
        };
        return src.error(ErrorKind::Syntax, span, msg).with_help(help);
    }
    src.error(
        ErrorKind::Syntax,
        span,
        format!("invalid TOML: {}", e.message()),
    )
}

impl Config {
    /// Reads and validates the configuration file at `path`. Errors name `path`.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::io(&origin, "cannot read the configuration file", e))?;
        Self::from_toml_str(&text, &origin)
    }

    /// Parses and validates configuration text; `origin` names it in errors (a file
    /// path, or e.g. `<embedded default>`).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let src = Source::new(origin, text);
        let raw: RawConfig = deserialize(&src, parse_tree(&src, &FILE_ROOT)?)?;
        let daemon = validate::daemon(&src, raw.daemon.as_ref())?;
        let devices = validate::devices(&src, &raw.device, &daemon, &[])?;
        Ok(Config { daemon, devices })
    }

    /// This configuration plus the devices of a snippet (one or more `[[device]]`
    /// tables, as for `vdpactl add`). Every device is validated as in a file, and its
    /// name and socket must not clash with the existing devices or each other; errors
    /// point into the snippet, named `origin`.
    pub fn with_snippet(&self, text: &str, origin: &str) -> Result<Config, ConfigError> {
        let new = parse_snippet_against(text, origin, &self.daemon, &self.devices)?;
        let mut config = self.clone();
        config.devices.extend(new);
        Ok(config)
    }

    /// This configuration plus already-validated `new` devices (for example from
    /// [`DeviceConfig::parse_snippet`]), checking that their names and sockets clash
    /// neither with the existing devices, nor with each other, nor with the control
    /// socket. The devices carry no text positions, so errors name the device and have
    /// the origin [`ADDED_DEVICES_ORIGIN`]; use [`Config::with_snippet`] to get errors
    /// that point into the snippet.
    pub fn with_added_devices(&self, new: Vec<DeviceConfig>) -> Result<Config, ConfigError> {
        crate::unique::check_without_spans(
            ADDED_DEVICES_ORIGIN,
            &self.daemon.control_socket,
            &self.devices,
            &new,
        )?;
        let mut config = self.clone();
        config.devices.extend(new);
        Ok(config)
    }

    /// The device named `name`, if any.
    pub fn device(&self, name: &str) -> Option<&DeviceConfig> {
        self.devices.iter().find(|d| d.name == name)
    }
}

impl DeviceConfig {
    /// Parses a snippet holding one or more `[[device]]` tables (and nothing else),
    /// with the same defaults, validation and errors as a configuration file. Defaults
    /// (socket directory, socket permissions) come from `daemon`; names and sockets
    /// must be unique within the snippet and differ from the control socket.
    pub fn parse_snippet(
        text: &str,
        origin: &str,
        daemon: &DaemonConfig,
    ) -> Result<Vec<DeviceConfig>, ConfigError> {
        parse_snippet_against(text, origin, daemon, &[])
    }
}

fn parse_snippet_against(
    text: &str,
    origin: &str,
    daemon: &DaemonConfig,
    existing: &[DeviceConfig],
) -> Result<Vec<DeviceConfig>, ConfigError> {
    let src = Source::new(origin, text);
    let raw: RawSnippet = deserialize(&src, parse_tree(&src, &SNIPPET_ROOT)?)?;
    if raw.device.is_empty() {
        return Err(ConfigError::unlocated(
            ErrorKind::MissingKey,
            origin,
            "the snippet has no [[device]] table",
        )
        .with_help("write each device as a [[device]] table with at least name = \"...\""));
    }
    validate::devices(&src, &raw.device, daemon, existing)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Should the schema and the mirror ever disagree, the deserializer's error still
    /// carries a position.
    #[test]
    fn deserializer_errors_keep_their_position() {
        #[derive(Debug, Deserialize)]
        struct Narrow {
            #[allow(dead_code)]
            x: u8,
        }
        let src = Source::new("n.toml", "\nx = 300\n");
        let tree = DeTable::parse(src.text).unwrap();
        let e = deserialize::<Narrow>(&src, tree).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WrongType);
        assert_eq!((e.line(), e.column()), (Some(2), Some(5)));
    }
}
