//! DPDK `dpdk-testpmd` as backend A (`net_vhost0`, the vhost library) and as the
//! frontend (`net_virtio_user0`), and its per-second statistics.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::netlab::{self, Port};
use crate::proc::Spawn;

/// Where testpmd's memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Memory {
    /// `-m 512 --single-file-segments` from /dev/hugepages.
    Huge,
    /// `--no-huge -m 1024` (memfd memory): works without hugepages.
    NoHuge,
}

impl Memory {
    /// Hugepages when at least 600 free 2 MiB pages exist (two testpmds of 512 MiB
    /// each may run at once: `-m` is what each one reserves), else no hugepages.
    pub fn auto() -> Memory {
        if crate::machine::hugepages_free() >= 600 {
            Memory::Huge
        } else {
            Memory::NoHuge
        }
    }

    fn args(self) -> Vec<String> {
        match self {
            Memory::Huge => vec!["-m".into(), "512".into(), "--single-file-segments".into()],
            Memory::NoHuge => vec!["--no-huge".into(), "-m".into(), "1024".into()],
        }
    }
}

/// The testpmd program: `--testpmd`, else `$DPDK_TESTPMD`, else `dpdk-testpmd` on PATH.
pub fn find(explicit: Option<&Path>) -> Result<PathBuf> {
    let candidate = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("DPDK_TESTPMD").map(PathBuf::from));
    if let Some(p) = candidate {
        if p.is_file() {
            return Ok(p);
        }
        bail!(
            "dpdk-testpmd not found at {}: run sudo tests/lab/setup.sh (installs dpdk-dev)",
            p.display()
        );
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join("dpdk-testpmd");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("dpdk-testpmd is not installed (not on PATH): run sudo tests/lab/setup.sh (installs dpdk-dev and the vhost/virtio drivers)")
}

/// One testpmd process: which role, where, how.
#[derive(Debug, Clone)]
pub struct Testpmd {
    /// The `--vdev` arguments, one per port.
    pub vdevs: Vec<String>,
    /// CPU for both lcores (`--lcores 0@N,1@N`).
    pub cpu: usize,
    /// EAL file prefix (runtime dir and hugepage file names); unique per process.
    pub prefix: String,
    /// Memory source.
    pub memory: Memory,
    /// Application arguments after `--`.
    pub app: Vec<String>,
}

impl Testpmd {
    /// Backend A: DPDK's vhost library, one port per socket. On the loopback port each
    /// port's frames are forwarded back to it (io forwarding, loop topology); on a
    /// kernel port the vhost port and a `net_tap` / `net_af_packet` port on
    /// [`netlab::IFACE`] forward to each other (paired topology). One forwarding core.
    pub fn vhost_backend(
        sockets: &[PathBuf],
        port: Port,
        cpu: usize,
        prefix: &str,
        memory: Memory,
    ) -> Testpmd {
        let mut vdevs: Vec<String> = sockets
            .iter()
            .enumerate()
            .map(|(i, s)| format!("net_vhost{i},iface={},queues=1", s.display()))
            .collect();
        let mut app = io_loop_args();
        let kernel = match port {
            Port::Loopback => None,
            Port::Tap => Some(format!("net_tap0,iface={}", netlab::IFACE)),
            Port::AfPacket => Some(format!("net_af_packet0,iface={},qpairs=1", netlab::IFACE)),
        };
        if let Some(k) = kernel {
            vdevs.push(k);
            app[1] = "--port-topology=paired".into();
        }
        Testpmd {
            vdevs,
            cpu,
            prefix: prefix.into(),
            memory,
            app,
        }
    }

    /// The frontend: DPDK virtio-user, one port per socket, io forwarding, statistics
    /// every second; with `send`, one burst of `size`-byte frames per port sent first
    /// (`--tx-first`), else nothing is ever sent (an idle VM).
    pub fn virtio_user_frontend(
        sockets: &[PathBuf],
        cpu: usize,
        prefix: &str,
        memory: Memory,
        size: usize,
        send: bool,
    ) -> Testpmd {
        let mut app = io_loop_args();
        if send {
            app.push("--tx-first".into());
        }
        app.push(format!("--txpkts={size}"));
        Testpmd {
            vdevs: sockets
                .iter()
                .enumerate()
                .map(|(i, s)| format!("net_virtio_user{i},path={},queues=1", s.display()))
                .collect(),
            cpu,
            prefix: prefix.into(),
            memory,
            app,
        }
    }

    /// The command to run `program` with these settings, logging to `log`.
    pub fn spawn(&self, name: &str, program: &Path, log: &Path) -> Spawn {
        let mut args = vec![
            "--lcores".into(),
            format!("0@{c},1@{c}", c = self.cpu),
            "--no-pci".into(),
            "--file-prefix".into(),
            self.prefix.clone(),
        ];
        args.extend(self.memory.args());
        for v in &self.vdevs {
            args.push("--vdev".into());
            args.push(v.clone());
        }
        args.push("--".into());
        args.extend(self.app.iter().cloned());
        Spawn::new(name, program, args, log)
    }

    /// Removes what DPDK leaves behind for this prefix: its runtime directory and its
    /// hugepage backing files.
    pub fn cleanup(&self) {
        let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(&self.prefix));
        if let Ok(entries) = std::fs::read_dir("/dev/hugepages") {
            let start = format!("{}map_", self.prefix);
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&start) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// io forwarding, loop topology (each port → itself), one forwarding core, stats every
/// second (without a stats period non-interactive testpmd exits when stdin is closed).
fn io_loop_args() -> Vec<String> {
    [
        "--forward-mode=io",
        "--port-topology=loop",
        "--nb-cores=1",
        "--stats-period",
        "1",
    ]
    .map(String::from)
    .to_vec()
}

/// The per-second `Rx-pps` values testpmd printed for `port`, in order. The first
/// periodic block has no previous sample and always shows 0; it is included.
pub fn rx_pps_samples(log: &str, port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    let mut current: Option<u16> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("NIC statistics for port").nth(1) {
            current = rest.split_whitespace().next().and_then(|p| p.parse().ok());
            continue;
        }
        if current != Some(port) {
            continue;
        }
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "Rx-pps:" {
                if let Some(v) = words.next().and_then(|v| v.parse().ok()) {
                    out.push(v);
                    current = None;
                }
                break;
            }
        }
    }
    out
}

/// The per-second `Rx-pps` summed over ports `0..ports`, as many samples as every
/// port has printed.
pub fn total_rx_pps_samples(log: &str, ports: u16) -> Vec<u64> {
    let per_port: Vec<Vec<u64>> = (0..ports).map(|p| rx_pps_samples(log, p)).collect();
    let n = per_port.iter().map(Vec::len).min().unwrap_or(0);
    (0..n)
        .map(|i| per_port.iter().map(|v| v[i]).sum())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\x1b[2J\x1b[1;1H\nPort statistics ====\n  ######## NIC statistics for port 0  ####\n  RX-packets: 0 RX-missed: 0\n  Throughput (since last show)\n  Rx-pps:            0          Rx-bps:            0\n  Tx-pps:            0          Tx-bps:            0\n  ####\n\x1b[2J\x1b[1;1H\n  ######## NIC statistics for port 0  ####\n  Rx-pps:      9707230          Rx-bps:   4970102168\n  Tx-pps:      9707231          Tx-bps:   4970102168\n  ######## NIC statistics for port 1  ####\n  Rx-pps:      5          Rx-bps:   4970102168\n";

    #[test]
    fn parses_rx_pps_per_port() {
        assert_eq!(rx_pps_samples(LOG, 0), vec![0, 9_707_230]);
        assert_eq!(rx_pps_samples(LOG, 1), vec![5]);
        assert!(rx_pps_samples("", 0).is_empty());
        // Port 1 printed one sample: the total has one.
        assert_eq!(total_rx_pps_samples(LOG, 2), vec![5]);
        assert_eq!(total_rx_pps_samples(LOG, 1), vec![0, 9_707_230]);
    }

    #[test]
    fn command_lines() {
        let one = [PathBuf::from("/s.sock")];
        let t = Testpmd::virtio_user_frontend(&one, 1, "vb1", Memory::Huge, 64, true);
        let s = t.spawn("fe", Path::new("dpdk-testpmd"), Path::new("/l"));
        let line = s.command_line();
        assert!(line.contains("--lcores 0@1,1@1"), "{line}");
        assert!(line.contains("--vdev net_virtio_user0,path=/s.sock,queues=1"));
        assert!(line.contains("--tx-first --txpkts=64"));
        assert!(line.contains("--port-topology=loop"));
        let b = Testpmd::vhost_backend(&one, Port::Loopback, 0, "vb2", Memory::NoHuge);
        let line = b
            .spawn("be", Path::new("t"), Path::new("/l"))
            .command_line();
        assert!(line.contains("--no-huge -m 1024 --vdev net_vhost0,iface=/s.sock,queues=1"));
        let two = [PathBuf::from("/a.sock"), PathBuf::from("/b.sock")];
        let idle = Testpmd::virtio_user_frontend(&two, 1, "vb3", Memory::Huge, 64, false);
        let line = idle
            .spawn("fe", Path::new("t"), Path::new("/l"))
            .command_line();
        assert!(line.contains("--vdev net_virtio_user0,path=/a.sock,queues=1 --vdev net_virtio_user1,path=/b.sock,queues=1"), "{line}");
        assert!(!line.contains("--tx-first"), "{line}");
        for (port, vdev) in [
            (Port::Tap, "--vdev net_tap0,iface=vbk0 "),
            (Port::AfPacket, "--vdev net_af_packet0,iface=vbk0,qpairs=1 "),
        ] {
            let k = Testpmd::vhost_backend(&one, port, 0, "vb4", Memory::Huge);
            let line = k
                .spawn("be", Path::new("t"), Path::new("/l"))
                .command_line();
            assert!(
                line.contains(&format!("queues=1 {vdev}--")),
                "the kernel port follows the vhost port: {line}"
            );
            assert!(line.contains("--port-topology=paired"), "{line}");
        }
    }
}
