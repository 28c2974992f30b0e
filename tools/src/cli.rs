//! The command lines of `vdpad` and `vdpactl`, as clap definitions in the library so
//! that `vdpad-gen` can turn them into man pages and shell completions
//! ([`write_man_pages`], [`write_completions`]) that always match the binaries.

use std::io;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

/// Exit statuses, as `--help` and docs/operations.md list them.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  stopped cleanly (SIGTERM/SIGINT), or --check-config found the file valid
  1  the daemon could not start or run (the run directory, the control socket,
     the metrics endpoint or signal setup failed, or with --strict a device could
     not start; the reason is on stderr and in the log)
  2  the configuration is invalid or unreadable (file:line:column on stderr), or
     the command line is wrong";

/// Serves vhost-user virtio-net devices to virtual machines, in hardware (VFIO
/// offload) or in software.
#[derive(Parser, Debug)]
#[command(version, after_help = EXIT_STATUS_HELP)]
pub struct VdpadArgs {
    /// Configuration file. Without it, vdpad runs its embedded default: one software
    /// loopback device.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate FILE, print the effective configuration and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub check_config: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive); overrides
    /// the configuration and RUST_LOG.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// All or nothing: exit (status 1) if any device cannot start. Without it, such a
    /// device is reported (state `failed` in `vdpactl list`, a metric, the log) and
    /// retried with backoff while the others run.
    #[arg(long)]
    pub strict: bool,
}

/// Controls a running vdpad through its control socket.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Exit status: 0 done, 1 the daemon refused, 2 usage or connection error."
)]
pub struct CtlArgs {
    /// The daemon's control socket [default: control.sock in the default run
    /// directory: /run/vdpad as root].
    #[arg(short, long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the daemon's answers as JSON (one object per line) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to wait for the daemon's answer, in seconds.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 30.0)]
    pub timeout: f64,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// A `vdpactl` command.
#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// Every device: mode and why, datapath, backend, PCI function, socket, state,
    /// negotiated features, queue pairs, fallback.
    List,
    /// Per-queue counters; with --watch, rates over each interval.
    Stats {
        /// Only this device.
        device: Option<String>,
        /// Only this queue (ring index: RX of pair i is 2i, TX is 2i+1).
        #[arg(short, long, value_name = "N")]
        queue: Option<u16>,
        /// Sample every SECONDS and show rates (pps, bps, packets per kick and per
        /// interrupt over the interval) until interrupted.
        #[arg(short, long, value_name = "SECONDS")]
        watch: Option<f64>,
        /// With --watch: stop after N intervals.
        #[arg(short, long, value_name = "N", requires = "watch")]
        count: Option<u64>,
    },
    /// Adds the devices of a configuration snippet ([[device]] tables) to the running
    /// daemon; nothing changes if any of them is invalid or cannot start.
    Add {
        /// The snippet file (`-` reads standard input).
        #[arg(short, long, value_name = "SNIPPET.toml")]
        config: PathBuf,
        /// Also write each device to a drop-in file (<include_dir>/<name>.toml, by
        /// default /etc/vdpad/vdpad.d/), so it survives a reload and a restart.
        #[arg(long)]
        persist: bool,
    },
    /// Stops and removes a device; its frontend is disconnected.
    Remove {
        /// The device's name.
        name: String,
        /// Also delete the device's drop-in file (<include_dir>/<name>.toml).
        #[arg(long)]
        persist: bool,
    },
    /// Changes the daemon's log filter (error, warn, info, debug, trace, or
    /// directives such as info,swpath=debug).
    LogLevel {
        /// The new filter.
        level: String,
    },
    /// Changes a device's rate limits while it runs (0 = unlimited; limits not given
    /// stay as they are) and prints the limits in effect. The configuration file's
    /// values apply again after a restart or reload.
    Rate {
        /// The device.
        name: String,
        /// Guest-to-host packets per second.
        #[arg(long)]
        tx_pps: Option<u64>,
        /// Guest-to-host bits per second.
        #[arg(long)]
        tx_bps: Option<u64>,
        /// Host-to-guest packets per second.
        #[arg(long)]
        rx_pps: Option<u64>,
        /// Host-to-guest bits per second.
        #[arg(long)]
        rx_bps: Option<u64>,
        /// Bucket depth, microseconds at the limit.
        #[arg(long)]
        burst_us: Option<u64>,
    },
    /// The daemon's version and control protocol version.
    Version,
    /// This host's PCI network functions and what vdpad's auto mode would do with
    /// each: offload, software on which interface, or neither and why (driver, IOMMU
    /// group, MSI-X vectors). Reads sysfs; needs no daemon.
    Nics {
        /// Read PCI functions from DIR instead of /sys/bus/pci/devices (for tests and
        /// for inspecting a copy of another host's sysfs).
        #[arg(long, value_name = "DIR")]
        sysfs: Option<PathBuf>,
    },
}

/// Both programs' command definitions: `vdpad`, then `vdpactl`.
pub fn commands() -> [clap::Command; 2] {
    [
        VdpadArgs::command().name("vdpad"),
        CtlArgs::command().name("vdpactl"),
    ]
}

/// Writes `vdpad.8` and `vdpactl.8` (and one page per vdpactl command,
/// `vdpactl-list.8` ...) into `dir`; returns the files written.
pub fn write_man_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for cmd in commands() {
        write_page(dir, cmd, &mut written)?;
    }
    Ok(written)
}

fn write_page(dir: &Path, cmd: clap::Command, written: &mut Vec<PathBuf>) -> io::Result<()> {
    let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_owned();
    let path = dir.join(format!("{name}.8"));
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("vdpad")
        .source(format!("vdpad {}", env!("CARGO_PKG_VERSION")))
        .render(&mut out)?;
    std::fs::write(&path, out)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub = sub
            .clone()
            .display_name(format!("{name}-{}", sub.get_name()))
            .bin_name(format!("{name} {}", sub.get_name()))
            .version(env!("CARGO_PKG_VERSION"));
        write_page(dir, sub, written)?;
    }
    Ok(())
}

/// The shells completions are written for.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes completion scripts for both programs and every shell in [`SHELLS`] into
/// `dir`, under the names each shell looks for (`vdpad.bash`, `_vdpad`,
/// `vdpad.fish`); returns the files written.
pub fn write_completions(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for mut cmd in commands() {
        let name = cmd.get_name().to_owned();
        for shell in SHELLS {
            written.push(clap_complete::generate_to(shell, &mut cmd, &name, dir)?);
        }
    }
    Ok(written)
}
