//! The port security and rate limit keys: values, what each backend accepts, the
//! effective configuration and its rendering.

use super::*;
use crate::model::{IpPrefix, MacAddress};
use ErrorKind::{Conflict, InvalidValue};

/// A one-device af_packet file on eth1 with MAC ...:01 and `lines` from line 6 on.
fn af(lines: &str) -> String {
    format!(
        "{DEV}backend = \"af_packet\"\nnetdev = \"eth1\"\nmac = \"52:54:00:00:00:01\"\n{lines}\n"
    )
}

#[test]
fn defaults_filter_and_check_the_source() {
    let c = ok(&af(""));
    let s = &c.devices[0].security;
    assert!(!s.promiscuous && s.spoof_check && !s.shared_netdev);
    assert!(s.allowed_ips.is_empty() && s.multicast.is_none() && s.vlan.is_none());
    assert_eq!(c.devices[0].rates.burst_us, crate::DEFAULT_RATE_BURST_US);
}

#[test]
fn every_key_parses_and_round_trips() {
    let c = ok(&af(
        "allowed_ips = [\"192.0.2.10\", \"198.51.100.0/24\", \"fe80::/64\"]\n\
         multicast = [\"01:00:5e:00:00:fb\"]\nvlan = 100\ntrunk_vlans = [200, 4094]\n\
         spoof_check = false\ntx_pps = 100000\ntx_bps = 1000000000\nrx_pps = 5\n\
         rx_bps = 8000\nrate_burst_us = 100",
    ));
    let d = &c.devices[0];
    assert_eq!(
        d.security.allowed_ips[1],
        IpPrefix {
            addr: "198.51.100.0".parse().unwrap(),
            len: 24
        }
    );
    assert_eq!(d.security.allowed_ips[0].len, 32);
    assert_eq!(d.security.allowed_ips[2].len, 64);
    assert_eq!(
        d.security.multicast,
        Some(vec![MacAddress([1, 0, 0x5e, 0, 0, 0xfb])])
    );
    assert_eq!(
        (d.security.vlan, &d.security.trunk_vlans[..]),
        (Some(100), &[200, 4094][..])
    );
    assert_eq!(
        (d.rates.tx_pps, d.rates.tx_bps, d.rates.rx_pps),
        (100_000, 1_000_000_000, 5)
    );
    assert_round_trip(&c);
}

#[test]
fn bad_values_point_at_the_element() {
    assert_err(
        &af("allowed_ips = [\"192.0.2.1\", \"192.0.2.300\"]"),
        InvalidValue,
        6,
        29,
        "\"192.0.2.300\" in `allowed_ips` is not an IP address or prefix",
    );
    assert_err(
        &af("allowed_ips = [\"192.0.2.0/33\"]"),
        InvalidValue,
        6,
        16,
        "not an IP address or prefix",
    );
    assert_err(
        &af("multicast = [\"52:54:00:00:00:09\"]"),
        InvalidValue,
        6,
        14,
        "is a unicast address",
    );
    assert_err(
        &af("vlan = 4095"),
        InvalidValue,
        6,
        8,
        "vlan = 4095 is out of range (1..=4094)",
    );
    assert_err(
        &af("trunk_vlans = [200, 200]"),
        InvalidValue,
        6,
        21,
        "VLAN 200 is listed twice",
    );
    assert_err(
        &af("vlan = 100\ntrunk_vlans = [100]"),
        InvalidValue,
        7,
        16,
        "VLAN 100 is the port's `vlan`",
    );
    assert_err(
        &af("tx_pps = -1"),
        InvalidValue,
        6,
        10,
        "tx_pps = -1 is out of range",
    );
    assert_err(
        &af("rate_burst_us = 10"),
        InvalidValue,
        6,
        17,
        "rate_burst_us = 10",
    );
}

#[test]
fn backends_take_what_they_can_do() {
    let e = assert_err(
        &dev("vlan = 10"),
        Conflict,
        3,
        8,
        "`vlan` only applies to backend = \"tap\" or \"af_packet\"",
    );
    assert!(e.help().unwrap().contains("remove `vlan`"), "{e}");
    let e = assert_err(
        &dev("backend = \"tap\"\ntrunk_vlans = [5]"),
        Conflict,
        4,
        15,
        "`trunk_vlans` does not apply to backend = \"tap\"",
    );
    assert!(e.help().unwrap().contains("bridge vlan add"), "{e}");
    // A tap takes the MAC filter and the source checks.
    ok(&dev(
        "backend = \"tap\"\nmac = \"52:54:00:00:00:01\"\nallowed_ips = [\"192.0.2.7\"]",
    ));
    assert_err(
        &format!("{DEV}backend = \"af_packet\"\nnetdev = \"eth1\"\nmulticast = [\"01:00:5e:00:00:fb\"]\n"),
        Conflict,
        5,
        13,
        "`multicast` only filters with a `mac` and promiscuous = false",
    );
    // Rates apply to every backend (loopback included: benchmarks).
    ok(&dev("tx_pps = 1000"));
}
