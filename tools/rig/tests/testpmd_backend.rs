//! verify against a vhost-user backend nobody here wrote: DPDK's testpmd (`net_vhost0`,
//! io forwarding, loop topology: every frame the rig sends comes back on its RX queue).
//!
//! Ignored by default; run with `cargo test -p vdpa-rig -- --include-ignored`. It fails
//! (does not skip) when dpdk-testpmd is missing.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vdpa_rig::{run_verify, Rig, RigOptions, VerifyOptions};

/// testpmd running as a vhost-user backend; terminated (by PID) on drop.
struct Testpmd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

fn find_testpmd() -> PathBuf {
    if let Some(p) = std::env::var_os("DPDK_TESTPMD") {
        return p.into();
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("dpdk-testpmd"))
                .find(|p| p.is_file())
        })
        .expect("dpdk-testpmd not found (install Debian's dpdk-dev, see tests/lab/setup.sh)")
}

impl Testpmd {
    /// Starts testpmd with `queues` queue pairs; tries `--no-huge -m 1024`, then huge
    /// pages with `-m 512`.
    fn start(dir: &Path, queues: usize) -> Self {
        let bin = find_testpmd();
        let mut last = String::new();
        for mem in [&["--no-huge", "-m", "1024"][..], &["-m", "512"][..]] {
            std::fs::create_dir_all(dir).unwrap();
            let socket = dir.join("vhu.sock");
            let _ = std::fs::remove_file(&socket);
            let log = dir.join("testpmd.log");
            let prefix = format!("rigtest{}q{queues}", std::process::id());
            let mut cmd = Command::new(&bin);
            // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory
            // of the parent; it makes testpmd go away with the test process.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                })
            };
            let child = cmd
                .args(["--lcores", "0@0,1@0", "--no-pci", "--file-prefix", &prefix])
                .args(mem)
                .arg("--vdev")
                .arg(format!(
                    "net_vhost0,iface={},queues={queues}",
                    socket.display()
                ))
                .args(["--", "--forward-mode=io", "--port-topology=loop"])
                .args(["--stats-period", "1", "--nb-cores=1"])
                .arg(format!("--rxq={queues}"))
                .arg(format!("--txq={queues}"))
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(Stdio::from(
                    std::fs::File::create(dir.join("testpmd.err")).unwrap(),
                ))
                .spawn()
                .expect("spawn testpmd");
            let mut t = Testpmd { child, socket, log };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if t.socket.exists() {
                    return t;
                }
                if let Ok(Some(_)) = t.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            last = std::fs::read_to_string(&t.log).unwrap_or_default();
            drop(t);
        }
        panic!("testpmd did not create its socket; last log:\n{last}");
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        self.stop();
        // Keep the logs of a failed test for inspection.
        if !std::thread::panicking() {
            if let Some(dir) = self.socket.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

impl Testpmd {
    fn stop(&mut self) {
        // SIGTERM to testpmd, our own child, by PID; SIGKILL if it lingers.
        // SAFETY: kill(2) with the PID of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vdpa-rig-testpmd-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn verify(opts: RigOptions, packets: u64, size: usize, size_max: usize) {
    let what = format!("{opts:?}");
    let mut rig = Rig::connect(opts).unwrap_or_else(|e| panic!("setup: {e:?}"));
    let mut v = VerifyOptions::new(packets, size);
    v.size_max = size_max;
    let r = run_verify(&mut rig, &v).expect("verify runs");
    println!("{}", r.summary());
    assert!(
        r.passed(),
        "{what}\n{}\n{}",
        r.summary(),
        r.failure_details()
    );
}

#[test]
#[ignore = "needs dpdk-testpmd (tests/lab/setup.sh)"]
fn verify_against_testpmd() {
    let dir = tempdir("one");
    let tp = Testpmd::start(&dir, 1);
    let base = RigOptions::new(&tp.socket);

    verify(base.clone(), 20_000, 64, 64);

    let mut o = base.clone();
    o.event_idx = false;
    o.mrg_rxbuf = false;
    verify(o, 10_000, 60, 1514);

    let mut o = base.clone();
    o.rx_buf_size = 256; // 1514-byte frames over 6 merged buffers
    verify(o, 5_000, 60, 1514);

    let mut o = base.clone();
    o.initial_index = 65500;
    o.queue_size = 64;
    o.mem_regions = 2;
    o.tx_two_desc = false;
    verify(o, 10_000, 128, 128);

    // The CLI, end to end: summary line and exit code.
    let out = Command::new(env!("CARGO_BIN_EXE_vdpa-rig"))
        .arg("--socket")
        .arg(&tp.socket)
        .args(["verify", "--packets", "5000", "--size", "64"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("verify: sent 5000 received 5000 lost 0 corrupt 0 reordered 0 dup 0"),
        "{stdout}"
    );
    drop(tp);
}

#[test]
#[ignore = "needs dpdk-testpmd (tests/lab/setup.sh)"]
fn verify_two_pairs_against_testpmd() {
    let dir = tempdir("two");
    let tp = Testpmd::start(&dir, 2);
    let mut o = RigOptions::new(&tp.socket);
    o.queue_pairs = 2;
    verify(o, 20_000, 64, 1514);
}
