//! `vdpa-rig link`: watches the device's link the way a virtio driver does, over
//! vhost-vdpa (the only transport whose device owns its config space; QEMU keeps a
//! vhost-user net device's config itself). The rig registers a config-change eventfd
//! (VHOST_VDPA_SET_CONFIG_CALL) and, on every signal, reads `status` from the device's
//! config space (VHOST_VDPA_GET_CONFIG) and prints a line when the link changed.

use std::io::Write;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::error::RigError;
use crate::kick_call::{raw, wait_readable};
use crate::rig::Rig;

/// What to watch for.
#[derive(Debug, Clone, Copy)]
pub struct LinkWatchOptions {
    /// Link changes to see before returning.
    pub changes: u32,
    /// How long to wait for them in all.
    pub timeout: Duration,
}

/// Prints `link: watching (up|down)`, then `link: up` or `link: down` for each change,
/// until `o.changes` were seen. Returns the states seen after the first; a timeout is
/// an error.
pub fn run_link_watch(
    rig: &mut Rig,
    o: &LinkWatchOptions,
    out: &mut dyn Write,
) -> Result<Vec<bool>, RigError> {
    let call = EventFd::new(libc::EFD_NONBLOCK).map_err(RigError::Eventfd)?;
    rig.watch_config(&call)?;
    let word = |up: bool| if up { "up" } else { "down" };
    let mut up = rig.link_up()?;
    let _ = writeln!(out, "link: watching ({})", word(up));
    let _ = out.flush();
    let deadline = Instant::now() + o.timeout;
    let mut seen = Vec::new();
    while seen.len() < o.changes as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RigError::Timeout(format!(
                "{} of {} link changes seen in {:?}",
                seen.len(),
                o.changes,
                o.timeout
            )));
        }
        if wait_readable(&[raw(&call)], left.min(Duration::from_millis(500)))
            .map_err(RigError::Eventfd)?
            == 0
        {
            continue;
        }
        let _ = call.read();
        let now = rig.link_up()?;
        if now != up {
            up = now;
            seen.push(now);
            let _ = writeln!(out, "link: {}", word(now));
            let _ = out.flush();
        }
    }
    Ok(seen)
}
