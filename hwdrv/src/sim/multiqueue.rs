//! Multiqueue as a spec virtio-net NIC does it: with VIRTIO_NET_F_MQ and
//! VIRTIO_NET_F_CTRL_VQ negotiated the device uses pair 0 only until the driver sends
//! VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET on the control queue (the last queue, index
//! 2 * `max_pairs`); received frames are spread over the pairs in use by flow.
//!
//! Without the control queue negotiated the simulator serves every enabled pair, as
//! a NIC with a vendor multiqueue register (ifcvf) does.

use std::sync::atomic::Ordering;

use super::device::{Shared, State};
use super::ring::{Seg, SimRingError};
use crate::spec::ctrl;
use vdpa::virtio::features::{VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ};

/// Longest command (header and data) the device reads; longer ones are refused.
const MAX_COMMAND: usize = 64;
/// Commands handled per doorbell before the lock is released.
const BURST: usize = 64;

/// Queue pairs the device serves now.
pub(crate) fn pairs_in_use(shared: &Shared, st: &State) -> u16 {
    let both = VIRTIO_NET_F_CTRL_VQ | VIRTIO_NET_F_MQ;
    if shared.cfg.control_queue && st.driver_features & both == both {
        st.active_pairs
    } else {
        shared.cfg.max_pairs
    }
}

/// The pairs a received frame may go to: those in use whose receive queue runs.
pub(crate) fn receiving_pairs(shared: &Shared, st: &State) -> Vec<u16> {
    (0..pairs_in_use(shared, st))
        .filter(|&p| {
            st.queues
                .get(usize::from(2 * p))
                .is_some_and(|q| q.ring.is_some())
        })
        .collect()
}

/// The pair a received frame goes to: the link's choice where it makes one (pair 0
/// if that pair does not receive), else one of `receiving` by a hash of the frame's
/// IPv4 addresses and TCP/UDP ports (other frames: the first).
pub(crate) fn steer(link_pair: Option<u16>, frame: &[u8], receiving: &[u16]) -> u16 {
    match link_pair {
        Some(p) if receiving.contains(&p) => p,
        Some(_) => 0,
        None if receiving.is_empty() => 0,
        None => receiving[(flow_hash(frame) % receiving.len() as u64) as usize],
    }
}

/// FNV-1a over an IPv4 frame's addresses and, for TCP and UDP, its ports, with a
/// final mix (FNV's low bits are the parity of its input's: Linux gives connect()
/// even ports, which would all land on one pair); 0 for anything else.
fn flow_hash(frame: &[u8]) -> u64 {
    const IPV4: [u8; 2] = [0x08, 0x00];
    if frame.len() < 34 || frame[12..14] != IPV4 {
        return 0;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let proto = frame[23];
    let mut key = frame[26..34].to_vec();
    let l4 = 14 + ihl;
    if matches!(proto, 6 | 17) && frame.len() >= l4 + 4 {
        key.extend_from_slice(&frame[l4..l4 + 4]);
    }
    let h = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Carries out one command; returns the ack.
fn execute(shared: &Shared, st: &mut State, cmd: &[u8]) -> u8 {
    match cmd {
        [ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET, lo, hi] => {
            let n = u16::from_le_bytes([*lo, *hi]);
            let mq = st.driver_features & VIRTIO_NET_F_MQ != 0;
            if !mq || n == 0 || n > shared.cfg.max_pairs {
                tracing::warn!(pairs = n, mq, "sim: VQ_PAIRS_SET refused");
                return ctrl::ERR;
            }
            st.active_pairs = n;
            ctrl::OK
        }
        _ => ctrl::ERR,
    }
}

/// Handles the commands waiting on control queue `q`: each chain's readable buffers
/// are the command, its first writable byte gets the ack.
pub(crate) fn process_control(shared: &Shared, st: &mut State, q: usize, segs: &mut Vec<Seg>) {
    let Some(mut ring) = st.queues[q].ring else {
        return;
    };
    let result: Result<(), SimRingError> = (|| {
        for _ in 0..BURST {
            if ring.pending(&shared.dma)? == 0 && !ring.arm_kick(&shared.dma)? {
                break;
            }
            let head = ring.pop(&shared.dma, segs)?;
            let mut cmd = [0u8; MAX_COMMAND];
            let mut len = 0usize;
            let mut readable = true;
            for s in segs.iter().filter(|s| !s.writable) {
                let n = s.len as usize;
                if len + n > MAX_COMMAND {
                    readable = false;
                    break;
                }
                shared.dma.read(s.addr, &mut cmd[len..len + n])?;
                len += n;
            }
            let ack = if readable {
                execute(shared, st, &cmd[..len])
            } else {
                ctrl::ERR
            };
            shared
                .counters
                .control_commands
                .fetch_add(1, Ordering::Relaxed);
            let written = match segs.iter().find(|s| s.writable && s.len >= 1) {
                Some(s) => {
                    shared.dma.write(s.addr, &[ack])?;
                    1
                }
                None => 0,
            };
            ring.add_used(&shared.dma, head, written)?;
        }
        ring.publish(&shared.dma)?;
        if ring.should_interrupt(&shared.dma)? {
            shared.fire(st.queues[q].msix);
        }
        Ok(())
    })();
    match result {
        Ok(()) => st.queues[q].ring = Some(ring),
        Err(e) => super::device::ring_failed(shared, st, q, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(src_port: u16) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 17;
        f[26..30].copy_from_slice(&[192, 0, 2, 1]);
        f[30..34].copy_from_slice(&[192, 0, 2, 2]);
        f[34..36].copy_from_slice(&src_port.to_be_bytes());
        f
    }

    #[test]
    fn flows_spread_over_the_pairs_in_use_and_stay_on_one() {
        let mut seen = [0u32; 2];
        // Even ports only, as Linux picks them for connect().
        for port in (1000..1400).step_by(2) {
            let p = steer(None, &udp(port), &[0, 1]);
            assert_eq!(p, steer(None, &udp(port), &[0, 1]), "one flow, one pair");
            seen[usize::from(p)] += 1;
        }
        assert!(seen[0] > 20 && seen[1] > 20, "{seen:?}");
        assert_eq!(steer(None, &udp(1), &[0]), 0);
        assert_eq!(
            steer(None, &[0u8; 20], &[0, 1, 2, 3]),
            0,
            "not IPv4: the first"
        );
    }

    #[test]
    fn only_pairs_that_receive_get_frames() {
        for port in 1000..1100 {
            assert_eq!(steer(None, &udp(port), &[2]), 2, "the only running pair");
        }
        assert_eq!(steer(Some(1), &udp(1), &[0, 1]), 1);
        assert_eq!(
            steer(Some(3), &udp(1), &[0, 1]),
            0,
            "a link choice not receiving"
        );
    }
}
