//! `KernelLoader`: the aya implementation of `Loader`, in process.
//!
//! Why this exists: it owns the probes' lifetime (load, pin, adopt, attach,
//! detach, unload) and is the only writer of their maps. Everything it
//! writes follows the generation protocol of `probes/aa_policy.h`:
//!
//! 1. write the inactive slot: the fixed-size `GENERATIONS[next]` whole, and
//!    the slot bit / access masks of each changed LPM entry (ops ∝ change);
//! 2. flip `ACTIVE` (one write): from now on probes read `next`;
//! 3. wait an RCU grace period (`sys::GracePeriod`), so no probe still
//!    reads the old slot;
//! 4. bring the old slot's bits of the changed entries in line (or delete
//!    entries that no slot holds).
//!
//! A failure before the flip leaves the previous generation in force and
//! the touched entries are rolled back; a failure after it leaves the new
//! generation in force. Either way an entry that could not be repaired marks
//! the loader dirty, and the next apply first resynchronises the inactive
//! slot from the active one (O(n), only after a failure).
//!
//! Pins live under `<pin dir>/v<ABI>/{maps,links}`: links pinned there keep
//! enforcing after this process exits, and a new loader adopts them instead
//! of attaching twice. The hooks are attached on the first confine and
//! detached when nothing is confined, so an idle machine pays nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{BtfTracePoint, CgroupAttachMode, CgroupSockAddr};
use aya::{Btf, Ebpf, EbpfLoader};

use super::abi::{
    self, Confined, Egress4Data, Egress6Data, Generation, PathData, RuleValue, TaskMark,
};
use super::{Applied, ApplyReport, Loader, LoaderError, ProbeCounters, process, sys};
use crate::delta::{self, Delta, Op};
use crate::guard::{self, ConfinedSet};
use crate::ruleset::{
    Access, Arch, EgressMode, EgressRule, IpCidr, Mode, PathPrefix, PathRuleKey, Restriction,
    RuleSet, SyscallRule, SyscallSet, Verdict,
};

/// Where pins live unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/agent-assembly";

static SYSCALL_GUARD_OBJ: &[u8] = aya::include_bytes_aligned!("../../probes/syscall_guard.bpf.o");
static TASK_LIFECYCLE_OBJ: &[u8] = aya::include_bytes_aligned!("../../probes/task_lifecycle.bpf.o");
static EGRESS_OBJ: &[u8] = aya::include_bytes_aligned!("../../probes/egress.bpf.o");

const OBJECTS: [(&str, &[u8]); 3] = [
    ("syscall_guard", SYSCALL_GUARD_OBJ),
    ("task_lifecycle", TASK_LIFECYCLE_OBJ),
    ("egress", EGRESS_OBJ),
];

const MAPS: [&str; 10] = [
    "ACTIVE",
    "GENERATIONS",
    "TASK_MARK",
    "CONFINED",
    "CURRENT_CONFINED",
    "EGRESS4",
    "EGRESS6",
    "PATHS",
    "EVENTS",
    "COUNTERS",
];

#[derive(Clone, Copy)]
enum Attach {
    /// tp_btf program on this tracepoint.
    Tracing(&'static str),
    /// cgroup sock_addr program at the cgroup v2 root.
    CgroupRoot,
}

/// Every program, its object and how it attaches. Lifecycle hooks come
/// first so that marks propagate, and the per-CPU flag is kept, before the
/// guard reads them; detaching goes in reverse.
const HOOKS: [(usize, &str, Attach); 9] = [
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

/// The pin layout of one pin dir.
#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(pin_dir: &Path) -> Self {
        PinLayout {
            root: pin_dir.to_owned(),
        }
    }

    fn versioned(&self) -> PathBuf {
        self.root.join(format!("v{}", abi::ABI_VERSION))
    }

    fn maps(&self) -> PathBuf {
        self.versioned().join("maps")
    }

    fn links(&self) -> PathBuf {
        self.versioned().join("links")
    }

    fn link(&self, program: &str) -> PathBuf {
        self.links().join(program)
    }
}

struct Maps {
    active: Array<MapData, u32>,
    generations: Array<MapData, Generation>,
    task_mark: MapData,
    confined: HashMap<MapData, u32, Confined>,
    egress4: LpmTrie<MapData, Egress4Data, RuleValue>,
    egress6: LpmTrie<MapData, Egress6Data, RuleValue>,
    paths: LpmTrie<MapData, PathData, RuleValue>,
    counters: Array<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    capacity: BTreeMap<&'static str, usize>,
}

impl Maps {
    /// Reads the active slot's rules back from the maps.
    fn read_back(&self, ops: &mut u64) -> Result<(Applied, u32), LoaderError> {
        *ops += 2;
        let slot = self.active.get(&0, 0).map_err(map_err("ACTIVE", "0"))? & 1;
        let generation = self
            .generations
            .get(&slot, 0)
            .map_err(map_err("GENERATIONS", slot.to_string()))?;
        let mut rules = RuleSet::unrestricted();
        rules.mode = if generation.mode == abi::MODE_AUDIT {
            Mode::Audit
        } else {
            Mode::Enforce
        };
        rules.syscalls = if generation.syscalls_restricted != 0 {
            SyscallRule::Allow(SyscallSet::from_words(
                Arch::native(),
                generation.syscall_allow,
            ))
        } else {
            SyscallRule::Unrestricted
        };
        let restriction = |flag: u32| {
            if flag != 0 {
                Restriction::Allowlist
            } else {
                Restriction::Unrestricted
            }
        };
        rules.paths.read = restriction(generation.read_restricted);
        rules.paths.write = restriction(generation.write_restricted);
        rules.egress.mode = if generation.egress_restricted != 0 {
            EgressMode::Allowlist
        } else {
            EgressMode::Unrestricted
        };
        let bit = 1u8 << slot;
        for item in self.egress4.iter() {
            *ops += 1;
            let (key, value) = item.map_err(map_err("EGRESS4", ""))?;
            if value.slots & bit != 0 {
                rules.egress.rules.insert(egress_rule::<Egress4Data>(&key));
            }
        }
        for item in self.egress6.iter() {
            *ops += 1;
            let (key, value) = item.map_err(map_err("EGRESS6", ""))?;
            if value.slots & bit != 0 {
                rules.egress.rules.insert(egress_rule::<Egress6Data>(&key));
            }
        }
        for item in self.paths.iter() {
            *ops += 1;
            let (key, value) = item.map_err(map_err("PATHS", ""))?;
            let Some(prefix) = exact_path(&key) else {
                continue;
            };
            let index = slot as usize;
            for access in Access::ALL {
                let mask = access_mask(access);
                let verdict = if value.deny[index] & mask != 0 {
                    Some(Verdict::Deny)
                } else if value.allow[index] & mask != 0 {
                    Some(Verdict::Allow)
                } else {
                    None
                };
                if let Some(verdict) = verdict {
                    rules.paths.rules.insert(
                        PathRuleKey {
                            access,
                            prefix: prefix.clone(),
                        },
                        verdict,
                    );
                }
            }
        }
        Ok((
            Applied {
                generation: generation.generation,
                rules,
            },
            slot,
        ))
    }
}

/// The aya loader. See the module doc for the protocol it follows.
pub struct KernelLoader {
    pins: PinLayout,
    /// An exclusive flock on the pin dir, held while this loader lives: two
    /// loaders on one pin dir would detach each other's hooks and write the
    /// same inactive slot.
    _lock: std::fs::File,
    objects: Vec<Ebpf>,
    maps: Maps,
    /// What the active slot holds; re-read from the maps at open.
    mirror: Applied,
    active_slot: u32,
    map_ops: u64,
    /// An entry's inactive-slot bits may disagree with its active ones.
    dirty: bool,
    grace: sys::GracePeriod,
}

fn map_err(map: &'static str, key: impl Into<String>) -> impl FnOnce(MapError) -> LoaderError {
    let key = key.into();
    move |source| LoaderError::Map {
        map,
        key: if key.is_empty() {
            key
        } else {
            format!(" key {key}")
        },
        source: Box::new(source),
    }
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

    /// Whether the task `tid` carries a confinement mark.
    pub fn is_task_marked(&mut self, tid: u32) -> Result<bool, LoaderError> {
        let pidfd = sys::pidfd_open(tid, true)
            .map_err(|e| LoaderError::io(format!("pidfd_open({tid}, PIDFD_THREAD)"), e))?;
        self.map_ops += 1;
        sys::task_storage_contains::<TaskMark>(self.maps.task_mark.fd().as_fd(), &pidfd)
            .map_err(|e| LoaderError::io(format!("bpf_map_lookup_elem TASK_MARK tid {tid}"), e))
    }

    fn read_back(&mut self) -> Result<Applied, LoaderError> {
        let (applied, slot) = self.maps.read_back(&mut self.map_ops)?;
        self.active_slot = slot;
        Ok(applied)
    }

    fn check_capacity(&self, delta: &Delta) -> Result<(), LoaderError> {
        let current = &self.mirror.rules;
        let mut new_v4 = 0;
        let mut new_v6 = 0;
        let mut new_prefixes = BTreeSet::new();
        for op in &delta.ops {
            match op {
                Op::UpsertEgressRule(rule) if !current.egress.rules.contains(rule) => {
                    if rule.net.addr().is_ipv4() {
                        new_v4 += 1;
                    } else {
                        new_v6 += 1;
                    }
                }
                Op::UpsertPathRule { key, .. } => {
                    let known = Access::ALL.iter().any(|&access| {
                        current.paths.rules.contains_key(&PathRuleKey {
                            access,
                            prefix: key.prefix.clone(),
                        })
                    });
                    if !known {
                        new_prefixes.insert(key.prefix.clone());
                    }
                }
                _ => {}
            }
        }
        let prefixes_now: BTreeSet<&PathPrefix> =
            current.paths.rules.keys().map(|k| &k.prefix).collect();
        let v4_now = current
            .egress
            .rules
            .iter()
            .filter(|r| r.net.addr().is_ipv4())
            .count();
        let v6_now = current.egress.rules.len() - v4_now;
        for (map, needed) in [
            ("EGRESS4", v4_now + new_v4),
            ("EGRESS6", v6_now + new_v6),
            ("PATHS", 2 * (prefixes_now.len() + new_prefixes.len())),
        ] {
            let capacity = self.maps.capacity.get(map).copied().unwrap_or(0);
            if needed > capacity {
                return Err(LoaderError::Capacity {
                    map,
                    needed,
                    capacity,
                });
            }
        }
        Ok(())
    }

    fn write_slot_entries(
        &mut self,
        delta: &Delta,
        desired: &RuleSet,
        next: u32,
        touched: &mut Touched,
    ) -> Result<(), LoaderError> {
        for op in &delta.ops {
            match op {
                Op::UpsertEgressRule(rule) => {
                    touched.egress.insert(*rule);
                    self.set_egress_slot(rule, next, true)?;
                }
                Op::RemoveEgressRule(rule) => {
                    touched.egress.insert(*rule);
                    self.set_egress_slot(rule, next, false)?;
                }
                Op::UpsertPathRule { key, .. } | Op::RemovePathRule(key) => {
                    if touched.paths.insert(key.prefix.clone()) {
                        self.set_path_slot(&key.prefix, desired, next)?;
                    }
                }
                Op::SetMode(_)
                | Op::SetSyscalls(_)
                | Op::SetPathRestriction { .. }
                | Op::SetEgressMode(_) => {}
            }
        }
        Ok(())
    }

    /// Sets (`present`) or clears `slot`'s bit on `rule`'s entry.
    fn set_egress_slot(
        &mut self,
        rule: &EgressRule,
        slot: u32,
        present: bool,
    ) -> Result<(), LoaderError> {
        let ops = &mut self.map_ops;
        match rule.net.addr() {
            IpAddr::V4(_) => set_slot_bit(
                &mut self.maps.egress4,
                &egress_key::<Egress4Data>(rule),
                slot,
                present,
                ops,
            )
            .map_err(map_err("EGRESS4", rule.to_string())),
            IpAddr::V6(_) => set_slot_bit(
                &mut self.maps.egress6,
                &egress_key::<Egress6Data>(rule),
                slot,
                present,
                ops,
            )
            .map_err(map_err("EGRESS6", rule.to_string())),
        }
    }

    /// Writes slot `slot` of `prefix` as `rules` has it, in both keys.
    fn set_path_slot(
        &mut self,
        prefix: &PathPrefix,
        rules: &RuleSet,
        slot: u32,
    ) -> Result<(), LoaderError> {
        let (exact_key, subtree_key) = path_keys(prefix);
        self.map_ops += 1;
        let mut value = exact(self.maps.paths.get(&exact_key, 0), exact_key.prefix_len())
            .map_err(map_err("PATHS", prefix.as_str()))?
            .unwrap_or_default();
        let index = slot as usize;
        value.allow[index] = 0;
        value.deny[index] = 0;
        for access in Access::ALL {
            let key = PathRuleKey {
                access,
                prefix: prefix.clone(),
            };
            match rules.paths.rules.get(&key) {
                Some(Verdict::Allow) => value.allow[index] |= access_mask(access),
                Some(Verdict::Deny) => value.deny[index] |= access_mask(access),
                None => {}
            }
        }
        let bit = 1u8 << slot;
        if value.allow[index] | value.deny[index] != 0 {
            value.slots |= bit;
        } else {
            value.slots &= !bit;
        }
        self.write_path_value(prefix, &exact_key, &subtree_key, value)
    }

    fn write_path_value(
        &mut self,
        prefix: &PathPrefix,
        exact_key: &Key<PathData>,
        subtree_key: &Key<PathData>,
        value: RuleValue,
    ) -> Result<(), LoaderError> {
        for key in [exact_key, subtree_key] {
            let value = RuleValue {
                prefixlen: key.prefix_len(),
                ..value
            };
            self.map_ops += 1;
            if value.slots == 0 {
                match self.maps.paths.remove(key) {
                    Err(MapError::KeyNotFound) | Ok(()) => {}
                    Err(e) => return Err(map_err("PATHS", prefix.as_str())(e)),
                }
            } else {
                self.maps
                    .paths
                    .insert(key, value, 0)
                    .map_err(map_err("PATHS", prefix.as_str()))?;
            }
        }
        Ok(())
    }

    /// Makes slot `to` of the touched entries equal to slot `from`.
    fn align_slots(&mut self, touched: &Touched, from: u32, to: u32) -> Result<(), LoaderError> {
        let (from_bit, to_bit) = (1u8 << from, 1u8 << to);
        for rule in &touched.egress {
            let ops = &mut self.map_ops;
            match rule.net.addr() {
                IpAddr::V4(_) => align_entry(
                    &mut self.maps.egress4,
                    &egress_key::<Egress4Data>(rule),
                    from,
                    to,
                    ops,
                )
                .map_err(map_err("EGRESS4", rule.to_string()))?,
                IpAddr::V6(_) => align_entry(
                    &mut self.maps.egress6,
                    &egress_key::<Egress6Data>(rule),
                    from,
                    to,
                    ops,
                )
                .map_err(map_err("EGRESS6", rule.to_string()))?,
            }
        }
        for prefix in &touched.paths {
            let (exact_key, subtree_key) = path_keys(prefix);
            self.map_ops += 1;
            let Some(mut value) = exact(self.maps.paths.get(&exact_key, 0), exact_key.prefix_len())
                .map_err(map_err("PATHS", prefix.as_str()))?
            else {
                continue;
            };
            value.allow[to as usize] = value.allow[from as usize];
            value.deny[to as usize] = value.deny[from as usize];
            value.slots = if value.slots & from_bit != 0 {
                from_bit | to_bit
            } else {
                0
            };
            self.write_path_value(prefix, &exact_key, &subtree_key, value)?;
        }
        Ok(())
    }

    /// After a failure: makes every entry's inactive slot equal its active one.
    fn resync_inactive(&mut self) -> Result<(), LoaderError> {
        // The inactive slot may have been active a moment ago: wait for
        // probes still reading it before rewriting it (see `sys`).
        self.grace.wait().map_err(|e| {
            LoaderError::io("waiting for an RCU grace period (bpf_map_update_elem)", e)
        })?;
        let active = self.active_slot;
        let mut touched = Touched {
            egress: self.all_egress_keys()?,
            ..Touched::default()
        };
        for item in self.maps.paths.iter() {
            self.map_ops += 1;
            let (key, _) = item.map_err(map_err("PATHS", ""))?;
            if let Some(prefix) = exact_path(&key) {
                touched.paths.insert(prefix);
            }
        }
        self.align_slots(&touched, active, 1 - active)?;
        self.dirty = false;
        Ok(())
    }

    fn all_egress_keys(&mut self) -> Result<BTreeSet<EgressRule>, LoaderError> {
        let mut rules = BTreeSet::new();
        for item in self.maps.egress4.keys() {
            self.map_ops += 1;
            rules.insert(egress_rule::<Egress4Data>(
                &item.map_err(map_err("EGRESS4", ""))?,
            ));
        }
        for item in self.maps.egress6.keys() {
            self.map_ops += 1;
            rules.insert(egress_rule::<Egress6Data>(
                &item.map_err(map_err("EGRESS6", ""))?,
            ));
        }
        Ok(rules)
    }

    fn apply_inner(&mut self, delta: &Delta) -> Result<ApplyReport, LoaderError> {
        let ops_before = self.map_ops;
        let desired = delta::apply(&self.mirror.rules, delta);
        let current = self.active_slot;
        let next = 1 - current;
        let generation = self.mirror.generation + 1;

        let mut touched = Touched::default();
        let prepared = self
            .write_generation(&desired, generation, next)
            .and_then(|()| self.write_slot_entries(delta, &desired, next, &mut touched));
        if let Err(error) = prepared {
            if self.align_slots(&touched, current, next).is_err() {
                self.dirty = true;
            }
            return Err(error);
        }

        self.map_ops += 1;
        if let Err(error) = self.maps.active.set(0, next, 0) {
            // Not flipped: the previous generation is in force; undo the
            // inactive slot so a later apply cannot publish these entries.
            if self.align_slots(&touched, current, next).is_err() {
                self.dirty = true;
            }
            return Err(map_err("ACTIVE", "0")(error));
        }
        self.active_slot = next;
        self.mirror = Applied {
            generation,
            rules: desired,
        };
        if self.grace.wait().is_err() || self.align_slots(&touched, next, current).is_err() {
            self.dirty = true;
        }
        Ok(ApplyReport {
            generation,
            map_ops: self.map_ops - ops_before,
        })
    }

    fn write_generation(
        &mut self,
        rules: &RuleSet,
        generation: u64,
        slot: u32,
    ) -> Result<(), LoaderError> {
        let value = Generation {
            generation,
            mode: match rules.mode {
                Mode::Enforce => abi::MODE_ENFORCE,
                Mode::Audit => abi::MODE_AUDIT,
            },
            syscalls_restricted: u32::from(matches!(rules.syscalls, SyscallRule::Allow(_))),
            egress_restricted: u32::from(rules.egress.mode == EgressMode::Allowlist),
            read_restricted: u32::from(rules.paths.read == Restriction::Allowlist),
            write_restricted: u32::from(rules.paths.write == Restriction::Allowlist),
            _pad: 0,
            syscall_allow: match &rules.syscalls {
                SyscallRule::Allow(set) => *set.words(),
                SyscallRule::Unrestricted => [0; abi::SYSCALL_WORDS],
            },
        };
        self.map_ops += 1;
        self.maps
            .generations
            .set(slot, value, 0)
            .map_err(map_err("GENERATIONS", slot.to_string()))
    }

    fn mark_threads(
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

/// Entries changed by one apply.
#[derive(Default)]
struct Touched {
    egress: BTreeSet<EgressRule>,
    paths: BTreeSet<PathPrefix>,
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

/// A read-only handle on the probes' event-drop counter, for a thread that
/// does not own the loader (the daemon's event reader).
pub struct EventDropCounter {
    counters: Array<MapData, u64>,
}

impl EventDropCounter {
    pub fn read(&self) -> Option<u64> {
        self.counters.get(&abi::COUNTER_EVENT_DROPS, 0).ok()
    }
}

/// Opens the pinned COUNTERS map of `pin_dir`, if it is there.
pub fn event_drop_counter(pin_dir: &Path) -> Option<EventDropCounter> {
    let path = PinLayout::new(pin_dir).maps().join("COUNTERS");
    let data = MapData::from_pin(&path).ok()?;
    let counters = Array::try_from(Map::Array(data)).ok()?;
    Some(EventDropCounter { counters })
}

/// Takes the pin dir's exclusive lock, or says it is in use.
///
/// Retries for a moment first: a child forked by any thread of a process
/// that held the lock keeps a copy of its file description until it execs,
/// which can outlive the holder by a few milliseconds. A real second loader
/// holds it for its whole life.
fn lock_pin_dir(pin_dir: &Path) -> Result<std::fs::File, LoaderError> {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);
    let dir = std::fs::File::open(pin_dir)
        .map_err(|e| LoaderError::io(format!("opening pin dir {}", pin_dir.display()), e))?;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        match sys::try_lock_exclusive(&dir) {
            Ok(true) => return Ok(dir),
            Ok(false) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(false) => {
                return Err(LoaderError::Busy {
                    pin_dir: pin_dir.to_owned(),
                });
            }
            Err(e) => {
                return Err(LoaderError::io(
                    format!("locking pin dir {}", pin_dir.display()),
                    e,
                ));
            }
        }
    }
}

/// The rules in force under `pin_dir`, read straight from the pinned maps
/// without loading anything or taking the lock: for observers (tests,
/// tooling) while a daemon owns the pin dir.
pub fn read_applied(pin_dir: &Path) -> Result<Applied, LoaderError> {
    let maps_dir = PinLayout::new(pin_dir).maps();
    let maps = build_maps(|name| {
        let data = MapData::from_pin(maps_dir.join(name)).map_err(map_err(name, ""))?;
        Map::from_map_data(data).map_err(map_err(name, ""))
    })?;
    Ok(maps.read_back(&mut 0)?.0)
}

/// Removes every program, link, map and pin under `pin_dir` that this tool
/// created. Loads nothing, so it works even when the probes cannot load.
pub fn unload(pin_dir: &Path) -> Result<(), LoaderError> {
    let pins = PinLayout::new(pin_dir);
    // A loader still running on the pin dir would keep using what we remove.
    let _lock = match lock_pin_dir(pin_dir) {
        Err(LoaderError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(());
        }
        other => other?,
    };
    detach_links(&pins)?;
    for dir in [pins.links(), pins.maps()] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| LoaderError::io(format!("removing pins in {}", dir.display()), e))?;
        }
    }
    for dir in [pins.versioned(), pins.root.clone()] {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {}
            Err(e) => return Err(LoaderError::io(format!("removing {}", dir.display()), e)),
        }
    }
    Ok(())
}

fn detach_links(pins: &PinLayout) -> Result<(), LoaderError> {
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

fn load_object(
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

fn load_program(
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

fn take_maps(ebpf: &mut Ebpf) -> Result<Maps, LoaderError> {
    build_maps(|name| {
        ebpf.take_map(name).ok_or_else(|| LoaderError::Map {
            map: name,
            key: String::new(),
            source: Box::new(MapError::InvalidName { name: name.into() }),
        })
    })
}

/// Builds the typed map handles from `get`, which yields each map by name.
fn build_maps(
    mut get: impl FnMut(&'static str) -> Result<Map, LoaderError>,
) -> Result<Maps, LoaderError> {
    fn typed<T>(
        name: &'static str,
        map: Map,
        convert: impl FnOnce(Map) -> Result<T, MapError>,
    ) -> Result<T, LoaderError> {
        convert(map).map_err(map_err(name, ""))
    }
    let task_mark = match get("TASK_MARK")? {
        Map::Unsupported(data) => data,
        _ => {
            return Err(LoaderError::Map {
                map: "TASK_MARK",
                key: String::new(),
                source: Box::new(MapError::InvalidName {
                    name: "TASK_MARK (expected a task storage map)".into(),
                }),
            });
        }
    };
    let mut capacity = BTreeMap::new();
    let mut lpm = |name: &'static str| -> Result<Map, LoaderError> {
        let map = get(name)?;
        if let Map::LpmTrie(data) = &map {
            let info = data.info().map_err(map_err(name, ""))?;
            capacity.insert(name, info.max_entries() as usize);
        }
        Ok(map)
    };
    let (egress4, egress6, paths) = (lpm("EGRESS4")?, lpm("EGRESS6")?, lpm("PATHS")?);
    Ok(Maps {
        active: typed("ACTIVE", get("ACTIVE")?, Array::try_from)?,
        generations: typed("GENERATIONS", get("GENERATIONS")?, Array::try_from)?,
        task_mark,
        confined: typed("CONFINED", get("CONFINED")?, HashMap::try_from)?,
        egress4: typed("EGRESS4", egress4, LpmTrie::try_from)?,
        egress6: typed("EGRESS6", egress6, LpmTrie::try_from)?,
        paths: typed("PATHS", paths, LpmTrie::try_from)?,
        counters: typed("COUNTERS", get("COUNTERS")?, Array::try_from)?,
        events: Some(typed("EVENTS", get("EVENTS")?, RingBuf::try_from)?),
        capacity,
    })
}

/// Makes sure `pin_dir` is on a bpf filesystem, mounting one at
/// /sys/fs/bpf when a fresh machine has none (as systemd does at boot).
fn ensure_bpffs(pin_dir: &Path) -> Result<(), LoaderError> {
    let default_mount = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(default_mount) {
        let mounted =
            sys::is_bpffs(default_mount).map_err(|e| LoaderError::io("statfs /sys/fs/bpf", e))?;
        if !mounted {
            sys::mount_bpffs(default_mount)
                .map_err(|e| LoaderError::io("mounting bpffs on /sys/fs/bpf", e))?;
            tracing::warn!("bpffs was not mounted; mounted it on /sys/fs/bpf");
        }
        return Ok(());
    }
    let probe = pin_dir.ancestors().find(|p| p.exists()).unwrap_or(pin_dir);
    if !sys::is_bpffs(probe)
        .map_err(|e| LoaderError::io(format!("statfs {}", probe.display()), e))?
    {
        return Err(LoaderError::io(
            format!("pin dir {}", pin_dir.display()),
            std::io::Error::other("is not on a bpf filesystem (mount -t bpf bpf DIR)"),
        ));
    }
    Ok(())
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

fn remove_ignoring_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// Sets (`present`) or clears `slot`'s bit on the entry for exactly `key`,
/// creating the entry when it does not exist yet.
fn set_slot_bit<K: aya::Pod>(
    trie: &mut LpmTrie<MapData, K, RuleValue>,
    key: &Key<K>,
    slot: u32,
    present: bool,
    ops: &mut u64,
) -> Result<(), MapError> {
    *ops += 2;
    let bit = 1u8 << slot;
    let mut value = exact(trie.get(key, 0), key.prefix_len())?.unwrap_or(RuleValue {
        prefixlen: key.prefix_len(),
        ..RuleValue::default()
    });
    value.slots = if present {
        value.slots | bit
    } else {
        value.slots & !bit
    };
    trie.insert(key, value, 0)
}

/// Makes slot `to` of the entry for exactly `key` equal to slot `from`,
/// deleting the entry when no slot holds it any more.
fn align_entry<K: aya::Pod>(
    trie: &mut LpmTrie<MapData, K, RuleValue>,
    key: &Key<K>,
    from: u32,
    to: u32,
    ops: &mut u64,
) -> Result<(), MapError> {
    *ops += 1;
    let Some(mut value) = exact(trie.get(key, 0), key.prefix_len())? else {
        return Ok(());
    };
    *ops += 1;
    if value.slots & (1 << from) != 0 {
        value.slots |= 1 << to;
        trie.insert(key, value, 0)
    } else {
        remove_ignoring_missing(trie.remove(key))
    }
}

/// An LPM lookup is a longest-prefix match; the value's own prefix length
/// tells whether it is the entry for exactly this key.
fn exact(
    result: Result<RuleValue, MapError>,
    prefix_len: u32,
) -> Result<Option<RuleValue>, MapError> {
    match result {
        Ok(value) if value.prefixlen == prefix_len => Ok(Some(value)),
        Ok(_) | Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

fn access_mask(access: Access) -> u8 {
    match access {
        Access::Read => abi::ACCESS_READ,
        Access::Write => abi::ACCESS_WRITE,
    }
}

/// The key data of one egress family (`EGRESS4` or `EGRESS6`): port, then
/// address, both in network byte order; port 0 means any port.
trait EgressKeyData: aya::Pod {
    const ADDR_BITS: u8;
    fn new(port_be: u16, addr: IpAddr) -> Self;
    fn port_be(&self) -> u16;
    fn addr(&self) -> IpAddr;
}

impl EgressKeyData for Egress4Data {
    const ADDR_BITS: u8 = 32;
    fn new(port_be: u16, addr: IpAddr) -> Self {
        let addr = match addr {
            IpAddr::V4(a) => a.octets(),
            IpAddr::V6(_) => [0; 4],
        };
        Egress4Data {
            port: port_be,
            addr,
            _pad: [0; 2],
        }
    }
    fn port_be(&self) -> u16 {
        self.port
    }
    fn addr(&self) -> IpAddr {
        IpAddr::from(self.addr)
    }
}

impl EgressKeyData for Egress6Data {
    const ADDR_BITS: u8 = 128;
    fn new(port_be: u16, addr: IpAddr) -> Self {
        let addr = match addr {
            IpAddr::V6(a) => a.octets(),
            IpAddr::V4(_) => [0; 16],
        };
        Egress6Data {
            port: port_be,
            addr,
            _pad: [0; 2],
        }
    }
    fn port_be(&self) -> u16 {
        self.port
    }
    fn addr(&self) -> IpAddr {
        IpAddr::from(self.addr)
    }
}

/// The LPM key of `rule`: 16 port bits, then the network's prefix.
fn egress_key<D: EgressKeyData>(rule: &EgressRule) -> Key<D> {
    let data = D::new(rule.port.unwrap_or(0).to_be(), rule.net.addr());
    Key::new(16 + u32::from(rule.net.prefix_len()), data)
}

/// The rule an LPM key stands for.
fn egress_rule<D: EgressKeyData>(key: &Key<D>) -> EgressRule {
    let data = key.data();
    let prefix = key
        .prefix_len()
        .saturating_sub(16)
        .min(u32::from(D::ADDR_BITS)) as u8;
    let host = IpCidr::host(data.addr());
    EgressRule {
        net: host.supernet(prefix).unwrap_or(host),
        port: match u16::from_be(data.port_be()) {
            0 => None,
            port => Some(port),
        },
    }
}

/// The two keys of a path rule: `P\0` (P itself) and `P/` (below P).
fn path_keys(prefix: &PathPrefix) -> (Key<PathData>, Key<PathData>) {
    let bytes = prefix.as_str().as_bytes();
    let make = |suffix: Option<u8>| {
        let mut path = [0u8; abi::MAX_PATH];
        path[..bytes.len()].copy_from_slice(bytes);
        let mut len = bytes.len();
        if let Some(byte) = suffix {
            path[len] = byte;
            len += 1;
        }
        Key::new(8 * len as u32, PathData { path })
    };
    let exact = make(Some(0));
    let subtree = if bytes == b"/" {
        make(None)
    } else {
        make(Some(b'/'))
    };
    (exact, subtree)
}

/// The prefix of an exact (`P\0`) path key; `None` for a subtree key.
fn exact_path(key: &Key<PathData>) -> Option<PathPrefix> {
    let len = (key.prefix_len() / 8) as usize;
    let data = key.data();
    let bytes = data.path.get(..len)?;
    let (last, path) = bytes.split_last()?;
    if *last != 0 {
        return None;
    }
    PathPrefix::parse(std::str::from_utf8(path).ok()?).ok()
}
