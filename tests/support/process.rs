//! Child processes bounded in time, logged to a file, signalled by PID.
//!
//! Every program is started as
//! `[ip netns exec NS] [taskset -c CPU] timeout -k KILL_AFTER LIMIT PROGRAM ARGS...`.
//! `ip netns exec` and `taskset` replace themselves with the next program, so the child
//! we spawn *is* `timeout`; `timeout` forks the program, forwards the signals it gets
//! to it and kills it when the limit is reached, even if the test process itself dies.
//! [`Proc::target_pid`] is the program's own PID, used for signals such as the
//! SIGKILL of a crash test.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// `SIGINT`.
pub const SIGINT: i32 = libc::SIGINT;
/// `SIGKILL`.
pub const SIGKILL: i32 = libc::SIGKILL;
/// `SIGTERM`.
pub const SIGTERM: i32 = libc::SIGTERM;

/// Sends signal `sig` to process `pid`.
///
/// Refuses PIDs 0 and 1, whose meaning for kill(2) is "a whole group" or "init".
pub fn send_signal(pid: u32, sig: i32) -> io::Result<()> {
    let raw = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing to signal pid {pid}"),
            )
        })?;
    // SAFETY: kill(2) takes two integers and accesses no memory of this process; the
    // PID is a single positive process id (checked above), never a group or -1.
    let rc = unsafe { libc::kill(raw, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The children of process `pid`, from `/proc` (empty if it has none or is gone).
pub fn children_of(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return text
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
    }
    // Kernels without CONFIG_PROC_CHILDREN: scan every process's parent.
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid, ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

/// How to start a [`Proc`].
#[derive(Clone, Debug)]
pub struct Spawn {
    /// Short name used in messages.
    pub name: String,
    /// The program to run.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables to set in addition to the inherited ones.
    pub env: Vec<(String, String)>,
    /// File that receives stdout and stderr.
    pub log: PathBuf,
    /// Append to the log instead of truncating it (used for restarts).
    pub append_log: bool,
    /// Hard limit on the program's run time (`timeout`'s DURATION).
    pub limit: Duration,
    /// Grace between `timeout`'s first signal and its SIGKILL.
    pub kill_after: Duration,
    /// Pin to this CPU with `taskset`.
    pub cpu: Option<usize>,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
}

impl Spawn {
    /// A spawn description with a 5-minute limit, no pinning, no namespace.
    pub fn new(name: &str, program: impl Into<PathBuf>, log: impl Into<PathBuf>) -> Self {
        Spawn {
            name: name.to_string(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            log: log.into(),
            append_log: false,
            limit: Duration::from_secs(300),
            kill_after: Duration::from_secs(5),
            cpu: None,
            netns: None,
        }
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.args
            .extend(args.into_iter().map(|s| s.as_ref().to_string()));
        self
    }

    /// Sets the hard run-time limit.
    pub fn limit(mut self, limit: Duration) -> Self {
        self.limit = limit;
        self
    }

    /// Pins the process to `cpu` (if `Some`).
    pub fn cpu(mut self, cpu: Option<usize>) -> Self {
        self.cpu = cpu;
        self
    }

    /// Runs the process inside network namespace `ns`.
    pub fn netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.to_string());
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts the process.
    pub fn start(self) -> io::Result<Proc> {
        let log = if self.append_log {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)?
        } else {
            File::create(&self.log)?
        };
        let mut words: Vec<String> = Vec::new();
        if let Some(ns) = &self.netns {
            words.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        if let Some(cpu) = self.cpu {
            words.extend(["taskset".to_string(), "-c".to_string(), cpu.to_string()]);
        }
        words.extend([
            "timeout".to_string(),
            "-k".to_string(),
            format!("{}s", self.kill_after.as_secs().max(1)),
            format!("{}s", self.limit.as_secs().max(1)),
            self.program.to_string_lossy().into_owned(),
        ]);
        words.extend(self.args.iter().cloned());
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{}: cannot run `{}`: {e}", self.name, words.join(" ")),
            )
        })?;
        Ok(Proc {
            name: self.name,
            command: words.join(" "),
            log: self.log,
            child,
            target: None,
            status: None,
        })
    }
}

/// A running (or finished) child process; stopped and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    command: String,
    log: PathBuf,
    /// The `timeout` process.
    child: Child,
    /// The program's own PID once known.
    target: Option<u32>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The full command line, for messages.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log file's content.
    pub fn log(&self) -> String {
        super::read_log(&self.log)
    }

    /// PID of the `timeout` wrapper.
    pub fn wrapper_pid(&self) -> u32 {
        self.child.id()
    }

    /// PID of the program itself (the child of `timeout`), waiting up to 5 s for the
    /// fork; `None` if the program already exited.
    pub fn target_pid(&mut self) -> Option<u32> {
        if let Some(pid) = self.target {
            return Some(pid);
        }
        let wrapper = self.child.id();
        let found = super::poll(Duration::from_secs(5), Duration::from_millis(10), || {
            if self.status.is_some() {
                return Some(None);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
                return Some(None);
            }
            children_of(wrapper).first().map(|pid| Some(*pid))
        });
        self.target = found.flatten();
        self.target
    }

    /// Whether the process (its `timeout` wrapper) is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// The exit status if the process has finished.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
            }
        }
        self.status
    }

    /// Waits up to `timeout` for the process to finish.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        super::poll(timeout, Duration::from_millis(20), || self.try_wait())
    }

    /// Sends `sig` to the program (falling back to the wrapper, which forwards it).
    pub fn signal(&mut self, sig: i32) -> io::Result<()> {
        if !self.is_running() {
            return Err(io::Error::other(format!("{} is not running", self.name)));
        }
        match self.target_pid() {
            Some(pid) => send_signal(pid, sig),
            None => send_signal(self.child.id(), sig),
        }
    }

    /// Sends `sig`, waits up to `grace`, then kills the program and the wrapper.
    /// Returns the wrapper's exit status (which mirrors the program's).
    pub fn stop(&mut self, sig: i32, grace: Duration) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        let _ = self.signal(sig);
        if let Some(status) = self.wait_timeout(grace) {
            return status;
        }
        eprintln!(
            "{}: still running {grace:?} after signal {sig}; sending SIGKILL",
            self.name
        );
        self.kill_now()
    }

    /// SIGKILL to the program and its wrapper, then reap.
    pub fn kill_now(&mut self) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        let mut pids = vec![self.child.id()];
        if let Some(pid) = self.target {
            pids.push(pid);
        }
        pids.extend(children_of(self.child.id()));
        for pid in pids.iter().rev() {
            let _ = send_signal(*pid, SIGKILL);
        }
        let status = self.child.wait().expect("wait for a killed child");
        self.status = Some(status);
        status
    }

    /// Whether the exit status says the `timeout` limit was hit (exit code 124).
    pub fn timed_out(status: ExitStatus) -> bool {
        status.code() == Some(124)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.stop(SIGTERM, Duration::from_secs(5));
        }
    }
}
