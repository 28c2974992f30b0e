//! Validators for single values: each takes the value as written (with its span) and
//! returns the effective value or an error pointing at the value, with a fix hint.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Component, Path, PathBuf};

use toml::Spanned;

use crate::defaults::{IFNAME_MAX, MAX_CPU, MAX_NAME_LEN, MIN_QUEUE_SIZE, SOCKET_PATH_MAX};
use crate::error::{ConfigError, ErrorKind, Source};
use crate::ids;
use crate::model::{MacAddress, PciAddress};
use crate::raw::RawId;
use crate::schema::closest;

type Span = Range<usize>;

const QUEUE_SIZE_HELP: &str = "use a power of two between 2 and 32768, e.g. 256";
const SOCKET_MODE_HELP: &str =
    "use 3 or 4 octal digits that give the owner read and write, e.g. \"0600\" or \"0660\"";
const LOG_LEVEL_HELP: &str = "use a level (off, error, warn, info, debug, trace) or a list of \
                              directives such as \"info,vdpa=debug\"";
const METRICS_LISTEN_HELP: &str = "write IP:port with a port from 1 to 65535, e.g. \
                                   \"127.0.0.1:9464\", or \"[::1]:9464\" for IPv6 \
                                   (host names are not resolved)";
const CPUS_HELP: &str = "list each CPU once, numbered from 0 to 1023 as in `lscpu -e`, \
                         e.g. cpus = [2, 3]";

fn invalid(src: &Source<'_>, span: Span, message: String) -> ConfigError {
    src.error(ErrorKind::InvalidValue, span, message)
}

/// Picks the option named by `value`; unknown names get "did you mean" and the list.
pub(crate) fn choice<T: Copy>(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
    options: &[(&'static str, T)],
) -> Result<T, ConfigError> {
    let text = value.get_ref();
    if let Some((_, v)) = options.iter().find(|(name, _)| name == text) {
        return Ok(*v);
    }
    let names = options.iter().map(|(name, _)| *name);
    let message = match closest(text, names.clone()) {
        Some(best) => format!("unknown {key} `{text}`, did you mean `{best}`?"),
        None => format!("unknown {key} `{text}`"),
    };
    let list: Vec<String> = names.map(|n| format!("\"{n}\"")).collect();
    Err(invalid(src, value.span(), message)
        .with_help(format!("{key} must be one of {}", list.join(", "))))
}

/// An integer within `range`, converted to the effective type `T`.
pub(crate) fn int_in<T>(
    src: &Source<'_>,
    value: &Spanned<i64>,
    key: &str,
    range: RangeInclusive<T>,
    help: &str,
) -> Result<T, ConfigError>
where
    T: TryFrom<i64> + PartialOrd + Copy + fmt::Display,
{
    let v = *value.get_ref();
    match T::try_from(v) {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => {
            let msg = format!(
                "{key} = {v} is out of range ({}..={})",
                range.start(),
                range.end()
            );
            Err(invalid(src, value.span(), msg).with_help(help))
        }
    }
}

/// `queue_size`: a power of two in 2..=32768.
pub(crate) fn queue_size(src: &Source<'_>, value: &Spanned<i64>) -> Result<u16, ConfigError> {
    let size = int_in(
        src,
        value,
        "queue_size",
        MIN_QUEUE_SIZE..=crate::MAX_QUEUE_SIZE,
        QUEUE_SIZE_HELP,
    )?;
    if !size.is_power_of_two() {
        let msg = format!("queue_size = {size} is not a power of two");
        return Err(invalid(src, value.span(), msg).with_help(QUEUE_SIZE_HELP));
    }
    Ok(size)
}

const MEMORY_SIZE_HELP: &str = "write a size in bytes with a binary unit (K, M, G or T), \
                                between 1M and 1024T, e.g. \"64G\" or \"512M\"";

/// A memory size such as `"64G"`: a whole number with an optional unit K, M, G, T
/// (powers of 1024; `KiB`, `MB`... are accepted too), between
/// [`MIN_MAX_GUEST_MEMORY`](crate::MIN_MAX_GUEST_MEMORY) and
/// [`MAX_MAX_GUEST_MEMORY`](crate::MAX_MAX_GUEST_MEMORY).
pub(crate) fn memory_size(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<u64, ConfigError> {
    let text = value.get_ref().trim();
    let bad = |why: &str| {
        Err(
            invalid(src, value.span(), format!("{key} = \"{text}\" {why}"))
                .with_help(MEMORY_SIZE_HELP),
        )
    };
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(digits);
    let Ok(n) = num.parse::<u64>() else {
        return bad("is not a size");
    };
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return bad("has an unknown unit"),
    };
    let Some(bytes) = n.checked_mul(1u64 << shift) else {
        return bad("is too large");
    };
    if !(crate::MIN_MAX_GUEST_MEMORY..=crate::MAX_MAX_GUEST_MEMORY).contains(&bytes) {
        return bad("is out of range (1M..=1024T)");
    }
    Ok(bytes)
}

/// `bytes` as [`memory_size`] reads it back, in the largest unit that divides it.
pub(crate) fn render_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.trailing_zeros() >= shift {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A device name: `[A-Za-z0-9_.-]{1,64}`.
pub(crate) fn device_name(
    src: &Source<'_>,
    value: &Spanned<String>,
) -> Result<String, ConfigError> {
    name_like(src, value, "device name", "vm1-net0")
}

/// `vm`: a VM name by the same rules as a device name.
pub(crate) fn vm_name(src: &Source<'_>, value: &Spanned<String>) -> Result<String, ConfigError> {
    name_like(src, value, "vm name", "vm1")
}

/// A name of 1 to 64 characters from `[A-Za-z0-9_.-]`; `what` names it in messages
/// and `example` is a valid one for the hint.
fn name_like(
    src: &Source<'_>,
    value: &Spanned<String>,
    what: &str,
    example: &str,
) -> Result<String, ConfigError> {
    let name = value.get_ref();
    let help = format!("use 1 to 64 letters, digits, '_', '.' or '-', e.g. \"{example}\"");
    let problem = if name.is_empty() {
        Some(format!("{what} must not be empty"))
    } else if name.chars().count() > MAX_NAME_LEN {
        Some(format!(
            "{what} is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.chars().count()
        ))
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
            .map(|c| format!("{what} `{name}` contains {c:?}, which is not allowed"))
    };
    match problem {
        Some(msg) => Err(invalid(src, value.span(), msg).with_help(help)),
        None => Ok(name.clone()),
    }
}

/// `metrics_listen`: a numeric `IP:port` (`[IPv6]:port`) with a port from 1 to 65535.
pub(crate) fn metrics_listen(
    src: &Source<'_>,
    value: &Spanned<String>,
) -> Result<SocketAddr, ConfigError> {
    let text = value.get_ref();
    let problem = match text.parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => format!(
            "metrics_listen = \"{text}\" has port 0; the endpoint needs a fixed port \
             that Prometheus can scrape"
        ),
        Ok(addr) => return Ok(addr),
        Err(_) => socket_addr_problem(text),
    };
    Err(invalid(src, value.span(), problem).with_help(METRICS_LISTEN_HELP))
}

/// Why `text` (which does not parse as a socket address) is not `IP:port`.
fn socket_addr_problem(text: &str) -> String {
    let quoted = format!("metrics_listen = \"{text}\"");
    if let Ok(ip) = text.parse::<IpAddr>() {
        return match ip {
            IpAddr::V4(_) => format!("{quoted} has no port"),
            IpAddr::V6(_) => format!(
                "{quoted} is an IPv6 address without a port (put the address in brackets \
                 before the port)"
            ),
        };
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return format!("{quoted} is not of the form IP:port");
    };
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let ip = bracketed.unwrap_or(host).parse::<IpAddr>();
    match (ip, bracketed.is_some()) {
        _ if host.is_empty() => format!("{quoted} has no IP address before the port"),
        (Err(_), _) => format!("{quoted}: `{host}` is not an IP address"),
        (Ok(IpAddr::V6(_)), false) => {
            format!("{quoted}: an IPv6 address must be written in brackets before the port")
        }
        (Ok(IpAddr::V4(_)), true) => {
            format!("{quoted}: only IPv6 addresses are written in brackets")
        }
        (Ok(_), _) => match port.parse::<u64>() {
            Ok(p) if p > u64::from(u16::MAX) => {
                format!("{quoted}: port {p} is out of range (1..=65535)")
            }
            Err(_) if !port.is_empty() => format!("{quoted}: `{port}` is not a port number"),
            _ => format!("{quoted} is not of the form IP:port"),
        },
    }
}

/// `cpus`: CPU numbers in `0..=MAX_CPU`, each at most once. Errors point at the
/// offending element.
pub(crate) fn cpus(
    src: &Source<'_>,
    value: &Spanned<Vec<Spanned<i64>>>,
) -> Result<Vec<u16>, ConfigError> {
    let mut cpus: Vec<u16> = Vec::with_capacity(value.get_ref().len());
    for element in value.get_ref() {
        let v = *element.get_ref();
        let Some(cpu) = u16::try_from(v).ok().filter(|&c| c <= MAX_CPU) else {
            let msg = format!("CPU {v} in `cpus` is out of range (0..={MAX_CPU})");
            return Err(invalid(src, element.span(), msg).with_help(CPUS_HELP));
        };
        if let Some(first) = cpus.iter().position(|&c| c == cpu) {
            let msg = format!(
                "CPU {cpu} is listed twice in `cpus` (first as element {})",
                first + 1
            );
            return Err(invalid(src, element.span(), msg).with_help(
                "list each CPU once; queue pairs wrap around the list (pair i runs on \
                 cpus[i % len]), so fewer CPUs than pairs need no repeats",
            ));
        }
        cpus.push(cpu);
    }
    Ok(cpus)
}

/// A network interface name, by the kernel's rules (`dev_valid_name`).
pub(crate) fn ifname(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<String, ConfigError> {
    let name = value.get_ref();
    let problem = if name.is_empty() || name.len() > IFNAME_MAX {
        Some(format!(
            "{key} = \"{name}\" must be 1 to {IFNAME_MAX} bytes long"
        ))
    } else if name == "." || name == ".." {
        Some(format!("{key} = \"{name}\" is not a valid interface name"))
    } else {
        name.chars()
            .find(|&c| c == '/' || c == ':' || c.is_whitespace())
            .map(|c| format!("{key} = \"{name}\" contains {c:?}, which interface names cannot"))
    };
    match problem {
        Some(msg) => Err(invalid(src, value.span(), msg).with_help(
            "interface names are 1 to 15 bytes without '/', ':' or whitespace, e.g. \"eth1\"",
        )),
        None => Ok(name.clone()),
    }
}

/// A PCI address, in canonical or short form.
pub(crate) fn pci(src: &Source<'_>, value: &Spanned<String>) -> Result<PciAddress, ConfigError> {
    value.get_ref().parse().map_err(|e| {
        invalid(
            src,
            value.span(),
            format!("pci = \"{}\": {e}", value.get_ref()),
        )
        .with_help(
            "write the address as `lspci -D` shows it, e.g. \"0000:3b:00.2\" \
             (domain:bus:device.function in hex)",
        )
    })
}

/// A unicast MAC address.
pub(crate) fn mac(src: &Source<'_>, value: &Spanned<String>) -> Result<MacAddress, ConfigError> {
    let text = value.get_ref();
    let unicast_help = "use a unicast address (first octet even), e.g. a locally administered \
                        \"52:54:00:12:34:56\" or \"02:00:00:00:00:01\"";
    let mac: MacAddress = text.parse().map_err(|_| {
        invalid(
            src,
            value.span(),
            format!("mac = \"{text}\" is not a MAC address"),
        )
        .with_help("write six two-digit hex octets separated by ':', e.g. \"52:54:00:12:34:56\"")
    })?;
    if mac.is_multicast() {
        let msg =
            format!("mac = \"{text}\" is a multicast address (bit 0 of the first octet is set)");
        return Err(invalid(src, value.span(), msg).with_help(unicast_help));
    }
    if mac.is_zero() {
        let msg = format!("mac = \"{text}\" is all zeros, which no interface may use");
        return Err(invalid(src, value.span(), msg).with_help(unicast_help));
    }
    Ok(mac)
}

/// `log_level`: a level or `EnvFilter` directives made of `[a-z0-9_=,:.-]`.
pub(crate) fn log_level(src: &Source<'_>, value: &Spanned<String>) -> Result<String, ConfigError> {
    let text = value.get_ref();
    let fail = |msg: String| Err(invalid(src, value.span(), msg).with_help(LOG_LEVEL_HELP));
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_=,:.-".contains(*c)))
    {
        return fail(format!(
            "log_level = \"{text}\" contains {c:?}, which is not allowed"
        ));
    }
    let directives: Vec<&str> = text.split(',').filter(|d| !d.is_empty()).collect();
    if directives.is_empty() {
        return fail("log_level must not be empty".to_owned());
    }
    for directive in directives {
        if let Some((target, level)) = directive.split_once('=') {
            if target.is_empty() || !is_level(level) {
                return fail(format!(
                    "log_level directive `{directive}` is not of the form target=level"
                ));
            }
        }
    }
    Ok(text.clone())
}

fn is_level(s: &str) -> bool {
    matches!(
        s,
        "off" | "error" | "warn" | "info" | "debug" | "trace" | "0" | "1" | "2" | "3" | "4" | "5"
    )
}

/// `socket_mode`: 3 or 4 octal digits, permission bits only, owner read and write.
pub(crate) fn socket_mode(src: &Source<'_>, value: &Spanned<String>) -> Result<u32, ConfigError> {
    mode_of(src, value, "socket_mode")
}

/// `control_socket_mode`: the same rules as `socket_mode`.
pub(crate) fn control_socket_mode(
    src: &Source<'_>,
    value: &Spanned<String>,
) -> Result<u32, ConfigError> {
    mode_of(src, value, "control_socket_mode")
}

/// `socket_dirs`: absolute directories, each at most once.
pub(crate) fn socket_dirs(
    src: &Source<'_>,
    value: &Spanned<Vec<Spanned<String>>>,
) -> Result<Vec<PathBuf>, ConfigError> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for element in value.get_ref() {
        let dir = absolute_dir(src, element, "socket_dirs", "/var/lib/vdpad/sockets")?;
        if dir.components().any(|c| c == Component::ParentDir) {
            let msg = format!("socket_dirs entry \"{}\" contains `..`", element.get_ref());
            return Err(invalid(src, element.span(), msg)
                .with_help("write the directory without `..`, e.g. \"/var/lib/vdpad/sockets\""));
        }
        if dirs.contains(&dir) {
            let msg = format!("socket_dirs lists {} twice", dir.display());
            return Err(invalid(src, element.span(), msg).with_help("list each directory once"));
        }
        dirs.push(dir);
    }
    Ok(dirs)
}

fn mode_of(src: &Source<'_>, value: &Spanned<String>, key: &str) -> Result<u32, ConfigError> {
    let text = value.get_ref();
    let fail = |msg: String| Err(invalid(src, value.span(), msg).with_help(SOCKET_MODE_HELP));
    if !(3..=4).contains(&text.len()) || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return fail(format!(
            "{key} = \"{text}\" is not an octal mode of 3 or 4 digits"
        ));
    }
    let mode = u32::from_str_radix(text, 8).expect("checked octal digits");
    if mode & !0o777 != 0 {
        return fail(format!(
            "{key} = \"{text}\" sets setuid, setgid or sticky bits; only permission bits are allowed"
        ));
    }
    if mode & 0o600 != 0o600 {
        return fail(format!(
            "{key} = \"{text}\" does not give the socket's owner read and write permission"
        ));
    }
    Ok(mode)
}

/// Whether an id names a user or a group.
#[derive(Clone, Copy, Debug)]
pub(crate) enum IdKind {
    /// `socket_owner`.
    User,
    /// `socket_group`.
    Group,
}

/// `socket_owner` / `socket_group`: a name resolved now, or a numeric id.
pub(crate) fn id(
    src: &Source<'_>,
    value: &Spanned<RawId>,
    kind: IdKind,
) -> Result<u32, ConfigError> {
    let (key, what, db) = match kind {
        IdKind::User => ("socket_owner", "user", "passwd"),
        IdKind::Group => ("socket_group", "group", "group"),
    };
    let number = |n: i64| {
        // u32::MAX is (uid_t)-1, which chown(2) reads as "leave unchanged".
        u32::try_from(n)
            .ok()
            .filter(|&id| id != u32::MAX)
            .ok_or_else(|| {
                invalid(
                    src,
                    value.span(),
                    format!("{key} = {n} is not a valid {what} id"),
                )
                .with_help(format!("use an id between 0 and {}", u32::MAX - 1))
            })
    };
    let name = match value.get_ref() {
        RawId::Number(n) => return number(*n),
        RawId::Text(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
            return number(t.parse().unwrap_or(i64::MAX));
        }
        RawId::Text(t) => t,
    };
    match lookup(kind, name) {
        Ok(Some(id)) => Ok(id),
        Ok(None) => Err(src
            .error(
                ErrorKind::UnknownId,
                value.span(),
                format!("unknown {what} `{name}`"),
            )
            .with_help(format!(
                "{key} must name an existing {what} (check `getent {db} {name}`) or be a numeric id"
            ))),
        Err(e) => Err(src.error(
            ErrorKind::UnknownId,
            value.span(),
            format!("cannot look up {what} `{name}`: {e}"),
        )),
    }
}

fn lookup(kind: IdKind, name: &str) -> std::io::Result<Option<u32>> {
    match kind {
        IdKind::User => ids::user_id(name),
        IdKind::Group => ids::group_id(name),
    }
}

/// `run_dir`: an absolute directory path.
pub(crate) fn run_dir(src: &Source<'_>, value: &Spanned<String>) -> Result<PathBuf, ConfigError> {
    absolute_dir(src, value, "run_dir", "/run/vdpad")
}

/// `include_dir`: an absolute path, like `run_dir`.
pub(crate) fn include_dir(
    src: &Source<'_>,
    value: &Spanned<String>,
) -> Result<PathBuf, ConfigError> {
    absolute_dir(src, value, "include_dir", "/etc/vdpad/vdpad.d")
}

fn absolute_dir(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
    example: &str,
) -> Result<PathBuf, ConfigError> {
    let text = value.get_ref();
    check_path_text(src, value, key)?;
    let path = Path::new(text);
    if !path.is_absolute() {
        return Err(invalid(
            src,
            value.span(),
            format!("{key} = \"{text}\" is not an absolute path"),
        )
        .with_help(format!("use an absolute path, e.g. \"{example}\"")));
    }
    Ok(clean(path))
}

fn check_path_text(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<(), ConfigError> {
    let text = value.get_ref();
    if text.is_empty() {
        return Err(invalid(
            src,
            value.span(),
            format!("{key} must not be empty"),
        ));
    }
    if text.contains('\0') {
        return Err(invalid(
            src,
            value.span(),
            format!("{key} contains a NUL character"),
        ));
    }
    Ok(())
}

/// Removes `.` components and repeated slashes (`..` is kept: it depends on symlinks).
fn clean(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

/// A socket path: `given` (relative to `run_dir` unless absolute) or, when absent,
/// `run_dir/default_file`. The result must fit in `sockaddr_un`. Errors about a
/// defaulted path point at `blame` when there is one.
pub(crate) fn socket_path(
    src: &Source<'_>,
    key: &str,
    given: Option<&Spanned<String>>,
    default_file: &str,
    run_dir: &Path,
    blame: Option<Span>,
) -> Result<PathBuf, ConfigError> {
    let path = match given {
        Some(value) => {
            check_path_text(src, value, key)?;
            if value.get_ref().ends_with('/') {
                let msg = format!(
                    "{key} = \"{}\" names a directory, not a socket file",
                    value.get_ref()
                );
                return Err(invalid(src, value.span(), msg)
                    .with_help(format!("for example: {key} = \"{default_file}\"")));
            }
            clean(&run_dir.join(value.get_ref()))
        }
        None => run_dir.join(default_file),
    };
    let len = path.as_os_str().len();
    if len <= SOCKET_PATH_MAX {
        return Ok(path);
    }
    let msg = format!(
        "{key} path `{}` is {len} bytes long; a Unix socket path can hold at most {SOCKET_PATH_MAX}",
        path.display()
    );
    let (span, help) = match (given, blame) {
        (Some(value), _) => (Some(value.span()), format!("use a shorter {key} path")),
        (None, span) => (
            span,
            format!("set a shorter `{key}`, or a shorter `run_dir`"),
        ),
    };
    Err(match span {
        Some(span) => invalid(src, span, msg),
        None => ConfigError::unlocated(ErrorKind::InvalidValue, src.origin, msg),
    }
    .with_help(help))
}
