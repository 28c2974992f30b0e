//! DPDK `dpdk-testpmd` as a peer: a vhost-user frontend (`net_virtio_user`) or backend
//! (`net_vhost`), with its port statistics parsed from the log.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::process::{send_signal, Proc, Spawn, SIGINT, SIGKILL};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Where testpmd's memory comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Memory {
    /// `--no-huge -m 1024`: anonymous memfd memory, works on any machine.
    NoHuge,
    /// `-m 512` from the hugetlbfs at /dev/hugepages.
    Hugepages,
}

impl Memory {
    /// `VDPAD_TESTPMD_MEM=huge` selects hugepages; anything else `--no-huge`.
    pub fn from_env() -> Memory {
        match std::env::var("VDPAD_TESTPMD_MEM").as_deref() {
            Ok("huge") => Memory::Hugepages,
            _ => Memory::NoHuge,
        }
    }
}

/// How to run testpmd.
#[derive(Clone, Debug)]
pub struct TestpmdConfig {
    /// `--vdev` arguments, e.g. `net_virtio_user0,path=/tmp/x.sock,queues=1`.
    pub vdevs: Vec<String>,
    /// Application arguments after `--` (forward mode, stats period, ...).
    pub app_args: Vec<String>,
    /// Host CPU for both testpmd lcores (`--lcores 0@N,1@N`).
    pub cpu: usize,
    /// Memory source.
    pub memory: Memory,
    /// Run time: testpmd gets SIGINT after this (and prints its final statistics).
    pub run_for: Duration,
    /// Run inside this network namespace.
    pub netns: Option<String>,
}

impl TestpmdConfig {
    /// io forwarding of one vdev, pinned to `cpu`, stats every second, for `run_for`.
    pub fn io_forward(vdev: &str, cpu: usize, run_for: Duration) -> TestpmdConfig {
        TestpmdConfig::forward("io", vdev, cpu, run_for)
    }

    /// Forwarding mode `mode` (`io`, `flowgen`: generate UDP flows and count what
    /// comes back, no `--tx-first` needed) of one vdev, pinned to `cpu`, stats every
    /// second, for `run_for`.
    pub fn forward(mode: &str, vdev: &str, cpu: usize, run_for: Duration) -> TestpmdConfig {
        TestpmdConfig {
            vdevs: vec![vdev.to_string()],
            app_args: vec![
                format!("--forward-mode={mode}"),
                "--stats-period".into(),
                "1".into(),
                "--nb-cores=1".into(),
            ],
            cpu,
            memory: Memory::from_env(),
            run_for,
            netns: None,
        }
    }
}

/// Counters of one port at one point in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Port number.
    pub port: u16,
    /// RX-packets.
    pub rx: u64,
    /// TX-packets.
    pub tx: u64,
}

/// Statistics parsed from a testpmd log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Every periodic "NIC statistics for port N" block, in order.
    pub periodic: Vec<PortCounters>,
    /// The "Forward statistics for port N" blocks printed when forwarding stops.
    pub forward: Vec<PortCounters>,
}

impl Stats {
    /// Parses testpmd output.
    pub fn parse(log: &str) -> Stats {
        enum Section {
            None,
            Nic(u16),
            Forward(u16),
        }
        let mut stats = Stats::default();
        let mut section = Section::None;
        let mut current = PortCounters::default();
        let port_of = |line: &str| -> u16 {
            line.split("for port")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|p| p.parse().ok())
                .unwrap_or(0)
        };
        let value_after = |line: &str, key: &str| -> Option<u64> {
            line.split_whitespace()
                .skip_while(|w| *w != key)
                .nth(1)
                .and_then(|v| v.parse().ok())
        };
        for raw in log.lines() {
            let line = raw.replace("\x1b[2J", "").replace("\x1b[1;1H", "");
            if line.contains("NIC statistics for port") {
                section = Section::Nic(port_of(&line));
                current = PortCounters::default();
            } else if line.contains("Forward statistics for port") {
                section = Section::Forward(port_of(&line));
                current = PortCounters::default();
            } else if line.contains("Accumulated forward statistics") {
                section = Section::None;
            } else if let Some(v) = value_after(&line, "RX-packets:") {
                current.rx = v;
            } else if let Some(v) = value_after(&line, "TX-packets:") {
                current.tx = v;
                // TX-packets is the last counter line of both block kinds.
                match section {
                    Section::Nic(port) => stats.periodic.push(PortCounters { port, ..current }),
                    Section::Forward(port) => stats.forward.push(PortCounters { port, ..current }),
                    Section::None => {}
                }
                section = Section::None;
            }
        }
        stats
    }

    /// The final forward statistics of `port`, if testpmd stopped cleanly.
    pub fn final_counters(&self, port: u16) -> Option<PortCounters> {
        self.forward.iter().rev().find(|c| c.port == port).copied()
    }

    /// The last periodic counters of `port`.
    pub fn last_periodic(&self, port: u16) -> Option<PortCounters> {
        self.periodic.iter().rev().find(|c| c.port == port).copied()
    }
}

/// A running testpmd; stopped with SIGINT (final statistics) and reaped on drop.
pub struct Testpmd {
    proc: Proc,
    log: PathBuf,
    run_for: Duration,
    /// EAL runtime directory (`--file-prefix`), removed on drop.
    runtime_dir: PathBuf,
}

impl Testpmd {
    /// Starts testpmd with its log at `<dir>/<name>.log`. The process is bounded by
    /// `timeout -s INT` at `config.run_for`, so it prints its final statistics and
    /// exits by itself; [`Testpmd::wait`] collects it.
    pub fn start(testpmd: &Path, dir: &Path, name: &str, config: &TestpmdConfig) -> Testpmd {
        let log = dir.join(format!("{name}.log"));
        let prefix = format!(
            "vdpadt{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let runtime_dir = Path::new("/var/run/dpdk").join(&prefix);
        let mut args: Vec<String> = vec![
            "--lcores".into(),
            format!("0@{c},1@{c}", c = config.cpu),
            "--no-pci".into(),
            "--file-prefix".into(),
            prefix,
            "--log-level".into(),
            "pmd.net.virtio.*:info".into(),
        ];
        match config.memory {
            Memory::NoHuge => args.extend(["--no-huge", "-m", "1024"].map(String::from)),
            Memory::Hugepages => {
                args.extend(["-m", "512", "--single-file-segments"].map(String::from))
            }
        }
        for vdev in &config.vdevs {
            args.push("--vdev".into());
            args.push(vdev.clone());
        }
        args.push("--".into());
        args.extend(config.app_args.iter().cloned());
        // The test stops testpmd with SIGINT after `run_for`; the `timeout` wrapper is
        // only the safety net (its TERM also makes testpmd print statistics and exit).
        let mut spawn = Spawn::new(name, testpmd, &log)
            .args(&args)
            .limit(config.run_for + Duration::from_secs(30));
        spawn.netns = config.netns.clone();
        let proc = spawn
            .start()
            .unwrap_or_else(|e| panic!("start testpmd: {e}"));
        Testpmd {
            proc,
            log,
            run_for: config.run_for,
            runtime_dir,
        }
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far.
    pub fn log(&self) -> String {
        super::read_log(&self.log)
    }

    /// The log tail, framed for a panic message.
    pub fn tail(&self) -> String {
        super::log_tail(&self.log, 60)
    }

    /// Statistics parsed from the log so far.
    pub fn stats(&self) -> Stats {
        Stats::parse(&self.log())
    }

    /// Whether testpmd still runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Waits until the log contains `text`; panics with the log on timeout or exit.
    pub fn wait_for_log(&mut self, text: &str, timeout: Duration) {
        let found = super::poll(timeout, Duration::from_millis(50), || {
            if self.log().contains(text) {
                return Some(true);
            }
            (!self.proc.is_running()).then_some(false)
        });
        match found {
            Some(true) => {}
            Some(false) => panic!("testpmd exited before printing {text:?}{}", self.tail()),
            None => panic!(
                "testpmd did not print {text:?} within {timeout:?}{}",
                self.tail()
            ),
        }
    }

    /// Waits (at most `bound`) until a periodic statistics block shows `port` has
    /// received a frame; returns whether it did. A frontend's timed run starts only
    /// then: its peer may take seconds to map the frontend's memory on a loaded machine
    /// (DPDK's vhost library walks a 1 GiB `--no-huge` table page by page), and a run
    /// timed from process start would end before the first frame came back.
    pub fn wait_until_receiving(&mut self, port: u16, bound: Duration) -> bool {
        super::poll(bound, Duration::from_millis(100), || {
            let rx = self.stats().last_periodic(port).map_or(0, |c| c.rx);
            (rx > 0 || !self.proc.is_running()).then_some(())
        })
        .is_some()
            && self.stats().last_periodic(port).is_some_and(|c| c.rx > 0)
    }

    /// Lets testpmd run for its configured time from now, then stops it with SIGINT
    /// (it prints final statistics) and returns them with its exit status.
    pub fn run_and_stop(&mut self) -> (ExitStatus, Stats) {
        let ran = super::poll(self.run_for, Duration::from_millis(100), || {
            (!self.proc.is_running()).then_some(())
        });
        if ran.is_some() {
            let status = self.proc.try_wait().expect("exited");
            panic!("testpmd exited early ({status}){}", self.tail());
        }
        self.stop()
    }

    /// SIGKILL to testpmd itself (a crash); returns the exit status.
    pub fn kill9(&mut self) -> ExitStatus {
        let pid = self
            .proc
            .target_pid()
            .unwrap_or_else(|| panic!("testpmd is not running{}", self.tail()));
        send_signal(pid, SIGKILL).expect("SIGKILL testpmd");
        self.proc
            .wait_timeout(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("testpmd survived SIGKILL"))
    }

    /// Stops testpmd now with SIGINT (SIGKILL after 10 s) and returns its exit status
    /// and statistics.
    pub fn stop(&mut self) -> (ExitStatus, Stats) {
        let status = self.proc.stop(SIGINT, Duration::from_secs(10));
        (status, self.stats())
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        self.proc.stop(SIGINT, Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
        // Hugepage backing files are named after the file prefix; DPDK leaves them
        // behind when it is killed (and with --single-file-segments even on exit).
        if let (Some(prefix), Ok(entries)) = (
            self.runtime_dir
                .file_name()
                .map(|p| p.to_string_lossy().into_owned()),
            std::fs::read_dir("/dev/hugepages"),
        ) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{prefix}map_"))
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_periodic_and_final_blocks() {
        let log = "\x1b[2J\x1b[1;1H\nPort statistics ====\n  ######## NIC statistics for port 0  ####\n  RX-packets: 42880      RX-missed: 0          RX-bytes:  2744320\n  RX-errors: 0\n  RX-nombuf:  0\n  TX-packets: 42912      TX-errors: 0          TX-bytes:  2746368\n\n  ---- Forward statistics for port 0  ----\n  RX-packets: 165       RX-dropped: 0             RX-total: 165\n  TX-packets: 197       TX-dropped: 0             TX-total: 197\n  +++ Accumulated forward statistics for all ports+++\n  RX-packets: 165       RX-dropped: 0             RX-total: 165\n  TX-packets: 197       TX-dropped: 0             TX-total: 197\n";
        let s = Stats::parse(log);
        assert_eq!(
            s.periodic,
            vec![PortCounters {
                port: 0,
                rx: 42880,
                tx: 42912
            }]
        );
        assert_eq!(
            s.final_counters(0),
            Some(PortCounters {
                port: 0,
                rx: 165,
                tx: 197
            })
        );
        assert_eq!(s.forward.len(), 1);
    }
}
