//! The VDUSE frontend: the kernel's requests on the device fd turned into calls on the
//! [`Device`] core, the second driver of the core next to the vhost-user session.
//!
//! * `SET_STATUS`: at FEATURES_OK the driver's features are checked and applied; at
//!   DRIVER_OK the reply goes out first (the kernel waits for it, with a timeout), then
//!   the IOTLB is read into a memory table, each virtqueue's IOVAs and start index come
//!   from `VDUSE_VQ_GET_INFO`, kick eventfds are handed to the kernel, interrupts go
//!   through the relay, and the core starts the pair; at 0 everything stops.
//! * `GET_VQ_STATE`: the ring stops and its position is the answer.
//! * `UPDATE_IOTLB`: the memory table is read again (the core quiesces around it).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};
use vmm_sys_util::eventfd::EventFd;

use super::control::VduseDevice;
use super::iotlb::read_table;
use super::irq::IrqRelay;
use super::sys::{self, DevRequest, DevResponse};
use crate::datapath::RingAddrs;
use crate::device::Device;
use crate::vring::{AddrSpace, RingLocation};

/// virtio status bits.
const FEATURES_OK: u8 = 8;
const DRIVER_OK: u8 = 4;

/// How long to wait for the kernel to mark a virtqueue ready after DRIVER_OK (DPDK
/// found it can lag, and polls the same way).
const READY_POLLS: u32 = 100;
const READY_INTERVAL: Duration = Duration::from_millis(1);

/// The state of one VDUSE device's driver, as seen through its requests.
pub struct VduseFrontend {
    dev: VduseDevice,
    status: u8,
    relay: Option<IrqRelay>,
}

impl VduseFrontend {
    /// Serves `dev` for `device`.
    pub fn new(dev: VduseDevice) -> Self {
        VduseFrontend {
            dev,
            status: 0,
            relay: None,
        }
    }

    /// The VDUSE device.
    pub fn vduse(&self) -> &VduseDevice {
        &self.dev
    }

    /// Handles every pending request. Returns an error only when the device fd broke.
    pub fn serve_pending(&mut self, device: &mut Device) -> io::Result<()> {
        while let Some(req) = self.dev.read_request()? {
            self.handle(device, &req)?;
        }
        Ok(())
    }

    fn handle(&mut self, device: &mut Device, req: &DevRequest) -> io::Result<()> {
        let ok = DevResponse::new(req.request_id, sys::VDUSE_REQ_RESULT_OK);
        let failed = DevResponse::new(req.request_id, sys::VDUSE_REQ_RESULT_FAILED);
        match req.kind {
            sys::VDUSE_SET_STATUS => {
                let status = req.status();
                let accepted = self.set_status(device, status);
                self.dev
                    .write_response(if accepted { &ok } else { &failed })?;
                if accepted && status & DRIVER_OK != 0 && self.status & DRIVER_OK == 0 {
                    self.driver_ok(device);
                }
                if accepted {
                    self.status = status;
                }
            }
            sys::VDUSE_GET_VQ_STATE => {
                let vq = req.vq_index();
                if vq >= u32::from(device.ring_count()) {
                    warn!(
                        device = device.name(),
                        vq, "GET_VQ_STATE for a virtqueue that does not exist"
                    );
                    return self.dev.write_response(&failed);
                }
                let base = device.stop_ring(vq as usize);
                debug!(
                    device = device.name(),
                    vq, base, "virtqueue state read (ring stopped)"
                );
                self.dev.write_response(&ok.with_split_state(vq, base))?;
            }
            sys::VDUSE_UPDATE_IOTLB => {
                let (start, last) = req.iova_range();
                debug!(
                    device = device.name(),
                    start = format_args!("{start:#x}"),
                    last = format_args!("{last:#x}"),
                    "IOTLB update"
                );
                self.dev.write_response(&ok)?;
                if self.status & DRIVER_OK != 0 {
                    self.load_memory(device);
                    device.reconcile();
                } else {
                    device.set_memory(device.no_memory());
                }
            }
            other => {
                warn!(
                    device = device.name(),
                    kind = other,
                    "unknown VDUSE request"
                );
                self.dev.write_response(&failed)?;
            }
        }
        Ok(())
    }

    /// Applies a status change before it is answered; false refuses it.
    fn set_status(&mut self, device: &mut Device, status: u8) -> bool {
        info!(
            device = device.name(),
            status = format_args!("{status:#x}"),
            "VDUSE status"
        );
        if status == 0 {
            self.reset(device);
            return true;
        }
        if status & FEATURES_OK != 0 && self.status & FEATURES_OK == 0 {
            let features = match self.dev.driver_features() {
                Ok(f) => f,
                Err(e) => {
                    warn!(device = device.name(), error = %e, "cannot read the driver's features");
                    return false;
                }
            };
            if let Err(e) = device.set_features(features) {
                warn!(device = device.name(), error = %e, "driver features refused");
                device.record_error(e.to_string());
                return false;
            }
        }
        device.set_status_byte(status);
        true
    }

    /// DRIVER_OK: memory, rings, kicks and interrupts, then the pair starts.
    fn driver_ok(&mut self, device: &mut Device) {
        self.load_memory(device);
        let mut calls = Vec::new();
        for vq in 0..u32::from(device.ring_count()) {
            match self.ring_up(device, vq) {
                Ok(call) => calls.push(call),
                Err(e) => {
                    warn!(device = device.name(), vq, error = %e, "virtqueue not started");
                    device.record_error(format!("virtqueue {vq}: {e}"));
                    calls.push(Arc::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")));
                }
            }
        }
        match self
            .dev
            .irq_handle()
            .and_then(|irq| IrqRelay::start(device.name(), irq, calls))
        {
            Ok(relay) => self.relay = Some(relay),
            Err(e) => warn!(device = device.name(), error = %e, "interrupt relay not started"),
        }
        device.reconcile();
    }

    fn load_memory(&self, device: &mut Device) {
        match read_table(&self.dev, device.config().max_guest_memory) {
            Ok(mem) => device.set_memory(mem),
            Err(e) => {
                let text = crate::server::error_chain(&e);
                warn!(device = device.name(), error = %text, "IOTLB not readable; rings cannot run");
                device.record_error(text);
                device.set_memory(device.no_memory());
            }
        }
    }

    /// Programs virtqueue `vq` into the core and returns its call eventfd.
    fn ring_up(&self, device: &mut Device, vq: u32) -> io::Result<Arc<EventFd>> {
        let mut info = self.dev.vq_info(vq)?;
        for _ in 0..READY_POLLS {
            if info.ready != 0 {
                break;
            }
            std::thread::sleep(READY_INTERVAL);
            info = self.dev.vq_info(vq)?;
        }
        if info.ready == 0 {
            return Err(io::Error::other("the driver did not make it ready"));
        }
        let size = u16::try_from(info.num)
            .ok()
            .filter(|n| n.is_power_of_two())
            .ok_or_else(|| io::Error::other(format!("size {} is not a power of two", info.num)))?;
        let ring = vq as usize;
        device.set_ring_size(ring, size);
        device.set_ring_location(
            ring,
            RingLocation {
                addrs: RingAddrs {
                    desc: info.desc_addr,
                    avail: info.driver_addr,
                    used: info.device_addr,
                },
                space: AddrSpace::Guest,
                log_used: None,
            },
        );
        device.set_ring_base(ring, info.state[0]);
        let kick = EventFd::new(libc::EFD_NONBLOCK)?;
        self.dev
            .set_kick(vq, Some(std::os::fd::AsRawFd::as_raw_fd(&kick)))?;
        device.set_kick(ring, kick);
        let call = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        device.set_call(ring, Some(call.try_clone()?));
        device.enable_ring(ring, true);
        info!(
            device = device.name(),
            vq,
            size,
            desc = format_args!("{:#x}", info.desc_addr),
            avail = format_args!("{:#x}", info.driver_addr),
            used = format_args!("{:#x}", info.device_addr),
            base = info.state[0],
            "virtqueue ready"
        );
        Ok(call)
    }

    /// Device reset (status 0) or the end of service: pairs stop, kicks are taken
    /// back, interrupts stop, memory is released.
    pub fn reset(&mut self, device: &mut Device) {
        self.relay = None;
        device.reset();
        device.set_memory(device.no_memory());
        for vq in 0..u32::from(device.ring_count()) {
            if let Err(e) = self.dev.set_kick(vq, None) {
                debug!(device = device.name(), vq, error = %e, "kick eventfd not deassigned");
            }
        }
        self.status = 0;
    }
}
