//! `vdpad-gen`: writes the man pages and shell completions of `vdpad` and `vdpactl`,
//! generated from their clap definitions (see `vdpad::cli`), for packaging:
//!
//! ```text
//! vdpad-gen man DIR            # vdpad.8, vdpactl.8, vdpactl-list.8, ...
//! vdpad-gen completions DIR    # vdpad.bash, _vdpad, vdpad.fish, and vdpactl's
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Generates the man pages and shell completions of vdpad and vdpactl.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// Man pages (section 8) into DIR.
    Man {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
    /// Bash, zsh and fish completions into DIR.
    Completions {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.what {
        What::Man { dir } => vdpad::cli::write_man_pages(dir),
        What::Completions { dir } => vdpad::cli::write_completions(dir),
    };
    match result {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vdpad-gen: {e}");
            ExitCode::FAILURE
        }
    }
}
