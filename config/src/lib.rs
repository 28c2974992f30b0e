//! vdpad configuration: the TOML schema, its defaults, and validation whose errors
//! name the file, line and column and say how to fix the problem.
//!
//! (Parsing and validation are being written; see `model` for the effective types.)

mod model;

pub use model::*;
