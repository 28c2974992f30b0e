//! The human tables of `vdpactl list` and `vdpactl stats`.

use std::fmt::Write as _;

use super::protocol::{DeviceStats, DeviceView, MigrationView, PeerView, QueueView};
use super::rates::QueueRates;

/// A table: a header and rows of cells; columns marked numeric are right-aligned.
struct Table {
    header: Vec<&'static str>,
    numeric: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(columns: &[(&'static str, bool)]) -> Table {
        Table {
            header: columns.iter().map(|c| c.0).collect(),
            numeric: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String) {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |out: &mut String, cells: Vec<&str>| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i > 0 {
                    s.push_str("  ");
                }
                let pad = widths[i].saturating_sub(c.chars().count());
                if self.numeric[i] {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        line(out, self.header.clone());
        for r in &self.rows {
            line(out, r.iter().map(String::as_str).collect());
        }
    }
}

/// `-` for a missing value.
fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// A number with an SI prefix and three significant digits: `812`, `4.50k`, `12.3M`.
pub fn si(v: f64) -> String {
    let (scaled, prefix) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    if prefix.is_empty() && scaled.fract() == 0.0 {
        return format!("{scaled:.0}");
    }
    let digits = if scaled >= 100.0 {
        0
    } else if scaled >= 10.0 {
        1
    } else {
        2
    };
    format!("{scaled:.digits$}{prefix}")
}

fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"))
}

/// A client-mode device's connection in words: `connected (12 attempts so far)`,
/// `waiting for peer: 3 failed attempt(s), next in 0.8 s; last: ...`.
pub fn peer_text(p: &PeerView) -> String {
    if p.state == "connected" {
        return format!("connected ({} attempt(s) so far)", p.attempts);
    }
    let mut text = format!("waiting for peer: {} failed attempt(s)", p.failed_attempts);
    if let Some(secs) = p.retry_in_seconds {
        let _ = write!(text, ", next in {secs:.1} s");
    }
    if let Some(e) = &p.last_error {
        let _ = write!(text, "; last: {e}");
    }
    text
}

/// `vdpactl list`: a summary table, then each device's details.
pub fn list(devices: &[DeviceView]) -> String {
    let mut out = String::new();
    if devices.is_empty() {
        out.push_str("no devices (add one with `vdpactl add --config SNIPPET.toml`)\n");
        return out;
    }
    let mut t = Table::new(&[
        ("NAME", false),
        ("MODE", false),
        ("STATE", false),
        ("PAIRS", true),
        ("CONNS", true),
        ("DATAPATH", false),
        ("ROLE", false),
        ("SOCKET", false),
    ]);
    for d in devices {
        t.row(vec![
            d.name.clone(),
            d.mode.clone(),
            d.state.clone(),
            format!("{}/{}", d.running_pairs.len(), d.queue_pairs),
            d.connections.to_string(),
            d.datapath.clone(),
            d.socket_role.clone(),
            d.socket.clone(),
        ]);
    }
    t.render(&mut out);
    for d in devices {
        let _ = writeln!(out, "\n{}:", d.name);
        let field = |out: &mut String, k: &str, v: String| {
            let _ = writeln!(out, "  {k:<15}{v}");
        };
        field(&mut out, "mode", format!("{} ({})", d.mode, d.mode_reason));
        field(&mut out, "datapath", d.datapath.clone());
        field(&mut out, "backend", d.backend.clone());
        field(
            &mut out,
            "pci",
            match &d.pci {
                None => "-".to_owned(),
                Some(p) => match &p.name {
                    Some(n) => format!("{} {n}", p.address),
                    None => format!("{} (cannot read its ids)", p.address),
                },
            },
        );
        let role = match d.socket_role.as_str() {
            "client" => "client: the frontend listens, vdpad connects",
            _ => "server: vdpad listens, the frontend connects",
        };
        field(&mut out, "socket", format!("{} ({role})", d.socket));
        if let Some(a) = &d.vdpa_attach {
            field(&mut out, "vdpa bus", a.clone());
        }
        field(
            &mut out,
            "state",
            format!("{}, {} connection(s) so far", d.state, d.connections),
        );
        if let Some(p) = &d.peer {
            field(&mut out, "peer", peer_text(p));
        }
        let running = if d.running_pairs.is_empty() {
            "none".to_owned()
        } else {
            d.running_pairs
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        field(
            &mut out,
            "queue pairs",
            format!("{} offered, running: {running}", d.queue_pairs),
        );
        let features = if d.features.is_empty() {
            "none negotiated".to_owned()
        } else {
            format!("{} ({})", d.features.join(" "), d.acked_features)
        };
        field(&mut out, "features", features);
        if let Some(mac) = &d.mac {
            field(&mut out, "mac", mac.clone());
        }
        if let Some(mtu) = d.mtu {
            field(&mut out, "mtu", mtu.to_string());
        }
        field(&mut out, "fallback", or_dash(d.fallback_reason.clone()));
        if let Some(m) = &d.migration {
            field(&mut out, "migration", migration_text(m));
        }
        if let Some(f) = &d.start_failure {
            let text = match (&f.error, f.retry_in_seconds) {
                (Some(e), Some(secs)) => format!(
                    "failed {} time(s), next attempt in {secs:.0} s: {e}",
                    f.attempts
                ),
                _ => format!("started after {} failed attempt(s)", f.attempts),
            };
            field(&mut out, "start", text);
        }
        if let Some(e) = &d.last_error {
            field(&mut out, "last error", e.clone());
        }
    }
    out
}

/// `logging: 12345 page(s) marked, 64 KiB log` (or `not logging (last log: ...)`).
pub fn migration_text(m: &MigrationView) -> String {
    let what = if m.logging {
        "logging dirty pages"
    } else {
        "not logging (last migration's log)"
    };
    let mut text = format!(
        "{what}: {} page(s) marked, {} KiB log",
        m.pages_marked,
        m.log_bytes / 1024
    );
    if m.outside_log > 0 {
        text.push_str(&format!(", {} page(s) outside the log", m.outside_log));
    }
    if let Some(r) = &m.relay {
        let now = if r.relaying { ", relaying now" } else { "" };
        text.push_str(&format!(
            "; software relay: {} migration(s), {:.1} s{now}",
            r.relays,
            r.relay_ms as f64 / 1e3
        ));
    }
    text
}

/// `vdpactl stats`: one table per device. With `rates` (from `--watch`), PPS and BPS
/// are filled in and packets per kick and per interrupt cover the interval;
/// otherwise they cover the device's life.
pub fn stats(devices: &[DeviceStats], rates: Option<&[QueueRates]>) -> String {
    let mut out = String::new();
    for (i, d) in devices.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "{}  state {}  datapath {}  connections {}",
            d.name, d.state, d.datapath, d.connections
        );
        if let Some(p) = &d.peer {
            let _ = writeln!(out, "  peer {}", peer_text(p));
        }
        if d.queues.is_empty() {
            out.push_str(
                "  no queue counters yet (they appear when a frontend first starts a queue pair)\n",
            );
            continue;
        }
        let mut t = Table::new(&[
            ("QUEUE", true),
            ("DIR", false),
            ("PACKETS", true),
            ("BYTES", true),
            ("PPS", true),
            ("BPS", true),
            ("KICKS", true),
            ("IRQS", true),
            ("SUPPRESSED", true),
            ("PKTS/KICK", true),
            ("PKTS/IRQ", true),
            ("SLEEPS", true),
            ("NO_RXBUF", true),
            ("DROPS", true),
            ("BAD_DESC", true),
            ("FAULTS", true),
        ]);
        for q in &d.queues {
            let r =
                rates.and_then(|rs| rs.iter().find(|r| r.device == d.name && r.queue == q.queue));
            let (pps, bps, ppk, ppi) = match (rates, r) {
                (Some(_), Some(r)) => (
                    si(r.pps),
                    si(r.bps),
                    ratio(r.packets_per_kick),
                    ratio(r.packets_per_interrupt),
                ),
                (Some(_), None) => ("-".into(), "-".into(), "-".into(), "-".into()),
                (None, _) => (
                    "-".into(),
                    "-".into(),
                    ratio(q.packets_per_kick),
                    ratio(q.packets_per_interrupt),
                ),
            };
            t.row(vec![
                q.queue.to_string(),
                q.direction.clone(),
                q.packets.to_string(),
                q.bytes.to_string(),
                pps,
                bps,
                q.kicks.to_string(),
                q.interrupts.to_string(),
                q.interrupts_suppressed.to_string(),
                ppk,
                ppi,
                q.sleeps.to_string(),
                q.rx_no_buffer.to_string(),
                q.drops_total.to_string(),
                q.bad_descriptors_total.to_string(),
                q.faults.values().sum::<u64>().to_string(),
            ]);
        }
        t.render(&mut out);
        for q in &d.queues {
            breakdown(&mut out, q, "drops", &q.drops);
            breakdown(&mut out, q, "bad descriptors", &q.bad_descriptors);
            breakdown(&mut out, q, "faults", &q.faults);
        }
    }
    out
}

/// `  queue 1 drops: oversized=3 backend=1` — only the reasons that counted.
fn breakdown(
    out: &mut String,
    q: &QueueView,
    what: &str,
    counts: &std::collections::BTreeMap<String, u64>,
) {
    let nonzero: Vec<String> = counts
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !nonzero.is_empty() {
        let _ = writeln!(out, "  queue {} {what}: {}", q.queue, nonzero.join(" "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn si_prefixes() {
        assert_eq!(si(0.0), "0");
        assert_eq!(si(812.0), "812");
        assert_eq!(si(812.7), "813");
        assert_eq!(si(81.3), "81.3");
        assert_eq!(si(2.5), "2.50");
        assert_eq!(si(4_500.0), "4.50k");
        assert_eq!(si(12_345_678.0), "12.3M");
        assert_eq!(si(2_305_000_000.0), "2.31G");
        assert_eq!(si(450_000_000.0), "450M");
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&[("A", false), ("NUM", true)]);
        t.row(vec!["long-name".into(), "1".into()]);
        t.row(vec!["x".into(), "12345".into()]);
        let mut s = String::new();
        t.render(&mut s);
        assert_eq!(s, "A            NUM\nlong-name      1\nx          12345\n");
    }

    #[test]
    fn the_migration_line_says_what_the_relay_did() {
        let mut m = MigrationView {
            logging: false,
            log_bytes: 65_536,
            pages_marked: 7,
            outside_log: 0,
            relay: None,
        };
        assert_eq!(
            migration_text(&m),
            "not logging (last migration's log): 7 page(s) marked, 64 KiB log"
        );
        m.relay = Some(crate::control::protocol::RelayView {
            relaying: true,
            relays: 2,
            relay_ms: 2_340,
        });
        assert!(
            migration_text(&m).ends_with("; software relay: 2 migration(s), 2.3 s, relaying now"),
            "{}",
            migration_text(&m)
        );
    }
}
