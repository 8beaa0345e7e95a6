//! The probes' programs: loading them, and attaching or detaching their
//! hooks.
//!
//! Why this exists: the hooks are the costly part (any `sys_enter` program
//! puts every task on the traced-syscall path), so they are attached on the
//! first confine and detached when nothing is confined. Links are pinned so
//! that enforcement outlives the loader and a new loader adopts them
//! instead of attaching twice.

use std::fs::File;
use std::path::PathBuf;

use aya::maps::MapError;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{BtfTracePoint, CgroupAttachMode, CgroupSockAddr};
use aya::{Btf, Ebpf, EbpfLoader};

use super::kernel::KernelLoader;
use super::maps::MAPS;
use super::pins::PinLayout;
use super::{Loader, LoaderError, sys};

static SYSCALL_GUARD_OBJ: &[u8] = aya::include_bytes_aligned!("../../probes/syscall_guard.bpf.o");
static TASK_LIFECYCLE_OBJ: &[u8] = aya::include_bytes_aligned!("../../probes/task_lifecycle.bpf.o");
static EGRESS_OBJ: &[u8] = aya::include_bytes_aligned!("../../probes/egress.bpf.o");

pub(super) const OBJECTS: [(&str, &[u8]); 3] = [
    ("syscall_guard", SYSCALL_GUARD_OBJ),
    ("task_lifecycle", TASK_LIFECYCLE_OBJ),
    ("egress", EGRESS_OBJ),
];

#[derive(Clone, Copy)]
pub(super) enum Attach {
    /// tp_btf program on this tracepoint.
    Tracing(&'static str),
    /// cgroup sock_addr program at the cgroup v2 root.
    CgroupRoot,
}

/// Every program, its object and how it attaches. Lifecycle hooks come
/// first so that marks propagate, and the per-CPU flag is kept, before the
/// guard reads them; detaching goes in reverse.
pub(super) const HOOKS: [(usize, &str, Attach); 9] = [
    (1, "task_switch", Attach::Tracing("sched_switch")),
    (1, "task_fork", Attach::Tracing("sched_process_fork")),
    (1, "task_exit", Attach::Tracing("sched_process_exit")),
    (1, "task_exec", Attach::Tracing("sched_process_exec")),
    (2, "egress_connect4", Attach::CgroupRoot),
    (2, "egress_connect6", Attach::CgroupRoot),
    (2, "egress_sendmsg4", Attach::CgroupRoot),
    (2, "egress_sendmsg6", Attach::CgroupRoot),
    (0, "syscall_guard", Attach::Tracing("sys_enter")),
];

impl KernelLoader {
    /// Whether the hooks are attached (their links are pinned).
    pub fn hooks_attached(&self) -> bool {
        HOOKS
            .iter()
            .any(|(_, program, _)| self.pins.link(program).exists())
    }

    /// The hooks attached through this pin dir: (program, link id, program id).
    pub fn attached_links(&self) -> Result<Vec<(&'static str, u32, u32)>, LoaderError> {
        let mut links = Vec::new();
        for (_, program, _) in HOOKS {
            let pin = self.pins.link(program);
            if !pin.exists() {
                continue;
            }
            let info_err = |e: aya::programs::links::LinkError| {
                LoaderError::io(
                    format!("reading pinned link {}", pin.display()),
                    std::io::Error::other(e),
                )
            };
            let link = FdLink::from(PinnedLink::from_pin(&pin).map_err(info_err)?);
            let info = link.info().map_err(info_err)?;
            links.push((program, info.id(), info.program_id()));
        }
        Ok(links)
    }

    /// Attaches every hook whose link is not pinned yet, and pins it.
    pub fn attach_hooks(&mut self) -> Result<(), LoaderError> {
        let mut cgroup_root: Option<File> = None;
        for (object, program, attach) in HOOKS {
            let pin = self.pins.link(program);
            if pin.exists() {
                continue;
            }
            let program_err = |source| LoaderError::Program {
                program,
                source: Box::new(source),
            };
            let ebpf = &mut self.objects[object];
            let link: FdLink = match attach {
                Attach::Tracing(_) => {
                    let prog: &mut BtfTracePoint = program_mut(ebpf, program)?;
                    let id = prog.attach().map_err(program_err)?;
                    prog.take_link(id).map_err(program_err)?.into()
                }
                Attach::CgroupRoot => {
                    if cgroup_root.is_none() {
                        let path = cgroup2_root()?;
                        cgroup_root = Some(File::open(&path).map_err(|e| {
                            LoaderError::io(format!("opening cgroup v2 root {}", path.display()), e)
                        })?);
                    }
                    let root = cgroup_root.as_ref().ok_or_else(|| {
                        LoaderError::io("cgroup v2 root", std::io::Error::other("not opened"))
                    })?;
                    let prog: &mut CgroupSockAddr = program_mut(ebpf, program)?;
                    // aya 0.14 forwards AllowMultiple as link flags, which
                    // 6.18 rejects; cgroup links are multi-attach anyway.
                    let id = prog
                        .attach(root, CgroupAttachMode::Single)
                        .map_err(program_err)?;
                    prog.take_link(id)
                        .map_err(program_err)?
                        .try_into()
                        .map_err(|e| {
                            LoaderError::io(format!("link of {program}"), std::io::Error::other(e))
                        })?
                }
            };
            link.pin(&pin).map_err(|e| {
                LoaderError::io(
                    format!("pinning link {}", pin.display()),
                    std::io::Error::other(e),
                )
            })?;
        }
        Ok(())
    }

    /// Detaches every hook, guard first.
    pub fn detach_hooks(&mut self) -> Result<(), LoaderError> {
        detach_links(&self.pins)
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
}

pub(super) fn detach_links(pins: &PinLayout) -> Result<(), LoaderError> {
    for (_, program, _) in HOOKS.iter().rev() {
        let pin = pins.link(program);
        if !pin.exists() {
            continue;
        }
        let link = PinnedLink::from_pin(&pin).map_err(|e| {
            LoaderError::io(
                format!("opening pinned link {}", pin.display()),
                std::io::Error::other(e),
            )
        })?;
        // Dropping the FdLink closes the last reference: the link detaches.
        drop(
            link.unpin()
                .map_err(|e| LoaderError::io(format!("unpinning {}", pin.display()), e))?,
        );
    }
    Ok(())
}

pub(super) fn load_object(
    name: &'static str,
    bytes: &[u8],
    pins: &PinLayout,
    btf: &Btf,
) -> Result<Ebpf, LoaderError> {
    let maps_dir = pins.maps();
    let mut loader = EbpfLoader::new();
    loader.btf(Some(btf)).allow_unsupported_maps();
    for map in MAPS {
        loader.map_pin_path(map, maps_dir.join(map));
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
        Attach::CgroupRoot => {
            let prog: &mut CgroupSockAddr = program_mut(ebpf, program)?;
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
