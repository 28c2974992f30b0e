//! The workspace's programs under test: `vdpad`, `vdpactl`, `vdpa-rig` and
//! `vdpa-bench`.
//!
//! They belong to other packages of the workspace, so cargo neither builds them for
//! this package's tests nor tells these tests where they are (`CARGO_BIN_EXE_*` exists
//! only for a package's own binaries). The first test of a test process that asks for
//! one runs `cargo build -p vdpad -p vdpa-rig -p vdpa-bench --bins` with the cargo that
//! runs the tests, into the same target directory and profile as the test binary, so
//! the programs are never stale and are built exactly as `cargo build` builds them
//! (without this package's dev-dependency features, e.g. `hwdrv/test-utils`). Later
//! calls return the same paths.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The packages whose binaries the tests run.
const PACKAGES: [&str; 3] = ["vdpad", "vdpa-rig", "vdpa-bench"];

/// The profile directory (`<target>/<profile>`) once the build succeeded.
static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The target directory and profile directory of the running test binary
/// (`<target>/<profile>/deps/<test>-<hash>`).
fn layout() -> Result<(PathBuf, PathBuf), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let deps = exe.parent().ok_or("test binary has no directory")?;
    let profile = deps.parent().ok_or("no profile directory")?;
    let target = profile.parent().ok_or("no target directory")?;
    Ok((target.to_path_buf(), profile.to_path_buf()))
}

/// The workspace root: this package lives in its `tests/` directory.
fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
}

fn build() -> Result<PathBuf, String> {
    let (target, profile) = layout()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new("timeout");
    cmd.args(["900", &cargo, "build", "--quiet", "--bins"]);
    // vdpad's diagnostic example, run by the VDUSE lab test inside the guest.
    cmd.args(["--example", "vdpa_netlink"]);
    for p in PACKAGES {
        cmd.args(["-p", p]);
    }
    cmd.arg("--target-dir")
        .arg(&target)
        .current_dir(workspace());
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
            "`cargo build -p {}` failed ({}):\n{}",
            PACKAGES.join(" -p "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(profile)
}

/// The binary `name`, built (or brought up to date) on first use; panics with the
/// build's output if that fails. `path` caches its path for later calls.
fn binary(path: &'static OnceLock<String>, name: &str) -> &'static str {
    path.get_or_init(|| {
        let profile = match BUILT.get_or_init(build) {
            Ok(p) => p,
            Err(e) => panic!("building the workspace's programs: {e}"),
        };
        let bin = profile.join(name);
        assert!(bin.is_file(), "{} missing after the build", bin.display());
        bin.into_os_string()
            .into_string()
            .expect("the target directory's path is UTF-8")
    })
}

/// The daemon, `vdpad`.
pub fn vdpad() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    binary(&PATH, "vdpad")
}

/// The control client, `vdpactl`.
pub fn vdpactl() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    binary(&PATH, "vdpactl")
}

/// The test frontend, `vdpa-rig`.
pub fn vdpa_rig() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    binary(&PATH, "vdpa-rig")
}

/// The benchmark harness, `vdpa-bench`.
pub fn vdpa_bench() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    binary(&PATH, "vdpa-bench")
}

/// The man page and completion generator, `vdpad-gen`.
pub fn vdpad_gen() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    binary(&PATH, "vdpad-gen")
}

/// vdpad's `vdpa_netlink` example (the vDPA netlink client as a command).
pub fn vdpa_netlink_example() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    binary(&PATH, "examples/vdpa_netlink")
}
