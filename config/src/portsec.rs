//! The port security and rate limit keys of a `[[device]]`: `promiscuous`,
//! `spoof_check`, `allowed_ips`, `multicast`, `vlan`, `trunk_vlans`, `shared_netdev`,
//! `tx_pps`, `tx_bps`, `rx_pps`, `rx_bps`, `rate_burst_us`. Each error points at the
//! value to change.

use std::net::IpAddr;

use toml::Spanned;

use crate::defaults::{DEFAULT_RATE_BURST_US, MAX_RATE};
use crate::error::{ConfigError, ErrorKind, Source};
use crate::fields;
use crate::model::{Backend, IpPrefix, MacAddress, PortSecurity, RateLimits};
use crate::raw::RawDevice;

const VLAN_HELP: &str = "use a VLAN id from 1 to 4094, e.g. vlan = 100";
const IP_HELP: &str = "write an address or a prefix, e.g. \"192.0.2.10\", \"198.51.100.0/24\" \
                       or \"fe80::/64\"";
const MULTICAST_HELP: &str = "list group MAC addresses (first octet odd), e.g. \
                              \"01:00:5e:00:00:fb\" (mDNS) or \"33:33:00:00:00:01\"";

fn invalid(src: &Source<'_>, span: std::ops::Range<usize>, msg: String) -> ConfigError {
    src.error(ErrorKind::InvalidValue, span, msg)
}

/// `allowed_ips`: addresses or prefixes, host bits allowed (a bare address is /32 or
/// /128).
fn allowed_ips(
    src: &Source<'_>,
    value: &Spanned<Vec<Spanned<String>>>,
) -> Result<Vec<IpPrefix>, ConfigError> {
    let mut out = Vec::new();
    for e in value.get_ref() {
        let text = e.get_ref().trim();
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let bad = || {
            invalid(
                src,
                e.span(),
                format!("\"{text}\" in `allowed_ips` is not an IP address or prefix"),
            )
            .with_help(IP_HELP)
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(bad)?,
        };
        out.push(IpPrefix { addr, len });
    }
    Ok(out)
}

/// `multicast`: group MAC addresses.
fn multicast(
    src: &Source<'_>,
    value: &Spanned<Vec<Spanned<String>>>,
) -> Result<Vec<MacAddress>, ConfigError> {
    let mut out = Vec::new();
    for e in value.get_ref() {
        let text = e.get_ref();
        let mac: MacAddress = text.parse().map_err(|_| {
            invalid(
                src,
                e.span(),
                format!("\"{text}\" in `multicast` is not a MAC address"),
            )
            .with_help(MULTICAST_HELP)
        })?;
        if !mac.is_multicast() {
            return Err(invalid(
                src,
                e.span(),
                format!("\"{text}\" in `multicast` is a unicast address"),
            )
            .with_help(MULTICAST_HELP));
        }
        out.push(mac);
    }
    Ok(out)
}

fn vlan_id(src: &Source<'_>, v: &Spanned<i64>, key: &str) -> Result<u16, ConfigError> {
    fields::int_in(src, v, key, 1..=4094u16, VLAN_HELP)
}

/// A `Conflict` at `span` when the key named `key` was set to something that does
/// not apply to this device's backend.
fn not_for(
    src: &Source<'_>,
    span: std::ops::Range<usize>,
    key: &str,
    why: &str,
    help: &str,
) -> ConfigError {
    src.error(ErrorKind::Conflict, span, format!("`{key}` {why}"))
        .with_help(help.to_owned())
}

/// The port security keys, checked against the device's backend and `mac`.
pub(crate) fn security(
    src: &Source<'_>,
    d: &RawDevice,
    backend: &Backend,
    mac: Option<MacAddress>,
) -> Result<PortSecurity, ConfigError> {
    let defaults = PortSecurity::default();
    let flag =
        |v: &Option<Spanned<bool>>, default: bool| v.as_ref().map_or(default, |b| *b.get_ref());
    let allowed = d
        .allowed_ips
        .as_ref()
        .map(|v| allowed_ips(src, v))
        .transpose()?
        .unwrap_or_default();
    let groups = d
        .multicast
        .as_ref()
        .map(|v| multicast(src, v))
        .transpose()?;
    let vlan = d
        .vlan
        .as_ref()
        .map(|v| vlan_id(src, v, "vlan"))
        .transpose()?;
    let mut trunk_vlans: Vec<u16> = Vec::new();
    if let Some(list) = &d.trunk_vlans {
        for e in list.get_ref() {
            let v = vlan_id(src, e, "trunk_vlans")?;
            if trunk_vlans.contains(&v) || Some(v) == vlan {
                let why = if Some(v) == vlan {
                    format!("VLAN {v} is the port's `vlan` (its native VLAN, untagged)")
                } else {
                    format!("VLAN {v} is listed twice in `trunk_vlans`")
                };
                return Err(invalid(src, e.span(), why)
                    .with_help("list each tagged VLAN once, without the native `vlan`"));
            }
            trunk_vlans.push(v);
        }
    }
    let sec = PortSecurity {
        promiscuous: flag(&d.promiscuous, defaults.promiscuous),
        spoof_check: flag(&d.spoof_check, defaults.spoof_check),
        allowed_ips: allowed,
        multicast: groups,
        vlan,
        trunk_vlans,
        shared_netdev: flag(&d.shared_netdev, defaults.shared_netdev),
    };
    // What the backend cannot do.
    let set = |v: Option<std::ops::Range<usize>>, nonempty: bool| v.filter(|_| nonempty);
    let lists = [
        (
            "allowed_ips",
            set(
                d.allowed_ips.as_ref().map(Spanned::span),
                !sec.allowed_ips.is_empty(),
            ),
        ),
        (
            "multicast",
            set(
                d.multicast.as_ref().map(Spanned::span),
                sec.multicast.is_some(),
            ),
        ),
        ("vlan", set(d.vlan.as_ref().map(Spanned::span), true)),
        (
            "trunk_vlans",
            set(
                d.trunk_vlans.as_ref().map(Spanned::span),
                !sec.trunk_vlans.is_empty(),
            ),
        ),
    ];
    for (key, span) in lists {
        let Some(span) = span else { continue };
        match backend {
            Backend::Loopback => return Err(not_for(
                src,
                span,
                key,
                "only applies to backend = \"tap\" or \"af_packet\": a loopback device has no wire",
                &format!("remove `{key}`, or use a tap or af_packet backend"),
            )),
            Backend::Tap { .. } if key == "vlan" || key == "trunk_vlans" => {
                return Err(not_for(
                    src,
                    span,
                    key,
                    "does not apply to backend = \"tap\": the tap is a port of the host's bridge",
                    "remove it and put the tap on the VLAN in the bridge, e.g. `bridge vlan add \
                     dev <tap> vid 100 pvid untagged` (see docs/security.md)",
                ))
            }
            _ => {}
        }
    }
    if let Some(v) = &d.multicast {
        if mac.is_none() || sec.promiscuous {
            return Err(not_for(
                src,
                v.span(),
                "multicast",
                "only filters with a `mac` and promiscuous = false",
                "set the device's mac (and leave promiscuous off), or remove `multicast`",
            ));
        }
    }
    Ok(sec)
}

/// The rate limit keys.
pub(crate) fn rates(src: &Source<'_>, d: &RawDevice) -> Result<RateLimits, ConfigError> {
    let rate = |v: &Option<Spanned<i64>>, key: &str, help: &str| -> Result<u64, ConfigError> {
        match v {
            Some(v) => fields::int_in(src, v, key, 0..=MAX_RATE, help),
            None => Ok(0),
        }
    };
    let pps_help = "use packets per second, 0 for no limit, e.g. 100000";
    let bps_help =
        "use bits per second (frame bytes × 8), 0 for no limit, e.g. 1000000000 for 1 Gbit/s";
    Ok(RateLimits {
        tx_pps: rate(&d.tx_pps, "tx_pps", pps_help)?,
        tx_bps: rate(&d.tx_bps, "tx_bps", bps_help)?,
        rx_pps: rate(&d.rx_pps, "rx_pps", pps_help)?,
        rx_bps: rate(&d.rx_bps, "rx_bps", bps_help)?,
        burst_us: match &d.rate_burst_us {
            Some(v) => fields::int_in(
                src,
                v,
                "rate_burst_us",
                100..=1_000_000u32,
                "use 100 to 1000000 microseconds of traffic at the limit, e.g. 5000",
            )?,
            None => DEFAULT_RATE_BURST_US,
        },
    })
}
