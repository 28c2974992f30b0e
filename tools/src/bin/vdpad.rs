//! `vdpad`: serves vhost-user virtio-net devices to virtual machines.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing::{error, info};
use vdpad::daemon::Daemon;
use vdpad::signals::{self, Signal};
use vdpad::{logging, qemu};
use vdpad_config::Config;

/// Serves vhost-user virtio-net devices to virtual machines, in hardware (VFIO
/// offload) or in software.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Configuration file. Without it, vdpad runs its embedded default: one software
    /// loopback device.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate FILE, print the effective configuration and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive); overrides
    /// the configuration and RUST_LOG.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.check_config {
        return match Config::from_file(path) {
            Ok(cfg) => {
                print!("{cfg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        };
    }
    let (cfg, embedded) = match &args.config {
        Some(path) => match Config::from_file(path) {
            Ok(cfg) => (cfg, false),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        },
        None => (Config::embedded_default(), true),
    };
    if let Err(e) = signals::block() {
        eprintln!("vdpad: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    // Everything the daemon creates (sockets before their chmod) is private.
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0o077) };
    logging::init(
        args.log_level.as_deref(),
        &cfg.daemon.log_level,
        cfg.daemon.log_format,
    );
    info!(version = env!("CARGO_PKG_VERSION"), devices = cfg.devices.len(),
          config = %args.config.as_ref().map_or("<embedded default>".into(), |p| p.display().to_string()),
          "vdpad starting");
    let mut daemon = match Daemon::start(&cfg) {
        Ok(d) => d,
        Err(e) => {
            error!("{e:#}");
            eprintln!("vdpad: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    for dev in &cfg.devices {
        let line = qemu::command_line(dev, "1G");
        if embedded {
            println!(
                "Attach a VM to device {} with these QEMU options:\n  {line}\n",
                dev.name
            );
        } else {
            info!(device = %dev.name, qemu = %line.replace(" \\\n  ", " "), "attach with");
        }
    }
    loop {
        match signals::wait() {
            Ok(Signal::Terminate) => break,
            Ok(Signal::DumpStats) => daemon.log_stats(),
            Ok(Signal::Reload) => reload(&mut daemon, args.config.as_deref()),
            Err(e) => {
                error!(error = %e, "waiting for signals failed");
                break;
            }
        }
    }
    info!("shutting down");
    daemon.stop();
    info!("stopped");
    ExitCode::SUCCESS
}

/// SIGHUP: re-reads the configuration file and applies added, removed and changed
/// devices; on any error nothing changes.
fn reload(daemon: &mut Daemon, path: Option<&std::path::Path>) {
    let Some(path) = path else {
        info!("SIGHUP: running the embedded default, there is no file to re-read");
        return;
    };
    info!(config = %path.display(), "SIGHUP: re-reading the configuration");
    match Config::from_file(path) {
        Err(e) => error!("configuration not reloaded, nothing changed:\n{e}"),
        Ok(new) => match daemon.reload(&new) {
            Ok(r) => info!(added = ?r.added, removed = ?r.removed, restarted = ?r.restarted,
                           unchanged = r.unchanged.len(), "configuration reloaded"),
            Err(e) => error!("configuration reload failed part way: {e:#}"),
        },
    }
}
