//! `vdpad`: serves vhost-user virtio-net devices to virtual machines.

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Parser;
use tracing::{error, info, warn};
use vdpad::cli::VdpadArgs as Args;
use vdpad::control::handlers::{lock_daemon, Context};
use vdpad::control::ControlServer;
use vdpad::daemon::Daemon;
use vdpad::logging::{self, LogControl};
use vdpad::metrics::MetricsServer;
use vdpad::output;
use vdpad::qemu;
use vdpad::sd_notify::SdNotify;
use vdpad::signals::{self, Signal};
use vdpad_config::{Config, DaemonConfig};

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.check_config {
        return match Config::from_file(path) {
            // The file is valid whether or not the reader took all of the output
            // (`vdpad --check-config FILE | head`).
            Ok(cfg) => {
                let _ = output::print(&format!("{}{cfg}", sources_comment(path, &cfg)));
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
    let notifier = Arc::new(SdNotify::from_env().unwrap_or_else(|e| {
        warn!(error = %e, "ignoring NOTIFY_SOCKET; no readiness notifications");
        SdNotify::disabled()
    }));
    let started = if args.strict {
        Daemon::start(&cfg)
    } else {
        Daemon::start_degraded(&cfg)
    };
    let daemon = match started {
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
        cfg.daemon.control_socket_mode,
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
    for dev in cfg
        .devices
        .iter()
        .filter(|d| d.frontend == vdpad_config::Frontend::VhostUser)
    {
        let line = qemu::command_line(dev, "1G", qemu::QemuVersion::RECONNECT_MS);
        // Only a server device's chardev has an option that depends on the release.
        let older = match dev.socket_role {
            vdpad_config::SocketRole::Server => qemu::older_qemu_note(),
            vdpad_config::SocketRole::Client => "none: the options work from QEMU 7.2 on".into(),
        };
        if embedded {
            // A closed stdout must not stop the daemon: the hint is only a hint.
            let _ = output::print(&format!(
                "Attach a VM to device {} with these QEMU options:\n  {line}\n  ({older})\n\n",
                dev.name
            ));
        } else {
            info!(device = %dev.name, qemu = %line.replace(" \\\n  ", " "), older_qemu = %older, "attach with");
        }
    }
    let control_path = cfg.daemon.control_socket.clone();
    let status = |d: &Mutex<Daemon>| status_line(&lock_daemon(d), &control_path);
    let retry = RetryThread::start(daemon.clone(), notifier.clone(), control_path.clone());
    match notifier.ready(&status(&daemon)) {
        Ok(true) => info!(
            socket = notifier.address(),
            "told the service manager we are ready"
        ),
        Ok(false) => {}
        Err(e) => warn!(socket = notifier.address(), error = %e, "sd_notify READY=1 failed"),
    }
    let (serving, failed) = {
        let d = lock_daemon(&daemon);
        (d.devices().len(), d.failed_devices().len())
    };
    info!(devices = serving, failed, "vdpad ready");
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
    retry.stop();
    control.stop();
    if let Some(m) = metrics {
        m.stop();
    }
    lock_daemon(&daemon).stop();
    info!("stopped");
    ExitCode::SUCCESS
}

/// Comment lines naming the files the configuration came from, for `--check-config`
/// (the journal then records which drop-ins each start ran with).
fn sources_comment(path: &Path, cfg: &Config) -> String {
    let mut s = format!("# read from {}", path.display());
    let drop_ins = cfg
        .daemon
        .include_dir
        .as_deref()
        .and_then(|dir| vdpad_config::drop_in_files(dir).ok())
        .unwrap_or_default();
    if drop_ins.is_empty() {
        s.push_str(" (no drop-ins)\n");
    } else {
        s.push_str(" and its drop-ins:\n");
        for f in drop_ins {
            s.push_str(&format!("#   {}\n", f.display()));
        }
    }
    s
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
                  unchanged = ?r.unchanged, failed = ?r.failed, "configuration reloaded");
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
    if d.control_socket_mode != running.control_socket_mode {
        restart_needed.push("control_socket_mode");
    }

    if !restart_needed.is_empty() {
        warn!(settings = ?restart_needed,
              "these [daemon] settings changed in the file; they take effect at the next restart");
    }
    running.log_level = d.log_level.clone();
}

/// `STATUS=` for the service manager: devices served and failed, the control socket.
fn status_line(d: &Daemon, control: &Path) -> String {
    let failed = d.failed_devices().len();
    let failed = if failed > 0 {
        format!(", {failed} failed (retrying)")
    } else {
        String::new()
    };
    format!(
        "serving {} device(s){failed}; control socket {}",
        d.devices().len(),
        control.display()
    )
}

/// Tries failed devices again when their backoff is over, until stopped; when one
/// starts, the service manager's `STATUS=` says so.
struct RetryThread {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl RetryThread {
    fn start(
        daemon: Arc<Mutex<Daemon>>,
        notifier: Arc<SdNotify>,
        control: std::path::PathBuf,
    ) -> RetryThread {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vdpad-retry".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    let mut d = lock_daemon(&daemon);
                    if !d.retry_due().is_empty() {
                        let _ = notifier.status(&status_line(&d, &control));
                    }
                }
            })
            .expect("spawning the retry thread");
        RetryThread { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.thread.join();
    }
}
