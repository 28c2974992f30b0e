//! Reading the results of traffic tools run by tests: `ping` summaries (busybox in
//! the guest, iputils on the host) and `iperf3 --json` reports.

/// The summary of one `ping` run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PingSummary {
    /// Echo requests sent.
    pub transmitted: u64,
    /// Replies received.
    pub received: u64,
    /// Replies received more than once (`+K duplicates` / `K duplicates`).
    pub duplicates: u64,
    /// Round-trip minimum, average and maximum in milliseconds (absent when nothing
    /// came back).
    pub rtt_ms: Option<(f64, f64, f64)>,
}

impl PingSummary {
    /// Requests without a reply, in percent.
    pub fn loss_percent(&self) -> f64 {
        if self.transmitted == 0 {
            return 100.0;
        }
        100.0 * (self.transmitted - self.received.min(self.transmitted)) as f64
            / self.transmitted as f64
    }

    /// One line for test output.
    pub fn summary(&self) -> String {
        let rtt = self.rtt_ms.map_or("-".to_string(), |(min, avg, max)| {
            format!("rtt min/avg/max {min:.3}/{avg:.3}/{max:.3} ms")
        });
        format!(
            "{}/{} replies, {:.0} % loss, {rtt}",
            self.received,
            self.transmitted,
            self.loss_percent()
        )
    }
}

/// Parses the statistics lines that busybox and iputils `ping` print at the end:
/// `N packets transmitted, M [packets] received, ...` and
/// `round-trip|rtt min/avg/max[/mdev] = a/b/c[/d] ms`.
pub fn parse_ping(output: &str) -> Option<PingSummary> {
    let counts = output.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers = counts
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse::<u64>().ok());
    let transmitted = numbers.next()?;
    let received = numbers.next()?;
    let duplicates = counts
        .split(',')
        .find(|part| part.contains("duplicates"))
        .and_then(|part| {
            part.split_whitespace()
                .next()?
                .trim_start_matches('+')
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let rtt_ms = output
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| {
            let vals: Vec<f64> = v
                .split_whitespace()
                .next()?
                .split('/')
                .filter_map(|x| x.parse().ok())
                .collect();
            (vals.len() >= 3).then(|| (vals[0], vals[1], vals[2]))
        });
    Some(PingSummary {
        transmitted,
        received,
        duplicates,
        rtt_ms,
    })
}

/// What an `iperf3 --json` client run measured, from its `end` section.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IperfSummary {
    /// Bytes the sender sent.
    pub sent_bytes: u64,
    /// Bytes the receiver received.
    pub received_bytes: u64,
    /// The receiver's rate in bits per second.
    pub received_bps: f64,
    /// TCP retransmissions of the sender (0 when the report has none).
    pub retransmits: u64,
    /// Parallel streams.
    pub streams: usize,
}

impl IperfSummary {
    /// The receiver's rate in Mbit/s.
    pub fn mbit_s(&self) -> f64 {
        self.received_bps / 1e6
    }
}

/// Parses an `iperf3 --json` report; `Err` with iperf3's own error or the reason the
/// text is not a report.
pub fn parse_iperf3(json: &str) -> Result<IperfSummary, String> {
    // Anything before the report (a stray warning) is skipped.
    let start = json.find('{').ok_or("no JSON object in the output")?;
    let v: serde_json::Value =
        serde_json::from_str(&json[start..]).map_err(|e| format!("bad iperf3 JSON: {e}"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3 error: {err}"));
    }
    let end = v.get("end").ok_or("iperf3 report has no `end` section")?;
    let num = |section: &str, key: &str| end.get(section).and_then(|s| s.get(key));
    Ok(IperfSummary {
        sent_bytes: num("sum_sent", "bytes")
            .and_then(|b| b.as_u64())
            .unwrap_or(0),
        received_bytes: num("sum_received", "bytes")
            .and_then(|b| b.as_u64())
            .unwrap_or(0),
        received_bps: num("sum_received", "bits_per_second")
            .and_then(|b| b.as_f64())
            .unwrap_or(0.0),
        retransmits: num("sum_sent", "retransmits")
            .and_then(|b| b.as_u64())
            .unwrap_or(0),
        streams: end
            .get("streams")
            .and_then(|s| s.as_array())
            .map_or(0, |a| a.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_busybox_and_iputils_ping() {
        let bb = "--- 192.0.2.1 ping statistics ---\n\
                  5 packets transmitted, 4 packets received, 20% packet loss\n\
                  round-trip min/avg/max = 1.296/4.031/13.530 ms\n";
        let p = parse_ping(bb).unwrap();
        assert_eq!((p.transmitted, p.received), (5, 4));
        assert_eq!(p.loss_percent(), 20.0);
        assert_eq!(p.rtt_ms, Some((1.296, 4.031, 13.530)));
        let ip = "10 packets transmitted, 10 received, 0% packet loss, time 1803ms\n\
                  rtt min/avg/max/mdev = 0.030/0.041/0.051/0.008 ms\n";
        let p = parse_ping(ip).unwrap();
        assert_eq!((p.transmitted, p.received, p.loss_percent()), (10, 10, 0.0));
        assert_eq!(p.rtt_ms, Some((0.030, 0.041, 0.051)));
        let dup = "500 packets transmitted, 498 received, +3 duplicates, 0.4% packet loss\n";
        assert_eq!(parse_ping(dup).unwrap().duplicates, 3);
        let bb_dup = "9 packets transmitted, 9 packets received, 2 duplicates, 0% packet loss\n";
        assert_eq!(parse_ping(bb_dup).unwrap().duplicates, 2);
        let none = "3 packets transmitted, 0 packets received, 100% packet loss\n";
        assert_eq!(parse_ping(none).unwrap().rtt_ms, None);
        assert!(parse_ping("ping: bad address").is_none());
    }

    #[test]
    fn parses_iperf3_json() {
        let j = r#"warning: x
        {"start":{},"intervals":[],"end":{"streams":[{},{}],
          "sum_sent":{"bytes":1000,"bits_per_second":8000.0,"retransmits":3},
          "sum_received":{"bytes":900,"bits_per_second":7200.0}}}"#;
        let s = parse_iperf3(j).unwrap();
        assert_eq!(
            (s.sent_bytes, s.received_bytes, s.retransmits),
            (1000, 900, 3)
        );
        assert_eq!(s.streams, 2);
        assert!((s.mbit_s() - 0.0072).abs() < 1e-9);
        let e = parse_iperf3(r#"{"start":{},"error":"unable to connect"}"#).unwrap_err();
        assert!(e.contains("unable to connect"), "{e}");
    }
}
