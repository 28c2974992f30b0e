//! The rig playing a QEMU that migrates: a dirty log shared with the backend and
//! `VHOST_F_LOG_ALL` acked, either from the start ([`RigOptions::dirty_log`]) or while
//! traffic runs ([`Rig::start_dirty_log`], [`Rig::stop_dirty_log`]), in the order QEMU 10
//! uses: SET_LOG_BASE (answered), SET_FEATURES with LOG_ALL, SET_VRING_ADDR with
//! `VHOST_VRING_F_LOG` and the used ring's GPA for each ring; to stop (a completed or
//! cancelled migration), SET_FEATURES without LOG_ALL and SET_VRING_ADDR without the
//! flag.
//!
//! [`RigOptions::dirty_log`]: crate::RigOptions::dirty_log

use std::os::fd::{AsRawFd, FromRawFd};

use vdpa::dirty_log::log_bytes_for;
use vdpa::virtio::features::VHOST_F_LOG_ALL;
use vhost::vhost_user::message::VhostUserVringAddrFlags;
use vhost::vhost_user::Frontend;
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VringConfigData};

use crate::driver_ring::RingLayout;
use crate::error::RigError;
use crate::memory::RigMemory;
use crate::rig::Rig;

/// Shares a dirty log covering all of `mem`, as QEMU does when a migration starts: a
/// memfd with one bit per 4 KiB page, sent with SET_LOG_BASE (the backend answers it).
/// The rig does not read it; the backend keeps its own mapping.
pub(crate) fn share_dirty_log(fe: &mut Frontend, mem: &RigMemory) -> Result<(), vhost::Error> {
    let end = mem
        .region_infos()
        .iter()
        .map(|r| r.guest_phys_addr + r.memory_size)
        .max()
        .unwrap_or(0);
    let size = log_bytes_for(end).next_multiple_of(8);
    // SAFETY: memfd_create takes a NUL-terminated name, which the literal is.
    let fd = unsafe { libc::memfd_create(c"vdpa-rig-log".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(vhost::Error::IOError(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(size).map_err(vhost::Error::IOError)?;
    let region = VhostUserDirtyLogRegion {
        mmap_size: size,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    };
    fe.set_log_base(0, Some(region))
}

/// SET_VRING_ADDR for the ring at `layout`, asking for its used ring to be logged (at
/// its GPA, as QEMU gives it) when `log` is set.
pub(crate) fn set_vring_addr(
    fe: &mut Frontend,
    mem: &RigMemory,
    index: usize,
    layout: &RingLayout,
    log: bool,
) -> Result<(), RigError> {
    let va = |gpa| mem.user_addr(gpa);
    let cfg = VringConfigData {
        queue_max_size: layout.size,
        queue_size: layout.size,
        flags: VhostUserVringAddrFlags::VHOST_VRING_F_LOG.bits() * u32::from(log),
        desc_table_addr: va(layout.desc)?,
        used_ring_addr: va(layout.used)?,
        avail_ring_addr: va(layout.avail)?,
        log_addr: log.then_some(layout.used),
    };
    fe.set_vring_addr(index, &cfg)
        .map_err(|source| RigError::Request {
            request: format!("SET_VRING_ADDR({index})"),
            source,
        })
}

impl Rig {
    /// Starts logging while the rings run, as QEMU does when a migration starts. Fails
    /// if the backend does not offer `VHOST_F_LOG_ALL`.
    pub fn start_dirty_log(&mut self) -> Result<(), RigError> {
        self.set_dirty_log(true)
    }

    /// Stops logging while the rings run, as QEMU does when a migration completes or
    /// is cancelled.
    pub fn stop_dirty_log(&mut self) -> Result<(), RigError> {
        self.set_dirty_log(false)
    }

    fn set_dirty_log(&mut self, on: bool) -> Result<(), RigError> {
        let req = |request: &str| {
            let request = request.to_owned();
            move |source| RigError::Request { request, source }
        };
        if on && self.negotiated().offered_features & VHOST_F_LOG_ALL == 0 {
            return Err(RigError::Unsupported(
                "dirty logging: VHOST_F_LOG_ALL not offered".to_owned(),
            ));
        }
        let mem = self.memory().clone();
        let layouts: Vec<(usize, RingLayout)> = self
            .pairs()
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                [
                    (2 * i, *p.rx.ring().layout()),
                    (2 * i + 1, *p.tx.ring().layout()),
                ]
            })
            .collect();
        let acked = self.negotiated().acked_features & !VHOST_F_LOG_ALL;
        let features = acked | if on { VHOST_F_LOG_ALL } else { 0 };
        let fe = self.frontend();
        if on {
            share_dirty_log(fe, &mem).map_err(req("SET_LOG_BASE"))?;
        }
        fe.set_features(features).map_err(req("SET_FEATURES"))?;
        for (index, layout) in &layouts {
            set_vring_addr(fe, &mem, *index, layout, on)?;
        }
        self.set_acked_features(features);
        Ok(())
    }
}
