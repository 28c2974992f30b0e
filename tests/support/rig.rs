//! The `vdpa-rig` binary, for tests that run it as a separate program (for example
//! inside a guest, through the 9p host root).
//!
//! It belongs to another package of the workspace, so cargo does not build it for
//! this package's tests; [`rig_binary`] builds it once per test process with the cargo
//! that runs the tests, into the same target directory and profile as the test binary,
//! so that it is never stale. [`vdpa_netlink_binary`] does the same for this package's
//! `vdpa_netlink` example (cargo builds examples for `cargo test` of the whole
//! package, but not for `cargo test --test NAME`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

static RIG: OnceLock<Result<PathBuf, String>> = OnceLock::new();
static VDPA_NETLINK: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The target directory and profile directory of the running test binary
/// (`<target>/<profile>/deps/<test>-<hash>`).
fn layout() -> Result<(PathBuf, PathBuf), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let deps = exe.parent().ok_or("test binary has no directory")?;
    let profile = deps.parent().ok_or("no profile directory")?;
    let target = profile.parent().ok_or("no target directory")?;
    Ok((target.to_path_buf(), profile.to_path_buf()))
}

/// `cargo build --quiet -p PACKAGE KIND NAME` into the test's target directory and
/// profile; returns `<profile>/<subdir>/NAME`.
fn build(package: &str, kind: &str, name: &str, subdir: &str) -> Result<PathBuf, String> {
    let (target, profile) = layout()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new("timeout");
    cmd.args(["600", &cargo, "build", "--quiet", "-p", package, kind, name])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
        None => return Err(format!("odd profile directory {}", profile.display())),
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build -p {package} {kind} {name}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let bin = profile.join(subdir).join(name);
    if !bin.is_file() {
        return Err(format!("{} missing after the build", bin.display()));
    }
    Ok(bin)
}

/// The `vdpa-rig` binary, built (or brought up to date) on first use; panics with the
/// build's output if that fails.
pub fn rig_binary() -> &'static Path {
    match RIG.get_or_init(|| build("vdpa-rig", "--bin", "vdpa-rig", "")) {
        Ok(p) => p,
        Err(e) => panic!("building vdpa-rig: {e}"),
    }
}

/// The `vdpa_netlink` example of package `vdpad` (`tools/examples/vdpa_netlink.rs`),
/// built on first use; panics with the build's output if that fails.
pub fn vdpa_netlink_binary() -> &'static Path {
    match VDPA_NETLINK.get_or_init(|| build("vdpad", "--example", "vdpa_netlink", "examples")) {
        Ok(p) => p,
        Err(e) => panic!("building the vdpa_netlink example: {e}"),
    }
}
