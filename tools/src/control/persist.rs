//! `vdpactl add --persist` / `remove --persist`: devices written to (and deleted from)
//! drop-in files in the configuration's `include_dir`, one file per device,
//! `<include_dir>/<name>.toml`, so that they survive a SIGHUP reload and a restart.
//!
//! Files are replaced atomically: the text goes to a hidden temporary file in the
//! same directory (drop-ins starting with `.` are never read), which is flushed to
//! disk, renamed over the target, and the directory itself is flushed, so a crash
//! leaves either the old file or the new one, never a torn one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use vdpad_config::{DaemonConfig, DeviceConfig};

/// Where the drop-in of device `name` lives, or why devices cannot be persisted.
pub fn drop_in_path(daemon: &DaemonConfig, name: &str) -> Result<PathBuf, String> {
    let Some(dir) = &daemon.include_dir else {
        return Err(
            "--persist needs a configuration file: vdpad runs without --config \
                    (its embedded default), so there is no drop-in directory"
                .to_owned(),
        );
    };
    if name.starts_with('.') {
        return Err(format!(
            "device {name:?} cannot be persisted: drop-in files starting with '.' are \
             not read; choose a name that does not start with '.'"
        ));
    }
    Ok(dir.join(format!("{name}.toml")))
}

/// The text of a drop-in for `dev`: the snippet as written when it held only this
/// device (comments and inherited defaults stay as they were), else the device with
/// every default spelled out.
pub fn drop_in_text(dev: &DeviceConfig, snippet: &str, only_device: bool, origin: &str) -> String {
    let body = if only_device {
        snippet.to_owned()
    } else {
        dev.to_toml()
    };
    // The origin comes from the client: no line break may end the comment early.
    let origin: String = origin
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    let mut text = format!(
        "# Device {} written by `vdpactl add --persist` (from {origin}).\n\
         # vdpad reads this file at start and at every SIGHUP reload;\n\
         # `vdpactl remove --persist {}` deletes it.\n",
        dev.name, dev.name
    );
    text.push_str(&body);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// Writes `text` to `path` atomically (see the module documentation); creates the
/// directory (mode 0755) if it is missing. The file gets mode 0644.
pub fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no directory"))?;
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        // The daemon's umask (0077) would leave the file root-only; a config file
        // may be read by anyone.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Deletes the drop-in at `path` and flushes its directory.
pub fn delete(path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// fsync(2) of a directory, so that a rename or unlink in it is on disk.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Checks that the drop-in at `path` defines exactly the device `name` (the only kind
/// of file `remove --persist` deletes); says what it found otherwise.
pub fn check_own_drop_in(path: &Path, name: &str, daemon: &DaemonConfig) -> Result<(), String> {
    let origin = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!(
                "device {name} has no drop-in of its own ({origin} does not exist): it comes \
                 from the main configuration file or another drop-in; remove it from that \
                 file by hand (or run `vdpactl remove` without --persist)"
            ))
        }
        Err(e) => return Err(format!("cannot read {origin}: {e}")),
    };
    let devices = DeviceConfig::parse_snippet(&text, &origin, daemon)
        .map_err(|e| format!("{origin} is not a valid drop-in, not deleting it:\n{e}"))?;
    let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
    if names != [name] {
        return Err(format!(
            "{origin} defines {names:?}, not only {name}; not deleting it (edit it by hand)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_in_text_keeps_the_origin_on_its_comment_line() {
        let daemon = vdpad_config::Config::from_toml_str("[daemon]\nrun_dir = \"/r\"\n", "t")
            .unwrap()
            .daemon;
        let snippet = "[[device]]\nname = \"a\"\n";
        let dev = DeviceConfig::parse_snippet(snippet, "s", &daemon).unwrap();
        let text = drop_in_text(&dev[0], snippet, true, "x\n[[device]]\nname = \"evil\"");
        let parsed = DeviceConfig::parse_snippet(&text, "drop-in", &daemon).unwrap();
        assert_eq!(parsed, dev, "{text}");
        assert!(
            text.lines()
                .next()
                .unwrap()
                .contains("(from x?[[device]]?name"),
            "{text}"
        );
        // Several devices: each file holds its own, every default written out.
        let text = drop_in_text(&dev[0], "ignored", false, "pair.toml");
        assert_eq!(
            DeviceConfig::parse_snippet(&text, "d", &daemon).unwrap(),
            dev
        );
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("vdpad-persist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("d/x.toml");
        write_atomically(&path, "one\n").unwrap();
        write_atomically(&path, "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        let entries: Vec<_> = std::fs::read_dir(dir.join("d")).unwrap().collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        delete(&path).unwrap();
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
