//! vdpad configuration: the TOML schema, its defaults, and validation whose errors
//! name the file, line and column and say how to fix the problem.
//!
//! * [`Config::from_file`] / [`Config::from_toml_str`] read and validate a whole file
//!   (`from_file` with its drop-ins, see [`drop_in_files`]);
//! * [`Config::embedded_default`] is what `vdpad` runs without `--config`;
//! * [`DeviceConfig::parse_snippet`] and [`Config::with_snippet`] handle `[[device]]`
//!   snippets (`vdpactl add`);
//! * `Display` for [`Config`] renders the effective configuration as TOML;
//! * [`ConfigError`] renders as `file:line:column: error: ...` plus a `help:` line.
//!
//! The user documentation of every key is `docs/config.md`.

mod address;
mod defaults;
mod error;
mod fields;
mod ids;
mod load;
mod model;
mod portsec;
mod raw;
mod render;
mod schema;
mod unique;
mod validate;

#[cfg(test)]
mod tests;

pub use address::{ParseMacError, ParsePciError};
pub use defaults::{
    default_run_dir, CONTROL_SOCKET_NAME, DEFAULT_ADAPTIVE_POLL_US, DEFAULT_BURST,
    DEFAULT_LOG_LEVEL, DEFAULT_MAX_GUEST_MEMORY, DEFAULT_QUEUE_PAIRS, DEFAULT_QUEUE_SIZE,
    DEFAULT_RATE_BURST_US, DEFAULT_SOCKET_MODE, DROP_IN_DIR_NAME, EMBEDDED_DEFAULT_ORIGIN,
    EMBEDDED_DEFAULT_TOML, IFNAME_MAX, MAX_BURST, MAX_BUSY_POLL_US, MAX_CPU, MAX_MAX_GUEST_MEMORY,
    MAX_NAME_LEN, MAX_RATE, MAX_RX_COALESCE_FRAMES, MAX_RX_COALESCE_USECS, MAX_WEIGHT,
    MIN_MAX_GUEST_MEMORY, MIN_MTU, MIN_QUEUE_SIZE, ROOT_RUN_DIR, SOCKET_PATH_MAX,
};
pub use error::{ConfigError, ErrorKind};
pub use load::{drop_in_files, ADDED_DEVICES_ORIGIN};
pub use model::*;
