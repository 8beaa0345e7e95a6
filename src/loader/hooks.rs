//! The probes' programs: loading them, attaching and detaching their hooks,
//! and keeping the attachments alive.
//!
//! Why this exists: the hooks are the costly part (any `sys_enter` program
//! puts every task on the traced-syscall path), so they are attached on the
//! first confine and detached when nothing is confined. Each attachment is
//! a BPF link with two references: a pin under `<pin dir>/v<ABI>/links`, so
//! that enforcement outlives the loader and a new loader adopts it, and a
//! descriptor this loader holds for its whole life, so that removing a pin
//! (a confined root process running `rm`) detaches nothing while a loader
//! runs. `repair_pins` puts back what was removed.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use aya::maps::MapError;
use aya::programs::{BtfTracePoint, CgroupSkb, CgroupSock, CgroupSockAddr, CgroupSockopt};
use aya::{Btf, Ebpf, EbpfLoader};

use super::kernel::KernelLoader;
use super::maps::MAPS;
use super::pins::PinLayout;
use super::{Loader, LoaderError, sys};

static SYSCALL_GUARD_OBJ: &[u8] = aya::include_bytes_aligned!("../../probes/syscall_guard.bpf.o");
static TASK_LIFECYCLE_OBJ: &[u8] = aya::include_bytes_aligned!("../../probes/task_lifecycle.bpf.o");
static EGRESS_OBJ: &[u8] = aya::include_bytes_aligned!("../../probes/egress.bpf.o");
static IO_URING_GUARD_OBJ: &[u8] = aya::include_bytes_aligned!("../../probes/io_uring_guard.bpf.o");
static FILE_ACCESS_OBJ: &[u8] = aya::include_bytes_aligned!("../../probes/file_access.bpf.o");

pub(super) const OBJECTS: [(&str, &[u8]); 5] = [
    ("syscall_guard", SYSCALL_GUARD_OBJ),
    ("task_lifecycle", TASK_LIFECYCLE_OBJ),
    ("egress", EGRESS_OBJ),
    ("io_uring_guard", IO_URING_GUARD_OBJ),
    ("file_access", FILE_ACCESS_OBJ),
];

/// How a program attaches.
#[derive(Clone, Copy)]
pub(super) enum Attach {
    /// tp_btf program on this tracepoint.
    Tracing(&'static str),
    /// A cgroup program at the cgroup v2 root, with its kind and the
    /// kernel's `enum bpf_attach_type` value.
    Cgroup(Cgroup, u32),
}

/// The cgroup program kinds the probes use.
#[derive(Clone, Copy)]
pub(super) enum Cgroup {
    /// connect4/6, sendmsg4/6, recvmsg4/6, getpeername4/6.
    SockAddr,
    /// sock_create.
    Sock,
    /// setsockopt.
    Sockopt,
    /// cgroup_skb egress.
    Skb,
}

/// Every program, its object and how it attaches. Lifecycle hooks come
/// first so that marks propagate before the guards read them; the syscall
/// guard comes last; detaching goes in reverse.
pub(super) const HOOKS: [(usize, &str, Attach); 18] = [
    (1, "task_new", Attach::Tracing("task_newtask")),
    (1, "task_exit", Attach::Tracing("sched_process_exit")),
    (1, "task_exec", Attach::Tracing("sched_process_exec")),
    (3, "io_uring_guard", Attach::Tracing("io_uring_submit_req")),
    (2, "egress_socket", Attach::Cgroup(Cgroup::Sock, 2)),
    (2, "egress_connect4", Attach::Cgroup(Cgroup::SockAddr, 10)),
    (2, "egress_connect6", Attach::Cgroup(Cgroup::SockAddr, 11)),
    (2, "egress_sendmsg4", Attach::Cgroup(Cgroup::SockAddr, 14)),
    (2, "egress_sendmsg6", Attach::Cgroup(Cgroup::SockAddr, 15)),
    (2, "dns_recvmsg4", Attach::Cgroup(Cgroup::SockAddr, 19)),
    (2, "dns_recvmsg6", Attach::Cgroup(Cgroup::SockAddr, 20)),
    (2, "dns_peername4", Attach::Cgroup(Cgroup::SockAddr, 29)),
    (2, "dns_peername6", Attach::Cgroup(Cgroup::SockAddr, 30)),
    (2, "egress_sockopt", Attach::Cgroup(Cgroup::Sockopt, 22)),
    (2, "egress_packet", Attach::Cgroup(Cgroup::Skb, 1)),
    (4, "file_access", Attach::Tracing("sys_exit")),
    (
        4,
        "file_access_io_uring",
        Attach::Tracing("io_uring_complete"),
    ),
    (0, "syscall_guard", Attach::Tracing("sys_enter")),
];

/// How many hooks a fully attached loader holds.
pub const HOOK_COUNT: usize = HOOKS.len();

/// A hook this loader keeps attached: its link's descriptor.
pub(super) struct HeldLink {
    program: &'static str,
    fd: OwnedFd,
}

/// An object (map or link) this loader holds, and where its pin belongs.
struct Pinned<'a> {
    what: &'static str,
    fd: &'a OwnedFd,
    pin: PathBuf,
}

/// What the kernel has attached for one hook, read from the link itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookState {
    pub program: &'static str,
    pub link_id: u32,
    pub program_id: u32,
    /// Whether the link still runs its program (a cgroup link can be
    /// detached with `BPF_LINK_DETACH` while held); `repair` attaches anew.
    pub attached: bool,
    /// Whether the pin is in place; `repair` puts a missing one back.
    pub pinned: bool,
}

fn pin_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> LoaderError + '_ {
    move |e| LoaderError::io(format!("pinning {}", path.display()), e)
}

/// Whether the object pinned at `pin` is the one behind `fd`. An error
/// when that cannot be told: out of descriptors or memory says nothing
/// about the pin, and re-pinning on it would only make more pin events.
fn pin_holds(pin: &std::path::Path, fd: &OwnedFd) -> std::io::Result<bool> {
    let pinned = match sys::obj_get(pin) {
        Ok(pinned) => pinned,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
            ) =>
        {
            return Err(e);
        }
        Err(_) => return Ok(false),
    };
    Ok(matches!(
        (sys::object_id(pinned.as_fd()), sys::object_id(fd.as_fd())),
        (Ok(a), Ok(b)) if a == b
    ))
}

impl KernelLoader {
    /// Takes a descriptor on every link an earlier loader pinned here.
    pub(super) fn adopt_links(&mut self) -> Result<(), LoaderError> {
        for (_, program, _) in HOOKS {
            let pin = self.pins.link(program);
            if self.links.iter().any(|held| held.program == program) || !pin.exists() {
                continue;
            }
            let fd = sys::obj_get(&pin).map_err(|e| {
                LoaderError::io(format!("adopting pinned link {}", pin.display()), e)
            })?;
            self.links.push(HeldLink { program, fd });
        }
        Ok(())
    }

    /// Whether any hook is attached through this loader.
    pub fn hooks_attached(&self) -> bool {
        self.links
            .iter()
            .any(|held| sys::link_info(held.fd.as_fd()).is_ok_and(|info| info.attached))
    }

    /// The hooks the kernel has attached for this pin dir, from the links
    /// this loader holds (not from the pins, which a root process can
    /// remove).
    pub fn hook_states(&self) -> Result<Vec<HookState>, LoaderError> {
        let mut states = Vec::with_capacity(self.links.len());
        for held in &self.links {
            let info = sys::link_info(held.fd.as_fd()).map_err(|e| {
                LoaderError::io(
                    format!("reading link of {} (BPF_OBJ_GET_INFO_BY_FD)", held.program),
                    e,
                )
            })?;
            states.push(HookState {
                program: held.program,
                link_id: info.id,
                program_id: info.program_id,
                attached: info.attached,
                pinned: pin_holds(&self.pins.link(held.program), &held.fd).is_ok_and(|held| held),
            });
        }
        Ok(states)
    }

    /// The hooks attached through this pin dir: (program, link id, program id).
    pub fn attached_links(&self) -> Result<Vec<(&'static str, u32, u32)>, LoaderError> {
        Ok(self
            .hook_states()?
            .into_iter()
            .map(|state| (state.program, state.link_id, state.program_id))
            .collect())
    }

    /// Attaches every hook not attached yet, pins it and keeps its link.
    pub fn attach_hooks(&mut self) -> Result<(), LoaderError> {
        self.adopt_links()?;
        // Threads this process made while nothing was attached to see them.
        self.register_loader_threads(false)?;
        let mut cgroup_root: Option<File> = None;
        // Gone if the pin dir was renamed or removed while no hook was
        // attached (the repair puts back only what is held).
        let links_dir = self.pins.links();
        std::fs::create_dir_all(&links_dir).map_err(pin_err(&links_dir))?;
        for (object, program, attach) in HOOKS {
            if self.links.iter().any(|held| held.program == program) {
                continue;
            }
            let fd = attach_program(&mut self.objects[object], program, attach, &mut cgroup_root)?;
            let pin = self.pins.link(program);
            sys::obj_pin(fd.as_fd(), &pin).map_err(pin_err(&pin))?;
            self.links.push(HeldLink { program, fd });
        }
        // Marks only ever appear on tasks created by a confined task (which
        // clears the cache itself) or written by `confine`; a cache left
        // from an earlier attachment says nothing about either.
        self.forget_guard_cache()?;
        Ok(())
    }

    /// Detaches every hook, guard first: removes its pin and drops the
    /// link this loader held.
    pub fn detach_hooks(&mut self) -> Result<(), LoaderError> {
        for (_, program, _) in HOOKS.iter().rev() {
            let pin = self.pins.link(program);
            match std::fs::remove_file(&pin) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LoaderError::io(format!("unpinning {}", pin.display()), e)),
            }
            self.links.retain(|held| held.program != *program);
        }
        Ok(())
    }

    /// Detaches the hooks when nothing is confined and the registry is known
    /// to be complete; returns whether they are attached afterwards.
    pub fn sync_hooks(&mut self) -> Result<bool, LoaderError> {
        let confined = self.confined()?;
        let counters = self.counters()?;
        if confined.is_empty() && counters.registry_full == 0 && counters.mark_failed == 0 {
            self.detach_hooks()?;
        }
        Ok(self.hooks_attached())
    }

    /// Puts back what someone else undid: a hook whose link was detached
    /// (`BPF_LINK_DETACH`) is attached anew, and every pin of a map or link
    /// this loader holds that is missing or names another object is pinned
    /// again; returns what it repaired. A removed pin detached nothing
    /// meanwhile: this loader's descriptors kept every object alive.
    pub fn repair(&mut self) -> Result<Vec<&'static str>, LoaderError> {
        let mut repaired = Vec::new();
        let detached: Vec<&'static str> = self
            .links
            .iter()
            .filter(|held| sys::link_info(held.fd.as_fd()).is_ok_and(|info| !info.attached))
            .map(|held| held.program)
            .collect();
        if !detached.is_empty() {
            self.links.retain(|held| !detached.contains(&held.program));
            for program in &detached {
                let pin = self.pins.link(program);
                match std::fs::remove_file(&pin) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(pin_err(&pin)(e)),
                }
            }
            self.attach_hooks()?;
            repaired.extend(detached);
        }
        repaired.extend(self.repair_pins()?);
        Ok(repaired)
    }

    fn repair_pins(&mut self) -> Result<Vec<&'static str>, LoaderError> {
        let mut held: Vec<Pinned<'_>> = self
            .links
            .iter()
            .map(|link| Pinned {
                what: link.program,
                fd: &link.fd,
                pin: self.pins.link(link.program),
            })
            .collect();
        held.extend(self.map_fds.iter().map(|(name, fd)| Pinned {
            what: name,
            fd,
            pin: self.pins.map(name),
        }));
        let mut repaired = Vec::new();
        for object in held {
            if pin_holds(&object.pin, object.fd).map_err(|e| {
                LoaderError::io(format!("checking the pin {}", object.pin.display()), e)
            })? {
                continue;
            }
            if let Some(dir) = object.pin.parent() {
                std::fs::create_dir_all(dir).map_err(pin_err(dir))?;
            }
            match std::fs::remove_file(&object.pin) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(pin_err(&object.pin)(e)),
            }
            sys::obj_pin(object.fd.as_fd(), &object.pin).map_err(pin_err(&object.pin))?;
            repaired.push(object.what);
        }
        Ok(repaired)
    }
}

/// Attaches one program and hands back its link's descriptor.
fn attach_program(
    ebpf: &mut Ebpf,
    program: &'static str,
    attach: Attach,
    cgroup_root: &mut Option<File>,
) -> Result<OwnedFd, LoaderError> {
    let program_err = |source| LoaderError::Program {
        program,
        source: Box::new(source),
    };
    let prog = ebpf.program(program).ok_or_else(|| LoaderError::Program {
        program,
        source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    })?;
    let prog_fd = prog.fd().map_err(program_err)?;
    // The links are created here rather than through aya 0.14, which keeps
    // a link's descriptor private (so it could not be held or re-pinned),
    // cannot hand over a setsockopt link, and forwards AllowMultiple as
    // link flags, which 6.18 rejects (cgroup links are multi-attach
    // anyway).
    match attach {
        Attach::Tracing(tracepoint) => sys::raw_tracepoint_open(prog_fd.as_fd()).map_err(|e| {
            LoaderError::io(
                format!("attaching {program} to {tracepoint} (BPF_RAW_TRACEPOINT_OPEN)"),
                e,
            )
        }),
        Attach::Cgroup(_, attach_type) => {
            let root = cgroup_root_file(cgroup_root)?;
            sys::link_create(prog_fd.as_fd(), root.as_fd(), attach_type).map_err(|e| {
                LoaderError::io(
                    format!("attaching {program} to the cgroup v2 root (BPF_LINK_CREATE)"),
                    e,
                )
            })
        }
    }
}

/// The cgroup v2 root, opened once per attach round.
fn cgroup_root_file(cache: &mut Option<File>) -> Result<&File, LoaderError> {
    if cache.is_none() {
        let path = cgroup2_root()?;
        *cache = Some(File::open(&path).map_err(|e| {
            LoaderError::io(format!("opening cgroup v2 root {}", path.display()), e)
        })?);
    }
    cache
        .as_ref()
        .ok_or_else(|| LoaderError::io("cgroup v2 root", std::io::Error::other("not opened")))
}

/// Removes the pins of every hook under `pins` (for `unload`, which holds
/// no descriptors: the links detach as their last pin goes).
pub(super) fn detach_links(pins: &PinLayout) -> Result<(), LoaderError> {
    for (_, program, _) in HOOKS.iter().rev() {
        let pin = pins.link(program);
        match std::fs::remove_file(&pin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LoaderError::io(format!("unpinning {}", pin.display()), e)),
        }
    }
    Ok(())
}

pub(super) fn load_object(
    name: &'static str,
    bytes: &[u8],
    pins: &PinLayout,
    btf: &Btf,
) -> Result<Ebpf, LoaderError> {
    let mut loader = EbpfLoader::new();
    loader.btf(Some(btf)).allow_unsupported_maps();
    for map in MAPS {
        loader.map_pin_path(map, pins.map(map));
    }
    loader.load(bytes).map_err(|source| match &source {
        aya::EbpfError::MapError(MapError::CreateError { io_error, .. })
            if io_error.raw_os_error() == Some(libc::EPERM) =>
        {
            LoaderError::NotPrivileged {
                what: "creating BPF maps (the kernel said EPERM)",
                uid: sys::effective_uid(),
            }
        }
        _ => LoaderError::Load {
            object: name,
            source: Box::new(source),
        },
    })
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut T, LoaderError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(program)
        .ok_or_else(|| LoaderError::Program {
            program,
            source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
        })?;
    prog.try_into().map_err(|source| LoaderError::Program {
        program,
        source: Box::new(source),
    })
}

pub(super) fn load_program(
    ebpf: &mut Ebpf,
    program: &'static str,
    attach: Attach,
    btf: &Btf,
) -> Result<(), LoaderError> {
    let program_err = |source| LoaderError::Program {
        program,
        source: Box::new(source),
    };
    match attach {
        Attach::Tracing(tracepoint) => {
            let prog: &mut BtfTracePoint = program_mut(ebpf, program)?;
            prog.load(tracepoint, btf).map_err(program_err)
        }
        Attach::Cgroup(Cgroup::SockAddr, _) => {
            let prog: &mut CgroupSockAddr = program_mut(ebpf, program)?;
            prog.load().map_err(program_err)
        }
        Attach::Cgroup(Cgroup::Sock, _) => {
            let prog: &mut CgroupSock = program_mut(ebpf, program)?;
            prog.load().map_err(program_err)
        }
        Attach::Cgroup(Cgroup::Sockopt, _) => {
            let prog: &mut CgroupSockopt = program_mut(ebpf, program)?;
            prog.load().map_err(program_err)
        }
        Attach::Cgroup(Cgroup::Skb, _) => {
            let prog: &mut CgroupSkb = program_mut(ebpf, program)?;
            prog.load().map_err(program_err)
        }
    }
}

/// The cgroup v2 mount point, from /proc/self/mountinfo: `/sys/fs/cgroup` on
/// pure-v2 hosts, `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_root() -> Result<PathBuf, LoaderError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| LoaderError::io("reading /proc/self/mountinfo", e))?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .ok_or_else(|| {
            LoaderError::io(
                "finding the cgroup v2 mount",
                std::io::Error::other("no cgroup2 filesystem is mounted"),
            )
        })
}
