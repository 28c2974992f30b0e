//! Drop-in files: `include_dir` (default `vdpad.d` next to the main file), which files
//! count, their order, and errors that name the right file.

use std::path::{Path, PathBuf};

use crate::{drop_in_files, Config, ErrorKind};

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vdpad-dropin-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("vdpad.d")).unwrap();
    dir
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn names(c: &Config) -> Vec<&str> {
    c.devices.iter().map(|d| d.name.as_str()).collect()
}

const MAIN: &str = "[daemon]\nrun_dir = \"/r\"\n\n[[device]]\nname = \"main0\"\n";

#[test]
fn drop_ins_follow_the_main_file_in_name_order() {
    let dir = scratch("order");
    let d = dir.join("vdpad.d");
    write(&dir.join("vdpad.toml"), MAIN);
    write(&d.join("b.toml"), "[[device]]\nname = \"b\"\n");
    write(
        &d.join("20-x.toml"),
        "[[device]]\nname = \"x20\"\n[[device]]\nname = \"x21\"\n",
    );
    write(&d.join("10-y.toml"), "[[device]]\nname = \"y10\"\n");
    // Not drop-ins: hidden, another suffix, a directory.
    write(&d.join(".tmp.toml"), "[[device]]\nname = \"hidden\"\n");
    write(&d.join("c.toml.disabled"), "[[device]]\nname = \"off\"\n");
    std::fs::create_dir_all(d.join("dir.toml")).unwrap();
    write(&d.join("empty.toml"), "# nothing here yet\n");
    let c = Config::from_file(&dir.join("vdpad.toml")).unwrap();
    assert_eq!(names(&c), ["main0", "y10", "x20", "x21", "b"]);
    assert_eq!(c.daemon.include_dir.as_deref(), Some(d.as_path()));
    // Drop-in devices inherit run_dir.
    assert_eq!(c.device("b").unwrap().socket, Path::new("/r/b.sock"));
    assert_eq!(drop_in_files(&d).unwrap().len(), 4);
    assert!(drop_in_files(&dir.join("absent")).unwrap().is_empty());
}

#[test]
fn include_dir_can_be_set_and_is_absolute() {
    let dir = scratch("set");
    let other = dir.join("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    write(&other.join("a.toml"), "[[device]]\nname = \"a\"\n");
    write(
        &dir.join("vdpad.d/ignored.toml"),
        "[[device]]\nname = \"ignored\"\n",
    );
    let main = dir.join("vdpad.toml");
    write(
        &main,
        &format!("[daemon]\ninclude_dir = \"{}\"\n", other.display()),
    );
    let c = Config::from_file(&main).unwrap();
    assert_eq!(names(&c), ["a"]);
    // The rendered configuration keeps it and parses back to the same.
    let again = Config::from_toml_str(&c.to_string(), "<rendered>").unwrap();
    assert_eq!(again.daemon.include_dir, c.daemon.include_dir);

    write(&main, "[daemon]\ninclude_dir = \"vdpad.d\"\n");
    let e = Config::from_file(&main).unwrap_err();
    assert_eq!((e.line(), e.column()), (Some(2), Some(15)));
    assert!(e.message().contains("is not an absolute path"), "{e}");
    // A missing directory is no drop-ins.
    write(&main, "[daemon]\ninclude_dir = \"/nonexistent/vdpad.d\"\n");
    assert!(Config::from_file(&main).unwrap().devices.is_empty());
}

#[test]
fn errors_name_the_drop_in_and_the_first_use() {
    let dir = scratch("errors");
    let d = dir.join("vdpad.d");
    let main = dir.join("vdpad.toml");
    write(&main, MAIN);
    write(&d.join("vm3.toml"), "# vm3\n[[device]]\nname = \"main0\"\n");
    let e = Config::from_file(&main).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Duplicate);
    assert_eq!(e.file(), d.join("vm3.toml").display().to_string());
    assert_eq!((e.line(), e.column()), (Some(3), Some(8)));
    let first = format!(
        "the device at {}:5:8 already uses this name",
        main.display()
    );
    assert!(e.help().unwrap().contains(&first), "{e}");

    write(
        &d.join("vm3.toml"),
        "[[device]]\nname = \"t1\"\nbackend = \"tap\"\ntap_name = \"tap9\"\n",
    );
    write(
        &d.join("vm4.toml"),
        "[[device]]\nname = \"t2\"\nbackend = \"tap\"\ntap_name = \"tap9\"\n",
    );
    let e = Config::from_file(&main).unwrap_err();
    assert_eq!(e.file(), d.join("vm4.toml").display().to_string());
    let first = format!("device `t1` at {}:2:8", d.join("vm3.toml").display());
    assert!(e.message().contains(&first), "{e}");

    write(&d.join("vm4.toml"), "[daemon]\nrun_dir = \"/x\"\n");
    let e = Config::from_file(&main).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnknownKey);
    assert_eq!(e.file(), d.join("vm4.toml").display().to_string());

    write(
        &d.join("vm4.toml"),
        "[[device]]\nname = \"q\"\nqueue_size = 3\n",
    );
    let e = Config::from_file(&main).unwrap_err();
    assert_eq!((e.line(), e.column()), (Some(3), Some(14)));
    assert!(e
        .to_string()
        .starts_with(&format!("{}:3:14: error:", d.join("vm4.toml").display())));
}
