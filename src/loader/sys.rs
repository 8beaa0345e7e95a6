//! Raw system calls the loader needs and aya 0.14 does not wrap: task-storage
//! map elements keyed by pidfd, `pidfd_open`, an RCU grace period, bpffs, and
//! pinning or inspecting a BPF object through a descriptor the loader keeps.
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

/// Whether the process behind `pidfd` has exited (a zombie, or reaped:
/// a pidfd outlives its process and then polls readable).
pub fn pidfd_exited(pidfd: &impl AsRawFd) -> bool {
    let mut pollfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; no waiting.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
    ready != 0 && (ready < 0 || pollfd.revents != 0)
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

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The `BPF_OBJ_*` member of `union bpf_attr`.
#[repr(C)]
#[derive(Clone, Copy)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// The `BPF_OBJ_GET_INFO_BY_FD` member of `union bpf_attr`.
#[repr(C)]
#[derive(Clone, Copy)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

#[repr(C, align(8))]
union ObjBpfAttr {
    obj: ObjAttr,
    info: InfoAttr,
    _size: [u8; 128],
}

fn bpf_obj(cmd: libc::c_long, attr: &mut ObjBpfAttr) -> io::Result<libc::c_long> {
    // SAFETY: bpf(2) with a correctly sized attr whose pointers outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut ObjBpfAttr,
            std::mem::size_of::<ObjBpfAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// `BPF_OBJ_GET`: a new descriptor for the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    // SAFETY: an all-zero bpf_attr is valid.
    let mut attr: ObjBpfAttr = unsafe { std::mem::zeroed() };
    attr.obj = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf_obj(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_OBJ_PIN`: pins the object behind `fd` at `path` (which must not exist).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    // SAFETY: an all-zero bpf_attr is valid.
    let mut attr: ObjBpfAttr = unsafe { std::mem::zeroed() };
    attr.obj = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    bpf_obj(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// What the kernel says about a link.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkInfo {
    pub id: u32,
    pub program_id: u32,
    /// Whether it still runs its program: a cgroup link detached with
    /// `BPF_LINK_DETACH` lives on with cgroup id 0.
    pub attached: bool,
}

/// The head of `struct bpf_link_info` and its cgroup member.
#[repr(C)]
#[derive(Default)]
struct LinkInfoHead {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    /// `cgroup.cgroup_id` for cgroup links.
    cgroup_id: u64,
    _rest: [u64; 6],
}

const BPF_LINK_TYPE_CGROUP: u32 = 3;

fn info_head(fd: BorrowedFd<'_>) -> io::Result<LinkInfoHead> {
    let mut info = LinkInfoHead::default();
    // SAFETY: an all-zero bpf_attr is valid.
    let mut attr: ObjBpfAttr = unsafe { std::mem::zeroed() };
    attr.info = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<LinkInfoHead>() as u32,
        info: (&mut info as *mut LinkInfoHead) as u64,
    };
    bpf_obj(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// The kernel's id of a map or link (both info structs start with a type,
/// then the id).
pub fn object_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    info_head(fd).map(|info| info.id)
}

/// The kernel's view of a link.
pub fn link_info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let info = info_head(fd)?;
    Ok(LinkInfo {
        id: info.id,
        program_id: info.prog_id,
        attached: info.link_type != BPF_LINK_TYPE_CGROUP || info.cgroup_id != 0,
    })
}

const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_LINK_CREATE: libc::c_long = 28;

/// The `BPF_RAW_TRACEPOINT_OPEN` member of `union bpf_attr`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawTracepointAttr {
    name: u64,
    prog_fd: u32,
}

/// The head of the `BPF_LINK_CREATE` member of `union bpf_attr`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

#[repr(C, align(8))]
union LinkBpfAttr {
    raw_tracepoint: RawTracepointAttr,
    link_create: LinkCreateAttr,
    _size: [u8; 128],
}

fn bpf_link(cmd: libc::c_long, attr: &mut LinkBpfAttr) -> io::Result<OwnedFd> {
    // SAFETY: bpf(2) with a correctly sized attr.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut LinkBpfAttr,
            std::mem::size_of::<LinkBpfAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches a tp_btf program to the tracepoint it was loaded for; the
/// returned link keeps it attached.
pub fn raw_tracepoint_open(prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: an all-zero bpf_attr is valid.
    let mut attr: LinkBpfAttr = unsafe { std::mem::zeroed() };
    attr.raw_tracepoint = RawTracepointAttr {
        name: 0,
        prog_fd: prog.as_raw_fd() as u32,
    };
    bpf_link(BPF_RAW_TRACEPOINT_OPEN, &mut attr)
}

/// `BPF_LINK_CREATE`: attaches `prog` to `target` (a cgroup) as
/// `attach_type`; the returned link keeps it attached.
pub fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    // SAFETY: an all-zero bpf_attr is valid.
    let mut attr: LinkBpfAttr = unsafe { std::mem::zeroed() };
    attr.link_create = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: target.as_raw_fd() as u32,
        attach_type,
        flags: 0,
    };
    bpf_link(BPF_LINK_CREATE, &mut attr)
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

/// This process's process group.
pub fn process_group() -> u32 {
    // SAFETY: getpgrp cannot fail.
    unsafe { libc::getpgrp() as u32 }
}

pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}
