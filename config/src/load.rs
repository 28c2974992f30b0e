//! The entry points: reading a file or a string, parsing device snippets, and adding
//! devices to a running configuration. Text goes through three steps: TOML syntax,
//! the schema (keys and types), then validation into the effective types.

use std::path::{Path, PathBuf};

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

/// The drop-in files of `dir`, in the order they are read: every `*.toml` that is a
/// regular file (or a link to one) and does not start with `.` (editors' and
/// `vdpactl --persist`'s temporary files), sorted by name byte by byte. A missing
/// directory has none.
pub fn drop_in_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let bytes = name.as_encoded_bytes();
        if bytes.starts_with(b".") || !bytes.ends_with(b".toml") {
            continue;
        }
        let path = entry.path();
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

fn read(path: &Path, what: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::io(&path.display().to_string(), what, e))
}

impl Config {
    /// Reads and validates the configuration file at `path`, then the drop-ins of its
    /// `include_dir` (default: `vdpad.d` next to it; see [`drop_in_files`]). The
    /// `[daemon]` table comes from the main file only; drop-ins hold `[[device]]`
    /// tables, which follow the main file's devices in file-name order, and every
    /// name, socket, interface and PCI function must be unique across all files.
    /// Errors name the file they are in.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = read(path, "cannot read the configuration file")?;
        let src = Source::new(&origin, &text);
        let raw: RawConfig = deserialize(&src, parse_tree(&src, &FILE_ROOT)?)?;
        // The default include_dir is absolute even for `--config vdpad.toml`.
        let file_dir = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let daemon = validate::daemon(&src, raw.daemon.as_ref(), file_dir.as_deref())?;
        // Every text is read before any device is checked: errors about a device
        // point into its own file and may name a device of another.
        let mut drop_ins: Vec<(String, String)> = Vec::new();
        if let Some(dir) = &daemon.include_dir {
            let files = drop_in_files(dir).map_err(|e| {
                ConfigError::io(
                    &dir.display().to_string(),
                    "cannot list the drop-in directory",
                    e,
                )
            })?;
            for file in files {
                let text = read(&file, "cannot read the drop-in file")?;
                drop_ins.push((file.display().to_string(), text));
            }
        }
        let mut placed = Vec::new();
        validate::add_devices(&src, &raw.device, &daemon, &[], &mut placed)?;
        for (origin, text) in &drop_ins {
            let src = Source::new(origin, text);
            let raw: RawSnippet = deserialize(&src, parse_tree(&src, &SNIPPET_ROOT)?)?;
            validate::add_devices(&src, &raw.device, &daemon, &[], &mut placed)?;
        }
        let devices = placed.into_iter().map(|p| p.dev.config).collect();
        Ok(Config { daemon, devices })
    }

    /// Parses and validates configuration text; `origin` names it in errors (a file
    /// path, or e.g. `<embedded default>`). No drop-ins are read, and `include_dir`
    /// is only set if the text sets it.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let src = Source::new(origin, text);
        let raw: RawConfig = deserialize(&src, parse_tree(&src, &FILE_ROOT)?)?;
        let daemon = validate::daemon(&src, raw.daemon.as_ref(), None)?;
        let devices = validate::devices(&src, &raw.device, &daemon, &[])?;
        Ok(Config { daemon, devices })
    }

    /// This configuration plus the devices of a snippet (one or more `[[device]]`
    /// tables, as for `vdpactl add`). Every device is validated as in a file, and its
    /// name and socket must not clash with the existing devices or each other; errors
    /// point into the snippet, named `origin`.
    ///
    /// A device added this way must keep its socket in `run_dir` or one of
    /// `socket_dirs` (directly, no `..`): whoever may talk to the control socket must
    /// not be able to have the daemon create or replace sockets elsewhere.
    pub fn with_snippet(&self, text: &str, origin: &str) -> Result<Config, ConfigError> {
        let new = parse_snippet_against(text, origin, &self.daemon, &self.devices, true)?;
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
        parse_snippet_against(text, origin, daemon, &[], false)
    }
}

fn parse_snippet_against(
    text: &str,
    origin: &str,
    daemon: &DaemonConfig,
    existing: &[DeviceConfig],
    runtime: bool,
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
    let devices = validate::devices(&src, &raw.device, daemon, existing)?;
    if runtime {
        for (table, dev) in raw.device.iter().zip(&devices) {
            if let Some(value) = &table.get_ref().socket {
                check_runtime_socket(&src, value, &dev.socket, daemon)?;
            }
        }
    }
    Ok(devices)
}

/// A socket added at run time lives directly in `run_dir` or one of `socket_dirs`.
fn check_runtime_socket(
    src: &Source<'_>,
    value: &Spanned<String>,
    socket: &Path,
    daemon: &DaemonConfig,
) -> Result<(), ConfigError> {
    let mut allowed = vec![daemon.run_dir.as_path()];
    allowed.extend(daemon.socket_dirs.iter().map(PathBuf::as_path));
    let listed = allowed
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let dotdot = socket
        .components()
        .any(|c| c == std::path::Component::ParentDir);
    let inside = !dotdot && socket.parent().is_some_and(|p| allowed.contains(&p));
    if inside {
        return Ok(());
    }
    let msg = if dotdot {
        format!("socket `{}` contains `..`", socket.display())
    } else {
        format!(
            "socket `{}` is outside the directories where devices may be added at run time ({listed})",
            socket.display()
        )
    };
    Err(src
        .error(ErrorKind::InvalidValue, value.span(), msg)
        .with_help(
            "leave `socket` out (the socket goes to run_dir), name a file in run_dir, or list \
             its directory in [daemon] socket_dirs and restart vdpad",
        ))
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
