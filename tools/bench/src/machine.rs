//! Facts about the machine and the source tree, recorded with every result.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// What the numbers were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Host name.
    pub hostname: String,
    /// CPU model name from /proc/cpuinfo.
    pub cpu_model: String,
    /// Online CPUs.
    pub cores: usize,
    /// Whether /proc/cpuinfo shows the `hypervisor` flag (a VM: steal time matters).
    pub virtualized: bool,
    /// Kernel release.
    pub kernel: String,
    /// Distribution (`PRETTY_NAME` of /etc/os-release).
    pub os: String,
    /// DPDK version (pkg-config libdpdk, else the dpdk-dev package).
    pub dpdk: String,
    /// QEMU version line.
    pub qemu: String,
    /// rustc version the harness was run with (if rustc is on PATH).
    pub rustc: String,
    /// Free / total 2 MiB hugepages when the run started.
    pub hugepages: String,
    /// Memory in MiB.
    pub mem_mib: u64,
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Free 2 MiB hugepages, if any are configured.
pub fn hugepages_free() -> u64 {
    meminfo("HugePages_Free:").unwrap_or(0)
}

impl Machine {
    /// Collects the facts.
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let field = |k: &str| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let cpu_model = format!(
            "{cpu_model} (family {} model {} stepping {}, {} MHz)",
            field("cpu family"),
            field("model\t"),
            field("stepping"),
            field("cpu MHz")
        );
        let virtualized = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .is_some_and(|l| l.split_whitespace().any(|f| f == "hypervisor"));
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "unknown".into());
        let mut dpdk = first_line("pkg-config", &["--modversion", "libdpdk"]);
        if dpdk == "unknown" {
            dpdk = first_line("dpkg-query", &["-W", "-f=${Version}", "dpdk-dev"]);
        }
        Machine {
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            virtualized,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            os,
            dpdk,
            qemu: first_line("qemu-system-x86_64", &["--version"]),
            rustc: first_line("rustc", &["--version"]),
            hugepages: format!(
                "{} free of {} (2 MiB)",
                hugepages_free(),
                meminfo("HugePages_Total:").unwrap_or(0)
            ),
            mem_mib: meminfo("MemTotal:").unwrap_or(0) / 1024,
        }
    }
}

/// The source tree the binaries came from.
#[derive(Debug, Clone, Serialize)]
pub struct SourceTree {
    /// `git rev-parse HEAD`.
    pub commit: String,
    /// Whether the working tree had uncommitted changes (the binaries may include them).
    pub dirty: bool,
    /// `git log -1 --format=%s`.
    pub subject: String,
}

impl SourceTree {
    /// Reads the git state of `dir`.
    pub fn probe(dir: &Path) -> SourceTree {
        let git = |args: &[&str]| {
            Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        SourceTree {
            commit: git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into()),
            dirty: git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()),
            subject: git(&["log", "-1", "--format=%s"]).unwrap_or_default(),
        }
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut v = text
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(f64::NAN));
    [
        v.next().unwrap_or(f64::NAN),
        v.next().unwrap_or(f64::NAN),
        v.next().unwrap_or(f64::NAN),
    ]
}

/// Steal time of all CPUs so far, in clock ticks (field 8 of the `cpu` line of
/// /proc/stat): time the hypervisor ran something else while we wanted the CPU.
pub fn steal_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("cpu "))
        .and_then(|l| l.split_whitespace().nth(8))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time all CPUs spent busy so far (user, nice, system, irq, softirq of the `cpu`
/// line of /proc/stat), in seconds.
pub fn busy_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum();
    busy as f64 / crate::proc::clock_ticks()
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(951_782_400 + 3723)),
            "2000-02-29T01:02:03Z"
        );
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(1_735_689_599)),
            "2024-12-31T23:59:59Z"
        );
    }

    #[test]
    fn load_and_steal_are_read() {
        assert!(loadavg()[0].is_finite());
        assert!(busy_seconds() > 0.0);
        let _ = steal_ticks();
    }
}
