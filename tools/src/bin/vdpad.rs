//! `vdpad`: serves vhost-user virtio-net devices to virtual machines.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Parser;
use tracing::{error, info, warn};
use vdpad::control::handlers::{lock_daemon, Context};
use vdpad::control::ControlServer;
use vdpad::daemon::Daemon;
use vdpad::logging::{self, LogControl};
use vdpad::metrics::MetricsServer;
use vdpad::qemu;
use vdpad::sd_notify::SdNotify;
use vdpad::signals::{self, Signal};
use vdpad_config::{Config, DaemonConfig};

/// Serves vhost-user virtio-net devices to virtual machines, in hardware (VFIO
/// offload) or in software.
#[derive(Parser, Debug)]
#[command(version)]
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
    let log = logging::init(
        args.log_level.as_deref(),
        &cfg.daemon.log_level,
        cfg.daemon.log_format,
    );
    // A filter from the command line or RUST_LOG wins over the file, also on reload.
    let log_pinned =
        args.log_level.is_some() || std::env::var("RUST_LOG").is_ok_and(|v| !v.is_empty());
    info!(version = env!("CARGO_PKG_VERSION"), devices = cfg.devices.len(),
          config = %args.config.as_ref().map_or("<embedded default>".into(), |p| p.display().to_string()),
          "vdpad starting");
    let notifier = SdNotify::from_env().unwrap_or_else(|e| {
        warn!(error = %e, "ignoring NOTIFY_SOCKET; no readiness notifications");
        SdNotify::disabled()
    });
    let daemon = match Daemon::start(&cfg) {
        Ok(d) => Arc::new(Mutex::new(d)),
        Err(e) => {
            error!("{e:#}");
            eprintln!("vdpad: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let fail = |what: String| {
        error!("{what}");
        eprintln!("vdpad: {what}");
        lock_daemon(&daemon).stop();
        ExitCode::FAILURE
    };
    let control = match ControlServer::start(
        &cfg.daemon.control_socket,
        cfg.daemon.socket_perms.mode,
        Context::new(daemon.clone(), log.clone()),
    ) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let metrics = match cfg.daemon.metrics_listen {
        None => None,
        Some(addr) => match MetricsServer::start(addr, daemon.clone()) {
            Ok(m) => Some(m),
            Err(e) => {
                control.stop();
                return fail(e.to_string());
            }
        },
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
    let status = |d: &Mutex<Daemon>| {
        format!(
            "serving {} device(s); control socket {}",
            lock_daemon(d).devices().len(),
            cfg.daemon.control_socket.display()
        )
    };
    match notifier.ready(&status(&daemon)) {
        Ok(true) => info!(
            socket = notifier.address(),
            "told the service manager we are ready"
        ),
        Ok(false) => {}
        Err(e) => warn!(socket = notifier.address(), error = %e, "sd_notify READY=1 failed"),
    }
    info!(
        devices = lock_daemon(&daemon).devices().len(),
        "vdpad ready"
    );
    let mut running = cfg.daemon.clone();
    loop {
        match signals::wait() {
            Ok(Signal::Terminate) => break,
            Ok(Signal::DumpStats) => lock_daemon(&daemon).log_stats(),
            Ok(Signal::Reload) => {
                let _ = notifier.reloading();
                reload(
                    &daemon,
                    args.config.as_deref(),
                    &mut running,
                    (!log_pinned).then_some(&log),
                );
                let _ = notifier.ready(&status(&daemon));
            }
            Err(e) => {
                error!(error = %e, "waiting for signals failed");
                break;
            }
        }
    }
    let _ = notifier.stopping();
    info!("shutting down");
    control.stop();
    if let Some(m) = metrics {
        m.stop();
    }
    lock_daemon(&daemon).stop();
    info!("stopped");
    ExitCode::SUCCESS
}

/// SIGHUP: re-reads the configuration file and applies added, removed and changed
/// devices (unchanged ones keep running untouched) and the log level; on an error in
/// the file nothing changes. Daemon-wide settings that need a restart are reported.
fn reload(
    daemon: &Mutex<Daemon>,
    path: Option<&Path>,
    running: &mut DaemonConfig,
    log: Option<&LogControl>,
) {
    let Some(path) = path else {
        info!("SIGHUP: running the embedded default, there is no file to re-read");
        return;
    };
    info!(config = %path.display(), "SIGHUP: re-reading the configuration");
    let new = match Config::from_file(path) {
        Ok(new) => new,
        Err(e) => {
            error!("configuration not reloaded, nothing changed:\n{e}");
            return;
        }
    };
    match lock_daemon(daemon).reload(&new) {
        Ok(r) => {
            // One line per device event, like `vdpactl add` (removals are logged by
            // the daemon as they happen), then the summary.
            for name in &r.added {
                info!(device = %name, via = "reload", "device added");
            }
            for name in &r.restarted {
                info!(device = %name, via = "reload", "device restarted with its new configuration");
            }
            info!(added = ?r.added, removed = ?r.removed, restarted = ?r.restarted,
                  unchanged = ?r.unchanged, "configuration reloaded");
        }
        Err(e) => error!("configuration reload failed part way: {e:#}"),
    }
    let d = &new.daemon;
    if d.log_level != running.log_level {
        match log {
            Some(log) => match log.set(&d.log_level) {
                Ok(()) => info!(level = %d.log_level, "log filter changed by reload"),
                Err(e) => warn!(error = %e, "log filter not changed"),
            },
            None => info!(level = %d.log_level,
                          "log_level changed in the file, but --log-level or RUST_LOG overrides it"),
        }
    }
    let mut restart_needed = Vec::new();
    if d.run_dir != running.run_dir {
        restart_needed.push("run_dir");
    }
    if d.control_socket != running.control_socket {
        restart_needed.push("control_socket");
    }
    if d.metrics_listen != running.metrics_listen {
        restart_needed.push("metrics_listen");
    }
    if d.log_format != running.log_format {
        restart_needed.push("log_format");
    }
    if d.socket_perms.mode != running.socket_perms.mode {
        // Device sockets created from now on get the new mode; the control socket not.
        restart_needed.push("socket_mode (for the control socket)");
    }
    if !restart_needed.is_empty() {
        warn!(settings = ?restart_needed,
              "these [daemon] settings changed in the file; they take effect at the next restart");
    }
    running.log_level = d.log_level.clone();
}
