//! libvirt for lab tests: the system instance (`qemu:///system`) of Debian 12's
//! libvirtd, and domains defined, started and stopped with `virsh`.
//!
//! [`Libvirtd::ensure`] uses a libvirtd that already answers (a host with systemd
//! running it) or starts `virtlogd` and `libvirtd` itself as child processes, which is
//! what works in a container without systemd as PID 1 (CI runs the lab tests in a fresh
//! Debian 12 container as root); daemons it started are stopped again on drop.
//! `tests/lab/setup.sh` installs the packages and creates the `libvirt-qemu` user that
//! libvirt's QEMU driver runs QEMU as.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::guest::Vmm;
use super::lab::which;
use super::process::{Proc, Spawn, SIGTERM};

/// The connection URI of every `virsh` call.
pub const URI: &str = "qemu:///system";
/// Domains of these tests are named with this prefix (stale ones are removed).
pub const DOMAIN_PREFIX: &str = "vdpad-test-";

/// Runs `virsh -c qemu:///system ARGS` (bounded to 120 s); stdout, or the error with
/// stderr.
pub fn virsh(args: &[&str]) -> Result<String, String> {
    let out = Command::new("timeout")
        .args(["120", "virsh", "-c", URI])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run virsh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "virsh {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// The libvirt daemons a test talks to.
pub struct Libvirtd {
    /// Daemons this test started (stopped on drop, libvirtd first).
    started: Vec<Proc>,
    /// What answered: `virsh version`'s output.
    pub version: String,
}

impl Libvirtd {
    /// Connects to a running libvirtd, or starts `virtlogd` (the QEMU driver writes
    /// consoles and QEMU logs through it) and `libvirtd` with their logs in `log_dir`,
    /// and waits up to 30 s for `virsh version` to answer. Removes domains left by
    /// earlier runs of these tests.
    pub fn ensure(log_dir: &Path) -> Libvirtd {
        let mut started = Vec::new();
        if virsh(&["version"]).is_err() {
            for daemon in ["virtlogd", "libvirtd"] {
                let program = which(daemon)
                    .or_else(|| Some(Path::new("/usr/sbin").join(daemon)))
                    .filter(|p| p.is_file())
                    .unwrap_or_else(|| {
                        panic!("{daemon} not found (libvirt-daemon)\n{}", super::lab::HOWTO)
                    });
                let running = Command::new("pgrep")
                    .args(["-x", daemon])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if running {
                    continue;
                }
                let proc = Spawn::new(daemon, &program, log_dir.join(format!("{daemon}.log")))
                    .limit(Duration::from_secs(3600))
                    .start()
                    .unwrap_or_else(|e| panic!("start {daemon}: {e}"));
                started.push(proc);
            }
        }
        let version = super::poll(Duration::from_secs(30), Duration::from_millis(200), || {
            virsh(&["version"]).ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "libvirtd does not answer on {URI}: {}{}",
                virsh(&["version"]).unwrap_err(),
                super::log_tail(&log_dir.join("libvirtd.log"), 30)
            )
        });
        let libvirtd = Libvirtd { started, version };
        libvirtd.remove_stale_domains();
        libvirtd
    }

    /// Whether this test started the daemons (rather than finding them running).
    pub fn started_here(&self) -> bool {
        !self.started.is_empty()
    }

    fn remove_stale_domains(&self) {
        let names = virsh(&["list", "--all", "--name"]).unwrap_or_default();
        for name in names.lines().map(str::trim) {
            if name.starts_with(DOMAIN_PREFIX) {
                let _ = virsh(&["destroy", name]);
                let _ = virsh(&["undefine", name]);
            }
        }
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        while let Some(mut proc) = self.started.pop() {
            proc.stop(SIGTERM, Duration::from_secs(10));
        }
    }
}

/// A libvirt domain, by name.
#[derive(Clone, Debug)]
pub struct Domain {
    /// The domain's name.
    pub name: String,
    /// When [`Vmm::stopped`] last asked libvirt, and what it learned.
    last_check: Option<(Instant, Option<String>)>,
}

impl Domain {
    /// `virsh define FILE`; the domain is undefined again when the returned guard
    /// drops.
    pub fn define(name: &str, xml: &Path) -> DefinedDomain {
        assert!(
            name.starts_with(DOMAIN_PREFIX),
            "domain {name} lacks the test prefix"
        );
        virsh(&["define", &xml.to_string_lossy()]).unwrap_or_else(|e| panic!("{e}"));
        DefinedDomain(Domain {
            name: name.to_string(),
            last_check: None,
        })
    }

    /// `virsh COMMAND <name> ARGS`.
    pub fn virsh(&self, command: &str, args: &[&str]) -> Result<String, String> {
        let mut full = vec![command, self.name.as_str()];
        full.extend_from_slice(args);
        virsh(&full)
    }

    /// `virsh domstate`: `running`, `shut off`, `paused`, ...
    pub fn state(&self) -> String {
        self.virsh("domstate", &[])
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    }

    /// Waits up to `timeout` for [`Domain::state`] to be `want`.
    pub fn wait_state(&self, want: &str, timeout: Duration) -> bool {
        super::poll(timeout, Duration::from_millis(250), || {
            (self.state() == want).then_some(())
        })
        .is_some()
    }
}

impl Vmm for Domain {
    fn stopped(&mut self) -> Option<String> {
        // Console waits poll every 50 ms; ask libvirt at most once a second.
        if let Some((at, answer)) = &self.last_check {
            if at.elapsed() < Duration::from_secs(1) {
                return answer.clone();
            }
        }
        let state = self.state();
        let answer = (state == "shut off").then(|| format!("domain {}: {state}", self.name));
        self.last_check = Some((Instant::now(), answer.clone()));
        answer
    }

    fn wait_stopped(&mut self, timeout: Duration) -> bool {
        self.wait_state("shut off", timeout)
    }

    fn kill(&mut self) {
        if self.state() != "shut off" {
            let _ = self.virsh("destroy", &[]);
        }
    }
}

/// A defined domain: destroyed (if running) and undefined on drop.
pub struct DefinedDomain(pub Domain);

impl Drop for DefinedDomain {
    fn drop(&mut self) {
        self.0.kill();
        let _ = self.0.virsh("undefine", &[]);
    }
}
