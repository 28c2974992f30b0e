//! What each control command does: reads the daemon's state into the protocol's views,
//! or changes the daemon (add, remove, log level) — all or nothing.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tracing::{info, warn};
use vdpa::{DeviceHandle, QueueStats};
use vdpad_config::{Backend, DeviceConfig};

use super::persist;
use super::protocol::{
    Command, DeviceStats, DeviceView, ErrorCode, MigrationView, PciView, PeerView, ProtocolError,
    QueueView, RateView, RelayView, Response, StartFailureView, PROTOCOL_VERSION,
};
use crate::daemon::{Daemon, DeviceInfo, FailedInfo};
use crate::logging::LogControl;

/// Origin given to an `add` snippet whose request names none.
pub const DEFAULT_SNIPPET_ORIGIN: &str = "<snippet>";

/// What the command handlers work on.
#[derive(Clone)]
pub struct Context {
    /// The daemon, shared with the main thread (signals) and the metrics endpoint.
    pub daemon: Arc<Mutex<Daemon>>,
    /// Changes the log filter.
    pub log: LogControl,
    /// The daemon's start, the zero of `stats`' `sampled_at`.
    pub started: Instant,
}

impl Context {
    /// A context for `daemon`, whose clock starts now.
    pub fn new(daemon: Arc<Mutex<Daemon>>, log: LogControl) -> Context {
        Context {
            daemon,
            log,
            started: Instant::now(),
        }
    }
}

/// Locks the daemon, recovering it if a thread panicked while holding the lock: the
/// daemon's own state stays consistent (each change is one call), and a control
/// command must not take the whole daemon down.
pub fn lock_daemon(daemon: &Mutex<Daemon>) -> MutexGuard<'_, Daemon> {
    daemon.lock().unwrap_or_else(|e| e.into_inner())
}

/// Carries out one command.
pub fn handle(ctx: &Context, command: Command) -> Response {
    let result = match command {
        Command::List => Ok(list(ctx)),
        Command::Stats { device, queue } => stats(ctx, device.as_deref(), queue),
        Command::Add {
            config,
            origin,
            persist,
        } => add(
            ctx,
            &config,
            origin.as_deref().unwrap_or(DEFAULT_SNIPPET_ORIGIN),
            persist,
        ),
        Command::Remove { device, persist } => remove(ctx, &device, persist),
        Command::LogLevel { level } => log_level(ctx, &level),
        Command::Rate {
            device,
            tx_pps,
            tx_bps,
            rx_pps,
            rx_bps,
            burst_us,
        } => rate(ctx, &device, [tx_pps, tx_bps, rx_pps, rx_bps, burst_us]),
        Command::Version => Ok(Response {
            daemon_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            protocol: Some(PROTOCOL_VERSION),
            ..Response::ok()
        }),
    };
    result.unwrap_or_else(Response::refused)
}

/// Every device as `list` shows it, running and failed, in name order, with the
/// counters of each (failed devices have no queues).
pub fn all_views(daemon: &Mutex<Daemon>) -> Vec<(DeviceView, DeviceStats)> {
    let (infos, failed) = {
        let d = lock_daemon(daemon);
        (d.devices(), d.failed_devices())
    };
    let mut all: Vec<(DeviceView, DeviceStats)> = infos
        .iter()
        .map(|d| (device_view(d), device_stats(&d.handle)))
        .chain(failed.iter().map(|f| {
            let v = failed_view(f);
            let s = DeviceStats {
                name: v.name.clone(),
                state: v.state.clone(),
                datapath: v.datapath.clone(),
                connections: 0,
                peer: None,
                queues: Vec::new(),
            };
            (v, s)
        }))
        .collect();
    all.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    all
}

fn list(ctx: &Context) -> Response {
    Response {
        devices: Some(all_views(&ctx.daemon).into_iter().map(|(v, _)| v).collect()),
        ..Response::ok()
    }
}

/// A device that could not start, as `list` shows it.
pub fn failed_view(f: &FailedInfo) -> DeviceView {
    DeviceView {
        name: f.config.name.clone(),
        mode: "none".to_owned(),
        mode_reason: format!("not started: {}", f.error),
        datapath: "none".to_owned(),
        backend: backend_text(&f.config),
        pci: f.config.pci.map(|p| PciView {
            address: p.to_string(),
            name: None,
        }),
        socket: f.config.socket.display().to_string(),
        socket_role: f.config.socket_role.to_string(),
        state: "failed".to_owned(),
        peer: None,
        connections: 0,
        queue_pairs: f.config.queue_pairs,
        running_pairs: Vec::new(),
        acked_features: "0x0".to_owned(),
        features: Vec::new(),
        mac: f.config.mac.map(|m| m.to_string()),
        mtu: f.config.mtu,
        fallback_reason: None,
        link_down: false,
        last_error: Some(f.error.clone()),
        start_failure: Some(StartFailureView {
            error: Some(f.error.clone()),
            attempts: f.failures,
            retry_in_seconds: Some(f.retry_in.as_secs_f64()),
        }),
        vdpa_attach: None,
        migration: None,
    }
}

fn stats(
    ctx: &Context,
    device: Option<&str>,
    queue: Option<u16>,
) -> Result<Response, ProtocolError> {
    let mut all = all_views(&ctx.daemon);
    if let Some(name) = device {
        all.retain(|(v, _)| v.name == name);
        if all.is_empty() {
            return Err(not_found(name));
        }
    }
    let sampled_at = ctx.started.elapsed().as_secs_f64();
    let queue_pairs = all.first().map_or(0, |(v, _)| v.queue_pairs);
    let mut stats: Vec<DeviceStats> = all.into_iter().map(|(_, s)| s).collect();
    if let Some(q) = queue {
        for s in &mut stats {
            s.queues.retain(|v| v.queue == q);
        }
        if stats.iter().all(|s| s.queues.is_empty()) {
            return Err(ProtocolError::new(
                ErrorCode::NotFound,
                match device {
                    Some(name) => format!(
                        "device \"{name}\" has no queue {q} (queues are 0 to {})",
                        queue_pairs * 2 - 1
                    ),
                    None => format!("no device has a queue {q}"),
                },
            ));
        }
    }
    Ok(Response {
        stats: Some(stats),
        sampled_at: Some(sampled_at),
        ..Response::ok()
    })
}

/// Adds every device of the snippet, or none: the snippet is validated against the
/// running configuration first (errors point into it), and if one device cannot be
/// started (or, with `persist`, its drop-in cannot be written), the ones already
/// started by this request are removed again and their drop-ins deleted.
fn add(ctx: &Context, text: &str, origin: &str, persist: bool) -> Result<Response, ProtocolError> {
    let mut daemon = lock_daemon(&ctx.daemon);
    let known = daemon.config().devices.len();
    let merged = daemon.config().with_snippet(text, origin).map_err(|e| {
        warn!(origin, error = %e, "control: device snippet refused; nothing changed");
        ProtocolError::new(ErrorCode::Invalid, e.to_string())
    })?;
    let new: Vec<DeviceConfig> = merged.devices[known..].to_vec();
    let mut drop_ins = Vec::new();
    if persist {
        for dev in &new {
            let path = persist::drop_in_path(&daemon.config().daemon, &dev.name)
                .map_err(|m| ProtocolError::new(ErrorCode::Invalid, m))?;
            let body = persist::drop_in_text(dev, text, new.len() == 1, origin);
            drop_ins.push((dev.name.clone(), path, body));
        }
    }
    let mut added: Vec<String> = Vec::new();
    for dev in new {
        let name = dev.name.clone();
        let socket = dev.socket.display().to_string();
        if let Err(e) = daemon.add(dev) {
            for done in added.iter().rev() {
                let _ = daemon.remove(done);
            }
            let msg = if added.is_empty() {
                format!("device {name}: {e:#}; nothing was added")
            } else {
                format!(
                    "device {name}: {e:#}; the devices added before it were removed again ({})",
                    added.join(", ")
                )
            };
            warn!(device = %name, error = %format!("{e:#}"), "control: adding a device failed; nothing changed");
            return Err(ProtocolError::new(ErrorCode::Failed, msg));
        }
        info!(device = %name, socket = %socket, origin, via = "control", "device added");
        added.push(name);
    }
    let mut written: Vec<String> = Vec::new();
    for (name, path, body) in &drop_ins {
        if let Err(e) = persist::write_atomically(path, body) {
            for done in written.iter() {
                let _ = persist::delete(std::path::Path::new(done));
            }
            for done in added.iter().rev() {
                let _ = daemon.remove(done);
            }
            let msg = format!(
                "device {name}: cannot write its drop-in {}: {e}; nothing was added",
                path.display()
            );
            warn!(device = %name, error = %msg, "control: persisting a device failed; nothing changed");
            return Err(ProtocolError::new(ErrorCode::Failed, msg));
        }
        info!(device = %name, file = %path.display(), "device persisted in a drop-in");
        written.push(path.display().to_string());
    }
    let infos = daemon.devices();
    drop(daemon);
    let views = infos
        .iter()
        .filter(|d| added.contains(&d.config.name))
        .map(device_view)
        .collect();
    Ok(Response {
        added: Some(added),
        devices: Some(views),
        persisted: persist.then_some(written),
        ..Response::ok()
    })
}

/// Removes a running device; with `persist`, also deletes its own drop-in (checked
/// first: nothing changes if the device is not persisted in a file of its own). A
/// device that is not running but has a drop-in loses the drop-in.
fn remove(ctx: &Context, name: &str, persist: bool) -> Result<Response, ProtocolError> {
    let mut daemon = lock_daemon(&ctx.daemon);
    let running = daemon.has_device(name);
    let drop_in = if persist {
        let path = persist::drop_in_path(&daemon.config().daemon, name)
            .map_err(|m| ProtocolError::new(ErrorCode::Invalid, m))?;
        match persist::check_own_drop_in(&path, name, &daemon.config().daemon) {
            Ok(()) => Some(path),
            Err(_) if !running && !path.exists() => return Err(not_found(name)),
            Err(m) => return Err(ProtocolError::new(ErrorCode::Invalid, m)),
        }
    } else {
        None
    };
    if !running && drop_in.is_none() {
        return Err(not_found(name));
    }
    if running {
        // Daemon::remove logs "device removed" once the device thread is gone.
        daemon
            .remove(name)
            .map_err(|e| ProtocolError::new(ErrorCode::Failed, format!("{e:#}")))?;
    }
    let mut persisted = None;
    if let Some(path) = drop_in {
        persist::delete(&path).map_err(|e| {
            ProtocolError::new(
                ErrorCode::Failed,
                format!(
                    "device {name} was removed, but its drop-in {} could not be deleted: {e}",
                    path.display()
                ),
            )
        })?;
        info!(device = name, file = %path.display(), "drop-in deleted");
        persisted = Some(vec![path.display().to_string()]);
    }
    Ok(Response {
        removed: Some(name.to_owned()),
        persisted,
        ..Response::ok()
    })
}

fn log_level(ctx: &Context, level: &str) -> Result<Response, ProtocolError> {
    check_log_level(level).map_err(|m| ProtocolError::new(ErrorCode::Invalid, m))?;
    ctx.log
        .set(level)
        .map_err(|m| ProtocolError::new(ErrorCode::Invalid, format!("log filter {m}")))?;
    info!(level, "log filter changed");
    Ok(Response {
        level: Some(level.to_owned()),
        ..Response::ok()
    })
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a run-time log filter more strictly than `tracing` does: `tracing` reads a
/// misspelled level (`debgu`) as a component name and then logs nothing else, which
/// is never what an operator meant.
pub fn check_log_level(text: &str) -> Result<(), String> {
    let help = "use a level (off, error, warn, info, debug, trace) or directives such as \
                \"info,swpath=debug\"";
    let directives: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Err(format!("the log level is empty; {help}"));
    }
    for d in directives {
        let (target, level) = match d.split_once('=') {
            Some((t, l)) => (Some(t), l),
            None => (None, d),
        };
        if target.is_some_and(|t| t.is_empty()) {
            return Err(format!("`{d}` has no component before `=`; {help}"));
        }
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!("`{level}` in `{d}` is not a level; {help}"));
        }
    }
    Ok(())
}

/// `rate`: the fields given ([tx_pps, tx_bps, rx_pps, rx_bps, burst_us]) replace the
/// device's current limits.
fn rate(ctx: &Context, name: &str, given: [Option<u64>; 5]) -> Result<Response, ProtocolError> {
    let daemon = lock_daemon(&ctx.daemon);
    let Some(control) = daemon.rate_control(name) else {
        return Err(if daemon.has_device(name) {
            ProtocolError::new(
                ErrorCode::Invalid,
                format!("device \"{name}\" runs offloaded without a software fallback: rate limits apply to the software datapath"),
            )
        } else {
            not_found(name)
        });
    };
    let max = vdpad_config::MAX_RATE;
    if let Some(v) = given[..4].iter().flatten().find(|v| **v > max) {
        return Err(ProtocolError::new(
            ErrorCode::Invalid,
            format!("rate {v} is above the largest accepted, {max}"),
        ));
    }
    if let Some(b) = given[4].filter(|b| !(100..=1_000_000).contains(b)) {
        return Err(ProtocolError::new(
            ErrorCode::Invalid,
            format!("burst_us {b} must be between 100 and 1000000"),
        ));
    }
    let mut r = control.get();
    let fields = [&mut r.tx.pps, &mut r.tx.bps, &mut r.rx.pps, &mut r.rx.bps];
    for (f, v) in fields.into_iter().zip(given) {
        if let Some(v) = v {
            *f = v;
        }
    }
    if let Some(b) = given[4] {
        r.burst = std::time::Duration::from_micros(b);
    }
    control.set(r);
    info!(
        device = name,
        tx_pps = r.tx.pps,
        tx_bps = r.tx.bps,
        rx_pps = r.rx.pps,
        rx_bps = r.rx.bps,
        burst_us = r.burst.as_micros() as u64,
        "rate limits changed"
    );
    Ok(Response {
        rates: Some(rate_view(&r)),
        ..Response::ok()
    })
}

/// Limits as the protocol shows them.
pub fn rate_view(r: &swpath::ratelimit::Rates) -> RateView {
    RateView {
        tx_pps: r.tx.pps,
        tx_bps: r.tx.bps,
        rx_pps: r.rx.pps,
        rx_bps: r.rx.bps,
        burst_us: r.burst.as_micros() as u64,
    }
}

fn not_found(name: &str) -> ProtocolError {
    ProtocolError::new(ErrorCode::NotFound, format!("no device named \"{name}\""))
}

/// The software backend as one word: `loopback`, `tap`, `tap:NAME`, `af_packet`,
/// `af_packet:NETDEV`.
pub fn backend_text(dev: &DeviceConfig) -> String {
    let name = match &dev.backend {
        Backend::Loopback => None,
        Backend::Tap { name } => name.as_deref(),
        Backend::AfPacket { netdev } => netdev.as_deref(),
    };
    match name {
        Some(n) => format!("{}:{n}", dev.backend.keyword()),
        None => dev.backend.keyword().to_owned(),
    }
}

/// A device as `list` shows it.
pub fn device_view(d: &DeviceInfo) -> DeviceView {
    let st = d.handle.status();
    DeviceView {
        name: d.config.name.clone(),
        mode: d.mode.to_owned(),
        mode_reason: d.reason.clone(),
        datapath: d.handle.datapath_description(),
        backend: backend_text(&d.config),
        pci: d.config.pci.map(|p| PciView {
            address: p.to_string(),
            name: d.pci_name.clone(),
        }),
        socket: match d.config.frontend {
            vdpad_config::Frontend::VhostUser => d.config.socket.display().to_string(),
            vdpad_config::Frontend::Vduse { .. } => format!("/dev/vduse/{}", d.config.name),
        },
        socket_role: d.config.socket_role.to_string(),
        state: state_name(&st),
        peer: peer_view(&st),
        connections: st.connections,
        queue_pairs: d.config.queue_pairs,
        running_pairs: st.running_pairs.clone(),
        acked_features: format!("{:#x}", st.acked_features),
        features: st
            .acked_feature_names
            .iter()
            .map(|s| s.to_string())
            .collect(),
        mac: d.config.mac.map(|m| m.to_string()),
        mtu: d.config.mtu,
        fallback_reason: st.fallback_reason.clone(),
        link_down: st.link_down,
        last_error: st.last_error.clone(),
        start_failure: (d.start_failures > 0).then_some(StartFailureView {
            error: None,
            attempts: d.start_failures,
            retry_in_seconds: None,
        }),
        vdpa_attach: d.vdpa_attach.clone(),
        migration: migration_view(&st),
    }
}

/// The device's part in migrations: its dirty log (current or last connection's) and,
/// for an offload device that relays, the relays so far. `None` if it has neither.
fn migration_view(st: &vdpa::DeviceStatus) -> Option<MigrationView> {
    let relay = st.relay.map(|r| RelayView {
        relaying: r.since.is_some(),
        relays: r.relays,
        relay_ms: r.total(std::time::Instant::now()).as_millis() as u64,
    });
    if st.dirty_log.is_none() && relay.as_ref().is_none_or(|r| r.relays == 0) {
        return None;
    }
    let log = st.dirty_log.unwrap_or_default();
    Some(MigrationView {
        logging: st.logging,
        log_bytes: log.bytes,
        pages_marked: log.pages_marked,
        outside_log: log.outside_log,
        relay,
    })
}

/// The connection state's name (`waiting`, `connected`, `running`).
pub fn state_name(st: &vdpa::DeviceStatus) -> String {
    // The enum serializes in lowercase; use that so JSON, tables and metrics agree.
    serde_json::to_value(st.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{:?}", st.state).to_lowercase())
}

/// A client-mode device's peer connection (`None` for a server).
pub fn peer_view(st: &vdpa::DeviceStatus) -> Option<PeerView> {
    let p = st.peer.as_ref()?;
    Some(PeerView {
        state: if p.connected { "connected" } else { "waiting" }.to_owned(),
        attempts: p.attempts,
        failed_attempts: p.failed_attempts,
        last_error: p.last_error.clone(),
        retry_in_seconds: p
            .next_attempt
            .map(|at| at.saturating_duration_since(Instant::now()).as_secs_f64()),
    })
}

/// One device's counters.
pub fn device_stats(h: &DeviceHandle) -> DeviceStats {
    let st = h.status();
    DeviceStats {
        name: h.name().to_owned(),
        state: state_name(&st),
        datapath: h.datapath_description(),
        connections: st.connections,
        peer: peer_view(&st),
        queues: h.stats().iter().map(queue_view).collect(),
    }
}

/// One queue's counters.
pub fn queue_view(q: &QueueStats) -> QueueView {
    QueueView {
        queue: q.ring,
        pair: q.ring / 2,
        direction: q.direction.to_owned(),
        packets: q.packets,
        bytes: q.bytes,
        kicks: q.kicks,
        interrupts: q.interrupts,
        interrupts_suppressed: q.interrupts_suppressed,
        bursts: q.bursts,
        rx_no_buffer: q.rx_no_buffer,
        sleeps: q.sleeps,
        drops: q.drops.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        drops_total: q.total_drops(),
        bad_descriptors: q
            .bad_descriptors
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        bad_descriptors_total: q.total_bad_descriptors(),
        faults: q.faults.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        throttled: q.throttled,
        throttled_seconds: q.throttled_ns as f64 / 1e9,
        packets_per_kick: q.packets_per_kick(),
        packets_per_interrupt: q.packets_per_interrupt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_are_checked() {
        for ok in [
            "debug",
            "INFO",
            "info,vdpa=debug",
            "warn,swpath=trace,",
            "off",
        ] {
            assert_eq!(check_log_level(ok), Ok(()), "{ok}");
        }
        for bad in ["", "debgu", "info,vdpa", "=debug", "vdpa=loud"] {
            assert!(check_log_level(bad).is_err(), "{bad}");
        }
        assert!(check_log_level("debgu").unwrap_err().contains("`debgu`"));
    }

    #[test]
    fn queue_views_name_every_reason() {
        let c = vdpa::QueueCounters::default();
        let mut b = vdpa::BurstCounts {
            packets: 10,
            bytes: 640,
            kicks: 2,
            ..Default::default()
        };
        b.drop(vdpa::DropReason::Oversized);
        c.flush(&mut b);
        let v = queue_view(&c.snapshot(3));
        assert_eq!((v.queue, v.pair, v.direction.as_str()), (3, 1, "tx"));
        assert_eq!(v.drops["oversized"], 1);
        assert_eq!(v.drops.len(), vdpa::DropReason::ALL.len());
        assert_eq!(v.bad_descriptors.len(), vdpa::BadDescriptor::ALL.len());
        assert_eq!(v.faults.len(), vdpa::stats::QueueFault::ALL.len());
        assert_eq!(v.faults["guest_memory"], 0);
        c.fault(vdpa::stats::QueueFault::GuestMemory);
        assert_eq!(queue_view(&c.snapshot(3)).faults["guest_memory"], 1);
        assert_eq!(v.packets_per_kick, Some(5.0));
        assert_eq!(v.packets_per_interrupt, None);
    }
}
