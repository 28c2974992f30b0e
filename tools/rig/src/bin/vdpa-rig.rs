//! `vdpa-rig`: command-line front of the vdpa_rig library (a vhost-user frontend that plays
//! the VM). Exit codes: 0 success, 1 verify failed (or the device misbehaved during a
//! run), 2 setup or usage error.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vdpa_rig::options::DEFAULT_RX_BUF_SIZE;
use vdpa_rig::{
    run_bench, run_latency, run_listen, run_verify, BenchOptions, LatencyOptions, ListenOptions,
    Rig, RigError, RigOptions, VerifyOptions,
};

/// A vhost-user frontend that plays the VM: verify a loopback device or benchmark it.
#[derive(Debug, Parser)]
#[command(name = "vdpa-rig", version)]
struct Cli {
    /// vhost-user socket of the backend.
    #[arg(
        long,
        required_unless_present_any = ["vhost_vdpa", "vhost_net_tap"],
        conflicts_with_all = ["vhost_vdpa", "vhost_net_tap"]
    )]
    socket: Option<PathBuf>,
    /// A vhost-vdpa device (`/dev/vhost-vdpa-N`, e.g. vdpad's VDUSE device bound to
    /// vhost_vdpa) instead of a vhost-user socket.
    #[arg(long, value_name = "DEVICE", conflicts_with = "vhost_net_tap")]
    vhost_vdpa: Option<PathBuf>,
    /// The kernel's vhost-net (`/dev/vhost-net`) with this tap as its backend (opened,
    /// or created, multi-queue with the virtio-net header) instead of a vhost-user
    /// socket; one queue pair.
    #[arg(long, value_name = "TAP")]
    vhost_net_tap: Option<String>,
    /// Queue pairs (RX of pair i is ring 2i, TX is 2i+1).
    #[arg(long, default_value_t = 1)]
    queue_pairs: usize,
    /// Descriptors per ring (power of two).
    #[arg(long, default_value_t = 256)]
    queue_size: u16,
    /// Do not ack VIRTIO_RING_F_EVENT_IDX.
    #[arg(long)]
    no_event_idx: bool,
    /// Do not ack VIRTIO_NET_F_MRG_RXBUF.
    #[arg(long)]
    no_mrg_rxbuf: bool,
    /// Bytes per RX buffer, header included (smaller than a frame forces merging with
    /// MRG_RXBUF, or chained buffers without it).
    #[arg(long, default_value_t = DEFAULT_RX_BUF_SIZE)]
    rx_buf_size: u32,
    /// Post TX frames as one descriptor (header + frame) instead of two.
    #[arg(long)]
    tx_one_desc: bool,
    /// Initial ring index (SET_VRING_BASE), e.g. 65500 to wrap early.
    #[arg(long, default_value_t = 0)]
    initial_index: u16,
    /// Guest memory regions (1 or 2).
    #[arg(long, default_value_t = 1)]
    mem_regions: usize,
    /// Use ADD_MEM_REG when the backend offers CONFIGURE_MEM_SLOTS.
    #[arg(long)]
    mem_slots: bool,
    /// Share a dirty log and ack VHOST_F_LOG_ALL, as QEMU does while it migrates the
    /// VM: the backend then logs every page it writes (measures what that costs).
    #[arg(long)]
    dirty_log: bool,
    /// Ask for host notifiers: map the doorbell pages the backend sends
    /// (VRING_HOST_NOTIFIER_MSG) and kick by storing into them, as a guest does when
    /// QEMU maps a vDPA NIC's doorbell into it.
    #[arg(long, conflicts_with = "vhost_vdpa")]
    host_notifiers: bool,
    /// Own the socket like QEMU's `server=on`: create it, listen, and wait for the
    /// backend to connect (a vdpad device with `socket_role = "client"`).
    #[arg(long, conflicts_with = "vhost_vdpa")]
    listen: bool,
    /// Seconds to keep retrying while the socket is missing or refuses (with
    /// `--listen`: to wait for the backend).
    #[arg(long, default_value_t = 5.0)]
    connect_timeout: f64,
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Send N frames through a loopback device and check every byte of what comes back.
    Verify {
        /// Frames to send (spread over the queue pairs).
        #[arg(long)]
        packets: u64,
        /// Frame size in bytes (L2, 60..=65535).
        #[arg(long)]
        size: usize,
        /// Vary frame sizes in SIZE..=SIZE_MAX.
        #[arg(long)]
        size_max: Option<usize>,
        /// Overall timeout in seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        /// Busy-poll instead of sleeping on call eventfds.
        #[arg(long)]
        poll: bool,
        /// Play a live migration while frames flow: start dirty logging (SET_LOG_BASE,
        /// SET_FEATURES with LOG_ALL, SET_VRING_ADDR with the log flag) after FROM
        /// frames were sent and stop it after TO, written FROM:TO.
        #[arg(long, value_name = "FROM:TO")]
        migrate: Option<String>,
        /// Send every frame on queue pair N (the others keep RX buffers posted):
        /// frames come back on the sending pair even through a far end that picks the
        /// receive queue by flow.
        #[arg(long, value_name = "N")]
        only_pair: Option<usize>,
    },
    /// Saturate the device and report rates, packets per kick and per interrupt.
    Bench {
        /// Measured duration.
        #[arg(long)]
        seconds: f64,
        /// Frame size in bytes (L2).
        #[arg(long)]
        size: usize,
        /// Busy-poll instead of sleeping on call eventfds.
        #[arg(long)]
        poll: bool,
    },
    /// Ping-pong with one frame in flight on pair 0; prints round-trip percentiles in µs.
    Latency {
        /// Round trips measured.
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Round trips before the measurement (not measured).
        #[arg(long, default_value_t = 1000)]
        warmup: u64,
        /// Frame size in bytes (L2).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Stop measuring after this many seconds even if COUNT was not reached.
        #[arg(long)]
        seconds: Option<f64>,
        /// Seconds a frame may take to come back before the run fails.
        #[arg(long, default_value_t = 1.0)]
        frame_timeout: f64,
        /// Busy-poll the RX ring instead of sleeping on its call eventfd.
        #[arg(long)]
        poll: bool,
    },
    /// Send nothing; print every frame that arrives (hex), until COUNT frames passed the
    /// filter. Exit 1 on timeout.
    Listen {
        /// Frames to receive.
        #[arg(long)]
        count: u64,
        /// Only frames of this ethertype count (e.g. 0x88b6); others are ignored.
        #[arg(long, value_parser = parse_u16)]
        ethertype: Option<u16>,
        /// Overall timeout in seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        /// Busy-poll instead of sleeping on call eventfds.
        #[arg(long)]
        poll: bool,
    },
    /// vhost-vdpa only: watch the device's link (config interrupt, `status`) and print
    /// each change, until CHANGES were seen. Exit 1 on timeout.
    Link {
        /// Link changes to see.
        #[arg(long, default_value_t = 2)]
        changes: u32,
        /// Overall timeout in seconds.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// Publish chains whose buffers lie outside the device's memory (guest memory, or
    /// for vhost-vdpa every IOTLB entry) on the TX ring of pair 0, each followed by a good
    /// frame that must come back: the device counts the bad chains and keeps serving.
    Hostile {
        /// How many bad chains.
        #[arg(long, default_value_t = 10)]
        rounds: u32,
    },
}

/// A 16-bit number, decimal or 0x-prefixed hexadecimal.
fn parse_u16(s: &str) -> Result<u16, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?}: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}

fn secs(v: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|_| format!("invalid {what} {v}"))
}

fn usage(msg: String) -> ExitCode {
    eprintln!("vdpa-rig: error: {msg}");
    ExitCode::from(2)
}

fn run_error(e: RigError) -> ExitCode {
    let code = if matches!(e, RigError::Options(_)) {
        2
    } else {
        1
    };
    eprintln!("vdpa-rig: error: {}", chain(&e));
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let max_frame = match &cli.cmd {
        Cmd::Verify { size, size_max, .. } => (*size).max(size_max.unwrap_or(0)),
        Cmd::Bench { size, .. } | Cmd::Latency { size, .. } => *size,
        Cmd::Listen { .. } | Cmd::Hostile { .. } | Cmd::Link { .. } => 1514,
    };
    let connect_timeout = match secs(cli.connect_timeout, "connect timeout") {
        Ok(d) => d,
        Err(m) => return usage(m),
    };
    let mut opts = RigOptions::new(cli.socket.clone().unwrap_or_default());
    opts.queue_pairs = cli.queue_pairs;
    opts.queue_size = cli.queue_size;
    opts.event_idx = !cli.no_event_idx;
    opts.mrg_rxbuf = !cli.no_mrg_rxbuf;
    opts.rx_buf_size = cli.rx_buf_size;
    opts.tx_two_desc = !cli.tx_one_desc;
    opts.initial_index = cli.initial_index;
    opts.mem_regions = cli.mem_regions;
    opts.mem_slots = cli.mem_slots;
    opts.dirty_log = cli.dirty_log;
    opts.host_notifiers = cli.host_notifiers;
    opts.listen = cli.listen;
    opts.connect_timeout = connect_timeout;
    opts.max_frame = u32::try_from(max_frame).unwrap_or(u32::MAX);

    let connected = match (&cli.vhost_vdpa, &cli.vhost_net_tap) {
        (Some(dev), _) => vdpa_rig::vhost_vdpa::connect(dev, opts),
        (None, Some(tap)) => vdpa_rig::vhost_net::connect(tap, opts),
        (None, None) => Rig::connect(opts),
    };
    let mut rig = match connected {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vdpa-rig: setup failed: {}", chain(&e));
            return ExitCode::from(2);
        }
    };
    match cli.cmd {
        Cmd::Verify {
            packets,
            size,
            size_max,
            timeout,
            poll,
            migrate,
            only_pair,
        } => {
            let mut o = VerifyOptions::new(packets, size);
            o.size_max = size_max.unwrap_or(size);
            o.poll = poll;
            o.only_pair = only_pair;
            o.migrate = match migrate.as_deref().map(parse_window).transpose() {
                Ok(w) => w,
                Err(m) => return usage(m),
            };
            o.timeout = match secs(timeout, "timeout") {
                Ok(d) => d,
                Err(m) => return usage(m),
            };
            let r = match run_verify(&mut rig, &o) {
                Ok(r) => r,
                Err(e) => return run_error(e),
            };
            if cli.json {
                let mut v = serde_json::to_value(&r).expect("report serialises");
                v["passed"] = r.passed().into();
                v["negotiated"] = serde_json::to_value(rig.negotiated()).expect("serialises");
                println!("{v}");
            } else {
                println!("{}", r.summary());
                if !r.passed() {
                    eprint!("{}", r.failure_details());
                }
            }
            ExitCode::from(if r.passed() { 0 } else { 1 })
        }
        Cmd::Bench {
            seconds,
            size,
            poll,
        } => {
            let mut o = BenchOptions::new(seconds, size);
            o.poll = poll;
            let r = match run_bench(&mut rig, &o) {
                Ok(r) => r,
                Err(e) => return run_error(e),
            };
            if cli.json {
                println!("{}", serde_json::to_string(&r).expect("report serialises"));
            } else {
                println!("{}", r.render());
            }
            if r.rx_frames == 0 {
                eprintln!("vdpa-rig: no frame came back");
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Cmd::Latency {
            count,
            warmup,
            size,
            seconds,
            frame_timeout,
            poll,
        } => {
            let mut o = LatencyOptions::new(count, size);
            o.warmup = warmup;
            o.poll = poll;
            o.frame_timeout = match secs(frame_timeout, "frame timeout") {
                Ok(d) => d,
                Err(m) => return usage(m),
            };
            if let Some(s) = seconds {
                o.max_duration = match secs(s, "seconds") {
                    Ok(d) => Some(d),
                    Err(m) => return usage(m),
                };
            }
            let r = match run_latency(&mut rig, &o) {
                Ok(r) => r,
                Err(e) => return run_error(e),
            };
            if cli.json {
                println!("{}", serde_json::to_string(&r).expect("report serialises"));
            } else {
                println!("{}", r.render());
            }
            if r.count == 0 {
                eprintln!("vdpa-rig: no round trip measured");
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Cmd::Listen {
            count,
            ethertype,
            timeout,
            poll,
        } => {
            let mut o = ListenOptions::new(count);
            o.ethertype = ethertype;
            o.poll = poll;
            o.timeout = match secs(timeout, "timeout") {
                Ok(d) => d,
                Err(m) => return usage(m),
            };
            if let Err(e) = rig.refill_all() {
                return run_error(e);
            }
            // Setup is done and buffers are posted: whoever injects may start now.
            println!("listen: ready on {} queue pair(s)", rig.pairs().len());
            let mut frames = Vec::new();
            let json = cli.json;
            let r = match run_listen(&mut rig, &o, |pair, data| {
                if json {
                    frames.push(
                        serde_json::json!({"pair": pair, "len": data.len(), "hex": hex(data)}),
                    );
                } else {
                    println!("frame pair {pair} len {} hex {}", data.len(), hex(data));
                }
            }) {
                Ok(r) => r,
                Err(e) => return run_error(e),
            };
            if json {
                let mut v = serde_json::to_value(&r).expect("report serialises");
                v["frames"] = frames.into();
                println!("{v}");
            } else {
                println!("{}", r.summary());
            }
            ExitCode::from(if r.complete(&o) { 0 } else { 1 })
        }
        Cmd::Link { changes, timeout } => {
            let timeout = match secs(timeout, "timeout") {
                Ok(d) => d,
                Err(m) => return usage(m),
            };
            let o = vdpa_rig::LinkWatchOptions { changes, timeout };
            match vdpa_rig::run_link_watch(&mut rig, &o, &mut std::io::stdout()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => run_error(e),
            }
        }
        Cmd::Hostile { rounds } => {
            let good = vdpa_rig::frame::build_frame(0, 1, 64);
            for round in 0..rounds {
                let step = rig
                    .inject(0, vdpa_rig::PairRing::Tx, vdpa_rig::Hostile::AddrOutOfRange)
                    .and_then(|_| rig.send_and_wait(0, &good, Duration::from_secs(10)));
                match step {
                    Ok(got) if got.data == good => {}
                    Ok(_) => {
                        eprintln!("vdpa-rig: hostile round {round}: a different frame came back");
                        return ExitCode::from(1);
                    }
                    Err(e) => return run_error(e),
                }
            }
            println!(
                "hostile: {rounds} chains with buffers outside memory published, \
                 {rounds} good frames back"
            );
            ExitCode::SUCCESS
        }
    }
}

/// `FROM:TO` frame counts of `--migrate`, FROM below TO.
fn parse_window(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("--migrate wants FROM:TO frame counts with FROM < TO, not {s:?}");
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let (a, b) = (
        a.trim().parse::<u64>().map_err(|_| bad())?,
        b.trim().parse::<u64>().map_err(|_| bad())?,
    );
    if a < b {
        Ok((a, b))
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_window;

    #[test]
    fn migrate_windows_are_two_increasing_frame_counts() {
        assert_eq!(parse_window("2000:7000"), Ok((2000, 7000)));
        assert_eq!(parse_window(" 0 : 1 "), Ok((0, 1)));
        for bad in ["7000:2000", "5:5", "2000", "a:b", ":7", "1:2:3", "-1:4"] {
            let e = parse_window(bad).unwrap_err();
            assert!(e.contains("FROM:TO") && e.contains(bad), "{bad}: {e}");
        }
    }
}
