//! One test per validation rule of the datapath keys (offloads, VM, tuning, CPUs),
//! asserting the exact line and column reported.

use super::{assert_err, assert_round_trip, dev, ok, DEV};
use crate::ErrorKind::{Conflict, InvalidValue, UnknownKey, WrongType};
use crate::{Polling, Workers};

#[test]
fn offloads_switch() {
    assert!(ok(DEV).devices[0].offloads);
    let config = ok(&dev("offloads = false"));
    assert!(!config.devices[0].offloads);
    assert_round_trip(&config);
    let e = assert_err(
        &dev("offloads = \"false\""),
        WrongType,
        3,
        12,
        "`offloads` must be a boolean (true or false), not a string",
    );
    assert_eq!(e.help(), Some("remove the quotes: offloads = true"));
    assert_err(
        &dev("offload = true"),
        UnknownKey,
        3,
        1,
        "did you mean `offloads`?",
    );
}

#[test]
fn vm_names() {
    let config = ok(&format!(
        "{}\n[[device]]\nname = \"b\"\nvm = \"vm.1_A-b\"\npci = \"3b:00.2\"\n",
        dev("vm = \"vm.1_A-b\"")
    ));
    assert_eq!(config.devices[0].vm.as_deref(), Some("vm.1_A-b"));
    assert_eq!(config.devices[1].vm, config.devices[0].vm);
    assert_round_trip(&config);
    let e = assert_err(
        &dev("vm = \"vm 1\""),
        InvalidValue,
        3,
        6,
        "vm name `vm 1` contains ' ', which is not allowed",
    );
    assert_eq!(
        e.help(),
        Some("use 1 to 64 letters, digits, '_', '.' or '-', e.g. \"vm1\"")
    );
    assert_err(&dev("vm = \"a/b\""), InvalidValue, 3, 6, "contains '/'");
    assert_err(
        &dev("vm = \"\""),
        InvalidValue,
        3,
        6,
        "vm name must not be empty",
    );
    assert_err(
        &dev(&format!("vm = \"{}\"", "v".repeat(65))),
        InvalidValue,
        3,
        6,
        "vm name is 65 characters long",
    );
    ok(&dev(&format!("vm = \"{}\"", "v".repeat(64))));
    assert_err(&dev("vm = 1"), WrongType, 3, 6, "`vm` must be a string");
}

#[test]
fn tuning_values_parse_and_round_trip() {
    let config = ok(&dev(
        "burst = 1\nweight = 65536\nbusy_poll_us = 1000000\nrx_coalesce_frames = 65535\n\
         rx_coalesce_usecs = 1000000\ncpus = [1023, 0, 7]",
    ));
    let t = &config.devices[0].tuning;
    assert_eq!(
        (t.burst, t.weight, t.busy_poll_us),
        (1, Some(65536), 1_000_000)
    );
    assert_eq!(
        (t.rx_coalesce_frames, t.rx_coalesce_usecs),
        (65535, 1_000_000)
    );
    assert_eq!(t.cpus, [1023, 0, 7]);
    assert_round_trip(&config);
    let config = ok(&dev(
        "burst = 1024\nweight = 1\nrx_coalesce_usecs = 1\ncpus = []",
    ));
    let t = &config.devices[0].tuning;
    assert_eq!((t.burst, t.weight, t.rx_coalesce_usecs), (1024, Some(1), 1));
    assert!(t.cpus.is_empty());
    assert_round_trip(&config);
    // Time alone bounds the wait, so usecs without frames is fine.
    assert_eq!(
        ok(&dev("rx_coalesce_usecs = 50")).devices[0]
            .tuning
            .rx_coalesce_frames,
        0
    );
}

#[test]
fn tuning_applies_in_every_mode() {
    for mode in ["offload", "auto", "software"] {
        let config = ok(&dev(&format!(
            "mode = \"{mode}\"\npci = \"3b:00.2\"\nburst = 16\ncpus = [4]"
        )));
        assert_eq!(config.devices[0].tuning.burst, 16);
        assert_eq!(config.devices[0].tuning.cpus, [4]);
    }
}

#[test]
fn tuning_ranges() {
    let cases = [
        ("burst = 0", 9, "burst = 0 is out of range (1..=1024)"),
        ("burst = 1025", 9, "burst = 1025 is out of range (1..=1024)"),
        ("weight = 0", 10, "weight = 0 is out of range (1..=65536)"),
        (
            "polling = \"fixd\"",
            11,
            "unknown polling `fixd`, did you mean `fixed`?",
        ),
        (
            "weight = 65537",
            10,
            "weight = 65537 is out of range (1..=65536)",
        ),
        (
            "busy_poll_us = -1",
            16,
            "busy_poll_us = -1 is out of range (0..=1000000)",
        ),
        ("busy_poll_us = 1000001", 16, "out of range (0..=1000000)"),
        (
            "rx_coalesce_frames = 65536",
            22,
            "rx_coalesce_frames = 65536 is out of range (0..=65535)",
        ),
        (
            "rx_coalesce_usecs = 1000001",
            21,
            "rx_coalesce_usecs = 1000001 is out of range (0..=1000000)",
        ),
        ("rx_coalesce_usecs = -5", 21, "out of range"),
    ];
    for (line, column, msg) in cases {
        let e = assert_err(&dev(line), InvalidValue, 3, column, msg);
        let help = e.help().unwrap();
        assert!(
            help.starts_with("use ") || help.ends_with("remove it") || help.contains("one of"),
            "{e}"
        );
    }
    let e = assert_err(
        &dev("polling = \"fixed\""),
        Conflict,
        3,
        11,
        "polling = \"fixed\" without busy_poll_us",
    );
    assert!(e.help().unwrap().contains("busy_poll_us = 50"), "{e}");
    let fixed = ok(&dev("polling = \"fixed\"\nbusy_poll_us = 0")).devices[0]
        .tuning
        .clone();
    assert_eq!((fixed.polling, fixed.busy_poll_us), (Polling::Fixed, 0));
    let e = assert_err(
        &dev("workers = \"per-cpu\""),
        Conflict,
        3,
        11,
        "workers = \"per-cpu\" without cpus",
    );
    assert!(e.help().unwrap().contains("cpus = [2]"), "{e}");
    assert_err(
        &dev("workers = \"per-core\""),
        InvalidValue,
        3,
        11,
        "unknown workers `per-core`",
    );
    let shared = ok(&dev("workers = \"per-cpu\"\ncpus = [1]")).devices[0]
        .tuning
        .clone();
    assert_eq!((shared.workers, shared.cpus), (Workers::PerCpu, vec![1]));
    assert_err(
        &dev("burst = 99999999999999999999"),
        InvalidValue,
        3,
        9,
        "the value of `burst` is too large",
    );
    let e = assert_err(
        &dev("weight = \"256\""),
        WrongType,
        3,
        10,
        "`weight` must be an integer, not a string",
    );
    assert_eq!(e.help(), Some("remove the quotes: weight = 256"));
    assert_err(&dev("busy_poll_us = 1.5"), WrongType, 3, 16, "not a float");
    assert_err(
        &dev("bust = 64"),
        UnknownKey,
        3,
        1,
        "unknown key `bust`, did you mean `burst`?",
    );
    let e = assert_err(
        "burst = 64\n",
        UnknownKey,
        1,
        1,
        "unknown key `burst` in the top level",
    );
    assert!(e.help().unwrap().contains("[[device]]"), "{e}");
}

#[test]
fn coalesce_frames_need_a_time_bound() {
    let e = assert_err(
        &dev("mtu = 1500\nrx_coalesce_frames = 32"),
        Conflict,
        4,
        22,
        "rx_coalesce_frames = 32 without rx_coalesce_usecs",
    );
    assert_eq!(
        e.help(),
        Some("add rx_coalesce_usecs = 50 (or another bound)")
    );
    let e = assert_err(
        &dev("rx_coalesce_usecs = 0\nrx_coalesce_frames = 8"),
        Conflict,
        4,
        22,
        "rx_coalesce_frames = 8 with rx_coalesce_usecs = 0",
    );
    assert_eq!(
        e.help(),
        Some("set rx_coalesce_usecs = 50 (or another bound)")
    );
    // Zero frames is "off" and needs no bound; a range error comes before the conflict.
    ok(&dev("rx_coalesce_frames = 0"));
    assert_err(
        &dev("rx_coalesce_frames = 70000"),
        InvalidValue,
        3,
        22,
        "out of range",
    );
    ok(&dev("rx_coalesce_frames = 32\nrx_coalesce_usecs = 50"));
}

#[test]
fn cpu_lists() {
    let e = assert_err(
        &dev("cpus = [0, 1024]"),
        InvalidValue,
        3,
        12,
        "CPU 1024 in `cpus` is out of range (0..=1023)",
    );
    assert!(e.help().unwrap().contains("lscpu"), "{e}");
    assert_err(&dev("cpus = [-1]"), InvalidValue, 3, 9, "CPU -1 in `cpus`");
    let e = assert_err(
        &dev("cpus = [2, 3,\n  5, 3]"),
        InvalidValue,
        4,
        6,
        "CPU 3 is listed twice in `cpus` (first as element 2)",
    );
    assert!(e.help().unwrap().starts_with("list each CPU once"), "{e}");
    let e = assert_err(
        &dev("cpus = [1, \"2\"]"),
        WrongType,
        3,
        12,
        "each element of `cpus` must be an integer, not a string",
    );
    assert_eq!(e.help(), Some("remove the quotes: cpus = [2, 3]"));
    let e = assert_err(
        &dev("cpus = [1, 2.0]"),
        WrongType,
        3,
        12,
        "each element of `cpus` must be an integer, not a float",
    );
    assert_eq!(e.help(), Some("for example: cpus = [2, 3]"));
    assert_err(&dev("cpus = [[1]]"), WrongType, 3, 9, "not an array");
    assert_err(
        &dev("cpus = [0, 0x7fffffffffffffffff]"),
        InvalidValue,
        3,
        12,
        "an element of `cpus` is too large",
    );
    let e = assert_err(
        &dev("cpus = 2"),
        WrongType,
        3,
        8,
        "`cpus` must be an array of integers, not an integer",
    );
    assert_eq!(
        e.help(),
        Some("write a list, even of one value: cpus = [2]")
    );
    let e = assert_err(
        &dev("cpus = \"0-3\""),
        WrongType,
        3,
        8,
        "`cpus` must be an array of integers, not a string",
    );
    assert_eq!(
        e.help(),
        Some("write a list of integers, e.g. cpus = [2, 3]")
    );
}
