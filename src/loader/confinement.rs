//! Marking tasks as confined, and the registry of confined processes.
//!
//! Why this exists: confinement belongs to the task (a BPF task-storage
//! mark), written through a pidfd so a reused PID is never marked; the
//! registry (a hash of TGIDs) exists because task storage cannot be
//! enumerated. Marks are written while the process is stopped
//! (`process::with_stopped`), so no thread is created unmarked meanwhile.

use std::os::fd::AsFd;
use std::path::Path;

use super::abi::TaskMark;
use super::kernel::KernelLoader;
use super::{LoaderError, sys};

impl KernelLoader {
    /// Whether the task `tid` carries a confinement mark.
    pub fn is_task_marked(&mut self, tid: u32) -> Result<bool, LoaderError> {
        let pidfd = sys::pidfd_open(tid, true)
            .map_err(|e| LoaderError::io(format!("pidfd_open({tid}, PIDFD_THREAD)"), e))?;
        self.map_ops += 1;
        sys::task_storage_contains::<TaskMark>(self.maps.task_mark.fd().as_fd(), &pidfd)
            .map_err(|e| LoaderError::io(format!("bpf_map_lookup_elem TASK_MARK tid {tid}"), e))
    }

    pub(super) fn mark_threads(
        &mut self,
        pid: u32,
        threads: &[u32],
        confined: bool,
    ) -> Result<(), LoaderError> {
        let mark = TaskMark {
            confined: 1,
            _pad: 0,
        };
        for &tid in threads {
            let pidfd = match sys::pidfd_open(tid, true) {
                Ok(pidfd) => pidfd,
                // The thread exited after it was listed: nothing to mark.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
                Err(e) => {
                    return Err(LoaderError::io(
                        format!("pidfd_open({tid}, PIDFD_THREAD) for pid {pid}"),
                        e,
                    ));
                }
            };
            // A TID is reused only after its thread is reaped; if the TID is
            // still in this process after the pidfd pinned its task, the
            // pidfd names our thread and not another process's task.
            if !Path::new(&format!("/proc/{pid}/task/{tid}")).exists() {
                continue;
            }
            self.map_ops += 1;
            let result = if confined {
                sys::task_storage_update(self.maps.task_mark.fd().as_fd(), &pidfd, &mark)
            } else {
                sys::task_storage_delete(self.maps.task_mark.fd().as_fd(), &pidfd)
            };
            result.map_err(|e| {
                LoaderError::io(
                    format!("bpf_map_update_elem TASK_MARK pid {pid} tid {tid}"),
                    e,
                )
            })?;
        }
        Ok(())
    }
}
