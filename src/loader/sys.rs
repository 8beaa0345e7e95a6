//! Raw system calls the loader needs and aya 0.14 does not wrap: task-storage
//! map elements keyed by pidfd, `pidfd_open`, an RCU grace period, and bpffs.
//!
//! Why isolated here: every `unsafe` FFI call of the loader lives in this
//! file, each returning an `io::Error` that the caller names (which call,
//! which map, which pid).

use std::ffi::CString;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// The `BPF_MAP_*_ELEM` member of the kernel's `union bpf_attr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr`, zero-padded as the kernel requires for unknown tails.
#[repr(C, align(8))]
union BpfAttr {
    elem: ManuallyDrop<ElemAttr>,
    _size: [u8; 128],
}

fn bpf_elem(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    key: *const u8,
    value: *const u8,
) -> io::Result<()> {
    // SAFETY: an all-zero bpf_attr is valid; the pointers outlive the call.
    let mut attr: BpfAttr = unsafe { std::mem::zeroed() };
    attr.elem = ManuallyDrop::new(ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as u64,
        value: value as u64,
        flags: 0,
    });
    // SAFETY: bpf(2) with a correctly sized attr; key/value point to live data.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &mut attr as *mut BpfAttr,
            std::mem::size_of::<BpfAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets a task-storage value for the task behind `pidfd`.
pub fn task_storage_update<V: Copy>(
    map: BorrowedFd<'_>,
    pidfd: &OwnedFd,
    value: &V,
) -> io::Result<()> {
    let key = pidfd.as_raw_fd();
    bpf_elem(
        BPF_MAP_UPDATE_ELEM,
        map,
        (&key as *const i32).cast(),
        (value as *const V).cast(),
    )
}

/// Removes the task-storage value of the task behind `pidfd`; a task that
/// has none is not an error.
pub fn task_storage_delete(map: BorrowedFd<'_>, pidfd: &OwnedFd) -> io::Result<()> {
    let key = pidfd.as_raw_fd();
    match bpf_elem(
        BPF_MAP_DELETE_ELEM,
        map,
        (&key as *const i32).cast(),
        std::ptr::null(),
    ) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Whether the task behind `pidfd` has a task-storage value.
pub fn task_storage_contains<V: Copy + Default>(
    map: BorrowedFd<'_>,
    pidfd: &OwnedFd,
) -> io::Result<bool> {
    let key = pidfd.as_raw_fd();
    let mut value = V::default();
    match bpf_elem(
        BPF_MAP_LOOKUP_ELEM,
        map,
        (&key as *const i32).cast(),
        (&mut value as *mut V).cast(),
    ) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `pidfd_open(2)`. With `thread`, `id` is a thread id (PIDFD_THREAD, 6.9+),
/// so each thread of a process can be addressed on its own.
pub fn pidfd_open(id: u32, thread: bool) -> io::Result<OwnedFd> {
    const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;
    let flags = if thread { PIDFD_THREAD } else { 0 };
    // SAFETY: plain syscall; the returned fd is owned by us.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, id as libc::pid_t, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_send_signal(2)`: signals exactly the process the pidfd names, never
/// a later owner of its PID number.
pub fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    // SAFETY: plain syscall with a valid fd and a null siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// The `BPF_MAP_CREATE` member of `union bpf_attr` (the fields used here).
#[repr(C)]
#[derive(Clone, Copy)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
}

#[repr(C, align(8))]
union CreateAttr {
    create: MapCreateAttr,
    _size: [u8; 128],
}

fn create_map(map_type: u32, inner_map_fd: Option<BorrowedFd<'_>>) -> io::Result<OwnedFd> {
    // SAFETY: an all-zero bpf_attr is valid; the kernel reads `create` only.
    let mut attr: CreateAttr = unsafe { std::mem::zeroed() };
    attr.create = MapCreateAttr {
        map_type,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
        inner_map_fd: inner_map_fd.map_or(0, |fd| fd.as_raw_fd() as u32),
    };
    // SAFETY: bpf(2) with a correctly sized attr.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &mut attr as *mut CreateAttr,
            std::mem::size_of::<CreateAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// RCU grace periods on demand: after `wait` returns, every BPF program
/// invocation that started before it has finished (~10 ms).
///
/// Why a map-in-map: updating an array-of-maps slot from a syscall makes
/// the kernel call `synchronize_rcu()` before returning (so userspace knows
/// no program still sees the old inner map). Unlike
/// `membarrier(MEMBARRIER_CMD_GLOBAL)`, that always waits: it is not refused
/// under `nohz_full`, nor skipped when a single CPU is online. The maps are
/// private to the loader and hold nothing.
pub struct GracePeriod {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl GracePeriod {
    pub fn new() -> io::Result<GracePeriod> {
        let inner = create_map(BPF_MAP_TYPE_ARRAY, None)?;
        let outer = create_map(BPF_MAP_TYPE_ARRAY_OF_MAPS, Some(inner.as_fd()))?;
        Ok(GracePeriod { outer, inner })
    }

    pub fn wait(&self) -> io::Result<()> {
        let key = 0u32;
        let value = self.inner.as_raw_fd() as u32;
        bpf_elem(
            BPF_MAP_UPDATE_ELEM,
            self.outer.as_fd(),
            (&key as *const u32).cast(),
            (&value as *const u32).cast(),
        )
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type as i64 == BPF_FS_MAGIC)
}

/// Mounts a bpf filesystem at `path`, as systemd does at boot.
pub fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let bpf = c"bpf";
    // SAFETY: all strings are NUL-terminated and live across the call.
    let rc = unsafe {
        libc::mount(
            bpf.as_ptr(),
            target.as_ptr(),
            bpf.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when another holder has it.
pub fn try_lock_exclusive(file: &std::fs::File) -> io::Result<bool> {
    // SAFETY: flock on a valid fd we own for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(error)
    }
}

pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}
