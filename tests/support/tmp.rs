//! Unique scratch directories, removed on drop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh directory `<base>/<tag>-<pid>-<n>`; removed with its content on drop
/// (also while a test panics), unless `VDPAD_KEEP_TMP=1` is set.
///
/// `<base>` is `$VDPAD_TEST_TMP`, default `/tmp/vdpad-tests`. Paths stay short because
/// Unix socket paths are limited to 107 bytes, and free of commas and spaces because
/// they end up in QEMU option strings.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates the directory; `tag` names the test (letters, digits, `-`, `_`).
    pub fn new(tag: &str) -> TempDir {
        assert!(
            !tag.is_empty()
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "TempDir tag {tag:?} must be [A-Za-z0-9_-]+"
        );
        let base = std::env::var_os("VDPAD_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp/vdpad-tests"));
        std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("create {}: {e}", base.display()));
        sweep_orphans(&base);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let text = path.to_string_lossy();
        assert!(
            !text.contains(',') && !text.contains(' '),
            "temp dir {text} must not contain commas or spaces (QEMU options)"
        );
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// Removes `<tag>-<pid>-<n>` directories in `base` whose `<pid>` no longer exists
/// (left by a killed test binary), unless `VDPAD_KEEP_TMP=1`.
fn sweep_orphans(base: &Path) {
    if std::env::var("VDPAD_KEEP_TMP").as_deref() == Ok("1") {
        return;
    }
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.rsplitn(3, '-');
        let (Some(_n), Some(pid), Some(_tag)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var("VDPAD_KEEP_TMP").as_deref() == Ok("1") {
            eprintln!("keeping {} (VDPAD_KEEP_TMP=1)", self.path.display());
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
    }
}
