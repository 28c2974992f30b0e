//! When queue pairs run: a pair runs when both its rings are complete (and enabled,
//! where the frontend's protocol asks for that) and memory is present; any change to a
//! running pair's rings, to memory or to features stops it first — recording where
//! each ring resumes — and lets it start again afterwards.

use std::sync::atomic::{AtomicU16, Ordering};

use tracing::{debug, info, warn};

use super::Device;
use crate::datapath::{PairPosition, QueuePairConfig, RingConfig, RingEvents};
use crate::datapath::{RingAddrs, StartFailure};
use crate::features::Negotiated;
use crate::virtio::features::VHOST_F_LOG_ALL;
use crate::virtio::ring::USED_IDX_OFFSET;

impl Device {
    /// Starts every queue pair that is ready and not running. Frontends call this after
    /// each change they applied.
    pub fn reconcile(&mut self) {
        let Some(features) = self.features else {
            return;
        };
        for pair in 0..self.running.len() {
            if self.running[pair] {
                continue;
            }
            let qp = match self.pair_config(pair, features) {
                Ok(qp) => qp,
                Err(why) => {
                    if self.not_ready[pair].as_deref() != Some(why.as_str()) {
                        debug!(device = self.name(), pair, %why, "queue pair not ready");
                        self.not_ready[pair] = Some(why);
                    }
                    continue;
                }
            };
            let (rx_base, tx_base) = (qp.rx.base, qp.tx.base);
            match self.datapath.start(qp) {
                Ok(()) => {
                    self.running[pair] = true;
                    self.not_ready[pair] = None;
                    let how = self.datapath.describe();
                    info!(device = self.name(), pair, datapath = %how, rx_base, tx_base,
                          "queue pair started");
                    self.observed.set_datapath(how);
                    self.publish_status();
                }
                Err(StartFailure { error, lost }) => {
                    self.mark_lost(&lost, "went down while another pair started");
                    let error = crate::server::error_chain(&error);
                    let why = format!("datapath refused to start: {error}");
                    if self.not_ready[pair].as_deref() != Some(why.as_str()) {
                        warn!(device = self.name(), pair, %error, "queue pair cannot start");
                        self.record_error(why.clone());
                        self.not_ready[pair] = Some(why);
                    }
                }
            }
            self.observe_fallback();
        }
    }

    /// The configuration of `pair` if both its rings can run, or what is missing.
    fn pair_config(&self, pair: usize, features: u64) -> Result<QueuePairConfig, String> {
        let log = if features & VHOST_F_LOG_ALL != 0 {
            let log = self
                .log
                .clone()
                .ok_or("VHOST_F_LOG_ALL is acked but no dirty log was shared (SET_LOG_BASE)")?;
            (!crate::dirty_log::marking_disabled_for_a_test()).then_some(log)
        } else {
            None
        };
        let ring = |index: usize| -> Result<RingConfig, String> {
            let r = &self.rings[index];
            let (size, addrs, events): (u16, RingAddrs, RingEvents) = r
                .ready(&self.mem, self.rings_need_enable)
                .map_err(|e| format!("{} ring {index}: {e}", direction(index)))?;
            Ok(RingConfig {
                index: index as u16,
                size,
                addrs,
                base: self.resume_base(index, addrs.used, r.base),
                events,
                counters: self.observed.counters_for_run(index),
                log_used: log.as_ref().and(r.addr.as_ref()).and_then(|l| l.log_used),
            })
        };
        let (rx, tx) = (ring(2 * pair)?, ring(2 * pair + 1)?);
        Ok(QueuePairConfig {
            pair: pair as u16,
            rx,
            tx,
            features: Negotiated { bits: features },
            mem: self.mem.clone(),
            ended: self.ended.clone(),
            log,
        })
    }

    /// Where ring `index` resumes: at the frontend's `base`, except when the frontend
    /// says 0 and the used index in guest memory is not 0. A frontend that kept its
    /// rings across a reconnect without knowing the device's position sends 0 — DPDK
    /// virtio-user as the socket's server, after the backend (vdpad in client mode)
    /// restarted — although every entry up to the used index was consumed: resuming
    /// at 0 would hand the device entries the driver has long reused. The used index
    /// is where this device (in order) left off, which is what DPDK's own vhost
    /// library does. QEMU sends the used index itself, so nothing changes for it.
    fn resume_base(&self, index: usize, used: u64, base: u16) -> u16 {
        if base != 0 {
            return base;
        }
        let at = used.checked_add(USED_IDX_OFFSET as u64);
        let Some(ptr) = at.and_then(|at| self.mem.translate(at, 2)) else {
            return base;
        };
        if !(ptr as usize).is_multiple_of(2) {
            return base; // a misaligned ring; the datapath refuses it
        }
        // SAFETY: the two bytes of `used->idx` are inside guest memory (translated
        // above) and 2-byte aligned (checked); AtomicU16 has the layout of u16. A
        // fault on guest memory is contained (crate::fault).
        let used_idx = unsafe { &*(ptr as *const AtomicU16) }.load(Ordering::Acquire);
        if used_idx != 0 {
            debug!(
                device = self.name(),
                ring = index,
                used_idx,
                "the frontend resumes the ring at 0 but its used index is not 0; resuming \
                   at the used index (a frontend that kept its rings across a reconnect)"
            );
        }
        used_idx
    }

    /// Stops the pair that owns `ring` before the ring's settings change.
    pub(super) fn stop_pair_of(&mut self, ring: usize) {
        self.stop_pair(ring / 2);
    }

    /// Stops queue pair `pair` if it runs and records where its rings resume, and
    /// those of any pair that went down with it.
    pub(super) fn stop_pair(&mut self, pair: usize) {
        if !self.running[pair] {
            return;
        }
        let positions = self.datapath.stop(pair as u16);
        self.running[pair] = false;
        let (mine, others): (Vec<_>, Vec<_>) = positions
            .into_iter()
            .partition(|p| usize::from(p.pair) == pair);
        for p in mine {
            self.record_position(p);
        }
        self.mark_lost(&others, "went down with another pair");
        info!(
            device = self.name(),
            pair,
            rx_base = self.rings[2 * pair].base,
            tx_base = self.rings[2 * pair + 1].base,
            "queue pair stopped"
        );
        self.publish_status();
    }

    /// Stops every running queue pair.
    pub(super) fn stop_all(&mut self) {
        for pair in 0..self.running.len() {
            self.stop_pair(pair);
        }
    }

    /// Marks pairs the datapath lost on its own as stopped, recording where they
    /// resume, so that the next reconcile starts them again.
    pub(super) fn mark_lost(&mut self, lost: &[PairPosition], how: &str) {
        for &p in lost {
            let pair = usize::from(p.pair);
            if pair < self.running.len() && self.running[pair] {
                warn!(
                    device = self.name(),
                    pair, "queue pair {how}; it will be restarted"
                );
                self.running[pair] = false;
                self.record_position(p);
            }
        }
        if !lost.is_empty() {
            self.publish_status();
        }
    }

    fn record_position(&mut self, p: PairPosition) {
        let pair = usize::from(p.pair);
        if pair < self.running.len() {
            self.rings[2 * pair].base = p.rx;
            self.rings[2 * pair + 1].base = p.tx;
        }
    }

    /// Publishes a datapath switch (a wrapper moved the device to its fallback).
    pub(super) fn observe_fallback(&self) {
        let reason = self.datapath.fallback_reason();
        let mut changed = false;
        self.observed.update(|s| {
            changed = s.fallback_reason != reason;
            s.fallback_reason = reason;
        });
        if changed {
            self.observed.set_datapath(self.datapath.describe());
        }
    }
}

fn direction(ring: usize) -> &'static str {
    if ring.is_multiple_of(2) {
        "rx"
    } else {
        "tx"
    }
}
