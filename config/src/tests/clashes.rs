//! Two devices may not share a host interface (`tap_name`, `netdev`) or a PCI
//! function: the error points at the second use and names the first device with its
//! file, line and column.

use super::*;
use crate::DeviceConfig;
use ErrorKind::Duplicate;

/// A file with device "a" (line 2) holding `first` and device "b" (line 5) holding
/// `second` on line 6.
fn two(first: &str, second: &str) -> String {
    format!("[[device]]\nname = \"a\"\n{first}\n[[device]]\nname = \"b\"\n{second}\n")
}

#[test]
fn tap_name_used_twice() {
    let text = two(
        "backend = \"tap\"\ntap_name = \"vdpad-vm1\"",
        "backend = \"tap\"\ntap_name = \"vdpad-vm1\"",
    );
    let e = assert_err(
        &text,
        Duplicate,
        8,
        12,
        "interface `vdpad-vm1` (`tap_name`) is already used by device `a` at t.toml:2:8",
    );
    assert!(e.help().unwrap().contains("interface of its own"), "{e}");
    // Kernel-chosen tap names never clash.
    ok(&two("backend = \"tap\"", "backend = \"tap\""));
}

#[test]
fn netdev_used_twice_also_against_a_tap_name() {
    let text = two(
        "backend = \"af_packet\"\nnetdev = \"eth1\"",
        "backend = \"af_packet\"\nnetdev = \"eth1\"",
    );
    assert_err(
        &text,
        Duplicate,
        8,
        10,
        "interface `eth1` (`netdev`) is already used by device `a` at t.toml:2:8",
    );
    let text = two(
        "backend = \"tap\"\ntap_name = \"eth1\"",
        "backend = \"af_packet\"\nnetdev = \"eth1\"",
    );
    assert_err(&text, Duplicate, 8, 10, "interface `eth1` (`netdev`)");
    ok(&two(
        "backend = \"af_packet\"\nnetdev = \"eth1\"",
        "backend = \"af_packet\"\nnetdev = \"eth2\"",
    ));
}

/// Issue 17 item 5: one netdev for two devices only when each is filtered to its own
/// MAC, or both opt in.
#[test]
fn netdev_shared_needs_distinct_macs_and_filtering_or_an_opt_in() {
    let dev = |extra: &str| format!("backend = \"af_packet\"\nnetdev = \"eth1\"\n{extra}");
    ok(&two(
        &dev("mac = \"52:54:00:00:00:01\""),
        &dev("mac = \"52:54:00:00:00:02\""),
    ));
    let e = assert_err(
        &two(
            &dev("mac = \"52:54:00:00:00:01\""),
            &dev("mac = \"52:54:00:00:00:01\""),
        ),
        Duplicate,
        9,
        10,
        "is already used by device `a` at t.toml:2:8, with the same mac 52:54:00:00:00:01",
    );
    assert!(e.help().unwrap().contains("shared_netdev = true"), "{e}");
    assert_err(
        &two(
            &dev("mac = \"52:54:00:00:00:01\""),
            &dev("mac = \"52:54:00:00:00:02\"\npromiscuous = true"),
        ),
        Duplicate,
        9,
        10,
        "device `b` would receive the other's traffic",
    );
    assert_err(
        &two(&dev(""), &dev("mac = \"52:54:00:00:00:02\"")),
        Duplicate,
        9,
        10,
        "device `a` would receive the other's traffic",
    );
    // Both opt in: a sniffer next to a device, knowingly.
    ok(&two(
        &dev("shared_netdev = true"),
        &dev("mac = \"52:54:00:00:00:02\"\nshared_netdev = true"),
    ));
    // One opt-in is not enough.
    assert_err(
        &two(
            &dev("shared_netdev = true"),
            &dev("mac = \"52:54:00:00:00:02\""),
        ),
        Duplicate,
        9,
        10,
        "would receive the other's traffic",
    );
}

#[test]
fn pci_used_twice_in_any_spelling() {
    let text = two("pci = \"0000:3b:00.2\"", "pci = \"3B:00.2\"");
    let e = assert_err(
        &text,
        Duplicate,
        6,
        7,
        "PCI function `0000:3b:00.2` is already used by device `a` at t.toml:2:8",
    );
    assert!(e.to_string().starts_with("t.toml:6:7: error: "), "{e}");
    assert!(e.help().unwrap().contains("lspci -D"), "{e}");
    ok(&two("pci = \"0000:3b:00.2\"", "pci = \"0000:3b:00.3\""));
}

#[test]
fn snippets_clash_with_running_devices() {
    let base =
        ok("[[device]]\nname = \"a\"\nbackend = \"tap\"\ntap_name = \"t0\"\npci = \"3b:00.2\"\n");
    let e = base
        .with_snippet(
            "[[device]]\nname = \"z\"\nbackend = \"tap\"\ntap_name = \"t0\"\n",
            "<snippet>",
        )
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.line(), e.column()),
        (Duplicate, Some(4), Some(12))
    );
    assert!(
        e.message().contains("already used by existing device `a`"),
        "{e}"
    );
    let e = base
        .with_snippet(
            "[[device]]\nname = \"z\"\npci = \"0000:3b:00.2\"\n",
            "<snippet>",
        )
        .unwrap_err();
    assert!(e.message().contains("PCI function `0000:3b:00.2`"), "{e}");

    let fresh = DeviceConfig::parse_snippet(
        "[[device]]\nname = \"z\"\nbackend = \"af_packet\"\nnetdev = \"t0\"\n",
        "<s>",
        &base.daemon,
    )
    .unwrap();
    let e = base.with_added_devices(fresh).unwrap_err();
    assert_eq!(
        e.message(),
        "device `z`: interface `t0` (`netdev`) is already used by device `a`"
    );
}
