//! Diagnostic front end of `vdpad::vdpa_netlink`, for the lab tests (run inside the
//! 6.12 guest through the 9p host root) and for poking at a machine by hand:
//!
//! ```text
//! vdpa_netlink mgmtdev                 # like `vdpa mgmtdev show`
//! vdpa_netlink dev                     # like `vdpa dev show`, with the bound driver
//! vdpa_netlink dev-get NAME
//! vdpa_netlink dev-add NAME [MGMTDEV]  # MGMTDEV defaults to vduse
//! vdpa_netlink dev-del NAME
//! ```
//!
//! One line per object, `key=value` words. A failure prints
//! `error errno=N (ENAME): <message>` (`error: <message>` without an errno) on stderr
//! and exits 1 (2 for usage errors).

use std::process::ExitCode;

use vdpad::vdpa_netlink::{errno_name, VdpaDevice, VdpaNetlink, VdpaNetlinkError};

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn device_line(d: &VdpaDevice) -> String {
    format!(
        "dev {} mgmtdev={} device_id={} vendor_id={} max_vqs={} max_vq_size={} driver={} vhost_vdpa={} netdevs={}",
        d.name,
        opt(&d.mgmtdev),
        opt(&d.device_id),
        opt(&d.vendor_id),
        opt(&d.max_vqs),
        opt(&d.max_vq_size),
        opt(&d.binding.driver),
        opt(&d.binding.vhost_vdpa.as_ref().map(|p| p.display().to_string())),
        if d.binding.netdevs.is_empty() {
            "-".to_string()
        } else {
            d.binding.netdevs.join(",")
        }
    )
}

fn run(args: &[String]) -> Result<(), VdpaNetlinkError> {
    let mut nl = VdpaNetlink::open()?;
    match args {
        [c] if c == "mgmtdev" => {
            for m in nl.mgmtdev_list()? {
                println!(
                    "mgmtdev {} supported_classes={} net={} max_vqs={} supported_features={}",
                    m.handle(),
                    m.supported_classes
                        .map_or_else(|| "-".to_string(), |c| format!("{c:#x}")),
                    m.supports_net(),
                    opt(&m.max_vqs),
                    m.supported_features
                        .map_or_else(|| "-".to_string(), |f| format!("{f:#x}")),
                );
            }
        }
        [c] if c == "dev" => {
            for d in nl.dev_list()? {
                println!("{}", device_line(&d));
            }
        }
        [c, name] if c == "dev-get" => println!("{}", device_line(&nl.dev_get(name)?)),
        [c, name] if c == "dev-add" => {
            nl.dev_add(name, "vduse")?;
            println!("added {name}");
        }
        [c, name, mgmt] if c == "dev-add" => {
            nl.dev_add(name, mgmt)?;
            println!("added {name}");
        }
        [c, name] if c == "dev-del" => {
            nl.dev_del(name)?;
            println!("deleted {name}");
        }
        _ => unreachable!("checked by main"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let known = matches!(
        (args.first().map(String::as_str), args.len()),
        (Some("mgmtdev" | "dev"), 1) | (Some("dev-get" | "dev-del"), 2) | (Some("dev-add"), 2 | 3)
    );
    if !known {
        eprintln!("usage: vdpa_netlink mgmtdev | dev | dev-get NAME | dev-add NAME [MGMTDEV] | dev-del NAME");
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.errno() {
                Some(errno) => eprintln!("error errno={errno} ({}): {e}", errno_name(errno)),
                None => eprintln!("error: {e}"),
            }
            ExitCode::from(1)
        }
    }
}
