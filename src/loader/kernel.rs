//! `KernelLoader`: the aya implementation of `Loader`, in process.
//!
//! Why this exists: it owns the probes' lifetime (load, pin, adopt, attach,
//! detach, unload) and is the only writer of their maps. Its parts live
//! beside it, one concern each: `pins` (the pin dir and its lock), `hooks`
//! (programs and attachments), `generations` (the atomic apply protocol),
//! `confinement` (marks and the registry), `maps` and `rule_keys` (the map
//! layouts).

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::Path;

use aya::Btf;
use aya::Ebpf;
use aya::maps::{MapData, RingBuf};

use super::abi;
use super::hooks::{HOOKS, HeldLink, OBJECTS, load_object, load_program};
use super::maps::{MAPS, Maps, map_err, read_counters, take_maps};
use super::pins::{ensure_bpffs, lock_pin_dir};
use super::{
    Applied, ApplyReport, Loader, LoaderError, PolicyDigest, ProbeCounters, io_uring_ops, process,
    sys,
};
use crate::delta::Delta;
use crate::guard::{self, ConfinedSet};
use crate::ruleset::{Arch, RuleSet};

pub use super::confinement::MarkReader;
pub use super::hooks::{HOOK_COUNT, HookState, cgroup2_root};
pub use super::maps::{PinnedCounters, pinned_counters, read_applied, read_slots};
pub use super::pins::{DEFAULT_PIN_DIR, PinLayout, unload};

/// The aya loader. See the module doc for the protocol it follows.
pub struct KernelLoader {
    pub(super) pins: PinLayout,
    /// An exclusive flock on the pin dir, held while this loader lives: two
    /// loaders on one pin dir would detach each other's hooks and write the
    /// same inactive slot.
    pub(super) _lock: std::fs::File,
    pub(super) objects: Vec<Ebpf>,
    pub(super) maps: Maps,
    /// A descriptor on every pinned map, so a removed pin can be put back.
    pub(super) map_fds: Vec<(&'static str, OwnedFd)>,
    /// The hooks attached through this loader (see `hooks`).
    pub(super) links: Vec<HeldLink>,
    /// Registry entries found confined, by pidfd (see `confinement`).
    pub(super) checked: BTreeMap<u32, OwnedFd>,
    /// What the active slot holds; re-read from the maps at open.
    pub(super) mirror: Applied,
    pub(super) active_slot: u32,
    pub(super) map_ops: u64,
    /// An entry's inactive-slot bits may disagree with its active ones.
    pub(super) dirty: bool,
    pub(super) grace: sys::GracePeriod,
}

impl KernelLoader {
    /// Loads the probes (or adopts the ones pinned under `pin_dir`) and reads
    /// back the rules in force. Attaches nothing: see `confine`.
    pub fn open(pin_dir: &Path) -> Result<KernelLoader, LoaderError> {
        let uid = sys::effective_uid();
        if uid != 0 {
            return Err(LoaderError::NotPrivileged {
                what: "loading eBPF probes",
                uid,
            });
        }
        ensure_bpffs(pin_dir)?;
        let pins = PinLayout::new(pin_dir);
        std::fs::create_dir_all(pin_dir)
            .map_err(|e| LoaderError::io(format!("creating pin dir {}", pin_dir.display()), e))?;
        // Locked before anything is created inside: a refused second loader
        // leaves no trace.
        let lock = lock_pin_dir(pin_dir)?;
        for dir in [pins.maps(), pins.links()] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| LoaderError::io(format!("creating pin dir {}", dir.display()), e))?;
        }
        let btf = Btf::from_sys_fs().map_err(|e| {
            LoaderError::io(
                "reading kernel BTF from /sys/kernel/btf/vmlinux",
                std::io::Error::other(e),
            )
        })?;

        let mut objects = Vec::with_capacity(OBJECTS.len());
        for (name, bytes) in OBJECTS {
            objects.push(load_object(name, bytes, &pins, &btf)?);
        }
        for (object, program, attach) in HOOKS {
            load_program(&mut objects[object], program, attach, &btf)?;
        }
        let maps = take_maps(&mut objects[0])?;
        // The loaded programs hold their maps in the kernel; this process
        // needs one descriptor per pinned map (`maps`, `map_fds`), not one
        // per object and map (~100 more, which a descriptor limit would
        // take from clients and reloads).
        for object in &mut objects {
            let names: Vec<String> = object.maps().map(|(name, _)| name.to_owned()).collect();
            for name in names {
                drop(object.take_map(&name));
            }
        }
        let mut map_fds = Vec::with_capacity(MAPS.len());
        for name in MAPS {
            let pin = pins.map(name);
            let fd = sys::obj_get(&pin)
                .map_err(|e| LoaderError::io(format!("opening pinned map {}", pin.display()), e))?;
            map_fds.push((name, fd));
        }
        let mut loader = KernelLoader {
            pins,
            _lock: lock,
            objects,
            maps,
            map_fds,
            links: Vec::new(),
            checked: BTreeMap::new(),
            mirror: Applied {
                generation: 0,
                rules: RuleSet::unrestricted(),
                policy: None,
            },
            active_slot: 0,
            map_ops: 0,
            dirty: false,
            grace: sys::GracePeriod::new().map_err(|e| {
                LoaderError::io("creating the grace-period maps (bpf_map_create)", e)
            })?,
        };
        loader.adopt_links()?;
        loader.write_io_uring_ops()?;
        loader.write_config()?;
        loader.register_loader_threads(true)?;
        loader.mirror = loader.read_back()?;
        // A loader killed during an apply leaves the inactive slot half
        // written (the active one is always whole: see `generations`).
        // An apply writes only its delta there, so it must start from a
        // copy of the active slot.
        loader.resync_inactive()?;
        let recovered = loader.recover_pending()?;
        if !recovered.is_empty() {
            // Hooks kept attached only for a process just unconfined go.
            loader.sync_hooks()?;
        }
        for recovered in recovered {
            let pid = recovered.pid;
            if !recovered.unmarked {
                tracing::error!(
                    pid,
                    "pid {pid}, left half done by a previous loader, kept creating marked threads while being unmarked: it stays confined (release it again)"
                );
            } else if recovered.was_release {
                tracing::warn!(
                    pid,
                    "finished the release of pid {pid} that a previous loader left half done (it was continued and unmarked)"
                );
            } else {
                tracing::warn!(
                    pid,
                    "undid the confine of pid {pid} that a previous loader left half done (it was continued and unmarked)"
                );
            }
        }
        Ok(loader)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pins.root
    }

    /// The probes' counters.
    pub fn counters(&mut self) -> Result<ProbeCounters, LoaderError> {
        self.map_ops += abi::COUNTERS as u64;
        read_counters(&self.maps.counters)
    }

    /// Tells the probes who the loader is: its PID namespace, by which every
    /// process number in the maps is meant, and its process group.
    fn write_config(&mut self) -> Result<(), LoaderError> {
        use std::os::unix::fs::MetadataExt;
        let namespace = std::fs::metadata("/proc/self/ns/pid")
            .map_err(|e| LoaderError::io("reading /proc/self/ns/pid", e))?;
        let config = abi::LoaderConfig {
            pid_ns_inum: namespace.ino() as u32,
            loader_pgid: sys::process_group(),
        };
        self.map_ops += 1;
        self.maps
            .config
            .set(0, config, 0)
            .map_err(map_err("CONFIG", "0"))
    }

    /// Lists this process's threads in `LOADER_TIDS`, so no confined task
    /// may signal it (`fresh`: forget an earlier loader's threads first).
    /// The probes add threads created while the hooks are attached.
    pub(super) fn register_loader_threads(&mut self, fresh: bool) -> Result<(), LoaderError> {
        if fresh {
            let stale: Vec<u32> = self
                .maps
                .loader_tids
                .keys()
                .filter_map(Result::ok)
                .collect();
            for tid in stale {
                self.map_ops += 1;
                let _ = self.maps.loader_tids.remove(&tid);
            }
        }
        for tid in process::threads(std::process::id())? {
            self.map_ops += 1;
            self.maps
                .loader_tids
                .insert(tid, 1, 0)
                .map_err(map_err("LOADER_TIDS", tid.to_string()))?;
        }
        Ok(())
    }

    /// Tells the io_uring guard what each request stands for. Rewritten at
    /// every open: the table belongs to this binary, not to the pins.
    fn write_io_uring_ops(&mut self) -> Result<(), LoaderError> {
        for (opcode, value) in (0u32..).zip(io_uring_ops::table(Arch::native())) {
            self.map_ops += 1;
            self.maps
                .io_uring_ops
                .set(opcode, value, 0)
                .map_err(map_err("IO_URING_OPS", opcode.to_string()))?;
        }
        Ok(())
    }

    /// The event ring buffer; only one consumer may read it, so it is handed
    /// out once.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.maps.events.take()
    }
}

impl Loader for KernelLoader {
    fn applied(&mut self) -> Result<Applied, LoaderError> {
        let applied = self.read_back()?;
        self.mirror = applied.clone();
        Ok(applied)
    }

    fn apply(
        &mut self,
        delta: &Delta,
        policy: Option<PolicyDigest>,
    ) -> Result<ApplyReport, LoaderError> {
        let confined = self.confined()?;
        guard::check_delta(&self.mirror.rules, delta, &confined, Arch::native())?;
        if delta.is_empty() {
            return Ok(ApplyReport {
                generation: self.mirror.generation,
                map_ops: 0,
            });
        }
        self.check_capacity(delta)?;
        if self.dirty {
            self.resync_inactive()?;
        }
        self.apply_inner(delta, policy)
    }

    fn confined(&mut self) -> Result<ConfinedSet, LoaderError> {
        self.checked_registry()
    }

    fn confine(&mut self, pid: u32) -> Result<(), LoaderError> {
        self.confine_process(pid)
    }

    fn release(&mut self, pid: u32) -> Result<(), LoaderError> {
        self.release_process(pid)
    }

    fn map_ops(&self) -> u64 {
        self.map_ops
    }
}
