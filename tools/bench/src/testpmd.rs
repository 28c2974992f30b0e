//! DPDK `dpdk-testpmd` as backend A (`net_vhost0`, the vhost library) and as the
//! frontend (`net_virtio_user0`), and its per-second statistics.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

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
    /// The `--vdev` argument.
    pub vdev: String,
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
    /// Backend A: DPDK's vhost library on `socket`, io forwarding back to the same port.
    pub fn vhost_backend(socket: &Path, cpu: usize, prefix: &str, memory: Memory) -> Testpmd {
        Testpmd {
            vdev: format!("net_vhost0,iface={},queues=1", socket.display()),
            cpu,
            prefix: prefix.into(),
            memory,
            app: io_loop_args(),
        }
    }

    /// The frontend: DPDK virtio-user on `socket`, io forwarding, one burst of `size`-byte
    /// frames sent first (`start tx_first`), statistics every second.
    pub fn virtio_user_frontend(
        socket: &Path,
        cpu: usize,
        prefix: &str,
        memory: Memory,
        size: usize,
    ) -> Testpmd {
        let mut app = io_loop_args();
        app.push("--tx-first".into());
        app.push(format!("--txpkts={size}"));
        Testpmd {
            vdev: format!("net_virtio_user0,path={},queues=1", socket.display()),
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
        args.push("--vdev".into());
        args.push(self.vdev.clone());
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

/// io forwarding, loop topology (port 0 → port 0), one forwarding core, stats every
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

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\x1b[2J\x1b[1;1H\nPort statistics ====\n  ######## NIC statistics for port 0  ####\n  RX-packets: 0 RX-missed: 0\n  Throughput (since last show)\n  Rx-pps:            0          Rx-bps:            0\n  Tx-pps:            0          Tx-bps:            0\n  ####\n\x1b[2J\x1b[1;1H\n  ######## NIC statistics for port 0  ####\n  Rx-pps:      9707230          Rx-bps:   4970102168\n  Tx-pps:      9707231          Tx-bps:   4970102168\n  ######## NIC statistics for port 1  ####\n  Rx-pps:      5          Rx-bps:   4970102168\n";

    #[test]
    fn parses_rx_pps_per_port() {
        assert_eq!(rx_pps_samples(LOG, 0), vec![0, 9_707_230]);
        assert_eq!(rx_pps_samples(LOG, 1), vec![5]);
        assert!(rx_pps_samples("", 0).is_empty());
    }

    #[test]
    fn command_lines() {
        let t = Testpmd::virtio_user_frontend(Path::new("/s.sock"), 1, "vb1", Memory::Huge, 64);
        let s = t.spawn("fe", Path::new("dpdk-testpmd"), Path::new("/l"));
        let line = s.command_line();
        assert!(line.contains("--lcores 0@1,1@1"), "{line}");
        assert!(line.contains("--vdev net_virtio_user0,path=/s.sock,queues=1"));
        assert!(line.contains("--tx-first --txpkts=64"));
        assert!(line.contains("--port-topology=loop"));
        let b = Testpmd::vhost_backend(Path::new("/s.sock"), 0, "vb2", Memory::NoHuge);
        let line = b
            .spawn("be", Path::new("t"), Path::new("/l"))
            .command_line();
        assert!(line.contains("--no-huge -m 1024 --vdev net_vhost0,iface=/s.sock,queues=1"));
    }
}
