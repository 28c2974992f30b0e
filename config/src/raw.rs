//! The serde mirror of the TOML file: every value as written, with its byte span,
//! nothing validated or defaulted yet; and the schema (keys and value types of each
//! table) that the file is checked against before it is deserialized.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// A whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// `[daemon]`, if present; the span is the table header.
    pub daemon: Option<Spanned<RawDaemon>>,
    /// `[[device]]` entries in file order; each span is the table header.
    #[serde(default)]
    pub device: Vec<Spanned<RawDevice>>,
}

/// A device snippet (`vdpactl add`): only `[[device]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSnippet {
    /// `[[device]]` entries in order.
    #[serde(default)]
    pub device: Vec<Spanned<RawDevice>>,
}

/// `[daemon]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDaemon {
    pub run_dir: Option<Spanned<String>>,
    pub control_socket: Option<Spanned<String>>,
    pub log_level: Option<Spanned<String>>,
    pub log_format: Option<Spanned<String>>,
    pub metrics_listen: Option<Spanned<String>>,
    pub socket_mode: Option<Spanned<String>>,
    pub socket_owner: Option<Spanned<RawId>>,
    pub socket_group: Option<Spanned<RawId>>,
    pub include_dir: Option<Spanned<String>>,
    pub control_socket_mode: Option<Spanned<String>>,
    pub socket_dirs: Option<Spanned<Vec<Spanned<String>>>>,
}

/// One `[[device]]` table as written. Integers are kept as `i64` so that range errors
/// are ours (with a fix hint) rather than the deserializer's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDevice {
    pub name: Option<Spanned<String>>,
    pub socket: Option<Spanned<String>>,
    pub socket_role: Option<Spanned<String>>,
    pub frontend: Option<Spanned<String>>,
    pub vdpa_driver: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
    pub pci: Option<Spanned<String>>,
    pub vm: Option<Spanned<String>>,
    pub backend: Option<Spanned<String>>,
    pub tap_name: Option<Spanned<String>>,
    pub netdev: Option<Spanned<String>>,
    pub queue_pairs: Option<Spanned<i64>>,
    pub queue_size: Option<Spanned<i64>>,
    pub mac: Option<Spanned<String>>,
    pub mtu: Option<Spanned<i64>>,
    pub max_guest_memory: Option<Spanned<String>>,
    pub event_idx: Option<Spanned<bool>>,
    pub mrg_rxbuf: Option<Spanned<bool>>,
    pub offloads: Option<Spanned<bool>>,
    pub fallback: Option<Spanned<bool>>,
    pub socket_mode: Option<Spanned<String>>,
    pub socket_owner: Option<Spanned<RawId>>,
    pub socket_group: Option<Spanned<RawId>>,
    pub burst: Option<Spanned<i64>>,
    pub weight: Option<Spanned<i64>>,
    pub polling: Option<Spanned<String>>,
    pub busy_poll_us: Option<Spanned<i64>>,
    pub rx_coalesce_frames: Option<Spanned<i64>>,
    pub rx_coalesce_usecs: Option<Spanned<i64>>,
    /// The array's span and each element with its own, so that a bad CPU number is
    /// reported at the element.
    pub cpus: Option<Spanned<Vec<Spanned<i64>>>>,
    pub workers: Option<Spanned<String>>,
    pub promiscuous: Option<Spanned<bool>>,
    pub spoof_check: Option<Spanned<bool>>,
    pub allowed_ips: Option<Spanned<Vec<Spanned<String>>>>,
    pub multicast: Option<Spanned<Vec<Spanned<String>>>>,
    pub vlan: Option<Spanned<i64>>,
    pub trunk_vlans: Option<Spanned<Vec<Spanned<i64>>>>,
    pub shared_netdev: Option<Spanned<bool>>,
    pub tx_pps: Option<Spanned<i64>>,
    pub tx_bps: Option<Spanned<i64>>,
    pub rx_pps: Option<Spanned<i64>>,
    pub rx_bps: Option<Spanned<i64>>,
    pub rate_burst_us: Option<Spanned<i64>>,
}

/// A user or group: a name (`"qemu"`), a numeric string (`"107"`), or an integer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RawId {
    /// Written as a string.
    Text(String),
    /// Written as a TOML integer.
    Number(i64),
}

impl<'de> Deserialize<'de> for RawId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;

        impl Visitor<'_> for IdVisitor {
            type Value = RawId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a user or group name, or a numeric id")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawId, E> {
                Ok(RawId::Text(v.to_owned()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawId, E> {
                Ok(RawId::Number(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawId, E> {
                Ok(RawId::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }

        deserializer.deserialize_any(IdVisitor)
    }
}

/// The TOML type a key accepts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ValueType {
    /// A string.
    String,
    /// An integer.
    Integer,
    /// An array of integers (`[0, 1]`); the schema checks each element.
    IntegerArray,
    /// An array of strings (`["a", "b"]`); the schema checks each element.
    StringArray,
    /// `true` or `false`.
    Boolean,
    /// A user or group: a string or an integer.
    Id,
    /// A table described by the spec.
    Table(&'static TableSpec),
    /// An array of tables (`[[name]]`), each described by the spec.
    TableArray(&'static TableSpec),
}

impl ValueType {
    /// The type in words, for "must be ..." messages.
    pub fn describe(self) -> &'static str {
        match self {
            ValueType::String => "a string",
            ValueType::Integer => "an integer",
            ValueType::IntegerArray => "an array of integers",
            ValueType::StringArray => "an array of strings",
            ValueType::Boolean => "a boolean (true or false)",
            ValueType::Id => "a name (string) or a numeric id",
            ValueType::Table(_) => "a table",
            ValueType::TableArray(_) => "an array of tables",
        }
    }
}

/// One key a table accepts.
#[derive(Debug)]
pub(crate) struct KeySpec {
    /// The key.
    pub name: &'static str,
    /// Its value type.
    pub ty: ValueType,
    /// A correct line for the key, shown in type-error hints.
    pub example: &'static str,
}

/// The keys one table accepts.
#[derive(Debug)]
pub(crate) struct TableSpec {
    /// How the table is named in messages, e.g. `[[device]]`.
    pub title: &'static str,
    /// Accepted keys, in documentation order.
    pub keys: &'static [KeySpec],
}

impl TableSpec {
    /// The spec of `name`, if the table accepts it.
    pub fn key(&self, name: &str) -> Option<&'static KeySpec> {
        self.keys.iter().find(|k| k.name == name)
    }

    /// The accepted keys as a comma-separated list.
    pub fn key_list(&self) -> String {
        let names: Vec<&str> = self.keys.iter().map(|k| k.name).collect();
        names.join(", ")
    }
}

const fn key(name: &'static str, ty: ValueType, example: &'static str) -> KeySpec {
    KeySpec { name, ty, example }
}

/// `[daemon]`.
pub(crate) const DAEMON: TableSpec = TableSpec {
    title: "[daemon]",
    keys: &[
        key("run_dir", ValueType::String, "run_dir = \"/run/vdpad\""),
        key(
            "control_socket",
            ValueType::String,
            "control_socket = \"control.sock\"",
        ),
        key("log_level", ValueType::String, "log_level = \"info\""),
        key("log_format", ValueType::String, "log_format = \"text\""),
        key(
            "metrics_listen",
            ValueType::String,
            "metrics_listen = \"127.0.0.1:9464\"",
        ),
        key("socket_mode", ValueType::String, "socket_mode = \"0600\""),
        key("socket_owner", ValueType::Id, "socket_owner = \"qemu\""),
        key("socket_group", ValueType::Id, "socket_group = \"kvm\""),
        key(
            "include_dir",
            ValueType::String,
            "include_dir = \"/etc/vdpad/vdpad.d\"",
        ),
        key(
            "control_socket_mode",
            ValueType::String,
            "control_socket_mode = \"0600\"",
        ),
        key(
            "socket_dirs",
            ValueType::StringArray,
            "socket_dirs = [\"/var/lib/vdpad/sockets\"]",
        ),
    ],
};

/// `[[device]]`.
pub(crate) const DEVICE: TableSpec = TableSpec {
    title: "[[device]]",
    keys: &[
        key("name", ValueType::String, "name = \"vm1-net0\""),
        key("socket", ValueType::String, "socket = \"vm1-net0.sock\""),
        key("socket_role", ValueType::String, "socket_role = \"client\""),
        key("frontend", ValueType::String, "frontend = \"vduse\""),
        key(
            "vdpa_driver",
            ValueType::String,
            "vdpa_driver = \"vhost_vdpa\"",
        ),
        key("mode", ValueType::String, "mode = \"software\""),
        key("pci", ValueType::String, "pci = \"0000:3b:00.2\""),
        key("vm", ValueType::String, "vm = \"vm1\""),
        key("backend", ValueType::String, "backend = \"loopback\""),
        key("tap_name", ValueType::String, "tap_name = \"vdpad-tap0\""),
        key("netdev", ValueType::String, "netdev = \"eth1\""),
        key("queue_pairs", ValueType::Integer, "queue_pairs = 1"),
        key("queue_size", ValueType::Integer, "queue_size = 256"),
        key("mac", ValueType::String, "mac = \"52:54:00:12:34:56\""),
        key("mtu", ValueType::Integer, "mtu = 1500"),
        key(
            "max_guest_memory",
            ValueType::String,
            "max_guest_memory = \"64G\"",
        ),
        key("event_idx", ValueType::Boolean, "event_idx = true"),
        key("mrg_rxbuf", ValueType::Boolean, "mrg_rxbuf = true"),
        key("offloads", ValueType::Boolean, "offloads = true"),
        key("fallback", ValueType::Boolean, "fallback = true"),
        key("socket_mode", ValueType::String, "socket_mode = \"0660\""),
        key("socket_owner", ValueType::Id, "socket_owner = \"qemu\""),
        key("socket_group", ValueType::Id, "socket_group = \"kvm\""),
        key("burst", ValueType::Integer, "burst = 64"),
        key("weight", ValueType::Integer, "weight = 256"),
        key("polling", ValueType::String, "polling = \"adaptive\""),
        key("busy_poll_us", ValueType::Integer, "busy_poll_us = 50"),
        key(
            "rx_coalesce_frames",
            ValueType::Integer,
            "rx_coalesce_frames = 32",
        ),
        key(
            "rx_coalesce_usecs",
            ValueType::Integer,
            "rx_coalesce_usecs = 50",
        ),
        key("cpus", ValueType::IntegerArray, "cpus = [2, 3]"),
        key("workers", ValueType::String, "workers = \"per-cpu\""),
        key("promiscuous", ValueType::Boolean, "promiscuous = false"),
        key("spoof_check", ValueType::Boolean, "spoof_check = true"),
        key(
            "allowed_ips",
            ValueType::StringArray,
            "allowed_ips = [\"192.0.2.10\", \"fe80::/64\"]",
        ),
        key(
            "multicast",
            ValueType::StringArray,
            "multicast = [\"01:00:5e:00:00:fb\"]",
        ),
        key("vlan", ValueType::Integer, "vlan = 100"),
        key(
            "trunk_vlans",
            ValueType::IntegerArray,
            "trunk_vlans = [200, 300]",
        ),
        key("shared_netdev", ValueType::Boolean, "shared_netdev = false"),
        key("tx_pps", ValueType::Integer, "tx_pps = 100000"),
        key("tx_bps", ValueType::Integer, "tx_bps = 1000000000"),
        key("rx_pps", ValueType::Integer, "rx_pps = 100000"),
        key("rx_bps", ValueType::Integer, "rx_bps = 1000000000"),
        key("rate_burst_us", ValueType::Integer, "rate_burst_us = 5000"),
    ],
};

/// The top level of a configuration file.
pub(crate) const FILE_ROOT: TableSpec = TableSpec {
    title: "the top level",
    keys: &[
        key("daemon", ValueType::Table(&DAEMON), "[daemon]"),
        key("device", ValueType::TableArray(&DEVICE), "[[device]]"),
    ],
};

/// The top level of a device snippet.
pub(crate) const SNIPPET_ROOT: TableSpec = TableSpec {
    title: "a device snippet",
    keys: &[key("device", ValueType::TableArray(&DEVICE), "[[device]]")],
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key the schema lists must be accepted by the serde mirror with the
    /// listed type, or the schema and the structs have drifted apart.
    #[test]
    fn schema_examples_deserialize() {
        let daemon: Vec<&str> = DAEMON.keys.iter().map(|k| k.example).collect();
        let device: Vec<&str> = DEVICE.keys.iter().map(|k| k.example).collect();
        let text = format!(
            "[daemon]\n{}\n[[device]]\n{}\n",
            daemon.join("\n"),
            device.join("\n")
        );
        let raw: RawConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let dev = &raw.device[0].get_ref();
        assert!(dev.name.is_some() && dev.fallback.is_some() && dev.socket_group.is_some());
        let cpus = dev.cpus.as_ref().expect("cpus");
        let cpus: Vec<i64> = cpus.get_ref().iter().map(|c| *c.get_ref()).collect();
        assert_eq!(cpus, [2, 3]);
        assert!(raw
            .daemon
            .as_ref()
            .unwrap()
            .get_ref()
            .metrics_listen
            .is_some());
        let snippet: RawSnippet =
            toml::from_str(&format!("[[device]]\n{}\n", device.join("\n"))).unwrap();
        assert_eq!(snippet.device.len(), 1);
    }

    #[test]
    fn id_accepts_names_and_numbers() {
        #[derive(Deserialize)]
        struct T {
            a: RawId,
            b: RawId,
        }
        let t: T = toml::from_str("a = \"qemu\"\nb = 107\n").unwrap();
        assert_eq!(t.a, RawId::Text("qemu".into()));
        assert_eq!(t.b, RawId::Number(107));
    }
}
