//! Hardware in the loop through real VFIO, for the nested lab: a QEMU guest with
//! `intel-iommu` and `virtio-net-pci,disable-legacy=on,iommu_platform=on,ats=on`
//! (behind a `pcie-root-port`) bound to vfio-pci, the host's tap in a network
//! namespace on the other side (see ../shared/lab/04-vfio-nested.sh).
//!
//! Skipped unless `HWDRV_VFIO_BDF` names the function. In the guest:
//!
//! ```text
//! HWDRV_VFIO_BDF=0000:01:00.0 RUST_LOG=info \
//!   chroot /host <target>/debug/deps/vfio_lab-<hash> --nocapture
//! ```
//!
//! It classifies the function, opens it in a fresh container, creates the offload
//! datapath (probe, bus master, reset), and runs one queue pair over memfd "guest"
//! memory: DMA map (IOVA = GPA), MSI-X routing, queue programming, DRIVER_OK, kick
//! relay. It then sends `HWDRV_VFIO_TX` (default 8) frames of ethertype 0x88b5 whose
//! payload starts with `VDPAD-OFFLOAD-TX` (capture them on the host tap) and waits up
//! to `HWDRV_VFIO_RX_SECS` (default 20) seconds for a frame of ethertype 0x88b6 (what
//! the lab injects: `LAB-HOST-TO-GUEST-RX`), delivered by DMA and announced by the
//! MSI-X vector routed to the RX call eventfd. Finally it resets (status 0, FLR, MSI-X
//! cleared, DMA unmapped). The log lines of every step go to stderr.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hwdrv::classify;
use hwdrv::vfio::{VfioFunction, VfioVm};
use hwdrv::OffloadDatapath;
use vdpa::Datapath;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn lab_frame(seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0x0d, 0x0a]);
    f[12] = 0x88;
    f[13] = 0xb5;
    let msg = format!("VDPAD-OFFLOAD-TX seq={seq} via hwdrv OffloadDatapath");
    let n = msg.len().min(46);
    f[14..14 + n].copy_from_slice(&msg.as_bytes()[..n]);
    f
}

#[test]
fn offload_through_real_vfio() {
    let Ok(bdf) = std::env::var("HWDRV_VFIO_BDF") else {
        eprintln!("skipped: set HWDRV_VFIO_BDF to a virtio-net function bound to vfio-pci");
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let t0 = Instant::now();
    let c = classify::classify(&bdf).expect("classify");
    eprintln!(
        "classify {bdf}: {} -> {} ({})",
        c.name,
        c.decision.as_str(),
        c.reason
    );
    assert_eq!(c.decision, classify::Decision::Offload);

    let vm = VfioVm::new("lab-vm").expect("VFIO container");
    let f = VfioFunction::open(&vm, &bdf).expect("open through VFIO");
    eprintln!(
        "opened in {:?}; function reset available: {}",
        t0.elapsed(),
        f.can_reset()
    );
    let mut dp = OffloadDatapath::new("lab", Arc::new(f), 1).expect("offload datapath");
    eprintln!("capabilities: {:?}", dp.capabilities());

    let mut g = Guest::new(4 << 20);
    let mut p = PairRig::new(&mut g, 0, 64, false, 2048);
    p.fill_rx(&g);
    dp.start(p.config(&g, features(0)))
        .expect("start queue pair 0");
    eprintln!("started in {:?}", t0.elapsed());

    let n = env_num("HWDRV_VFIO_TX", 8) as u32;
    for seq in 0..n {
        p.send(&g, &lab_frame(seq));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut done = 0;
    while done < n as usize && Instant::now() < deadline {
        done += p.reap_tx(&g);
        wait_fd(&p.tx_call, Duration::from_millis(20));
    }
    eprintln!("TX: {done}/{n} frames completed by the NIC");
    assert_eq!(done, n as usize, "the NIC did not complete every TX frame");

    // Take whatever already arrived, clear the call eventfd (the start-up nudge and
    // earlier interrupts), then wait for the next injected frame to interrupt us.
    while p.rx.device_used(&g) != p.rx.last_used {
        let _ = p.recv(&g);
    }
    let _ = p.rx_call.read();
    let rx_deadline = Instant::now() + Duration::from_secs(env_num("HWDRV_VFIO_RX_SECS", 20));
    let mut irqs = 0;
    let mut got = None;
    while got.is_none() && Instant::now() < rx_deadline {
        if !wait_fd(&p.rx_call, Duration::from_millis(500)) {
            continue;
        }
        irqs += 1;
        while p.rx.device_used(&g) != p.rx.last_used {
            if let Some(f) = p.recv(&g) {
                if f.len() >= 14 && f[12] == 0x88 && f[13] == 0xb6 {
                    got = Some(f);
                }
            }
        }
    }
    let f = got.expect("no 0x88b6 frame announced by an interrupt within the time limit");
    let text: String = f[14..]
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    eprintln!("RX: {} bytes from {:02x?}: {text:?}", f.len(), &f[6..12]);
    eprintln!("RX interrupts (MSI-X vector 1 -> RX call eventfd) before it: {irqs}");

    // Interrupt re-routing while running: the next injected frame must interrupt the
    // new call eventfd, not the old one.
    let old = p.rx_call.clone();
    let new = efd();
    assert!(dp.set_call(0, Some(new.clone())));
    assert!(
        wait_fd(&new, Duration::from_secs(1)),
        "set_call signals the new eventfd once"
    );
    while p.rx.device_used(&g) != p.rx.last_used {
        let _ = p.recv(&g);
    }
    let _ = old.read();
    p.rx_call = new.clone();
    let t = Instant::now();
    let mut rerouted = false;
    while !rerouted && t.elapsed() < Duration::from_secs(10) {
        rerouted = wait_fd(&new, Duration::from_millis(500));
    }
    assert!(rerouted, "no interrupt on the new call eventfd");
    assert!(old.read().is_err(), "the old call eventfd stayed silent");
    eprintln!("set_call: interrupts moved to the new eventfd");
    while p.rx.device_used(&g) != p.rx.last_used {
        let _ = p.recv(&g);
    }

    // GET_VRING_BASE: stop reports the used indices; this NIC has no ring-state
    // registers, so resuming at a nonzero index must be refused (software fallback).
    let at = dp.stop(0);
    let (rx_base, tx_base) = (at[0].rx, at[0].tx);
    eprintln!(
        "stopped: rx base {rx_base} (used idx {}), tx base {tx_base}",
        p.rx.device_used(&g)
    );
    assert_eq!(tx_base, n as u16);
    assert_eq!(rx_base, p.rx.device_used(&g));
    let mut cfg = p.config(&g, features(0));
    cfg.rx.base = rx_base;
    cfg.tx.base = tx_base;
    let e = dp
        .start(cfg)
        .expect_err("resume at a nonzero index without ring state")
        .error;
    eprintln!("restart at nonzero base refused as expected: {e}");

    for s in p.stats() {
        eprintln!(
            "ring {} ({}): kicks relayed {}",
            s.ring, s.direction, s.kicks
        );
    }
    dp.reset();
    eprintln!("done in {:?}", t0.elapsed());
}
