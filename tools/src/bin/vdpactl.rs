//! `vdpactl`: asks a running vdpad what it serves and tells it what to change, over
//! its control socket (see docs/operations.md).
//!
//! Exit codes: 0 done, 1 the daemon refused (its message is printed), 2 usage error or
//! no answer from the daemon. A reader that closes standard output early (`vdpactl
//! list | head`) ends the output quietly; the status stays what the command earned.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vdpad::cli::{CtlArgs as Args, CtlCommand as Cmd};
use vdpad::control::protocol::{Command, Response};
use vdpad::control::{rates, render, Client, ClientError};
use vdpad::output;
use vdpad_config::{default_run_dir, CONTROL_SOCKET_NAME};

/// How a run ended.
enum Failure {
    /// The daemon answered `"ok": false`.
    Refused,
    /// Usage or connection error, already described.
    Usage(String),
    /// Standard output was closed by its reader; the command itself succeeded.
    OutputClosed,
}

impl From<output::Closed> for Failure {
    fn from(_: output::Closed) -> Self {
        Failure::OutputClosed
    }
}

/// `print!` to standard output that stops (without a panic) when the reader is gone.
macro_rules! out {
    ($($arg:tt)*) => {
        output::print(&format!($($arg)*))?
    };
}

/// `println!` counterpart of [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => {
        output::println(&format!($($arg)*))?
    };
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Usage(e.to_string())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) | Err(Failure::OutputClosed) => ExitCode::SUCCESS,
        Err(Failure::Refused) => ExitCode::from(1),
        Err(Failure::Usage(msg)) => {
            eprintln!("vdpactl: {msg}");
            ExitCode::from(2)
        }
    }
}

struct Ctl {
    socket: PathBuf,
    timeout: Duration,
    json: bool,
}

impl Ctl {
    /// Sends one command on a fresh connection; a refusal is printed here.
    fn call(&self, command: Command) -> Result<Response, Failure> {
        let mut client = Client::connect(&self.socket, self.timeout)?;
        let r = client.request(command)?;
        if !r.ok {
            if self.json {
                // Refused either way: a closed stdout changes nothing about that.
                let _ = output::print(&r.to_line());
            }
            eprintln!(
                "vdpactl: the daemon refused: {}",
                r.error.as_deref().unwrap_or("(no reason given)")
            );
            return Err(Failure::Refused);
        }
        Ok(r)
    }
}

fn run(args: &Args) -> Result<(), Failure> {
    if !(args.timeout > 0.0 && args.timeout <= 3600.0) {
        return Err(Failure::Usage(format!(
            "--timeout {} must be between 0 and 3600 seconds",
            args.timeout
        )));
    }
    let ctl = Ctl {
        socket: args
            .socket
            .clone()
            .unwrap_or_else(|| default_run_dir().join(CONTROL_SOCKET_NAME)),
        timeout: Duration::from_secs_f64(args.timeout),
        json: args.json,
    };
    match &args.command {
        Cmd::List => {
            let r = ctl.call(Command::List)?;
            if ctl.json {
                out!("{}", r.to_line());
            } else {
                out!("{}", render::list(r.devices.as_deref().unwrap_or_default()));
            }
        }
        Cmd::Stats {
            device,
            queue,
            watch,
            count,
        } => stats(&ctl, device, *queue, *watch, *count)?,
        Cmd::Add { config, persist } => add(&ctl, config, *persist)?,
        Cmd::Remove { name, persist } => remove(&ctl, name, *persist)?,
        Cmd::LogLevel { level } => {
            let r = ctl.call(Command::LogLevel {
                level: level.clone(),
            })?;
            if ctl.json {
                out!("{}", r.to_line());
            } else {
                outln!("log filter now {}", r.level.as_deref().unwrap_or(level));
            }
        }
        Cmd::Rate {
            name,
            tx_pps,
            tx_bps,
            rx_pps,
            rx_bps,
            burst_us,
        } => rate(
            &ctl,
            Command::Rate {
                device: name.clone(),
                tx_pps: *tx_pps,
                tx_bps: *tx_bps,
                rx_pps: *rx_pps,
                rx_bps: *rx_bps,
                burst_us: *burst_us,
            },
        )?,
        Cmd::Nics { sysfs } => nics(&ctl, sysfs.as_deref())?,
        Cmd::Version => {
            let r = ctl.call(Command::Version)?;
            if ctl.json {
                out!("{}", r.to_line());
            } else {
                outln!(
                    "vdpad {} (control protocol {}); vdpactl {}",
                    r.daemon_version.as_deref().unwrap_or("?"),
                    r.protocol.map_or("?".to_owned(), |p| p.to_string()),
                    env!("CARGO_PKG_VERSION")
                );
            }
        }
    }
    Ok(())
}

/// `vdpactl stats`: once, or every `watch` seconds with rates.
fn stats(
    ctl: &Ctl,
    device: &Option<String>,
    queue: Option<u16>,
    watch: Option<f64>,
    count: Option<u64>,
) -> Result<(), Failure> {
    let command = Command::Stats {
        device: device.clone(),
        queue,
    };
    let Some(secs) = watch else {
        let r = ctl.call(command)?;
        if ctl.json {
            out!("{}", r.to_line());
        } else {
            out!(
                "{}",
                render::stats(r.stats.as_deref().unwrap_or_default(), None)
            );
        }
        return Ok(());
    };
    watch_stats(ctl, command, secs, count)
}

/// `vdpactl add`: the snippet's devices start (and, with `persist`, get a drop-in).
fn add(ctl: &Ctl, config: &PathBuf, persist: bool) -> Result<(), Failure> {
    let (text, origin) = read_snippet(config)?;
    let r = ctl.call(Command::Add {
        config: text,
        origin: Some(origin),
        persist,
    })?;
    if ctl.json {
        out!("{}", r.to_line());
        return Ok(());
    }
    for d in r.devices.as_deref().unwrap_or_default() {
        outln!(
            "added {}: {} ({}), socket {}",
            d.name,
            d.mode,
            d.datapath,
            d.socket
        );
    }
    for file in r.persisted.as_deref().unwrap_or_default() {
        outln!("persisted in {file}");
    }
    Ok(())
}

/// `vdpactl remove`: the device stops (and, with `persist`, its drop-in goes).
fn remove(ctl: &Ctl, name: &str, persist: bool) -> Result<(), Failure> {
    let r = ctl.call(Command::Remove {
        device: name.to_owned(),
        persist,
    })?;
    if ctl.json {
        out!("{}", r.to_line());
        return Ok(());
    }
    outln!("removed {}", r.removed.as_deref().unwrap_or(name));
    for file in r.persisted.as_deref().unwrap_or_default() {
        outln!("deleted {file}");
    }
    Ok(())
}

/// `vdpactl rate`: changes the limits and prints those in effect.
fn rate(ctl: &Ctl, command: Command) -> Result<(), Failure> {
    let name = match &command {
        Command::Rate { device, .. } => device.clone(),
        _ => String::new(),
    };
    let r = ctl.call(command)?;
    if ctl.json {
        out!("{}", r.to_line());
    } else if let Some(v) = r.rates {
        let show = |x: u64| {
            if x == 0 {
                "unlimited".to_owned()
            } else {
                x.to_string()
            }
        };
        outln!(
            "{name}: tx {} pps, {} bit/s; rx {} pps, {} bit/s; burst {} us",
            show(v.tx_pps),
            show(v.tx_bps),
            show(v.rx_pps),
            show(v.rx_bps),
            v.burst_us
        );
    }
    Ok(())
}

/// `vdpactl nics`: this host's network functions and what auto mode would do.
fn nics(ctl: &Ctl, sysfs: Option<&Path>) -> Result<(), Failure> {
    let reports = match sysfs {
        Some(dir) => vdpad::discover::scan(dir, Path::new("/dev/vfio/vfio").exists()),
        None => vdpad::discover::scan_host(),
    }
    .map_err(|e| Failure::Usage(format!("cannot read PCI functions: {e}")))?;
    if ctl.json {
        let line = serde_json::json!({"ok": true, "nics": reports});
        outln!("{line}");
    } else {
        out!("{}", vdpad::discover::render(&reports));
    }
    Ok(())
}

fn read_snippet(path: &PathBuf) -> Result<(String, String), Failure> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::Usage(format!("reading the snippet from standard input: {e}")))?;
        return Ok((text, "<stdin>".to_owned()));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    Ok((text, path.display().to_string()))
}

/// `stats --watch`: a sample, then every `secs` another one and the rates between
/// the last two.
fn watch_stats(ctl: &Ctl, command: Command, secs: f64, count: Option<u64>) -> Result<(), Failure> {
    if !(0.01..=86_400.0).contains(&secs) {
        return Err(Failure::Usage(format!(
            "--watch {secs} must be between 0.01 and 86400 seconds"
        )));
    }
    let interval = Duration::from_secs_f64(secs);
    let mut prev = ctl.call(command.clone())?;
    let mut done = 0u64;
    while count.is_none_or(|c| done < c) {
        std::thread::sleep(interval);
        let cur = ctl.call(command.clone())?;
        let before = prev.stats.as_deref().unwrap_or_default();
        let after = cur.stats.as_deref().unwrap_or_default();
        let (t0, t1) = (
            prev.sampled_at.unwrap_or(0.0),
            cur.sampled_at.unwrap_or(0.0),
        );
        let r = rates::between(before, t0, after, t1);
        if ctl.json {
            let line = serde_json::json!({
                "ok": true,
                "sampled_at": t1,
                "interval": t1 - t0,
                "stats": after,
                "rates": r,
            });
            outln!("{line}");
        } else {
            if done > 0 {
                outln!("");
            }
            outln!("--- interval {:.2} s ---", t1 - t0);
            out!("{}", render::stats(after, Some(&r)));
        }
        prev = cur;
        done += 1;
    }
    Ok(())
}
