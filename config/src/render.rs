//! Rendering the effective configuration as TOML, every default spelled out, so that
//! `vdpad --check-config` shows exactly what will run and the output parses back to
//! the same configuration.

use std::fmt::{self, Write};
use std::path::Path;

use crate::model::{
    Backend, Config, DaemonConfig, DeviceConfig, Frontend, LogFormat, Mode, PortSecurity,
    RateLimits, SocketPerms, SocketRole, Tuning, VdpaDriver,
};

impl VdpaDriver {
    /// The configuration keyword, which is also the kernel driver's name.
    pub fn as_str(self) -> &'static str {
        match self {
            VdpaDriver::VhostVdpa => "vhost_vdpa",
            VdpaDriver::VirtioVdpa => "virtio_vdpa",
        }
    }
}

impl fmt::Display for VdpaDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Mode {
    /// The configuration keyword: `auto`, `offload` or `software`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Offload => "offload",
            Mode::Software => "software",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SocketRole {
    /// The configuration keyword: `server` or `client`.
    pub fn as_str(self) -> &'static str {
        match self {
            SocketRole::Server => "server",
            SocketRole::Client => "client",
        }
    }
}

impl fmt::Display for SocketRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl LogFormat {
    /// The configuration keyword: `text` or `json`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Backend {
    /// The configuration keyword: `loopback`, `tap` or `af_packet`.
    pub fn keyword(&self) -> &'static str {
        match self {
            Backend::Loopback => "loopback",
            Backend::Tap { .. } => "tap",
            Backend::AfPacket { .. } => "af_packet",
        }
    }
}

/// A TOML basic string: quoted, with `"`, `\` and control characters escaped.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

fn write_perms(f: &mut fmt::Formatter<'_>, perms: &SocketPerms) -> fmt::Result {
    writeln!(f, "socket_mode = \"{:04o}\"", perms.mode)?;
    if let Some(uid) = perms.owner {
        writeln!(f, "socket_owner = {uid}")?;
    }
    if let Some(gid) = perms.group {
        writeln!(f, "socket_group = {gid}")?;
    }
    Ok(())
}

fn write_daemon(f: &mut fmt::Formatter<'_>, d: &DaemonConfig) -> fmt::Result {
    writeln!(f, "[daemon]")?;
    writeln!(f, "run_dir = {}", path(&d.run_dir))?;
    writeln!(f, "control_socket = {}", path(&d.control_socket))?;
    writeln!(f, "log_level = {}", quote(&d.log_level))?;
    writeln!(f, "log_format = \"{}\"", d.log_format)?;
    if let Some(addr) = d.metrics_listen {
        writeln!(f, "metrics_listen = \"{addr}\"")?;
    }
    if let Some(dir) = &d.include_dir {
        writeln!(f, "include_dir = {}", path(dir))?;
    }
    writeln!(f, "control_socket_mode = \"{:04o}\"", d.control_socket_mode)?;
    if !d.socket_dirs.is_empty() {
        let dirs: Vec<String> = d.socket_dirs.iter().map(|p| path(p)).collect();
        writeln!(f, "socket_dirs = [{}]", dirs.join(", "))?;
    }
    write_perms(f, &d.socket_perms)
}

fn write_tuning(f: &mut fmt::Formatter<'_>, t: &Tuning) -> fmt::Result {
    writeln!(f, "burst = {}", t.burst)?;
    if let Some(w) = t.weight {
        writeln!(f, "weight = {w}")?;
    }
    writeln!(f, "polling = \"{}\"", t.polling.keyword())?;
    writeln!(f, "busy_poll_us = {}", t.busy_poll_us)?;
    writeln!(f, "rx_coalesce_frames = {}", t.rx_coalesce_frames)?;
    writeln!(f, "rx_coalesce_usecs = {}", t.rx_coalesce_usecs)?;
    let cpus: Vec<String> = t.cpus.iter().map(u16::to_string).collect();
    writeln!(f, "cpus = [{}]", cpus.join(", "))?;
    writeln!(f, "workers = \"{}\"", t.workers.keyword())
}

fn write_device(f: &mut fmt::Formatter<'_>, d: &DeviceConfig) -> fmt::Result {
    writeln!(f, "[[device]]")?;
    writeln!(f, "name = {}", quote(&d.name))?;
    match d.frontend {
        Frontend::VhostUser => {
            writeln!(f, "socket = {}", path(&d.socket))?;
            writeln!(f, "socket_role = \"{}\"", d.socket_role)?;
        }
        Frontend::Vduse { driver } => {
            writeln!(f, "frontend = \"vduse\"")?;
            let driver = driver.map_or("none", VdpaDriver::as_str);
            writeln!(f, "vdpa_driver = \"{driver}\"")?;
        }
    }
    writeln!(f, "mode = \"{}\"", d.mode)?;
    if let Some(pci) = d.pci {
        writeln!(f, "pci = \"{pci}\"")?;
    }
    if let Some(vm) = &d.vm {
        writeln!(f, "vm = {}", quote(vm))?;
    }
    writeln!(f, "backend = \"{}\"", d.backend.keyword())?;
    match &d.backend {
        Backend::Tap { name: Some(name) } => writeln!(f, "tap_name = {}", quote(name))?,
        Backend::AfPacket {
            netdev: Some(netdev),
        } => writeln!(f, "netdev = {}", quote(netdev))?,
        _ => {}
    }
    writeln!(f, "queue_pairs = {}", d.queue_pairs)?;
    writeln!(f, "queue_size = {}", d.queue_size)?;
    if let Some(mac) = d.mac {
        writeln!(f, "mac = \"{mac}\"")?;
    }
    if let Some(mtu) = d.mtu {
        writeln!(f, "mtu = {mtu}")?;
    }
    writeln!(
        f,
        "max_guest_memory = \"{}\"",
        crate::fields::render_size(d.max_guest_memory)
    )?;
    writeln!(f, "event_idx = {}", d.event_idx)?;
    writeln!(f, "mrg_rxbuf = {}", d.mrg_rxbuf)?;
    writeln!(f, "offloads = {}", d.offloads)?;
    writeln!(f, "fallback = {}", d.fallback)?;
    // A client-mode socket is the frontend's: its permissions are not vdpad's to set.
    if d.frontend == Frontend::VhostUser && d.socket_role == SocketRole::Server {
        write_perms(f, &d.socket_perms)?;
    }
    write_tuning(f, &d.tuning)?;
    write_security(f, &d.security)?;
    write_rates(f, &d.rates)
}

fn write_security(f: &mut fmt::Formatter<'_>, s: &PortSecurity) -> fmt::Result {
    let list = |items: Vec<String>| items.join(", ");
    writeln!(f, "promiscuous = {}", s.promiscuous)?;
    writeln!(f, "spoof_check = {}", s.spoof_check)?;
    writeln!(
        f,
        "allowed_ips = [{}]",
        list(s.allowed_ips.iter().map(|p| format!("\"{p}\"")).collect())
    )?;
    if let Some(groups) = &s.multicast {
        let g = list(groups.iter().map(|m| format!("\"{m}\"")).collect());
        writeln!(f, "multicast = [{g}]")?;
    }
    if let Some(v) = s.vlan {
        writeln!(f, "vlan = {v}")?;
    }
    let t = list(s.trunk_vlans.iter().map(|v| v.to_string()).collect());
    writeln!(f, "trunk_vlans = [{t}]")?;
    writeln!(f, "shared_netdev = {}", s.shared_netdev)
}

fn write_rates(f: &mut fmt::Formatter<'_>, r: &RateLimits) -> fmt::Result {
    writeln!(f, "tx_pps = {}", r.tx_pps)?;
    writeln!(f, "tx_bps = {}", r.tx_bps)?;
    writeln!(f, "rx_pps = {}", r.rx_pps)?;
    writeln!(f, "rx_bps = {}", r.rx_bps)?;
    writeln!(f, "rate_burst_us = {}", r.burst_us)
}

impl DeviceConfig {
    /// This device as one `[[device]]` table with every default written out (what a
    /// drop-in file written by `vdpactl add --persist` holds for a device that came
    /// in a snippet with others).
    pub fn to_toml(&self) -> String {
        struct One<'a>(&'a DeviceConfig);
        impl fmt::Display for One<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_device(f, self.0)
            }
        }
        One(self).to_string()
    }
}

/// Renders the effective configuration as TOML with every default written out: PCI,
/// MAC and metrics addresses in canonical form, socket modes as octal strings
/// (`"0600"`), owners and groups as numeric ids, the software datapath knobs of every
/// device (`cpus = []` when workers are not pinned). Parsing the output gives back an
/// equal [`Config`] (for any configuration produced by parsing: a device's socket
/// owner or group can only be unset if the daemon's is).
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "# vdpad effective configuration (all defaults filled in)"
        )?;
        writeln!(f)?;
        write_daemon(f, &self.daemon)?;
        for device in &self.devices {
            writeln!(f)?;
            write_device(f, device)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_round_trips_through_toml() {
        #[derive(serde::Deserialize)]
        struct T {
            s: String,
        }
        for s in [
            "plain",
            "with \"quotes\" and \\",
            "tab\tnew\nline\r",
            "bell\u{7}del\u{7f}",
            "ünï",
        ] {
            let text = format!("s = {}\n", quote(s));
            let t: T = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(t.s, s);
        }
    }

    #[test]
    fn keywords() {
        assert_eq!(Mode::Offload.to_string(), "offload");
        assert_eq!(LogFormat::Json.to_string(), "json");
        assert_eq!(Backend::AfPacket { netdev: None }.keyword(), "af_packet");
    }
}
