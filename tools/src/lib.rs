//! The vdpad daemon's wiring, as a library so that tests can run a daemon in-process:
//! configuration in, devices wired to a datapath, sockets served, signals handled.
//!
//! - [`daemon`]: start and stop all configured devices.
//! - [`discover`]: the host's PCI network functions and what auto mode would do.
//! - [`wiring`]: the one place that chooses a datapath for a device.
//! - [`qemu`]: the QEMU command line that attaches a VM to a device.
//! - [`signals`]: SIGTERM/SIGINT/SIGUSR1 handling for the daemon's main thread.
//! - [`logging`]: `tracing` setup.
//! - [`cli`]: the command lines of `vdpad` and `vdpactl`, man pages, completions.
//! - [`control`]: the control socket (protocol, server, commands) and its client.
//! - [`metrics`]: the Prometheus endpoint.
//! - [`sd_notify`]: systemd readiness notifications (`sd_notify`).
//! - [`vdpa_bus`]: VDUSE devices on the kernel's vDPA bus.
//! - [`output`]: printing to stdout without panicking on a closed pipe.
//! - [`vdpa_netlink`]: the kernel's vDPA management interface (generic netlink `"vdpa"`).

pub mod cli;
pub mod control;
pub mod daemon;
pub mod discover;
pub mod logging;
pub mod metrics;
pub mod output;
pub mod qemu;
pub mod sd_notify;
pub mod signals;
pub mod vdpa_bus;
pub mod vdpa_netlink;
pub mod wiring;
