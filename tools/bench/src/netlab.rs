//! The kernel side of the `kern-` cells: what the backend forwards to when it is not
//! its own loopback. Each run gets a network namespace of its own with the interface
//! the backend is given (`vbk0`) and a tc reflector that turns every frame around, so
//! both backends (vdpad's `tap`/`af_packet`, DPDK's `net_tap`/`net_af_packet`) pay for
//! the same kernel path: out through the interface and back in.
//!
//! The reflector is a `u32 match u32 0 0` filter on the ingress qdisc with `mirred
//! egress redirect` to the interface it came in on (the lab kernels have `cls_u32` and
//! `act_mirred`, not always `cls_matchall`). For a tap that is the tap itself: what the
//! backend writes comes straight back to its reads. For `af_packet` it is the far end
//! of a veth pair. IPv6 is off in the namespace so the kernel sends nothing of its own;
//! frames never leave the namespace, which is deleted when the run ends.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::proc::Spawn;

/// What the backend forwards the frontend's frames to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Port {
    /// Straight back to the frontend: vdpad's `loopback` backend, testpmd's io
    /// forwarding in loop topology.
    Loopback,
    /// A tap device: vdpad `backend = "tap"`, DPDK `net_tap`; the tap reflects.
    Tap,
    /// One end of a veth pair: vdpad `backend = "af_packet"`, DPDK `net_af_packet`;
    /// the other end reflects.
    AfPacket,
}

impl Port {
    /// Short name for titles.
    pub fn describe(self) -> &'static str {
        match self {
            Port::Loopback => "loopback",
            Port::Tap => "tap (tc reflector)",
            Port::AfPacket => "af_packet on a veth (tc reflector on the peer)",
        }
    }
}

/// The interface the backend is given.
pub const IFACE: &str = "vbk0";
/// The far end of the veth pair (`af_packet` cells).
const PEER: &str = "vbk1";

/// A namespace with a reflecting interface; deleted on drop.
#[derive(Debug)]
pub struct Reflector {
    ns: String,
    port: Port,
}

impl Reflector {
    /// Creates namespace `ns` for `port` (a veth pair with its peer reflecting, for
    /// `af_packet`; nothing yet for a tap, which the backend creates).
    pub fn create(ns: &str, port: Port) -> Result<Reflector> {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
        run(&["ip", "netns", "add", ns])?;
        let r = Reflector {
            ns: ns.to_string(),
            port,
        };
        for knob in ["all", "default"] {
            r.exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{knob}.disable_ipv6=1"),
            ])?;
        }
        if port == Port::AfPacket {
            r.ip(&["link", "add", IFACE, "type", "veth", "peer", "name", PEER])?;
            // A veth drops what is longer than its MTU, and a 1518-byte frame carries
            // 1504 bytes after its Ethernet header.
            for dev in [IFACE, PEER] {
                r.ip(&["link", "set", dev, "mtu", "9000"])?;
            }
            r.ip(&["link", "set", IFACE, "up"])?;
            r.reflect(PEER)?;
        }
        Ok(r)
    }

    /// Once the backend runs: for a tap, waits (up to `timeout`) for the backend to
    /// create it, then makes it reflect. Nothing to do for a veth.
    pub fn attach(&self, timeout: Duration) -> Result<()> {
        if self.port != Port::Tap {
            return Ok(());
        }
        let until = Instant::now() + timeout;
        while self.ip(&["link", "show", IFACE]).is_err() {
            if Instant::now() >= until {
                bail!("the backend did not create tap {IFACE} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.reflect(IFACE)
    }

    /// `spawn`, run inside the namespace (`ip netns exec`, which execs the program:
    /// the pid, pinning and logs stay those of `spawn`).
    pub fn inside(&self, spawn: Spawn) -> Spawn {
        in_namespace(&self.ns, spawn)
    }

    /// Brings `dev` up and sends everything arriving on it back out of it.
    fn reflect(&self, dev: &str) -> Result<()> {
        self.ip(&["link", "set", dev, "up"])?;
        self.exec(&["tc", "qdisc", "add", "dev", dev, "ingress"])?;
        self.exec(&[
            "tc", "filter", "add", "dev", dev, "parent", "ffff:", "u32", "match", "u32", "0", "0",
            "action", "mirred", "egress", "redirect", "dev", dev,
        ])
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["ip", "-n", &self.ns];
        all.extend_from_slice(args);
        run(&all)
    }

    fn exec(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["ip", "netns", "exec", &self.ns];
        all.extend_from_slice(args);
        run(&all)
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        // Deleting the namespace deletes its interfaces (a tap whose fd is still open
        // goes with its last user, the backend, which is stopped before this).
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn in_namespace(ns: &str, spawn: Spawn) -> Spawn {
    let mut args = vec!["netns".into(), "exec".into(), ns.to_string()];
    args.push(spawn.program.display().to_string());
    args.extend(spawn.args);
    Spawn {
        program: PathBuf::from("ip"),
        args,
        ..spawn
    }
}

fn run(argv: &[&str]) -> Result<()> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| format!("cannot run {}", argv[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spawn_inside_the_namespace_keeps_its_pinning_and_logs() {
        let mut s = Spawn::new(
            "x",
            std::path::Path::new("/bin/prog"),
            vec!["--a".into(), "1".into()],
            std::path::Path::new("/tmp/l.log"),
        );
        s.cpu = Some(1);
        let w = in_namespace("vbtest", s);
        assert_eq!(w.program, PathBuf::from("ip"));
        assert_eq!(w.args, ["netns", "exec", "vbtest", "/bin/prog", "--a", "1"]);
        assert_eq!(w.cpu, Some(1));
        assert_eq!(w.log, PathBuf::from("/tmp/l.log"));
    }
}
