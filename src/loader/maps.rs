//! The probes' pinned maps as typed aya handles, and reading the rules in
//! force back out of them.
//!
//! Why this exists: every map is declared once in `probes/aa_policy.h`;
//! here it gets its Rust type, its name for error messages, and its
//! capacity. `read_back` is the one function that turns the active slot
//! into a `RuleSet` (invariant 3: deltas are computed against it).

use std::collections::BTreeMap;
use std::path::Path;

use aya::Ebpf;
use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf};

use super::abi::{
    self, Confined, Egress4Data, Egress6Data, Generation, LoaderConfig, PathData, Pending,
    RuleValue,
};
use super::pins::PinLayout;
use super::rule_keys::{access_mask, egress_rule, exact_path};
use super::{Applied, LoaderError, ProbeCounters};
use crate::ruleset::{
    Access, Arch, EgressMode, Mode, PathRuleKey, Restriction, RuleSet, SyscallRule, SyscallSet,
    Verdict,
};

/// Every pinned map, by the name the probes give it.
pub(super) const MAPS: [&str; 19] = [
    "ACTIVE",
    "GENERATIONS",
    "TASK_MARK",
    "NAME_CHECK",
    "CONFINED",
    "GUARD_CACHE",
    "EGRESS4",
    "EGRESS6",
    "PATHS",
    "IO_URING_OPS",
    "SOCKET_MARK",
    "LEARNED4",
    "LEARNED6",
    "RESOLVER",
    "CONFIG",
    "LOADER_TIDS",
    "PENDING",
    "EVENTS",
    "COUNTERS",
];

pub(super) struct Maps {
    pub(super) active: Array<MapData, u32>,
    pub(super) generations: Array<MapData, Generation>,
    pub(super) task_mark: MapData,
    pub(super) confined: HashMap<MapData, u32, Confined>,
    pub(super) egress4: LpmTrie<MapData, Egress4Data, RuleValue>,
    pub(super) egress6: LpmTrie<MapData, Egress6Data, RuleValue>,
    pub(super) paths: LpmTrie<MapData, PathData, RuleValue>,
    pub(super) guard_cache: PerCpuArray<MapData, u64>,
    pub(super) io_uring_ops: Array<MapData, i32>,
    pub(super) config: Array<MapData, LoaderConfig>,
    pub(super) loader_tids: HashMap<MapData, u32, u32>,
    pub(super) pending: HashMap<MapData, u32, Pending>,
    pub(super) counters: Array<MapData, u64>,
    pub(super) events: Option<RingBuf<MapData>>,
    pub(super) capacity: BTreeMap<&'static str, usize>,
}

impl Maps {
    /// Reads the active slot's rules back from the maps.
    pub(super) fn read_back(&self, ops: &mut u64) -> Result<(Applied, u32), LoaderError> {
        *ops += 1;
        let slot = self.active.get(&0, 0).map_err(map_err("ACTIVE", "0"))? & 1;
        Ok((self.read_slot(slot, ops)?, slot))
    }

    /// Reads the rules slot `slot` holds (active or not).
    pub(super) fn read_slot(&self, slot: u32, ops: &mut u64) -> Result<Applied, LoaderError> {
        *ops += 1;
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
        rules.egress.mode = match generation.egress_restricted {
            abi::EGRESS_UNRESTRICTED => EgressMode::Unrestricted,
            abi::EGRESS_HOSTS => EgressMode::AllowlistAndHosts,
            // Anything else restricts: fail closed on a value never written.
            _ => EgressMode::Allowlist,
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
        Ok(Applied {
            generation: generation.generation,
            rules,
            policy: (generation.policy_sha256 != [0; 32]).then_some(generation.policy_sha256),
        })
    }
}

/// A `LoaderError::Map` naming the map and, when given, the key.
pub(super) fn map_err(
    map: &'static str,
    key: impl Into<String>,
) -> impl FnOnce(MapError) -> LoaderError {
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

/// The rules in force under `pin_dir`, read straight from the pinned maps
/// without loading anything or taking the lock: for observers (tests,
/// tooling) while a daemon owns the pin dir.
pub fn read_applied(pin_dir: &Path) -> Result<Applied, LoaderError> {
    let pins = PinLayout::new(pin_dir);
    let maps = build_maps(|name| {
        let data = MapData::from_pin(pins.map(name)).map_err(map_err(name, ""))?;
        Map::from_map_data(data).map_err(map_err(name, ""))
    })?;
    Ok(maps.read_back(&mut 0)?.0)
}

/// Both generation slots under `pin_dir`, and which one is active: for
/// tests that check a crash left one whole generation in force.
pub fn read_slots(pin_dir: &Path) -> Result<([Applied; 2], u32), LoaderError> {
    let pins = PinLayout::new(pin_dir);
    let maps = build_maps(|name| {
        let data = MapData::from_pin(pins.map(name)).map_err(map_err(name, ""))?;
        Map::from_map_data(data).map_err(map_err(name, ""))
    })?;
    let active = maps.active.get(&0, 0).map_err(map_err("ACTIVE", "0"))? & 1;
    Ok((
        [maps.read_slot(0, &mut 0)?, maps.read_slot(1, &mut 0)?],
        active,
    ))
}

/// A read-only handle on the probes' counters, for a thread or process
/// that does not own the loader (the daemon's event reader, tests).
pub struct PinnedCounters {
    counters: Array<MapData, u64>,
}

impl PinnedCounters {
    pub fn event_drops(&self) -> Option<u64> {
        self.counters.get(&abi::COUNTER_EVENT_DROPS, 0).ok()
    }

    pub fn read(&self) -> Result<ProbeCounters, LoaderError> {
        read_counters(&self.counters)
    }
}

/// Opens the pinned COUNTERS map of `pin_dir`, if it is there.
pub fn pinned_counters(pin_dir: &Path) -> Option<PinnedCounters> {
    let path = PinLayout::new(pin_dir).map("COUNTERS");
    let data = MapData::from_pin(&path).ok()?;
    let counters = Array::try_from(Map::Array(data)).ok()?;
    Some(PinnedCounters { counters })
}

/// Every counter the probes keep.
pub(super) fn read_counters(counters: &Array<MapData, u64>) -> Result<ProbeCounters, LoaderError> {
    let read = |index: u32| {
        counters
            .get(&index, 0)
            .map_err(map_err("COUNTERS", index.to_string()))
    };
    Ok(ProbeCounters {
        event_drops: read(abi::COUNTER_EVENT_DROPS)?,
        registry_full: read(abi::COUNTER_REGISTRY_FULL)?,
        mark_failed: read(abi::COUNTER_MARK_FAILED)?,
        untraced: read(abi::COUNTER_UNTRACED)?,
        unguarded_exit: read(abi::COUNTER_UNGUARDED_EXIT)?,
    })
}

pub(super) fn take_maps(ebpf: &mut Ebpf) -> Result<Maps, LoaderError> {
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
        guard_cache: typed("GUARD_CACHE", get("GUARD_CACHE")?, PerCpuArray::try_from)?,
        io_uring_ops: typed("IO_URING_OPS", get("IO_URING_OPS")?, Array::try_from)?,
        config: typed("CONFIG", get("CONFIG")?, Array::try_from)?,
        loader_tids: typed("LOADER_TIDS", get("LOADER_TIDS")?, HashMap::try_from)?,
        pending: typed("PENDING", get("PENDING")?, HashMap::try_from)?,
        counters: typed("COUNTERS", get("COUNTERS")?, Array::try_from)?,
        events: Some(typed("EVENTS", get("EVENTS")?, RingBuf::try_from)?),
        capacity,
    })
}
