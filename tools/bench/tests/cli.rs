//! The command line of `vdpa-bench` where it needs nothing installed: listing the
//! cells, and the explanation when testpmd is missing. The lab smoke run of the
//! harness is a real-peer test: tests/bench_smoke.rs.

use std::path::PathBuf;
use std::process::Command;

fn bench() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vdpa-bench"))
}

#[test]
fn missing_testpmd_is_explained() {
    let o = Command::new(bench())
        .args(["--smoke", "--testpmd", "/nonexistent/dpdk-testpmd"])
        .output()
        .expect("run vdpa-bench");
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("tests/lab/setup.sh"), "{err}");
}

#[test]
fn lists_cells() {
    let o = Command::new(bench())
        .args(["--list", "--seed-questions"])
        .output()
        .expect("run vdpa-bench");
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("tp-64") && s.contains("seed-notify") && s.contains("lat-64"));
}
