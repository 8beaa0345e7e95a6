//! `KernelLoader`: the aya implementation of `Loader`, in process.
//!
//! Why this exists: it owns the probes' lifetime (load, pin, adopt, attach,
//! detach, unload) and is the only writer of their maps. Its parts live
//! beside it, one concern each: `pins` (the pin dir and its lock), `hooks`
//! (programs and attachments), `generations` (the atomic apply protocol),
//! `confinement` (marks and the registry), `maps` and `rule_keys` (the map
//! layouts).

use std::path::Path;

use aya::Btf;
use aya::Ebpf;
use aya::maps::{MapData, MapError, RingBuf};

use super::abi::{self, Confined};
use super::hooks::{HOOKS, OBJECTS, load_object, load_program};
use super::maps::{Maps, map_err, take_maps};
use super::pins::{PinLayout, ensure_bpffs, lock_pin_dir};
use super::{Applied, ApplyReport, Loader, LoaderError, ProbeCounters, process, sys};
use crate::delta::Delta;
use crate::guard::{self, ConfinedSet};
use crate::ruleset::{Arch, RuleSet};

pub use super::hooks::cgroup2_root;
pub use super::maps::{EventDropCounter, event_drop_counter, read_applied};
pub use super::pins::{DEFAULT_PIN_DIR, unload};

/// The aya loader. See the module doc for the protocol it follows.
pub struct KernelLoader {
    pub(super) pins: PinLayout,
    /// An exclusive flock on the pin dir, held while this loader lives: two
    /// loaders on one pin dir would detach each other's hooks and write the
    /// same inactive slot.
    pub(super) _lock: std::fs::File,
    pub(super) objects: Vec<Ebpf>,
    pub(super) maps: Maps,
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
        let mut loader = KernelLoader {
            pins,
            _lock: lock,
            objects,
            maps,
            mirror: Applied {
                generation: 0,
                rules: RuleSet::unrestricted(),
            },
            active_slot: 0,
            map_ops: 0,
            dirty: false,
            grace: sys::GracePeriod::new().map_err(|e| {
                LoaderError::io("creating the grace-period maps (bpf_map_create)", e)
            })?,
        };
        loader.mirror = loader.read_back()?;
        Ok(loader)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pins.root
    }

    /// The probes' counters.
    pub fn counters(&mut self) -> Result<ProbeCounters, LoaderError> {
        let mut read = |index: u32| {
            self.map_ops += 1;
            self.maps
                .counters
                .get(&index, 0)
                .map_err(map_err("COUNTERS", index.to_string()))
        };
        Ok(ProbeCounters {
            event_drops: read(abi::COUNTER_EVENT_DROPS)?,
            registry_full: read(abi::COUNTER_REGISTRY_FULL)?,
            mark_failed: read(abi::COUNTER_MARK_FAILED)?,
        })
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

    fn apply(&mut self, delta: &Delta) -> Result<ApplyReport, LoaderError> {
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
        self.apply_inner(delta)
    }

    fn confined(&mut self) -> Result<ConfinedSet, LoaderError> {
        let mut pids = Vec::new();
        for key in self.maps.confined.keys() {
            self.map_ops += 1;
            pids.push(key.map_err(map_err("CONFINED", ""))?);
        }
        Ok(ConfinedSet::from_pids(pids))
    }

    fn confine(&mut self, pid: u32) -> Result<(), LoaderError> {
        guard::check_confine(&self.mirror.rules, pid)?;
        self.attach_hooks()?;
        let result = process::with_stopped(pid, |threads| {
            self.mark_threads(pid, threads, true)?;
            self.map_ops += 1;
            self.maps
                .confined
                .insert(pid, Confined::default(), 0)
                .map_err(map_err("CONFINED", pid.to_string()))
        });
        if result.is_err() {
            // Best effort: a process we failed to confine must not stay
            // half-marked, and idle hooks must not stay attached.
            let _ = process::with_stopped(pid, |threads| self.mark_threads(pid, threads, false));
            let _ = self.sync_hooks();
        }
        result
    }

    fn release(&mut self, pid: u32) -> Result<(), LoaderError> {
        process::with_stopped(pid, |threads| self.mark_threads(pid, threads, false))?;
        self.map_ops += 1;
        match self.maps.confined.remove(&pid) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err("CONFINED", pid.to_string())(e)),
        }
        self.sync_hooks()?;
        Ok(())
    }

    fn map_ops(&self) -> u64 {
        self.map_ops
    }
}
