//! The vdpad daemon's wiring, as a library so that tests can run a daemon in-process:
//! configuration in, devices wired to a datapath, sockets served, signals handled.
//!
//! - [`daemon`]: start and stop all configured devices.
//! - [`wiring`]: the one place that chooses a datapath for a device.
//! - [`qemu`]: the QEMU command line that attaches a VM to a device.
//! - [`signals`]: SIGTERM/SIGINT/SIGUSR1 handling for the daemon's main thread.
//! - [`logging`]: `tracing` setup.
//! - [`control`]: the control socket (protocol, server, commands) and its client.
//! - [`metrics`]: the Prometheus endpoint.
//! - [`sd_notify`]: systemd readiness notifications (`sd_notify`).

pub mod control;
pub mod daemon;
pub mod logging;
pub mod metrics;
pub mod qemu;
pub mod sd_notify;
pub mod signals;
pub mod wiring;
