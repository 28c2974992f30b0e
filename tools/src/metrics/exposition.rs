//! The text exposition format 0.0.4: every metric of every device, rendered from the
//! control plane's device views and counters (see `docs/metrics.md`).

use std::fmt::{Display, Write as _};

use crate::control::protocol::{DeviceStats, DeviceView};

/// Connection states, in the order `vdpad_device_state` lists them.
const STATES: [&str; 4] = ["waiting", "connected", "running", "failed"];

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Writes metric families in the text format.
struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a family: its HELP and TYPE lines.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// What the endpoint knows besides the devices.
#[derive(Clone, Copy, Debug)]
pub struct ProcessInfo {
    /// When the daemon started, in seconds since the Unix epoch.
    pub start_time: f64,
}

/// Renders every metric for `devices` (with their counters in `stats`, same order).
pub fn render(process: ProcessInfo, devices: &[DeviceView], stats: &[DeviceStats]) -> String {
    let mut e = Exposition { out: String::new() };
    e.family(
        "vdpad_build_info",
        "gauge",
        "vdpad build information; always 1.",
    );
    e.sample(
        "vdpad_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    e.family(
        "vdpad_start_time_seconds",
        "gauge",
        "Start time of the daemon since the Unix epoch, in seconds.",
    );
    e.sample(
        "vdpad_start_time_seconds",
        &[],
        format!("{:.3}", process.start_time),
    );
    e.family(
        "vdpad_devices",
        "gauge",
        "Devices configured: served, or failed to start and retried.",
    );
    e.sample("vdpad_devices", &[], devices.len());

    device_families(&mut e, devices);
    device_runtime_families(&mut e, devices);
    queue_counters(&mut e, stats);
    queue_breakdowns(&mut e, stats);
    e.out
}

/// One series per device: what it is, its state, its connections and migration.
fn device_families(e: &mut Exposition, devices: &[DeviceView]) {
    e.family(
        "vdpad_device_info",
        "gauge",
        "Device description; always 1. mode is offload or software, datapath what serves it now, socket_role server (vdpad listens) or client (vdpad connects), vdpa (VDUSE devices) the vDPA bus driver and what it made of the device.",
    );
    for d in devices {
        let pci = d.pci.as_ref().map(|p| p.address.as_str()).unwrap_or("");
        e.sample(
            "vdpad_device_info",
            &[
                ("device", &d.name),
                ("mode", &d.mode),
                ("datapath", &d.datapath),
                ("backend", &d.backend),
                ("pci", pci),
                ("socket", &d.socket),
                ("socket_role", &d.socket_role),
                ("vdpa", d.vdpa_attach.as_deref().unwrap_or("")),
            ],
            1,
        );
    }
    e.family(
        "vdpad_device_state",
        "gauge",
        "Device state: 1 for the current state (waiting, connected, running; failed: could not start, retried), 0 for the others.",
    );
    for d in devices {
        for s in STATES {
            e.sample(
                "vdpad_device_state",
                &[("device", &d.name), ("state", s)],
                u8::from(d.state == s),
            );
        }
    }
    e.family(
        "vdpad_device_start_failures_total",
        "counter",
        "Attempts to start the device that failed (it is retried with backoff while failed).",
    );
    for d in devices {
        e.sample(
            "vdpad_device_start_failures_total",
            &[("device", &d.name)],
            d.start_failure.as_ref().map_or(0, |f| f.attempts),
        );
    }
    e.family(
        "vdpad_device_connections_total",
        "counter",
        "Frontend connections accepted since the device started.",
    );
    for d in devices {
        e.sample(
            "vdpad_device_connections_total",
            &[("device", &d.name)],
            d.connections,
        );
    }
}

/// One series per device: its migration, queue pairs, fallback and features.
fn device_runtime_families(e: &mut Exposition, devices: &[DeviceView]) {
    e.family(
        "vdpad_device_dirty_logging",
        "gauge",
        "1 while a live migration has the device log the guest pages it writes (VHOST_F_LOG_ALL acked), else 0.",
    );
    for d in devices {
        e.sample(
            "vdpad_device_dirty_logging",
            &[("device", &d.name)],
            u8::from(d.migration.as_ref().is_some_and(|m| m.logging)),
        );
    }
    e.family(
        "vdpad_device_dirty_pages_total",
        "counter",
        "Guest pages the device marked dirty in the migration log of the current connection (and pages it could not mark: outside_log).",
    );
    for d in devices.iter().filter(|d| d.migration.is_some()) {
        let m = d.migration.as_ref().expect("filtered");
        for (kind, n) in [("marked", m.pages_marked), ("outside_log", m.outside_log)] {
            e.sample(
                "vdpad_device_dirty_pages_total",
                &[("device", &d.name), ("kind", kind)],
                n,
            );
        }
    }
    e.family(
        "vdpad_device_migration_relay_seconds_total",
        "counter",
        "Offload devices with a software fallback: time the software datapath served the rings while migrations logged.",
    );
    for d in devices {
        if let Some(r) = d.migration.as_ref().and_then(|m| m.relay.as_ref()) {
            e.sample(
                "vdpad_device_migration_relay_seconds_total",
                &[("device", &d.name)],
                format_args!("{:.3}", r.relay_ms as f64 / 1e3),
            );
        }
    }
    e.family(
        "vdpad_device_queue_pairs",
        "gauge",
        "Queue pairs offered to the guest.",
    );
    for d in devices {
        e.sample(
            "vdpad_device_queue_pairs",
            &[("device", &d.name)],
            d.queue_pairs,
        );
    }
    e.family(
        "vdpad_device_running_queue_pairs",
        "gauge",
        "Queue pairs running now.",
    );
    for d in devices {
        e.sample(
            "vdpad_device_running_queue_pairs",
            &[("device", &d.name)],
            d.running_pairs.len(),
        );
    }
    e.family(
        "vdpad_device_fallback",
        "gauge",
        "1 if the device left offload for the software datapath, else 0.",
    );
    for d in devices {
        e.sample(
            "vdpad_device_fallback",
            &[("device", &d.name)],
            u8::from(d.fallback_reason.is_some()),
        );
    }
    e.family(
        "vdpad_device_link_up",
        "gauge",
        "0 if the offload NIC under the device reports its link down, else 1.",
    );
    for d in devices {
        e.sample(
            "vdpad_device_link_up",
            &[("device", &d.name)],
            u8::from(!d.link_down),
        );
    }
    e.family(
        "vdpad_device_feature_acked",
        "gauge",
        "Virtio features the current frontend acked; one series per feature, always 1.",
    );
    for d in devices {
        for f in &d.features {
            e.sample(
                "vdpad_device_feature_acked",
                &[("device", &d.name), ("feature", f)],
                1,
            );
        }
    }
}

/// The per-queue counters, one family each.
fn queue_counters(e: &mut Exposition, stats: &[DeviceStats]) {
    type Counter = fn(&crate::control::protocol::QueueView) -> u64;
    let counters: [(&str, &str, Counter); 9] = [
        ("vdpad_queue_packets_total", "Frames completed on the queue.", |q| q.packets),
        (
            "vdpad_queue_bytes_total",
            "Frame bytes completed on the queue, without the virtio-net header.",
            |q| q.bytes,
        ),
        (
            "vdpad_queue_kicks_total",
            "Notifications (kicks) received from the guest.",
            |q| q.kicks,
        ),
        (
            "vdpad_queue_interrupts_total",
            "Interrupts (call eventfd signals) sent to the guest.",
            |q| q.interrupts,
        ),
        (
            "vdpad_queue_interrupts_suppressed_total",
            "Interrupts not sent because the guest asked not to get them (EVENT_IDX or NO_INTERRUPT).",
            |q| q.interrupts_suppressed,
        ),
        (
            "vdpad_queue_sleeps_total",
            "Times the queue pair's worker re-armed notifications and slept (RX ring only).",
            |q| q.sleeps,
        ),
        (
            "vdpad_queue_bursts_total",
            "Bursts processed (used index publications).",
            |q| q.bursts,
        ),
        (
            "vdpad_queue_rx_no_buffer_total",
            "Times a frame waited because the guest had posted no receive buffer.",
            |q| q.rx_no_buffer,
        ),
        (
            "vdpad_queue_throttled_total",
            "Times the queue waited for its rate limit's tokens.",
            |q| q.throttled,
        ),
    ];
    for (name, help, get) in counters {
        e.family(name, "counter", help);
        for s in stats {
            for q in &s.queues {
                let queue = q.queue.to_string();
                e.sample(
                    name,
                    &[
                        ("device", &s.name),
                        ("queue", &queue),
                        ("direction", &q.direction),
                    ],
                    get(q),
                );
            }
        }
    }
}

/// Per-queue counters broken down by reason or kind (drops, bad descriptors, faults,
/// throttling).
fn queue_breakdowns(e: &mut Exposition, stats: &[DeviceStats]) {
    e.family(
        "vdpad_queue_drops_total",
        "counter",
        "Frames dropped, by reason (rx_buffer_too_small, oversized, backend, backend_queue, too_many_segments, spoofed_mac, spoofed_ip, spoofed_arp, vlan).",
    );
    for s in stats {
        for q in &s.queues {
            let queue = q.queue.to_string();
            for (reason, v) in &q.drops {
                e.sample(
                    "vdpad_queue_drops_total",
                    &[
                        ("device", &s.name),
                        ("queue", &queue),
                        ("direction", &q.direction),
                        ("reason", reason),
                    ],
                    v,
                );
            }
        }
    }
    e.family(
        "vdpad_queue_bad_descriptors_total",
        "counter",
        "Descriptor chains the guest posted that were invalid, by kind; each was skipped.",
    );
    for s in stats {
        for q in &s.queues {
            let queue = q.queue.to_string();
            for (kind, v) in &q.bad_descriptors {
                e.sample(
                    "vdpad_queue_bad_descriptors_total",
                    &[
                        ("device", &s.name),
                        ("queue", &queue),
                        ("direction", &q.direction),
                        ("kind", kind),
                    ],
                    v,
                );
            }
        }
    }
    e.family(
        "vdpad_queue_throttled_seconds_total",
        "counter",
        "Time the queue waited for its rate limit's tokens (vdpactl rate, tx_pps/tx_bps/rx_pps/rx_bps).",
    );
    for s in stats {
        for q in &s.queues {
            let queue = q.queue.to_string();
            e.sample(
                "vdpad_queue_throttled_seconds_total",
                &[
                    ("device", &s.name),
                    ("queue", &queue),
                    ("direction", &q.direction),
                ],
                q.throttled_seconds,
            );
        }
    }
    e.family(
        "vdpad_queue_faults_total",
        "counter",
        "Events that stopped or degraded a queue, by kind (kick_fd, guest_memory, worker_panic); a pair's events count on its RX queue.",
    );
    for s in stats {
        for q in &s.queues {
            let queue = q.queue.to_string();
            for (kind, v) in &q.faults {
                e.sample(
                    "vdpad_queue_faults_total",
                    &[
                        ("device", &s.name),
                        ("queue", &queue),
                        ("direction", &q.direction),
                        ("kind", kind),
                    ],
                    v,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{MigrationView, PciView, QueueView, RelayView};

    fn device() -> (DeviceView, DeviceStats) {
        let view = DeviceView {
            name: "vm\"1\\x\n".into(),
            mode: "software".into(),
            mode_reason: "r".into(),
            datapath: "software/loopback".into(),
            backend: "loopback".into(),
            pci: Some(PciView {
                address: "0000:00:03.0".into(),
                name: None,
            }),
            socket: "/run/vdpad/vm1.sock".into(),
            socket_role: "server".into(),
            state: "running".into(),
            peer: None,
            connections: 2,
            queue_pairs: 1,
            running_pairs: vec![0],
            acked_features: "0x1".into(),
            features: vec!["VERSION_1".into()],
            mac: None,
            mtu: None,
            fallback_reason: None,
            link_down: false,
            last_error: None,
            start_failure: None,
            vdpa_attach: None,
            migration: Some(MigrationView {
                logging: true,
                log_bytes: 65536,
                pages_marked: 12,
                outside_log: 0,
                relay: Some(RelayView {
                    relaying: true,
                    relays: 2,
                    relay_ms: 1500,
                }),
            }),
        };
        let q = QueueView {
            queue: 1,
            pair: 0,
            direction: "tx".into(),
            packets: 7,
            bytes: 448,
            kicks: 1,
            interrupts: 1,
            interrupts_suppressed: 0,
            bursts: 1,
            rx_no_buffer: 0,
            sleeps: 0,
            drops: [("oversized".to_string(), 3)].into_iter().collect(),
            drops_total: 3,
            bad_descriptors: [("address".to_string(), 0)].into_iter().collect(),
            bad_descriptors_total: 0,
            faults: [("guest_memory".to_string(), 1)].into_iter().collect(),
            throttled: 2,
            throttled_seconds: 0.5,
            packets_per_kick: Some(7.0),
            packets_per_interrupt: Some(7.0),
        };
        let stats = DeviceStats {
            name: view.name.clone(),
            state: "running".into(),
            datapath: view.datapath.clone(),
            connections: 2,
            peer: None,
            queues: vec![q],
        };
        (view, stats)
    }

    #[test]
    fn exposition_has_help_type_and_escaped_labels() {
        let (v, s) = device();
        let text = render(ProcessInfo { start_time: 1.5 }, &[v], &[s]);
        let esc = r#"device="vm\"1\\x\n""#;
        assert!(
            text.contains(&format!(
                "vdpad_queue_packets_total{{{esc},queue=\"1\",direction=\"tx\"}} 7\n"
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            "vdpad_queue_drops_total{{{esc},queue=\"1\",direction=\"tx\",reason=\"oversized\"}} 3\n"
        )));
        assert!(text.contains(&format!(
            "vdpad_queue_faults_total{{{esc},queue=\"1\",direction=\"tx\",kind=\"guest_memory\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "vdpad_queue_throttled_seconds_total{{{esc},queue=\"1\",direction=\"tx\"}} 0.5\n"
        )));
        assert!(text.contains(&format!(
            "vdpad_queue_throttled_total{{{esc},queue=\"1\",direction=\"tx\"}} 2\n"
        )));
        assert!(text.contains(&format!(
            "vdpad_device_state{{{esc},state=\"running\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "vdpad_device_state{{{esc},state=\"waiting\"}} 0\n"
        )));
        assert!(text.contains("# TYPE vdpad_device_connections_total counter\n"));
        assert!(text.contains(&format!("vdpad_device_dirty_logging{{{esc}}} 1\n")));
        assert!(text.contains(&format!(
            "vdpad_device_dirty_pages_total{{{esc},kind=\"marked\"}} 12\n"
        )));
        assert!(text.contains(&format!(
            "vdpad_device_migration_relay_seconds_total{{{esc}}} 1.500\n"
        )));
        assert!(text.contains("vdpad_start_time_seconds 1.500\n"));
        // Every sample belongs to the family declared last before it.
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_owned();
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, family, "{line}");
            }
        }
    }
}
