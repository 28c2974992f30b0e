//! A QEMU guest that runs one shell script from the host and powers off.
//!
//! The guest is the lab's busybox initramfs (tests/lab/initramfs.sh) on Debian's 6.1
//! kernel, or on bookworm-backports' 6.12 with [`GuestConfig::kernel_6_12`] (for VDUSE:
//! its initramfs also ships vdpa, vduse, virtio_vdpa and vhost_vdpa for the script to
//! `modprobe`), under TCG on a q35 machine whose RAM is a shared memfd (required by
//! vhost-user backends). The host root is mounted read-only at `/host` in the guest
//! (`chroot /host PROGRAM` runs host binaries), and a per-test read-write directory
//! ([`Guest::share`]) at `/lab`. The serial console and QEMU's own messages go to
//! `console.log` in the test's directory; tests wait for lines printed by the script.
//!
//! Only one guest boots at a time per test binary (the lab machines have two cores);
//! a [`Guest`] holds a process-wide lock for its whole life.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::lab::Lab;
use super::process::{Proc, Spawn, SIGTERM};

/// Serialises guests within one test binary.
static GUEST_LOCK: Mutex<()> = Mutex::new(());

/// Printed by the guest's init when the script is about to start.
pub const READY: &str = "VDPAD-GUEST-READY";
/// Printed by the guest's init after the script, followed by ` rc=<status>`.
pub const EXIT: &str = "VDPAD-GUEST-EXIT rc=";

/// Which lab kernel a [`Guest`] boots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GuestKernel {
    /// Debian 12's 6.1 kernel (`<lab>/vmlinuz`, `<lab>/initramfs.cpio.gz`).
    #[default]
    Debian6_1,
    /// bookworm-backports' 6.12 kernel (`<lab>/vmlinuz-6.12`,
    /// `<lab>/initramfs-6.12.cpio.gz`), with the vDPA/VDUSE modules in its initramfs.
    Backports6_12,
}

/// How to boot a [`Guest`].
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// Shell script the guest runs (with `sh`), as text.
    pub script: String,
    /// Extra QEMU arguments (devices, netdevs, chardevs).
    pub qemu_args: Vec<String>,
    /// Guest RAM in MiB (a shared memfd).
    pub mem_mib: u32,
    /// Host CPU for QEMU (`taskset`); `None` lets it float.
    pub cpu: Option<usize>,
    /// Extra kernel command line words (e.g. `lab.hugepages=64`).
    pub append: String,
    /// Hard limit on QEMU's life.
    pub limit: Duration,
    /// Run QEMU inside this network namespace (for tap netdevs).
    pub netns: Option<String>,
    /// The kernel to boot (6.1 unless [`GuestConfig::kernel_6_12`]).
    pub kernel: GuestKernel,
    /// The QEMU to run instead of the lab's QEMU 10 (e.g. [`Lab::qemu_7_2`]).
    pub qemu: Option<PathBuf>,
    /// Share the host root and the test's directory over 9p (the default). Without
    /// ([`GuestConfig::without_host_share`]) the script travels in the initramfs.
    pub host_share: bool,
}

impl GuestConfig {
    /// A 1 GiB guest pinned to CPU 1 running `script`, limited to 5 minutes.
    pub fn new(script: &str) -> GuestConfig {
        GuestConfig {
            script: script.to_string(),
            qemu_args: Vec::new(),
            mem_mib: 1024,
            cpu: Some(1),
            append: String::new(),
            limit: Duration::from_secs(300),
            netns: None,
            kernel: GuestKernel::default(),
            qemu: None,
            host_share: true,
        }
    }

    /// Runs `qemu` instead of the lab's QEMU 10.
    pub fn qemu(mut self, qemu: &Path) -> Self {
        self.qemu = Some(qemu.to_path_buf());
        self
    }

    /// Boots without the 9p shares, whose devices block live migration in QEMU: the
    /// script is appended to the initramfs as `/lab-script.sh` instead, and only the
    /// initramfs's busybox is available to it (no `/host`, no `/lab`).
    pub fn without_host_share(mut self) -> Self {
        self.host_share = false;
        self
    }

    /// Boots bookworm-backports' 6.12 kernel instead of 6.1 (the lab must have it:
    /// use [`Lab::require_6_12`]).
    pub fn kernel_6_12(mut self) -> Self {
        self.kernel = GuestKernel::Backports6_12;
        self
    }

    /// Adds QEMU arguments.
    pub fn qemu_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.qemu_args
            .extend(args.into_iter().map(|s| s.as_ref().to_string()));
        self
    }
}

/// What runs a guest's virtual machine: QEMU started by [`Guest::boot`], or a
/// manager such as libvirt ([`Guest::start_with`]).
pub trait Vmm {
    /// `Some(how)` once the VM has stopped, `None` while it runs.
    fn stopped(&mut self) -> Option<String>;
    /// Waits up to `timeout` for the VM to stop; whether it did.
    fn wait_stopped(&mut self, timeout: Duration) -> bool;
    /// Stops the VM now (also called on drop).
    fn kill(&mut self);
}

impl Vmm for Proc {
    fn stopped(&mut self) -> Option<String> {
        self.try_wait().map(|status| status.to_string())
    }

    fn wait_stopped(&mut self, timeout: Duration) -> bool {
        self.wait_timeout(timeout).is_some()
    }

    fn kill(&mut self) {
        self.stop(SIGTERM, Duration::from_secs(5));
    }
}

/// The files of a guest in its test directory, and how to boot it: what
/// [`GuestFiles::prepare`] writes for a [`GuestConfig`].
#[derive(Clone, Debug)]
pub struct GuestFiles {
    /// The serial console's log (`<dir>/console.log`).
    pub console: PathBuf,
    /// The read-write share, `/lab` in the guest (`<dir>/share`).
    pub share: PathBuf,
    /// The kernel image to boot.
    pub kernel: PathBuf,
    /// Its initramfs.
    pub initrd: PathBuf,
    /// The kernel command line (runs `<dir>/guest.sh` through the `/host` mount, or
    /// from the initramfs without the host share).
    pub append: String,
    /// Whether the host root and the share are mounted over 9p.
    pub host_share: bool,
}

impl GuestFiles {
    /// Writes the script of `config` to `<dir>/guest.sh`, creates the share, and
    /// picks the kernel.
    pub fn prepare(lab: &Lab, dir: &Path, config: &GuestConfig) -> GuestFiles {
        let script = dir.join("guest.sh");
        let share = dir.join("share");
        std::fs::create_dir_all(&share).expect("create guest share dir");
        let body = format!(
            "# generated by tests/support/guest.rs\nset -u\n{}\n",
            config.script
        );
        std::fs::write(&script, body).expect("write guest script");
        let script_s = script.to_string_lossy();
        assert!(
            !script_s.contains(' ') && !script_s.contains(','),
            "guest paths must not contain spaces or commas: {script_s}"
        );
        let (kernel, initrd) = match config.kernel {
            GuestKernel::Debian6_1 => (&lab.kernel, &lab.initrd),
            GuestKernel::Backports6_12 => {
                let image = lab.kernel_6_12.as_ref().unwrap_or_else(|| {
                    panic!(
                        "the lab has no 6.12 guest ({}/vmlinuz-6.12); {}",
                        lab.dir.display(),
                        super::lab::HOWTO
                    )
                });
                (&image.kernel, &image.initrd)
            }
        };
        let (initrd, script_in_guest) = if config.host_share {
            (initrd.clone(), format!("/host{script_s}"))
        } else {
            let path = dir.join("initrd-with-script.img");
            append_script(initrd, &script, &path);
            (path, "/lab-script.sh".to_string())
        };
        GuestFiles {
            console: dir.join("console.log"),
            share,
            kernel: kernel.clone(),
            initrd,
            append: format!(
                "console=ttyS0 quiet panic=-1 lab.script={script_in_guest} {}",
                config.append
            ),
            host_share: config.host_share,
        }
    }
}

/// A running guest; its VM is stopped on drop.
pub struct Guest {
    vmm: Box<dyn Vmm>,
    console: PathBuf,
    share: PathBuf,
    /// Byte offset in the console log up to which markers were consumed.
    cursor: usize,
    started: Instant,
    lock: Rc<GuestLock>,
}

/// Held while a guest runs: this process's lock, and a file lock that keeps test
/// binaries and developers' runs in other processes from booting a second guest at
/// the same time on a 2-core machine.
struct GuestLock {
    _file: std::fs::File,
    _guard: MutexGuard<'static, ()>,
}

impl Guest {
    /// Boots a guest with files in `dir` (`guest.sh`, `console.log`, `share/`).
    ///
    /// Waits (at most 20 minutes) for any other guest of this test binary to finish
    /// first. Returns as soon as QEMU runs; use [`Guest::wait_for`] for progress.
    pub fn boot(lab: &Lab, dir: &Path, config: GuestConfig) -> Guest {
        Self::boot_locked(lab, dir, config, Rc::new(acquire_guest_lock()))
    }

    /// Boots a second QEMU under this guest's lock (in its own `dir`), e.g. the
    /// `-incoming` side of a live migration, which runs the same guest afterwards.
    pub fn boot_beside(&self, lab: &Lab, dir: &Path, config: GuestConfig) -> Guest {
        Self::boot_locked(lab, dir, config, self.lock.clone())
    }

    fn boot_locked(lab: &Lab, dir: &Path, config: GuestConfig, lock: Rc<GuestLock>) -> Guest {
        let files = GuestFiles::prepare(lab, dir, &config);
        let qemu = config.qemu.clone().unwrap_or_else(|| lab.qemu.clone());
        Guest::start_locked(&files, lock, || {
            let mem = format!("{}M", config.mem_mib);
            let mut args: Vec<String> = [
                "-machine",
                "q35,memory-backend=mem",
                "-accel",
                "tcg",
                "-smp",
                "1",
                "-m",
                &mem,
                "-object",
                &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
                "-nodefaults",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
                "-kernel",
                &files.kernel.to_string_lossy(),
                "-initrd",
                &files.initrd.to_string_lossy(),
                "-append",
                &files.append,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if files.host_share {
                args.extend([
                    "-virtfs".to_string(),
                    "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
                        .to_string(),
                    "-virtfs".to_string(),
                    format!(
                        "local,path={},mount_tag=lab,security_model=none",
                        files.share.to_string_lossy()
                    ),
                ]);
            }
            args.extend(config.qemu_args.iter().cloned());
            let mut spawn = Spawn::new("qemu", &qemu, &files.console)
                .args(&args)
                .limit(config.limit)
                .cpu(config.cpu);
            if let Some(ns) = &config.netns {
                spawn = spawn.netns(ns);
            }
            Box::new(spawn.start().unwrap_or_else(|e| panic!("boot guest: {e}")))
        })
    }

    /// Takes the guest lock (waiting, like [`Guest::boot`], for other guests to
    /// finish), then has `start` start the VM of `files` (the kernel, initramfs,
    /// command line and shares a [`GuestFiles::prepare`] gave), e.g. through libvirt.
    /// The console must be written to `files.console`.
    pub fn start_with(files: &GuestFiles, start: impl FnOnce() -> Box<dyn Vmm>) -> Guest {
        Self::start_locked(files, Rc::new(acquire_guest_lock()), start)
    }

    fn start_locked(
        files: &GuestFiles,
        lock: Rc<GuestLock>,
        start: impl FnOnce() -> Box<dyn Vmm>,
    ) -> Guest {
        let vmm = start();
        Guest {
            vmm,
            console: files.console.clone(),
            share: files.share.clone(),
            cursor: 0,
            started: Instant::now(),
            lock,
        }
    }

    /// The host directory mounted read-write at `/lab` in the guest.
    pub fn share(&self) -> &Path {
        &self.share
    }

    /// The console log file.
    pub fn console_path(&self) -> &Path {
        &self.console
    }

    /// The whole console log so far.
    pub fn console(&self) -> String {
        super::read_log(&self.console)
    }

    /// Time since QEMU was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The tail of the console, for panic messages.
    pub fn tail(&self) -> String {
        super::log_tail(&self.console, 60)
    }

    /// Waits for the next console line containing `marker` (after the previously
    /// consumed one) and returns it; panics with the console on timeout or if QEMU
    /// exits first.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> String {
        match self.try_wait_for(marker, timeout) {
            Ok(line) => line,
            Err(why) => panic!("guest: {why} waiting for {marker:?}{}", self.tail()),
        }
    }

    /// [`Guest::wait_for`], then prints the line as progress ([`super::note`], seconds
    /// since `t0`) and returns it.
    pub fn wait_noted(&mut self, t0: Instant, marker: &str, timeout: Duration) -> String {
        let line = self.wait_for(marker, timeout);
        super::note(t0, &format!("guest: {line}"));
        line
    }

    /// Like [`Guest::wait_for`] but returns an error instead of panicking.
    pub fn try_wait_for(&mut self, marker: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Only complete lines while QEMU runs: a line still being written is re-read.
            if let Some(line) = self.take_line(marker, false) {
                return Ok(line);
            }
            if let Some(status) = self.vmm.stopped() {
                // QEMU may have written the line just before exiting.
                return self
                    .take_line(marker, true)
                    .ok_or_else(|| format!("the VM stopped ({status})"));
            }
            if Instant::now() >= deadline {
                return Err(format!("timeout after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Finds the first console line after the cursor containing `marker`, moves the
    /// cursor past it and returns it. An unterminated last line counts only if
    /// `partial_ok`.
    fn take_line(&mut self, marker: &str, partial_ok: bool) -> Option<String> {
        let text = self.console();
        let at = self.cursor + text.get(self.cursor..)?.find(marker)?;
        let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        if end == text.len() && !partial_ok {
            return None;
        }
        self.cursor = end;
        Some(text[start..end].trim_end_matches('\r').to_string())
    }

    /// Waits for the guest script to finish and QEMU to exit; returns the script's
    /// exit code. Panics on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let started = Instant::now();
        let line = self.wait_for(EXIT, timeout);
        let rc = line
            .split(EXIT)
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("cannot parse {line:?}"));
        let left = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(10));
        if !self.vmm.wait_stopped(left) {
            panic!(
                "QEMU did not exit after the guest script finished{}",
                self.tail()
            );
        }
        rc
    }

    /// Whether the VM is still running.
    pub fn is_running(&mut self) -> bool {
        self.vmm.stopped().is_none()
    }

    /// Console lines (so far) that start with `prefix`, in order.
    pub fn lines_starting_with(&self, prefix: &str) -> Vec<String> {
        self.console()
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| l.starts_with(prefix))
            .map(String::from)
            .collect()
    }

    /// Stops the VM (QEMU: SIGTERM, then SIGKILL after 5 s).
    pub fn kill(&mut self) {
        self.vmm.kill();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes `out`: the initramfs `initrd` followed by an uncompressed `newc` cpio archive
/// holding `script` as `/lab-script.sh`. The kernel unpacks concatenated archives; a
/// plain one must start 4-byte aligned, hence the zero padding in between.
fn append_script(initrd: &Path, script: &Path, out: &Path) {
    let mut img = std::fs::read(initrd).unwrap_or_else(|e| panic!("{}: {e}", initrd.display()));
    let body = std::fs::read(script).expect("read the guest script");
    img.resize(img.len().next_multiple_of(4), 0);
    cpio_entry(&mut img, "lab-script.sh", 0o100755, &body);
    cpio_entry(&mut img, "TRAILER!!!", 0, &[]);
    std::fs::write(out, img).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}

/// Appends one `newc` cpio entry (header, name, data, each padded to 4 bytes).
fn cpio_entry(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) {
    let fields = [
        1,
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// Path of the machine-wide guest lock.
pub const GUEST_LOCK_FILE: &str = "/tmp/vdpad-qemu-guest.lock";

fn acquire_guest_lock() -> GuestLock {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + Duration::from_secs(1200);
    let guard = loop {
        match GUEST_LOCK.try_lock() {
            Ok(guard) => break guard,
            // A test that panicked while holding the lock has already killed its guest.
            Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                assert!(
                    Instant::now() < deadline,
                    "waited 20 min for another guest to finish"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(GUEST_LOCK_FILE)
        .expect("open the guest lock file");
    loop {
        // SAFETY: flock on a descriptor we own; the lock goes away when it is closed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "waited 20 min for a guest of another process ({GUEST_LOCK_FILE})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    GuestLock {
        _file: file,
        _guard: guard,
    }
}

/// Parses `key=value` words of a console line into numbers, e.g. `rx=12 tx=9`.
pub fn parse_kv(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
}
