//! Keeps docs/config.md and docs/config-datapath.md (the software datapath's keys)
//! honest: their example files parse, the embedded default shown there is the real
//! one, every key has a section, and the error samples are real.

use std::path::PathBuf;

use crate::raw::{DAEMON, DEVICE};
use crate::{Config, EMBEDDED_DEFAULT_TOML};

/// The configuration reference: both pages, one after the other.
fn config_md() -> String {
    ["config.md", "config-datapath.md"]
        .iter()
        .map(|page| {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../docs")
                .join(page);
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The contents of every fenced block in `doc` whose info string is `lang`.
fn blocks(doc: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) if info.trim() == lang => current = Some(String::new()),
            (Some(block), Some("")) => {
                out.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

#[test]
fn every_toml_example_is_a_valid_configuration() {
    let doc = config_md();
    let examples = blocks(&doc, "toml");
    assert!(examples.len() >= 3, "found {} toml blocks", examples.len());
    for example in examples {
        // Example user and group names need not exist on the build machine.
        let example = ["\"kvm\"", "\"libvirt-qemu\"", "\"qemu\""]
            .iter()
            .fold(example, |text, name| text.replace(name, "\"root\""));
        if let Err(e) = Config::from_toml_str(&example, "docs/config.md") {
            panic!("{e}\nin example:\n{example}");
        }
    }
}

#[test]
fn the_documented_embedded_default_is_the_real_one() {
    let doc = config_md();
    assert!(blocks(&doc, "toml")
        .iter()
        .any(|b| b == EMBEDDED_DEFAULT_TOML));
}

#[test]
fn every_key_has_a_section() {
    let doc = config_md();
    let headings: Vec<&str> = doc.lines().filter(|l| l.starts_with("### ")).collect();
    for key in DAEMON.keys.iter().chain(DEVICE.keys) {
        let quoted = format!("`{}`", key.name);
        assert!(
            headings.iter().any(|h| h.contains(&quoted)),
            "no section for {quoted}"
        );
    }
}

#[test]
fn documented_error_samples_are_real_output() {
    let doc = config_md();
    let samples = blocks(&doc, "text");
    let cases = [
        "[daemon]\nrun_dir = \"/run/vdpad\"\n\n[[device]]\nname = \"vm1-net0\"\nqueue_pairs = 4\nqueue_size = 300\n",
        "[[device]]\nname = \"vm1-net0\"\nqueue_szie = 256\n",
        "[[device]]\nname = \"vm1-net0\"\nbackend = \"tap\"\nrx_coalesce_frames = 32\n",
    ];
    for text in cases {
        let e = Config::from_toml_str(text, "/etc/vdpad/vdpad.toml").unwrap_err();
        let shown = format!("{e}\n");
        assert!(samples.contains(&shown), "docs lack:\n{shown}");
    }
}
