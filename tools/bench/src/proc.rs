//! Child processes of the harness: started pinned and tied to our life, bounded in
//! time, signalled only by their own PID, and always reaped.
//!
//! Every child gets `PR_SET_PDEATHSIG = SIGKILL`, so nothing outlives the harness even
//! if it is killed itself. A child is never reaped before we stop signalling it, so
//! its PID cannot be reused by an unrelated process while we hold it.

use std::fs::File;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set a flag instead of killing the harness, so the current
/// run is stopped, its processes are reaped and its files removed before exiting.
pub fn install_interrupt_handler() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe;
        // signal(2) has no other preconditions.
        unsafe { libc::signal(sig, handler) };
    }
}

/// True once SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Sleeps `d`, in short steps so that an interrupt is noticed; false if interrupted.
pub fn sleep(d: Duration) -> bool {
    let end = Instant::now() + d;
    while !interrupted() {
        let now = Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
    false
}

/// How to start a child.
#[derive(Debug, Clone)]
pub struct Spawn {
    /// Short name for messages.
    pub name: String,
    /// Program path.
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// Where stderr (and stdout, unless `stdout` is set) goes.
    pub log: PathBuf,
    /// Where stdout goes, if not to the log.
    pub stdout: Option<PathBuf>,
    /// Pin the whole process to this CPU (sched_setaffinity before exec).
    pub cpu: Option<usize>,
}

impl Spawn {
    /// `program args...` with both streams into `log`, not pinned.
    pub fn new(name: &str, program: &Path, args: Vec<String>, log: &Path) -> Self {
        Spawn {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            log: log.to_path_buf(),
            stdout: None,
            cpu: None,
        }
    }

    /// The command line, for logs and the report.
    pub fn command_line(&self) -> String {
        let mut s = String::new();
        if let Some(c) = self.cpu {
            s += &format!("taskset -c {c} ");
        }
        s += &self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s += a;
        }
        s
    }

    /// Starts the child.
    pub fn start(&self) -> Result<Proc> {
        let log = File::create(&self.log)
            .with_context(|| format!("cannot create log {}", self.log.display()))?;
        let out = match &self.stdout {
            Some(p) => File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
            None => log.try_clone().context("cannot duplicate a log fd")?,
        };
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(log));
        let cpu = self.cpu;
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (prctl, getppid, sched_setaffinity on a local
        // CPU set); it allocates nothing and touches no lock.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The harness died between fork and prctl: do not run orphaned.
                if libc::getppid() == 1 {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                if let Some(c) = cpu {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(c, &mut set);
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} ({})", self.name, self.program.display()))?;
        Ok(Proc {
            name: self.name.clone(),
            child,
            status: None,
            log: self.log.clone(),
        })
    }
}

/// A running (or exited, not yet dropped) child.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    log: PathBuf,
}

impl Proc {
    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exit status, if it has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Sends `sig` to the child's own PID, unless it has already been reaped.
    pub fn signal(&mut self, sig: libc::c_int) -> io::Result<()> {
        if self.try_wait().is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.pid())
            .ok()
            .filter(|p| *p > 1)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad pid"))?;
        // SAFETY: kill(2) with one positive PID (never 0, -1 or a group) of a child we
        // have not reaped, so the PID still names that child (or its zombie).
        if unsafe { libc::kill(pid, sig) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Waits until it exits or `deadline` passes.
    pub fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig`, waits `grace`, then SIGKILL; returns how it ended.
    pub fn stop(&mut self, sig: libc::c_int, grace: Duration) -> ExitStatus {
        if let Some(s) = self.try_wait() {
            return s;
        }
        let _ = self.signal(sig);
        if let Some(s) = self.wait_until(Instant::now() + grace) {
            return s;
        }
        let _ = self.signal(libc::SIGKILL);
        match self.child.wait() {
            Ok(s) => {
                self.status = Some(s);
                s
            }
            Err(_) => ExitStatus::from_raw(libc::SIGKILL),
        }
    }

    /// CPU time (user + system) it has used so far, from /proc/PID/stat; all threads.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(libc::SIGKILL, Duration::from_secs(5));
    }
}

/// utime + stime of process `pid` in seconds (fields 14 and 15 of /proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&text).map(|ticks| ticks as f64 / clock_ticks())
}

/// utime + stime in clock ticks from the text of /proc/PID/stat. The command name (field
/// 2) may contain spaces and parentheses, so fields are counted after its last ')'.
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time (user + system) of this process and of every child it has reaped, in
/// seconds (getrusage SELF + CHILDREN).
pub fn own_and_children_cpu() -> f64 {
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage writes into the zeroed struct we pass and nothing else.
        let ru = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            if libc::getrusage(who, &mut ru) != 0 {
                continue;
            }
            ru
        };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        total += tv(ru.ru_utime) + tv(ru.ru_stime);
    }
    total
}

/// Clock ticks per second (`_SC_CLK_TCK`).
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_the_command_name() {
        let s = "1234 (a) b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 17 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat_cpu(s), Some(267));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(cpu_seconds(std::process::id()).is_some());
        assert!(own_and_children_cpu() >= 0.0);
    }
}
