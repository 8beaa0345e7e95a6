//! Processes as the loader sees them: stopping one so every thread can be
//! marked, and starting one confined from its first instruction.
//!
//! Why this exists: marking is per task, and a running process can create a
//! thread between "list threads" and "mark them" — that thread would escape.
//! A stopped process creates nothing, so the loader marks while it is
//! stopped. A new child is started stopped (it SIGSTOPs itself before exec)
//! because glibc's child runs syscalls right after `fork()` returns; marking
//! it while it runs would race those (see the design note).
//!
//! PID identity: the process is held by a pidfd for the whole operation and
//! checked alive after its threads' pidfds are opened, so a PID that was
//! reused meanwhile is never marked.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Loader, LoaderError, sys};

/// How long to wait for a process to reach the stopped state. Short: the
/// reconcile loop waits meanwhile, and a process that does not stop in
/// this time (traced, in a long uninterruptible sleep, or continued by an
/// accomplice as fast as it is stopped) is acted on while it runs.
const STOP_TIMEOUT: Duration = Duration::from_millis(500);

/// PF_KTHREAD in the flags field of /proc/PID/stat.
const PF_KTHREAD: u64 = 0x0020_0000;

fn process_err(pid: u32, reason: impl Into<String>) -> LoaderError {
    LoaderError::Process {
        pid,
        reason: reason.into(),
    }
}

/// The thread ids of process `pid`, sorted.
pub fn threads(pid: u32) -> Result<Vec<u32>, LoaderError> {
    let dir = format!("/proc/{pid}/task");
    let entries =
        std::fs::read_dir(&dir).map_err(|e| process_err(pid, format!("listing {dir}: {e}")))?;
    let mut tids: Vec<u32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// The fields of /proc/PID/task/TID/stat after the command (field 3 on),
/// which may contain spaces and parentheses: the rest follows the last `)`.
fn stat_fields(pid: u32, tid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

/// The one-letter scheduler state of a task (`R`, `S`, `T`, `t`, `Z`, ...).
fn task_state(pid: u32, tid: u32) -> Option<char> {
    stat_fields(pid, tid)?.first()?.chars().next()
}

/// When process `pid` started (`starttime`, in clock ticks since boot): with
/// the PID, it names one process even after the number is reused.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid, pid)?.get(19)?.parse().ok()
}

/// Whether `pid` is stopped (by a signal or a tracer).
pub fn is_stopped(pid: u32) -> bool {
    matches!(task_state(pid, pid), Some('T' | 't'))
}

/// Why `pid` must never be stopped and marked, if so: a kernel thread
/// (cannot be stopped), PID 1, this process or one of its ancestors (it
/// would stop the daemon), or a process that already exited.
pub fn confine_refusal(pid: u32) -> Option<String> {
    if pid <= 1 {
        return Some("is the init process; it cannot be confined".into());
    }
    let fields = match stat_fields(pid, pid) {
        Some(fields) => fields,
        None => return Some("no such process".into()),
    };
    // A leader that exited alone leaves a zombie that still has running
    // threads: that process is alive, and confinable like any other.
    if fields
        .first()
        .is_some_and(|state| state == "Z" || state == "X")
        && live_threads(pid) == 0
    {
        return Some("has exited".into());
    }
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    if flags & PF_KTHREAD != 0 {
        return Some("is a kernel thread; it cannot be stopped or confined".into());
    }
    let mut ancestor = std::process::id();
    for _ in 0..4096 {
        if ancestor == pid {
            return Some(if ancestor == std::process::id() {
                "is this daemon itself".into()
            } else {
                "is an ancestor of this daemon; stopping it could stop the daemon".into()
            });
        }
        match stat_fields(ancestor, ancestor).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
            Some(parent) if parent > 1 => ancestor = parent,
            _ => break,
        }
    }
    None
}

/// How many threads of `pid` have not exited.
fn live_threads(pid: u32) -> usize {
    threads(pid)
        .unwrap_or_default()
        .into_iter()
        .filter(|&tid| !matches!(task_state(pid, tid), Some('Z' | 'X') | None))
        .count()
}

/// Whether `pid` is a process (thread-group leader), not a thread or gone.
fn check_is_process(pid: u32) -> Result<(), LoaderError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| process_err(pid, "no such process"))?;
    let tgid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse::<u32>().ok());
    match tgid {
        Some(tgid) if tgid == pid => Ok(()),
        Some(tgid) => Err(process_err(
            pid,
            format!("is a thread of process {tgid}; name the process"),
        )),
        None => Err(process_err(pid, "cannot read its thread group")),
    }
}

/// Runs `action` with every thread of `pid` stopped if it can be, passing
/// the thread ids. The stop only keeps the thread list still: any process
/// of the same user can continue the target (SIGCONT) at any moment, so
/// `action` must be correct on a running process (marking settles: see
/// `confinement`), and a process that does not stay stopped within
/// `STOP_TIMEOUT` is acted on running rather than refused. A process that
/// was running is continued afterwards; one that was already stopped (a
/// child that stopped itself) is left stopped.
pub fn with_stopped<T>(
    pid: u32,
    action: impl FnOnce(&[u32]) -> Result<T, LoaderError>,
) -> Result<T, LoaderError> {
    check_is_process(pid)?;
    let pidfd =
        sys::pidfd_open(pid, false).map_err(|e| process_err(pid, format!("pidfd_open: {e}")))?;
    let was_stopped = matches!(task_state(pid, pid), Some('T' | 't'));
    if !was_stopped {
        sys::pidfd_send_signal(&pidfd, libc::SIGSTOP)
            .map_err(|e| process_err(pid, format!("stopping it (SIGSTOP): {e}")))?;
    }
    let result = wait_all_stopped(pid)
        .or_else(|resisted| threads(pid).map_err(|_| resisted))
        .and_then(|tids| {
            // The process is alive (not reaped), so its PID is still its own;
            // each thread's pidfd is checked against the process when it is
            // marked (a thread's TID can be reused once that thread is reaped).
            sys::pidfd_send_signal(&pidfd, 0)
                .map_err(|e| process_err(pid, format!("exited meanwhile: {e}")))?;
            action(&tids)
        });
    if !was_stopped {
        let continued = sys::pidfd_send_signal(&pidfd, libc::SIGCONT);
        if let (Ok(_), Err(e)) = (&result, continued) {
            return Err(process_err(pid, format!("continuing it (SIGCONT): {e}")));
        }
    }
    result
}

fn wait_all_stopped(pid: u32) -> Result<Vec<u32>, LoaderError> {
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        let tids = threads(pid)?;
        let states: Vec<Option<char>> = tids.iter().map(|&tid| task_state(pid, tid)).collect();
        let all_stopped = states
            .iter()
            .all(|s| matches!(s, Some('T' | 't' | 'Z' | 'X') | None));
        // Re-list: a thread created just before the stop must be seen.
        if all_stopped && threads(pid)? == tids {
            // A dying thread needs no mark, and its TID may be reused.
            let live = tids
                .into_iter()
                .zip(states)
                .filter(|(_, state)| matches!(state, Some('T' | 't')))
                .map(|(tid, _)| tid)
                .collect();
            return Ok(live);
        }
        if Instant::now() > deadline {
            return Err(process_err(
                pid,
                "did not stop within 0.5 s (is it traced or in uninterruptible sleep?)",
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A child started by `spawn_confined`.
#[derive(Debug)]
pub struct ConfinedChild {
    pub pid: u32,
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Killed(i32),
}

impl ExitStatus {
    /// The shell convention: the exit code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Killed(signal) => 128 + signal,
        }
    }
}

impl ConfinedChild {
    /// Waits for the child to end (stops are not endings).
    pub fn wait(&self) -> Result<ExitStatus, LoaderError> {
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid status pointer.
            let rc = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, 0) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(process_err(self.pid, format!("waitpid: {e}")));
            }
            if libc::WIFEXITED(status) {
                return Ok(ExitStatus::Exited(libc::WEXITSTATUS(status)));
            }
            if libc::WIFSIGNALED(status) {
                return Ok(ExitStatus::Killed(libc::WTERMSIG(status)));
            }
        }
    }
}

/// Finds `program` the way a shell would: as given if it contains a `/`,
/// else in `$PATH`.
pub fn resolve_program(program: &OsStr) -> Option<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A child that stopped itself right before exec.
#[derive(Debug)]
pub struct StoppedChild {
    pid: u32,
}

impl StoppedChild {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Lets the child exec its program.
    pub fn resume(self) -> ConfinedChild {
        // SAFETY: signalling our own stopped, unreaped child.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGCONT) };
        let child = ConfinedChild { pid: self.pid };
        std::mem::forget(self);
        child
    }
}

impl Drop for StoppedChild {
    /// A child that was never resumed (confinement failed) must not run.
    fn drop(&mut self) {
        kill_and_reap(self.pid);
    }
}

/// Forks a child that closes every inherited fd but 0-2, stops itself
/// before exec'ing `argv`, and waits until it has stopped. Nothing of `argv`
/// runs until `resume`.
pub fn spawn_stopped(argv: &[OsString]) -> Result<StoppedChild, LoaderError> {
    let program = argv
        .first()
        .ok_or_else(|| process_err(0, "no command given"))?;
    let path = resolve_program(program).ok_or_else(|| {
        process_err(
            0,
            format!("{}: command not found", program.to_string_lossy()),
        )
    })?;
    let to_c = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| process_err(0, "an argument contains a NUL byte"))
    };
    let c_path = to_c(path.as_os_str())?;
    let c_args: Vec<CString> = argv.iter().map(|a| to_c(a)).collect::<Result<_, _>>()?;
    let mut c_argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
    c_argv.push(std::ptr::null());

    // SAFETY: after fork the child only calls async-signal-safe functions
    // (close_range, getpid, kill, execv, _exit) on data prepared before the
    // fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(process_err(
            0,
            format!("fork: {}", std::io::Error::last_os_error()),
        ));
    }
    if pid == 0 {
        unsafe {
            // Keep only stdin, stdout and stderr: the child must not hold the
            // supervisor's BPF map, link or lock fds even for the moment
            // between being marked and exec'ing.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            libc::kill(libc::getpid(), libc::SIGSTOP);
            libc::execv(c_path.as_ptr(), c_argv.as_ptr());
            libc::_exit(127);
        }
    }
    let child = StoppedChild { pid: pid as u32 };
    let mut status = 0;
    // SAFETY: waitpid on our own child.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED) };
    if rc < 0 || !libc::WIFSTOPPED(status) {
        return Err(process_err(child.pid, "the child did not stop before exec"));
    }
    Ok(child)
}

/// Starts `argv` confined from its first instruction: the child stops
/// itself before exec, `loader` marks it, then it continues and execs.
/// The child holds no BPF fds once it runs the program: the loader's fds are
/// close-on-exec (the kernel creates them so).
pub fn spawn_confined(
    loader: &mut dyn Loader,
    argv: &[OsString],
) -> Result<ConfinedChild, LoaderError> {
    let child = spawn_stopped(argv)?;
    loader.confine(child.pid())?;
    Ok(child.resume())
}

fn kill_and_reap(pid: u32) {
    let mut status = 0;
    // SAFETY: our own child, not yet reaped, so the PID is still ours.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
        libc::waitpid(pid as libc::pid_t, &mut status, 0);
    }
}
