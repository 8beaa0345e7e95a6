//! Marking tasks as confined, and the registry of confined processes.
//!
//! Why this exists: confinement belongs to the task (a BPF task-storage
//! mark), written through a pidfd so a reused PID is never marked; the
//! registry (a hash of TGIDs) exists because task storage cannot be
//! enumerated. The leader is marked first, then the process is stopped if
//! it stays stopped (`process::with_stopped`) and every thread is marked,
//! and then the marks are settled: the threads are listed and marked again
//! until a listing finds every one marked. The stop is no guarantee: any
//! process of the same user can continue the target (SIGCONT) meanwhile.
//! The leader first is what makes it sound: a new task inherits the mark of
//! its creator or, failing that, of its creator's process leader
//! (`task_newtask`), so once the leader is marked no thread and no child
//! process is created unmarked; a thread created before that was linked
//! into the process before its creation hook ran, so the first listing
//! after the leader's mark holds it. A thread not marked yet that execs
//! takes over the leader's PID without its mark; the exec hook marks it,
//! since the process is registered before the leader is marked. Child
//! processes made before the leader's mark are children the process
//! already had: not confined.
//!
//! # Identity
//! A registry entry is a PID number, and numbers are reused. An entry
//! counts only while the process behind the number carries the mark
//! (checked through a pidfd, so it is that very task) and has not exited;
//! any other entry is stale and is removed. `confine`, `release` and
//! `status` act only on processes checked this way.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use aya::maps::PerCpuValues;

use super::abi::{Confined, Pending, TaskMark};
use super::kernel::KernelLoader;
use super::maps::map_err;
use super::rule_keys::remove_ignoring_missing;
use super::{LoaderError, process, sys};
use crate::guard::{self, ConfinedSet};

/// A read-only handle on the confinement marks, for threads that do not own
/// the loader (the control socket tells confined peers from the others).
pub struct MarkReader {
    map: OwnedFd,
}

impl MarkReader {
    /// Opens the pinned `TASK_MARK` map of `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<MarkReader, LoaderError> {
        let pin = super::pins::PinLayout::new(pin_dir).map("TASK_MARK");
        let map = sys::obj_get(&pin)
            .map_err(|e| LoaderError::io(format!("opening pinned map {}", pin.display()), e))?;
        Ok(MarkReader { map })
    }

    /// Whether the task behind `pidfd` is confined.
    pub fn is_marked(&self, pidfd: &OwnedFd) -> std::io::Result<bool> {
        sys::task_storage_contains::<TaskMark>(self.map.as_fd(), pidfd)
    }

    /// Whether the process behind `pidfd` is confined or cannot be shown
    /// not to be: it has exited (a reaped process has no mark to find) or
    /// the look-up failed.
    pub fn is_marked_or_unknown(&self, pidfd: &OwnedFd) -> bool {
        sys::pidfd_exited(pidfd) || self.is_marked(pidfd).unwrap_or(true)
    }
}

/// How many confined processes are remembered by pidfd between checks.
const CHECKED_KEPT: usize = 4096;

/// What the registry says about one PID.
enum Entry {
    /// The process behind the number is confined and alive.
    Confined,
    /// The number names no confined live process (exited, or reused).
    Stale,
}

impl KernelLoader {
    /// Whether the task `tid` carries a confinement mark.
    pub fn is_task_marked(&mut self, tid: u32) -> Result<bool, LoaderError> {
        let pidfd = sys::pidfd_open(tid, true)
            .map_err(|e| LoaderError::io(format!("pidfd_open({tid}, PIDFD_THREAD)"), e))?;
        self.map_ops += 1;
        sys::task_storage_contains::<TaskMark>(self.maps.task_mark.fd().as_fd(), &pidfd)
            .map_err(|e| LoaderError::io(format!("bpf_map_lookup_elem TASK_MARK tid {tid}"), e))
    }

    /// Checks the registry entry of `pid` against the process itself. A
    /// process found confined is remembered by its pidfd: it stays
    /// confined until that pidfd says it exited (marks are only removed by
    /// `release`, which forgets it).
    fn check_entry(&mut self, pid: u32) -> Result<Entry, LoaderError> {
        if let Some(pidfd) = self.checked.get(&pid) {
            if !sys::pidfd_exited(pidfd) {
                return Ok(Entry::Confined);
            }
            // The remembered process exited; the number may already name
            // a new one (confined since, or being confined): check afresh.
            self.checked.remove(&pid);
        }
        let pidfd = match sys::pidfd_open(pid, false) {
            Ok(pidfd) => pidfd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(Entry::Stale),
            Err(e) => return Err(LoaderError::io(format!("pidfd_open({pid})"), e)),
        };
        self.map_ops += 1;
        let marked =
            sys::task_storage_contains::<TaskMark>(self.maps.task_mark.fd().as_fd(), &pidfd)
                .map_err(|e| {
                    LoaderError::io(format!("bpf_map_lookup_elem TASK_MARK pid {pid}"), e)
                })?;
        if marked && !sys::pidfd_exited(&pidfd) {
            // Each kept pidfd is a descriptor: beyond a bound, check afresh.
            if self.checked.len() < CHECKED_KEPT {
                self.checked.insert(pid, pidfd);
            }
            Ok(Entry::Confined)
        } else {
            Ok(Entry::Stale)
        }
    }

    /// The confined processes, each checked (see the module doc); stale
    /// entries are removed on the way.
    pub(super) fn checked_registry(&mut self) -> Result<ConfinedSet, LoaderError> {
        let mut listed = Vec::new();
        for key in self.maps.confined.keys() {
            self.map_ops += 1;
            listed.push(key.map_err(map_err("CONFINED", ""))?);
        }
        let mut confined = Vec::with_capacity(listed.len());
        for pid in listed {
            match self.check_entry(pid)? {
                Entry::Confined => confined.push(pid),
                Entry::Stale => self.forget_process(pid)?,
            }
        }
        Ok(ConfinedSet::from_pids(confined))
    }

    fn forget_process(&mut self, pid: u32) -> Result<(), LoaderError> {
        self.checked.remove(&pid);
        self.map_ops += 1;
        remove_ignoring_missing(self.maps.confined.remove(&pid))
            .map_err(map_err("CONFINED", pid.to_string()))
    }

    /// Clears every CPU's guard cache entry (see `GUARD_CACHE` in
    /// `probes/aa_policy.h`): after marks are written on existing tasks, no
    /// CPU may still remember one of them as unconfined.
    pub(super) fn forget_guard_cache(&mut self) -> Result<(), LoaderError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| LoaderError::io("counting CPUs", e))?;
        let zeros = PerCpuValues::try_from(vec![0u64; cpus])
            .map_err(|e| LoaderError::io("building per-CPU values", e))?;
        self.map_ops += 1;
        self.maps
            .guard_cache
            .set(0, zeros, 0)
            .map_err(map_err("GUARD_CACHE", "0"))
    }

    /// Confines every thread of `pid`: with the process stopped, the hooks
    /// are attached (so that no thread is in the middle of creating a task
    /// while the kernel turns syscall tracing on for every task), the
    /// process enters the registry, every thread is marked, and no CPU's
    /// guard cache remembers any of them as unconfined.
    pub(super) fn confine_process(&mut self, pid: u32) -> Result<(), LoaderError> {
        guard::check_confine(&self.mirror.rules, pid)?;
        if let Some(reason) = process::confine_refusal(pid) {
            return Err(LoaderError::Process { pid, reason });
        }
        if self.maps.confined.get(&pid, 0).is_ok()
            && matches!(self.check_entry(pid)?, Entry::Confined)
        {
            return Ok(()); // already confined: nothing to do
        }
        self.record_pending(pid, false)?;
        crate::fault::point("confine.recorded");
        let mut confine = || -> Result<(), LoaderError> {
            self.attach_hooks()?;
            self.map_ops += 1;
            self.maps
                .confined
                .insert(pid, Confined::default(), 0)
                .map_err(map_err("CONFINED", pid.to_string()))?;
            crate::fault::point("confine.registered");
            // The leader before the stop: from its mark on, every task the
            // process creates is marked at birth (see the module doc), so
            // the time the stop may take (up to STOP_TIMEOUT against an
            // accomplice) is no window for unmarked threads or children.
            self.set_mark(pid, pid, true, false)?;
            process::with_stopped(pid, |threads| {
                self.mark_threads(pid, threads, true)?;
                crate::fault::point("confine.marked");
                self.forget_guard_cache()?;
                // A process that died meanwhile never reaches the exit hook
                // again: its entry would stay.
                match self.check_entry(pid)? {
                    Entry::Confined => Ok(()),
                    Entry::Stale => Err(LoaderError::Process {
                        pid,
                        reason: "exited while it was being confined".into(),
                    }),
                }
            })
        };
        let result = confine();
        if result.is_err() {
            // Best effort: a process we failed to confine must not stay
            // half-marked or registered, and idle hooks must not stay
            // attached.
            let _ = process::with_stopped(pid, |threads| self.mark_threads(pid, threads, false));
            let _ = self.forget_process(pid);
            let _ = self.sync_hooks();
        }
        self.forget_pending(pid);
        result
    }

    /// Records a confine or release of `pid` before anything is done to
    /// the process, so that a loader killed midway leaves the next one what
    /// to finish (`recover_pending`): the process stopped and partly
    /// marked otherwise.
    fn record_pending(&mut self, pid: u32, releasing: bool) -> Result<(), LoaderError> {
        let pending = Pending {
            start_time: process::start_time(pid).ok_or_else(|| LoaderError::Process {
                pid,
                reason: "no such process".into(),
            })?,
            stopped_by_loader: u32::from(!process::is_stopped(pid)),
            releasing: u32::from(releasing),
        };
        self.map_ops += 1;
        self.maps
            .pending
            .insert(pid, pending, 0)
            .map_err(map_err("PENDING", pid.to_string()))
    }

    /// Drops the record of a confine or release that ran to its end (well
    /// or not: its caller has undone what failed). A record left behind
    /// would make the next loader unconfine the process, so a failure to
    /// drop it is said loudly.
    fn forget_pending(&mut self, pid: u32) {
        self.map_ops += 1;
        if let Err(error) = remove_ignoring_missing(self.maps.pending.remove(&pid)) {
            tracing::error!(
                pid,
                "could not drop the PENDING record of pid {pid} ({error}): a restarted daemon would unconfine it"
            );
        }
    }

    /// Finishes every confine or release a killed loader left half done
    /// (see `PENDING` in `probes/aa_policy.h`) the one way both can end
    /// safely: unconfined. A confine's client was told it failed, a
    /// release's asked for exactly that. The process is continued if it was
    /// stopped for it, with no mark on any thread and no registry entry.
    pub(super) fn recover_pending(&mut self) -> Result<Vec<Recovered>, LoaderError> {
        let pending: Vec<(u32, Pending)> =
            self.maps.pending.iter().filter_map(Result::ok).collect();
        let mut recovered = Vec::with_capacity(pending.len());
        for (pid, entry) in pending {
            self.map_ops += 1;
            if process::start_time(pid) == Some(entry.start_time) {
                let threads = process::threads(pid).unwrap_or_default();
                // A process whose threads keep appearing marked stays
                // registered (and so confined, and shown), never half so.
                let unmarked = self.mark_threads(pid, &threads, false).is_ok();
                if unmarked {
                    self.forget_process(pid)?;
                }
                if entry.stopped_by_loader != 0
                    && process::is_stopped(pid)
                    && let Ok(pidfd) = sys::pidfd_open(pid, false)
                {
                    let _ = sys::pidfd_send_signal(&pidfd, libc::SIGCONT);
                }
                recovered.push(Recovered {
                    pid,
                    was_release: entry.releasing != 0,
                    unmarked,
                });
            }
            remove_ignoring_missing(self.maps.pending.remove(&pid))
                .map_err(map_err("PENDING", pid.to_string()))?;
        }
        Ok(recovered)
    }

    /// Releases `pid`, which must be a confined process (checked, so that
    /// an unrelated process that got its number is never stopped).
    pub(super) fn release_process(&mut self, pid: u32) -> Result<(), LoaderError> {
        let registered = self.maps.confined.get(&pid, 0).is_ok();
        if !registered || !matches!(self.check_entry(pid)?, Entry::Confined) {
            if registered {
                self.forget_process(pid)?;
            }
            return Err(LoaderError::Process {
                pid,
                reason: "is not a confined process".into(),
            });
        }
        self.checked.remove(&pid);
        self.record_pending(pid, true)?;
        crate::fault::point("release.recorded");
        let result = process::with_stopped(pid, |threads| {
            let unmarked = self.mark_threads(pid, threads, false);
            crate::fault::point("release.unmarked");
            unmarked
        })
        .and_then(|()| self.forget_process(pid))
        .and_then(|()| self.sync_hooks().map(|_| ()));
        self.forget_pending(pid);
        result
    }

    /// Marks (or unmarks) `threads`, then settles (see the module doc):
    /// lists the threads again and marks what is not, until a listing finds
    /// every thread of `pid` as wanted. Marking is sound only after the
    /// leader's mark (`confine_process` writes it first). Unmarking has
    /// no such order to rely on (a marked thread's new threads are marked):
    /// a release whose threads keep appearing marked ends in an error and
    /// keeps the process registered, so `status` never hides a mark.
    pub(super) fn mark_threads(
        &mut self,
        pid: u32,
        threads: &[u32],
        confined: bool,
    ) -> Result<(), LoaderError> {
        for &tid in threads {
            crate::fault::point(if confined {
                "confine.thread"
            } else {
                "release.thread"
            });
            self.set_mark(pid, tid, confined, false)?;
        }
        for _ in 0..SETTLE_PASSES {
            // A process gone meanwhile has nothing left to mark; the callers
            // check that it is still alive.
            let Ok(listed) = process::threads(pid) else {
                return Ok(());
            };
            let mut changed = 0;
            for tid in listed {
                if self.set_mark(pid, tid, confined, true)? {
                    changed += 1;
                }
            }
            if changed == 0 {
                return Ok(());
            }
        }
        Err(LoaderError::Process {
            pid,
            reason: format!(
                "its threads kept appearing {} for {SETTLE_PASSES} listings",
                if confined { "unmarked" } else { "marked" }
            ),
        })
    }

    /// Marks or unmarks one thread of `pid`; with `if_needed`, only when its
    /// mark differs. Returns whether it wrote.
    fn set_mark(
        &mut self,
        pid: u32,
        tid: u32,
        confined: bool,
        if_needed: bool,
    ) -> Result<bool, LoaderError> {
        let pidfd = match sys::pidfd_open(tid, true) {
            Ok(pidfd) => pidfd,
            // The thread exited after it was listed: nothing to mark.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(false),
            Err(e) => {
                return Err(LoaderError::io(
                    format!("pidfd_open({tid}, PIDFD_THREAD) for pid {pid}"),
                    e,
                ));
            }
        };
        // A TID is reused only after its thread is reaped; if the TID is
        // still in this process after the pidfd pinned its task, the pidfd
        // names our thread and not another process's task.
        if !Path::new(&format!("/proc/{pid}/task/{tid}")).exists() {
            return Ok(false);
        }
        let map = self.maps.task_mark.fd().as_fd();
        if if_needed {
            self.map_ops += 1;
            let marked = sys::task_storage_contains::<TaskMark>(map, &pidfd).map_err(|e| {
                LoaderError::io(format!("bpf_map_lookup_elem TASK_MARK tid {tid}"), e)
            })?;
            if marked == confined {
                return Ok(false);
            }
        }
        self.map_ops += 1;
        let mark = TaskMark {
            confined: 1,
            flags: 0,
            guarded: 0,
        };
        let result = if confined {
            sys::task_storage_update(map, &pidfd, &mark)
        } else {
            sys::task_storage_delete(map, &pidfd)
        };
        // ENOENT: the pidfd's thread has exited since it was opened (task
        // storage refuses a task that is gone), so there is nothing to mark.
        if matches!(&result, Err(e) if e.raw_os_error() == Some(libc::ENOENT)) {
            return Ok(false);
        }
        result.map_err(|e| {
            LoaderError::io(
                format!("bpf_map_update_elem TASK_MARK pid {pid} tid {tid}"),
                e,
            )
        })?;
        Ok(true)
    }
}

/// Listings after which threads that keep appearing unmarked (created
/// faster than they are marked, by threads not marked yet) end the confine
/// with an error instead of a loop.
const SETTLE_PASSES: usize = 64;

/// A confine or release that a killed loader left half done, finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovered {
    pub pid: u32,
    /// A release (else a confine, undone).
    pub was_release: bool,
    /// Every thread was unmarked and the entry dropped; otherwise the
    /// process stays registered as confined.
    pub unmarked: bool,
}
