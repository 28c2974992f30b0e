//! Network namespaces for tests: uniquely named, deleted on drop with whatever runs
//! inside them.
//!
//! Addresses are restricted to the documentation ranges 192.0.2.0/24 and
//! 198.51.100.0/24 so that no test traffic can ever be routed off the machine.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::process::{send_signal, Proc, Spawn, SIGKILL, SIGTERM};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`; returns stdout, or an error with the command and stderr.
pub fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether `cidr` lies in 192.0.2.0/24 or 198.51.100.0/24 (prefix >= 24).
pub fn is_test_address(cidr: &str) -> bool {
    let (addr, prefix) = cidr.split_once('/').unwrap_or((cidr, "32"));
    let prefix: u8 = prefix.parse().unwrap_or(0);
    (addr.starts_with("192.0.2.") || addr.starts_with("198.51.100."))
        && (24..=32).contains(&prefix)
        && addr.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Panics unless `cidr` lies in 192.0.2.0/24 or 198.51.100.0/24 (prefix >= 24).
pub fn check_test_address(cidr: &str) {
    assert!(
        is_test_address(cidr),
        "test address {cidr} is outside 192.0.2.0/24 and 198.51.100.0/24"
    );
}

/// A network namespace named `vdpadt-<pid>-<n>`.
///
/// Dropping it terminates every process still inside (SIGTERM, then SIGKILL after a
/// second), then deletes it; interfaces created in it go with it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace with its loopback up.
    ///
    /// First deletes namespaces of this naming scheme whose test process is gone
    /// (left behind by a test binary that was killed before it could clean up).
    pub fn new() -> Netns {
        sweep_orphans();
        let name = format!(
            "vdpadt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name]).unwrap_or_else(|e| panic!("{e}"));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> ARGS`, panicking on failure; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs a command inside the namespace to completion; returns its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "timeout", "60", program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", self.name))
    }

    /// Creates a veth pair with both ends in this namespace, both up.
    pub fn veth_pair(&self, a: &str, b: &str) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        self.up(a);
        self.up(b);
    }

    /// Creates a veth pair from `a` here to `b` in `other`, both up.
    pub fn veth_to(&self, a: &str, other: &Netns, b: &str) {
        self.ip(&[
            "link",
            "add",
            a,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            other.name(),
        ]);
        self.up(a);
        other.up(b);
    }

    /// Creates a persistent tap device `name` in this namespace (not yet up).
    pub fn tap(&self, name: &str) {
        self.ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
    }

    /// Sets interface `dev` up.
    pub fn up(&self, dev: &str) {
        self.ip(&["link", "set", dev, "up"]);
    }

    /// Adds address `cidr` (must be a test range, see [`check_test_address`]) to `dev`.
    pub fn addr(&self, dev: &str, cidr: &str) {
        check_test_address(cidr);
        self.ip(&["addr", "add", cidr, "dev", dev]);
    }

    /// An interface counter from sysfs inside the namespace (e.g. `rx_packets`).
    pub fn counter(&self, dev: &str, counter: &str) -> u64 {
        let out = self.exec(
            "cat",
            &[&format!("/sys/class/net/{dev}/statistics/{counter}")],
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| {
                panic!(
                    "cannot read {dev}/{counter} in {}: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }

    /// Starts a long-running process inside the namespace (see [`Spawn`]).
    pub fn spawn(&self, spawn: Spawn) -> Proc {
        let name = spawn.name.clone();
        spawn
            .netns(&self.name)
            .start()
            .unwrap_or_else(|e| panic!("{name} in {}: {e}", self.name))
    }

    /// PIDs of the processes currently inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        ip(&["netns", "pids", &self.name])
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Deletes `vdpadt-<pid>-<n>` namespaces whose `<pid>` no longer exists.
fn sweep_orphans() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix("vdpadt-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("deleting orphaned test namespace {name}");
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Only processes in this namespace, which this test created, are signalled.
        let mut pids = self.pids();
        for _ in 0..2 {
            if pids.is_empty() {
                break;
            }
            for pid in &pids {
                let _ = send_signal(*pid, SIGTERM);
            }
            let gone = super::poll(Duration::from_secs(1), Duration::from_millis(20), || {
                self.pids().is_empty().then_some(())
            });
            if gone.is_some() {
                break;
            }
            pids = self.pids();
            for pid in &pids {
                let _ = send_signal(*pid, SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
            pids = self.pids();
        }
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_addresses_outside_the_test_ranges() {
        assert!(is_test_address("192.0.2.7/24"));
        assert!(is_test_address("198.51.100.1/30"));
        for bad in [
            "10.0.0.1/24",
            "192.0.2.1/16",
            "192.0.20.1/24",
            "8.8.8.8",
            "192.0.2.300/24",
        ] {
            assert!(!is_test_address(bad), "{bad}");
        }
    }

    /// Harness self-test: veth between two namespaces, ping, a spawned process, and
    /// cleanup of the namespace and of the process on drop.
    #[test]
    #[ignore = "needs the lab: tests/lab/setup.sh (root)"]
    fn veth_ping_and_cleanup() {
        let dir = super::super::tmp::TempDir::new("netns");
        let (a, b) = (Netns::new(), Netns::new());
        a.veth_to("va", &b, "vb");
        a.addr("va", "198.51.100.1/24");
        b.addr("vb", "198.51.100.2/24");
        let out = a.exec(
            "busybox",
            &["ping", "-c", "2", "-i", "0.2", "-W", "2", "198.51.100.2"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(b.counter("vb", "rx_packets") >= 2);
        a.tap("tap0");
        a.up("tap0");
        let mut sleeper =
            a.spawn(Spawn::new("sleep", "sleep", dir.join("sleep.log")).args(["600"]));
        let pid = sleeper.target_pid().expect("sleep pid");
        assert!(a.pids().contains(&pid), "{pid} not in {:?}", a.pids());
        let name = a.name().to_string();
        drop(a);
        let status = sleeper
            .wait_timeout(Duration::from_secs(5))
            .expect("sleep killed");
        assert!(!status.success());
        let list = ip(&["netns", "list"]).unwrap();
        assert!(!list.contains(&name), "{name} still exists: {list}");
        // The peer end went with the deleted namespace. The kernel tears a namespace
        // down after `ip netns delete` returns (in a work queue, slower under load).
        let gone = super::super::poll(Duration::from_secs(10), Duration::from_millis(50), || {
            (!b.ip(&["link"]).contains("vb")).then_some(())
        });
        assert!(
            gone.is_some(),
            "vb still in {}: {}",
            b.name(),
            b.ip(&["link"])
        );
    }
}
