//! Locating the lab that `tests/lab/setup.sh` prepares.
//!
//! Lab tests are `#[ignore = "needs the lab: tests/lab/setup.sh"]`, so a plain
//! `cargo test` skips them; a run with `--include-ignored` means "the lab is here", and
//! then anything missing is a failure, never a silent skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use vdpad::qemu::QemuVersion;

/// The message every missing-lab failure ends with.
pub const HOWTO: &str = "run `sudo tests/lab/setup.sh` first (see docs/testing.md)";

/// Paths of the lab's tools and guest images.
#[derive(Clone, Debug)]
pub struct Lab {
    /// The lab directory (`$VDPAD_LAB`, default `/var/tmp/vdpad-lab`).
    pub dir: PathBuf,
    /// `qemu-system-x86_64`, version 10 or newer.
    pub qemu: PathBuf,
    /// Debian 12's own QEMU 7.2, unpacked by setup.sh (`<lab>/qemu-7.2/qemu-system-x86_64`,
    /// a wrapper that finds its modules and firmware), if there; [`Lab::require_qemu_7_2`]
    /// insists.
    pub qemu_7_2: Option<PathBuf>,
    /// The guest kernel (`<lab>/vmlinuz`).
    pub kernel: PathBuf,
    /// The guest initramfs (`<lab>/initramfs.cpio.gz`).
    pub initrd: PathBuf,
    /// `dpdk-testpmd`.
    pub testpmd: PathBuf,
    /// The bookworm-backports 6.12 kernel and its initramfs (`<lab>/vmlinuz-6.12`,
    /// `<lab>/initramfs-6.12.cpio.gz`), if installed; [`Lab::require_6_12`] insists.
    pub kernel_6_12: Option<GuestImage>,
}

/// A guest kernel with the initramfs built for it.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs built by `tests/lab/initramfs.sh` for that kernel.
    pub initrd: PathBuf,
}

/// Finds `name` in `$PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether this process runs with effective uid 0 (read from `/proc/self/status`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// The release printed by `qemu --version`.
pub fn qemu_version(qemu: &Path) -> Result<QemuVersion, String> {
    let out = Command::new(qemu)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    QemuVersion::parse(&text).ok_or_else(|| format!("cannot parse QEMU version from {text:?}"))
}

/// The major version printed by `qemu --version`.
fn qemu_major(qemu: &Path) -> Result<u32, String> {
    qemu_version(qemu).map(|v| v.major)
}

impl Lab {
    /// The lab directory from `$VDPAD_LAB` or the default.
    pub fn dir() -> PathBuf {
        std::env::var_os("VDPAD_LAB")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/vdpad-lab"))
    }

    /// Finds everything a lab test may need; panics with a "run setup.sh" message
    /// naming whatever is missing.
    pub fn require() -> Lab {
        Lab::find().unwrap_or_else(|problems| {
            panic!(
                "the test lab is incomplete:\n  - {}\n{HOWTO}",
                problems.join("\n  - ")
            )
        })
    }

    /// Like [`Lab::require`] but returns the list of problems instead of panicking.
    pub fn find() -> Result<Lab, Vec<String>> {
        let mut problems = Vec::new();
        let dir = Lab::dir();
        if !is_root() {
            problems.push("lab tests need root (namespaces, taps, hugepages)".to_string());
        }
        for tool in ["timeout", "taskset", "ip"] {
            if which(tool).is_none() {
                problems.push(format!("`{tool}` not found in PATH"));
            }
        }
        let qemu = std::env::var_os("VDPAD_QEMU")
            .map(PathBuf::from)
            .or_else(|| which("qemu-system-x86_64"));
        match &qemu {
            None => problems.push("qemu-system-x86_64 not found in PATH".to_string()),
            Some(q) => match qemu_major(q) {
                Ok(major) if major >= 10 => {}
                Ok(major) => problems.push(format!(
                    "{} is QEMU {major}; the lab needs QEMU >= 10 (bookworm-backports)",
                    q.display()
                )),
                Err(e) => problems.push(e),
            },
        }
        let kernel = dir.join("vmlinuz");
        if !kernel.is_file() {
            problems.push(format!("guest kernel {} missing", kernel.display()));
        }
        let initrd = dir.join("initramfs.cpio.gz");
        if !initrd.is_file() {
            problems.push(format!("guest initramfs {} missing", initrd.display()));
        }
        let testpmd = which("dpdk-testpmd");
        if testpmd.is_none() {
            problems.push("dpdk-testpmd not found in PATH (package dpdk-dev)".to_string());
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let kernel_6_12 = Lab::image_6_12(&dir).ok();
        let qemu_7_2 = Some(dir.join("qemu-7.2/qemu-system-x86_64")).filter(|q| is_executable(q));
        Ok(Lab {
            dir,
            qemu: qemu.expect("checked"),
            qemu_7_2,
            kernel,
            initrd,
            testpmd: testpmd.expect("checked"),
            kernel_6_12,
        })
    }

    /// The 6.12 guest files in `dir`, or what is missing.
    fn image_6_12(dir: &Path) -> Result<GuestImage, Vec<String>> {
        let image = GuestImage {
            kernel: dir.join("vmlinuz-6.12"),
            initrd: dir.join("initramfs-6.12.cpio.gz"),
        };
        let mut problems = Vec::new();
        if !image.kernel.is_file() {
            problems.push(format!(
                "6.12 guest kernel {} missing",
                image.kernel.display()
            ));
        }
        if !image.initrd.is_file() {
            problems.push(format!(
                "6.12 guest initramfs {} missing",
                image.initrd.display()
            ));
        }
        if problems.is_empty() {
            Ok(image)
        } else {
            Err(problems)
        }
    }

    /// Like [`Lab::require`], and the 6.12 guest (kernel and initramfs) must be there
    /// too (tests of the VDUSE frontend: virtio-net over VDUSE needs Linux >= 6.8).
    pub fn require_6_12() -> Lab {
        let lab = Lab::require();
        if let Err(problems) = Lab::image_6_12(&lab.dir) {
            panic!(
                "the test lab has no 6.12 guest:\n  - {}\n{HOWTO}",
                problems.join("\n  - ")
            );
        }
        lab
    }

    /// Like [`Lab::require`]; returns Debian 12's QEMU 7.2 as well, or panics naming
    /// what is missing.
    pub fn require_qemu_7_2() -> (Lab, PathBuf) {
        let lab = Lab::require();
        let qemu = lab.qemu_7_2.clone().unwrap_or_else(|| {
            panic!(
                "the test lab has no QEMU 7.2 ({}/qemu-7.2/qemu-system-x86_64)\n{HOWTO}",
                lab.dir.display()
            )
        });
        match qemu_version(&qemu) {
            Ok(v) if v.major == 7 && v.minor == 2 => (lab, qemu),
            Ok(v) => panic!("{} is QEMU {v}, not 7.2\n{HOWTO}", qemu.display()),
            Err(e) => panic!("{e}\n{HOWTO}"),
        }
    }

    /// For tests that only need testpmd: returns its path or panics with the setup hint.
    pub fn require_testpmd() -> PathBuf {
        if !is_root() {
            panic!("DPDK tests need root\n{HOWTO}");
        }
        which("dpdk-testpmd").unwrap_or_else(|| panic!("dpdk-testpmd not found in PATH\n{HOWTO}"))
    }
}
